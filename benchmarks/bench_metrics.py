"""Benchmark jaxinv.metrics (issue 5).

(a) score each dataset's test split against itself and against a rattled copy
    (Gaussian displacements, sigma = 0.1 Å per Cartesian component): validity,
    coverage, property distances, uniqueness, novelty vs the train split, and
    the match rate / RMSE of the rattled copy against the originals.
(b) time scoring N rattled perov_5 structures (default 10,000) against all of
    perov_5 (3,787 structures) as reference and its train split for novelty,
    all metrics, with a cold and then a warm fingerprint cache.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_metrics.py --part a --datasets perov_5 carbon_24
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_metrics.py --part b --n 10000 --n-jobs 2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def rattle(structures, sigma: float, seed: int) -> list:
    """Copies with N(0, sigma^2) Cartesian displacements of every atom."""
    from pymatgen.core import Structure

    rng = np.random.default_rng(seed)
    out = []
    for s in structures:
        cart = s.cart_coords + rng.normal(scale=sigma, size=(len(s), 3))
        out.append(Structure(s.lattice, s.species, cart, coords_are_cartesian=True))
    return out


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "load_avg": os.getloadavg(),
            "python": platform.python_version()}


def _summary(m: dict) -> dict:
    keep = {}
    for k in ("validity", "coverage", "uniqueness", "novelty", "csp", "timings_s"):
        if k in m:
            keep[k] = m[k]
    if "properties" in m:
        keep["wdist"] = {p: v["wdist"] for p, v in m["properties"].items()}
    return keep


def part_a(names, n_jobs: int, cache, seed: int) -> dict:
    from jaxinv.data import load_dataset
    from jaxinv.metrics import score_csp, score_generation, validity

    results = {}
    for name in names:
        test = load_dataset(f"{name}:test").structures()
        train = load_dataset(f"{name}:train").structures()
        rattled = rattle(test, 0.1, seed)
        res = {"n_test": len(test), "n_train": len(train)}
        for label, samples in (("self", test), ("rattled_0.1", rattled)):
            t0 = time.perf_counter()
            m, _ = score_generation(samples, test, train, dataset=name, n_jobs=n_jobs, fingerprint_cache=cache,
                                    seed=seed, progress=False)
            res[label] = _summary(m)
            res[label]["seconds"] = time.perf_counter() - t0
            res[label]["validity_icsd24"] = validity(samples, "icsd24")["rates"]
            print(f"{name} {label}: {json.dumps(res[label], default=float)}", flush=True)
        m, _ = score_csp(rattled, test, n_jobs=n_jobs, progress=False)
        res["rattled_0.1"]["csp"] = m["csp"]
        print(f"{name} rattled vs originals: {m['csp']}", flush=True)
        results[name] = res
    return results


def part_b(n: int, n_jobs: int, seed: int) -> dict:
    from jaxinv.data import load_dataset
    from jaxinv.metrics import score_generation

    t0 = time.perf_counter()
    ds = load_dataset("perov_5")
    reference = ds.structures()
    train = ds.subset("train").structures()
    base = [reference[k % len(reference)] for k in range(n)]
    samples = rattle(base, 0.1, seed)
    prep = time.perf_counter() - t0
    out = {"n_samples": n, "n_reference": len(reference), "n_train": len(train), "prepare_s": prep, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "fp.sqlite"
        for label in ("cold_cache", "warm_cache"):
            t0 = time.perf_counter()
            m, _ = score_generation(samples, reference, train, dataset="perov_5", n_jobs=n_jobs,
                                    fingerprint_cache=cache, seed=seed, progress=True)
            total = time.perf_counter() - t0
            out["runs"][label] = {"total_s": total, **_summary(m)}
            print(f"{label}: {total:.1f} s  {json.dumps(m['timings_s'])}", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["a", "b"], required=True)
    p.add_argument("--datasets", nargs="+", default=["perov_5", "carbon_24"])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)
    info = {"machine": machine(), "args": vars(args)}
    if args.part == "a":
        with tempfile.TemporaryDirectory() as tmp:
            info["results"] = part_a(args.datasets, args.n_jobs, Path(tmp) / "fp.sqlite", args.seed)
    else:
        info["results"] = part_b(args.n, args.n_jobs, args.seed)
    text = json.dumps(info, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
