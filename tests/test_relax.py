"""Batched FIRE + log-strain cell relaxation, against ASE and known answers."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from jaxinv.crystal import Crystal
from jaxinv.data.perturb import perturb
from jaxinv.graph import neighbor_graph
from jaxinv.relax import (GPA, FireConfig, RelaxQueue, converged, energy_per_atom, failed, fire_relaxer, relax,
                          status_names)
from jaxinv.search.evaluate import search_relaxer
from toy_potentials import LJ, ase_lj

FCC = Structure(Lattice.cubic(3.3), ["Si"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def rattled(n, seed=0, sigma=0.08, strain=0.05, base=FCC, supercell=None):
    base = base.copy()
    if supercell:
        base.make_supercell(supercell)
    return perturb([base] * n, rattle=sigma / 2, strain=strain, seed=seed)


def test_generalized_forces_equal_ase_frechet_cell_filter(float64):
    from ase.filters import FrechetCellFilter

    s = rattled(1, seed=3)[0]
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = ase_lj()
    ase_forces = FrechetCellFilter(atoms).get_forces()
    init_fn, _ = fire_relaxer(LJ.energy_fn, LJ.cutoff, FireConfig())
    c = Crystal.from_structures([s])
    state = init_fn(LJ.params, c, neighbor_graph(c, LJ.cutoff + 0.25))
    np.testing.assert_allclose(np.asarray(state.evaluation.f_q[0]), ase_forces[:4], atol=1e-10)
    np.testing.assert_allclose(np.asarray(state.evaluation.f_cell[0]), ase_forces[4:], atol=1e-10)
    np.testing.assert_allclose(float(state.energy[0]), atoms.get_potential_energy(), rtol=1e-10)


def test_relaxation_agrees_with_ase_fire_frechet():
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    structures = rattled(4, seed=1) + rattled(2, seed=2, supercell=[2, 1, 1])
    ours = relax(structures, LJ, fmax=1e-3, stress_tol=1e-5, progress=False)
    matcher = StructureMatcher()
    for k, (s, r) in enumerate(zip(structures, ours.to_structures())):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = ase_lj()
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=2000)
        ref = AseAtomsAdaptor.get_structure(atoms)
        assert converged(ours)[k]
        assert abs(energy_per_atom(ours)[k] - atoms.get_potential_energy() / len(atoms)) < 2e-3  # eV/atom
        np.testing.assert_allclose(sorted(r.lattice.abc), sorted(ref.lattice.abc), atol=0.02)
        assert matcher.fit(r, ref)
        assert np.abs(ours.atom_labels["forces"][k]).max() < 1e-3 and np.abs(ours.labels["stress"][k]).max() < 1e-5


def test_ase_criterion_reproduces_the_ase_trajectory(float64):
    """Same update rule and, with criterion='ase', the same stopping test: in float64 the
    step counts equal ASE's and the final structures coincide."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    structures = rattled(3, seed=5)
    ours = relax(structures, LJ, fmax=0.01, criterion="ase", progress=False)
    for k, (s, r) in enumerate(zip(structures, ours.to_structures())):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.calc = ase_lj()
        opt = FIRE(FrechetCellFilter(atoms), logfile=None)
        opt.run(fmax=0.01, steps=2000)
        assert converged(ours)[k] and ours.labels["steps"][k] == opt.nsteps
        # we drop the antisymmetric (rotation) part of the cell force, ASE keeps it: compare
        # rotation-invariant geometry
        ref = AseAtomsAdaptor.get_structure(atoms)
        np.testing.assert_allclose(r.lattice.parameters, ref.lattice.parameters, atol=1e-5)
        np.testing.assert_allclose(r.frac_coords, ref.frac_coords, atol=1e-6)


def test_an_unevaluated_start_relaxes_exactly_like_an_evaluated_one(float64):
    """``init_fn(..., evaluate=False)`` (how the queue starts and refills slots): the first
    step only evaluates, then the run is the evaluated run, step for step."""
    structures = rattled(3, seed=7)
    c = Crystal.from_structures(structures)
    graph = neighbor_graph(c, LJ.cutoff + 0.25)
    init_fn, step_fn = fire_relaxer(LJ.energy_fn, LJ.cutoff, FireConfig(fmax=1e-3))
    step = jax.jit(step_fn)
    evaluated = init_fn(LJ.params, c, graph)
    fresh = init_fn(None, c, graph, evaluate=False)
    assert np.asarray(fresh.fresh).all() and not np.asarray(evaluated.fresh).any()
    fresh = step(LJ.params, fresh)  # the evaluation: nothing moves and no step is counted
    np.testing.assert_array_equal(np.asarray(fresh.steps), 0)
    np.testing.assert_allclose(np.asarray(fresh.crystal.frac), np.asarray(evaluated.crystal.frac), atol=1e-14)
    for _ in range(12):
        evaluated, fresh = step(LJ.params, evaluated), step(LJ.params, fresh)
    for name in ("fire.q", "fire.lam", "fire.v_atoms", "fire.v_cell", "fire.dt", "fire.alpha", "fire.n_pos",
                 "energy", "evaluation.f_q", "steps", "status", "volume0"):
        get = lambda state: np.asarray(eval("state." + name))
        np.testing.assert_allclose(get(fresh), get(evaluated), rtol=1e-12, atol=1e-12, err_msg=name)
    assert int(evaluated.steps[0]) == 12


def test_the_skin_changes_when_graphs_are_rebuilt_not_the_relaxation(float64):
    """A wider skin rebuilds the graph less often; the edges inside the cutoff, and so the
    trajectory, stay the same. By default the skin grows with long cutoffs."""
    assert FireConfig().skin_for(5.0) == 0.25 and FireConfig().skin_for(12.0) == 1.0
    assert FireConfig(skin=0.5).skin_for(12.0) == 0.5
    with pytest.raises(ValueError, match="skin"):
        FireConfig(skin=-0.1)
    c = Crystal.from_structures(rattled(3, seed=5, sigma=0.15, strain=0.08))
    runs = []
    for skin in (0.05, 1.5):
        config = FireConfig(fmax=1e-3, skin=skin)
        init_fn, step_fn = fire_relaxer(LJ.energy_fn, LJ.cutoff, config)
        graph = neighbor_graph(c, LJ.cutoff + config.skin_for(LJ.cutoff), capacity=4096, images=(3, 3, 3))
        state, step, rebuilds = init_fn(LJ.params, c, graph), jax.jit(step_fn), 0
        for _ in range(80):
            moved = step(LJ.params, state)
            rebuilds += int(np.any(np.asarray(moved.neighbors.frac) != np.asarray(state.neighbors.frac)))
            state = moved
        assert not np.asarray(state.needs_graph).any()
        runs.append((state, rebuilds))
    (narrow, n_narrow), (wide, n_wide) = runs
    assert n_narrow > n_wide  # the narrow skin did rebuild more often
    for name in ("fire.q", "fire.lam", "energy", "evaluation.f_q", "steps", "status"):
        get = lambda state: np.asarray(eval("state." + name))
        np.testing.assert_allclose(get(narrow), get(wide), rtol=1e-10, atol=1e-12, err_msg=name)


def _fcc_energy_per_atom(lattice_parameters):
    scaled = []
    for a in lattice_parameters:
        s = FCC.copy()
        s.scale_lattice(a**3)
        scaled.append(s)
    return np.asarray(LJ(Crystal.from_structures(scaled)).energy) / 4


def test_pressure_shrinks_the_cell_as_the_enthalpy_says(float64):
    p_gpa = 2.0
    p = p_gpa * GPA
    res = relax([FCC], LJ, pressure_gpa=p_gpa, fmax=1e-4, stress_tol=1e-6, progress=False)
    free = relax([FCC], LJ, fmax=1e-4, stress_tol=1e-6, progress=False)
    a_p, a_0 = res.to_structures()[0].lattice.a, free.to_structures()[0].lattice.a
    assert a_p < a_0
    # minimum of the enthalpy per atom h(a) = e(a) + P a^3 / 4 on a fine grid
    grid = np.linspace(a_p - 0.05, a_p + 0.05, 201)
    h = _fcc_energy_per_atom(grid) + p * grid**3 / 4
    a_star = grid[int(np.argmin(h))]
    assert abs(a_p - a_star) < 1e-3
    np.testing.assert_allclose(res.labels["stress"][0], -p * np.eye(3), atol=1e-6)  # equilibrium: sigma = -P
    np.testing.assert_allclose(res.to_structures()[0].lattice.angles, 90.0, atol=1e-4)


def test_a_broken_structure_does_not_disturb_the_batch():
    good = rattled(3, seed=4)
    broken = FCC.copy()
    broken.replace(1, "Si", broken.lattice.get_fractional_coords(broken[0].coords + [0.1, 0, 0]))
    nan = FCC.copy()
    nan = Structure(FCC.lattice, FCC.species, np.where(np.arange(12).reshape(4, 3) == 4, np.nan, FCC.frac_coords))
    batch = [good[0], broken, good[1], nan, good[2]]
    results = relax(batch, LJ, fmax=1e-3, progress=False)
    alone = relax(good, LJ, fmax=1e-3, progress=False)
    assert status_names(results)[3] == "failed_nan"
    assert status_names(results)[1] != "running"
    r, ref = results[[0, 2, 4]], alone
    assert converged(r).all() and converged(ref).all()
    np.testing.assert_array_equal(r.labels["steps"], ref.labels["steps"])
    np.testing.assert_allclose(r.labels["energy"], ref.labels["energy"], rtol=1e-6)
    np.testing.assert_allclose(r.lattice, ref.lattice, atol=1e-5)


def test_a_collapse_into_a_potential_hole_is_flagged_and_isolated():
    """A short-range 'hole' (as ML potentials have) swallows two close atoms: that structure
    fails with failed_collapse instead of winning on energy, and the others are untouched."""
    from jaxinv.potentials import Potential, pair_energy_sum

    def holed(params, crystal, graph):
        def pair(r, zi, zj):
            sr6 = (2.0 / jnp.maximum(r, 1.5)) ** 6  # LJ with a flat core below 1.5 Å ...
            return 4 * 0.1 * (sr6 * sr6 - sr6) - 10.0 * jnp.exp(-(r / 0.5) ** 2)  # ... and a hole at 0
        return pair_energy_sum(pair, crystal, graph)

    import jax.numpy as jnp

    pot = Potential("holed-lj", holed, {}, cutoff=5.0)
    good = rattled(2, seed=6)
    close = FCC.copy()
    close.replace(1, "Si", close.lattice.get_fractional_coords(close[0].coords + [1.0, 0, 0]))
    results = relax([good[0], close, good[1]], pot, fmax=1e-3, progress=False)
    alone = relax(good, pot, fmax=1e-3, progress=False)
    assert status_names(results)[1] == "failed_collapse" and failed(results)[1]
    r, ref = results[[0, 2]], alone
    assert converged(r).all()
    np.testing.assert_array_equal(r.labels["steps"], ref.labels["steps"])
    np.testing.assert_allclose(r.labels["energy"], ref.labels["energy"], rtol=1e-6)


def test_cell_modes():
    s = rattled(1, seed=5, strain=0.08)[0]
    runs = [relax([s], LJ, cell=m, fmax=1e-3, progress=False) for m in ("fixed", "volume", "shape")]
    assert all(converged(r)[0] for r in runs)
    fixed, volume, shape = (r.to_structures()[0] for r in runs)
    np.testing.assert_allclose(fixed.lattice.matrix, s.lattice.matrix, atol=1e-6)
    assert abs(fixed.volume - s.volume) < 1e-4
    assert abs(volume.volume - s.volume) / s.volume < 1e-5
    assert abs(shape.volume - s.volume) > 0.1
    ratio = np.array(shape.lattice.abc) / np.array(s.lattice.abc)
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    np.testing.assert_allclose(shape.lattice.angles, s.lattice.angles, atol=1e-4)


def test_step_limit_and_padded_atoms_and_input_order():
    mixed = rattled(3, seed=6) + rattled(2, seed=7, supercell=[2, 1, 1]) + rattled(2, seed=8, supercell=[3, 1, 1])
    order = [4, 0, 6, 2, 5, 1, 3]
    structures = [mixed[i] for i in order]
    queue = RelaxQueue(LJ, FireConfig(fmax=1e-3), progress=False, max_batch=2)
    compiled_before = queue._chunk._cache_size()  # compiled programs are shared between queues
    results = queue.run(structures)
    for k, (s, r) in enumerate(zip(structures, results.to_structures())):
        assert len(r) == len(s) and converged(results)[k]
        assert s.composition == r.composition
        assert not results.atom_labels["forces"][k, len(s):].any()  # padded atoms carry no force
    # three size buckets (4, 8, 12 atoms): one compilation of the chunk per bucket
    assert queue._chunk._cache_size() - compiled_before <= 3
    limited = relax(structures[:2], LJ, fmax=1e-6, max_steps=5, progress=False)
    assert status_names(limited) == ["max_steps", "max_steps"] and limited.labels["steps"][0] == 5


def test_refilled_slots_give_the_same_results_as_one_batch():
    structures = rattled(7, seed=9)
    small = RelaxQueue(LJ, FireConfig(fmax=1e-3), max_batch=2, progress=False).run(structures)
    big = RelaxQueue(LJ, FireConfig(fmax=1e-3), max_batch=16, batch_fraction=1.0, compact=False,
                     progress=False).run(structures)
    np.testing.assert_array_equal(small.labels["steps"], big.labels["steps"])
    np.testing.assert_allclose(small.labels["energy"], big.labels["energy"], rtol=1e-6)


def test_compacted_batches_give_the_same_results():
    """The last running structures move into a smaller batch; nothing about them changes."""
    structures = rattled(12, seed=13, sigma=0.15)  # 42 to 81 steps
    kwargs = dict(max_batch=16, batch_fraction=1.0, chunk_steps=5, progress=False)
    compacting = RelaxQueue(LJ, FireConfig(fmax=1e-3), compact=True, **kwargs)
    compacted = compacting.run(structures)
    whole = RelaxQueue(LJ, FireConfig(fmax=1e-3), compact=False, **kwargs).run(structures)
    assert compacting.stats["compactions"] >= 1
    assert len(set(whole.labels["steps"].tolist())) > 1  # structures finish at different steps
    assert converged(compacted).all()
    np.testing.assert_array_equal(compacted.labels["steps"], whole.labels["steps"])
    np.testing.assert_allclose(compacted.labels["energy"], whole.labels["energy"], rtol=1e-6)
    np.testing.assert_allclose(compacted.frac, whole.frac, atol=1e-5)


def test_cpu_batches_hold_a_quarter_of_the_list():
    queue = RelaxQueue(LJ, FireConfig(), progress=False)
    crystal = Crystal.from_structures(rattled(40, seed=14))
    assert queue.batch_fraction == 0.25  # the test machine is a CPU
    assert queue._batch_size(crystal, np.arange(40), 40) == 8  # a quarter, 10, rounded down on the bucket ladder
    assert RelaxQueue(LJ, batch_fraction=1.0, progress=False)._batch_size(crystal, np.arange(40), 40) == 32
    with pytest.raises(ValueError, match="batch_fraction"):
        RelaxQueue(LJ, batch_fraction=0.0)


def test_dense_structures_are_relaxed_last_in_their_own_pass():
    """A collapsed cell (1/6 of the volume: 6x the edges) goes to a second pass, so the
    others' graphs are not padded to its capacity; their results are unchanged."""
    regular = rattled(6, seed=15)
    dense = FCC.copy()
    dense.scale_lattice(FCC.volume / 6)
    structures = regular[:3] + [dense] + regular[3:]
    queue = RelaxQueue(LJ, FireConfig(fmax=1e-3), progress=False)
    passes, capacities = [], []
    run_group = queue._run_group

    def recording(crystal, n_slot, pending, *args):
        passes.append(list(pending))
        run_group(crystal, n_slot, pending, *args)
        capacities.append(queue._sizes(n_slot).capacity)

    queue._run_group = recording
    r = queue.run(structures)
    assert passes == [[0, 1, 2, 4, 5, 6], [3]]
    assert capacities[0] * 3 < capacities[1]
    alone = RelaxQueue(LJ, FireConfig(fmax=1e-3), progress=False).run(regular)
    assert converged(alone).all()
    np.testing.assert_array_equal(np.delete(r.labels["steps"], 3), alone.labels["steps"])
    np.testing.assert_allclose(np.delete(r.labels["energy"], 3), alone.labels["energy"], rtol=1e-9)


def test_graph_grows_when_the_cell_shrinks():
    expanded = FCC.copy()
    expanded.scale_lattice(FCC.volume * 2.5)  # relaxes back to a much denser cell
    expanded = perturb([expanded], rattle=0.03, seed=1)[0]
    queue = RelaxQueue(LJ, FireConfig(fmax=1e-3), progress=False)
    r = queue.run([expanded])
    ref = relax([FCC], LJ, fmax=1e-3, progress=False)
    assert converged(r)[0] and queue.stats["graph_regrowths"] >= 1
    assert abs(energy_per_atom(r)[0] - energy_per_atom(ref)[0]) < 1e-4


def test_trajectory_is_recorded():
    s = rattled(1, seed=10)[0]
    queue = RelaxQueue(LJ, FireConfig(fmax=1e-3), trajectory=True, progress=False)
    r = queue.run([s])
    t, steps = queue.trajectory_of(0, 4), int(r.labels["steps"][0])
    assert t["energy"].shape == (steps,) and t["frac"].shape == (steps, 4, 3)
    assert t["energy"][-1] == pytest.approx(float(r.labels["energy"][0]), rel=1e-6)
    assert t["energy"][-1] < t["energy"][0]


SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_relax import rattled
    from toy_potentials import LJ
    from jaxinv.relax import converged, relax
    structures = rattled(24, seed=11) + rattled(8, seed=12, supercell=[2, 1, 1])
    res = relax(structures, LJ, fmax=1e-3, stress_tol=1e-4, checkpoint={ckpt!r}, progress=False,
                checkpoint_every=0.0, max_batch=3, chunk_steps=5)
    np.save({out!r}, np.stack([res.labels["energy"], converged(res)], -1))
""")


# slow (58 s): tests/test_resume.py kills and resumes the same queue checkpoint through `jaxinv run relax`
@pytest.mark.slow
def test_checkpoint_resume_after_kill(tmp_path):
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "final.npy")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__), ckpt=ckpt, out=out))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    saved = lambda: [p for p in (tmp_path / "ckpt" / "orbax").glob("[0-9]*")] if (tmp_path / "ckpt" / "orbax").exists() else []
    deadline = time.time() + 240
    while time.time() < deadline and len(saved()) < 2 and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from jaxinv.checkpoint import Checkpointer

    step, tree = Checkpointer(ckpt).restore()
    n_done = int(np.asarray(tree["done"]).sum())
    assert 0 < n_done < 32
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=600)
    resumed = np.load(out)
    whole = relax(rattled(24, seed=11) + rattled(8, seed=12, supercell=[2, 1, 1]), LJ, fmax=1e-3, stress_tol=1e-4,
                  progress=False, max_batch=3, chunk_steps=5)
    uninterrupted = np.stack([whole.labels["energy"], converged(whole)], -1)
    assert resumed[:, 1].all() and uninterrupted[:, 1].all()
    # float32 sums in a different batch order end a few steps apart, at the same minimum
    np.testing.assert_allclose(resumed[:, 0], uninterrupted[:, 0], rtol=1e-5)


def test_stillinger_weber_silicon_relaxes_to_its_known_minimum():
    from jaxinv.potentials.registry import load_potential

    sw = load_potential("sw_si")
    diamond = Structure(Lattice.cubic(5.431), ["Si"] * 8,
                        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                         [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])
    start = diamond.copy()
    start.apply_strain([0.04, -0.03, 0.02])
    start = perturb([start], rattle=0.06, seed=2)[0]
    r = relax([start], sw, fmax=1e-3, stress_tol=1e-5, progress=False)
    assert converged(r)[0]
    assert abs(energy_per_atom(r)[0] - (-4.3366)) < 5e-4
    np.testing.assert_allclose(r.to_structures()[0].lattice.abc, 5.431, atol=2e-3)
    assert StructureMatcher().fit(r.to_structures()[0], diamond)


def test_relax_experiment_writes_results_and_resumes(tmp_path):
    """`jaxinv run relax structures=<CIFs> potential=sw_si` writes the CSV, CIFs and extxyz;
    the same command again resumes from its checkpoint and reports the same results."""
    import csv

    from jaxinv.cli import run_experiment

    diamond = Structure(Lattice.cubic(5.431), ["Si"] * 8,
                        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                         [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])
    folder = tmp_path / "cifs"
    folder.mkdir()
    for k, s in enumerate(perturb([diamond] * 3, rattle=0.05, strain=0.03, seed=4)):
        s.to(filename=str(folder / f"si_{k}.cif"))
    out = tmp_path / "run"
    args = [f"structures={folder}", "potential=sw_si", "fmax=0.005", "stress_tol=1e-4", f"out_dir={out}",
            "progress=false"]
    summary = run_experiment("relax", args)
    assert summary["statuses"] == {"converged": 3}
    rows = list(csv.DictReader(open(out / "relaxed.csv")))
    assert len(rows) == 3
    for row in rows:
        assert abs(float(row["energy_per_atom_eV"]) - (-4.3366)) < 1e-3  # SW diamond
        assert float(row["max_force_eV_A"]) < 0.005
        assert row["formation_eV_atom"] == row["floor_eV_atom"] == ""  # sw_si has no elemental references
    assert len(list((out / "cif").glob("*.cif"))) == 3 and (out / "relaxed.extxyz").stat().st_size > 0
    again = run_experiment("relax", args)
    assert again["statuses"] == summary["statuses"]
    assert list(csv.DictReader(open(out / "relaxed.csv"))) == rows


def test_queue_regrows_the_graph_for_the_step_that_overflowed():
    """The jitted step rejects a move whose rebuilt graph overflows and keeps the structure
    where the old graph fits exactly. A host rebuild sized for that geometry alone would give
    back the same graph, and the retried move would overflow again, forever. The regrown graph
    must fit the rejected move (its edge count and lattice are in the overflowed build)."""
    from toy_potentials import rejected_overflow_state

    from jaxinv.graph import build_graph

    config = FireConfig()
    state, moved, rc = rejected_overflow_state(config)
    # a search's queue starts from the graph that overflowed; a plain queue from nothing
    for queue in (RelaxQueue(LJ, config, progress=False),
                  search_relaxer(LJ, config, 1, (state.graph.images, state.graph.capacity))):
        regrown = queue._regrow(state, queue._sizes(4)).graph
        assert regrown.capacity >= int(state.graph.n_edges[0])
        assert not bool(build_graph(moved, rc, regrown.images, regrown.capacity).overflow[0])


def test_search_relaxer_slots_and_compaction_give_the_same_relaxations(float64):
    """How a generation's structures share slots changes nothing but the cost: one slot each
    (an accelerator), the CPU default of a quarter as many slots refilled from the list, and
    gathering the last running structures into smaller batches all give the same energies,
    structures, statuses and step counts."""
    from jaxinv.potentials.registry import load_potential
    from jaxinv.relax.queue import default_batch_fraction
    from jaxinv.search import SearchSpace
    from jaxinv.search.composition import graph_floor
    from jaxinv.search.seeds import random_crystals

    space = SearchSpace.fixed("Si8")
    starts, _ = random_crystals(space, 8, np.random.default_rng(3))
    pot = load_potential("sw_si")
    config = FireConfig(fmax=0.02, max_steps=600)
    floor = graph_floor(space, pot.cutoff + config.skin_for(pot.cutoff))
    compacted = search_relaxer(pot, config, 8, floor, compact=True, slots=8)
    whole = search_relaxer(pot, config, 8, floor, compact=False, slots=8)
    refilled = search_relaxer(pot, config, 8, floor)
    a, b, c = compacted.run(starts), whole.run(starts), refilled.run(starts)
    assert compacted.stats["compactions"] >= 1 and whole.stats["compactions"] == 0
    assert refilled.stats["batch_sizes"] == [int(np.ceil(8 * default_batch_fraction()))]
    assert np.ptp(b.labels["steps"]) > 50  # the relaxations differ in length, so compaction had work to do
    for other in (a, c):
        np.testing.assert_array_equal(other.labels["status"], b.labels["status"])
        np.testing.assert_array_equal(other.labels["steps"], b.labels["steps"])
        np.testing.assert_allclose(other.labels["energy"], b.labels["energy"], atol=1e-8)
        np.testing.assert_allclose(other.frac, b.frac, atol=1e-7)
        np.testing.assert_allclose(other.lattice, b.lattice, atol=1e-7)


def test_search_relaxer_tightens_a_generous_capacity_once_without_changing_results(float64):
    """After its first run a search's queue drops the edge capacity to what its relaxations
    needed (with headroom) when the starting floor overshot it; padded edges only cost
    time, so relaxing the same starts again gives the same results."""
    from jaxinv.search import SearchSpace
    from jaxinv.search.seeds import random_crystals

    starts, _ = random_crystals(SearchSpace.fixed("Si4"), 4, np.random.default_rng(4))
    # a pair potential and no compaction: two quick compilations, one per capacity
    relaxer = search_relaxer(LJ, FireConfig(fmax=0.01, max_steps=400), 4, ((1, 1, 1), 1024), compact=False)
    generous = relaxer.run(starts)
    sizes = relaxer.graphs[starts.n_max]
    # converged after real work (one start's cell runs away under ASE's test at this fmax: failed_cell)
    assert (generous.labels["status"] == 1).sum() >= 3 and generous.labels["steps"].sum() > 50
    # the relaxed (denser) structures' needs were seen, not only the starting ones'
    assert sizes.most_needed < sizes.capacity < 1024 / 1.5
    assert not sizes.tighten()  # only once
    fitted = relaxer.run(starts)
    assert sizes.capacity < 1024 / 1.5  # it did not have to grow back
    np.testing.assert_array_equal(fitted.labels["status"], generous.labels["status"])
    np.testing.assert_array_equal(fitted.labels["steps"], generous.labels["steps"])
    np.testing.assert_allclose(fitted.labels["energy"], generous.labels["energy"], atol=1e-8)
    np.testing.assert_allclose(fitted.lattice, generous.lattice, atol=1e-7)
    np.testing.assert_allclose(fitted.frac, generous.frac, atol=1e-7)
