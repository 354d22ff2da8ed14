"""Local relaxation of candidates in fixed-shape batches (the expensive step of every search).

A search relaxes a batch of the same size every generation, so :class:`Relaxer`
keeps shapes fixed for its whole life (``batch`` slots of ``n_max`` atoms, edge
capacity and image range that only grow, except that a generous starting capacity
is lowered once after the first batch to what that batch needed): jit compiles a
few times per run, not once per generation. Short batches are padded with copies of their first
structure, whose results are dropped. It drives the pure FIRE
``init``/``step`` pair of :mod:`jaxinv.relax.fire` in jitted chunks and, like
:class:`~jaxinv.relax.RelaxQueue`, regrows the neighbour graph on the host when
a structure outgrows it.

On a CPU a batch costs about the sum of its structures, and relaxations from
random starting points differ in length by an order of magnitude, so once at
most a quarter of the slots still run, the running ones are gathered into a
smaller power-of-two batch (``compact``; each smaller size compiles once), as
the relaxation queue does. On an accelerator, where a batch costs about what
one structure does, the batch keeps its size.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

import jax
import jax.numpy as jnp
from flax import struct

from jaxinv.crystal import Crystal
from jaxinv.graph import grown_sizes
from jaxinv.potentials.base import Potential
from jaxinv.search.composition import StickyGraph
from jaxinv.relax.fire import FAILED_GRAPH, RUNNING, Criteria, FireConfig, fire_relaxer, gather_slots

__all__ = ["Relaxer", "Relaxed"]

log = logging.getLogger("jaxinv.search")


@struct.dataclass
class Relaxed:
    """Relaxed structures and their energies, (k,) each (host NumPy)."""

    crystal: Crystal
    energy: np.ndarray  # eV per structure (no P V term)
    enthalpy: np.ndarray  # (E + P V) / n_atoms, eV/atom; inf for failed relaxations
    status: np.ndarray  # jaxinv.relax status codes
    steps: np.ndarray


@functools.lru_cache(maxsize=16)
def _compiled(energy_fn, cutoff: float, config: FireConfig, chunk_steps: int):
    init_fn, step_fn = fire_relaxer(energy_fn, cutoff, config)

    def chunk(params, state, min_running):
        """Up to ``chunk_steps`` steps; stops early once no more than ``min_running`` slots run."""
        def go_on(c):
            i, s = c
            running = s.status == RUNNING
            return (i < chunk_steps) & jnp.any(running & ~s.needs_graph) & (jnp.sum(running) > min_running)

        def body(c):
            i, s = c
            return i + 1, step_fn(params, s)

        _, state = jax.lax.while_loop(go_on, body, (0, state))
        return state

    return jax.jit(init_fn), jax.jit(chunk)


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


class Relaxer:
    """Relax host :class:`Crystal` batches with ``potential`` in slots of ``batch``.

    With several devices the batch is sharded over them (``batch`` should be a
    multiple of the device count). ``config`` gives the convergence criteria, pressure and cell mode
    (``cell='fixed'`` for clusters in a vacuum box); ``images`` and ``capacity``
    are the starting graph sizes (they grow when a structure needs more). ``relaxations`` counts the
    real structures relaxed so far (padding excluded). ``compact`` (default: on a CPU) gathers the
    last running structures of a batch into smaller batches.
    """

    def __init__(self, potential: Potential, config: FireConfig, batch: int, chunk_steps: int = 50,
                 images: tuple = (1, 1, 1), capacity: int = 16, compact: bool | None = None):
        self.potential = potential
        self.config = config = config.for_potential(potential)
        self.batch = int(batch)
        self.compact = jax.default_backend() == "cpu" if compact is None else bool(compact)
        self.graph_cutoff = potential.cutoff + config.skin_for(potential.cutoff)
        # criteria are traced, so the compiled program depends only on the static part
        static = dataclasses.replace(config, fmax=0.0, stress_tol=0.0, pressure=0.0, max_steps=0)
        self._init, self._chunk = _compiled(potential.energy_fn, float(potential.cutoff), static, int(chunk_steps))
        self.graphs = StickyGraph(self.graph_cutoff, images, capacity)
        self.relaxations = 0
        self.compactions = 0

    def _graph(self, crystal: Crystal):
        return self.graphs(crystal)

    def _criteria(self, b: int) -> Criteria:
        dtype = jnp.asarray(0.0).dtype
        return Criteria.from_config(self.config, b, dtype)

    def __call__(self, crystal: Crystal) -> Relaxed:
        crystal = crystal.to_host()
        crystal = Crystal(crystal.lattice, crystal.frac, crystal.numbers, crystal.mask, {})
        k = crystal.batch_size
        parts = [self._run(crystal[s:s + self.batch]) for s in range(0, k, self.batch)]
        cat = lambda xs: np.concatenate(xs)
        self.relaxations += k
        if self.graphs.tighten():  # after the first batch: drop what the starting floor overshot
            log.info("relaxer graph capacity lowered to %d edges", self.graphs.capacity)
        return Relaxed(Crystal(cat([p[0] for p in parts]), cat([p[1] for p in parts]), crystal.numbers,
                               crystal.mask, {}),
                       *(cat([p[i] for p in parts]) for i in range(2, 6)))

    def _run(self, c: Crystal):
        k = c.batch_size
        if k < self.batch:  # pad with copies of the first structure (results dropped)
            idx = np.concatenate([np.arange(k), np.zeros(self.batch - k, int)])
            c = jax.tree_util.tree_map(lambda x: x[idx], c)
        params = self.potential.params
        graph = self._graph(c)
        c, graph = shard_batch((c, graph))
        state = self._init(params, c, graph, self._criteria(self.batch))
        # results by input slot; compaction drops finished slots from the state, so they are kept here
        host = lambda s: [np.asarray(x) for x in jax.device_get(
            (s.crystal.lattice, s.crystal.frac, s.energy, s.status, s.steps))]
        results = [np.array(x) for x in host(state)]
        slot_of = np.arange(self.batch)  # input slot of each state slot (-1: a compaction pad)
        while True:
            running = np.asarray(state.status) == RUNNING
            if not running.any():
                break
            if np.any(np.asarray(state.needs_graph) & running):
                state = self._regrow(state)
                continue
            size = len(slot_of)
            if self.compact and size > 1 and 4 * int(running.sum()) <= size:
                state, slot_of = self._compacted(state, slot_of, running, results, host)
                continue
            state = self._chunk(params, state, jnp.int32(size // 4 if self.compact else 0))
            # the jitted steps rebuild graphs as structures move (and densify): what they needed
            self.graphs.saw(state.graph.n_edges)
        self._keep(host(state), slot_of, np.ones(len(slot_of), bool), results)
        lattice, frac, energy, status, steps = results
        lattice, frac = lattice.astype(np.float64), frac.astype(np.float64)
        n = np.maximum(c.mask.sum(-1), 1)
        volume = np.abs(np.linalg.det(lattice))
        enthalpy = (energy.astype(np.float64) + self.config.pressure * volume) / n
        failed = (status >= 3) | ~np.isfinite(enthalpy)  # FAILED_NAN, _CELL, _GRAPH, _COLLAPSE, _ISOLATED
        enthalpy = np.where(failed, np.inf, enthalpy)
        frac = np.where(c.mask[..., None], frac, 0.0)
        return lattice[:k], frac[:k], energy[:k].astype(np.float64), enthalpy[:k], status[:k], steps[:k]

    @staticmethod
    def _keep(values, slot_of, which, results):
        """Copy the state slots ``which`` (that are not pads) into ``results`` by input slot."""
        rows = np.flatnonzero(which & (slot_of >= 0))
        for out, v in zip(results, values):
            out[slot_of[rows]] = v[rows]

    def _compacted(self, state, slot_of, running, results, host):
        """The running slots gathered into the smallest power-of-two batch that holds them."""
        self._keep(host(state), slot_of, ~running, results)
        self.compactions += 1
        live = np.flatnonzero(running)
        state, pad = gather_slots(state, live)
        return state, np.concatenate([slot_of[live], np.full(int(pad.sum()), -1)])

    def _regrow(self, state):
        host = jax.tree_util.tree_map(np.asarray, state.crystal)
        c = Crystal(host.lattice.astype(np.float64), host.frac.astype(np.float64), host.numbers, host.mask, {})
        # sized for the step that overflowed, not only for the geometry it was rejected back to
        self.graphs.at_least(*grown_sizes(state.graph, state.graph_lattice, self.graph_cutoff,
                                          np.asarray(state.status) == RUNNING))
        graph = self._graph(c)
        status = np.asarray(state.status).copy()
        status[np.asarray(graph.image_overflow) & (status == RUNNING)] = FAILED_GRAPH
        return state.replace(graph=graph, graph_frac=state.crystal.frac, graph_lattice=state.crystal.lattice,
                             needs_graph=jnp.zeros_like(state.needs_graph), status=jnp.asarray(status))
