"""CSPBench targets at an equal wall-clock budget, compilation included (issue 27).

Each run is one (target, method, seed) in a fresh subprocess on one core
(``taskset`` when available, ``OPENBLAS_NUM_THREADS=1``) with a wall-clock budget
counted from the moment the parent launches it, so interpreter start, imports and
compilation count. The run streams every improvement of its best-so-far structure
(seconds since launch, its own energy per atom, the structure) to a JSONL file as it
goes; the parent kills it at the budget, so a run cut off loses nothing. Records
stamped after the budget are ignored by the scorer.

Methods (all with SevenNet-0 through jaxinv's potential and the same FIRE settings as
the SevenNet-0 rungs of ``bench_search.py``: fmax 0.05 eV/Å, 500 steps):

* ``jaxinv``: jaxinv's default search algorithm (``jaxinv run search``'s, the EA),
  batch 16; ``jaxinv_<alg>``: another ``jaxinv.search.ALGORITHMS`` entry
  (``jaxinv_random``, ``jaxinv_pso``, ``jaxinv_basin_hopping``, ``jaxinv_annealing``,
  ``jaxinv_minima_hopping``);
* ``ase_ga``: ``bench_search.run_ase_ga`` (ASE-GA, the bulk tutorial's operators);
* ``pyxtal_random``: ``bench_search.run_pyxtal_random`` (AIRSS-style pyxtal starts).

Runs compile from scratch: the persistent XLA cache that jaxinv turns on at import is off in
the workers unless ``--xla-cache DIR`` is given (recorded per run). ``--cores 0 1`` runs two
at a time, one per core; each done record keeps its core and the load average, so runs that
shared the machine can be named.

The two baselines are bench_search's runners unchanged; their success test is
replaced by a recorder (it sees every relaxed structure and never reports a hit), so
they run until killed.

Targets: ``shared/data/cspbench/targets.csv``; every search uses the primitive cell
(``primitive_formula``, ``nsites`` atoms).

The scorer does not use any method's own success logic: it re-evaluates every saved
structure of every run of a target with SevenNet-0 (energy per atom = enthalpy per
atom at zero pressure, no relaxation), drops structures whose closest pair is below
its collapse limit, 0.65 times the sum of the two atoms' covalent radii, or 0.72 or
0.85 for two atoms of one element (the relaxer's rule, ``jaxinv.relax.fire.collapse_limits``),
drops those whose formation energy against SevenNet-0's elemental references is below
-5 eV/atom (the relaxer's energy floor, ``jaxinv.potentials.references``), takes the lowest over all
methods and seeds as the reference (or an earlier benchmark's, ``score --reference
scores.json``, where that is lower: a lone run scored alone is its own reference and
"solves" by definition), and reports per run: best − reference
(meV/atom), solved (within 2 meV/atom), the best structure's spglib space group
(symprec 0.1) against the Materials Project one, and the time to the first solved
structure.

    python benchmarks/bench_cspbench.py run --targets all --methods jaxinv ase_ga pyxtal_random --seeds 3
    python benchmarks/bench_cspbench.py score        # scores.json, table (markdown) and cspbench_solved.png
    python benchmarks/bench_cspbench.py score --out my_runs --reference benchmarks/results/cspbench/scores.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
# the shared data folder beside the checkout, or $JAXINV_DATA (where jaxinv.data looks first)
TARGETS = Path(os.environ.get("JAXINV_DATA") or HERE.parent.parent / "shared" / "data") / "cspbench" / "targets.csv"
OUT = HERE / "results" / "cspbench"
BUDGET_S = 600.0
SOLVED_MEV = 2.0
SYMPREC = 0.1
BATCH = 16  # jaxinv structures relaxed together per step (jaxinv run search's default)
BASELINES = ("ase_ga", "pyxtal_random")


# ------------------------------------------------------------------ targets
def load_targets(path=TARGETS) -> list[dict]:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["nsites"], r["spacegroup"] = int(r["nsites"]), int(r["spacegroup"])
    return rows


def target_row(target: str, path=TARGETS) -> dict:
    """A target by material id or formula (primitive or pretty)."""
    for r in load_targets(path):
        if target in (r["material_id"], r["primitive_formula"], r["pretty_formula"]):
            return r
    raise KeyError(f"no target {target!r} in {path}")


def fire_config():
    from jaxinv.relax import FireConfig

    return FireConfig(fmax=0.05, max_steps=500)  # bench_search's SevenNet-0 rungs


def load_sevennet():
    from jaxinv.potentials.registry import load_potential

    return load_potential("sevennet0")


# --------------------------------------------------------- the collapse rule
def closest_over_limit(structure) -> float:
    """Closest pair over all periodic images, over its collapse limit (the relaxer's
    FAILED_COLLAPSE rule, ``jaxinv.relax.fire.collapse_limits``): below 1 is collapsed."""
    from jaxinv.relax.fire import collapse_limits, covalent_radii

    z = np.array([site.specie.Z for site in structure])
    if len(z) == 0 or not np.all(np.isfinite(structure.lattice.matrix)) or structure.volume < 1e-6:
        return 0.0
    rmax = 2.0 * np.asarray(covalent_radii())[z].max() + 0.5  # any pair beyond this is far above the limit
    centers, points, _, dists = structure.get_neighbor_list(rmax, exclude_self=True)
    if len(dists) == 0:
        return float("inf")
    return float(np.min(dists / collapse_limits(z[centers], z[points])))


def collapsed(structure) -> bool:
    return closest_over_limit(structure) < 1.0


def below_energy_floor(structure, energy_per_atom) -> bool:
    """The relaxer's FAILED_ENERGY rule: a SevenNet-0 formation energy, against SevenNet-0's
    elemental references, below ``FireConfig.min_formation_energy`` or its
    ``electronegativity_floor`` (a hole whose pairs stay above the collapse limits;
    ``jaxinv.potentials.references``)."""
    from jaxinv.potentials.references import shipped_element_energies
    from jaxinv.relax.fire import FireConfig

    z = np.array([[site.specie.Z for site in structure]])
    energy = np.array([float(energy_per_atom) * z.shape[1]])
    config = FireConfig(element_energies=shipped_element_energies("7net-0"))
    formation, floor = config.formation_and_floor(z, np.ones(z.shape, bool), energy)
    return bool(formation[0] < floor[0])


def untrustworthy(structure, energy_per_atom) -> bool:
    """Never a best: non-finite, collapsed, or below the energy floor."""
    return (not np.isfinite(energy_per_atom) or collapsed(structure)
            or below_energy_floor(structure, energy_per_atom))


# ----------------------------------------------------------------- one run
def run_dir(out, target_id) -> Path:
    return Path(out) / target_id


def run_files(out, target_id, method, seed) -> tuple[Path, Path, Path]:
    """(stream.jsonl, done.json, log) of one run."""
    d = run_dir(out, target_id)
    stem = f"{method}__{seed}"
    return d / f"{stem}.jsonl", d / f"{stem}.done.json", d / f"{stem}.log"


class Recorder:
    """Appends each improvement of the best-so-far (non-collapsed) structure to a JSONL
    file, flushed and synced line by line, stamped with seconds since ``t0``."""

    def __init__(self, path, t0: float):
        self.path, self.t0 = Path(path), t0
        self.fh = open(self.path, "w")
        self.best = np.inf
        self.seen = 0
        self.last_write = time.time()

    HEARTBEAT_S = 30.0  # a line without a structure: how many structures the run has seen by then

    def _write(self, line):
        self.fh.write(json.dumps(line) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.last_write = time.time()

    def tick(self, **extra):
        """A heartbeat line, when the last line is older than HEARTBEAT_S."""
        if time.time() - self.last_write > self.HEARTBEAT_S:
            self._write({"t": time.time() - self.t0, "seen": self.seen, **extra})

    def offer(self, structure, energy_per_atom, count=True, **extra) -> bool:
        """Records ``structure`` if it beats the best so far and is trustworthy (:func:`untrustworthy`)
        (``count``: one more structure seen; jaxinv sets ``seen`` per batch instead)."""
        self.seen += int(count)
        e = float(energy_per_atom)
        if structure is None or e >= self.best or untrustworthy(structure, e):  # NaN: untrustworthy
            self.tick(**extra)
            return False
        self.best = e
        bare = type(structure)(structure.lattice, structure.species, structure.frac_coords)  # no site properties:
        self._write({"t": time.time() - self.t0, "energy_per_atom": e, "seen": self.seen, **extra,  # ASE's are arrays
                     "structure": bare.as_dict()})
        return True


# jaxinv methods that change one option of an algorithm: name -> (algorithm, options)
JAXINV_VARIANTS = {"jaxinv_bondsoft": ("ea", {"soft_model": "bonds"}),
                   "jaxinv_potentialsoft": ("ea", {"soft_model": "potential"}),
                   # before solving, 27 of the EA's 28 solved runs (3 seeds) went at most 4 generations
                   # without a 1 meV/atom gain (Cr3Ga seed 1: 21); its misses on SnS, SmFeAsO and Cr3Ga
                   # spent their last 48-104 generations without one
                   "jaxinv_restart": ("ea", {"restart_after": 10})}


def jaxinv_algorithm(method: str) -> str:
    """``jaxinv`` -> the default algorithm of ``jaxinv run search``; ``jaxinv_<alg>`` -> alg;
    a name in ``JAXINV_VARIANTS`` -> its algorithm."""
    from jaxinv.search import ALGORITHMS

    if method == "jaxinv":
        from jaxinv.experiments.search import AlgorithmConfig

        return AlgorithmConfig().name
    if method in JAXINV_VARIANTS:
        return JAXINV_VARIANTS[method][0]
    alg = method[len("jaxinv_"):]
    if alg not in ALGORITHMS:
        raise ValueError(f"{method}: jaxinv has no algorithm {alg!r} ({', '.join(ALGORITHMS)})")
    return alg


def _bench_search():
    sys.path.insert(0, str(HERE))
    import bench_search

    return bench_search


def search_jaxinv(row, method, seed, budget, t0, rec: Recorder):
    import jax

    from jaxinv.search import Problem, SearchSpace, make_search

    bs = _bench_search()
    size_field = dict(bs.JAXINV_METHODS.values())  # algorithm -> its population-size option
    alg = jaxinv_algorithm(method)
    problem = Problem(SearchSpace.fixed(row["primitive_formula"]), load_sevennet(), fire_config(), batch=BATCH)
    options = JAXINV_VARIANTS.get(method, (alg, {}))[1]
    search = make_search(alg, problem, **{size_field[alg]: BATCH}, **options)
    state = search.init(jax.random.PRNGKey(seed))
    while True:
        pop = state.evaluated.population
        h = np.asarray(pop.enthalpy)
        rec.seen = int(state.relaxations)
        where = {"generation": int(state.generation)}
        if getattr(state.algorithm, "restarts", None) is not None:  # EAConfig.restart_after
            where["restarts"] = int(state.algorithm.restarts)
        for b in np.argsort(h):  # the lowest non-collapsed member, if it beats the record
            if not np.isfinite(h[b]) or h[b] >= rec.best:
                break
            if rec.offer(pop.crystal[int(b)].to_structures()[0], h[b], count=False, **where):
                break
        rec.tick(**where)
        if time.time() - t0 >= budget:
            return
        state = search.step(state)


def search_baseline(row, method, seed, budget, t0, rec: Recorder, workdir):
    """bench_search's ASE-GA / pyxtal runner with its success test replaced by the recorder
    (called with every relaxed structure and its energy per atom; it never reports a hit)."""
    from jaxinv.search import SearchSpace

    bs = _bench_search()
    name = row["material_id"]
    unbounded = 10 ** 9  # relaxations: the run ends when the parent kills it at the budget
    bs.PREPARED[name] = (SearchSpace.fixed(row["primitive_formula"]), load_sevennet(), fire_config(), BATCH,
                         unbounded, {"energy_per_atom": -np.inf, "tol": 0.0})
    bs.success_check = lambda _name, _ref: (lambda s, e: rec.offer(s, e) and False)
    if method == "ase_ga":
        bs.run_ase_ga(name, seed, unbounded, workdir=str(workdir))
    elif method == "pyxtal_random":
        bs.run_pyxtal_random(name, seed, unbounded)
    else:
        raise ValueError(method)


def worker(args):
    """One run, inside its own process (the ``worker`` subcommand)."""
    t0 = float(args.t0)
    row = target_row(args.target, args.targets_csv)
    stream, _, _ = run_files(args.out, row["material_id"], args.method, args.seed)
    rec = Recorder(stream, t0)
    print(f"worker {row['material_id']} {args.method} seed {args.seed}: started {time.time() - t0:.1f} s "
          f"after launch", flush=True)
    if args.method.startswith("jaxinv"):
        search_jaxinv(row, args.method, args.seed, args.budget, t0, rec)
    else:
        search_baseline(row, args.method, args.seed, args.budget, t0, rec, stream.parent / f"{args.method}__{args.seed}_work")
    print(f"worker ended by itself at {time.time() - t0:.1f} s, {rec.seen} structures seen", flush=True)


def launch(row, method, seed, budget, out, core=None, targets_csv=TARGETS, grace=0.0, xla_cache="off") -> dict:
    """Runs one (target, method, seed) in a fresh process, killed at ``budget`` seconds after
    launch; writes and returns its done record.

    ``xla_cache="off"`` (default): the run compiles everything itself, as a first run on a new
    machine does (jaxinv otherwise loads what earlier processes compiled from its persistent
    cache, ``jaxinv.xla_cache``: on GaP that brought jaxinv's first batch from over 60 s to 30 s);
    a folder: that persistent cache (recorded in the done record)."""
    stream, done, log = run_files(out, row["material_id"], method, seed)
    stream.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--target", row["material_id"],
           "--method", method, "--seed", str(seed), "--budget", str(budget), "--out", str(out),
           "--targets-csv", str(targets_csv), "--t0", repr(t0)]
    if core is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core)] + cmd
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               JAXINV_XLA_CACHE=str(xla_cache),
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                                     "intra_op_parallelism_threads=1"))
    load0 = os.getloadavg()[0]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(budget + grace - (time.time() - t0), 0.1))
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            killed = True
    record = {"target": row["material_id"], "method": method, "seed": seed, "budget_s": budget,
              "wall_s": time.time() - t0, "killed_at_budget": killed, "returncode": rc,
              "core": core, "xla_cache": str(xla_cache), "loadavg_1min_start_end": [load0, os.getloadavg()[0]], "host": os.uname().nodename,
              "cpus_online": os.cpu_count(), "command": " ".join(cmd[:-2] if cmd[-2] == "--t0" else cmd)}
    if not killed and rc != 0:  # a crash is not a finished run: recorded beside it, retried by the next `run`
        record["error_tail"] = log.read_text()[-2000:]
        done.with_name(done.name.replace(".done.json", ".failed.json")).write_text(json.dumps(record, indent=1))
        return record
    done.write_text(json.dumps(record, indent=1))
    return record


def run_all(targets, methods, seeds, budget, out, cores, targets_csv=TARGETS, first_seed=0, xla_cache="off"):
    """Every (target, method, seed) without a done record, one per core at a time."""
    import queue
    import threading

    jobs = queue.Queue()
    for row in targets:
        for method in methods:
            for seed in range(first_seed, first_seed + seeds):
                if not run_files(out, row["material_id"], method, seed)[1].exists():
                    jobs.put((row, method, seed))
    print(f"{jobs.qsize()} runs to do, {len(cores)} at a time on cores {cores}", flush=True)

    def work(core):
        while True:
            try:
                row, method, seed = jobs.get_nowait()
            except queue.Empty:
                return
            r = launch(row, method, seed, budget, out, core, targets_csv, xla_cache=xla_cache)
            print(json.dumps({k: r[k] for k in ("target", "method", "seed", "wall_s", "killed_at_budget",
                                                  "returncode")}), flush=True)
            if "error_tail" in r:
                print(r["error_tail"][-600:], flush=True)

    threads = [threading.Thread(target=work, args=(c,)) for c in cores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ------------------------------------------------------------------ scorer
def read_stream(path, budget, heartbeats=False):
    """The structure records of a run's JSONL stream stamped within ``budget`` (a torn last line
    is skipped; ``heartbeats=True`` keeps the lines without a structure too)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r["t"] <= budget and (heartbeats or "structure" in r):
            out.append(r)
    return out


def sevennet_energies(structures):
    """Energy per atom (eV) of each structure as it stands (no relaxation), with SevenNet-0
    through jaxinv's potential (bench_search's ASE calculator, as the baselines use)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    calc = _bench_search().JaxinvCalculator(load_sevennet())
    out = []
    for s in structures:
        a = AseAtomsAdaptor.get_atoms(s)
        a.calc = calc
        try:
            out.append(float(a.get_potential_energy()) / len(a))
        except Exception:
            out.append(np.inf)
    return np.array(out)


def space_group(structure, symprec=SYMPREC):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:
        return None


def score_runs(runs: dict, target_sg: int, energy_fn=sevennet_energies, solved_mev=SOLVED_MEV, reference=None):
    """Scores of the runs of one target.

    ``runs`` maps (method, seed) to a list of stream records (``t``, ``structure`` as a
    pymatgen dict or Structure). Every structure is re-evaluated with ``energy_fn``
    (structures -> energy per atom); untrustworthy ones (non-finite, collapsed, below the
    energy floor) are dropped; the reference is the lowest over all runs, or ``reference``
    (an earlier benchmark's, energy per atom) where that is lower: scored alone, a run is
    its own reference and always "solves". Returns (reference, rows)."""
    from pymatgen.core import Structure

    flat = [(key, r) for key, recs in runs.items() for r in recs]
    structures = [r["structure"] if isinstance(r["structure"], Structure) else Structure.from_dict(r["structure"])
                  for _, r in flat]
    energies = np.asarray(energy_fn(structures), float) if structures else np.zeros(0)
    valid = np.array([not untrustworthy(s, e) for s, e in zip(structures, energies)], bool)
    reference = float(np.nanmin([energies[valid].min() if valid.any() else np.nan,
                                 np.nan if reference is None else reference]))
    rows = []
    for key in runs:
        idx = [i for i, (k, _) in enumerate(flat) if k == key and valid[i]]
        row = {"method": key[0], "seed": key[1], "records": sum(k == key for k, _ in flat),
               "valid_records": len(idx), "reference_energy_per_atom": reference,
               "target_spacegroup": target_sg, "first_structure_s": None, "best_energy_per_atom": None,
               "best_minus_reference_mev": None, "solved": False, "time_to_solve_s": None,
               "spacegroup": None, "spacegroup_hit": False}
        if idx:
            best = min(idx, key=lambda i: energies[i])
            gap = 1e3 * (energies[best] - reference)
            solved_at = [flat[i][1]["t"] for i in idx if 1e3 * (energies[i] - reference) <= solved_mev]
            sg = space_group(structures[best])
            row.update(first_structure_s=min(flat[i][1]["t"] for i in idx),
                       best_energy_per_atom=float(energies[best]), best_minus_reference_mev=float(gap),
                       solved=bool(gap <= solved_mev), time_to_solve_s=min(solved_at) if solved_at else None,
                       spacegroup=sg, spacegroup_hit=sg == target_sg)
        rows.append(row)
    return reference, rows


def earlier_references(scores_json) -> dict:
    """Target id -> the reference energy per atom of an earlier ``score`` (its scores.json)."""
    rows = json.loads(Path(scores_json).read_text())
    return {r["target"]: r["reference_energy_per_atom"] for r in rows
            if r.get("reference_energy_per_atom") is not None and np.isfinite(r["reference_energy_per_atom"])}


def score(out=OUT, targets_csv=TARGETS, budget=BUDGET_S, energy_fn=sevennet_energies, references=None) -> list[dict]:
    """Scores of every finished run under ``out`` (runs without a done record are skipped).
    ``references`` (target id -> energy per atom, from ``earlier_references``) lowers each
    target's reference to an earlier benchmark's best where that is lower."""
    references = references or {}
    rows = []
    for target in load_targets(targets_csv):
        d = run_dir(out, target["material_id"])
        runs, done = {}, {}
        for p in sorted(d.glob("*.done.json")) if d.is_dir() else []:
            rec = json.loads(p.read_text())
            stream = run_files(out, target["material_id"], rec["method"], rec["seed"])[0]
            key = (rec["method"], rec["seed"])
            lines = read_stream(stream, min(budget, rec["budget_s"]), heartbeats=True) if stream.exists() else []
            runs[key] = [r for r in lines if "structure" in r]
            # structures relaxed (jaxinv: in finished batches) by the last line within the budget
            done[key] = dict(rec, structures_seen=max((r.get("seen", 0) for r in lines), default=0))
        if not runs:
            continue
        tid = target["material_id"]
        if tid not in references and len(runs) == 1:
            print(f"warning: {tid} has a single run and no earlier reference (score --reference scores.json): "
                  "it is scored against its own best, so it is 'solved' by definition", file=sys.stderr)
        _, scored = score_runs(runs, target["spacegroup"], energy_fn, reference=references.get(tid))
        for r in scored:
            info = done[(r["method"], r["seed"])]
            r.update(target=target["material_id"], formula=target["primitive_formula"], budget_s=info["budget_s"],
                     wall_s=info["wall_s"], returncode=info["returncode"], command=info["command"],
                     structures_seen=info["structures_seen"],
                     core=info.get("core"), loadavg_1min_start_end=info.get("loadavg_1min_start_end"))
        rows.extend(scored)
    return rows


# ------------------------------------------------------------- aggregation
def table(rows) -> str:
    """Markdown: targets x methods, each cell 'solved seeds, median time to solve, space-group hits'."""
    methods = sorted({r["method"] for r in rows})
    targets = list(dict.fromkeys((r["target"], r["formula"]) for r in rows))
    lines = ["| target | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for tid, formula in targets:
        cells = []
        for m in methods:
            rs = [r for r in rows if r["target"] == tid and r["method"] == m]
            if not rs:
                cells.append("–")
                continue
            solved = [r for r in rs if r["solved"]]
            t = [r["time_to_solve_s"] for r in solved if r["time_to_solve_s"] is not None]
            med = f"{np.median(t):.0f} s" if t else "–"
            hits = sum(r["spacegroup_hit"] for r in rs)
            cells.append(f"{len(solved)}/{len(rs)}, {med}, SG {hits}/{len(rs)}")
        lines.append(f"| {formula} ({tid}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: solved seeds (best within 2 meV/atom of the best any method reached), median time to "
                 "the first solved structure (s since process start), runs whose best has the Materials "
                 "Project space group (spglib, symprec 0.1).")
    return "\n".join(lines)


def solved_curve(rows, path, budget=BUDGET_S):
    """PNG: fraction of each method's runs (all targets and seeds) solved by each wall time."""
    from jaxinv.plotting import pyplot, save, value_axis

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    grid = np.linspace(0.0, budget, 601)
    times = []
    for m in sorted({r["method"] for r in rows}):
        rs = [r for r in rows if r["method"] == m]
        t = np.array([r["time_to_solve_s"] for r in rs if r["time_to_solve_s"] is not None])
        times.append(t)
        frac = np.array([(t <= g).sum() for g in grid]) / len(rs)
        ax.step(grid, frac, where="post", label=f"{m} ({len(rs)} runs)")
    value_axis(ax, [grid], "x", log=False)
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("wall time since process start (s)")
    ax.set_ylabel("fraction of runs solved")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


# --------------------------------------------------------------------- CLI
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every missing (target, method, seed)")
    r.add_argument("--targets", nargs="+", default=["all"], help="material ids or formulas, or 'all'")
    r.add_argument("--methods", nargs="+", default=["jaxinv", "ase_ga", "pyxtal_random"])
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--first-seed", type=int, default=0)
    r.add_argument("--budget", type=float, default=BUDGET_S, help="seconds per run, from process start")
    r.add_argument("--cores", type=int, nargs="+", default=[0], help="one run at a time on each core")
    r.add_argument("--out", default=str(OUT))
    r.add_argument("--targets-csv", default=str(TARGETS))
    r.add_argument("--xla-cache", default="off",
                   help="'off' (default: every run compiles from scratch) or a persistent XLA cache folder")
    s = sub.add_parser("score", help="score finished runs: scores.json, table.md, cspbench_solved.png")
    s.add_argument("--out", default=str(OUT))
    s.add_argument("--targets-csv", default=str(TARGETS))
    s.add_argument("--budget", type=float, default=BUDGET_S)
    s.add_argument("--reference", default=None,
                   help="an earlier scores.json: a target's reference is the lower of these runs' best "
                        "and the earlier one")
    w = sub.add_parser("worker", help="(internal) one run in this process")
    for k in ("--target", "--method", "--out", "--t0"):
        w.add_argument(k, required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--budget", type=float, required=True)
    w.add_argument("--targets-csv", default=str(TARGETS))
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        return worker(args)
    if args.cmd == "run":
        rows = load_targets(args.targets_csv)
        if args.targets != ["all"]:
            rows = [target_row(t, args.targets_csv) for t in args.targets]
        return run_all(rows, args.methods, args.seeds, args.budget, Path(args.out), args.cores, args.targets_csv,
                       args.first_seed, args.xla_cache)
    references = earlier_references(args.reference) if args.reference else None
    rows = score(Path(args.out), args.targets_csv, args.budget, references=references)
    out = Path(args.out)
    (out / "scores.json").write_text(json.dumps(rows, indent=1))
    md = table(rows)
    (out / "table.md").write_text(md + "\n")
    print(md)
    if rows:
        print(solved_curve(rows, out / "cspbench_solved.png", args.budget))


if __name__ == "__main__":
    main()
