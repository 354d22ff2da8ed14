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
from typing import Sequence

import numpy as np

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["GaussianHead", "CompositionMLP", "CGCNN", "graph_inputs", "ensemble_init", "ensemble_apply",
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


class CGCNN(nn.Module):
    """Crystal-graph network: embedding, ``n_conv`` gated convolutions, masked mean pool."""

    n_targets: int
    features: int = 64
    n_conv: int = 3
    n_rbf: int = 40
    cutoff: float = 5.0

    @nn.compact
    def __call__(self, inputs: dict):
        numbers, mask = inputs["numbers"], inputs["mask"]
        s, r, emask, d = inputs["senders"], inputs["receivers"], inputs["edge_mask"], inputs["dist"]
        n = numbers.shape[-1]
        v = nn.Embed(119, self.features)(numbers)
        centers = jnp.linspace(0.0, self.cutoff, self.n_rbf)
        width = self.cutoff / self.n_rbf
        rbf = jnp.exp(-((d[..., None] - centers) ** 2) / width**2)  # (B, E, K)
        take = jax.vmap(lambda x, idx: x[idx])
        scatter = jax.vmap(lambda x, idx: jax.ops.segment_sum(x, idx, num_segments=n))
        for _ in range(self.n_conv):
            z = jnp.concatenate([take(v, r), take(v, s), rbf], axis=-1)
            gate, core = jnp.split(nn.Dense(2 * self.features)(z), 2, axis=-1)
            msg = nn.sigmoid(gate) * nn.softplus(core) * emask[..., None]
            v = nn.softplus(v + nn.LayerNorm()(scatter(msg, r)))
            v = v * mask[..., None]
        pooled = v.sum(-2) / jnp.maximum(mask.sum(-1, keepdims=True), 1)
        return GaussianHead(self.n_targets, (self.features,))(pooled)


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
