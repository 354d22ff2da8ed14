"""Structure fingerprints and duplicate detection, in JAX on the all-image graph.

The fingerprint is Oganov & Valle's (J. Chem. Phys. 130, 104504 (2009)): for each
pair of species (A, B) a Gaussian-smeared radial distribution over every periodic
image within ``r_max``,

    F_AB(R) = sum_{i in A, j in B} g(R - R_ij) / (4 pi R_ij^2 (N_A N_B / V) dR) - 1,

sampled on ``n_bins`` bins. It is invariant to rotations, translations, atom
order and the choice of cell (a supercell has the same fingerprint), and smooth
in the geometry. The distance between two structures is the cosine distance
with the pairs weighted by N_A N_B, ``d = (1 - cos) / 2`` in [0, 1]; all pairwise
distances of a population come from one matrix product.
"""
from __future__ import annotations

import functools

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.graph import Graph, edge_vectors, neighbor_graph
from jaxinv.potentials.base import safe_norm

__all__ = ["fingerprint", "compute_fingerprints", "cosine_distances", "unique_mask", "novel_mask"]


@functools.partial(jax.jit, static_argnames=("species", "r_max", "n_bins", "sigma"))
def fingerprint(crystal: Crystal, graph: Graph, species: tuple[int, ...], r_max: float, n_bins: int = 128,
                sigma: float = 0.01) -> jax.Array:
    """Weighted Oganov-Valle fingerprints, (B, P * n_bins) with P = S (S + 1) / 2 pairs.

    ``graph`` must hold every edge up to ``r_max`` (build it at that cutoff).
    Each pair block is already multiplied by sqrt(w_AB), so a plain cosine of two
    rows is the weighted cosine of Oganov & Valle. ``sigma`` is the Gaussian width
    as a fraction of ``r_max``.
    """
    s = len(species)
    pairs = [(a, b) for a in range(s) for b in range(a, s)]
    pair_index = np.zeros((s, s), np.int32)
    for k, (a, b) in enumerate(pairs):
        pair_index[a, b] = pair_index[b, a] = k
    lookup = np.zeros(119, np.int32)
    for k, z in enumerate(species):
        lookup[z] = k
    lookup, pair_index = jnp.asarray(lookup), jnp.asarray(pair_index)

    r = safe_norm(edge_vectors(crystal, graph))  # (B, E)
    take = jax.vmap(lambda z, idx: z[idx])
    si = lookup[take(crystal.numbers, graph.receivers)]
    sj = lookup[take(crystal.numbers, graph.senders)]
    p = pair_index[si, sj]  # (B, E)
    dr = r_max / n_bins
    centres = (jnp.arange(n_bins) + 0.5) * dr
    width = sigma * r_max
    ok = graph.mask & (r < r_max) & (r > 1e-6)
    g = jnp.exp(-0.5 * ((centres - r[..., None]) / width) ** 2) / (jnp.sqrt(2 * jnp.pi) * width)  # (B, E, n_bins)
    g = g * dr / (4.0 * jnp.pi * jnp.where(ok, r, 1.0)[..., None] ** 2)
    g = jnp.where(ok[..., None], g, 0.0)
    onehot = jax.nn.one_hot(p, len(pairs))  # (B, E, P)
    hist = jnp.einsum("bep,bek->bpk", onehot, g)  # (B, P, n_bins)
    counts = jax.vmap(lambda z, m: jnp.stack([jnp.sum((z == zz) & m) for zz in species]))(
        crystal.numbers, crystal.mask).astype(hist.dtype)  # (B, S)
    volume = jnp.abs(jnp.linalg.det(crystal.lattice))
    a_idx = np.array([a for a, _ in pairs])
    b_idx = np.array([b for _, b in pairs])
    # directed edges count A-B pairs from both ends (and A-A pairs twice): normalise accordingly
    n_pairs = counts[:, a_idx] * counts[:, b_idx] * jnp.where(a_idx == b_idx, 1.0, 2.0)  # (B, P)
    density = n_pairs / volume[:, None]
    # hist holds sum g dR / (4 pi R^2); dividing by density dR gives the RDF
    f = hist / (jnp.where(density > 0, density, 1.0)[..., None] * dr) - 1.0
    weight = n_pairs / jnp.maximum(jnp.sum(n_pairs, -1, keepdims=True), 1.0)
    f = jnp.where(density[..., None] > 0, f, 0.0) * jnp.sqrt(weight)[..., None]
    return f.reshape(f.shape[0], -1)


def compute_fingerprints(crystal: Crystal, species: tuple[int, ...], r_max: float, n_bins: int = 128,
                         sigma: float = 0.01, chunk: int = 256, graphs=None, pad: bool = False) -> np.ndarray:
    """Fingerprints of a host batch (the graph is built on the host at ``r_max``;
    ``graphs``, a :class:`~jaxinv.graph.StickyGraph` at ``r_max``, keeps
    its shapes fixed across calls), ``chunk`` structures per call; ``pad``: a short
    chunk is padded with repeats of its rows to ``chunk``, so every call has one shape."""
    out = []
    for start in range(0, crystal.batch_size, chunk):
        c = crystal[start:start + chunk].to_host()
        k = c.batch_size
        rows = np.resize(np.arange(k), chunk) if pad and k < chunk else np.arange(k)
        c = Crystal(c.lattice[rows], c.frac[rows], c.numbers[rows], c.mask[rows], {})
        g = graphs(c) if graphs is not None else neighbor_graph(c, r_max)
        out.append(np.asarray(fingerprint(c, g, tuple(int(z) for z in species), float(r_max), n_bins, sigma))[:k])
    return np.concatenate(out) if out else np.zeros((0, len(species) * (len(species) + 1) // 2 * n_bins))


@jax.jit
def cosine_distances(a: jax.Array, b: jax.Array) -> jax.Array:
    """(1 - cos) / 2 between every row of ``a`` and every row of ``b``, (A, B).

    Two all-zero fingerprints (nothing within r_max) count as identical.
    """
    na = jnp.linalg.norm(a, axis=-1, keepdims=True)
    nb = jnp.linalg.norm(b, axis=-1, keepdims=True)
    cos = (a / jnp.maximum(na, 1e-12)) @ (b / jnp.maximum(nb, 1e-12)).T
    both_empty = (na < 1e-12) & (nb.T < 1e-12)
    return jnp.where(both_empty, 0.0, jnp.clip(0.5 * (1.0 - cos), 0.0, 1.0))


@jax.jit
def unique_mask(fp: jax.Array, valid: jax.Array, threshold: float, energy=None, energy_tol: float = jnp.inf):
    """Greedy de-duplication in the given order: entry i is kept when it is valid and
    no kept earlier entry lies within ``threshold`` (cosine distance) and, if
    ``energy`` is given, within ``energy_tol`` of its energy. Order the inputs best
    first to keep the best of each group of duplicates. Returns (n,) bool."""
    d = cosine_distances(fp, fp)
    close = d < threshold
    if energy is not None:
        close &= jnp.abs(energy[:, None] - energy[None, :]) < energy_tol
    n = fp.shape[0]

    def body(i, keep):
        earlier = jnp.arange(n) < i
        dup = jnp.any(close[i] & keep & earlier)
        return keep.at[i].set(valid[i] & ~dup)

    return jax.lax.fori_loop(0, n, body, jnp.zeros(n, bool))


@jax.jit
def novel_mask(fp: jax.Array, reference: jax.Array, reference_valid: jax.Array, threshold: float) -> jax.Array:
    """Whether each row of ``fp`` is farther than ``threshold`` from every valid reference row."""
    d = cosine_distances(fp, reference)
    return ~jnp.any((d < threshold) & reference_valid[None, :], axis=1)
