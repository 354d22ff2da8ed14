"""Property models (flax.linen) and deep ensembles.

Every model maps a batch of inputs to a Gaussian per target: ``(mean, var)``,
each (B, T), with ``var`` from a softplus head (Nix & Weigend 1994; Lakshminarayanan
et al., NeurIPS 2017). A *deep ensemble* is M independently initialized members
trained on the same data in different orders; its parameters are the members'
pytrees stacked on a leading axis, and it is evaluated with ``jax.vmap`` over that
axis, so M members cost one compiled program. The ensemble's predictive
distribution is the members' Gaussian mixture, summarized by its mean and variance:

    mu = mean_m mu_m,    sigma^2 = mean_m sigma_m^2 (aleatoric) + var_m mu_m (epistemic).

Two models:

* :class:`CompositionMLP`: an MLP on precomputed feature vectors (Magpie, see
  :mod:`jaxinv.screening.features`).
* :class:`CGCNN`: the crystal-graph convolutional network of Xie & Grossman (PRL
  120, 145301 (2018)) on jaxinv's all-image periodic graph: gated convolutions
  ``v_i <- softplus(v_i + sum_j sigmoid(W_f z_ij) * softplus(W_s z_ij))`` with
  ``z_ij = [v_i, v_j, rbf(d_ij)]``. LayerNorm replaces the paper's BatchNorm, which
  would couple the padded structures of a batch and needs running statistics.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["GaussianHead", "CompositionMLP", "CGCNN", "graph_inputs", "flatten_graphs", "compact_graphs",
           "gather_graphs", "flat_graphs", "edge_capacity", "ensemble_init", "ensemble_apply",
           "mixture_moments"]

MIN_VAR = 1e-6


class GaussianHead(nn.Module):
    """Dense layers to a mean and a positive variance per target."""

    n_targets: int
    hidden: Sequence[int] = (64,)

    @nn.compact
    def __call__(self, h):
        for width in self.hidden:
            h = nn.softplus(nn.Dense(width)(h))
        out = nn.Dense(2 * self.n_targets)(h)
        mean, raw = jnp.split(out, 2, axis=-1)
        return mean, nn.softplus(raw) + MIN_VAR


class CompositionMLP(nn.Module):
    """An MLP on a fixed-length feature vector (standardized by the caller)."""

    n_targets: int
    hidden: Sequence[int] = (128, 64)

    @nn.compact
    def __call__(self, x):
        h = x
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h))
        return GaussianHead(self.n_targets, (32,))(h)


def graph_inputs(crystal, graph) -> dict:
    """The CGCNN input pytree of a batch: species, masks, edge indices and lengths.

    Edge lengths are computed once here: the property models are evaluated on
    fixed geometries, so nothing needs gradients through positions."""
    from jaxinv.graph import edge_vectors
    from jaxinv.potentials.base import safe_norm

    d = safe_norm(edge_vectors(crystal, graph))
    return {"numbers": jnp.asarray(crystal.numbers), "mask": jnp.asarray(crystal.mask),
            "senders": jnp.asarray(graph.senders), "receivers": jnp.asarray(graph.receivers),
            "edge_mask": jnp.asarray(graph.mask), "dist": jnp.where(graph.mask, d, 0.0).astype(jnp.float32)}


def flatten_graphs(inputs: dict) -> dict:
    """The padded per-structure graph inputs (senders (B, E) indexing each
    structure's own atoms) as one disjoint graph: edges (B*E,) indexing the
    flattened atoms (B*N,). Works on numpy or jax arrays, inside jit or not."""
    xp = jnp if any(isinstance(a, jax.Array) for a in inputs.values()) else np
    b, n = inputs["numbers"].shape
    offset = (xp.arange(b) * n)[:, None]
    out = dict(inputs)
    for k in ("senders", "receivers"):
        out[k] = (inputs[k] + offset).reshape(-1)
    out["edge_mask"] = inputs["edge_mask"].reshape(-1)
    out["dist"] = inputs["dist"].reshape(-1)
    return out


def compact_graphs(inputs: dict) -> dict:
    """A padded graph data set (N rows) as a training store (host side): atoms
    stay padded per row, the valid edges of all rows are concatenated
    (``senders``/``receivers`` local to their row, ``dist``) with each row's
    ``edge_start`` and ``edge_count``. :func:`gather_graphs` draws flat minibatches
    from it, so a minibatch's edge slots follow its real edge count, not
    ``batch * max edges`` of the whole data set."""
    em = np.asarray(inputs["edge_mask"], bool)
    count = em.sum(1).astype(np.int32)
    rows, cols = np.nonzero(em)  # row-major: each row's edges together, in order
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int32)
    pick = lambda k: np.asarray(inputs[k])[rows, cols]
    flat = {"senders": pick("senders").astype(np.int32), "receivers": pick("receivers").astype(np.int32),
            "dist": pick("dist").astype(np.float32)}
    if len(rows) == 0:  # a gather needs something to read from
        flat = {k: np.zeros(1, v.dtype) for k, v in flat.items()}
    return {"numbers": np.asarray(inputs["numbers"]), "mask": np.asarray(inputs["mask"]),
            "edge_start": start, "edge_count": count, **flat}


def edge_capacity(counts, batch_size: int, z: float = 5.0, multiple: int = 128) -> int:
    """Edge slots of a flat minibatch of ``batch_size`` rows drawn with replacement
    from rows with edge ``counts``: the mean plus ``z`` standard deviations of the
    sum (a minibatch over it drops whole structures, see :func:`gather_graphs`;
    z = 5 makes that rarer than 1 in 3 million), at least one largest row, at most
    ``batch_size`` largest rows, rounded up to ``multiple``."""
    c = np.asarray(counts, np.float64)
    if c.size == 0:
        return multiple
    cap = batch_size * c.mean() + z * math.sqrt(batch_size) * c.std()
    cap = min(max(cap, c.max()), batch_size * c.max())
    return int(max(multiple, -(-int(math.ceil(cap)) // multiple) * multiple))


def gather_graphs(store: dict, idx, capacity: int):
    """The rows ``idx`` (B,) of a :func:`compact_graphs` store as one flat graph
    with ``capacity`` edge slots (jit-friendly: every shape is static). Returns
    (inputs, ok): ``ok`` (B,) is False for a row whose edges did not all fit (its
    edges are masked off; the caller drops its label), so nothing is truncated
    silently."""
    numbers, mask = store["numbers"][idx], store["mask"][idx]
    b, n = numbers.shape
    count = store["edge_count"][idx]
    end = jnp.cumsum(count)
    ok = end <= capacity
    slot = jnp.arange(capacity)
    # the row of each slot: how many rows end at or before it
    row = jnp.zeros(capacity + 1, jnp.int32).at[jnp.minimum(end, capacity)].add(1)
    row = jnp.minimum(jnp.cumsum(row)[:capacity], b - 1)
    valid = (slot < end[row]) & ok[row]
    src = jnp.where(valid, store["edge_start"][idx][row] + slot - (end - count)[row], 0)
    offset = row * n
    return {"numbers": numbers, "mask": mask & ok[:, None],
            "senders": jnp.where(valid, store["senders"][src] + offset, 0),
            "receivers": jnp.where(valid, store["receivers"][src] + offset, 0),
            "edge_mask": valid, "dist": jnp.where(valid, store["dist"][src], 0.0)}, ok


def flat_graphs(inputs: dict, multiple: int = 128) -> dict:
    """Padded graph inputs (N rows) as one flat graph holding exactly their valid
    edges (host side; edge slots rounded up to ``multiple``): the cheapest form
    for evaluating a fixed set, e.g. the validation split in training."""
    store = compact_graphs(inputs)
    n_rows = store["numbers"].shape[0]
    total = int(store["edge_count"].sum())
    cap = max(multiple, -(-total // multiple) * multiple)
    out, _ = jax.jit(gather_graphs, static_argnums=2)(store, jnp.arange(n_rows), cap)
    return jax.tree_util.tree_map(np.asarray, out)


class _GateDense(nn.Module):
    """``Dense(2F)`` of the edge vector ``z_ij = [v_i, v_j, rbf(d_ij)]`` without
    building it: the kernel's atom blocks act on the atoms (N x F x 2F) before the
    gather, only the rbf block acts per edge (E x K x 2F instead of E x (2F+K) x 2F).
    Same parameters (``kernel`` (2F+K, 2F), ``bias``) and initialisation as
    ``nn.Dense``, so the result equals ``nn.Dense(2F)(concatenate(z))``."""

    features: int

    @nn.compact
    def __call__(self, v, senders, receivers, rbf):
        f = v.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2 * f + rbf.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        atom = v @ jnp.concatenate([kernel[:f], kernel[f:2 * f]], axis=1)  # (N, 2 * features)
        return atom[receivers, : self.features] + atom[senders, self.features:] + rbf @ kernel[2 * f:] + bias


class CGCNN(nn.Module):
    """Crystal-graph network: embedding, ``n_conv`` gated convolutions, masked mean pool.

    Inputs: the padded per-structure dict of :func:`graph_inputs` (``senders``
    (B, E)), or the same atoms with the edges of all structures as one flat
    graph (``senders`` (C,) indexing the B*N flattened atoms, as
    :func:`gather_graphs` and :func:`flat_graphs` give). Both give the same
    result; the flat form skips the padded edge slots of small structures."""

    n_targets: int
    features: int = 64
    n_conv: int = 3
    n_rbf: int = 40
    cutoff: float = 5.0

    @nn.compact
    def __call__(self, inputs: dict):
        if inputs["senders"].ndim == inputs["numbers"].ndim:
            inputs = flatten_graphs(inputs)
        numbers, mask = inputs["numbers"], inputs["mask"]
        s, r, emask, d = inputs["senders"], inputs["receivers"], inputs["edge_mask"], inputs["dist"]
        b, n = numbers.shape
        v = nn.Embed(119, self.features)(numbers.reshape(-1))  # (B*N, F)
        flat_mask = mask.reshape(-1, 1)
        centers = jnp.linspace(0.0, self.cutoff, self.n_rbf)
        width = self.cutoff / self.n_rbf
        rbf = jnp.exp(-((d[:, None] - centers) ** 2) / width**2)  # (E, K), once for all layers
        for i in range(self.n_conv):
            gate, core = jnp.split(_GateDense(2 * self.features, name=f"Dense_{i}")(v, s, r, rbf), 2, axis=-1)
            msg = nn.sigmoid(gate) * nn.softplus(core) * emask[:, None]
            agg = jax.ops.segment_sum(msg, r, num_segments=b * n)
            v = nn.softplus(v + nn.LayerNorm(name=f"LayerNorm_{i}")(agg))
            v = v * flat_mask
        v = v.reshape(b, n, self.features)
        pooled = v.sum(-2) / jnp.maximum(mask.sum(-1, keepdims=True), 1)
        return GaussianHead(self.n_targets, (self.features,), name="GaussianHead_0")(pooled)


def ensemble_init(module: nn.Module, key, n_members: int, example):
    """Parameters of ``n_members`` independently initialized copies, stacked on axis 0."""
    return _ensemble_init(module, key, int(n_members), example)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _ensemble_init(module, key, n_members, example):
    # jitted: run eagerly, a vmapped flax init dispatches (and compiles) every op on
    # its own, which took 20 s for a small CGCNN; an active-learning loop inits every round
    keys = jax.random.split(key, n_members)
    return jax.vmap(lambda k: module.init(k, example))(keys)


def ensemble_apply(module: nn.Module, params, inputs):
    """Every member on the same inputs: (mean, var), each (M, B, T)."""
    return jax.vmap(lambda p: module.apply(p, inputs))(params)


def mixture_moments(mean, var):
    """Mean and standard deviation of the members' Gaussian mixture, each (B, T)."""
    mu = mean.mean(0)
    total = var.mean(0) + mean.var(0)
    return mu, jnp.sqrt(total)
