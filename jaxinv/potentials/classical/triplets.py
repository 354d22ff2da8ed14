"""Per-atom neighbor tables for three-body terms, built from the graph inside jit.

Three-body potentials sum over pairs of edges that share a receiver. With static
shapes that means a table (N, D) per structure: row i lists (as edge indices)
the edges whose receiver is i, padded to a static ``max_neighbors`` D. Triplets
are then the (N, D, D) slot pairs. The table is built by a stable sort of the
edges by receiver (padded edges last) and a scatter of each edge to its rank
within its receiver; the edge order in the graph does not matter.

An atom with more than D neighbors cannot be represented; its structure is
flagged (:func:`neighbor_overflow`) and the many-body potentials return NaN for
it rather than a silently wrong energy. Rebuild the potential with a larger
``max_neighbors`` (outside jit) in that case.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinv.graph import Graph, edge_vectors

__all__ = ["neighbor_table", "neighbor_overflow", "neighbor_slots"]


def _table_one(receivers, mask, n_atoms: int, max_neighbors: int):
    e = receivers.shape[0]
    key = jnp.where(mask, receivers, n_atoms)  # padded edges sort last
    order = jnp.argsort(key, stable=True)
    sorted_key = key[order]
    rank = jnp.arange(e) - jnp.searchsorted(sorted_key, sorted_key, side="left")
    table = jnp.full((n_atoms + 1, max_neighbors), e, jnp.int32)  # e = "no edge"
    # ranks >= max_neighbors fall off the table (counted as overflow below)
    table = table.at[sorted_key, rank].set(order.astype(jnp.int32), mode="drop")
    degree = jnp.zeros(n_atoms + 1, jnp.int32).at[key].add(1)[:n_atoms]
    return table[:n_atoms], jnp.max(degree, initial=0) > max_neighbors


def neighbor_table(graph: Graph, n_atoms: int, max_neighbors: int):
    """Edge indices per receiver, (B, N, D) int32, with ``capacity`` marking empty slots.

    Returns ``(table, overflow)`` where ``overflow`` (B,) is True for structures
    with an atom of more than ``max_neighbors`` neighbors.
    """
    fn = lambda r, m: _table_one(r, m, n_atoms, max_neighbors)
    return jax.vmap(fn)(graph.receivers, graph.mask)


def neighbor_overflow(graph: Graph, n_atoms: int, max_neighbors: int):
    """Per structure, whether some atom has more than ``max_neighbors`` edges, (B,)."""
    return neighbor_table(graph, n_atoms, max_neighbors)[1]


def neighbor_slots(crystal, graph: Graph, max_neighbors: int):
    """Everything a three-body term needs, per structure and atom slot.

    Returns ``vec`` (B, N, D, 3) edge vectors r_ij (zero in empty slots),
    ``neighbor`` (B, N, D) the sender j of each slot, ``valid`` (B, N, D) and
    ``overflow`` (B,).
    """
    table, overflow = neighbor_table(graph, crystal.n_max, max_neighbors)
    vec = edge_vectors(crystal, graph)
    pad = lambda x, v: jnp.concatenate([x, jnp.full_like(x[:, :1], v)], axis=1)
    take = jax.vmap(lambda x, idx: x[idx])
    vec = take(pad(vec, 0.0), table)
    neighbor = take(pad(graph.senders, 0), table)
    valid = take(pad(graph.mask, False), table)
    return vec, neighbor, valid, overflow
