"""Substitution enumeration throughput: prototypes -> >= 100,000 unique candidates.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_screening_substitution.py --n-prototypes 800 --threshold 1e-5
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jaxinv.data import load_dataset
from jaxinv.screening.substitution import enumerate_substitutions, prepare_prototypes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-prototypes", type=int, default=800)
    ap.add_argument("--threshold", type=float, default=1e-5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "screening_substitution.json"))
    args = ap.parse_args()
    ds = load_dataset("perov_5")
    idx = np.sort(np.random.default_rng(0).permutation(len(ds))[: args.n_prototypes])
    structures = ds.structures(idx)
    t0 = time.perf_counter()
    protos = prepare_prototypes(structures, [str(i) for i in ds.ids[idx]])
    t_proto = time.perf_counter() - t0
    cands, stats = enumerate_substitutions(protos, threshold=args.threshold)
    stats.update(prototypes_given=len(structures), prototypes_usable=len(protos), prototype_seconds=t_proto,
                 families=len({p.family for p in protos}), threshold=args.threshold,
                 total_seconds=t_proto + stats["seconds"])
    Path(args.out).write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
