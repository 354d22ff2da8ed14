"""The voxel representation (iMatGen-style): Gaussian-smeared atoms on a periodic
grid over the unit cell, decoded by periodic peak finding.

Encoding. The grid has ``grid``^3 points at fractional positions ``i / grid``
(so it is periodic, and lattice symmetries and whole-voxel origin shifts act on
it as exact permutations of voxels). Each atom adds a Cartesian Gaussian of
width ``sigma`` (Å) summed over all periodic images, with peak value 1.
Channels:

* channel 0, the density: sum of the atoms' Gaussians;
* channels 1 and 2 (only for vocabularies of more than one element): the same
  Gaussians weighted by each atom's element descriptor, (period, column) scaled
  to [0, 1] (see :mod:`jaxinv.generative.species`). One channel per element is
  iMatGen's choice; with perov_5's 56 elements it would be 56 x 32^3 floats
  per crystal, too heavy for a CPU budget, so elements are carried by these
  two descriptor channels instead.

The lattice is *not* drawn into a cell image: it is carried next to the image
as six lattice parameters (the models predict them from the latent code).

Decoding. Atoms are the periodic local maxima of the density above a
threshold; each position is refined to sub-voxel precision by fitting a 3D
quadratic to the log-density of its 3x3x3 neighbourhood (exact for an isolated
Gaussian, in any cell shape); peaks closer than ``merge_distance`` Å are
merged; the element is the vocabulary element nearest to the density-weighted
descriptor around the peak.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from jaxinv.crystal import Crystal
from jaxinv.generative.species import Vocabulary

__all__ = ["VoxelSpec", "voxelize", "voxelize_one", "find_peaks", "decode_voxels"]


@dataclass(frozen=True)
class VoxelSpec:
    """Grid size, smearing width (Å) and vocabulary of a voxel representation."""

    vocab: Vocabulary
    grid: int = 32
    sigma: float = 0.26
    cutoff_sigmas: float = 4.5  # Gaussians are cut where they fall below exp(-4.5^2/2) ~ 4e-5

    @property
    def channels(self) -> int:
        return 1 if len(self.vocab) == 1 else 3

    def to_dict(self) -> dict:
        return {"vocab": self.vocab.to_list(), "grid": self.grid, "sigma": self.sigma,
                "cutoff_sigmas": self.cutoff_sigmas}

    @classmethod
    def from_dict(cls, d: dict) -> "VoxelSpec":
        return cls(Vocabulary.from_list(d["vocab"]), int(d["grid"]), float(d["sigma"]),
                   float(d.get("cutoff_sigmas", 4.5)))


def voxelize_one(lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, spec: VoxelSpec) -> np.ndarray:
    """One crystal -> (G, G, G, C) float32 image.

    Each atom touches only the voxels within ``cutoff_sigmas * sigma`` of it: a
    window of offsets around its nearest voxel, sized per axis by the spacing of
    lattice planes (1 / |reciprocal vector|). Every offset in the window is a
    distinct periodic image, so windows wider than the cell are still exact.
    """
    G = spec.grid
    lattice = np.asarray(lattice, np.float64)
    frac = np.mod(np.asarray(frac, np.float64), 1.0)
    numbers = np.asarray(numbers)
    r_cut = spec.cutoff_sigmas * spec.sigma
    recip = np.linalg.norm(np.linalg.inv(lattice), axis=0)  # |b_a|, 1/Å
    half = np.ceil(r_cut * recip * G).astype(int) + 1
    offsets = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    center = np.round(frac * G).astype(int)  # (n, 3)
    idx = center[:, None, :] + offsets[None]  # (n, K, 3) unwrapped voxel indices
    delta = idx / G - frac[:, None, :]
    cart = delta @ lattice
    r2 = (cart * cart).sum(-1)
    val = np.exp(-r2 / (2 * spec.sigma ** 2)) * (r2 <= r_cut ** 2)
    flat = (np.mod(idx, G) * np.array([G * G, G, 1])).sum(-1).ravel()
    out = np.zeros((G ** 3, spec.channels), np.float64)
    out[:, 0] = np.bincount(flat, val.ravel(), minlength=G ** 3)
    if spec.channels > 1:
        desc = spec.vocab.descriptors[spec.vocab.classes(numbers) - 1]  # (n, 2)
        for c in range(2):
            out[:, 1 + c] = np.bincount(flat, (val * desc[:, c:c + 1]).ravel(), minlength=G ** 3)
    return out.reshape(G, G, G, spec.channels).astype(np.float32)


def voxelize(crystal: Crystal, spec: VoxelSpec, dtype=np.float32) -> np.ndarray:
    """A :class:`Crystal` batch -> (B, G, G, G, C) images (host)."""
    c = crystal.to_host()
    out = np.zeros((c.batch_size, spec.grid, spec.grid, spec.grid, spec.channels), dtype)
    for b in range(c.batch_size):
        m = c.mask[b]
        if m.any():
            out[b] = voxelize_one(c.lattice[b], c.frac[b][m], c.numbers[b][m], spec)
    return out


_OFFSETS = np.array(list(itertools.product((-1, 0, 1), repeat=3)), np.float64)  # (27, 3)
_DESIGN = np.concatenate([np.ones((27, 1)), _OFFSETS, _OFFSETS ** 2,
                          _OFFSETS[:, [0]] * _OFFSETS[:, [1]], _OFFSETS[:, [0]] * _OFFSETS[:, [2]],
                          _OFFSETS[:, [1]] * _OFFSETS[:, [2]]], 1)  # (27, 10)
_PINV = np.linalg.pinv(_DESIGN)  # least-squares quadratic fit, the same for every peak


def _refine(logv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-voxel offsets of peaks from (P, 27) log-values of their neighbourhoods.

    Returns (offsets (P, 3), ok (P,)); ``ok`` is False where the fitted quadratic
    is not a maximum within one voxel (then the caller falls back to a centroid).
    """
    coef = logv @ _PINV.T  # (P, 10)
    g = coef[:, 1:4]
    H = np.zeros((len(coef), 3, 3))
    H[:, [0, 1, 2], [0, 1, 2]] = 2 * coef[:, 4:7]
    H[:, 0, 1] = H[:, 1, 0] = coef[:, 7]
    H[:, 0, 2] = H[:, 2, 0] = coef[:, 8]
    H[:, 1, 2] = H[:, 2, 1] = coef[:, 9]
    ok = np.all(np.linalg.eigvalsh(H) < 0, axis=-1)
    delta = np.zeros((len(coef), 3))
    if ok.any():
        delta[ok] = -np.linalg.solve(H[ok], g[ok][..., None])[..., 0]
    ok &= np.all(np.abs(delta) <= 1.0, axis=-1)
    return delta, ok


def find_peaks(density: np.ndarray, lattice: np.ndarray, threshold: float = 0.25,
               merge_distance: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Periodic peaks of a (G, G, G) density: (fractional positions (P, 3), voxel indices (P, 3)).

    A peak is a voxel at least as high as its 26 periodic neighbours and above
    ``threshold``. Positions are refined by a log-quadratic fit; peaks closer
    than ``merge_distance`` Å (periodic, Cartesian) are merged into the highest.
    """
    rho = np.asarray(density, np.float64)
    G = rho.shape[0]
    is_max = rho > threshold
    for o in _OFFSETS:
        if o.any():
            is_max &= rho >= np.roll(rho, tuple(int(x) for x in o), axis=(0, 1, 2))
    idx = np.argwhere(is_max)  # (P, 3)
    if len(idx) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), int)
    nb = np.mod(idx[:, None, :] + _OFFSETS[None].astype(int), G)  # (P, 27, 3)
    vals = rho[nb[..., 0], nb[..., 1], nb[..., 2]]
    delta, ok = _refine(np.log(np.maximum(vals, 1e-12)))
    w = np.maximum(vals, 0.0)
    centroid = (w[..., None] * _OFFSETS[None]).sum(1) / np.maximum(w.sum(1, keepdims=True), 1e-12)
    delta = np.where(ok[:, None], delta, centroid)
    frac = np.mod((idx + delta) / G, 1.0)
    # merge close peaks, highest first
    height = rho[idx[:, 0], idx[:, 1], idx[:, 2]]
    order = np.argsort(-height, kind="stable")
    keep: list[int] = []
    lat = np.asarray(lattice, np.float64)
    for k in order:
        if keep:
            d = frac[keep] - frac[k]
            d -= np.round(d)
            if np.min(np.linalg.norm(d @ lat, axis=-1)) < merge_distance:
                continue
        keep.append(int(k))
    keep = np.array(sorted(keep), int)
    return frac[keep], idx[keep]


def _descriptors_at(image: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(P, 2) density-weighted element descriptors around peaks at voxel indices ``idx``."""
    G = image.shape[0]
    nb = np.mod(idx[:, None, :] + _OFFSETS[None].astype(int), G)
    v = image[nb[..., 0], nb[..., 1], nb[..., 2]].astype(np.float64)  # (P, 27, C)
    w = np.maximum(v[..., 0], 0.0)
    return (w[..., None] * v[..., 1:3]).sum(1) / np.maximum((w * v[..., 0]).sum(1)[:, None], 1e-12)


def _species_at(image: np.ndarray, idx: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    if image.shape[-1] == 1:
        return np.full(len(idx), vocab.numbers[0], np.int32)
    return vocab.nearest(_descriptors_at(image, idx))


def _assign_species(image: np.ndarray, idx: np.ndarray, species: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """Give the peaks at ``idx`` the elements ``species`` (one each, as many as peaks),
    matching descriptors one-to-one (Hungarian) so that each element goes where the
    image's descriptor channels put it."""
    from scipy.optimize import linear_sum_assignment

    if image.shape[-1] == 1:  # one element: nothing to match
        return np.asarray(species[:len(idx)], np.int32)
    want = vocab.descriptors[vocab.classes(np.asarray(species)) - 1]
    cost = ((_descriptors_at(image, idx)[:, None, :] - want[None]) ** 2).sum(-1)  # (P, S)
    rows, cols = linear_sum_assignment(cost)
    out = np.zeros(len(idx), np.int32)
    out[rows] = np.asarray(species, np.int32)[cols]
    return out


def decode_voxels(images: np.ndarray, lattices: np.ndarray, spec: VoxelSpec, threshold: float = 0.25,
                  merge_distance: float = 0.5, n_max: int | None = None, labels: dict | None = None,
                  counts: np.ndarray | None = None, count_threshold: float = 0.02,
                  species: np.ndarray | None = None) -> Crystal:
    """(B, G, G, G, C) images and (B, 3, 3) lattices -> a :class:`Crystal` batch.

    Without ``counts`` or ``species``, every peak above ``threshold`` is an atom
    and its element is the one nearest to the descriptor channels there. With
    ``counts`` (B,) (a model's predicted numbers of atoms), each structure keeps
    its ``counts[b]`` highest peaks above the much lower ``count_threshold`` (fewer
    if the image has fewer). ``species`` (B, S) (a predicted element multiset per
    structure, 0 = none) sets the counts and gives the kept peaks those elements,
    matched one-to-one by descriptor. Structures with more than ``n_max`` atoms
    keep the ``n_max`` highest peaks; a structure with no peak decodes to an empty
    slot (``mask`` all False).
    """
    images = np.asarray(images)
    lattices = np.asarray(lattices, np.float64)
    if species is not None:
        species = np.asarray(species)
        counts = (species > 0).sum(-1)
    fracs, numbers = [], []
    for b in range(len(images)):
        cut = threshold if counts is None else count_threshold
        f, idx = find_peaks(images[b, ..., 0], lattices[b], cut, merge_distance)
        keep = len(f) if counts is None else int(counts[b])
        keep = keep if n_max is None else min(keep, n_max)
        if len(f) > keep:
            h = images[b, idx[:, 0], idx[:, 1], idx[:, 2], 0]
            top = np.sort(np.argsort(-h, kind="stable")[:keep])
            f, idx = f[top], idx[top]
        if not len(idx):
            z = np.zeros(0, np.int32)
        elif species is not None:
            wanted = species[b][species[b] > 0]
            z = _assign_species(images[b], idx, wanted, spec.vocab)
        else:
            z = _species_at(images[b], idx, spec.vocab)
        fracs.append(f)
        numbers.append(z)
    size = max(max((len(z) for z in numbers), default=0), 1)
    return Crystal.from_arrays(lattices, fracs, numbers, labels=labels, n_max=n_max or size)
