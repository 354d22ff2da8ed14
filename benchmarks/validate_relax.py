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

import numpy as np


def sample(perov_n, carbon_n, rattle, strain, seed=0):
    """Rattled + strained perov_5 structures and small (<= 8 atoms) carbon_24 structures."""
    from jaxinv.data import load_dataset
    from jaxinv.data.perturb import perturb

    perov, carbon = load_dataset("perov_5:test"), load_dataset("carbon_24:test")
    rng = np.random.default_rng(seed)
    structures = perturb(perov.structures(rng.choice(len(perov), perov_n, replace=False)), rattle=rattle,
                         strain=strain, seed=seed + 1)
    small = np.flatnonzero(np.asarray(carbon.n_atoms) <= 8)
    structures += perturb(carbon.structures(rng.choice(small, carbon_n, replace=False)), rattle=rattle,
                          strain=strain, seed=seed + 2)
    return structures


def ase_relax(structure, calc, fmax, steps=1000):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=fmax, steps=steps)
    return AseAtomsAdaptor.get_structure(atoms), atoms.get_potential_energy() / len(atoms), opt.nsteps


def compare(structures, potential, fmax, max_steps=1000):
    """Per-structure comparison rows (dicts). jaxinv stops on ASE's own test
    (``criterion='ase'``), so both runs end at the same ``fmax`` on atoms and cell."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from jaxinv.potentials.calculator import JaxinvCalculator
    from jaxinv.relax import relax

    ours = relax(structures, potential, fmax=fmax, criterion="ase", max_steps=max_steps, progress=False)
    calc, matcher, rows = JaxinvCalculator(potential), StructureMatcher(), []
    for s, r in zip(structures, ours):
        ref, e_ref, n_ref = ase_relax(s, calc, fmax, max_steps)
        rows.append({"formula": s.composition.reduced_formula, "status": r.status, "steps_jaxinv": int(r.steps),
                     "steps_ase": int(n_ref), "e_jaxinv": float(r.energy_per_atom), "e_ase": float(e_ref),
                     "de_mev_atom": 1e3 * abs(float(r.energy_per_atom) - e_ref),
                     "da": float(np.abs(np.sort(r.structure.lattice.abc) - np.sort(ref.lattice.abc)).max()),
                     "match": bool(matcher.fit(r.structure, ref))})
    return rows


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
