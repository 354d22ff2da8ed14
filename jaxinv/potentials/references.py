"""Elemental reference energies of a potential, and the energy floor they give.

A potential's elemental reference energy ``mu_Z`` is its lowest energy per atom of
element Z over a handful of relaxed structures: ASE's reference state of the element
(``ase.build.bulk``, where ASE can build it), fcc, bcc, hcp, simple cubic, diamond, the
element's ground-state structure from ASE's ``dcdft`` collection (the Delta test's: alpha
boron, alpha-N2, black phosphorus, trigonal selenium, the molecular halogens, ...), a
dimer in a 12 Å box (the form of H, N, O and the halogens) and, for sulfur, the S8 ring.
Each candidate is relaxed with the batched relaxer, and only converged ones count,
so an elemental structure that falls into a short-range hole is never a reference.
These are bounds, not ground states, and their errors are what the floor's margin is
for. Without the ``dcdft`` structures and S8, SevenNet-0's references of N, B and S were
1.21, 0.56 and 0.65 eV/atom above those structures (its isolated N2 and S2 collapse, to
0.88 and 1.78 Å), which made nitrides, borides and sulfides look that much more bound.
One known error is left: a fluorine diamond lattice (-2.55 eV/atom) lies below the
molecular solid (-1.94), which makes fluorides look less bound (CaF2: -3.49 against
-4.24 eV/atom measured, ``tests/test_energy_floor.py``).

Why: machine-learned potentials have holes, geometries whose energy falls far below
anything physical. The relaxer's collapse rule (:func:`jaxinv.relax.fire.collapse_limits`)
catches the ones with a pair too close; a SevenNet-0 search of SmFeAsO found one without:
an 8-atom cell at -14.16 eV/atom, every real SmFeAsO structure near -7.0, with its
closest pairs at 0.68 and 0.69 of their covalent sums, above the limits that real
short bonds (uranyl's U=O at 0.67, vanadyl's V=O at 0.72) need. Its energy gives it
away instead: the formation energy against these references is ``E/N - sum_i x_i mu_i``,
and no known compound lies below about -4.5 eV/atom (the rare-earth trifluorides:
YF3 -4.45, LaF3 -4.4; CaF2 -4.24; Al2O3 -3.47, from their standard enthalpies of
formation). :class:`~jaxinv.relax.fire.FireConfig` fails a structure whose formation
energy falls below ``min_formation_energy`` (-5 eV/atom) as ``failed_energy``, and one
below its composition's :func:`electronegativity_floor` (-1 - 2 dchi eV/atom), which
catches holes of weakly ionic compositions far above -5 (a GaP cell at -2.05).

SevenNet-0's table ships with jaxinv (``data/element_energies.json``, written by
``python -m jaxinv.potentials.references sevennet0``); any other potential gets one
with :func:`element_energies` and ``Potential.metadata["element_energies"]``
(119 values, eV/atom by atomic number, NaN where unknown: a structure with such an
element is never tested). Without a table the floor is off.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["element_energies", "shipped_element_energies", "as_array", "formation_energy", "pauling_electronegativities",
           "electronegativity_floor", "formation_floor", "TABLE", "BOX"]

log = logging.getLogger("jaxinv.potentials")

TABLE = "element_energies.json"
BOX = 12.0  # Å, the dimer's cubic box (twice SevenNet-0's 5 Å cutoff and more)
FMAX = 0.02  # eV/Å, the references' convergence


def _candidates(symbol: str) -> list[tuple[str, object]]:
    """(name, ASE Atoms) of the periodic candidates for one element, at a nearest-neighbour
    distance of 1.1 times twice its covalent radius."""
    from ase.build import bulk
    from ase.collections import dcdft
    from ase.data import atomic_numbers, covalent_radii

    d = 2.2 * float(covalent_radii[atomic_numbers[symbol]])
    out = []
    try:
        out.append(("reference", bulk(symbol)))
    except (ValueError, KeyError, RuntimeError, NotImplementedError):  # no reference state ASE can build
        pass
    out.append(("fcc", bulk(symbol, "fcc", a=d * math.sqrt(2.0))))
    out.append(("bcc", bulk(symbol, "bcc", a=d * 2.0 / math.sqrt(3.0))))
    out.append(("hcp", bulk(symbol, "hcp", a=d, c=d * math.sqrt(8.0 / 3.0))))
    out.append(("sc", bulk(symbol, "sc", a=d)))
    out.append(("diamond", bulk(symbol, "diamond", a=d * 4.0 / math.sqrt(3.0))))
    if symbol in dcdft.names:  # the element's DFT ground-state structure (the Delta test's)
        out.append(("dcdft", dcdft[symbol]))
    return out


def _molecules(symbol: str) -> list[tuple[str, object]]:
    """(name, ASE Atoms) of the molecular candidates for one element, each in a BOX Å cube:
    a dimer at twice the covalent radius and, for sulfur, the S8 crown (S-S 2.05 Å,
    S-S-S 108 degrees), the molecule of its solid. SevenNet-0 collapses the isolated S2
    (to 1.78 Å), and without S8 its sulfur reference was simple cubic, 0.65 eV/atom above
    the ring (-3.48 against -4.12), which made every sulfide look that much more bound."""
    from ase import Atoms
    from ase.data import atomic_numbers, covalent_radii

    d = 2.0 * float(covalent_radii[atomic_numbers[symbol]])
    c = BOX / 2.0
    out = [("dimer", Atoms([symbol, symbol], positions=[[c - d / 2, c, c], [c + d / 2, c, c]], cell=[BOX] * 3,
                           pbc=True))]
    if symbol == "S":
        bond, angle = 2.05, math.radians(108.0)
        radius = 2.0 * bond * math.sin(angle / 2.0) / math.sqrt(2.0)  # second neighbours a quarter turn apart
        height = math.sqrt(bond ** 2 - (2.0 * radius * math.sin(math.pi / 8.0)) ** 2) / 2.0
        ring = [[c + radius * math.cos(k * math.pi / 4.0), c + radius * math.sin(k * math.pi / 4.0),
                 c + (height if k % 2 else -height)] for k in range(8)]
        out.append(("ring", Atoms("S8", positions=ring, cell=[BOX] * 3, pbc=True)))
    return out


def element_energies(potential, symbols=None, fmax: float = FMAX, max_steps: int = 1000,
                     progress: bool = False) -> dict[str, dict]:
    """``{symbol: {"energy_per_atom": eV, "structure": which candidate}}``: the lowest energy
    per atom of each element over its converged candidates (module docstring); an element
    with none converged is left out. ``symbols`` default to the potential's species."""
    from ase.data import chemical_symbols

    from jaxinv.relax.api import converged, energy_per_atom, relax

    if symbols is None:
        if potential.species is None:
            raise ValueError(f"potential {potential.name!r} does not list its species; pass symbols")
        symbols = [chemical_symbols[z] for z in potential.species]
    names, atoms = [], []
    for s in symbols:
        for name, a in _candidates(s):
            names.append((s, name))
            atoms.append(a)
    # no energy floor: these relaxations are what a floor is measured from
    options = dict(fmax=fmax, max_steps=max_steps, progress=progress, min_formation_energy=-np.inf,
                   electronegativity_floor=None)
    bulk = relax(atoms, potential, **options)
    molecules = [(s, name, a) for s in symbols for name, a in _molecules(s)]
    isolated = relax([a for *_, a in molecules], potential, cell="fixed", **options)
    names += [(s, name) for s, name, _ in molecules]
    energy = np.concatenate([energy_per_atom(bulk), energy_per_atom(isolated)])
    ok = np.concatenate([converged(bulk), converged(isolated)]) & np.isfinite(energy)
    best: dict[str, dict] = {}
    for (s, name), e, good in zip(names, energy, ok):
        if good and (s not in best or e < best[s]["energy_per_atom"]):
            best[s] = {"energy_per_atom": float(e), "structure": name}
    missing = sorted(set(symbols) - set(best))
    if missing:
        log.warning("%s: no candidate of %s converged; those elements have no reference", potential.name,
                    ", ".join(missing))
    return best


def as_array(table: dict) -> tuple:
    """119 energies per atom by atomic number (NaN where the table has none), from
    ``{symbol: {"energy_per_atom": eV}}`` or ``{symbol: eV}``."""
    from ase.data import atomic_numbers

    out = np.full(119, np.nan)
    for s, row in table.items():
        out[atomic_numbers[s]] = row["energy_per_atom"] if isinstance(row, dict) else row
    return tuple(float(x) for x in out)


@functools.cache  # one tuple per name: configs holding it compare equal (NaN != NaN otherwise)
def shipped_element_energies(name: str) -> tuple | None:
    """The shipped table of potential ``name`` as 119 values, or None."""
    tables = json.loads(resources.files("jaxinv.potentials").joinpath("data", TABLE).read_text())
    entry = tables.get(name)
    return None if entry is None else as_array(entry["elements"])


def formation_energy(numbers, mask, energy, mu, xp=np):
    """(B,) formation energy per atom, ``E/N - mean_i mu[Z_i]``, of energies ``energy`` (B,)
    of structures with atomic numbers ``numbers`` and ``mask`` (B, N); NaN where an element
    has no reference. ``xp=jnp`` inside a jitted function."""
    mu = xp.asarray(mu)
    n = xp.maximum(xp.sum(mask, -1), 1)
    reference = xp.sum(xp.where(mask, mu[numbers], 0.0), -1)
    return (energy - reference) / n


@functools.cache
def pauling_electronegativities() -> tuple:
    """Pauling electronegativities by atomic number 0..118 (pymatgen's table; NaN where there
    is none: He, Ne, Ar and the elements past Lr)."""
    import warnings

    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for each element without a value
        return (math.nan,) + tuple(float(Element.from_Z(z).X) for z in range(1, 119))


def electronegativity_floor(numbers, mask, floor: tuple[float, float], xp=np):
    """(B,) the lowest believable formation energy per atom of each structure (eV/atom),
    ``floor[0] + floor[1] * dchi``, with ``dchi`` the largest Pauling electronegativity
    difference among its elements (0 for an element); NaN where an element has no
    electronegativity. ``xp=jnp`` inside a jitted function.

    Why: how far below its elements a compound can lie grows with how ionic its bonds can
    be. A SevenNet-0 search of GaP (dchi 0.38) relaxed flat Ga and P sheets to a
    formation energy of -2.05 eV/atom, five times wurtzite's -0.42 (measured -0.46), with
    every pair above its collapse limit; the floor there is -1.76 with the default
    ``FireConfig.electronegativity_floor`` (-1, -2). The SevenNet-0 formation energies of
    85 real compounds of small dchi lie 0.41 eV/atom or more above their floors (the
    closest: CoSi -0.63 at dchi 0.02, MoP -0.64 at 0.03, PtP2 -0.70 at 0.09, WS2 -0.89 at
    0.22), 200 perov_5 structures 2.2 or more, the 12 CSPBench references 1.1 or more,
    and elemental ground states and 100 carbon_24 structures sit at 0, a full eV above
    theirs (``benchmarks/energy_floor.py``, ``tests/test_energy_floor.py``)."""
    chi = xp.asarray(pauling_electronegativities())[numbers]
    high = xp.max(xp.where(mask, chi, -xp.inf), -1)
    low = xp.min(xp.where(mask, chi, xp.inf), -1)
    return floor[0] + floor[1] * (high - low)


def formation_floor(numbers, mask, minimum: float, floor: tuple[float, float] | None, xp=np):
    """(B,) the formation energy per atom below which a structure is a hole: the higher of
    ``minimum`` and, where ``floor`` is given and defined, :func:`electronegativity_floor`."""
    low = xp.full(numbers.shape[:-1], float(minimum))
    if floor is None:
        return low
    return xp.fmax(low, electronegativity_floor(numbers, mask, floor, xp=xp))


def main(argv=None):
    from jaxinv.potentials.registry import load_potential

    ap = argparse.ArgumentParser(description="Write a potential's elemental reference energies into the shipped table")
    ap.add_argument("potential", help="a registered potential name, e.g. 7net-0")
    ap.add_argument("--out", default=str(Path(__file__).parent / "data" / TABLE))
    args = ap.parse_args(argv)
    potential = load_potential(args.potential)
    table = element_energies(potential, progress=True)
    out = Path(args.out)
    tables = json.loads(out.read_text()) if out.is_file() else {}
    tables[potential.name] = {"command": f"python -m jaxinv.potentials.references {args.potential}",
                              "fmax": FMAX, "elements": table}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tables, indent=1) + "\n")
    print(f"{len(table)} elements of {potential.name} written to {out}")


if __name__ == "__main__":
    main()
