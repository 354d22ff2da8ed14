"""Structural validity: no two atoms closer than 0.5 Å, a cell of at least 0.1 Å^3,
and (jaxinv's addition) at most 1,000 Å^3 per atom.

CDVAE checks ``Structure.distance_matrix`` (pymatgen's minimum-image distance
between *distinct* sites) against 0.5 Å. Here the shortest distance is taken
over *all* periodic images with jaxinv's all-image neighbor graph, including an
atom and its own images, so a lattice vector shorter than 0.5 Å also makes a
structure invalid, and strongly skewed cells (where the minimum-image search of
+-1 cells can miss the closest image) are handled exactly.

The volume cap is not in CDVAE. A cell with more than 1,000 Å^3 per atom has atoms
at least ~10 Å apart, with no bonds at all: a gas, not a crystal (the loosest
inorganic crystals have well under 100 Å^3 per atom). Diffusion samples whose
lattice ran away reached ~1e25 Å^3 per atom, which CDVAE's rule calls valid and on
which pymatgen's StructureMatcher exhausts memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxinv.crystal import Crystal, group_by_bucket

__all__ = ["StructureValidity", "structure_validity", "min_distances", "as_arrays", "as_structures", "take",
           "space_group_number"]

MIN_DISTANCE = 0.5  # Å, CDVAE's structure_validity cutoff
MIN_VOLUME = 0.1  # Å^3, CDVAE's 'unrealistically_small_lattice'
MAX_VOLUME_PER_ATOM = 1000.0  # Å^3; jaxinv's addition (see above)


@dataclass
class StructureValidity:
    """Per-structure results: ``valid``, the shortest interatomic distance
    (``inf`` when none is shorter than the search cutoff, ``nan`` when the cell is
    degenerate) and the cell volume."""

    valid: np.ndarray
    min_distance: np.ndarray
    volume: np.ndarray

    @property
    def rate(self) -> float:
        return float(self.valid.mean()) if len(self.valid) else float("nan")


def as_arrays(structures) -> tuple[list, list, list]:
    """(lattices, fractional coordinates, atomic numbers) of pymatgen structures, a
    Crystal, or such a triple of lists already."""
    if isinstance(structures, tuple) and len(structures) == 3:
        return structures
    if isinstance(structures, Crystal):
        c = structures.to_host()
        return ([c.lattice[b] for b in range(c.batch_size)], [c.frac[b][c.mask[b]] for b in range(c.batch_size)],
                [c.numbers[b][c.mask[b]] for b in range(c.batch_size)])
    lattices, fracs, numbers = [], [], []
    for s in structures:
        lattices.append(np.asarray(s.lattice.matrix, np.float64))
        fracs.append(np.asarray(s.frac_coords, np.float64).reshape(-1, 3))
        numbers.append(np.array([site.specie.Z for site in s], np.int32))
    return lattices, fracs, numbers


def as_structures(samples, rows=None) -> list:
    """pymatgen structures for the metric adapters that need them (StructureMatcher,
    ``Structure.density``): a list of structures as it is; a Crystal's rows
    converted, all of them or only ``rows`` (then the other entries are None)."""
    if not isinstance(samples, Crystal):
        return list(samples)
    if rows is None:
        return samples.to_structures()
    rows = np.asarray(rows, np.int64).reshape(-1)
    out = [None] * samples.batch_size
    for i, s in zip(rows.tolist(), samples[rows].to_structures() if len(rows) else []):
        out[i] = s
    return out


def take(samples, rows):
    """The samples at ``rows``: a Crystal of them, or a list of the structures."""
    if isinstance(samples, Crystal):
        return samples[np.asarray(rows, np.int64).reshape(-1)]
    return [samples[i] for i in rows]


def _well_formed(lattice, frac) -> tuple[bool, float]:
    if not (np.all(np.isfinite(lattice)) and np.all(np.isfinite(frac))):
        return False, float("nan")
    return True, float(abs(np.linalg.det(lattice)))


def min_distances(structures, cutoff: float, chunk: int = 4096) -> np.ndarray:
    """Shortest distance between any two atoms, over all periodic images (Å).

    Returns ``inf`` for a structure with no pair closer than ``cutoff`` and
    ``nan`` for a non-finite or zero-volume cell. Pairs are found with
    :func:`jaxinv.graph.neighbor_graph` (batched by padded size); distances are then
    recomputed in float64 on the host, so the comparison with a threshold is exact.

    Cells too thin or skewed for the graph's image range are LLL-reduced first
    (the same crystal in a better basis). A cell still that thin after reduction
    gets the length of its shortest lattice vector: an upper bound of its
    shortest distance (each atom to its own image) and below ``cutoff``, because
    in an LLL-reduced basis each vector is at most 2^1.5 times the spacing of
    the lattice planes it crosses (the orthogonality-defect bound), and these
    planes are closer than ``cutoff / MAX_IMAGES``. Generative models do
    produce such cells.
    """
    from jaxinv.graph import MAX_IMAGES, images_needed, neighbor_graph

    lattices, fracs, numbers = as_arrays(structures)
    lattices, fracs = list(lattices), list(fracs)  # thin cells are replaced by reduced ones below
    n = len(lattices)
    out = np.full(n, np.inf)
    ok = np.zeros(n, bool)
    for k in range(n):
        good, vol = _well_formed(lattices[k], fracs[k])
        ok[k] = good and vol > 1e-12 and len(numbers[k]) > 0
        if not (good and vol > 1e-12):
            out[k] = np.nan
    # search a hair beyond the cutoff so float32 rounding inside the graph never drops a pair
    search = float(cutoff) * (1 + 1e-5) + 1e-5
    idx_ok = np.flatnonzero(ok)
    lat_ok = np.stack([lattices[k] for k in idx_ok]) if len(idx_ok) else np.zeros((0, 3, 3))
    thin = (images_needed(lat_ok, search) > MAX_IMAGES).any(-1) if len(idx_ok) else np.zeros(0, bool)
    for pos in np.flatnonzero(thin):
        k = idx_ok[pos]
        lattices[k], fracs[k] = lll_reduced(lattices[k], fracs[k])
        thin[pos] = (images_needed(lattices[k][None], search) > MAX_IMAGES).any()
        if thin[pos]:
            out[k] = float(np.linalg.norm(lattices[k], axis=1).min())
    idx_graph = idx_ok[~thin]
    sizes = np.array([len(numbers[k]) for k in idx_graph], int)
    for size, members in group_by_bucket(sizes).items():
        for start in range(0, len(members), chunk):
            part = idx_graph[members[start:start + chunk]]
            crystal = Crystal.from_arrays([lattices[k] for k in part], [fracs[k] for k in part],
                                          [numbers[k] for k in part], n_max=size)
            g = neighbor_graph(crystal, search)
            snd, rcv, shifts, mask = (np.asarray(x) for x in (g.senders, g.receivers, g.shifts, g.mask))
            rows = np.arange(len(part))[:, None]
            dfrac = crystal.frac[rows, snd] - crystal.frac[rows, rcv] + shifts.astype(np.float64)
            d = np.linalg.norm(np.einsum("bea,bac->bec", dfrac, crystal.lattice), axis=-1)
            out[part] = np.where(mask, d, np.inf).min(axis=1, initial=np.inf)
    return out


def lll_reduced(lattice, frac) -> tuple[np.ndarray, np.ndarray]:
    """The same crystal in an LLL-reduced basis (rows are lattice vectors)."""
    from pymatgen.core import Lattice

    reduced = Lattice(lattice).get_lll_reduced_lattice().matrix
    return reduced, np.mod(frac @ lattice @ np.linalg.inv(reduced), 1.0)


def structure_validity(structures, min_distance: float = MIN_DISTANCE, min_volume: float = MIN_VOLUME,
                       report_cutoff: float | None = 3.0,
                       max_volume_per_atom: float | None = MAX_VOLUME_PER_ATOM) -> StructureValidity:
    """CDVAE's structural validity: every interatomic distance (all periodic images)
    at least ``min_distance`` and a cell volume at least ``min_volume``; and at most
    ``max_volume_per_atom`` (None: CDVAE's rule alone).

    The pair search for validity only reaches ``min_distance``; for valid
    structures the shortest distance is then looked up to ``report_cutoff`` (a
    diagnostic; ``inf`` beyond it). Invalid ones keep their value below
    ``min_distance`` (or ``nan`` for broken cells).
    """
    lattices, fracs, numbers = as_arrays(structures)
    volume = np.array([_well_formed(l, f)[1] for l, f in zip(lattices, fracs)])
    dmin = min_distances(structures, min_distance)
    has_atoms = np.array([len(z) > 0 for z in numbers], bool)
    valid = has_atoms & np.isfinite(volume) & (volume >= min_volume) & ~np.isnan(dmin) & (dmin >= min_distance)
    if max_volume_per_atom is not None:
        valid &= volume <= max_volume_per_atom * np.array([max(len(z), 1) for z in numbers])
    if report_cutoff is not None and report_cutoff > min_distance and valid.any():
        # valid cells are not collapsed, so a wider search stays cheap there
        idx = np.flatnonzero(valid)
        dmin[idx] = min_distances(([lattices[k] for k in idx], [fracs[k] for k in idx], [numbers[k] for k in idx]),
                                  report_cutoff)
    return StructureValidity(valid=valid, min_distance=dmin, volume=volume)


def space_group_number(structure, symprec: float = 0.1) -> int | None:
    """International space-group number of a pymatgen structure by spglib (through
    pymatgen's SpacegroupAnalyzer) at ``symprec`` Å, or None where spglib fails."""
    import warnings

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:
        return None
