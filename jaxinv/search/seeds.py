"""Starting structures: random symmetric crystals (pyxtal), random clusters, user/dataset structures.

Every function returns a host :class:`~jaxinv.crystal.Crystal` in the layout of
a :class:`~jaxinv.search.composition.SearchSpace` (atoms sorted by atomic
number, ``n_max`` slots) together with the composition index of each structure.

Random crystals are drawn by pyxtal in a space group compatible with the
composition (Wyckoff multiplicities must add up to the atom counts; pyxtal's
``check_compatible`` decides). A composition/space-group pair that pyxtal cannot
fill is remembered, logged once and never tried again, so generation never
stalls; P1 always works as the last resort.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import warnings

import numpy as np

from jaxinv.crystal import Crystal
from jaxinv.search.composition import SearchSpace

__all__ = ["random_crystals", "random_clusters", "random_structures", "from_structures", "compatible_groups"]

log = logging.getLogger("jaxinv.search")

_FAILED: set = set()  # (species, counts, group) that pyxtal could not build


@functools.lru_cache(maxsize=256)
def compatible_groups(species: tuple[str, ...], counts: tuple[int, ...]) -> tuple[int, ...]:
    """Space groups (2..230) whose Wyckoff positions can hold ``counts`` atoms
    in the conventional cell with at least one free parameter (plus P1)."""
    from pyxtal.symmetry import Group

    out = [1]
    for sg in range(2, 231):
        try:
            ok, free = Group(sg).check_compatible(list(counts))
        except Exception:  # pyxtal raises on some exotic inputs; treat as incompatible
            continue
        if ok and free:
            out.append(sg)
    return tuple(out)


def _layout(space: SearchSpace, ci: int, lattice, frac, numbers):
    """One structure in the space's atom order (sorted by Z, padded)."""
    order = np.argsort(numbers, kind="stable")
    want, mask = space.numbers(ci)
    n = int(mask.sum())
    if not np.array_equal(np.asarray(numbers)[order], want[:n]):
        raise ValueError("composition does not match")
    f = np.zeros((space.n_max, 3))
    f[:n] = np.asarray(frac)[order]
    return np.asarray(lattice, np.float64), f, want, mask


def _min_distance_fast(lattice, frac) -> float:
    """Shortest distance over the 27 neighbouring images (enough for cells wider than the distance)."""
    cart = (frac - np.floor(frac)) @ lattice
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], float) @ lattice
    d = cart[None, :, None, :] - cart[:, None, None, :] + shifts[None, None]
    r = np.linalg.norm(d, axis=-1)
    n = len(frac)
    r[np.arange(n), np.arange(n), 13] = np.inf  # the atom itself
    return float(r.min())


@functools.lru_cache(maxsize=1)
def _tolerances():
    """pyxtal's atomic distance tolerances, built once (pyxtal rebuilds them per call otherwise)."""
    from pyxtal.tolerance import Tol_matrix

    return Tol_matrix(prototype="atomic")


@contextlib.contextmanager
def _shared_tolerances():
    """Within the block, pyxtal's Wyckoff-merging step reuses one tolerance table.

    pyxtal 1.1's ``symmetry`` module calls ``operations.check_images`` with an explicit
    ``tol`` but no ``tm``, and ``check_images`` then builds a fresh ``Tol_matrix``
    (a Python loop over every pair of elements, about 8 ms) that it never reads. Profiled
    on Ti2O4, that was 60% of the time to draw a random crystal. The wrapper passes the
    same default table built once, so the structures drawn are unchanged
    (``test_shared_tolerances_do_not_change_pyxtal``).
    """
    import pyxtal.symmetry as symmetry

    original = symmetry.check_images

    def check_images(coords, species, lattice, PBC=None, tm=None, tol=None, d_factor=1.0):
        return original(coords, species, lattice, PBC=PBC, tm=_tolerances() if tm is None else tm, tol=tol,
                        d_factor=d_factor)

    symmetry.check_images = check_images
    try:
        yield
    finally:
        symmetry.check_images = original


MAX_EXPANSION = 1.5  # the most a random cell is stretched to reach the space's min_distance


def random_crystals(space: SearchSpace, n: int, rng: np.random.Generator, p1_fraction: float = 0.1,
                    max_tries: int = 50, symmetric: bool = True) -> tuple[Crystal, np.ndarray]:
    """``n`` random crystals of the space's compositions (:meth:`SearchSpace.draw_composition`), by pyxtal.

    Each gets a random compatible space group (P1 with probability
    ``p1_fraction``, or always with ``symmetric=False``). When the space sets
    ``volume_per_atom`` the cell is scaled to it; structures with atoms closer
    than ``space.min_distance`` are redrawn in the same composition. Without a set
    volume, a cell whose closest pair is short by at most ``MAX_EXPANSION`` is stretched
    to ``min_distance`` instead.
    """
    from pymatgen.core import Element
    from pyxtal import pyxtal

    lattices, fracs, numbers, masks, cis = [], [], [], [], []
    tries = 0
    ci, slot_tries, given_up = None, 0, set()
    while len(cis) < n:
        tries += 1
        if tries > max_tries * max(n, 1):
            raise RuntimeError(f"could not draw {n} random crystals in {tries} tries (min_distance "
                               f"{space.min_distance:.2f} Å, volume/atom {space.volume_per_atom}); loosen them")
        # A rejected structure is redrawn in the *same* composition: redrawing the
        # composition would under-sample those that are hard to build (a Ne-Xe range
        # drew no Ne in 32 structures). In a composition range, one that fails
        # max_tries times in a row is given up for the rest of this call.
        if ci is not None and slot_tries >= max_tries and space.variable:
            given_up.add(ci)
            log.warning("no valid random crystal of %s in %d tries (min_distance %.2f Å); not drawn again in "
                        "this batch", space.formula(ci), slot_tries, space.min_distance)
            ci = None
        if ci is None:
            ci, slot_tries = space.draw_composition(rng), 0
            if ci in given_up:
                if len(given_up) >= len(space.compositions):
                    raise RuntimeError(f"no composition of the space gave a valid random crystal in {max_tries} "
                                       f"tries (min_distance {space.min_distance:.2f} Å); loosen it")
                ci = None
                continue
        slot_tries += 1
        comp = space.compositions[ci]
        species = tuple(Element.from_Z(z).symbol for z, k in zip(space.elements, comp) if k)
        counts = tuple(k for k in comp if k)
        groups = compatible_groups(species, counts) if symmetric else (1,)
        groups = [g for g in groups if (species, counts, g) not in _FAILED] or [1]
        sg = 1 if (rng.random() < p1_fraction or len(groups) == 1) else int(rng.choice(groups[1:]))
        c = pyxtal()
        try:
            with warnings.catch_warnings(), _shared_tolerances():
                warnings.simplefilter("ignore")
                c.from_random(3, sg, list(species), list(counts), random_state=int(rng.integers(2**31)),
                              tm=_tolerances())
            if not c.valid:
                raise RuntimeError("invalid")
            s = c.to_pymatgen()
        except Exception as e:  # an impossible pair: skip it for the rest of the run
            if sg != 1:
                _FAILED.add((species, counts, sg))
                log.info("pyxtal cannot build %s%s in space group %d (%s); skipped from now on",
                         species, counts, sg, str(e).splitlines()[0][:80] if str(e) else type(e).__name__)
            continue
        lattice = s.lattice.matrix.copy()
        frac = s.frac_coords
        if space.volume_per_atom > 0:
            lattice *= (space.volume_per_atom * len(s) / abs(np.linalg.det(lattice))) ** (1.0 / 3.0)
        if space.min_distance > 0:
            d = _min_distance_fast(lattice, frac)
            if d < space.min_distance and space.volume_per_atom <= 0 and d * MAX_EXPANSION >= space.min_distance:
                # pyxtal sizes cells from tabulated radii; when the search's length scale is
                # longer (a Lennard-Jones Ne-Xe with bond_length 3.5 Å made every Ne cell too
                # small), stretch the cell to it rather than reject: the volume was free.
                lattice *= space.min_distance / d * (1 + 1e-9)
            elif d < space.min_distance:
                continue
        try:
            lat, f, z, m = _layout(space, ci, lattice, frac, np.array(s.atomic_numbers))
        except ValueError:
            continue
        lattices.append(lat), fracs.append(f), numbers.append(z), masks.append(m), cis.append(ci)
        ci = None
    return Crystal(np.stack(lattices), np.stack(fracs), np.stack(numbers), np.stack(masks), {}), np.array(cis)


def random_clusters(space: SearchSpace, n: int, rng: np.random.Generator,
                    max_tries: int = 200) -> tuple[Crystal, np.ndarray]:
    """``n`` random clusters: atoms uniform in a sphere at the density of
    ``volume_per_atom`` (default: close packing at ``bond_length``), no two closer than
    ``min_distance``, centred in the space's cubic vacuum box."""
    if space.box <= 0:
        raise ValueError("a cluster search needs the vacuum box edge (SearchSpace.box)")
    v_atom = space.volume_per_atom or space.bond_length**3 / np.sqrt(2.0)
    lattices, fracs, numbers, masks, cis = [], [], [], [], []
    for _ in range(n):
        ci = space.draw_composition(rng)
        z, mask = space.numbers(ci)
        k = int(mask.sum())
        radius = (3.0 * k * v_atom / (4.0 * np.pi)) ** (1.0 / 3.0)
        pos = []
        tries = 0
        while len(pos) < k:
            tries += 1
            if tries > max_tries * k:  # too dense: grow the sphere a little and go on
                radius *= 1.05
                tries = 0
            p = rng.uniform(-radius, radius, 3)
            if np.linalg.norm(p) > radius:
                continue
            if pos and np.min(np.linalg.norm(np.array(pos) - p, axis=1)) < space.min_distance:
                continue
            pos.append(p)
        f = np.zeros((space.n_max, 3))
        f[:k] = (np.array(pos) + 0.5 * space.box) / space.box
        lattices.append(space.box * np.eye(3)), fracs.append(f), numbers.append(z), masks.append(mask)
        cis.append(ci)
    return Crystal(np.stack(lattices), np.stack(fracs), np.stack(numbers), np.stack(masks), {}), np.array(cis)


def random_structures(space: SearchSpace, n: int, rng: np.random.Generator, **kwargs) -> tuple[Crystal, np.ndarray]:
    """Random clusters or crystals, as the space asks."""
    if n <= 0:
        z, m = space.numbers(0)
        empty = Crystal(np.zeros((0, 3, 3)), np.zeros((0, space.n_max, 3)), np.zeros((0, space.n_max), np.int32),
                        np.zeros((0, space.n_max), bool), {})
        return empty, np.zeros(0, int)
    return random_clusters(space, n, rng) if space.cluster else random_crystals(space, n, rng, **kwargs)


def from_structures(space: SearchSpace, structures, names=None) -> tuple[Crystal, np.ndarray]:
    """User or dataset structures (pymatgen or ASE) in the space's layout.

    Structures whose composition is not in the space are skipped and logged, by
    ``names[k]`` (e.g. the file stem) when given, else by index.
    """
    lattices, fracs, numbers, masks, cis = [], [], [], [], []
    for k, s in enumerate(structures):
        label = names[k] if names is not None else k
        if hasattr(s, "get_cell"):  # ASE Atoms
            lattice, frac, z = s.cell.array, s.get_scaled_positions(wrap=False), s.numbers
        else:
            lattice, frac, z = s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers)
        z = np.asarray(z, np.int32)
        if len(z) > space.n_max:
            log.info("seed %s has %d atoms (> %d); skipped", label, len(z), space.n_max)
            continue
        zz = np.zeros(space.n_max, np.int32)
        mm = np.zeros(space.n_max, bool)
        zz[: len(z)], mm[: len(z)] = np.sort(z), True
        ci = space.composition_index(zz, mm)
        if ci < 0:
            log.info("seed %s (%s) is outside the search's compositions; skipped", label, z.tolist())
            continue
        lat, f, zz, mm = _layout(space, ci, lattice, frac, z)
        lattices.append(lat), fracs.append(f), numbers.append(zz), masks.append(mm), cis.append(ci)
    if not cis:
        raise ValueError("none of the seed structures fits the search's compositions")
    return Crystal(np.stack(lattices), np.stack(fracs), np.stack(numbers), np.stack(masks), {}), np.array(cis)
