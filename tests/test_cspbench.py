"""benchmarks/bench_cspbench.py (issue 27): the scorer on hand-made runs, resume, the table
and plot, and a CI smoke run of one target (GaP, 4 sites, SevenNet-0) with a 1-minute budget
(pyxtal random search; jaxinv's cold start needs about 64 s, so its smoke is slow, 2 minutes)."""
from __future__ import annotations

import json
import time

import bench_cspbench as bc  # benchmarks/, on sys.path from conftest
import numpy as np
import pytest


def _rocksalt(a):  # Fm-3m (225), primitive cell of 2 atoms; Na-Cl at a/2
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"],
                                     [[0, 0, 0], [.5, .5, .5]]).get_primitive_structure()


def _cscl(a):  # Pm-3m (221)
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]])


def _squashed():  # Na and Cl 0.8 Å apart: 0.3 of their covalent-radius sum (1.66 + 1.02 Å)
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.2, 0, 0]])


def _energy_by_volume(table):
    """A fake potential: energy per atom looked up by the cell volume (rounded)."""
    return lambda structures: np.array([table[round(s.volume, 2)] for s in structures])


def _rec(t, s):
    return {"t": t, "energy_per_atom": 0.0, "structure": s.as_dict()}


def test_collapse_rule_uses_the_relaxers_limit():
    from jaxinv.relax import FireConfig

    assert FireConfig.min_bond_fraction == 0.65 and FireConfig.species_limits
    assert bc.closest_over_limit(_squashed()) == pytest.approx(0.8 / (0.65 * (1.66 + 1.02)), rel=1e-3)
    assert bc.collapsed(_squashed())
    assert not bc.collapsed(_rocksalt(5.64))  # Na-Cl 2.82 Å, 1.05 of the sum
    # SnS's two holes: Sn-Sn at 1.86 Å (0.67 of the sum) and a flat Sn sheet at 2.18 Å (0.78); two Sn
    # atoms fail below 0.85 of their sum, any two atoms below 0.65
    from pymatgen.core import Lattice, Structure

    tin = Structure(Lattice.cubic(6.0), ["Sn", "Sn", "S"], [[0, 0, 0], [1.86 / 6, 0, 0], [0.5, 0.5, 0.5]])
    assert bc.collapsed(tin) and bc.closest_over_limit(tin) == pytest.approx(1.86 / (0.85 * 2.78), rel=1e-3)
    sheets = Structure(Lattice.hexagonal(4.361, 11.281), ["S"] * 4 + ["Sn"] * 4,
                       [[.5, 0, .5], [0, .5, .5], [.5, .5, .5], [0, 0, .5], [.5, 0, 0], [0, .5, 0], [.5, .5, 0], [0, 0, 0]])
    assert bc.collapsed(sheets) and bc.closest_over_limit(sheets) == pytest.approx(2.1805 / (0.85 * 2.78), rel=1e-3)


def test_scorer_reference_solved_space_group_and_time():
    good, near, worse, squashed = _rocksalt(5.64), _rocksalt(5.60), _cscl(3.3), _squashed()
    # a hole without a short pair: Na-Cl at 3.25 Å, but 18.5 eV/atom below SevenNet-0's Na and Cl
    deep = _rocksalt(6.5)
    energies = {round(good.volume, 2): -3.0000, round(near.volume, 2): -2.9985,  # 1.5 meV/atom above
                round(worse.volume, 2): -2.98, round(squashed.volume, 2): -50.0,  # a potential's hole
                round(deep.volume, 2): -20.0}
    assert not bc.collapsed(deep) and bc.below_energy_floor(deep, -20.0) and not bc.below_energy_floor(good, -3.0)
    runs = {("m1", 0): [_rec(5.0, near), _rec(40.0, good)],
            # collapsed or below the energy floor: never a best nor the reference
            ("m2", 0): [_rec(2.0, squashed), _rec(3.0, deep), _rec(9.0, worse)],
            ("m2", 1): []}  # a run that saved nothing
    ref, rows = bc.score_runs(runs, 225, _energy_by_volume(energies))
    assert ref == pytest.approx(-3.0)
    by = {(r["method"], r["seed"]): r for r in rows}
    m1, m2, empty = by[("m1", 0)], by[("m2", 0)], by[("m2", 1)]
    fields = {"method", "seed", "best_energy_per_atom", "best_minus_reference_mev", "solved", "time_to_solve_s",
              "spacegroup", "spacegroup_hit", "first_structure_s", "reference_energy_per_atom"}
    assert all(fields <= set(r) for r in rows)
    # solved from its first record (1.5 meV/atom is within 2), its best is the reference, rock salt
    assert m1["solved"] and m1["time_to_solve_s"] == 5.0 and m1["best_minus_reference_mev"] == pytest.approx(0)
    assert m1["spacegroup"] == 225 and m1["spacegroup_hit"]
    # the collapsed -50 eV/atom structure is dropped: its best is CsCl, 20 meV/atom up, not solved
    assert m2["best_energy_per_atom"] == pytest.approx(-2.98) and m2["valid_records"] == 1
    assert not m2["solved"] and m2["time_to_solve_s"] is None
    assert m2["best_minus_reference_mev"] == pytest.approx(20.0)
    assert m2["spacegroup"] == 221 and not m2["spacegroup_hit"] and m2["first_structure_s"] == 9.0
    assert not empty["solved"] and empty["best_energy_per_atom"] is None


def test_solved_threshold_is_two_mev():
    a, b, c = _rocksalt(5.64), _rocksalt(5.50), _rocksalt(5.70)
    e = {round(a.volume, 2): -3.0, round(b.volume, 2): -2.9979, round(c.volume, 2): -2.9981}
    _, rows = bc.score_runs({("x", 0): [_rec(1, a)], ("y", 0): [_rec(1, b)], ("z", 0): [_rec(1, c)]}, 225,
                            _energy_by_volume(e))
    assert [r["solved"] for r in rows] == [True, False, True]


def test_an_earlier_reference_keeps_a_lone_run_honest(tmp_path, capsys):
    good, near = _rocksalt(5.64), _rocksalt(5.60)
    energy = _energy_by_volume({round(good.volume, 2): -3.0, round(near.volume, 2): -2.9950})
    lone = {("m1", 0): [_rec(5.0, near)]}
    # alone, its best is the reference: solved at 0 meV/atom
    ref, (row,) = bc.score_runs(lone, 225, energy)
    assert ref == pytest.approx(-2.995) and row["solved"]
    # against an earlier benchmark's lower reference: 5 meV/atom up, not solved
    ref, (row,) = bc.score_runs(lone, 225, energy, reference=-3.0)
    assert ref == -3.0 and not row["solved"] and row["best_minus_reference_mev"] == pytest.approx(5.0)
    # an earlier reference above this run's best does not raise the bar
    ref, (row,) = bc.score_runs(lone, 225, energy, reference=-2.9)
    assert ref == pytest.approx(-2.995) and row["solved"]
    # through score() and an earlier scores.json; a lone run without one is warned about
    stream, done, _ = bc.run_files(tmp_path, "mp-8882", "m1", 0)
    stream.parent.mkdir(parents=True)
    stream.write_text(json.dumps(_rec(5.0, near)) + "\n")
    done.write_text(json.dumps({"method": "m1", "seed": 0, "budget_s": 600, "wall_s": 600, "returncode": -9,
                                "command": "x"}))
    (row,) = bc.score(tmp_path, energy_fn=energy)
    assert row["solved"] and "mp-8882 has a single run and no earlier reference" in capsys.readouterr().err
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps([{"target": "mp-8882", "reference_energy_per_atom": -3.0},
                                   {"target": "mp-2731", "reference_energy_per_atom": None}]))
    assert bc.earlier_references(earlier) == {"mp-8882": -3.0}
    (row,) = bc.score(tmp_path, energy_fn=energy, references=bc.earlier_references(earlier))
    assert not row["solved"] and row["best_minus_reference_mev"] == pytest.approx(5.0)
    assert "single run" not in capsys.readouterr().err


def test_stream_budget_torn_line_resume_table_and_plot(tmp_path, monkeypatch):
    row = bc.target_row("GaP")
    assert row["material_id"] == "mp-8882" and row["primitive_formula"] == "Ga2P2" and row["nsites"] == 4
    stream, done, _ = bc.run_files(tmp_path, "mp-8882", "m1", 0)
    stream.parent.mkdir(parents=True)
    rec = bc.Recorder(stream, t0=time.time())
    good, squashed = _rocksalt(5.64), _squashed()
    assert not rec.offer(squashed, -50.0)  # a collapsed structure is not even recorded
    assert not rec.offer(_rocksalt(6.5), -20.0)  # nor one below the energy floor
    assert rec.offer(good, -3.0) and not rec.offer(good, -2.0)
    with open(stream, "a") as fh:  # a record after the budget and a line torn by the kill
        fh.write(json.dumps(_rec(1e9, good)) + "\n" + '{"t": 3.0, "energy_per')
    assert len(bc.read_stream(stream, 600)) == 1
    done.write_text(json.dumps({"method": "m1", "seed": 0, "budget_s": 600, "wall_s": 600, "returncode": -9,
                                "command": "x", "killed_at_budget": True}))
    # resume: a run with a done record is not launched again
    monkeypatch.setattr(bc, "launch", lambda *a, **k: pytest.fail("a finished run was relaunched"))
    bc.run_all([row], ["m1"], 1, 600, tmp_path, [0])
    rows = bc.score(tmp_path, energy_fn=_energy_by_volume({round(good.volume, 2): -3.0}))
    assert len(rows) == 1 and rows[0]["solved"] and rows[0]["target"] == "mp-8882"
    md = bc.table(rows)
    assert "| Ga2P2 (mp-8882) | 1/1, " in md and "SG 0/1" in md  # rock salt is not GaP's 186
    assert bc.solved_curve(rows, tmp_path / "solved.png").stat().st_size > 1000


def test_jaxinv_method_names():
    assert bc.jaxinv_algorithm("jaxinv") == "ea"  # jaxinv run search's default
    assert bc.jaxinv_algorithm("jaxinv_pso") == "pso"
    assert bc.jaxinv_algorithm("jaxinv_bondsoft") == "ea" and bc.JAXINV_VARIANTS["jaxinv_bondsoft"][1] == {
        "soft_model": "bonds"}
    with pytest.raises(ValueError):
        bc.jaxinv_algorithm("jaxinv_nope")
    # every variant's options are fields of its algorithm's config
    import dataclasses

    from jaxinv.search import ALGORITHMS

    for name, (alg, options) in bc.JAXINV_VARIANTS.items():
        config = dataclasses.replace(ALGORITHMS[alg][1], **options)
        assert all(getattr(config, k) == v for k, v in options.items()), name


def _smoke(tmp_path, method, budget=60.0):
    row = bc.target_row("mp-8882")
    # not pinned: a test cannot know which core is free (pinned to core 0 beside a benchmark there, the
    # worker got half a core and no structure in the minute)
    r = bc.launch(row, method, 0, budget, tmp_path, core=None)
    assert "error_tail" not in r, r.get("error_tail")
    assert r["killed_at_budget"] and r["wall_s"] < budget + 5
    (row,) = bc.score(tmp_path, budget=budget)  # SevenNet-0 re-evaluation of the stream
    print(json.dumps({k: v for k, v in row.items() if k != "command"}, indent=1))
    assert row["valid_records"] >= 1 and row["first_structure_s"] < budget
    # its own best is the reference: solved at zero gap; GaP relaxes near -4.62 eV/atom (wurtzite)
    assert row["solved"] and row["best_minus_reference_mev"] == pytest.approx(0.0, abs=1e-6)
    assert -5.0 < row["best_energy_per_atom"] < -4.0
    assert row["time_to_solve_s"] <= budget and row["structures_seen"] >= 1
    return row


def test_smoke_gap_one_minute(tmp_path):
    """CI smoke (issue 27): GaP (mp-8882, Ga2P2, 4 sites) with SevenNet-0, 1 minute from process
    start on one core with a cold XLA cache, then the scorer on its stream. It runs pyxtal random
    search (bench_search's runner): its first relaxed structure came at 25 s, GaP's minimum at
    41 s. jaxinv's EA cannot fit this budget cold: compiling SevenNet-0's batched relaxer for
    16 structures put its first batch at 64 s (test_smoke_gap_jaxinv_two_minutes)."""
    _smoke(tmp_path, "pyxtal_random")


@pytest.mark.slow
def test_smoke_gap_jaxinv_two_minutes(tmp_path):
    """jaxinv's default search (EA, batch 16) on GaP with SevenNet-0, cold XLA cache, 2 minutes:
    its first batch (compilation included) was recorded at 64 s on one core; about 2.5 minutes.
    Every line of its stream says the EA's generation and restarts (none: restart_after is off)."""
    _smoke(tmp_path, "jaxinv", budget=120.0)
    stream = bc.run_files(tmp_path, "mp-8882", "jaxinv", 0)[0]
    lines = [json.loads(line) for line in stream.read_text().splitlines()]
    assert lines and all(r["restarts"] == 0 and r["generation"] >= 0 for r in lines if "generation" in r)
    assert any("generation" in r for r in lines)


def test_ase_ga_survives_a_raising_operator(tmp_path, monkeypatch):
    """An ASE-GA operator that raises (SoftMutation's eigh of a degenerate Hessian,
    ``LinAlgError: Eigenvalues did not converge``, ended a TiGa3 run) costs that offspring,
    not the run: it is counted and another offspring is drawn (issue 27). Every other
    offspring raises here; an 8-atom Lennard-Jones crystal keeps it cheap."""
    from ase_ga.offspring_creator import OperationSelector

    from jaxinv.relax import FireConfig

    bs = bc._bench_search()
    space, pot, _, _, _, _ = bs.case("lj_fcc8")
    bs.PREPARED["lj_raise"] = (space, pot, FireConfig(fmax=0.05, max_steps=5), 8, 24,
                               {"energy_per_atom": -np.inf, "tol": 0.0})
    original, calls = OperationSelector.get_new_individual, [0]

    def flaky(self, candidates):
        calls[0] += 1
        if calls[0] % 2:
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return original(self, candidates)

    monkeypatch.setattr(OperationSelector, "get_new_individual", flaky)
    r = bs.run_ase_ga("lj_raise", 0, 24, workdir=str(tmp_path))
    assert r["relaxations"] == 24  # 20 starts and 4 offspring, despite the errors
    assert r["operator_errors"] == (calls[0] + 1) // 2 >= 4
    assert r["operator_error_types"] == {"LinAlgError": r["operator_errors"]}
