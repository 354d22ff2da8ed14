"""What a search looks for: a fixed composition or a binary composition range.

A :class:`SearchSpace` lists the compositions a search may visit (one for a
fixed-composition search, every A_xB_y with a total atom count in a range for a
variable-composition one) and the per-structure atom layout every operator
keeps: atoms are stored sorted by atomic number, padded to ``n_max`` slots, so
two structures of one composition have identical ``numbers`` rows and can be
crossed slot by slot.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


__all__ = ["SearchSpace", "parse_formula", "covalent_bond", "graph_floor"]


def parse_formula(formula: str) -> dict[str, int]:
    """'Si8' -> {'Si': 8}; 'Ti2O4' -> {'Ti': 2, 'O': 4} (counts per cell, not reduced)."""
    parts = re.findall(r"([A-Z][a-z]?)(\d*)", formula.replace(" ", ""))
    if not parts or "".join(e + n for e, n in parts) != formula.replace(" ", ""):
        raise ValueError(f"cannot parse formula {formula!r}; write counts per cell, e.g. Si8 or Ti2O4")
    out: dict[str, int] = {}
    for el, n in parts:
        out[el] = out.get(el, 0) + (int(n) if n else 1)
    return out


def covalent_bond(z_a: int, z_b: int) -> float:
    """Sum of covalent radii (Å) of two elements (ASE's table, Cordero et al. 2008)."""
    from ase.data import covalent_radii

    return float(covalent_radii[int(z_a)] + covalent_radii[int(z_b)])


@dataclass(frozen=True)
class SearchSpace:
    """The compositions of a search and how their atoms are laid out.

    ``compositions`` is a tuple of count tuples over ``elements`` (atomic
    numbers, ascending). ``cluster`` marks a finite cluster in a fixed vacuum box
    (cell kept fixed, cut planes through the centre of mass).
    """

    elements: tuple[int, ...]
    compositions: tuple[tuple[int, ...], ...]
    cluster: bool = False
    box: float = 0.0  # edge of the vacuum box of a cluster (Å)
    bond_length: float = 0.0  # typical nearest-neighbour distance (Å): sets fingerprint range, seed spacing
    min_distance: float = 0.0  # closest approach allowed in a seed (Å)
    volume_per_atom: float = 0.0  # Å^3; 0 lets pyxtal choose
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    # ------------------------------------------------------------------ build
    @classmethod
    def fixed(cls, formula: str, **kwargs) -> "SearchSpace":
        """One composition, e.g. ``SearchSpace.fixed('Si8')``."""
        from pymatgen.core import Element

        counts = parse_formula(formula)
        zs = sorted(Element(e).Z for e in counts)
        comp = tuple(counts[Element.from_Z(z).symbol] for z in zs)
        return cls._with_defaults(tuple(zs), (comp,), **kwargs)

    @classmethod
    def binary(cls, a: str, b: str, min_atoms: int, max_atoms: int, include_elements: bool = True,
               **kwargs) -> "SearchSpace":
        """Every A_x B_y with min_atoms <= x + y <= max_atoms (x, y >= 0 when
        ``include_elements``, so the hull has its end members)."""
        from pymatgen.core import Element

        za, zb = Element(a).Z, Element(b).Z
        if za == zb:
            raise ValueError("a binary search needs two different elements")
        lo = 0 if include_elements else 1
        comps = []
        for n in range(int(min_atoms), int(max_atoms) + 1):
            for x in range(lo, n - lo + 1):
                counts = {za: x, zb: n - x}
                comps.append(tuple(counts[z] for z in sorted((za, zb))))
        return cls._with_defaults(tuple(sorted((za, zb))), tuple(comps), **kwargs)

    @classmethod
    def _with_defaults(cls, elements, compositions, bond_length=None, min_distance=None, **kwargs):
        if bond_length is None or bond_length <= 0:
            bonds = [covalent_bond(a, b) for a in elements for b in elements]
            bond_length = float(np.mean(bonds))
        if min_distance is None or min_distance <= 0:
            min_distance = 0.7 * bond_length
        return cls(elements, compositions, bond_length=float(bond_length), min_distance=float(min_distance),
                   **kwargs)

    # ---------------------------------------------------------------- queries
    @property
    def variable(self) -> bool:
        return len(self.compositions) > 1

    @property
    def n_max(self) -> int:
        return int(max(sum(c) for c in self.compositions))

    def numbers(self, composition_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(numbers, mask) rows, (n_max,), of a composition: atoms sorted by Z, then padding."""
        comp = self.compositions[composition_index]
        z = np.concatenate([np.full(n, e, np.int32) for e, n in zip(self.elements, comp)])
        numbers = np.zeros(self.n_max, np.int32)
        mask = np.zeros(self.n_max, bool)
        numbers[: len(z)] = z
        mask[: len(z)] = True
        return numbers, mask

    def composition_index(self, numbers: np.ndarray, mask: np.ndarray) -> int:
        """Index of the composition of one structure, or -1 when outside the space."""
        counts = tuple(int(np.sum((numbers == z) & mask)) for z in self.elements)
        try:
            return self.compositions.index(counts)
        except ValueError:
            return -1

    def draw_composition(self, rng: np.random.Generator) -> int:
        """A composition index for a random structure: a reduced composition drawn
        uniformly, then one of its cells. Drawing cells uniformly would give each
        element of a Ga-Ti range with 2-10 atoms 9 of the 63 cells, and it did: a
        SevenNet-0 hull run spent 181 of its 464 relaxations on the two elements.
        A fixed composition takes one draw, as before."""
        if not self.variable:
            return int(rng.integers(1))
        groups = self._reduced_groups()
        cells = groups[int(rng.integers(len(groups)))]
        return int(cells[int(rng.integers(len(cells)))])

    def reduced_indices(self) -> np.ndarray:
        """(C,) the reduced composition of each composition index, numbered in the order of
        first appearance (TiGa and Ti2Ga2 share one)."""
        out = np.zeros(len(self.compositions), np.int64)
        for g, cells in enumerate(self._reduced_groups()):
            out[cells] = g
        return out

    def _reduced_groups(self) -> list[list[int]]:
        """Composition indices grouped by reduced composition (ordered by first index)."""
        import math
        from functools import reduce

        groups: dict[tuple, list[int]] = {}
        for i, comp in enumerate(self.compositions):
            g = reduce(math.gcd, comp)
            groups.setdefault(tuple(k // g for k in comp), []).append(i)
        return list(groups.values())

    def formula(self, composition_index: int) -> str:
        from pymatgen.core import Element

        comp = self.compositions[composition_index]
        return "".join(f"{Element.from_Z(z).symbol}{n}" for z, n in zip(self.elements, comp) if n)


def graph_floor(space: SearchSpace, cutoff: float) -> tuple[tuple[int, int, int], int]:
    """Generous starting (images, edge capacity) for graphs of a space's structures.

    Searches meet cells of every shape; a graph sized for the first batch would
    grow (and force a recompilation) again and again. Start instead with the image
    slots of a cube 0.75 times as wide as the cube of the expected volume, and twice
    the edges of an average structure at that density. Each structure fills the
    slots with its own image box (:func:`jaxinv.graph.images_for`), so one thin axis
    is paid for by the others: for 160 random SiO2 (Si3O6) cells at a 13 Å graph
    cutoff this gives 1,331 slots, against 405 needed by the median cell and 891 by
    the largest (the earlier per-axis floor, 0.4 times the width, gave 6,859).
    """
    from jaxinv.crystal import bucket_size
    from jaxinv.graph import MIN_CAPACITY

    n = space.n_max
    if space.cluster:
        v_atom = space.volume_per_atom or space.bond_length**3 / np.sqrt(2.0)
        return (1, 1, 1), bucket_size(n * max(n - 1, 1), MIN_CAPACITY)
    v_atom = space.volume_per_atom or 1.5 * space.bond_length**3 / np.sqrt(2.0)
    width = 0.75 * (n * v_atom) ** (1.0 / 3.0)
    images = int(np.floor(cutoff / width)) + 1
    per_atom = 4.0 / 3.0 * np.pi * cutoff**3 / v_atom
    return (images,) * 3, bucket_size(int(2.0 * n * per_atom) + 16, MIN_CAPACITY)
