"""Data parallelism over devices (``jax.sharding``) and hosts (``jax.distributed``).

Everything in jaxinv that scales out does it the same way: the batch axis (rows
of structures, candidates or training examples) is laid over a one-dimensional
:class:`~jax.sharding.Mesh` named ``"batch"``, parameters are replicated, and
``jit`` does the rest (XLA's SPMD partitioner inserts the all-reduce of a
gradient). No scheduler of our own is involved.

Two kinds of work need two routes:

* **One program over all devices of all processes** (screening inference,
  property-model, NequIP and generative training): every process holds the same
  global batch; :func:`shard_rows` places each process's part of it on the
  process's own devices of :func:`batch_mesh` (all devices), :func:`replicate`
  places parameters, and :func:`to_host` brings results back (an all-gather
  across processes when needed).
* **Host loops that differ per structure** (relaxation, with its refills,
  compaction and graph regrowth decided on the host): each process takes its
  contiguous share of the inputs (:func:`process_rows`), runs the loop with its
  batches spread over its *local* devices (:func:`shard_batch`), and
  :func:`allgather_rows` concatenates the shares, in process order, on every
  process (``jax.experimental.multihost_utils.process_allgather``).
  :func:`process_map` does both, and with a directory it saves finished rows
  so that a rerun after a failed node skips them.

A multi-process run starts with :func:`initialize` (``jax.distributed``), before
any other JAX call; in a single process every function here reduces to plain
placement on the local devices, and on one device to a no-op.
"""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path

import numpy as np

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AXIS", "initialize", "batch_mesh", "data_mesh", "training_mesh", "shard_rows", "replicate", "shard_batch", "to_host",
           "process_rows", "allgather_rows", "process_map", "CHUNKS"]

log = logging.getLogger("jaxinv.distributed")

AXIS = "batch"  # the one mesh axis: rows of a batch
CHUNKS = 256  # a resumable process_map saves its rows in this many pieces (a lost process loses one)


# ------------------------------------------------------------------ processes
def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids=None) -> bool:
    """Join a multi-process run with ``jax.distributed.initialize``; True if this process is part of one.

    It initializes when given a coordinator or a process count, or, with no
    arguments, inside a SLURM job step (``srun``) of several tasks (JAX then reads
    ``SLURM_JOB_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``
    and ``SLURM_LOCALID``: the coordinator is the step's first node, and task
    ``SLURM_LOCALID`` of a node takes that node's GPU of the same number).
    Otherwise it does nothing, so one script runs on a laptop and under ``srun``.
    Call it before anything else touches JAX; calling it again is harmless.

    Multi-process computations on CPUs need a collectives backend; jax 0.10.1
    uses gloo by default (``jax_cpu_collectives_implementation``), and it is set
    here if a configuration turned it off.
    """
    if jax.distributed.is_initialized():
        return True
    asked = coordinator_address is not None or num_processes is not None
    # inside an srun step of several tasks (a shell from salloc has SLURM_NTASKS but no step)
    slurm = "SLURM_STEP_NODELIST" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if not (asked or slurm):
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids)
    log.info("process %d of %d, %d local of %d devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True


def process_rows(n: int, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous share of ``n`` items: rows ``[round(i n / k), round((i + 1) n / k))``
    for process ``i`` of ``k`` (default: ``jax.process_index()`` of ``jax.process_count()``).
    The shares of all processes, in order, cover ``0 .. n - 1`` once."""
    if index is None or count is None:
        index, count = jax.process_index(), jax.process_count()
    if not 0 <= index < count:
        raise ValueError(f"process index {index} outside [0, {count})")
    bounds = np.linspace(0, n, count + 1).round().astype(int)
    return slice(int(bounds[index]), int(bounds[index + 1]))


def allgather_rows(tree):
    """Every process's ``tree`` joined along the leading axis, in process order, on every process.

    The leaves are host arrays (bool, integer or float; 64-bit dtypes pass
    unchanged). Row counts may differ between processes; everything else about
    the trees (structure, trailing shapes, dtypes) must agree, which is checked
    first so that a mismatch fails with a message instead of a hang. With one
    process the tree comes back as NumPy arrays."""
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [np.asarray(x) for x in leaves]
    if jax.process_count() == 1 or not leaves:
        return jax.tree_util.tree_unflatten(treedef, leaves)
    counts = {x.shape[0] for x in leaves}
    if len(counts) != 1:
        raise ValueError(f"leaves disagree on the number of rows: {sorted(counts)}")
    layout = repr((treedef, [(x.shape[1:], x.dtype.str) for x in leaves])).encode()
    with jax.enable_x64(True):  # float64 and int64 results must not be cast to 32 bits on the way
        multihost_utils.assert_equal(np.array([zlib.crc32(layout)], np.int64),
                                     "processes hold differently shaped results")
        rows = np.asarray(multihost_utils.process_allgather(np.array([leaves[0].shape[0]], np.int64)))[:, 0]
        most = int(rows.max())
        if most == 0:
            return jax.tree_util.tree_unflatten(treedef, leaves)
        padded = [np.concatenate([x, np.zeros((most - x.shape[0],) + x.shape[1:], x.dtype)]) for x in leaves]
        stacked = multihost_utils.process_allgather(padded)  # each leaf: (processes, most, ...)
    merged = [np.concatenate([np.asarray(s)[p, :r] for p, r in enumerate(rows)]) for s in stacked]
    return jax.tree_util.tree_unflatten(treedef, merged)


def process_map(fn, n: int, directory=None, key: str = "") -> dict:
    """``fn`` over this process's rows of ``n``, the results of all processes gathered in row order.

    ``fn(rows)`` takes a ``slice`` of ``0 .. n - 1`` and returns a dict of host
    arrays with one row per item (it is also called once with no rows, to learn
    the layout, on a process that has none). Every process gets the whole result
    (:func:`allgather_rows`).

    With ``directory`` (on a file system all processes see) the rows are cut into
    :data:`CHUNKS` pieces numbered independently of the process count, processes
    take contiguous runs of pieces, and each finished piece is written to
    ``directory/rows_<first>_<stop>.npz`` with ``key`` (what identifies the inputs
    and settings). A rerun loads the pieces it finds instead of computing them, so
    after a failed node the same command, with the same or another number of
    processes, repeats only the pieces that were not finished. A piece saved
    under another key raises, as a checkpoint of another run does."""
    if directory is None:
        shares = [process_rows(n)]
    else:
        size = -(-n // CHUNKS) if n else 1
        pieces = process_rows(-(-n // size))
        shares = [slice(k * size, min(n, (k + 1) * size)) for k in range(pieces.start, pieces.stop)]
    parts = [_piece(fn, rows, directory, key) for rows in shares if rows.stop > rows.start]
    if not parts:
        parts = [{name: np.asarray(a) for name, a in fn(slice(0, 0)).items()}]
    mine = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return allgather_rows(mine)


def _piece(fn, rows: slice, directory, key: str) -> dict:
    if directory is None:
        return {name: np.asarray(a) for name, a in fn(rows).items()}
    path = Path(directory) / f"rows_{rows.start:09d}_{rows.stop:09d}.npz"
    if path.exists():
        with np.load(path) as saved:
            if str(saved["__key__"]) != key:
                raise ValueError(f"{path} belongs to a different run (inputs or settings differ); "
                                 "use a new directory or delete it")
            log.info("rows %d-%d: loaded from %s", rows.start, rows.stop, path)
            return {name: saved[name] for name in saved.files if name != "__key__"}
    out = {name: np.asarray(a) for name, a in fn(rows).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, __key__=np.array(key), **out)
    os.replace(tmp, path)  # atomic: a process killed while writing leaves no piece that looks finished
    return out


# ------------------------------------------------------------------- devices
def batch_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"batch"`` over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (AXIS,))


def data_mesh(rows: int | None = None, devices=None) -> Mesh | None:
    """:func:`batch_mesh` when data parallelism applies: several devices and, if ``rows`` is
    given, a row count they divide. None otherwise (run as before, on one device)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < 2 or (rows is not None and rows % len(devices)):
        return None
    return batch_mesh(devices)


def training_mesh(mesh, rows: int | None = None) -> Mesh | None:
    """The mesh a training loop uses for its ``mesh`` argument: ``"auto"`` is
    :func:`data_mesh` (``rows``: the batch size the devices must divide), anything
    else (a Mesh, or None for one device) is used as given."""
    if isinstance(mesh, str) and mesh == "auto":
        return data_mesh(rows)
    return mesh


def _spec(ndim: int, axis: int | None) -> PartitionSpec:
    if axis is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * axis + [AXIS] + [None] * (ndim - axis - 1)))


def _place(tree, mesh: Mesh, axis: int | None):
    def put(x):
        sharding = NamedSharding(mesh, _spec(np.ndim(x), axis))
        if not mesh.is_multi_process or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, sharding)  # local, or already spread over the processes
        # across processes from host data: every process holds the whole array and hands over the
        # pieces of its own devices
        host = np.asarray(x)
        host = host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def shard_rows(tree, mesh: Mesh, axis: int = 0):
    """Every leaf with its axis ``axis`` split over ``mesh`` (the other axes whole on each device).
    Each process passes the same, whole arrays; the row count must divide the mesh size."""
    return _place(tree, mesh, axis)


def replicate(tree, mesh: Mesh):
    """Every leaf whole on every device of ``mesh`` (parameters, optimizer state, keys)."""
    return _place(tree, mesh, None)


def to_host(tree):
    """NumPy copies of a pytree of arrays, also of arrays spread over other processes'
    devices (gathered with ``process_allgather``; then every process must call this)."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(get, tree)


def shard_batch(tree):
    """Spread a pytree's leading (batch) axis over this process's devices when there are
    several and every leaf's batch divides evenly; jit then runs the batch data-parallel.
    A no-op on one device. Used by :class:`~jaxinv.relax.RelaxQueue` for each batch."""
    devices = jax.local_devices()
    leaves = jax.tree_util.tree_leaves(tree)
    if len(devices) < 2 or not leaves or any(np.ndim(x) == 0 or np.shape(x)[0] % len(devices) for x in leaves):
        return tree
    return _place(tree, batch_mesh(devices), 0)
