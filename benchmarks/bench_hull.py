"""The Ga-Ti convex hull of a variable-composition search (issue 27), placed beside
known prototypes relaxed with the same potential.

    OPENBLAS_NUM_THREADS=1 taskset -c 1 jaxinv run search composition=Ga,Ti min_atoms=2 max_atoms=10 \
        potential=sevennet0 algorithm=ea batch=32 max_relaxations=1600 out_dir=/tmp/hull_gati
    python benchmarks/bench_hull.py --run /tmp/hull_gati

The prototypes are textbook structures of the Ga-Ti system and its elements (built
from their Wyckoff positions, lattice constants from experiment), relaxed by
jaxinv's batched FIRE with SevenNet-0 like the search's own structures. Each gets
its distance above the search's hull; a negative distance means the search missed
a phase the potential prefers. Writes ``benchmarks/results/hull/gati.json`` and
``gati_hull.png``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

OUT = Path(__file__).resolve().parent / "results" / "hull"

# name -> (space group, lattice (a, b, c, alpha, beta, gamma), species, Wyckoff coordinates)
PROTOTYPES = {
    "Ti hcp (alpha)": ("P6_3/mmc", (2.95, 2.95, 4.68, 90, 90, 120), ["Ti"], [[1 / 3, 2 / 3, 0.25]]),
    "Ti omega": ("P6/mmm", (4.60, 4.60, 2.82, 90, 90, 120), ["Ti", "Ti"], [[0, 0, 0], [1 / 3, 2 / 3, 0.5]]),
    "Ti bcc (beta)": ("Im-3m", (3.28, 3.28, 3.28, 90, 90, 90), ["Ti"], [[0, 0, 0]]),
    "Ga alpha (Cmce)": ("Cmce", (4.52, 7.66, 4.53, 90, 90, 90), ["Ga"], [[0, 0.1549, 0.0810]]),
    "Ti3Ga D0_19": ("P6_3/mmc", (5.74, 5.74, 4.64, 90, 90, 120), ["Ti", "Ga"],
                    [[5 / 6, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.25]]),
    "Ti3Ga L1_2": ("Pm-3m", (4.07, 4.07, 4.07, 90, 90, 90), ["Ti", "Ga"], [[0, 0.5, 0.5], [0, 0, 0]]),
    "TiGa L1_0": ("P4/mmm", (2.83, 2.83, 4.00, 90, 90, 90), ["Ti", "Ga"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    "TiGa3 D0_22 (MP, I4/mmm)": ("I4/mmm", (3.79, 3.79, 8.76, 90, 90, 90), ["Ti", "Ga", "Ga"],
                                 [[0, 0, 0], [0, 0, 0.5], [0, 0.5, 0.25]]),
    "TiGa3 L1_2": ("Pm-3m", (3.90, 3.90, 3.90, 90, 90, 90), ["Ti", "Ga"], [[0, 0, 0], [0, 0.5, 0.5]]),
}


def prototypes():
    from pymatgen.core import Lattice, Structure

    out = {}
    for name, (sg, (a, b, c, al, be, ga), species, coords) in PROTOTYPES.items():
        s = Structure.from_spacegroup(sg, Lattice.from_parameters(a, b, c, al, be, ga), species, coords)
        out[name] = s.get_primitive_structure()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a `jaxinv run search` folder of a Ga,Ti composition range")
    p.add_argument("--out", default=str(OUT / "gati.json"))
    args = p.parse_args(argv)

    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram

    from jaxinv.crystal import Crystal
    from jaxinv.metrics.structure import space_group_number
    from jaxinv.potentials.registry import load_potential
    from jaxinv.relax import energy_per_atom, failed, relax, status_names
    from jaxinv.search.history import hull_table, plot_hull

    table = hull_table(Path(args.run) / "history.db")
    entries = [PDEntry(r["formula"], r["enthalpy_per_atom"] * _atoms(r["formula"]), name=r["formula"]) for r in table]
    pd = PhaseDiagram(entries)
    protos = prototypes()
    relaxed = relax(Crystal.from_structures(list(protos.values()), labels={}), load_potential("sevennet0"),
                    progress=False)
    e = energy_per_atom(relaxed)
    ok = ~failed(relaxed)
    rows = []
    for i, (name, s) in enumerate(protos.items()):
        f = s.composition.reduced_formula
        row = {"prototype": name, "formula": f, "sites": len(s), "status": status_names(relaxed)[i],
               "energy_per_atom": float(e[i]) if ok[i] else None,
               "space_group_after": space_group_number(relaxed[i:i + 1].to_structures()[0])}
        if ok[i]:
            entry = PDEntry(s.composition, float(e[i]) * len(s))
            row["above_search_hull"] = float(pd.get_e_above_hull(entry, allow_negative=True))
        rows.append(row)
    out = {"run": str(args.run), "relaxations": sum(r["structures"] for r in table), "hull": table,
           "prototypes": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    plot_hull(table, path.with_name(path.stem + "_hull.png"),
              f"Ga-Ti, EA with SevenNet-0: {out['relaxations']} relaxations")
    print("on the search's hull:", ", ".join(f"{r['formula']} ({r['space_group']})" for r in table if r["on_hull"]))
    for r in rows:
        print(f"{r['prototype']:28s} {r['formula']:6s} {r['status']:10s} sg {r['space_group_after']}  "
              f"above the search's hull: {r.get('above_search_hull', float('nan')):+.4f} eV/atom")
    return out


def _atoms(formula: str) -> int:
    from pymatgen.core import Composition

    return int(Composition(formula).num_atoms)


if __name__ == "__main__":
    main()
