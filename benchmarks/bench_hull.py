"""The convex hull of a variable-composition search (issue 27), placed beside known
prototypes relaxed with the same potential.

    OPENBLAS_NUM_THREADS=1 taskset -c 1 jaxinv run search composition=Ga,Ti min_atoms=2 max_atoms=10 \
        potential=sevennet0 algorithm=ea batch=32 max_relaxations=1600 out_dir=/tmp/hull_gati
    python benchmarks/bench_hull.py --run /tmp/hull_gati
    python benchmarks/bench_hull.py --system Al-Ni --run /tmp/alni_0 /tmp/alni_1 --out /tmp/alni.json
    python benchmarks/bench_hull.py --compare results/hull/gati.json results/hull/gati_uniform.json ...

The prototypes are textbook structures of the system and its elements (built from
their Wyckoff positions, lattice constants from experiment), relaxed by jaxinv's
batched FIRE with SevenNet-0 like the search's own structures. Each gets its
distance above each run's hull; a negative distance means the search missed a phase
the potential prefers. Writes ``benchmarks/results/hull/<system>.json`` (one run:
its hull and prototypes; several: a list of them under ``runs``) and a hull plot per run.
``--compare`` reads such files and measures each run against the union hull of all of
them and their prototypes: which of its phases a run missed, and by how much.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the thread setting)

OUT = Path(__file__).resolve().parent / "results" / "hull"

# system -> name -> (space group, lattice (a, b, c, alpha, beta, gamma), species, Wyckoff coordinates)
PROTOTYPES = {
    "Ga-Ti": {
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
    },
    # the Al-Ni phases of the assessed phase diagram with at most 5 atoms in the primitive cell
    # (Al3Ni, D0_11, has 16; Ni5Al3 8); lattice constants from experiment
    "Al-Ni": {
        "Al fcc": ("Fm-3m", (4.05, 4.05, 4.05, 90, 90, 90), ["Al"], [[0, 0, 0]]),
        "Ni fcc": ("Fm-3m", (3.52, 3.52, 3.52, 90, 90, 90), ["Ni"], [[0, 0, 0]]),
        "NiAl B2": ("Pm-3m", (2.887, 2.887, 2.887, 90, 90, 90), ["Ni", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "Ni3Al L1_2": ("Pm-3m", (3.567, 3.567, 3.567, 90, 90, 90), ["Al", "Ni"], [[0, 0, 0], [0, 0.5, 0.5]]),
        "Al3Ni2 D5_13": ("P-3m1", (4.036, 4.036, 4.901, 90, 90, 120), ["Al", "Al", "Ni"],
                         [[0, 0, 0], [1 / 3, 2 / 3, 0.6456], [1 / 3, 2 / 3, 0.1482]]),
    },
}


def prototypes(system: str = "Ga-Ti"):
    from pymatgen.core import Lattice, Structure

    out = {}
    for name, (sg, (a, b, c, al, be, ga), species, coords) in PROTOTYPES[system].items():
        s = Structure.from_spacegroup(sg, Lattice.from_parameters(a, b, c, al, be, ga), species, coords)
        out[name] = s.get_primitive_structure()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", default="Ga-Ti", choices=sorted(PROTOTYPES))
    p.add_argument("--run", nargs="+", help="`jaxinv run search` folders of the system's range")
    p.add_argument("--out", default=None, help="default: results/hull/<system>.json")
    p.add_argument("--compare", nargs="+", help="files this script wrote: each run against the union hull")
    args = p.parse_args(argv)
    if args.compare:
        return compare(args.compare)
    if not args.run:
        p.error("--run or --compare is required")

    from jaxinv.crystal import Crystal
    from jaxinv.metrics.structure import space_group_number
    from jaxinv.potentials.registry import load_potential
    from jaxinv.relax import energy_per_atom, failed, relax, status_names
    from jaxinv.search.history import plot_hull

    protos = prototypes(args.system)
    relaxed = relax(Crystal.from_structures(list(protos.values()), labels={}), load_potential("sevennet0"),
                    progress=False)
    energies, ok, status = energy_per_atom(relaxed), ~failed(relaxed), status_names(relaxed)
    relaxed_protos = [dict(prototype=name, structure=s, status=status[i], ok=bool(ok[i]), energy=float(energies[i]),
                           space_group_after=space_group_number(relaxed[i:i + 1].to_structures()[0]))
                      for i, (name, s) in enumerate(protos.items())]
    path = Path(args.out or OUT / f"{args.system.replace('-', '').lower()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    results = []
    for k, run in enumerate(args.run):
        out = _score_run(Path(run), relaxed_protos)
        results.append(out)
        stem = path.stem if len(args.run) == 1 else f"{path.stem}_{k}"
        plot_hull(out["hull"], path.with_name(stem + "_hull.png"),
                  f"{args.system}, EA with SevenNet-0: {out['relaxations']} relaxations")
        print(f"{run}: on the search's hull:", ", ".join(f"{r['formula']} ({r['space_group']})"
                                                         for r in out["hull"] if r["on_hull"]))
        for r in out["prototypes"]:
            print(f"  {r['prototype']:28s} {r['formula']:6s} {r['status']:10s} sg {r['space_group_after']}  "
                  f"above the search's hull: {r.get('above_search_hull', float('nan')):+.4f} eV/atom")
    doc = results[0] if len(results) == 1 else {"system": args.system, "runs": results}
    path.write_text(json.dumps(doc, indent=1, default=float))
    return doc


def _score_run(run: Path, relaxed_protos: list[dict]) -> dict:
    """One run's hull (``hull_table``) and each relaxed prototype's distance above it."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from jaxinv.search.history import hull_table

    table = [{k: v for k, v in r.items() if k != "structure"} for r in hull_table(run / "history.db")]
    pd = PhaseDiagram([_entry(r["formula"], r["enthalpy_per_atom"]) for r in table])
    rows = []
    for p in relaxed_protos:
        s = p["structure"]
        row = {"prototype": p["prototype"], "formula": s.composition.reduced_formula, "sites": len(s),
               "status": p["status"], "energy_per_atom": p["energy"] if p["ok"] else None,
               "space_group_after": p["space_group_after"]}
        if p["ok"]:
            row["above_search_hull"] = float(pd.get_e_above_hull(_entry(row["formula"], p["energy"]),
                                                                 allow_negative=True))
        rows.append(row)
    return {"run": str(run), "relaxations": sum(r["structures"] for r in table), "hull": table, "prototypes": rows}


def compare(paths: list[str]) -> list[dict]:
    """Every run in ``paths`` against the union hull: the lowest enthalpy per reduced
    composition over all runs and all relaxed prototypes. A union phase lying more than
    2 meV/atom below a run's own hull is a miss of that run."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition

    runs = []
    for path in paths:
        doc = json.loads(Path(path).read_text())
        runs.extend(doc.get("runs", [doc]))
    best: dict[str, float] = {}
    for run in runs:
        points = [(r["formula"], r["enthalpy_per_atom"]) for r in run["hull"]]
        points += [(p["formula"], p["energy_per_atom"]) for p in run["prototypes"] if p["energy_per_atom"] is not None]
        for f, e in points:
            best[f] = min(best.get(f, np.inf), e)

    union = PhaseDiagram([_entry(f, e) for f, e in best.items()])
    heavy = max(union.elements, key=lambda el: el.Z)  # phases in order of its fraction, as hull.csv
    phases = sorted((e.name for e in union.stable_entries), key=lambda f: Composition(f).get_atomic_fraction(heavy))
    print("union hull:", ", ".join(phases))
    rows = []
    for run in runs:
        own = PhaseDiagram([_entry(r["formula"], r["enthalpy_per_atom"]) for r in run["hull"]])
        tries = {r["formula"]: r["structures"] for r in run["hull"]}
        misses = {f: 1e3 * float(own.get_e_above_hull(_entry(f, best[f]), allow_negative=True)) for f in phases}
        misses = {f: m for f, m in misses.items() if m < -2.0}
        rows.append({"run": run["run"], "relaxations": run["relaxations"], "misses_mev": misses,
                     "tries": {f: tries.get(f, 0) for f in phases}})
        print(f"{run['run']}: {run['relaxations']} relaxations; missed (meV/atom below its hull): "
              + (", ".join(f"{f} {m:.1f}" for f, m in misses.items()) or "none")
              + "; relaxed " + ", ".join(f"{f} {tries.get(f, 0)}" for f in phases))
    return rows


def _entry(formula: str, energy_per_atom: float):
    """A phase-diagram entry of ``formula`` (any cell of it) at ``energy_per_atom``."""
    from pymatgen.analysis.phase_diagram import PDEntry
    from pymatgen.core import Composition

    c = Composition(formula)
    return PDEntry(c, energy_per_atom * c.num_atoms, name=formula)


if __name__ == "__main__":
    main()
