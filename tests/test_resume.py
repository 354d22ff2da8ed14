"""Kill and resume (issue 22, "tests that stay"): relax, search, screen and train_generative.

Each experiment is started as a real process (``jaxinv run ...``) with ``out_dir`` set,
killed with SIGKILL a moment after its first checkpoint appears on disk, and started
again with the same ``out_dir``; it must finish with the results of an uninterrupted
run of the same command in another folder, with nothing lost and nothing duplicated.
Configurations are tiny (classical potentials, few structures, a tiny model).

The three processes of a test share a fresh XLA compilation cache, so only the first
one compiles.
"""
import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# `jaxinv run <args>`. JAXINV_TEST_RELAX_CHECKPOINT_EVERY (seconds) lowers the relaxation
# queue's checkpoint interval (30 s, not a config field), so that a tiny relaxation
# checkpoints before it ends.
DRIVER = r"""
import os, sys
every = os.environ.get("JAXINV_TEST_RELAX_CHECKPOINT_EVERY")
if every is not None:
    import jaxinv.relax.queue as queue
    _init = queue.RelaxQueue.__init__
    def _init_every(self, *args, **kwargs):
        kwargs["checkpoint_every"] = float(every)
        _init(self, *args, **kwargs)
    queue.RelaxQueue.__init__ = _init_every
from jaxinv.cli import main
sys.exit(main(["run"] + sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    xla = tmp_path_factory.mktemp("xla")
    return dict(os.environ, JAXINV_XLA_CACHE=str(xla), PYTHONPATH=os.pathsep.join([str(REPO)] + sys.path),
                OPENBLAS_NUM_THREADS="1", JAXINV_TEST_RELAX_CHECKPOINT_EVERY="0")


def _command(args, out):
    return [sys.executable, "-c", DRIVER, *args, f"out_dir={out}", "progress=false"]


def run_to_end(args, out, env, timeout=300):
    log = Path(str(out) + ".log")
    with open(log, "a") as fh:
        proc = subprocess.run(_command(args, out), cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              timeout=timeout)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return log


def run_and_kill(args, out, env, ready, timeout=300, seed=None):
    """Start the run, wait until ``ready()`` (its first checkpoint is on disk), wait a random
    moment more (at most 0.2 s) and SIGKILL it; it must not have finished by then."""
    log = Path(str(out) + ".log")
    with open(log, "a") as fh:
        proc = subprocess.Popen(_command(args, out), cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline and not ready():
                time.sleep(0.02)
            time.sleep(random.Random(seed).uniform(0.0, 0.2))
            finished = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not finished, ("the run ended before it could be killed (make it longer):\n"
                          + log.read_text()[-3000:])
    assert ready(), f"no checkpoint appeared within {timeout} s:\n" + log.read_text()[-3000:]
    return log


def _steps(orbax_dir: Path) -> list[int]:
    if not orbax_dir.is_dir():
        return []
    return sorted(int(p.name) for p in orbax_dir.iterdir() if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists())


def start(args, out, env):
    """The uninterrupted reference, started beside the killed run (two cores: it costs little wall time)."""
    fh = open(Path(str(out) + ".log"), "a")
    proc = subprocess.Popen(_command(args, out), cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    proc.log, proc.fh = Path(str(out) + ".log"), fh
    return proc


def finish(proc, timeout=300):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.fh.close()
    assert proc.returncode == 0, proc.log.read_text()[-3000:]


# ------------------------------------------------------------------ relax
N_RELAX = 8


def _silicon_cifs(folder: Path, n: int = N_RELAX):
    from pymatgen.core import Lattice, Structure

    from jaxinv.data.perturb import perturb

    diamond = Structure(Lattice.cubic(5.431), ["Si"] * 8,
                        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                         [0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]])
    folder.mkdir()
    for k, s in enumerate(perturb([diamond] * n, rattle=0.08, strain=0.04, seed=7)):
        s.to(filename=str(folder / f"si_{k:02d}.cif"))


def _relaxed(out: Path) -> list[dict]:
    with open(out / "relaxed.csv") as fh:
        return list(csv.DictReader(fh))


def test_relax_killed_and_resumed(tmp_path, env):
    """`jaxinv run relax` (Stillinger-Weber silicon, two structures per batch, a checkpoint after
    every finished structure) killed after its first checkpoint, then resumed."""
    cifs = tmp_path / "cifs"
    _silicon_cifs(cifs)
    args = ["relax", f"structures={cifs}", "potential=sw_si", "fmax=0.01", "stress_tol=1e-4", "max_batch=2",
            "write_cifs=false"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = start(args, whole, env)
    run_and_kill(args, killed, env, lambda: len(_steps(killed / "checkpoint" / "orbax")) >= 1, seed=1)
    from jaxinv.checkpoint import Checkpointer

    _, tree = Checkpointer(killed / "checkpoint").restore()
    n_done = int(np.asarray(tree["done"]).sum())
    assert 0 < n_done < N_RELAX  # killed in the middle
    run_to_end(args, killed, env)
    finish(reference)

    resumed, uninterrupted = _relaxed(killed), _relaxed(whole)
    assert [(r["index"], r["id"]) for r in resumed] == [(r["index"], r["id"]) for r in uninterrupted]
    assert len({r["id"] for r in resumed}) == N_RELAX  # nothing lost, nothing twice
    for a, b in zip(resumed, uninterrupted):
        assert a["status"] == b["status"] == "converged"
        assert a["formula"] == b["formula"]
        assert a["energy_per_atom_eV"] == b["energy_per_atom_eV"], (a, b)  # printed to 1e-6 eV
    assert resumed == uninterrupted  # every column: steps, forces, stress, volume


# ------------------------------------------------------------------ train_generative
TINY_GEN = ["train_generative", "model.latent=8", "model.hidden=32", "model.enc_hidden=16", "model.encoder=mlp",
            "data.limit=64", "train.batch_size=16", "train.eval_every=2", "train.eval_size=16", "check_samples=4",
            "check_recon=4", "n_samples=8", "n_cif=2", "evaluate=false", "train.steps=8",
            "train.checkpoint_every_s=0.001"]  # a checkpoint after (nearly) every step


def _jsonl(path: Path) -> list[str]:
    return [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text().splitlines()]


def test_train_generative_killed_and_resumed(tmp_path, env):
    """A tiny coordinate VAE, killed once its first evaluation record and a checkpoint are on
    disk (often between the two: the evaluated step then runs again)."""
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = start(TINY_GEN, whole, env)

    def ready():
        m = killed / "metrics.jsonl"
        return bool(_steps(killed / "checkpoint" / "orbax")) and m.exists() and m.stat().st_size > 0

    run_and_kill(TINY_GEN, killed, env, ready, seed=2)
    from jaxinv.checkpoint import Checkpointer

    step, _ = Checkpointer(killed / "checkpoint").restore()
    assert 0 < step < 8
    run_to_end(TINY_GEN, killed, env)
    finish(reference)

    a, b = json.loads((killed / "results.json").read_text()), json.loads((whole / "results.json").read_text())
    assert a["steps"] == b["steps"] == 8
    assert json.dumps(a["history"], sort_keys=True) == json.dumps(b["history"], sort_keys=True)
    records = _jsonl(killed / "metrics.jsonl")
    assert records == _jsonl(whole / "metrics.jsonl")  # each evaluation once, equal to the uninterrupted run's
    assert [json.loads(r)["step"] for r in records] == [2, 4, 6, 8]
    _, pa = Checkpointer(killed / "checkpoint").restore()
    _, pb = Checkpointer(whole / "checkpoint").restore()
    import jax

    for x, y in zip(jax.tree_util.tree_leaves(pa["state"]), jax.tree_util.tree_leaves(pb["state"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert (killed / "samples" / "samples.extxyz").read_text() == (whole / "samples" / "samples.extxyz").read_text()


def test_generative_metrics_file_holds_each_evaluation_once_after_a_kill(perov, tmp_path, monkeypatch):
    """In process: the run dies after writing the step-2 evaluation but before any checkpoint;
    the resumed run evaluates step 2 again and must not append it a second time. (The
    network and its training step are stubs: compiling real ones takes most of a minute.)"""
    import importlib

    from jaxinv.generative.model import GenerativeModel, ModelConfig
    from jaxinv.generative.train import TrainConfig, train

    train_mod = importlib.import_module("jaxinv.generative.train")  # (the package's `train` is the function)
    monkeypatch.setattr(train_mod, "make_train_step",
                        lambda model: lambda state, batch, key: (state.replace(step=state.step + 1), {}))

    ds = perov.subset("train").subset(np.arange(48))
    model = GenerativeModel.from_dataset(ModelConfig(kind="coord_vae", latent=4, hidden=16, enc_hidden=8,
                                                     encoder="mlp", kl_warmup=1, matching=False,
                                                     augment_ops=False), ds)
    monkeypatch.setattr(model, "init", lambda key: {"w": np.zeros(3, np.float32)})  # flax's init: ~20 s
    arrays = model.arrays(ds)
    cfg = TrainConfig(steps=4, batch_size=16, eval_every=2, eval_size=16, progress=False,
                      checkpoint_every_s=1e9)  # no checkpoint but the final one

    def dies_at_4(params, step):
        if step == 4:
            raise KeyboardInterrupt("killed")
        return {"probe": float(step)}

    metrics = tmp_path / "metrics.jsonl"
    with pytest.raises(KeyboardInterrupt):
        train(model, arrays, cfg, 0, None, tmp_path / "ck", dies_at_4, metrics)
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [2]
    train(model, arrays, cfg, 0, None, tmp_path / "ck", lambda p, s: {"probe": float(s)}, metrics)
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [2, 4]


# ------------------------------------------------------------------ search
# a first population of 16, then generations of 4
SEARCH = ["search", "composition=Si8", "potential=sw_si", "algorithm=ea", "batch=4", "max_relaxations=28"]


def _history(out: Path) -> list[tuple]:
    from ase.db import connect

    keys = ("ident", "generation", "operator", "parent1", "parent2", "e_cell", "enthalpy", "fitness", "status",
            "steps", "relaxations")
    with connect(str(out / "history.db")) as db:
        return [tuple(row.key_value_pairs[k] for k in keys) + (row.positions.round(6).tolist(),)
                for row in db.select(sort="id")]


@pytest.mark.slow  # its relaxer compiles for about a minute of CPU time
def test_search_killed_and_resumed(tmp_path, env):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = start(SEARCH, whole, env)
    # killed after the first generation past the initial population has been saved
    run_and_kill(SEARCH, killed, env, lambda: max(_steps(killed / "checkpoint" / "orbax"), default=0) >= 1, seed=3)
    from jaxinv.checkpoint import Checkpointer

    step, _ = Checkpointer(killed / "checkpoint").restore()
    assert 1 <= step < 3
    run_to_end(SEARCH, killed, env)
    finish(reference)
    a, b = json.loads((killed / "summary.json").read_text()), json.loads((whole / "summary.json").read_text())
    for k in ("generations", "relaxations", "best_fitness", "best_enthalpy_per_atom", "best_formula", "restarts"):
        assert a[k] == b[k], k
    assert a["generations"] == 3 and a["relaxations"] == 28  # 16, then 4 per generation
    ha, hb = _history(killed), _history(whole)
    assert len({h[0] for h in ha}) == len(ha)  # no structure twice
    assert ha == hb
    assert (killed / "best.cif").read_text() == (whole / "best.cif").read_text()


# ------------------------------------------------------------------ screen
# the default stages, in chunks small enough that the run is killed inside the property stage
SCREEN = ["screen", "candidates.n_prototypes=12", "quick_model_epochs=3",
          "stages=[{type: composition, smact: true, max_elements: 5, chunk_size: 64},"
          " {type: property, windows: {heat_ref: [null, 1.0], dir_gap: [1.5, 3.0]}, k: 2.0, chunk_size: 16},"
          " {type: rank, by: p_window, top_k: 200}]"]


def _csv_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow  # the quick model featurizes and trains on perov_5's training split in every process
def test_screen_killed_and_resumed(tmp_path, env):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    reference = start(SCREEN, whole, env)

    def ready():
        m = killed / "funnel" / "manifest.json"
        try:
            return bool(json.loads(m.read_text())["stages"][1]["chunks"])  # a property chunk is done
        except (OSError, ValueError, KeyError, IndexError):
            return False

    run_and_kill(SCREEN, killed, env, ready, seed=4)
    manifest = json.loads((killed / "funnel" / "manifest.json").read_text())
    assert manifest["stages"][1]["status"] == "running"  # killed inside the property stage
    run_to_end(SCREEN, killed, env)
    finish(reference)
    assert _csv_rows(killed / "ranked.csv") == _csv_rows(whole / "ranked.csv")
    for stage in sorted(p.name for p in (whole / "funnel").iterdir() if p.is_dir()):
        dropped = killed / "funnel" / stage / "dropped.csv"
        if (whole / "funnel" / stage / "dropped.csv").exists():
            rows = _csv_rows(dropped)
            assert len({r["id"] for r in rows}) == len(rows), stage  # no candidate dropped twice
            assert rows == _csv_rows(whole / "funnel" / stage / "dropped.csv"), stage
    a, b = json.loads((killed / "summary.json").read_text()), json.loads((whole / "summary.json").read_text())
    assert a["survivors"] == b["survivors"]
    drop_time = lambda stats: {k: v for k, v in stats.items() if "seconds" not in k}
    assert a["candidates"] and drop_time(a["candidates"]) == drop_time(b["candidates"])  # kept across the kill
    assert [(s["name"], s["n_in"], s["n_out"], s["dropped"]) for s in a["stages"]] == \
        [(s["name"], s["n_in"], s["n_out"], s["dropped"]) for s in b["stages"]]


def test_funnel_dropped_rows_appear_once_after_a_kill(tmp_path, monkeypatch):
    """In process: killed after a chunk's dropped rows were written but before the chunk
    counted as done; the chunk runs again on resume and its rows must not appear twice."""
    import jaxinv.screening.funnel as funnel_mod
    from jaxinv.screening.candidates import Candidates
    from jaxinv.screening.funnel import Decision, Stage, chain
    from pymatgen.core import Lattice, Structure

    structures = [Structure(Lattice.cubic(4.0 + 0.01 * i), ["Na", "Cl"], [[0, 0, 0], [.5, .5, .5]]) for i in range(12)]
    cands = Candidates.from_structures(structures, score=np.arange(12, dtype=float))
    stage = Stage("even", lambda c, ctx: Decision(c.table["score"] % 2 == 0, "odd"), {"rule": "even"}, chunk_size=4)
    chain(stage).run(cands, tmp_path / "whole")

    append = funnel_mod._append_dropped

    def append_then_die(path, ids, reasons, chunk):
        append(path, ids, reasons, chunk)
        if chunk == 1:
            raise KeyboardInterrupt("killed before the chunk counted as done")

    with monkeypatch.context() as m:
        m.setattr(funnel_mod, "_append_dropped", append_then_die)
        with pytest.raises(KeyboardInterrupt):
            chain(stage).run(cands, tmp_path / "killed")
    chain(stage).run(cands, tmp_path / "killed")
    rows = _csv_rows(tmp_path / "killed" / "stage_00_even" / "dropped.csv")
    assert sorted(r["id"] for r in rows) == sorted(str(i) for i in cands.ids[1::2])  # each odd one once
    assert rows == _csv_rows(tmp_path / "whole" / "stage_00_even" / "dropped.csv")
