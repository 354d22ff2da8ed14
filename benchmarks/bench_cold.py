"""Cold-start benchmark (issue 24 item 1): each main workflow twice, cold then with a warm cache.

Every workflow runs as ``jaxinv run ...`` in a fresh child process, pinned to one
core (``taskset -c <core>``) and single-threaded (``OPENBLAS_NUM_THREADS=1``,
``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``).
It runs twice with the same persistent XLA cache directory (``JAXINV_XLA_CACHE``),
new for each workflow: the first run finds it empty ("cold"), the second finds what
the first stored ("warm cache"). jaxinv's CrystalNN fingerprint cache (generate's
metrics) is likewise new per workflow and shared by its two runs; the parsed datasets
and SevenNet-0's weights come from the usual jaxinv cache, warm in both. Each run writes into its own temporary out_dir, so
nothing but the XLA cache carries over.

Per run: wall time, the child's CPU time (user + system, from getrusage's
RUSAGE_CHILDREN deltas, so run one benchmark process per core, never two workflows
from one process at once), and from JAX's compile log (``JAX_LOG_COMPILES=1``,
jax 0.10.1 prints "Finished XLA compilation of jit(NAME) in X sec", "Finished
tracing ...", "Finished jaxpr to MLIR module conversion ..." and "Persistent
compilation cache hit for 'NAME'") the summed XLA compile time, the number of
compiled programs (one per "Finished XLA compilation" line: a jit program for one
set of shapes; "distinct" counts distinct (name, shapes) pairs), the summed
tracing and lowering time, and the persistent-cache hits. With a cache hit the
"XLA compilation" is the load from disk. jaxinv stores every program (jaxinv/xla_cache.py;
before 2026-12-06 only those that took at least 1 s, so small ones compiled again in
every process).

    python benchmarks/bench_cold.py --workflows relax12 relax64 --core 0
    python benchmarks/bench_cold.py --workflows search_nacl --core 1
    python benchmarks/bench_cold.py --workflows search_gaas_after_nacl calculator100 --core 1
    python benchmarks/bench_cold.py --workflows generate --model <train_generative run> --core 0
    python benchmarks/bench_cold.py --report        # markdown tables of benchmarks/results/cold/*.json

Results go to ``benchmarks/results/cold/<workflow>.json`` (``--out`` for one
workflow elsewhere), with the slowest programs of each run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cold"

# workflow -> jaxinv run arguments ({out} is the run's temporary out_dir); a pair gives the cold
# and the warm-cache run different arguments (a second composition reusing the first's programs);
# "python ..." runs a script of this folder instead of `jaxinv run`
WORKFLOWS = {
    "relax12": "relax data=perov_5 data.split=test data.limit=12 potential=sevennet0 progress=false out_dir={out}",
    "relax64": "relax data=perov_5 data.split=test data.limit=64 potential=sevennet0 progress=false out_dir={out}",
    "search_nacl": "search composition=Na1Cl1 potential=sevennet0 max_relaxations=48 progress=false out_dir={out}",
    "search_srtio3": "search composition=Sr1Ti1O3 potential=sevennet0 max_relaxations=48 progress=false out_dir={out}",
    "quickstart": "quickstart progress=false out_dir={out}",
    "generate": "generate model={model} n=100 progress=false out_dir={out}",
    "generate_noeval": "generate model={model} n=100 evaluate=false progress=false out_dir={out}",
    "search_gaas_after_nacl": ("search composition=Na1Cl1 potential=sevennet0 max_relaxations=48 progress=false "
                              "out_dir={out}",
                              "search composition=Ga1As1 potential=sevennet0 max_relaxations=48 progress=false "
                              "out_dir={out}"),
    "calculator100": "python calculator_mixed.py",
}


def command(args: str, out, model) -> list[str]:
    """The argv of one run."""
    if args.startswith("python "):
        return [sys.executable, str(HERE / args.split()[1]), *args.split()[2:]]
    return ["jaxinv", "run", *args.format(out=out, model=model).split()]

XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

COMPILE_RE = re.compile(r"Finished XLA compilation of (.+?) in ([0-9.eE+-]+) sec")
TRACE_RE = re.compile(r"Finished tracing .+? in ([0-9.eE+-]+) sec")
LOWER_RE = re.compile(r"Finished jaxpr to MLIR module conversion .+? in ([0-9.eE+-]+) sec")
COMPILING_RE = re.compile(r"Compiling (.+?) with global shapes and types (.+?)\. Argument mapping")
HIT_RE = re.compile(r"Persistent compilation cache hit for '([^']+)'")


def parse_log(text: str) -> dict:
    """Compile statistics from a child's stderr with JAX_LOG_COMPILES=1."""
    programs = []  # (name, shapes, seconds, cache hit)
    shapes = {}    # name -> shapes of its latest "Compiling" line
    hit = set()
    for line in text.splitlines():
        m = COMPILING_RE.search(line)
        if m:
            shapes[m.group(1)] = m.group(2)
            continue
        m = HIT_RE.search(line)
        if m:
            hit.add(m.group(1))
            continue
        m = COMPILE_RE.search(line)
        if m:
            name = m.group(1)
            key = "jit_" + name[4:-1] if name.startswith("jit(") else name
            programs.append((name, shapes.get(name, ""), float(m.group(2)), key in hit))
            hit.discard(key)
    trace = sum(float(x) for x in TRACE_RE.findall(text))
    lower = sum(float(x) for x in LOWER_RE.findall(text))
    by_time = sorted(programs, key=lambda p: -p[2])
    per_name = Counter(p[0] for p in programs)
    return {
        "compile_s": round(sum(p[2] for p in programs), 3),
        "programs": len(programs),
        "distinct_programs": len({(p[0], p[1]) for p in programs}),
        "programs_over_1s": sum(p[2] >= 1.0 for p in programs),
        "compile_over_1s_s": round(sum(p[2] for p in programs if p[2] >= 1.0), 3),
        "cache_hits": sum(p[3] for p in programs),
        "cache_hit_load_s": round(sum(p[2] for p in programs if p[3]), 3),
        "trace_s": round(trace, 3),
        "lower_s": round(lower, 3),
        "slowest": [{"name": n, "shapes": s[:300], "seconds": round(t, 3), "cache_hit": h}
                    for n, s, t, h in by_time[:15]],
        "most_compiled": per_name.most_common(10),
    }


def run_once(argv: list[str], env: dict, core: int, log_path: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log_path, "w") as err:
        proc = subprocess.run(["taskset", "-c", str(core), *argv], env=env, stdout=subprocess.PIPE,
                              stderr=err, cwd=HERE.parent, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log_path.read_text(errors="replace")
    out = {"returncode": proc.returncode, "wall_s": round(wall, 2),
           "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2),
           "user_s": round(after.ru_utime - before.ru_utime, 2),
           "sys_s": round(after.ru_stime - before.ru_stime, 2),
           "max_rss_mb": round(after.ru_maxrss / 1024, 1)}
    out.update(parse_log(text))
    last = (proc.stdout or "").strip().splitlines()[-1:]  # a script's JSON summary line
    if argv[0] == sys.executable and last and last[0].startswith("{"):
        out["summary"] = json.loads(last[0])
    if proc.returncode:
        out["stderr_tail"] = text[-3000:]
    return out


def bench(name: str, core: int, model: str | None, keep_logs: Path | None) -> dict:
    args = WORKFLOWS[name]
    cache = Path(tempfile.mkdtemp(prefix=f"jaxinv-xla-{name}-"))
    # jaxinv's other caches: the parsed datasets and SevenNet weights are shared (read-only here);
    # the CrystalNN fingerprint cache (metrics/) is new per workflow, cold in the first run like XLA's
    home = Path(tempfile.mkdtemp(prefix=f"jaxinv-cache-{name}-"))
    real = Path(os.environ.get("JAXINV_CACHE", Path.home() / ".cache" / "jaxinv"))
    if real.is_dir():
        for entry in real.iterdir():
            if entry.name not in ("xla", "metrics"):
                (home / entry.name).symlink_to(entry)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", XLA_FLAGS=XLA_FLAGS, JAX_LOG_COMPILES="1",
               JAXINV_XLA_CACHE=str(cache), JAXINV_CACHE=str(home), PYTHONUNBUFFERED="1")
    result = {"workflow": name, "core": core, "host": platform.node(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "xla_flags": XLA_FLAGS}
    try:
        for phase, phase_args in zip(("cold", "warm_cache"), args if isinstance(args, tuple) else (args, args)):
            out = Path(tempfile.mkdtemp(prefix=f"jaxinv-out-{name}-"))
            shutil.rmtree(out)  # jaxinv creates it; an existing folder would mean "resume"
            argv = command(phase_args, out, model)
            shown = " ".join(command(phase_args, "<tmp>", model or "<model>")).replace(sys.executable, "python")
            result["command" if phase == "cold" else "command_warm_cache"] = f"taskset -c {core} {shown}"
            log = Path(tempfile.mkstemp(prefix=f"jaxinv-{name}-{phase}-", suffix=".log")[1])
            print(f"[{time.strftime('%H:%M:%S')}] {name} {phase}: {' '.join(argv)}", flush=True)
            r = run_once(argv, env, core, log)
            r["cache_entries_after"] = sum(1 for p in cache.iterdir() if p.is_file())
            result[phase] = r
            print(f"  wall {r['wall_s']} s, cpu {r['cpu_s']} s, compile {r['compile_s']} s, "
                  f"{r['programs']} programs ({r['cache_hits']} cache hits), rc {r['returncode']}", flush=True)
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, keep_logs / f"{name}.{phase}.log")
            log.unlink()
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        for entry in home.iterdir():
            if entry.is_symlink():
                entry.unlink()  # the link only, never what it points to
        shutil.rmtree(home, ignore_errors=True)
    return result


def report(folder: Path) -> str:
    rows = ["| workflow | cold wall | cold CPU | cold compile | programs | warm-cache wall | warm-cache CPU "
            "| warm-cache compile | programs |", "|---|---|---|---|---|---|---|---|---|"]
    detail = ["| workflow | cold: programs >= 1 s | cold: programs < 1 s | cold: tracing + lowering "
              "| warm cache: loaded from cache | warm cache: compiled again | warm cache: tracing + lowering "
              "| slowest program (cold) |", "|---|---|---|---|---|---|---|---|"]
    order = list(WORKFLOWS)
    files = sorted(folder.glob("*.json"), key=lambda p: (order.index(p.stem) if p.stem in order else 99, p.stem))
    for path in files:
        r = json.loads(path.read_text())
        cells = [r["workflow"]]
        for phase in ("cold", "warm_cache"):
            x = r.get(phase)
            if not x:
                cells += ["-"] * 4
                continue
            bad = "" if x["returncode"] == 0 else f" (rc {x['returncode']})"
            hits = f", {x['cache_hits']} loaded" if x["cache_hits"] else ""
            cells += [f"{x['wall_s']:.1f} s{bad}", f"{x['cpu_s']:.1f} s", f"{x['compile_s']:.1f} s",
                      f"{x['programs']}{hits}"]
        rows.append("| " + " | ".join(cells) + " |")
        c, w = r.get("cold"), r.get("warm_cache")
        if c and w:
            slow = f"{c['slowest'][0]['name']} {c['slowest'][0]['seconds']:.1f} s" if c["slowest"] else "-"
            detail.append(
                f"| {r['workflow']} | {c['programs_over_1s']}: {c['compile_over_1s_s']:.1f} s "
                f"| {c['programs'] - c['programs_over_1s']}: {c['compile_s'] - c['compile_over_1s_s']:.1f} s "
                f"| {c['trace_s'] + c['lower_s']:.1f} s | {w['cache_hits']}: {w['cache_hit_load_s']:.1f} s "
                f"| {w['programs'] - w['cache_hits']}: {w['compile_s'] - w['cache_hit_load_s']:.1f} s "
                f"| {w['trace_s'] + w['lower_s']:.1f} s | {slow} |")
    return "\n".join(rows) + "\n\n" + "\n".join(detail)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflows", nargs="+", choices=list(WORKFLOWS), default=["relax12"])
    p.add_argument("--core", type=int, default=0)
    p.add_argument("--out", type=Path, help="JSON file (one workflow only; default results/cold/<workflow>.json)")
    p.add_argument("--model", help="train_generative run folder, for the generate workflow")
    p.add_argument("--logs", type=Path, help="keep each run's stderr in this folder")
    p.add_argument("--report", nargs="?", const=RESULTS, type=Path, metavar="FOLDER",
                   help="print the markdown tables of FOLDER/*.json (default benchmarks/results/cold)")
    a = p.parse_args()
    if a.report:
        print(report(a.report))
        return
    if a.out and len(a.workflows) > 1:
        p.error("--out takes one workflow")
    if any(w.startswith("generate") for w in a.workflows) and not a.model:
        p.error("generate needs --model <train_generative run folder>")
    for name in a.workflows:
        r = bench(name, a.core, a.model, a.logs)
        path = a.out or RESULTS / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
