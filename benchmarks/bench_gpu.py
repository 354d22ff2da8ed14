"""Accelerator benchmark: SevenNet-0 evaluation, relaxation, generative training and a search
generation, each section in its own process under its own time budget (issue 24 item 3).

    python benchmarks/bench_gpu.py [--smoke] [--sections potential,relax,generative,search] [--out FILE]
    python benchmarks/bench_gpu.py --prepare DIR     # on a machine with a package registry: what to carry

``benchmarks/gpu.sh`` sets the environment up and calls this; see it for a bare device machine.

Sections (each a record in one JSON file, written as soon as the section ends, so a
later failure or timeout loses nothing; a timed-out section keeps what it had written):

* ``potential``: energy, forces and stress of perov_5 cells in one jitted call, over
  batch sizes: compile time, median call time, structures, atoms and edges per
  second, and the device's peak memory after each size (sizes grow, so the peak is
  that size's). A size that runs out of memory ends the sweep.
* ``relax``: 1,000 perov_5 structures (rattled 0.05 Å, strained 2%, as
  ``bench_relax.py``) relaxed by :class:`~jaxinv.relax.RelaxQueue` to fmax 0.05 eV/Å
  in float64, cold (compilation included) and, if the budget allows, again warm; the
  batch sizes the queue chose from device memory, out-of-memory retries, and the
  measured bytes per edge of the relaxation program.
* ``generative``: the coordinate VAE on perov_5's training split: train steps per
  second (compilation excluded) per batch size, and crystals sampled per second.
* ``search``: one evolutionary generation with SevenNet-0: the first (random
  structures relaxed, compilation included), then, budget allowing, the second
  (variation operators, their compilation, and the relaxation).

``--smoke`` runs the same code on a few structures with a Lennard-Jones potential, on
a CPU in about a minute (``tests/test_gpu_bench.py``). Budgets: each section
gets a soft budget (it skips optional work, e.g. larger batch sizes or the warm
repeat, once past it) and a hard timeout (its process is killed), so the whole
stays within ``--total`` seconds.

Where the inputs come from: perov_5 through :func:`jaxinv.data.load_dataset`
(``$JAXINV_DATA/perov_5/val.csv``, then ``shared/data``); SevenNet-0 through
:func:`jaxinv.potentials.sevennet.load_sevennet` with downloads off: the converted
``.npz`` or the checkpoint in ``$JAXINV_CACHE`` (or an installed sevenn).
``--prepare DIR`` fills DIR with both (``DIR/data``, ``DIR/jaxinv-cache``) and with
the wheels a device image lacks (``DIR/wheels``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
SECTIONS = ("potential", "relax", "generative", "search")
GRACE = 1.25  # a section's hard timeout is its soft budget times this

FULL = {
    "potential": "sevennet0", "edge_chunk": None,  # SevenNet's convolution edges per loop step (None: its default)
    "budgets": {"potential": 80, "relax": 120, "generative": 45, "search": 85},
    "efs_batches": [1, 64, 1024, 8192], "efs_repeats": 10,
    "relax_n": 1000, "relax_fmax": 0.05, "relax_steps": 300, "relax_precision": "float64", "relax_compact": None,
    "gen_model": "coord_vae", "gen_config": {}, "gen_batches": [64, 512], "gen_steps": 50, "gen_samples": 10000,
    "gen_train": None,
    "search_formula": "Sr2Ti2O6", "search_batch": 64, "search_steps": 300, "search_generations": 2,
}
SMOKE = {
    "potential": "lj", "edge_chunk": None,
    "budgets": {"potential": 20, "relax": 25, "generative": 25, "search": 40},
    "efs_batches": [1, 4], "efs_repeats": 2,
    "relax_n": 6, "relax_fmax": 0.05, "relax_steps": 15, "relax_precision": "float64", "relax_compact": None,
    # a narrow VAE without slot matching: the same training step, compiled in a few seconds
    "gen_model": "coord_vae", "gen_config": {"matching": False, "encoder": "mlp", "hidden": 32, "enc_hidden": 16,
                                             "latent": 8, "augment_ops": False},
    "gen_batches": [8], "gen_steps": 3, "gen_samples": 32, "gen_train": 48,
    # the first generation only: a second compiles the variation operators (20 s on a busy 2-core CPU)
    "search_formula": "Si4", "search_batch": 4, "search_steps": 5, "search_generations": 1,
}

# Python packages the device image lacks (KINDS.md: it has jax 0.11 with CUDA, flax, optax, orbax,
# numpy, scipy, sympy, pandas, networkx, ... but none of the materials stack), found as what the
# four sections import beyond it (CIF parsing included); ``--prepare`` downloads these at the
# versions installed here, for ``gpu.sh`` to install offline with ``--no-deps``.
DEVICE_WHEELS = ("e3nn-jax", "pymatgen", "pymatgen-core", "monty", "ruamel.yaml", "orjson", "spglib", "ase",
                 "pyxtal")
CARRY = Path(os.environ.get("JAXINV_GPU_CARRY") or HERE.parent / ".gpucarry")  # what gpu.sh prepare writes


# ------------------------------------------------------------------ records
def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_plain) + "\n")
    os.replace(tmp, path)


def _plain(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def update_section(path: Path, name: str, **fields) -> dict:
    data = read_json(path)
    record = data.setdefault("sections", {}).setdefault(name, {})
    record.update(fields)
    write_json(path, data)
    return record


# ------------------------------------------------------------- device helpers
def memory() -> dict | None:
    """The first device's memory statistics (None on a CPU, which reports none)."""
    import jax

    stats = jax.local_devices()[0].memory_stats()
    if not stats:
        return None
    return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit") if k in stats}


def peak_bytes() -> int | None:
    stats = memory()
    return None if stats is None else stats.get("peak_bytes_in_use")


def device_info() -> dict:
    import jax
    import jaxlib

    d = jax.local_devices()[0]
    return {"backend": jax.default_backend(), "device": str(d), "device_kind": getattr(d, "device_kind", ""),
            "n_devices": jax.local_device_count(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "memory": memory()}


class Clock:
    """A section's soft budget: ``left()`` seconds remain; optional work checks it first."""

    def __init__(self, budget: float):
        self.t0 = time.perf_counter()
        self.budget = float(budget)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def timed_call(fn, *args):
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------- inputs
def load_potential(name: str, allow_download: bool = False, edge_chunk: int | None = None):
    """``sevennet0`` (SevenNet-0, see :func:`load_sevennet0`) or ``lj`` (Lennard-Jones for
    every element, the smoke test's cheap stand-in)."""
    if name == "lj":
        from jaxinv.potentials.classical import lennard_jones

        return lennard_jones(sigma=2.2, epsilon=0.05, species=None, cutoff=5.0)
    if name != "sevennet0":
        from jaxinv.potentials.registry import load_potential as registered

        return registered(name)
    return load_sevennet0(allow_download=allow_download, edge_chunk=edge_chunk)


def load_sevennet0(carry: Path = CARRY, allow_download: bool = False, edge_chunk: int | None = None):
    """SevenNet-0 without a network: what :func:`~jaxinv.potentials.sevennet.load_sevennet`
    finds with downloads off (an installed sevenn; in ``$JAXINV_CACHE``, the converted
    ``.npz`` or the checkpoint), else the checkpoint taken out of a sevenn 0.13.0 wheel
    in ``carry`` or ``carry/wheels`` into ``$JAXINV_CACHE``; PyPI only if allowed."""
    from jaxinv.potentials.sevennet import MODELS, SEVENN_VERSION, cache_dir, extract_from_wheel, load_sevennet

    try:
        return load_sevennet("7net-0", download=False, edge_chunk=edge_chunk)
    except FileNotFoundError as err:
        missing = err
    member = "sevenn/pretrained_potentials/{}/{}".format(*MODELS["7net-0"])  # its path inside the wheel
    for wheel in sorted(Path(carry).glob(f"sevenn-{SEVENN_VERSION}-*.whl")) + sorted(
            Path(carry).glob(f"wheels/sevenn-{SEVENN_VERSION}-*.whl")):
        dest = cache_dir() / f"sevenn-{SEVENN_VERSION}" / Path(member).relative_to("sevenn")
        extract_from_wheel(wheel, member, dest)
        return load_sevennet("7net-0", download=False, edge_chunk=edge_chunk)
    if allow_download:
        return load_sevennet("7net-0", download=True, edge_chunk=edge_chunk)
    raise FileNotFoundError(f"{missing}; no sevenn-{SEVENN_VERSION} wheel in {carry} either. Run "
                            "`benchmarks/gpu.sh prepare` where PyPI is reachable and carry .gpucarry/") from missing


def potential_info(pot) -> dict:
    """Which potential ran and, for SevenNet-0, where its weights came from."""
    meta = pot.metadata or {}
    info = {"name": pot.name, "cutoff": float(pot.cutoff)}
    config = meta.get("config")  # a NequIP potential's (SevenNet-0's) settings
    if hasattr(config, "edge_chunk"):
        info.update(edge_chunk=config.edge_chunk, radial_grid=getattr(config, "radial_grid", None))
    if "sha256" in meta:
        from jaxinv.potentials.sevennet import cache_dir

        info.update(checkpoint=meta.get("source"), checkpoint_sha256=meta.get("sha256"), cache=str(cache_dir()),
                    converted=sorted(p.name for p in (cache_dir() / "sevennet").glob("7net-0-*.npz")),
                    producer=meta.get("producer"))
    return info


def dataset():
    from jaxinv.data import load_dataset
    from jaxinv.data.loader import find_dataset_dir

    ds = load_dataset("perov_5")
    return ds, str(find_dataset_dir("perov_5")[0])


# ---------------------------------------------------------------- sections
def section_potential(s: dict, clock: Clock, record) -> None:
    """Energy + forces + stress throughput over batch sizes, one jitted call per batch."""
    from jaxinv.graph import neighbor_graph
    from jaxinv.relax.queue import is_out_of_memory

    pot = load_potential(s["potential"], s.get("allow_download", False), s.get("edge_chunk"))
    ds, where = dataset()
    record(potential=potential_info(pot), data=where)
    fn = pot.compute_fn(True)
    rows = []
    for b in s["efs_batches"]:
        # the next (larger) size compiles and runs about as long as the last did, or longer
        if rows and clock.left() < 1.5 * (rows[-1]["compile_s"] + s["efs_repeats"] * rows[-1]["median_s"]):
            rows.append({"batch": b, "skipped": "time budget"})
            break
        crystal = ds.crystal(np.arange(b) % len(ds), bucket=False)
        graph = neighbor_graph(crystal, pot.cutoff)
        try:
            _, first = timed_call(fn, pot.params, crystal, graph)
            times = []
            while len(times) < s["efs_repeats"] and (len(times) < 2 or sum(times) < max(clock.left() / 4, 1.0)):
                times.append(timed_call(fn, pot.params, crystal, graph)[1])
        except Exception as err:  # out of memory ends the sweep; anything else is a failure
            if not is_out_of_memory(err):
                raise
            rows.append({"batch": b, "error": "out of memory", "detail": str(err)[:300]})
            record(batches=rows)
            break
        median = float(np.median(times))
        atoms, edges = int(crystal.n_atoms.sum()), int(np.asarray(graph.n_edges).sum())
        rows.append({"batch": b, "atoms": atoms, "edges": edges, "edge_slots": int(b * graph.capacity),
                     "compile_s": first - median, "median_s": median, "repeats": len(times),
                     "structures_per_s": b / median, "atoms_per_s": atoms / median, "edges_per_s": edges / median,
                     "peak_bytes": peak_bytes()})
        record(batches=rows)  # after every size: a timeout keeps what was measured
    record(dtype=_float_dtype())


def _float_dtype() -> str:
    import jax.numpy as jnp

    return str(jnp.asarray(0.0).dtype)


def section_relax(s: dict, clock: Clock, record) -> None:
    """Relaxation throughput of rattled perov_5 structures, cold and warm."""
    import jaxinv.relax.queue as queue_module
    from jaxinv.crystal import Crystal
    from jaxinv.data.perturb import perturb
    from jaxinv.relax import FireConfig, RelaxQueue, status_names

    pot = load_potential(s["potential"], s.get("allow_download", False), s.get("edge_chunk"))
    ds, where = dataset()
    n = min(int(s["relax_n"]), len(ds))
    structures = perturb(ds.structures(range(n)), rattle=0.05, strain=0.02, seed=0)
    crystal = Crystal.from_structures(structures)
    config = FireConfig(fmax=s["relax_fmax"], max_steps=s["relax_steps"])
    record(potential=potential_info(pot), data=where, n=n, fmax=s["relax_fmax"], max_steps=s["relax_steps"],
           precision=s["relax_precision"], device_memory_rule=queue_module.device_memory() is not None)

    def run(label):
        queue = RelaxQueue(pot, config, progress=False, precision=s["relax_precision"],
                           compact=s.get("relax_compact"))
        t0 = time.perf_counter()
        result = queue.run(crystal)
        wall = time.perf_counter() - t0
        names = status_names(result)
        out = {"wall_s": wall, "structures_per_s": n / wall, "mean_steps": float(np.mean(result.labels["steps"])),
               "converged": names.count("converged"), "status": {k: names.count(k) for k in sorted(set(names))},
               "batch_sizes": list(queue.stats["batch_sizes"]), "oom_retries": queue.stats["oom_retries"],
               "compact": queue.compact, "memory_fraction": queue.memory_fraction,
               "chunks": queue.stats["chunks"], "compactions": queue.stats["compactions"],
               "graph_regrowths": queue.stats["graph_regrowths"], "peak_bytes": peak_bytes(),
               "bytes_per_edge": {f"{k[1]} atoms, {k[2]}": v for k, v in queue_module._BYTES_PER_EDGE.items()}}
        record(**{label: out})
        return out

    cold = run("cold")
    if clock.left() > 1.2 * cold["wall_s"]:
        run("warm")
    else:
        record(warm={"skipped": "time budget"})


def section_generative(s: dict, clock: Clock, record) -> None:
    """Generative training steps per second (per batch size) and samples per second."""
    import jax

    from jaxinv.generative import GenerativeModel, ModelConfig, init_state, make_train_step
    from jaxinv.generative.evaluation import sample_timed
    from jaxinv.generative.train import Batcher

    ds, where = dataset()
    train = ds.subset("train")
    if s.get("gen_train"):
        train = train.subset(np.arange(min(int(s["gen_train"]), len(train))))
    t0 = time.perf_counter()
    model = GenerativeModel.from_dataset(ModelConfig(kind=s["gen_model"], **s.get("gen_config", {})), train)
    arrays = model.arrays(train)
    record(data=where, model=s["gen_model"], config=s.get("gen_config", {}), n_train=len(train),
           prepare_s=time.perf_counter() - t0)
    state = init_state(model, jax.random.PRNGKey(0))
    step_fn = make_train_step(model)
    key = jax.random.PRNGKey(1)
    groups = 0 if model.is_vae else model.config.n_critic
    rows = []
    for bs in s["gen_batches"]:
        if rows and clock.left() < 2.0 * (rows[-1]["compile_s"] + s["gen_steps"] / rows[-1]["steps_per_s"]):
            rows.append({"batch": bs, "skipped": "time budget"})
            break
        batcher = Batcher(arrays, bs, seed=0, groups=groups)
        device_batch = lambda step: {k: jax.numpy.asarray(v) for k, v in batcher(step).items()}
        t = time.perf_counter()
        state, m = step_fn(state, device_batch(0), jax.random.fold_in(key, 0))
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t
        t = time.perf_counter()
        steps = 0
        while steps < s["gen_steps"] and (steps < 3 or time.perf_counter() - t < max(clock.left() / 4, 1.0)):
            steps += 1
            # a fresh host batch every step, as the training loop draws them
            state, m = step_fn(state, device_batch(steps), jax.random.fold_in(key, steps))
        jax.block_until_ready((state, m))
        dt = time.perf_counter() - t
        rows.append({"batch": batcher.batch_size, "steps": steps, "compile_s": compile_s, "steps_per_s": steps / dt,
                     "crystals_per_s": steps * batcher.batch_size / dt, "peak_bytes": peak_bytes()})
        record(train=rows)
    _, dt, rate = sample_timed(model, state.params, jax.random.PRNGKey(7), int(s["gen_samples"]),
                               batch_size=min(1024, int(s["gen_samples"])))
    record(sampling={"n": int(s["gen_samples"]), "seconds": dt, "crystals_per_s": rate, "peak_bytes": peak_bytes()})


def section_search(s: dict, clock: Clock, record) -> None:
    """One evolutionary generation: the first (random structures, compilation included),
    then, if the budget allows, the second (variation operators, warm)."""
    import jax

    from jaxinv.relax import FireConfig
    from jaxinv.search import Problem, SearchSpace, make_search

    pot = load_potential(s["potential"], s.get("allow_download", False), s.get("edge_chunk"))
    space = SearchSpace.fixed(s["search_formula"])
    problem = Problem(space, pot, FireConfig(fmax=0.05, max_steps=s["search_steps"]), batch=s["search_batch"])
    search = make_search("ea", problem, population=s["search_batch"])
    record(potential=potential_info(pot), formula=s["search_formula"], batch=s["search_batch"],
           max_steps=s["search_steps"])
    t = time.perf_counter()
    state = search.init(jax.random.PRNGKey(0))
    first = time.perf_counter() - t

    def summary(wall):
        return {"wall_s": wall, "relaxations": int(state.relaxations), "generation": int(state.generation),
                "best_fitness": float(state.best.fitness[0]), "peak_bytes": peak_bytes()}

    record(first_generation=summary(first))
    if s.get("search_generations", 2) < 2:
        record(generation={"skipped": "search_generations=1"})
    elif clock.left() > 1.5 * first:
        t = time.perf_counter()
        state = search.step(state)
        record(generation=summary(time.perf_counter() - t))
    else:
        record(generation={"skipped": "time budget"})


RUNNERS = {"potential": section_potential, "relax": section_relax, "generative": section_generative,
           "search": section_search}


def run_section(name: str, settings: dict, out: Path) -> int:
    """Child process: one section, its record written as it goes and when it ends."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jaxinv.relax").setLevel(logging.INFO)  # the memory probe and any out-of-memory retry
    clock = Clock(settings["budgets"][name])
    record = lambda **fields: update_section(out, name, **fields)
    record(status="running", budget_s=clock.budget, device=device_info())
    try:
        RUNNERS[name](settings, clock, record)
    except Exception as err:
        record(status="error", error=f"{type(err).__name__}: {err}"[:2000],
               traceback=traceback.format_exc()[-4000:], wall_s=clock.elapsed(), peak_bytes=_safe(peak_bytes))
        print(f"[{name}] failed: {type(err).__name__}: {str(err)[:500]}", file=sys.stderr, flush=True)
        return 1
    record(status="ok", wall_s=clock.elapsed(), peak_bytes=peak_bytes())
    return 0


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None


# ------------------------------------------------------------------ driver
def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def default_out(smoke: bool) -> Path:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    name = f"gpu_bench{'_smoke' if smoke else ''}_{stamp}.json"
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / name
    return HERE / "results" / "gpu" / name


def drive(args) -> int:
    """Parent process: each section in a child process with a hard timeout; jax is not
    imported here, so the device's memory belongs to the section that runs."""
    settings = json.loads(json.dumps(SMOKE if args.smoke else FULL))
    for key, value in (args.set or []):
        settings[key] = json.loads(value)
    settings["allow_download"] = args.allow_download
    sections = [x for x in args.sections.split(",") if x]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out) if args.out else default_out(args.smoke)
    t_start = time.perf_counter()
    deadline = t_start + args.total
    data = read_json(out)
    data["meta"] = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "mode": "smoke" if args.smoke else "full", "sections": sections, "settings": settings,
                    "total_budget_s": args.total, "python": sys.version.split()[0], "machine": platform.machine(),
                    "node": platform.node(), "commit": git_commit(),
                    "env": {k: os.environ.get(k) for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS",
                                                           "JAXINV_DATA", "JAXINV_CACHE", "JAXINV_XLA_CACHE")}}
    write_json(out, data)
    print(f"bench_gpu: {', '.join(sections)} -> {out}", flush=True)
    failures = 0
    for k, name in enumerate(sections):
        soft = settings["budgets"][name]
        # what the later sections' hard limits need is kept for them; this one may use the rest
        later = sum(GRACE * settings["budgets"][x] for x in sections[k + 1:])
        hard = max(10.0, deadline - time.perf_counter() - later)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--out", str(out),
               "--settings", json.dumps(settings)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            rc = proc.wait(timeout=hard)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section's whole process group
            proc.wait()
            rc = None
        wall = time.perf_counter() - t0
        record = read_json(out).get("sections", {}).get(name, {})
        if rc is None:
            update_section(out, name, status="timeout", wall_s=wall, hard_timeout_s=hard)
        elif record.get("status") not in ("ok", "error"):  # died without saying why (a crash, a signal)
            update_section(out, name, status="crashed", returncode=rc, wall_s=wall)
        status = read_json(out)["sections"][name]["status"]
        failures += status != "ok"
        print(f"[{name}] {status} in {wall:.1f} s (budget {soft:.0f} s, hard limit {hard:.0f} s)", flush=True)
    data = read_json(out)
    data["meta"]["wall_s"] = time.perf_counter() - t_start
    write_json(out, data)
    print(summary(data), flush=True)
    return 1 if failures else 0


def summary(data: dict) -> str:
    """A few lines per section, for the log."""
    lines = []
    for name, r in data.get("sections", {}).items():
        head = f"{name}: {r.get('status')} ({r.get('wall_s', 0):.1f} s, peak {r.get('peak_bytes')} bytes)"
        lines.append(head)
        for row in r.get("batches", []):
            if "median_s" in row:
                lines.append(f"  batch {row['batch']}: {row['structures_per_s']:.1f} structures/s, "
                             f"compile {row['compile_s']:.1f} s, peak {row['peak_bytes']}")
            else:
                lines.append(f"  batch {row['batch']}: {row.get('skipped') or row.get('error')}")
        for label in ("cold", "warm"):
            row = r.get(label)
            if row and "wall_s" in row:
                lines.append(f"  {label}: {row['structures_per_s']:.2f} structures/s, {row['converged']} converged, "
                             f"batches {row['batch_sizes'][:6]}, oom retries {row['oom_retries']}")
        for row in r.get("train", []):
            if "steps_per_s" in row:
                lines.append(f"  train batch {row['batch']}: {row['steps_per_s']:.1f} steps/s, "
                             f"{row['crystals_per_s']:.0f} crystals/s")
        if "sampling" in r:
            lines.append(f"  sampling: {r['sampling']['crystals_per_s']:.0f} crystals/s")
        for label in ("first_generation", "generation"):
            row = r.get(label)
            if row and "wall_s" in row:
                lines.append(f"  {label}: {row['wall_s']:.1f} s, {row['relaxations']} relaxations")
        if r.get("error"):
            lines.append(f"  error: {r['error'][:300]}")
    return "\n".join(lines)


# ------------------------------------------------------------------ prepare
def prepare(dest: Path, python_version: str = "3.12", wheels: bool = True) -> dict:
    """Fill ``dest`` with what a bare, offline device machine needs: perov_5's val.csv
    (``data/``), SevenNet-0's checkpoint and its conversion (``jaxinv-cache/``, the layout
    of ``$JAXINV_CACHE``) and the wheels of :data:`DEVICE_WHEELS` for CPython
    ``python_version`` on x86-64 Linux (``wheels/``). Needs a package registry (for the
    wheels, and for the checkpoint where sevenn is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    from jaxinv.data.loader import find_dataset_dir
    from jaxinv.potentials.sevennet import MODELS, SEVENN_VERSION, find_checkpoint, load_sevennet

    dest = Path(dest).resolve()
    found, tried = find_dataset_dir("perov_5")
    if found is None or not (found / "val.csv").is_file():
        raise SystemExit(f"perov_5/val.csv not found (looked in {tried})")
    (dest / "data" / "perov_5").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found / "val.csv", dest / "data" / "perov_5" / "val.csv")

    cache = dest / "jaxinv-cache"
    directory, file = MODELS["7net-0"]
    target = cache / f"sevenn-{SEVENN_VERSION}" / "pretrained_potentials" / directory / file
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(find_checkpoint("7net-0"), target)
    pot = load_sevennet("7net-0", cache=cache, download=False)  # converts into cache/sevennet/
    done = {"data": str(dest / "data"), "checkpoint": str(target), "converted": sorted(
        str(p) for p in (cache / "sevennet").glob("*.npz")), "source": pot.metadata.get("source")}
    if wheels:
        pins = []
        for name in DEVICE_WHEELS:
            try:
                pins.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                print(f"prepare: {name} is not installed here; not carried", file=sys.stderr)
        platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)] + [
            "--platform=manylinux2014_x86_64", "--platform=manylinux1_x86_64"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation=cp",
               f"--python-version={python_version}", *platforms, "-d", str(dest / "wheels"), *pins]
        subprocess.run(cmd, check=True)
        done["wheels"] = sorted(p.name for p in (dest / "wheels").glob("*.whl"))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    done["bytes"] = size
    print(json.dumps(done, indent=1))
    return done


def where(allow_download: bool = False) -> int:
    """Print the perov_5 directory and the SevenNet-0 weights the sections will use."""
    found = {}
    try:
        found["data"] = dataset()[1]
        found["potential"] = potential_info(load_potential("sevennet0", allow_download))
    except FileNotFoundError as err:
        found["error"] = str(err)
    print(json.dumps(found, indent=1))
    return 1 if "error" in found else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few structures, Lennard-Jones: runs on a CPU in seconds")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, from " + ", ".join(SECTIONS))
    ap.add_argument("--out", default=None, help="JSON file (default: $OUT/ or benchmarks/results/gpu/, timestamped)")
    ap.add_argument("--total", type=float, default=None,
                    help="seconds for all sections together (default 420; smoke 150)")
    ap.add_argument("--set", nargs=2, action="append", metavar=("KEY", "JSON"),
                    help="override a setting, e.g. --set relax_n 200 --set efs_batches '[1, 64]'")
    ap.add_argument("--allow-download", action="store_true",
                    help="let load_sevennet fetch the sevenn wheel from PyPI when the weights are not found")
    ap.add_argument("--prepare", metavar="DIR", default=None,
                    help="write data, weights and wheels for an offline device machine into DIR, then stop")
    ap.add_argument("--python-version", default="3.12", help="--prepare: the device's Python (wheels)")
    ap.add_argument("--no-wheels", action="store_true", help="--prepare: data and weights only")
    ap.add_argument("--where", action="store_true",
                    help="print where the data and the SevenNet-0 weights come from, then stop (1: not found)")
    ap.add_argument("--section", default=None, help=argparse.SUPPRESS)  # child process
    ap.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(Path(args.prepare), args.python_version, wheels=not args.no_wheels)
        return 0
    if args.section:
        return run_section(args.section, json.loads(args.settings), Path(args.out))
    if args.where:
        return where(args.allow_download)
    if args.total is None:
        args.total = 150.0 if args.smoke else 420.0
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
