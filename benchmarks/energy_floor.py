"""Check the relaxer's energy floor (``FireConfig.min_formation_energy`` and
``electronegativity_floor``) against real structures and known holes, under SevenNet-0.

Every structure is relaxed with both floors off (fmax 0.02 eV/Å, 1,000 steps), and its
formation energy against SevenNet-0's shipped elemental references is compared with the
floor of its composition. The margin (formation minus floor) must be positive for every
real structure and negative for every hole. The sets:

* ``compounds``: 85 real compounds of small electronegativity difference, where the floor
  is closest (silicides, phosphides, borides, carbides, chalcogenides, intermetallics,
  III-V semiconductors), built from their experimental lattice parameters;
* ``elements``: ASE's ``dcdft`` collection, the Delta test's ground-state structures;
* ``perov_5``: the 100 rows of ``perov_5/val.csv`` with the smallest electronegativity
  difference and 100 more at random (seed 0), at their DFT geometries;
* ``carbon_24``: 100 random rows of ``carbon_24/val.csv``;
* ``cspbench``: the reference structure of each CSPBench target (the lowest record the
  scorer trusted under the rules before the electronegativity floor, in
  ``results/cspbench/scores.json``; already relaxed with SevenNet-0);
* ``holes``: the records of ``results/cspbench/holes`` below -6.2 eV/atom (GaP) or
  -8 eV/atom (SmFeAsO).

    OPENBLAS_NUM_THREADS=1 JAXINV_DATA=../shared/data taskset -c 0 python benchmarks/energy_floor.py

writes ``results/energy_floor/margins.json`` and prints the closest structures of each set.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def hexagonal(a, c):
    return [a, a, c, 90, 90, 120]


def cubic(a):
    return [a, a, a, 90, 90, 90]


def tetragonal(a, c):
    return [a, a, c, 90, 90, 90]


def compounds() -> dict:
    """Real compounds from experimental lattice parameters (Å)."""
    from ase.build import bulk
    from ase.spacegroup import crystal

    out = {}
    for f, a in {"SiC": 4.36, "BP": 4.538, "AlP": 5.451, "GaP": 5.451, "GaAs": 5.653, "InP": 5.869, "InSb": 6.479,
                 "AlSb": 6.136, "GaSb": 6.096, "CdTe": 6.481, "ZnTe": 6.101, "BN": 3.615, "AlAs": 5.661,
                 "ZnS": 5.41, "CuBr": 5.69, "AgI": 6.50}.items():
        out[f] = bulk(f, "zincblende", a=a)
    for f, a in {"TiC": 4.33, "ZrC": 4.70, "HfC": 4.64, "NbC": 4.47, "TaC": 4.46, "TiN": 4.24, "ZrN": 4.58,
                 "SnTe": 6.32, "PbTe": 6.46, "PbS": 5.936, "PbSe": 6.12, "VN": 4.14, "ScN": 4.50, "PdH": 4.02,
                 "VC": 4.16, "CrN": 4.15, "HfN": 4.52, "SnSe": 6.0}.items():
        out[f] = bulk(f, "rocksalt", a=a)
    for f, a in {"NiAl": 2.887, "CoAl": 2.862, "FeAl": 2.909, "RuAl": 2.995, "CuZn": 2.95, "NiTi": 3.015,
                 "PdIn": 3.25, "AuZn": 3.19}.items():
        out[f] = bulk(f, "cesiumchloride", a=a)

    def two_sites(group, cell, a, b, pa, pb, **kw):
        return crystal([a, b], [pa, pb], spacegroup=group, cellpar=cell, **kw)

    third = (1 / 3, 2 / 3, 1 / 2)
    out["WC"] = two_sites(187, hexagonal(2.906, 2.837), "W", "C", (0, 0, 0), third)
    out["MoP"] = two_sites(187, hexagonal(3.223, 3.191), "Mo", "P", (0, 0, 0), third)
    for f, (a, c) in {"TiB2": (3.03, 3.23), "ZrB2": (3.17, 3.53), "HfB2": (3.14, 3.47), "AlB2": (3.009, 3.262),
                      "MgB2": (3.086, 3.524), "CrB2": (2.97, 3.07), "NbB2": (3.11, 3.27), "TaB2": (3.10, 3.23),
                      "VB2": (3.00, 3.05)}.items():
        out[f] = two_sites(191, hexagonal(a, c), f[:-2], "B", (0, 0, 0), third)
    for f, (m, x, a, c, z) in {"MoS2": ("Mo", "S", 3.16, 12.29, 0.621), "WS2": ("W", "S", 3.153, 12.323, 0.622),
                               "MoSe2": ("Mo", "Se", 3.288, 12.92, 0.621), "WSe2": ("W", "Se", 3.282, 12.96, 0.621),
                               "MoTe2": ("Mo", "Te", 3.52, 13.97, 0.621)}.items():
        out[f] = two_sites(194, hexagonal(a, c), m, x, (1 / 3, 2 / 3, 1 / 4), (1 / 3, 2 / 3, z))
    out["MoSi2"] = two_sites(139, tetragonal(3.20, 7.85), "Mo", "Si", (0, 0, 0), (0, 0, 0.333))
    out["WSi2"] = two_sites(139, tetragonal(3.21, 7.83), "W", "Si", (0, 0, 0), (0, 0, 0.335))
    for f, (m, x, a, u) in {"FeS2": ("Fe", "S", 5.417, 0.385), "RuS2": ("Ru", "S", 5.61, 0.388),
                            "PtP2": ("Pt", "P", 5.696, 0.393)}.items():  # pyrite
        out[f] = two_sites(205, cubic(a), m, x, (0, 0, 0), (u, u, u))
    for f, (m, x, a, um, ux) in {"FeSi": ("Fe", "Si", 4.489, 0.137, 0.842),
                                 "CoSi": ("Co", "Si", 4.447, 0.143, 0.843)}.items():  # B20
        out[f] = two_sites(198, cubic(a), m, x, (um,) * 3, (ux,) * 3)
    for f, (major, minor, a) in {"Ni3Al": ("Ni", "Al", 3.57), "Pt3Ti": ("Pt", "Ti", 3.90), "Cu3Au": ("Cu", "Au", 3.75),
                                 "Pt3Al": ("Pt", "Al", 3.876), "Ir3Zr": ("Ir", "Zr", 3.93),
                                 "Pd3Ti": ("Pd", "Ti", 3.89), "Rh3Nb": ("Rh", "Nb", 3.87)}.items():  # L1_2
        out[f] = two_sites(221, cubic(a), minor, major, (0, 0, 0), (0, 0.5, 0.5))
    out["PtS"] = two_sites(131, tetragonal(3.47, 6.11), "Pt", "S", (0, 0.5, 0), (0, 0, 0.25))
    out["Bi2Te3"] = crystal(["Bi", "Te", "Te"], [(0, 0, 0.4001), (0, 0, 0), (0, 0, 0.7904)], spacegroup=166,
                            cellpar=hexagonal(4.386, 30.497), primitive_cell=True)
    for f, (m, x, a) in {"AuAl2": ("Au", "Al", 6.00), "PtGa2": ("Pt", "Ga", 5.91), "TiH2": ("Ti", "H", 4.45)}.items():
        out[f] = two_sites(225, cubic(a), m, x, (0, 0, 0), (0.25, 0.25, 0.25), primitive_cell=True)  # fluorite
    for f, (m, x, a, c) in {"NiAs": ("Ni", "As", 3.619, 5.034), "FeS": ("Fe", "S", 3.45, 5.88),
                            "CoSb": ("Co", "Sb", 3.87, 5.19), "PtSn": ("Pt", "Sn", 4.10, 5.43),
                            "NiSb": ("Ni", "Sb", 3.94, 5.14), "CrTe": ("Cr", "Te", 3.98, 6.22)}.items():
        out[f] = two_sites(194, hexagonal(a, c), m, x, (0, 0, 0), (1 / 3, 2 / 3, 1 / 4))
    for f, (m, a, u) in {"LaB6": ("La", 4.157, 0.1996), "CaB6": ("Ca", 4.145, 0.2)}.items():
        out[f] = two_sites(221, cubic(a), m, "B", (0, 0, 0), (u, 0.5, 0.5))
    return out


def elements() -> dict:
    from ase.collections import dcdft

    return {name: dcdft[name] for name in dcdft.names}


def _csv_rows(path):
    csv.field_size_limit(1 << 30)
    with open(path) as fh:
        return list(csv.DictReader(fh))


def perov_5(n_small: int = 100, n_random: int = 100) -> dict:
    from pymatgen.core import Structure

    from jaxinv.potentials.references import pauling_electronegativities

    chi = np.asarray(pauling_electronegativities())
    rows = _csv_rows(Path(os.environ["JAXINV_DATA"]) / "perov_5" / "val.csv")
    structures = {r["material_id"]: Structure.from_str(r["cif"], fmt="cif") for r in rows}
    spread = {k: np.ptp(chi[[e.Z for e in s.composition]]) for k, s in structures.items()}
    ordered = sorted(structures, key=lambda k: (spread[k], k))
    rest = ordered[n_small:]
    picked = ordered[:n_small] + [rest[i] for i in np.random.default_rng(0).choice(len(rest), n_random, replace=False)]
    return {f"perov_5:{k}": structures[k] for k in picked}


def carbon_24(n: int = 100) -> dict:
    from pymatgen.core import Structure

    rows = _csv_rows(Path(os.environ["JAXINV_DATA"]) / "carbon_24" / "val.csv")
    picked = np.random.default_rng(0).choice(len(rows), n, replace=False)
    return {f"carbon_24:{rows[i]['material_id']}": Structure.from_str(rows[i]["cif"], fmt="cif") for i in picked}


def cspbench_records():
    """{target: (structure, energy_per_atom)} of each CSPBench target's reference (the lowest
    record the scorer trusted, in ``results/cspbench/scores.json``), and {name: (structure,
    energy_per_atom)} of the hole records."""
    from pymatgen.core import Structure

    root = HERE / "results" / "cspbench"
    reference = {}
    for row in json.loads((root / "scores.json").read_text()):
        reference[row["target"]] = min(reference.get(row["target"], np.inf), row["reference_energy_per_atom"])
    best, holes = {}, {}
    for stream in sorted(root.glob("mp-*/*.jsonl")):
        target = stream.parent.name
        for line in stream.read_text().splitlines():
            r = json.loads(line)
            gap = abs(r.get("energy_per_atom", np.inf) - reference[target])  # scores.json rounds to float32
            if "structure" in r and gap < 1e-5 and gap < best.get(target, (None, None, np.inf))[2]:
                best[target] = (Structure.from_dict(r["structure"]), r["energy_per_atom"], gap)
    for stream in sorted((root / "holes").glob("*/*.jsonl")):
        for i, line in enumerate(stream.read_text().splitlines()):
            r = json.loads(line)
            if "structure" in r and r["energy_per_atom"] < (-6.2 if "8882" in str(stream) else -8.0):
                holes[f"{stream.parent.name}/{stream.stem}#{i}"] = (Structure.from_dict(r["structure"]),
                                                                    r["energy_per_atom"])
    return {t: (structure, e) for t, (structure, e, _) in best.items()}, holes


RESULT = HERE / "results" / "energy_floor" / "margins.json"


def relaxed_rows() -> list[dict]:
    """Every structure of every set: its set, name, status, atomic numbers and energy per atom."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from jaxinv.potentials.references import shipped_element_energies
    from jaxinv.potentials.sevennet import load_sevennet
    from jaxinv.relax import relax, status_names

    mu = np.asarray(shipped_element_energies("7net-0"))
    sets = {"compounds": compounds(), "elements": elements(), "perov_5": perov_5(), "carbon_24": carbon_24()}
    names, atoms = [], []
    for set_name, structures in sets.items():
        for name, s in structures.items():
            a = s if hasattr(s, "get_positions") else AseAtomsAdaptor.get_atoms(s)
            if np.all(np.isfinite(mu[a.numbers])):  # an element SevenNet-0 has no reference for
                names.append((set_name, name))
                atoms.append(a)
    out = relax(atoms, load_sevennet(), fmax=0.02, max_steps=1000, progress=True, min_formation_energy=-np.inf,
                electronegativity_floor=None)
    numbers, mask = np.asarray(out.numbers), np.asarray(out.mask)
    energy, status = np.asarray(out.labels["energy"]), status_names(out)
    rows = [dict(set=s, name=n, status=st, numbers=numbers[i][mask[i]].tolist(),
                 energy_per_atom=float(energy[i] / mask[i].sum()))
            for i, ((s, n), st) in enumerate(zip(names, status))]
    return rows


def main(argv=None):
    import argparse

    from ase.data import chemical_symbols
    from ase.formula import Formula

    from jaxinv.potentials.references import shipped_element_energies
    from jaxinv.relax import FireConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rescore", action="store_true",
                    help=f"score the relaxed rows of {RESULT.name} again (after the references or floor change)")
    args = ap.parse_args(argv)
    if args.rescore:
        rows = [r for r in json.loads(RESULT.read_text())["rows"] if r["status"] != "recorded"]
    else:
        rows = relaxed_rows()
    best, holes = cspbench_records()
    for set_name, records in (("cspbench", best), ("holes", holes)):
        for name, (structure, e) in records.items():
            rows.append(dict(set=set_name, name=name, status="recorded",
                             numbers=[site.specie.Z for site in structure], energy_per_atom=e))
    config = FireConfig(element_energies=shipped_element_energies("7net-0"))
    for r in rows:
        z = np.array([r["numbers"]])
        m = np.ones(z.shape, bool)
        formation, floor = config.formation_and_floor(z, m, np.array([r["energy_per_atom"] * z.shape[1]]))
        r["formation"], r["floor"] = float(formation[0]), float(floor[0])
        r["margin"] = r["formation"] - r["floor"]
        r["formula"] = Formula.from_list([chemical_symbols[n] for n in r["numbers"]]).format("reduce")
    summary = {"floor": {"min_formation_energy": config.min_formation_energy,
                         "electronegativity_floor": config.electronegativity_floor}, "sets": {}}
    for set_name in ("compounds", "elements", "perov_5", "carbon_24", "cspbench", "holes"):
        group = [r for r in rows if r["set"] == set_name]
        counted = [r for r in group if r["status"] in ("converged", "recorded")]
        counted.sort(key=lambda r: r["margin"])
        summary["sets"][set_name] = {"structures": len(group), "counted": len(counted),
                                     "statuses": {st: sum(r["status"] == st for r in group) for st in set(r["status"] for r in group)},
                                     "min_margin": counted[0]["margin"] if counted else None,
                                     "max_margin": counted[-1]["margin"] if counted else None,
                                     "closest": [{k: r[k] for k in ("name", "formula", "formation", "floor", "margin")}
                                                 for r in counted[:8]]}
        print(f"\n{set_name}: {len(counted)}/{len(group)} counted, statuses {summary['sets'][set_name]['statuses']}")
        for r in counted[:8]:
            print(f"  {r['name']:28s} {r['formula']:12s} formation {r['formation']:+.3f} floor {r['floor']:+.3f} "
                  f"margin {r['margin']:+.3f}")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"\nwritten {RESULT}")


if __name__ == "__main__":
    main()
