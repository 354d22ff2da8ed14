"""Property heads on a universal potential, fine-tuned end to end.

:class:`PotentialHead` is a flax module for the deep ensembles of
:mod:`jaxinv.screening.train`: a NequIP-family potential (SevenNet-0 by default)
computes each atom's invariant features
(:func:`~jaxinv.potentials.nequip.nequip_descriptor_fn`), they are pooled over the
atoms (mean and spread, as the frozen ``sevennet0`` feature kind does), standardized
with the frozen model's statistics on the training set, and an MLP gives a
Gaussian per target. Training moves the head *and* the potential.

The potential's weights enter as ``pretrained + scale * delta`` with ``delta`` the
trained parameter, initialized at 0. Adam's steps are about ``lr`` in size whatever
the gradient's scale, so ``scale`` (``backbone_lr``) is what sets the potential's
step relative to the head's; and the weight decay on ``delta`` pulls the potential
back toward its pretrained weights (L2-SP, Li et al., ICML 2018) rather than toward
zero. Each ensemble member fine-tunes its own copy.

The radial MLPs are run as such (``radial_grid=0``): the tables used for fast
inference are functions of the MLP weights and would not follow their change.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxinv.screening.models import GaussianHead

__all__ = ["PotentialHead", "backbone", "head_inputs", "feature_statistics"]


@functools.lru_cache(maxsize=4)
def backbone(name: str):
    """The registered potential ``name`` with its radial MLPs untabulated (see above)."""
    from jaxinv.potentials import load_potential

    pot = load_potential(name, radial_grid=0)
    if "config" not in (pot.metadata or {}):
        raise ValueError(f"potential {name!r} is not a NequIP-family model; it cannot carry a fine-tuned head")
    return pot


@functools.lru_cache(maxsize=4)
def _descriptor(name: str):
    from jaxinv.potentials.nequip import nequip_descriptor_fn

    return nequip_descriptor_fn(backbone(name).metadata["config"])


def head_inputs(crystal, potential: str = "sevennet0") -> dict:
    """The module's input pytree for a Crystal batch: the batch and its neighbor graph
    at the potential's cutoff (host arrays; rows are structures)."""
    from jaxinv.graph import neighbor_graph
    from jaxinv.potentials.base import check_species

    pot = backbone(potential)
    c = crystal.to_host()
    check_species(pot, c)
    c = c.replace(labels={}, atom_labels={})  # the module needs geometry and species only
    return {"crystal": c, "graph": neighbor_graph(c, pot.cutoff)}


def _pool(x, mask):
    w = mask[..., None].astype(x.dtype)
    n = jnp.maximum(w.sum(1), 1.0)
    mean = (x * w).sum(1) / n
    spread = jnp.sqrt(jnp.sum(((x - mean[:, None]) ** 2) * w, 1) / n + 1e-12)
    return jnp.concatenate([mean, spread], axis=-1)


def feature_statistics(features) -> tuple[list, list]:
    """Mean and standard deviation of the frozen potential's pooled features over the
    training set (:func:`~jaxinv.screening.features.potential_features`): the head's
    fixed input standardization. Columns that barely vary get an infinite deviation, so
    they enter as 0 (the same rule as the frozen composition head's scaler)."""
    x = np.asarray(features, np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-3 * np.maximum(np.abs(mean), 1.0), std, np.inf)
    return mean.astype(np.float32).tolist(), std.astype(np.float32).tolist()


class PotentialHead(nn.Module):
    """Gaussian head on a potential's pooled per-atom features, the potential fine-tuned.

    ``feature_mean`` / ``feature_std``: :func:`feature_statistics` of the training set.
    ``backbone_lr``: the potential's step size relative to the head's (0 freezes it)."""

    n_targets: int
    feature_mean: Sequence[float]
    feature_std: Sequence[float]
    potential: str = "sevennet0"
    hidden: Sequence[int] = (128, 64)
    backbone_lr: float = 0.05

    @nn.compact
    def __call__(self, inputs: dict):
        pretrained = backbone(self.potential).params
        delta = self.param("backbone_delta", lambda key: jax.tree_util.tree_map(
            lambda p: jnp.zeros(np.shape(p), jnp.float32), pretrained))
        params = jax.tree_util.tree_map(lambda p, d: jnp.asarray(p, jnp.float32) + self.backbone_lr * d,
                                        pretrained, delta)
        crystal = inputs["crystal"]
        x = _descriptor(self.potential)(params, crystal, inputs["graph"])
        h = (_pool(x, crystal.mask) - jnp.asarray(self.feature_mean)) / jnp.asarray(self.feature_std)
        h = jnp.clip(h, -8.0, 8.0)  # as the frozen head's inputs: far from training looks far, not infinite
        for width in self.hidden:
            h = nn.silu(nn.Dense(width)(h))
        return GaussianHead(self.n_targets, (32,))(h)
