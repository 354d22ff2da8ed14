"""Multi-objective selection (NSGA-II: Deb et al., IEEE Trans. Evol. Comput. 6, 182 (2002)).

Objectives are minimised; a point dominates another when it is no worse in every
objective and better in at least one. :func:`pareto_ranks` peels off
non-dominated fronts (rank 0 is the Pareto front), :func:`crowding_distance`
measures how isolated a point is within its front (boundary points get inf),
and :func:`nsga2_order` sorts by (rank, -crowding), the NSGA-II survival order.
Invalid points (``valid`` False or any non-finite objective) rank last.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dominates", "pareto_ranks", "crowding_distance", "nsga2_order"]


def dominates(f: jax.Array) -> jax.Array:
    """(n, n) bool: row i dominates row j, for objectives ``f`` (n, m) to minimise."""
    le = jnp.all(f[:, None, :] <= f[None, :, :], axis=-1)
    lt = jnp.any(f[:, None, :] < f[None, :, :], axis=-1)
    return le & lt


@jax.jit
def pareto_ranks(f: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Non-domination rank of each point, (n,) int32; invalid points get rank n."""
    n = f.shape[0]
    valid = jnp.all(jnp.isfinite(f), -1) if valid is None else valid & jnp.all(jnp.isfinite(f), -1)
    dom = dominates(jnp.where(valid[:, None], f, 0.0)) & valid[:, None] & valid[None, :]

    def body(r, carry):
        rank, left = carry
        dominated = jnp.any(dom & left[:, None], axis=0)  # by a point not yet ranked
        front = left & ~dominated
        return jnp.where(front, r, rank), left & ~front

    rank, _ = jax.lax.fori_loop(0, n, body, (jnp.full(n, n, jnp.int32), valid))
    return rank


@jax.jit
def crowding_distance(f: jax.Array, rank: jax.Array) -> jax.Array:
    """NSGA-II crowding distance within each front, (n,); front ends get inf.

    For each objective the front is sorted and a point's share is the gap between
    its two neighbours, divided by the objective's range over the front.
    """
    n, m = f.shape
    fs = jnp.where(jnp.isfinite(f), f, 0.0)
    total = jnp.zeros(n)
    for k in range(m):
        order = jnp.lexsort((fs[:, k], rank))  # by rank, then by objective k
        v, r = fs[order, k], rank[order]
        prev_same = jnp.concatenate([jnp.array([False]), r[1:] == r[:-1]])
        next_same = jnp.concatenate([r[:-1] == r[1:], jnp.array([False])])
        lo = jax.ops.segment_min(v, r, num_segments=n + 1)[r]
        hi = jax.ops.segment_max(v, r, num_segments=n + 1)[r]
        span = jnp.where(hi > lo, hi - lo, 1.0)
        gap = (jnp.roll(v, -1) - jnp.roll(v, 1)) / span
        d = jnp.where(prev_same & next_same, gap, jnp.inf)
        total = total.at[order].add(d)
    return total


def nsga2_order(f: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Indices sorted best first by (Pareto rank, -crowding distance)."""
    rank = pareto_ranks(f, valid)
    crowd = crowding_distance(f, rank)
    return jnp.lexsort((-crowd, rank))
