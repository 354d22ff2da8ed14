"""Autobatched relaxation of any number of structures, with checkpoints.

:class:`RelaxQueue` keeps a fixed-shape batch of slots per size bucket (so jit
compiles once per bucket and edge capacity), runs FIRE on all slots for a chunk
of steps, harvests the structures that finished (converged, failed or out of
steps), refills their slots from the queue and carries on. A chunk ends early
as soon as a slot finishes while structures are waiting, and new structures
enter unevaluated (``init_fn(..., evaluate=False)``): the next step evaluates
them, so a refill costs no evaluation of the whole batch. The batch size comes
from an edge budget (``max_edges``): message-passing cost and memory scale with
edges, so a batch of small cells holds many more structures than a batch of
large ones.

Why float64 by default (``precision``): in float32 a structure's forces depend on the
batch it runs in at the 1e-5 eV/Å level, because the flattened batch graph changes
the order of XLA's floating-point sums (SevenNet-0 on perov_5: 1.7e-5 eV/Å between a
structure alone and second in a batch of four). FIRE's discrete decisions (velocity
resets, time-step growth, the step clip) amplify that noise, and a cubic perovskite
that starts on a symmetric saddle point escapes it only through the noise, so the same
input converged 2.6 eV per cell apart in a batch of 64 and of 8, and again after a
resume, which refills batches differently. In float64 the noise is 1e-14 eV/Å and a
structure ends the same alone, in any batch or after a resume (to 1e-9 eV/atom on 12
rattled perov_5 structures). SevenNet-0 then costs about 2.5x more per step on a CPU;
``precision="float32"`` trades that reproducibility for speed.

Finished slots still cost a full evaluation per step (a batch is one SIMD
program), so two rules keep slots busy. On a CPU, where a batch costs about
the sum of its structures, the batch holds at most ``batch_fraction`` of the
pending list (default 1/4), so finished slots are refilled from the rest of
the list instead of idling until the slowest structure converges. Once the
list is empty and at most a quarter of the slots are still running, the
running ones are gathered into a smaller batch (``compact``); each smaller
size compiles once.

With ``checkpoint`` set, finished results are saved with orbax every
``checkpoint_every`` seconds and at the end; a killed run restarted with the
same inputs and settings skips everything already finished. Structures that
were in flight restart from their input geometry.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.checkpoint import Checkpointer, fingerprint_arrays
from jaxinv.crystal import Crystal, group_by_bucket
from jaxinv.graph import allocate, grown_sizes
from jaxinv.potentials.base import Potential, check_species
from jaxinv.relax.fire import (FAILED_GRAPH, RUNNING, STATUS_NAMES, Criteria, FireConfig, RelaxState,
                               fire_relaxer, gather_slots, tree_select)

__all__ = ["RelaxQueue", "RelaxResult", "as_crystal", "PRECISIONS"]

PRECISIONS = ("float64", "float32")


def batch_dtype():
    """The float dtype jit will give host float64 arrays (float64 only in x64 mode)."""
    return jnp.asarray(0.0).dtype

log = logging.getLogger("jaxinv.relax")


@dataclass
class RelaxResult:
    """The outcome of relaxing one input structure."""

    index: int
    structure: Any  # pymatgen Structure (final geometry)
    energy: float  # eV (without the P V term)
    forces: np.ndarray  # (n, 3) eV/Å
    stress: np.ndarray  # (3, 3) eV/Å^3, ASE sign
    steps: int
    status: str  # converged | max_steps | failed_nan | failed_cell | failed_graph | failed_collapse | failed_isolated
    trajectory: dict | None = None  # lattice (T,3,3), frac (T,n,3), energy (T,)

    @property
    def converged(self) -> bool:
        return self.status == "converged"

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    @property
    def energy_per_atom(self) -> float:
        return self.energy / len(self.structure)


def as_crystal(inputs) -> Crystal:
    """A host Crystal from a Crystal, pymatgen structures or ASE atoms."""
    if isinstance(inputs, Crystal):
        return inputs.to_host()
    inputs = list(inputs)
    if not inputs:
        raise ValueError("nothing to relax: the input is empty")
    if hasattr(inputs[0], "lattice") and hasattr(inputs[0], "frac_coords"):
        return Crystal.from_structures(inputs)
    if hasattr(inputs[0], "get_cell"):
        return Crystal.from_atoms(inputs)
    raise TypeError(f"cannot relax objects of type {type(inputs[0]).__name__}; "
                    "pass pymatgen Structures, ASE Atoms or a Crystal")


@dataclass
class _Store:
    """Finished results of all inputs, padded to the largest structure."""

    done: np.ndarray
    energy: np.ndarray
    lattice: np.ndarray
    frac: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    steps: np.ndarray
    status: np.ndarray
    trajectories: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, m: int, n: int):
        return cls(np.zeros(m, bool), np.full(m, np.nan), np.zeros((m, 3, 3)), np.zeros((m, n, 3)),
                   np.zeros((m, n, 3)), np.zeros((m, 3, 3)), np.zeros(m, np.int32), np.full(m, -1, np.int32))

    def arrays(self) -> dict:
        return {k: getattr(self, k) for k in ("done", "energy", "lattice", "frac", "forces", "stress", "steps",
                                              "status")}


class RelaxQueue:
    """Relax lists of any length in bucketed, refilled batches.

    Parameters: ``potential`` (any :class:`~jaxinv.potentials.Potential`),
    ``config`` (:class:`~jaxinv.relax.fire.FireConfig`), ``max_edges`` (edge
    budget per batch, the memory knob), ``max_batch`` (upper bound on slots),
    ``chunk_steps`` (steps between harvests), ``batch_fraction`` (largest
    batch as a fraction of the pending list; None: 1/4 on a CPU, 1 on an
    accelerator), ``compact`` (shrink the batch for the last few running
    structures), ``trajectory`` (keep every accepted frame), ``checkpoint``
    (a directory), ``progress`` and ``precision`` (float64, the default, makes a
    structure's result independent of its batch; see the module docstring).
    """

    def __init__(self, potential: Potential, config: FireConfig = FireConfig(), max_edges: int = 60_000,
                 max_batch: int = 128, chunk_steps: int = 20, batch_fraction: float | None = None,
                 compact: bool = True, trajectory: bool = False,
                 checkpoint: str | None = None, checkpoint_every: float = 30.0, progress: bool = True,
                 precision: str = "float64"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
        self.precision = precision
        self.potential = potential
        self.config = config = config.for_potential(potential)
        self.max_edges = int(max_edges)
        self.max_batch = int(max_batch)
        if batch_fraction is None:
            batch_fraction = 0.25 if jax.default_backend() == "cpu" else 1.0
        if not 0.0 < batch_fraction <= 1.0:
            raise ValueError(f"batch_fraction must be in (0, 1], got {batch_fraction}")
        self.batch_fraction = float(batch_fraction)
        self.compact = bool(compact)
        self.chunk_steps = int(chunk_steps)
        self.trajectory = bool(trajectory)
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.graph_cutoff = potential.cutoff + config.skin_for(potential.cutoff)
        self._start, self._chunk = _compiled(potential.energy_fn, float(potential.cutoff), _static(config),
                                             self.chunk_steps, self.trajectory)
        self.stats = {"graph_regrowths": 0, "chunks": 0, "compactions": 0}

    def _criteria(self, b: int, dtype) -> Criteria:
        return Criteria.from_config(self.config, b, dtype)

    # --------------------------------------------------------------- helpers
    def _batch_size(self, crystal: Crystal, members: np.ndarray, n_pending: int) -> int:
        c = crystal[members]
        n = c.n_atoms.astype(float)
        edges = n * n * 4.0 / 3.0 * np.pi * self.graph_cutoff**3 / np.maximum(c.volume, 1e-3)
        per_structure = max(float(np.percentile(edges, 90)), 1.0)
        by_list = int(np.ceil(self.batch_fraction * n_pending))
        return int(np.clip(self.max_edges // per_structure, 1, min(self.max_batch, by_list)))

    def _graph(self, crystal: Crystal, capacity: int | None = None, images: tuple | None = None):
        """A graph with at least ``capacity`` slots; when it must grow, it grows with
        :data:`jaxinv.graph.HEADROOM` (neighbor counts change during relaxation, and each new
        capacity is a new compilation)."""
        return allocate(crystal, self.graph_cutoff, capacity=capacity, images=images)

    def _slot_crystal(self, crystal: Crystal, slots: list[int], n_slot: int) -> Crystal:
        """The inputs occupying ``slots`` (-1: empty) as one padded batch."""
        b = len(slots)
        lattice = np.broadcast_to(10.0 * np.eye(3), (b, 3, 3)).copy()
        frac = np.zeros((b, n_slot, 3))
        numbers = np.zeros((b, n_slot), np.int32)
        mask = np.zeros((b, n_slot), bool)
        for k, i in enumerate(slots):
            if i < 0:
                continue
            m = crystal.mask[i]
            n = int(m.sum())
            lattice[k] = crystal.lattice[i]
            frac[k, :n] = crystal.frac[i][m]
            numbers[k, :n] = crystal.numbers[i][m]
            mask[k, :n] = True
        return Crystal(lattice, frac, numbers, mask, {})

    def _fingerprint(self, crystal: Crystal) -> str:
        cfg = repr(self.config) + self.potential.name + self.precision
        return fingerprint_arrays(crystal.lattice, crystal.frac, crystal.numbers, np.frombuffer(cfg.encode(), np.uint8))

    # ------------------------------------------------------------------ run
    def run(self, inputs) -> list[RelaxResult]:
        with jax.enable_x64(self.precision == "float64"):
            return self._run(inputs)

    def _run(self, inputs) -> list[RelaxResult]:
        crystal = as_crystal(inputs)
        check_species(self.potential, crystal)
        m, sizes = crystal.batch_size, crystal.n_atoms
        store = _Store.empty(m, crystal.n_max)
        ckpt = None
        if self.checkpoint:
            ckpt = Checkpointer(self.checkpoint, self._fingerprint(crystal), every_seconds=self.checkpoint_every)
            restored = ckpt.restore()
            if restored is not None:
                for k, v in restored[1].items():
                    setattr(store, k, np.asarray(v))
                log.info("resuming: %d of %d structures already relaxed", int(store.done.sum()), m)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=m, initial=int(store.done.sum()), desc="relax", unit="struct")
        step_counter = [ckpt.latest_step or 0] if ckpt else [0]

        def save(force=False):
            if ckpt is None:
                return
            step_counter[0] += 1
            if force:
                ckpt.save(step_counter[0], store.arrays())
            else:
                ckpt.maybe_save(step_counter[0], store.arrays)

        try:
            for n_slot, members in group_by_bucket(sizes).items():
                pending = deque(int(i) for i in members if not store.done[i])
                if pending:
                    self._run_bucket(crystal, n_slot, members, pending, store, bar, save)
            save(force=True)
        finally:
            if bar is not None:
                bar.close()
            if ckpt is not None:
                ckpt.close()
        return self._results(crystal, store)

    def _run_bucket(self, crystal, n_slot, members, pending, store, bar, save):
        params = self.potential.params
        b = self._batch_size(crystal, members, len(pending))
        # size the graph for the whole bucket up front, so refills rarely recompile
        whole = self._graph(crystal[np.asarray(list(pending))])
        slots = [pending.popleft() if pending else -1 for _ in range(b)]
        batch = self._slot_crystal(crystal, slots, n_slot)
        graph = self._graph(batch, capacity=whole.capacity, images=whole.images)
        # slots start fresh: the first step evaluates them, so starting and refilling cost no extra evaluation
        state = self._start(batch, graph, self._criteria(b, batch_dtype()))
        while True:
            if all(i < 0 for i in slots) and not pending:
                return
            free = [k for k, i in enumerate(slots) if i < 0]
            if free and pending:
                state = self._refill(state, slots, free, pending, crystal, n_slot)
            elif self.compact and not pending:
                state, slots = self._compacted(state, slots)
            occupied = sum(i >= 0 for i in slots)
            # leave the loop as soon as a slot can be refilled (or the batch compacted), so that
            # finished slots do not ride along, evaluated for nothing, to the end of the chunk
            min_running = occupied - 1 if pending else (len(slots) // 4 if self.compact else 0)
            state, frames, _ = self._chunk(params, state, jnp.int32(min(min_running, occupied - 1)))
            self.stats["chunks"] += 1
            if bool(np.any(np.asarray(state.needs_graph))):
                state = self._regrow(state)
            if self._harvest(state, slots, store, frames, bar):
                save()  # only when something new has finished

    def _compacted(self, state: RelaxState, slots: list[int]):
        """The running slots gathered into a batch a quarter the size or smaller, once at most a
        quarter of the slots still run (finished slots would otherwise be evaluated every step)."""
        running = [k for k, i in enumerate(slots) if i >= 0]
        b = len(slots)
        if not running or 4 * len(running) > b:
            return state, slots
        state, pad = gather_slots(state, running)
        self.stats["compactions"] += 1
        log.debug("compacted the batch from %d to %d slots", b, len(pad))
        return state, [slots[k] for k in running] + [-1] * int(pad.sum())

    def _refill(self, state, slots, free, pending, crystal, n_slot):
        changed = np.zeros(len(slots), bool)
        for k in free:
            slots[k] = pending.popleft() if pending else -1
            changed[k] = True
        fresh = self._slot_crystal(crystal, slots, n_slot)
        current = jax.tree_util.tree_map(np.asarray, state.crystal)
        mixed = Crystal(*(np.where(changed.reshape((-1,) + (1,) * (np.ndim(a) - 1)), a, c)
                          for a, c in zip((fresh.lattice, fresh.frac, fresh.numbers, fresh.mask),
                                          (current.lattice, current.frac, current.numbers, current.mask))), {})
        graph = self._graph(mixed, capacity=state.graph.capacity, images=state.graph.images)
        new = self._start(mixed, graph, self._criteria(len(slots), batch_dtype()))
        # one fresh graph for every slot (it is valid for the continuing ones too)
        state = state.replace(graph=graph, graph_frac=jnp.asarray(mixed.frac, state.graph_frac.dtype),
                              graph_lattice=jnp.asarray(mixed.lattice, state.graph_lattice.dtype))
        return tree_select(jnp.asarray(changed), new, state)

    def _regrow(self, state: RelaxState) -> RelaxState:
        """Rebuild the graph on the host with room for every structure, outside jit."""
        self.stats["graph_regrowths"] += 1
        host = jax.tree_util.tree_map(np.asarray, state.crystal)
        c = Crystal(host.lattice.astype(np.float64), host.frac.astype(np.float64), host.numbers, host.mask, {})
        # sized for the step that overflowed, not only for the geometry it was rejected back to
        capacity, images = grown_sizes(state.graph, state.graph_lattice, self.graph_cutoff,
                                       np.asarray(state.status) == RUNNING)
        graph = self._graph(c, capacity=capacity, images=images)
        status = np.asarray(state.status).copy()
        hopeless = np.asarray(graph.image_overflow) & (status == RUNNING)
        status[hopeless] = FAILED_GRAPH  # needs more than MAX_IMAGES images: the cell has collapsed
        log.info("graph regrown: capacity %d, images %s", graph.capacity, graph.images)
        return state.replace(graph=graph, graph_frac=state.crystal.frac, graph_lattice=state.crystal.lattice,
                             needs_graph=jnp.zeros_like(state.needs_graph), status=jnp.asarray(status))

    def _harvest(self, state, slots, store: _Store, frames, bar):
        status = np.asarray(state.status)
        finished = [k for k, i in enumerate(slots) if i >= 0 and status[k] != RUNNING]
        if frames and self.trajectory:
            self._record_frames(frames, slots)
        if not finished:
            return 0
        host = jax.device_get((state.crystal.lattice, state.crystal.frac, state.energy, state.forces,
                               state.stress, state.steps))
        lattice, frac, energy, forces, stress, steps = host
        for k in finished:
            i = slots[k]
            n = store.frac.shape[1]
            store.lattice[i] = lattice[k]
            store.frac[i] = 0.0
            store.forces[i] = 0.0
            nk = min(frac.shape[1], n)
            store.frac[i, :nk] = frac[k, :nk]
            store.forces[i, :nk] = forces[k, :nk]
            store.energy[i] = energy[k]
            store.stress[i] = stress[k]
            store.steps[i] = steps[k]
            store.status[i] = status[k]
            store.done[i] = True
            slots[k] = -1
        if bar is not None:
            bar.update(len(finished))
        return len(finished)

    def _record_frames(self, frames, slots):
        lattice, frac, energy, steps = (np.asarray(x) for x in frames)
        for k, i in enumerate(slots):
            if i < 0:
                continue
            traj = self._traj.setdefault(i, {"lattice": [], "frac": [], "energy": [], "step": []})
            seen = traj["step"][-1] if traj["step"] else 0
            for t in range(steps.shape[0]):
                if steps[t, k] > seen:  # an accepted step of this slot
                    seen = int(steps[t, k])
                    traj["lattice"].append(lattice[t, k])
                    traj["frac"].append(frac[t, k])
                    traj["energy"].append(float(energy[t, k]))
                    traj["step"].append(seen)

    @property
    def _traj(self) -> dict:
        if not hasattr(self, "_traj_store"):
            self._traj_store = {}
        return self._traj_store

    def _results(self, crystal: Crystal, store: _Store) -> list[RelaxResult]:
        from pymatgen.core import Lattice, Structure

        out = []
        for i in range(crystal.batch_size):
            m = crystal.mask[i]
            n = int(m.sum())
            numbers = crystal.numbers[i][m]
            s = Structure(Lattice(store.lattice[i]), numbers.tolist(), store.frac[i, :n])
            traj = None
            if self.trajectory and i in self._traj:
                t = self._traj[i]
                traj = {"lattice": np.array(t["lattice"]), "frac": np.array(t["frac"])[:, :n],
                        "energy": np.array(t["energy"])}
            out.append(RelaxResult(i, s, float(store.energy[i]), store.forces[i, :n].copy(), store.stress[i].copy(),
                                   int(store.steps[i]), STATUS_NAMES.get(int(store.status[i]), "unknown"), traj))
        return out


def _static(config: FireConfig) -> FireConfig:
    """The part of a config that shapes the compiled program (criteria are traced)."""
    return dataclasses.replace(config, fmax=0.0, stress_tol=0.0, pressure=0.0, max_steps=0)


@functools.lru_cache(maxsize=32)
def _compiled(energy_fn, cutoff: float, static_config: FireConfig, chunk_steps: int, trajectory: bool):
    """Jitted ``start`` (an unevaluated state) and ``chunk`` for one potential and static config, shared by
    all queues."""
    init_fn, step_fn = fire_relaxer(energy_fn, cutoff, static_config)

    def start(crystal: Crystal, graph, criteria: Criteria) -> RelaxState:
        return init_fn(None, crystal, graph, criteria, evaluate=False)

    def run_chunk(params, state: RelaxState, min_running):
        """Up to ``chunk_steps`` FIRE steps. Stops early when no more than ``min_running``
        slots still run, or when a slot waits for a larger graph."""
        k = chunk_steps
        if trajectory:
            frames = (jnp.zeros((k,) + state.crystal.lattice.shape, state.crystal.lattice.dtype),
                      jnp.zeros((k,) + state.crystal.frac.shape, state.crystal.frac.dtype),
                      jnp.zeros((k,) + state.energy.shape, state.energy.dtype),
                      jnp.zeros((k,) + state.steps.shape, state.steps.dtype))
        else:
            frames = ()

        def go_on(c):
            i, s, _ = c
            running = s.status == RUNNING
            return ((i < k) & jnp.any(running & ~s.needs_graph) & ~jnp.any(running & s.needs_graph)
                    & (jnp.sum(running) > min_running))

        def body(carry):
            i, s, fr = carry
            s = step_fn(params, s)
            if trajectory:
                fr = (fr[0].at[i].set(s.crystal.lattice), fr[1].at[i].set(s.crystal.frac),
                      fr[2].at[i].set(s.energy), fr[3].at[i].set(s.steps))
            return i + 1, s, fr

        n, state, frames = jax.lax.while_loop(go_on, body, (0, state, frames))
        return state, frames, n

    return jax.jit(start), jax.jit(run_chunk)
