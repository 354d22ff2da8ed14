"""Issue 4 validation: jaxinv batched relaxation against ASE FIRE + FrechetCellFilter,
both with the jaxinv SevenNet-0 potential, on rattled and strained structures.

    OPENBLAS_NUM_THREADS=1 python benchmarks/validate_relax.py [--perov 20] [--carbon 10] [--fmax 0.005]

jaxinv stops on ASE's test (``criterion="ase"``: every row of the
FrechetCellFilter generalized forces below ``fmax``), so both stop at the same
point of the same algorithm. For every structure: final energy per atom from both, the largest difference of
sorted lattice lengths, StructureMatcher (pymatgen defaults) between the two
final structures, and the steps each took. A pair that does not match is
reported with both energies: from a start near a saddle point (cubic
perovskites are often unstable to octahedral tilts) two correct FIRE runs may
roll into different minima. Writes ``benchmarks/results/validate_relax.json``.
tests/test_relax_sevennet.py runs a small version of this in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from jaxinv.validation import compare, sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--perov", type=int, default=20)
    ap.add_argument("--carbon", type=int, default=10)
    ap.add_argument("--rattle", type=float, default=0.05)
    ap.add_argument("--strain", type=float, default=0.03)
    ap.add_argument("--fmax", type=float, default=0.005)
    args = ap.parse_args()
    from jaxinv.potentials.sevennet import load_sevennet

    t0 = time.perf_counter()
    rows = compare(sample(args.perov, args.carbon, args.rattle, args.strain), load_sevennet(), args.fmax)
    ok = [r for r in rows if r["match"]]
    summary = {"args": vars(args), "n": len(rows), "matched": len(ok), "converged": sum(r["status"] == "converged"
                                                                                          for r in rows),
               "max_de_mev_atom_matched": max(r["de_mev_atom"] for r in ok) if ok else None,
               "max_da_matched": max(r["da"] for r in ok) if ok else None, "seconds": time.perf_counter() - t0,
               "rows": rows}
    out = Path(__file__).parent / "results" / "validate_relax.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print("| formula | status | steps jaxinv / ASE | E jaxinv | E ASE (eV/atom) | dE (meV/atom) | max da (Å) | match |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['formula']} | {r['status']} | {r['steps_jaxinv']} / {r['steps_ase']} | {r['e_jaxinv']:.4f} | "
              f"{r['e_ase']:.4f} | {r['de_mev_atom']:.3f} | {r['da']:.4f} | {'yes' if r['match'] else 'NO'} |")
    print(f"\n{len(ok)}/{len(rows)} matched; over matched pairs max dE {summary['max_de_mev_atom_matched']:.3f} "
          f"meV/atom, max da {summary['max_da_matched']:.4f} Å; {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
