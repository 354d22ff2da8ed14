"""Data parallelism over devices (``jax.sharding``) and hosts (``jax.distributed``)."""
from __future__ import annotations

import numpy as np

import jax

__all__ = ["shard_batch"]


def shard_batch(tree):
    """Spread a pytree's leading (batch) axis over all local devices, when there are
    several and the batch divides evenly; jit then runs the relaxation data-parallel.
    A no-op on one device."""
    devices = jax.local_devices()
    leaves = jax.tree_util.tree_leaves(tree)
    if len(devices) < 2 or not leaves or leaves[0].shape[0] % len(devices):
        return tree
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("batch",))
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, NamedSharding(
        mesh, PartitionSpec("batch", *([None] * (np.ndim(x) - 1))))), tree)
