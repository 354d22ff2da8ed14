"""When do a cold jaxinv EA's generations arrive? One CSPBench target, SevenNet-0, the EA of
``bench_cspbench.py`` (16 structures per generation), run once per relaxation-slot count in a
fresh process (empty XLA cache), so that the times include compilation, as a user's first
run does.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_generations.py --target mp-9812 \
        --slots 16 4 --generations 4 --core 0 --out benchmarks/results/cspbench/generations_mp-9812.json

``--slots 16`` is one slot per structure (the accelerator rule), ``--slots 4`` the CPU default
(a quarter, refilled as relaxations finish). Each line of the output: seconds from process
start to the end of generation g, the FIRE steps of its 16 relaxations, and the best
enthalpy so far (eV/atom).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one_run(target: str, slots: int, generations: int, seed: int, t0: float) -> dict:
    import numpy as np

    import jax

    sys.path.insert(0, str(HERE))
    import bench_cspbench as bc

    from jaxinv.search import Problem, SearchSpace, make_search

    row = bc.target_row(target)
    problem = Problem(SearchSpace.fixed(row["primitive_formula"]), bc.load_sevennet(), bc.fire_config(),
                      batch=bc.BATCH, slots=slots)
    search = make_search("ea", problem, population=bc.BATCH)
    out = {"target": row["material_id"], "slots": slots, "seed": seed, "generations": []}
    state = search.init(jax.random.PRNGKey(seed))
    for g in range(generations + 1):
        if g:
            state = search.step(state)
        out["generations"].append({"generation": g, "at_s": round(time.time() - t0, 1),
                                   "steps": sorted(np.asarray(state.evaluated.steps).tolist()),
                                   "best_eV_per_atom": float(np.min(state.population.enthalpy))})
        print(json.dumps(out["generations"][-1]), flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="material id or formula of targets.csv")
    p.add_argument("--slots", type=int, nargs="+", default=[16, 4])
    p.add_argument("--generations", type=int, default=4, help="after the first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--core", type=int, default=None, help="taskset core of the runs")
    p.add_argument("--out", default=None, help="JSON file of all runs")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one:
        result = one_run(args.target, args.slots[0], args.generations, args.seed, float(os.environ["T0"]))
        Path(args.out).write_text(json.dumps(result))
        return
    runs = []
    for slots in args.slots:
        t0 = time.time()
        tmp = Path(f"/tmp/bench_generations_{os.getpid()}_{slots}.json")
        cmd = [sys.executable, __file__, "--one", "--target", args.target, "--slots", str(slots),
               "--generations", str(args.generations), "--seed", str(args.seed), "--out", str(tmp)]
        if args.core is not None:
            cmd = ["taskset", "-c", str(args.core)] + cmd
        env = dict(os.environ, T0=repr(t0), JAXINV_XLA_CACHE="off", OPENBLAS_NUM_THREADS="1")
        print(f"slots {slots}:", flush=True)
        subprocess.run(cmd, env=env, check=True)
        runs.append(json.loads(tmp.read_text()))
        tmp.unlink()
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "host": os.uname().nodename,
                                              "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
