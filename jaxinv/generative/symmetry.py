"""Symmetry augmentation: lattice automorphisms and origin shifts.

A *lattice automorphism* is an integer matrix R with det +-1 that maps the
lattice onto itself: R^T G R = G for the metric G = L L^T. Acting on
fractional coordinates, f -> f R^T, it rotates (or reflects) the whole crystal
rigidly while the lattice matrix stays the same. So with the lattice held fixed,
``f R^T + t`` for an automorphism R and any shift t describes the same crystal,
rotated and translated: exactly the freedom a generative model should not have
to learn from data. For a cubic cell the automorphisms are the 48 signed axis
permutations; a triclinic cell has only +-identity.

On a voxel grid over the cell both act as exact permutations of voxels (for
shifts by whole voxels), so voxel images are augmented by a gather.

What remains non-invariant: the choice of cell (a supercell or another basis
of the same lattice is a different input; ``niggli=True`` in
:class:`~jaxinv.generative.coords.CoordSpec` removes most of that freedom), the
coordinate representation's slot order (fixed by sorting, which is
discontinuous where two coordinates cross), and, for voxels, shifts by
fractions of a voxel.
"""
from __future__ import annotations

import itertools

import numpy as np

import jax
import jax.numpy as jnp

__all__ = ["lattice_automorphisms", "automorphism_table", "augment_frac", "augment_voxels", "sort_slots"]

_CANDIDATES = None


def _candidates() -> np.ndarray:
    """All 3x3 matrices with entries in {-1, 0, 1} and det +-1 (3,480 of them)."""
    global _CANDIDATES
    if _CANDIDATES is None:
        m = np.array(list(itertools.product((-1, 0, 1), repeat=9)), np.int64).reshape(-1, 3, 3)
        det = np.round(np.linalg.det(m)).astype(int)
        _CANDIDATES = m[np.abs(det) == 1]
    return _CANDIDATES


def lattice_automorphisms(lattice: np.ndarray, tol: float = 1e-3) -> np.ndarray:
    """(K, 3, 3) integer matrices R with R^T G R = G (relative tolerance ``tol``).

    Candidates have entries in {-1, 0, 1}, which covers every automorphism of a
    reduced (e.g. Niggli) cell; for strongly non-reduced cells some may be missed,
    never wrongly included. The identity always comes first.
    """
    lat = np.asarray(lattice, np.float64)
    G = lat @ lat.T
    R = _candidates()
    RtGR = np.einsum("kji,jl,klm->kim", R, G, R)
    ok = np.all(np.abs(RtGR - G) <= tol * np.abs(G).max(), axis=(1, 2))
    found = R[ok]
    eye = np.all(found == np.eye(3, dtype=int), axis=(1, 2))
    return np.concatenate([found[eye], found[~eye]]).astype(np.int32)


def automorphism_table(lattices: np.ndarray, tol: float = 1e-3, max_ops: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Automorphisms of many lattices, padded: (ops (M, max_ops, 3, 3), counts (M,)).

    Lattices with the same metric up to scale share the computation (perov_5:
    one cubic metric for all 3,787 cells).
    """
    lattices = np.asarray(lattices, np.float64)
    ops = np.tile(np.eye(3, dtype=np.int32), (len(lattices), max_ops, 1, 1))
    counts = np.ones(len(lattices), np.int32)
    cache: dict = {}
    for k, lat in enumerate(lattices):
        G = lat @ lat.T
        key = tuple(np.round(G / np.abs(G).max(), 5).ravel())
        if key not in cache:
            cache[key] = lattice_automorphisms(lat, tol)[:max_ops]
        found = cache[key]
        ops[k, :len(found)] = found
        counts[k] = len(found)
    return ops, counts


def _pick_ops(key, ops, counts):
    """One random automorphism per structure: (B, 3, 3) float."""
    u = jax.random.uniform(key, counts.shape)
    idx = jnp.minimum((u * counts).astype(jnp.int32), counts - 1)
    return jnp.take_along_axis(ops, idx[:, None, None, None], 1)[:, 0].astype(jnp.float32)


def augment_frac(key, frac, ops, counts, shift: bool = True, rotate: bool = True):
    """Random automorphism and (optionally) a uniform origin shift per structure.

    ``frac`` (B, N, 3); returns wrapped coordinates of the same crystals, rotated
    and translated. Padded slots are transformed too; they stay meaningless.
    """
    k_op, k_shift = jax.random.split(key)
    if rotate:
        R = _pick_ops(k_op, ops, counts)
        frac = jnp.einsum("bni,bji->bnj", frac, R)
    if shift:
        frac = frac + jax.random.uniform(k_shift, (frac.shape[0], 1, 3))
    return jnp.mod(frac, 1.0)


def augment_voxels(key, images, ops, counts, shift: bool = True, rotate: bool = True):
    """The same augmentation on (B, G, G, G, C) voxel images, as an exact gather.

    The new image at voxel i is the old one at ((i - s) R^-T) mod G for a whole-
    voxel shift s; R^-1 is an integer matrix because R is unimodular.
    """
    B, G = images.shape[0], images.shape[1]
    k_op, k_shift = jax.random.split(key)
    idx = jnp.stack(jnp.meshgrid(*(jnp.arange(G),) * 3, indexing="ij"), -1).reshape(-1, 3)
    src = jnp.broadcast_to(idx, (B,) + idx.shape)
    if shift:
        s = jax.random.randint(k_shift, (B, 1, 3), 0, G)
        src = src - s
    if rotate:
        R = _pick_ops(k_op, ops, counts)
        Rinv_T = jnp.round(jnp.linalg.inv(R)).astype(jnp.int32).transpose(0, 2, 1)
        src = jnp.einsum("bki,bij->bkj", src, Rinv_T)
    src = jnp.mod(src, G)
    flat = (src[..., 0] * G + src[..., 1]) * G + src[..., 2]
    out = jnp.take_along_axis(images.reshape(B, G ** 3, -1), flat[..., None], 1)
    return out.reshape(images.shape)


def sort_slots(species, frac):
    """Canonical slot order inside jit (as :func:`jaxinv.generative.coords.canonical_order`):
    occupied first, by class, then by x, y, z. Returns (species, frac) permuted."""
    f = jnp.mod(frac, 1.0)
    big = jnp.iinfo(jnp.int32).max
    key = jnp.where(species > 0, species, big)

    def one(s, f, k):
        order = jnp.lexsort((f[:, 2], f[:, 1], f[:, 0], k))
        return s[order], f[order]

    return jax.vmap(one)(species, f, key)
