"""Data parallelism over devices and processes (jaxinv.distributed): the same results as one device.

JAX fixes its device count when it starts, so the runs with several devices
happen in subprocesses of this file (``python tests/test_distributed.py ...``):

* ``devices``: every workload (a relaxation queue, a search generation, a property
  ensemble fit, a NequIP training epoch, generative train steps, screening
  inference) once with 1 CPU device and once with 4
  (``XLA_FLAGS=--xla_force_host_platform_device_count=4``), both at the same time;
* ``process``: two processes joined by ``jax.distributed`` on 127.0.0.1 (two
  CPU devices each) run a sharded screen over all four devices and a relaxation
  split between them, with per-process checkpoints, and are compared with the
  one-process run.

Tolerances: relaxations run in float64, where a structure's result does not depend
on its batch, and are compared exactly or to 1e-12. Training runs in float32: the
gradients of a split batch are summed across devices in another order than on one
device (a few float32 ulps, ~1e-7 relative), and a few optimizer steps carry that
to ~1e-6, so trained parameters are compared to 1e-4 relative / 1e-5 absolute, far
below what a wrong split (another minibatch, a missing gradient share) changes.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ------------------------------------------------------------------ workloads
def _structures(n=8, seed=1):
    from pymatgen.core import Lattice, Structure

    from jaxinv.data.perturb import perturb

    fcc = Structure(Lattice.cubic(3.3), ["Si"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return perturb([fcc] * n, rattle=0.04, strain=0.05, seed=seed)


RELAX = dict(fmax=1e-3, cell="fixed", batch=4, compact=False, progress=False)  # float64, the default


def _relax_arrays(relaxed, prefix="relax"):
    return {f"{prefix}_energy": relaxed.labels["energy"], f"{prefix}_steps": relaxed.labels["steps"],
            f"{prefix}_status": relaxed.labels["status"], f"{prefix}_frac": relaxed.frac,
            f"{prefix}_forces": relaxed.atom_labels["forces"], f"{prefix}_lattice": relaxed.lattice}


def _devices(x) -> int:
    """How many devices hold ``x`` (1 for a host array)."""
    import jax

    return len(x.sharding.device_set) if isinstance(x, jax.Array) else 1


class _CountSplits:
    """Records over how many devices :class:`RelaxQueue` laid each batch (``shard_batch``)."""

    def __enter__(self):
        import jax

        import jaxinv.relax.queue as queue_module

        self.module, self.original, self.devices = queue_module, queue_module.shard_batch, []

        def recording(tree):
            out = self.original(tree)
            self.devices.append(_devices(jax.tree_util.tree_leaves(out)[0]))
            return out

        queue_module.shard_batch = recording
        return self

    def __exit__(self, *exc):
        self.module.shard_batch = self.original


def relax_workload():
    """8 structures in batches of 4 slots: with 4 devices each batch is split over them."""
    from jaxinv.relax import relax
    from toy_potentials import LJ

    with _CountSplits() as splits:
        out = _relax_arrays(relax(_structures(), LJ, **RELAX))
    return {**out, "relax_devices": np.array(splits.devices)}


def search_workload():
    """One generation of a random search (batch 4) after its first batch."""
    import jax

    from jaxinv.potentials import lennard_jones
    from jaxinv.relax import FireConfig
    from jaxinv.search import Problem, SearchSpace, make_search

    lj = lennard_jones(sigma=1.0, epsilon=1.0, species=None, cutoff=6.0, truncation="none")
    space = SearchSpace.fixed("Ar6", cluster=True, box=16.0, bond_length=2 ** (1 / 6), min_distance=0.9)
    search = make_search("random", Problem(space, lj, FireConfig(fmax=0.01, max_steps=400), batch=4), population=4)
    with _CountSplits() as splits:
        state = search.step(search.init(jax.random.PRNGKey(0)))
    calls = splits.devices
    pop = state.population
    return {"search_energy": np.asarray(pop.energy), "search_frac": np.asarray(pop.crystal.frac),
            "search_ident": np.asarray(pop.ident), "search_evaluated": np.asarray(state.evaluated.population.energy),
            "search_devices": np.array(calls)}


def property_workload():
    """A 2-member composition ensemble, 6 epochs of minibatches of 16, and its predictions."""
    from jaxinv.screening.train import PropertyModel, TrainConfig

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = np.stack([x[:, 0] - 0.5 * x[:, 1] ** 2, np.sin(x[:, 2])], 1)
    from jaxinv.distributed import data_mesh

    mesh = data_mesh(16)  # what fit() uses by default
    model = PropertyModel("composition", ("a", "b"), {"hidden": [16]})
    history = model.fit(x, y, TrainConfig(n_members=2, epochs=6, batch_size=16, chunk_epochs=3, seed=0))
    mean, std = model.predict_inputs(model.scale_inputs(rng.normal(size=(37, 6)).astype(np.float32)))
    leaves = {f"fit_param_{i}": np.asarray(a) for i, a in enumerate(_leaves(model.params))}
    return {**leaves, "fit_loss": np.asarray(history["train_loss"]), "fit_mean": mean, "fit_std": std,
            "fit_devices": np.array(1 if mesh is None else mesh.devices.size)}


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def nequip_workload():
    """One epoch of a tiny NequIP model on 8 LJ-labelled cells in batches of 4."""
    from jaxinv.crystal import Crystal
    from jaxinv.potentials.nequip import NequIPConfig
    from jaxinv.potentials.train import Trainer, TrainConfig
    from toy_potentials import LJ

    c = Crystal.from_structures(_structures(8, seed=3))
    out = LJ(c)
    data = c.replace(labels={"energy": np.asarray(out.energy), "stress": np.asarray(out.stress)},
                     atom_labels={"forces": np.asarray(out.forces)})
    model = NequIPConfig.simple(species=(6, 14), channels=4, lmax=1, num_layers=1, cutoff=4.0, radial_hidden=(8,))
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, seed=0), data, progress=False)
    potential = trainer.fit()
    leaves = {f"nequip_param_{i}": np.asarray(a) for i, a in enumerate(_leaves(potential.params))}
    batch_devices = _devices(trainer.train_batches[0][0].lattice)
    return {**leaves, "nequip_loss": np.array([h["loss"] for h in trainer.history]),
            "nequip_devices": np.array(batch_devices)}


def generative_workload():
    """Three train steps of a tiny coordinate VAE (Hungarian matching) on batches of 8, and two of
    a tiny GAN (2 critic batches of 8 stacked on axis 0, so the crystals are split along axis 1)."""
    import jax

    from jaxinv.data.dataset import Dataset
    from jaxinv.generative.model import GenerativeModel, ModelConfig
    from jaxinv.generative.steps import init_state, make_train_step
    from jaxinv.generative.train import Batcher

    from pymatgen.core import Lattice, Structure

    from jaxinv.data.perturb import perturb

    # two elements: with one, the GAN's critic turns NaN after its first step (also on one device)
    base = Structure(Lattice.cubic(3.3), ["Si", "Si", "C", "C"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    c = perturb([base] * 16, rattle=0.04, strain=0.05, seed=5)
    n = np.array([len(s) for s in c])
    shear = np.random.default_rng(5).normal(scale=0.03, size=(16, 3, 3))  # varied cell angles too
    lattice = np.einsum("bij,bjk->bik", np.stack([s.lattice.matrix for s in c]), np.eye(3) + shear + shear.swapaxes(1, 2))
    ds = Dataset("toy", np.array([str(i) for i in range(16)]), lattice, np.concatenate([s.frac_coords for s in c]),
                 np.concatenate([s.atomic_numbers for s in c]).astype(np.int32),
                 np.concatenate([[0], np.cumsum(n)]).astype(np.int64), {}, np.array(["train"] * 16))
    out = {}
    for kind, steps, groups in (("coord_vae", 3, 0), ("coord_gan", 2, 2)):
        config = ModelConfig(kind=kind, latent=4, hidden=16, enc_hidden=8, critic_hidden=8, kl_warmup=1,
                             encoder="mlp", matching=True, lr=3e-3, n_critic=max(groups, 1))
        model = GenerativeModel.from_dataset(config, ds)
        batcher = Batcher(model.arrays(ds), 8, seed=0, groups=groups)
        step = make_train_step(model)
        state = init_state(model, jax.random.PRNGKey(0))
        losses = []
        for k in range(steps):
            batch = {key: jax.numpy.asarray(v) for key, v in batcher(k).items()}
            state, m = step(state, batch, jax.random.PRNGKey(k))
            losses.append(float(m["loss" if kind == "coord_vae" else "critic_loss"]))
        out.update({f"gen_{kind}_param_{i}": np.asarray(a) for i, a in enumerate(_leaves(state.params))})
        out[f"gen_{kind}_loss"] = np.array(losses)
        out[f"gen_{kind}_devices"] = np.array(_devices(_leaves(state.params)[0]))
    return out


def screen_workload(mesh=None):
    """Ensemble predictions of 37 rows in chunks of 16 rows (with ``mesh``: over its devices)."""
    import jax

    from jaxinv.screening.models import ensemble_init
    from jaxinv.screening.sharding import sharded_predict
    from jaxinv.screening.train import PropertyModel

    m = PropertyModel("composition", ("a", "b"), {"hidden": [16]})
    x = np.random.default_rng(0).normal(size=(37, 6)).astype(np.float32)
    m.params = ensemble_init(m.module, jax.random.PRNGKey(0), 3, x[:2])
    m.y_mean, m.y_std, m.sigma_scale = np.zeros(2), np.ones(2), np.ones(2)
    mean, std = sharded_predict(m, x, mesh, batch_size=16)
    return {"screen_mean": mean, "screen_std": std}


WORKLOADS = {"relax": relax_workload, "search": search_workload, "property": property_workload,
             "nequip": nequip_workload, "generative": generative_workload, "screen": screen_workload}


# ------------------------------------------------------------- subprocesses
def _devices_main(out_path, names):
    import jax

    results, seconds = {}, {}
    for name in names:
        t0 = time.perf_counter()
        results.update(WORKLOADS[name]())
        seconds[name] = time.perf_counter() - t0
    results["device_count"] = np.array(jax.device_count())
    np.savez(out_path, **results)
    print(json.dumps(seconds))


def _process_main(out_dir, index, port):
    """One of two processes: a screen over all four devices, then a relaxation split between them
    that saves finished pieces; then the same relaxation again after some pieces were lost (a failed
    node): each process loads what is left and relaxes the rest again."""
    import logging

    import jax

    from jaxinv import distributed

    assert distributed.initialize(f"127.0.0.1:{port}", 2, index)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    from jax.experimental.multihost_utils import sync_global_devices

    from jaxinv.crystal import Crystal
    from jaxinv.relax import relax
    from toy_potentials import LJ

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("jaxinv.distributed").addHandler(handler)
    logging.getLogger("jaxinv.distributed").setLevel(logging.INFO)

    screen = screen_workload()  # default mesh: every device of both processes
    inputs = Crystal.from_structures(_structures(), labels={"index": np.arange(8.0)})  # input labels stay
    pieces = Path(out_dir) / "pieces"
    first = relax(inputs, LJ, checkpoint=str(pieces), distributed=True, **RELAX)
    sync_global_devices("first relaxation done")
    if index == 1:  # lost: one piece of process 0's share and two of process 1's
        for rows in ("000000003_000000004", "000000006_000000007", "000000007_000000008"):
            (pieces / f"rows_{rows}.npz").unlink()
    sync_global_devices("pieces lost")
    resumed = relax(inputs, LJ, checkpoint=str(pieces), distributed=True, **RELAX)
    np.savez(Path(out_dir) / f"process_{index}.npz", **screen, **_relax_arrays(first),
             **_relax_arrays(resumed, "resumed"), index=np.asarray(first.labels["index"]))
    (Path(out_dir) / f"process_{index}.log").write_text("\n".join(messages))


# ------------------------------------------------------------------- tests
def test_process_rows_cover_every_item_once_in_order():
    from jaxinv.distributed import process_rows

    for n, k in [(10, 3), (7, 7), (3, 5), (0, 2), (1000, 8)]:
        shares = [process_rows(n, i, k) for i in range(k)]
        assert [r for s in shares for r in range(s.start, s.stop)] == list(range(n))
        assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1
    with pytest.raises(ValueError, match="outside"):
        process_rows(10, 3, 3)


def test_initialize_is_a_no_op_outside_a_multi_task_slurm_step(monkeypatch):
    import jax

    from jaxinv.distributed import initialize

    for name in ("SLURM_NTASKS", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    assert initialize() is False
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a shell from salloc: no srun step
    assert initialize() is False
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node001")
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task step
    assert initialize() is False
    assert not jax.distributed.is_initialized()


def test_process_map_saves_pieces_and_a_rerun_computes_only_the_lost_ones(tmp_path):
    from jaxinv.distributed import CHUNKS, process_map

    calls = []

    def square(rows):
        calls.append((rows.start, rows.stop))
        x = np.arange(rows.start, rows.stop, dtype=np.float64)
        return {"x": x, "x2": np.stack([x, x * x], 1)}

    n = 2 * CHUNKS + 5  # pieces of 3 rows
    whole = process_map(square, n)  # no folder: one call for this (only) process's share
    assert calls == [(0, n)] and whole["x"].tolist() == list(range(n))
    calls.clear()
    first = process_map(square, n, tmp_path, key="run-a")
    assert len(calls) == len(list(tmp_path.glob("rows_*.npz"))) == -(-n // 3)
    for name in ("rows_000000000_000000003.npz", "rows_000000510_000000513.npz"):  # a failed node's pieces
        (tmp_path / name).unlink()
    calls.clear()
    again = process_map(square, n, tmp_path, key="run-a")
    assert calls == [(0, 3), (510, 513)]
    for name in ("x", "x2"):
        np.testing.assert_array_equal(again[name], whole[name])
        np.testing.assert_array_equal(first[name], whole[name])
    with pytest.raises(ValueError, match="different run"):
        process_map(square, n, tmp_path, key="run-b")


def test_shard_file_command_predicts_each_share_and_merges_them(tmp_path):
    """``python -m jaxinv.screening.sharding predict/merge`` (no jax.distributed): two shares, merged,
    equal one prediction of all candidates."""
    import jax
    from pymatgen.core import Lattice, Structure

    from jaxinv.screening.candidates import Candidates
    from jaxinv.screening.models import ensemble_init
    from jaxinv.screening.sharding import _cli
    from jaxinv.screening.train import PropertyModel

    structures = [Structure(Lattice.cubic(4.0 + 0.1 * i), ["Na", "Cl"] if i % 2 else ["Mg", "O"],
                            [[0, 0, 0], [.5, .5, .5]]) for i in range(7)]
    cands = Candidates.from_structures(structures)
    model = PropertyModel("composition", ("a",), {"hidden": [8]})
    raw = model.raw_inputs(cands.crystal)
    model.x_mean, model.x_std = raw.mean(0).astype(np.float32), np.ones(raw.shape[1], np.float32)
    model.y_mean, model.y_std, model.sigma_scale = np.zeros(1), np.ones(1), np.ones(1)
    model.params = ensemble_init(model.module, jax.random.PRNGKey(0), 2, model.inputs(cands.crystal)[:2])
    model.save(tmp_path / "model")
    cands.save(tmp_path / "cands.npz")
    for i in (0, 1):
        assert _cli(["predict", "--model", str(tmp_path / "model"), "--candidates", str(tmp_path / "cands.npz"),
                     "--out", str(tmp_path / "shards"), "--process-index", str(i), "--process-count", "2"]) == 0
    assert _cli(["merge", "--out", str(tmp_path / "shards"), "--to", str(tmp_path / "merged.npz")]) == 0
    merged = Candidates.load(tmp_path / "merged.npz")
    mean, std = model.predict(cands.crystal)
    assert merged.ids.tolist() == cands.ids.tolist()
    np.testing.assert_allclose(merged.table["pred_a"], mean[:, 0], rtol=1e-6)
    np.testing.assert_allclose(merged.table["sigma_a"], std[:, 0], rtol=1e-6)


def _env(devices):
    # XLA optimizes little (every process compiles its programs anew and compilation dominates on
    # 2 cores); both sides of every comparison use the same flags
    flags = (f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0 "
             "--xla_llvm_disable_expensive_passes=true")
    return dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]),
                OPENBLAS_NUM_THREADS="1", JAXINV_XLA_CACHE="off")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All subprocesses at once (they share the cores): every workload on 1 and on 4 devices, and
    the two processes of a jax.distributed run (2 devices each)."""
    out = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    jobs = {f"devices{d}": (["devices", out / f"devices{d}.npz", ",".join(WORKLOADS)], d) for d in (1, 4)}
    jobs.update({f"process{i}": (["process", out, i, port], 2) for i in (0, 1)})
    procs = {}
    for name, (args, devices) in jobs.items():
        log = open(out / f"{name}.out", "w")
        procs[name] = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *map(str, args)],
                                       env=_env(devices), stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    failed = {}
    for name, proc in procs.items():
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if rc != 0:
            failed[name] = (out / f"{name}.out").read_text()[-3000:]
    assert not failed, "\n\n".join(f"{k} failed:\n{v}" for k, v in failed.items())
    loaded = {k: dict(np.load(out / f"{k}.npz")) for k in ("devices1", "devices4")}
    for i in (0, 1):
        loaded[f"process{i}"] = dict(np.load(out / f"process_{i}.npz"))
        loaded[f"process{i}_log"] = (out / f"process_{i}.log").read_text()
    loaded["pieces"] = out / "pieces"
    return loaded


def _compare(runs, prefix, rtol=0.0, atol=0.0):
    """The 4-device arrays named ``prefix*`` against the 1-device ones; returns the largest difference."""
    one, four = runs["devices1"], runs["devices4"]
    names = [k for k in one if k.startswith(prefix) and not k.endswith("_devices")]
    assert names and set(names) <= set(four)
    worst = 0.0
    for k in names:
        np.testing.assert_allclose(four[k], one[k], rtol=rtol, atol=atol, err_msg=k)
        if one[k].size:
            worst = max(worst, float(np.max(np.abs(four[k].astype(float) - one[k].astype(float)))))
    return worst


def test_four_devices(runs):
    assert int(runs["devices1"]["device_count"]) == 1 and int(runs["devices4"]["device_count"]) == 4


def test_relaxation_batches_split_over_four_devices_equal_one_device(runs):
    assert set(runs["devices4"]["relax_devices"].tolist()) == {4}  # every batch was split
    assert set(runs["devices1"]["relax_devices"].tolist()) == {1}
    assert (runs["devices1"]["relax_status"] == 1).all()  # converged
    print("relax: max |4 devices - 1 device|", _compare(runs, "relax_", atol=1e-12))


def test_a_search_generation_on_four_devices_equals_one_device(runs):
    assert set(runs["devices4"]["search_devices"].tolist()) == {4}
    assert np.isfinite(runs["devices1"]["search_energy"]).all()
    print("search: max |4 devices - 1 device|", _compare(runs, "search_", atol=1e-5))


def test_property_ensemble_training_on_four_devices_equals_one_device(runs):
    assert int(runs["devices4"]["fit_devices"]) == 4
    print("property fit: max |4 devices - 1 device|", _compare(runs, "fit_", rtol=1e-4, atol=1e-5))


def test_nequip_training_on_four_devices_equals_one_device(runs):
    assert int(runs["devices4"]["nequip_devices"]) == 4 and int(runs["devices1"]["nequip_devices"]) == 1
    print("nequip: max |4 devices - 1 device|", _compare(runs, "nequip_", rtol=1e-4, atol=1e-5))


def test_generative_training_on_four_devices_equals_one_device(runs):
    assert int(runs["devices4"]["gen_coord_vae_devices"]) == int(runs["devices4"]["gen_coord_gan_devices"]) == 4
    print("generative: max |4 devices - 1 device|", _compare(runs, "gen_", rtol=1e-4, atol=1e-5))


def test_screening_on_four_devices_equals_one_device(runs):
    assert runs["devices1"]["screen_mean"].shape == (37, 2)
    print("screen: max |4 devices - 1 device|", _compare(runs, "screen_", rtol=1e-6, atol=1e-6))


def test_two_processes_screen_and_relax_like_one_process(runs):
    one = runs["devices1"]
    for i in (0, 1):  # every process holds the merged result
        p = runs[f"process{i}"]
        np.testing.assert_allclose(p["screen_mean"], one["screen_mean"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(p["screen_std"], one["screen_std"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(p["index"], np.arange(8.0))  # input order, input labels kept
        for run in ("relax", "resumed"):
            for name in ("energy", "steps", "status", "frac", "forces", "lattice"):
                np.testing.assert_allclose(p[f"{run}_{name}"], one[f"relax_{name}"], rtol=0, atol=1e-12,
                                           err_msg=f"process {i} {run} {name}")
    # after the lost pieces, each process loaded the pieces of its share that were left
    assert runs["process0_log"].count("loaded from") == 3 and "rows 3-4" not in runs["process0_log"]
    assert runs["process1_log"].count("loaded from") == 2 and "rows 6-7" not in runs["process1_log"]


def test_a_rerun_with_another_process_count_loads_the_saved_pieces(runs):
    """Pieces are numbered independently of the process count: one process finds all eight
    pieces the two processes saved and relaxes nothing."""
    from jaxinv.crystal import Crystal
    from jaxinv.relax import FireConfig, RelaxQueue
    from jaxinv.relax.api import _relax_share
    from toy_potentials import LJ

    # the queue relax(**RELAX) builds
    queue = RelaxQueue(LJ, FireConfig(fmax=RELAX["fmax"], cell=RELAX["cell"]), batch=RELAX["batch"],
                       compact=RELAX["compact"], progress=False, precision="float64")
    ran = []
    run = queue.run
    queue.run = lambda c: ran.append(c.batch_size) or run(c)
    inputs = Crystal.from_structures(_structures(), labels={"index": np.arange(8.0)})
    merged = _relax_share(queue, inputs, runs["pieces"])
    assert ran == []
    one = runs["devices1"]
    np.testing.assert_allclose(merged.labels["energy"], one["relax_energy"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(merged.frac, one["relax_frac"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(merged.labels["index"], np.arange(8.0))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    if sys.argv[1] == "devices":
        _devices_main(sys.argv[2], sys.argv[3].split(","))
    else:
        _process_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
