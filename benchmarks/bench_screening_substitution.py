"""Substitution enumeration throughput: prototypes -> >= 100,000 unique candidates.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_screening_substitution.py --n-prototypes 300 --threshold 1e-5

Prototypes are a seeded sample of perov_5 structures. Reports the substitutions
enumerated (raw), the unique ones after deduplication, the time of each step and
the throughput; writes benchmarks/screening_substitution.json.
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
    ap.add_argument("--n-prototypes", type=int, default=300)
    ap.add_argument("--threshold", type=float, default=1e-5)
    ap.add_argument("--method", default="exhaustive", choices=("exhaustive", "top_k"))
    ap.add_argument("--max-per-prototype", type=int, default=0, help="0: keep every substitution")
    ap.add_argument("--no-dedup", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "screening_substitution.json"))
    args = ap.parse_args()
    ds = load_dataset("perov_5")
    idx = np.sort(np.random.default_rng(0).permutation(len(ds))[: args.n_prototypes])
    structures = ds.structures(idx)
    t0 = time.perf_counter()
    protos = prepare_prototypes(structures, [str(i) for i in ds.ids[idx]])
    t_proto = time.perf_counter() - t0
    cands, stats = enumerate_substitutions(protos, threshold=args.threshold, method=args.method,
                                           max_per_prototype=args.max_per_prototype or None, dedup=not args.no_dedup)
    stats.update(prototypes_given=len(structures), prototypes_usable=len(protos), prototype_seconds=t_proto,
                 families=len({p.family for p in protos}), threshold=args.threshold,
                 total_seconds=t_proto + stats["seconds"], unique=len(cands),
                 enumerated_per_second=stats["enumerated"] / (stats["score_seconds"] + stats["build_seconds"]),
                 unique_per_second_end_to_end=len(cands) / (t_proto + stats["seconds"]))
    Path(args.out).write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
