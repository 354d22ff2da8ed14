"""The one batch type of jaxinv: a padded, masked batch of periodic crystals.

A :class:`Crystal` is a pytree (a ``flax.struct`` dataclass), so it can be passed
through ``jit``, ``vmap``, ``lax.scan`` and ``jax.sharding`` unchanged. Every later
module (graphs, potentials, relaxation, search, generative models, metrics)
consumes and produces it.

Conventions
-----------
* ``lattice[b]`` is a 3x3 matrix whose *rows* are the lattice vectors (Å), as in
  pymatgen's ``Lattice.matrix`` and ASE's ``Atoms.cell``.
* ``frac[b, i]`` are fractional coordinates; Cartesian positions are
  ``frac @ lattice``. Coordinates are *not* wrapped into [0, 1): keeping them
  continuous lets a neighbor graph stay valid while atoms move across cell faces.
* ``numbers`` are atomic numbers; padded slots hold 0 and ``mask`` is False.
* ``labels`` maps a property name to a per-structure array of shape (B, ...),
  e.g. ``energy`` (B,) or ``stress`` (B, 3, 3); ``atom_labels`` maps a name to a
  per-atom array (B, N, ...), e.g. ``forces`` (B, N, 3), zero on padded atoms.

On the host the arrays are NumPy float64, so conversions from and to pymatgen and
ASE are lossless. Inside ``jit`` JAX casts them to its default float dtype.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from flax import struct

import jax
import jax.numpy as jnp

__all__ = ["Crystal", "bucket_size", "bucket_floor", "group_by_bucket"]


def bucket_size(n: int, minimum: int = 4) -> int:
    """Smallest padded size from jaxinv's one bucket ladder that holds ``n`` slots.

    The ladder is {4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, ...}: powers of two and
    1.5x powers of two, so padding wastes at most a third while the number of
    distinct shapes (and therefore of jit compilations) grows only logarithmically.
    Atoms per structure, edge capacities (``minimum=16``) and relaxation batch sizes
    all round up on it, so programs of different runs and compositions share shapes,
    and the persistent compile cache serves them.
    """
    n = max(int(n), minimum)
    p = 2 ** math.floor(math.log2(n))
    for candidate in (p, (3 * p) // 2, 2 * p):
        if candidate >= n:
            return int(candidate)
    return int(2 * p)  # unreachable, kept for clarity


def bucket_floor(n: int, minimum: int = 4) -> int:
    """The largest size on the :func:`bucket_size` ladder that is at most ``n`` (``n`` itself
    below ``minimum``): a batch sized by a budget rounds down on it, staying in budget."""
    n = int(n)
    if n < minimum:
        return max(n, 1)
    p = 2 ** math.floor(math.log2(n))
    return int((3 * p) // 2 if (3 * p) // 2 <= n and p >= 2 else p)


def _xp(x):
    """The array module of ``x``: NumPy for host arrays, jax.numpy otherwise."""
    return np if isinstance(x, np.ndarray) else jnp


@struct.dataclass
class Crystal:
    """A padded batch of crystals. See the module docstring for conventions."""

    lattice: jax.Array  # (B, 3, 3)
    frac: jax.Array  # (B, N, 3)
    numbers: jax.Array  # (B, N) int
    mask: jax.Array  # (B, N) bool
    labels: dict = struct.field(default_factory=dict)  # name -> (B, ...)
    atom_labels: dict = struct.field(default_factory=dict)  # name -> (B, N, ...)

    # ------------------------------------------------------------------ shape
    @property
    def batch_size(self) -> int:
        return self.numbers.shape[0]

    @property
    def n_max(self) -> int:
        return self.numbers.shape[-1]

    def __len__(self) -> int:
        return self.batch_size

    # ------------------------------------------------------------- geometry
    @property
    def positions(self):
        """Cartesian positions, (B, N, 3) in Å."""
        xp = _xp(self.frac)
        return xp.einsum("...ni,...ij->...nj", self.frac, self.lattice)

    @property
    def n_atoms(self):
        """Number of real atoms per structure, (B,)."""
        return self.mask.sum(-1)

    @property
    def volume(self):
        """Cell volume per structure, (B,) in Å^3."""
        xp = _xp(self.lattice)
        return xp.abs(xp.linalg.det(self.lattice))

    @property
    def present(self):
        """Whether a batch slot holds a structure (empty padding slots have no atoms)."""
        return self.mask.any(-1)

    def with_positions(self, positions) -> "Crystal":
        """Same crystal with new Cartesian positions (fractional ones are derived)."""
        xp = _xp(self.lattice)
        frac = xp.einsum("...nj,...ji->...ni", positions, xp.linalg.inv(self.lattice))
        return self.replace(frac=frac)

    def wrapped(self) -> "Crystal":
        """Fractional coordinates moved into [0, 1); padded atoms stay at 0."""
        xp = _xp(self.frac)
        frac = self.frac - xp.floor(self.frac)
        return self.replace(frac=xp.where(self.mask[..., None], frac, 0.0))

    # ----------------------------------------------------------- batching
    def __getitem__(self, index) -> "Crystal":
        """Index or slice the batch dimension. An integer keeps a batch of one."""
        if isinstance(index, (int, np.integer)):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return jax.tree_util.tree_map(lambda x: x[index], self)

    def without_labels(self) -> "Crystal":
        """The geometry alone: the same arrays, no labels or atom labels."""
        return Crystal(self.lattice, self.frac, self.numbers, self.mask)

    def to_host(self) -> "Crystal":
        """Copy to NumPy (float64 geometry), e.g. after a jitted computation."""
        return Crystal(
            lattice=np.asarray(self.lattice, dtype=np.float64),
            frac=np.asarray(self.frac, dtype=np.float64),
            numbers=np.asarray(self.numbers, dtype=np.int32),
            mask=np.asarray(self.mask, dtype=bool),
            labels={k: np.asarray(v) for k, v in self.labels.items()},
            atom_labels={k: np.asarray(v) for k, v in self.atom_labels.items()},
        )

    def pad(self, n_max: int | None = None, batch_size: int | None = None) -> "Crystal":
        """Pad (host side) to ``n_max`` atom slots and ``batch_size`` structures.

        Padded structures are empty (no atoms) with an identity-like cubic cell, so
        geometry routines never divide by a zero volume.
        """
        c = self.to_host()
        n_max = c.n_max if n_max is None else int(n_max)
        batch_size = c.batch_size if batch_size is None else int(batch_size)
        if n_max < int(c.n_atoms.max(initial=0)):
            raise ValueError(f"n_max={n_max} is smaller than the largest structure ({int(c.n_atoms.max())} atoms)")
        if batch_size < c.batch_size:
            raise ValueError(f"batch_size={batch_size} is smaller than the batch ({c.batch_size})")
        # Compact atoms to the front so that slicing to n_max loses nothing.
        order = np.argsort(~c.mask, axis=1, kind="stable")[:, :n_max]
        take = lambda a: np.take_along_axis(a, order.reshape(order.shape + (1,) * (a.ndim - 2)), axis=1)
        frac, numbers, mask = take(c.frac), take(c.numbers), take(c.mask)
        atom_labels = {k: take(v) for k, v in c.atom_labels.items()}
        if n_max > frac.shape[1]:
            extra = n_max - frac.shape[1]
            grow = lambda a: np.concatenate([a, np.zeros((a.shape[0], extra) + a.shape[2:], a.dtype)], 1)
            frac, numbers, mask = grow(frac), grow(numbers), grow(mask)
            atom_labels = {k: grow(v) for k, v in atom_labels.items()}
        extra_b = batch_size - c.batch_size
        lattice = c.lattice
        labels = dict(c.labels)
        if extra_b:
            lattice = np.concatenate([lattice, np.broadcast_to(10.0 * np.eye(3), (extra_b, 3, 3))], 0)
            frac = np.concatenate([frac, np.zeros((extra_b, n_max, 3))], 0)
            numbers = np.concatenate([numbers, np.zeros((extra_b, n_max), np.int32)], 0)
            mask = np.concatenate([mask, np.zeros((extra_b, n_max), bool)], 0)
            labels = {k: np.concatenate([v, np.full((extra_b,) + v.shape[1:], np.nan)]) for k, v in labels.items()}
            atom_labels = {k: np.concatenate([v, np.zeros((extra_b,) + v.shape[1:], v.dtype)])
                           for k, v in atom_labels.items()}
        return Crystal(lattice, frac, numbers, mask, labels, atom_labels)

    @staticmethod
    def concatenate(crystals: Sequence["Crystal"], n_max: int | None = None) -> "Crystal":
        """Stack batches along the batch axis, padding atoms to a common size."""
        crystals = [c.to_host() for c in crystals]
        n = max(c.n_max for c in crystals) if n_max is None else n_max
        crystals = [c.pad(n) for c in crystals]
        keys = set(crystals[0].labels)
        atom_keys = set(crystals[0].atom_labels)
        for c in crystals[1:]:
            keys &= set(c.labels)
            atom_keys &= set(c.atom_labels)
        return Crystal(
            lattice=np.concatenate([c.lattice for c in crystals]),
            frac=np.concatenate([c.frac for c in crystals]),
            numbers=np.concatenate([c.numbers for c in crystals]),
            mask=np.concatenate([c.mask for c in crystals]),
            labels={k: np.concatenate([c.labels[k] for c in crystals]) for k in sorted(keys)},
            atom_labels={k: np.concatenate([c.atom_labels[k] for c in crystals]) for k in sorted(atom_keys)},
        )

    # ---------------------------------------------------------- conversion
    @classmethod
    def from_arrays(
        cls,
        lattices: Sequence[np.ndarray],
        fracs: Sequence[np.ndarray],
        numbers: Sequence[np.ndarray],
        labels: dict | None = None,
        n_max: int | None = None,
        bucket: bool = False,
        atom_labels: dict | None = None,
    ) -> "Crystal":
        """Build a padded batch from per-structure arrays (host side).

        ``atom_labels`` maps a name to a list of per-structure (n_i, ...) arrays.
        """
        sizes = [len(z) for z in numbers]
        if not sizes:
            raise ValueError("cannot build a Crystal batch from zero structures")
        largest = max(sizes)
        if n_max is None:
            n_max = bucket_size(largest) if bucket else largest
        elif n_max < largest:
            raise ValueError(f"n_max={n_max} is smaller than the largest structure ({largest} atoms)")
        b = len(sizes)
        frac = np.zeros((b, n_max, 3))
        nums = np.zeros((b, n_max), np.int32)
        mask = np.zeros((b, n_max), bool)
        for k, (f, z) in enumerate(zip(fracs, numbers)):
            frac[k, : len(z)] = f
            nums[k, : len(z)] = z
            mask[k, : len(z)] = True
        lattice = np.asarray(np.stack([np.asarray(l, np.float64) for l in lattices]), np.float64)
        labels = {k: np.asarray(v, np.float64) for k, v in (labels or {}).items()}
        per_atom = {}
        for k, values in (atom_labels or {}).items():
            first = np.asarray(values[0])
            arr = np.zeros((b, n_max) + first.shape[1:], np.float64)
            for i, v in enumerate(values):
                arr[i, : len(v)] = v
            per_atom[k] = arr
        return cls(lattice, frac, nums, mask, labels, per_atom)

    @classmethod
    def from_structures(cls, structures: Iterable, labels: dict | None = None, n_max: int | None = None,
                        bucket: bool = False) -> "Crystal":
        """From pymatgen ``Structure`` objects (ordered sites only).

        ``labels`` may be given explicitly; otherwise numeric entries common to all
        ``structure.properties`` dicts become labels.
        """
        structures = list(structures)
        for k, s in enumerate(structures):
            if not s.is_ordered:
                raise ValueError(f"structure {k} ({s.composition.reduced_formula}) is disordered; jaxinv needs ordered sites")
        if labels is None:
            labels = _common_numeric(getattr(s, "properties", None) or {} for s in structures)
        return cls.from_arrays(
            [s.lattice.matrix for s in structures],
            [s.frac_coords for s in structures],
            [np.array(s.atomic_numbers, np.int32) for s in structures],
            labels=labels, n_max=n_max, bucket=bucket,
        )

    @classmethod
    def from_atoms(cls, atoms_list: Iterable, labels: dict | None = None, n_max: int | None = None,
                   bucket: bool = False) -> "Crystal":
        """From ASE ``Atoms`` (periodic in all three directions).

        Fractional coordinates are taken unwrapped, so positions survive exactly.
        Numeric ``atoms.info`` entries common to all structures become labels.
        Calculator results present on every structure (as read from an extxyz
        file) become ``labels['energy']``, ``labels['stress']`` (3x3, eV/Å^3) and
        ``atom_labels['forces']``.
        """
        atoms_list = list(atoms_list)
        for k, a in enumerate(atoms_list):
            if not all(a.pbc):
                raise ValueError(f"atoms {k} ({a.get_chemical_formula()}) is not periodic in 3D (pbc={list(a.pbc)})")
        if labels is None:
            labels = _common_numeric(a.info for a in atoms_list)
        labels = dict(labels)
        atom_labels = {}
        results = [getattr(a.calc, "results", {}) if a.calc is not None else {} for a in atoms_list]
        if all("energy" in r for r in results):
            labels.setdefault("energy", np.array([r["energy"] for r in results], np.float64))
        if all("forces" in r for r in results):
            atom_labels["forces"] = [np.asarray(r["forces"], np.float64) for r in results]
        if all("stress" in r for r in results):
            from ase.stress import voigt_6_to_full_3x3_stress

            labels.setdefault("stress", np.array([voigt_6_to_full_3x3_stress(r["stress"]) if np.size(r["stress"]) == 6
                                                  else np.reshape(r["stress"], (3, 3)) for r in results]))
        return cls.from_arrays(
            [a.cell.array for a in atoms_list],
            [a.cell.scaled_positions(a.positions) for a in atoms_list],
            [a.numbers.astype(np.int32) for a in atoms_list],
            labels=labels, n_max=n_max, bucket=bucket, atom_labels=atom_labels,
        )

    def _iter_host(self):
        c = self.to_host()
        for b in range(c.batch_size):
            m = c.mask[b]
            yield c, b, m

    def to_structures(self) -> list:
        """To a list of pymatgen ``Structure`` (labels go to ``structure.properties``)."""
        from pymatgen.core import Lattice, Structure

        out = []
        for c, b, m in self._iter_host():
            props = {k: v[b].item() for k, v in c.labels.items() if np.ndim(v[b]) == 0}
            out.append(Structure(Lattice(c.lattice[b]), c.numbers[b][m].tolist(), c.frac[b][m],
                                 coords_are_cartesian=False, properties=props))
        return out

    def to_atoms(self) -> list:
        """To a list of ASE ``Atoms``: scalar labels go to ``atoms.info``; energy, stress
        and forces labels, when present, to a ``SinglePointCalculator``."""
        from ase import Atoms

        out = []
        for c, b, m in self._iter_host():
            atoms = Atoms(numbers=c.numbers[b][m], cell=c.lattice[b], pbc=True)
            # frac @ cell, as ASE's own scaled-position setter computes it; unwrapped
            atoms.positions = c.frac[b][m] @ c.lattice[b]
            atoms.info.update({k: v[b].item() for k, v in c.labels.items() if np.ndim(v[b]) == 0 and k != "energy"})
            results = {}
            if "energy" in c.labels:
                results["energy"] = float(c.labels["energy"][b])
            if "forces" in c.atom_labels:
                results["forces"] = c.atom_labels["forces"][b][m]
            if "stress" in c.labels:
                results["stress"] = np.asarray(c.labels["stress"][b]).reshape(3, 3)
            if results:
                from ase.calculators.singlepoint import SinglePointCalculator

                atoms.calc = SinglePointCalculator(atoms, **results)
            out.append(atoms)
        return out

    def formulas(self) -> list[str]:
        """Reduced formulas, one per structure (host side)."""
        from pymatgen.core import Composition, Element

        out = []
        for c, b, m in self._iter_host():
            z, n = np.unique(c.numbers[b][m], return_counts=True)
            out.append(Composition({Element.from_Z(int(zz)): int(nn) for zz, nn in zip(z, n)}).reduced_formula
                       if len(z) else "")
        return out


def _common_numeric(dicts: Iterable[dict]) -> dict:
    """Numeric scalar entries present in every dict, as arrays."""
    dicts = list(dicts)
    if not dicts:
        return {}
    keys = set(dicts[0])
    for d in dicts[1:]:
        keys &= set(d)
    out = {}
    for k in sorted(keys):
        vals = [d[k] for d in dicts]
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals):
            out[k] = np.asarray(vals, np.float64)
    return out


def group_by_bucket(sizes: Sequence[int], minimum: int = 4) -> dict[int, np.ndarray]:
    """Indices of structures grouped by padded size (see :func:`bucket_size`)."""
    sizes = np.asarray(sizes)
    buckets = np.array([bucket_size(n, minimum) for n in sizes])
    return {int(b): np.flatnonzero(buckets == b) for b in np.unique(buckets)}
