"""Voxel representation round trip: voxelize -> peak-find decode -> StructureMatcher.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_voxel_roundtrip.py \\
        [--datasets perov_5 carbon_24] [--splits test train valid] [--grid 32] [--sigma 0.26]

The decoder gets the true lattice (the voxel VAE carries the lattice parameters
beside the image), so the figure measures the image <-> sites part alone. A
structure is recovered when the decoded composition equals the input's and
``StructureMatcher()`` (pymatgen defaults: ltol 0.2, stol 0.3, angle_tol 5)
fits the two. Results go to ``benchmarks/voxel_roundtrip.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

RESULTS = Path(__file__).with_name("voxel_roundtrip.json")


def round_trip(dataset, split: str, grid: int, sigma: float, batch: int = 64) -> dict:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from jaxinv.generative.species import Vocabulary
    from jaxinv.generative.voxel import VoxelSpec, decode_voxels, voxelize

    part = dataset.subset(split)
    spec = VoxelSpec(Vocabulary.from_dataset(dataset.subset("train")), grid=grid, sigma=sigma)
    matcher = StructureMatcher()
    n = len(part)
    matched, same_count, same_comp, rms = 0, 0, 0, []
    failures = []
    t_enc = t_dec = t_match = 0.0
    for lo in range(0, n, batch):
        idx = np.arange(lo, min(lo + batch, n))
        c = part.crystal(idx, bucket=False)
        t0 = time.perf_counter()
        images = voxelize(c, spec)
        t1 = time.perf_counter()
        out = decode_voxels(images, c.lattice, spec)
        t2 = time.perf_counter()
        for i, a, b in zip(idx, c.to_structures(), out.to_structures()):
            same_count += len(a) == len(b)
            ok = a.composition == b.composition
            same_comp += ok
            r = matcher.get_rms_dist(a, b) if ok else None
            if r is not None:
                matched += 1
                rms.append(r[0])
            else:
                failures.append({"index": int(i), "formula": a.composition.formula,
                                 "decoded": b.composition.formula if len(b) else ""})
        t_enc += t1 - t0
        t_dec += t2 - t1
        t_match += time.perf_counter() - t2
    return {"n": n, "matched": matched, "match_rate": matched / n, "same_n_atoms": same_count / n,
            "same_composition": same_comp / n, "rms_mean": float(np.mean(rms)) if rms else None,
            "rms_max": float(np.max(rms)) if rms else None, "encode_s_per_crystal": t_enc / n,
            "decode_s_per_crystal": t_dec / n, "grid": grid, "sigma": sigma, "failures": failures[:50]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["perov_5", "carbon_24"])
    ap.add_argument("--splits", nargs="+", default=["test"])
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=0.26)
    args = ap.parse_args()

    from jaxinv.data import load_dataset

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.datasets:
        ds = load_dataset(name)
        for split in args.splits:
            r = round_trip(ds, split, args.grid, args.sigma)
            grid_tag = "" if args.grid == 32 and args.sigma == 0.26 else f"@grid{args.grid}-sigma{args.sigma:g}"
            results[f"{name}/{split}{grid_tag}"] = r
            RESULTS.write_text(json.dumps(results, indent=1))
            print(f"{name} {split}: {r['matched']}/{r['n']} = {100 * r['match_rate']:.2f}% recovered "
                  f"(same n atoms {100 * r['same_n_atoms']:.2f}%, same composition {100 * r['same_composition']:.2f}%,"
                  f" mean RMS {r['rms_mean']}); encode {1e3 * r['encode_s_per_crystal']:.1f} ms, decode "
                  f"{1e3 * r['decode_s_per_crystal']:.1f} ms per crystal", flush=True)


if __name__ == "__main__":
    main()
