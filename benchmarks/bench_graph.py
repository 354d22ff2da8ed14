"""Neighbor-graph construction for 1,000 perov_5 structures: jaxinv vs pymatgen vs ASE.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_graph.py [--n 1000] [--repeats 5]

jaxinv's time is for the whole host call (``neighbor_graph``: image count, jitted
search, capacity check), after one warm-up call that compiles. pymatgen and ASE
loop over structures (``Structure.get_neighbor_list`` and
``ase.neighborlist.neighbor_list('ijS')``). Edge counts are checked to agree.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from jaxinv.crystal import Crystal
from jaxinv.data import load_dataset
from jaxinv.graph import neighbor_graph


def timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dataset", default="perov_5")
    args = ap.parse_args()
    from ase.neighborlist import neighbor_list

    ds = load_dataset(args.dataset)
    idx = np.arange(min(args.n, len(ds)))
    crystal = ds.crystal(idx)
    structures = ds.structures(idx)
    atoms = crystal.to_atoms()
    print(f"# {args.dataset}, {len(idx)} structures, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    print("| cutoff (Å) | edges | jaxinv (ms) | jaxinv compile (s) | pymatgen (ms) | ASE (ms) | pymatgen / jaxinv | ASE / jaxinv |")
    print("|---|---|---|---|---|---|---|---|")
    for cutoff in (3.0, 5.0, 6.0):
        t0 = time.perf_counter()
        g = neighbor_graph(crystal, cutoff)
        np.asarray(g.senders)
        t_compile = time.perf_counter() - t0

        def ours():
            g = neighbor_graph(crystal, cutoff)
            np.asarray(g.senders)  # wait for the device
            return g

        g, t_ours = timed(ours, args.repeats)
        counts, t_pmg = timed(lambda: [len(s.get_neighbor_list(cutoff)[0]) for s in structures], args.repeats)
        counts_ase, t_ase = timed(lambda: [len(neighbor_list("i", a, cutoff)) for a in atoms], args.repeats)
        n_ours = np.asarray(g.n_edges)[: len(idx)]
        assert list(n_ours) == counts == counts_ase, "edge counts disagree"
        print(f"| {cutoff:.0f} | {int(n_ours.sum())} | {1e3 * t_ours:.1f} | {t_compile - t_ours:.2f} | "
              f"{1e3 * t_pmg:.1f} | {1e3 * t_ase:.1f} | {t_pmg / t_ours:.1f}x | {t_ase / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
