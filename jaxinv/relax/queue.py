"""The one relaxation driver: autobatched relaxation of any number of structures, with checkpoints.

``relax()``, the screening funnel, searches and generated-sample relaxation all run
through :class:`RelaxQueue`. It returns a host :class:`~jaxinv.crystal.Crystal` in input
order (each row's atoms moved to the front, as :meth:`Crystal.pad` does) whose ``labels`` hold ``energy`` (eV, without the P V term), ``stress`` (3x3, eV/Å^3,
ASE sign), ``status`` (a code of :data:`~jaxinv.relax.fire.STATUS_NAMES`) and ``steps``,
and whose ``atom_labels`` hold ``forces`` (eV/Å).

It keeps a fixed-shape batch of slots per size bucket (so jit
compiles once per bucket and edge capacity), runs FIRE on all slots for a chunk
of steps, harvests the structures that finished (converged, failed or out of
steps), refills their slots from the queue and carries on. A chunk ends early
as soon as a slot finishes while structures are waiting, and new structures
enter unevaluated (``init_fn(..., evaluate=False)``): the next step evaluates
them, so a refill costs no evaluation of the whole batch. How many slots a batch
has is decided in one place, :meth:`RelaxQueue._batch_size`, by the rule below.

Batch size. Message-passing cost and memory scale with edges, so a structure's
size is its estimated edge count, n^2 (4/3) pi r^3 / V for n atoms in a cell of
volume V and graph cutoff r (TorchSim's autobatcher uses the same n * n / V
density metric); the 90th percentile over the structures waiting in a padded
size stands for all of them. Then:

* on a CPU (no ``memory_stats``): the batch holds ``max_edges`` edges (default
  60,000). Memory is not what limits a CPU: cost grows with the batch, and the
  budget keeps a batch small enough to be refilled often (see below);
* on an accelerator that reports its memory (``memory_stats()`` with
  ``bytes_limit``): the batch fills ``memory_fraction`` of the memory free now
  (limit less bytes in use), a slot costing the measured bytes per edge times
  the padded graph's edge slots per structure (what the program allocates). With
  several devices the batch is sharded and the first device's memory counts for
  all, which errs safe. A batch there costs about what one structure does until the device is
  saturated, so a fixed count either wastes the device or overflows it, and the
  bytes an edge costs are not guessed but measured, because they depend on the
  potential (a pair potential needs bytes per edge, SevenNet-0 kilobytes), the
  precision and what XLA fuses: the chunk program is compiled for a probe batch
  (the edge-budget size, on the padded graph) and XLA's memory analysis of it
  (arguments + outputs + temporaries, the whole program counted as per-edge cost,
  which overstates small probes and so errs safe) divided by the probe's edge
  slots gives bytes per edge, once per potential, padded size and precision in a
  process (:func:`probe_bytes_per_edge`). Headroom (default 0.7) covers what the
  analysis does not see: the graph capacity growing during the run, the fresh
  state a refill builds next to the running one, and allocator fragmentation;
* structures estimated to need more than ``DENSE_FACTOR`` (4) times their group's
  median edge count (collapsed cells among generated samples) are relaxed after the
  others, in their own batches (:meth:`RelaxQueue._dense_last`);
* ``max_batch`` caps the slots (default 128 on a CPU, none beyond memory on an
  accelerator), and ``batch_fraction`` caps them at a fraction of the list.

If a batch still runs out of device memory (XLA's RESOURCE_EXHAUSTED, raised as
:class:`jax.errors.JaxRuntimeError`), the queue halves the batch and relaxes the
structures that were in flight again from their input geometry; finished results
stay, and later batches of that padded size start no larger. In float64 a
structure's result does not depend on its batch (below), so the retry changes
no result, only the time; a structure that does not fit alone raises the error.

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
size compiles once. That is the default on a CPU only: on an accelerator a
batch costs about what one structure does until the device is saturated, so
the tail of a run costs little in a full batch, while every smaller size would
cost another compilation (tens of seconds for SevenNet-0).

A search relaxes a batch of the same size every generation. With ``batch`` (a fixed
number of slots) and ``bucket=False`` (every structure padded to the input's width) the
shapes stay the same from one ``run`` to the next, and the graph sizes of each padded
size are kept between runs (:class:`~jaxinv.graph.StickyGraph`; ``graph_floor`` gives
generous starting sizes, lowered once after the first run when they overshot), so jit
compiles a few times per search, not once per generation. With several local devices
and a batch that divides evenly, the batch is sharded over them.

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

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.checkpoint import Checkpointer, fingerprint_arrays
from jaxinv.crystal import Crystal, bucket_floor, group_by_bucket
from jaxinv.distributed import shard_batch
from jaxinv.graph import StickyGraph, grown_sizes
from jaxinv.potentials.base import Potential, check_species
from jaxinv.relax.fire import (FAILED_GRAPH, RUNNING, Criteria, FireConfig, RelaxState, coarse_criteria, fire_relaxer,
                               gather_slots, tree_select)

__all__ = ["RelaxQueue", "as_crystal", "PRECISIONS", "MAX_EDGES", "MAX_BATCH", "MEMORY_FRACTION", "device_memory",
           "default_batch_fraction", "is_out_of_memory", "probe_bytes_per_edge"]

PRECISIONS = ("float64", "float32")
MAX_EDGES, MAX_BATCH = 60_000, 128  # default edge budget and slots per batch (a CPU)
MIN_COMPACT = 4  # the smallest batch the running slots are gathered into
MEMORY_FRACTION = 0.7  # of the device's free memory one batch may take (an accelerator)
RESULT_LABELS = ("energy", "stress", "status", "steps")  # what a relaxation writes into Crystal.labels
DENSE_FACTOR = 4.0  # estimated edges above this times a group's median: relaxed in a later pass


def default_batch_fraction() -> float:
    """Largest batch as a fraction of the pending list (module docstring): 1/4 on a CPU, where a
    batch costs the sum of its slots and finished slots must be refilled from the list, 1 on an
    accelerator, where a batch costs about what one structure does."""
    return 0.25 if jax.default_backend() == "cpu" else 1.0


log = logging.getLogger("jaxinv.relax")


def batch_dtype():
    """The float dtype jit will give host float64 arrays (float64 only in x64 mode)."""
    return jnp.asarray(0.0).dtype


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


def device_memory(device=None) -> dict | None:
    """``memory_stats()`` of ``device`` (default: the first local device) when it
    reports a memory limit (GPUs, TPUs); None where it does not (a CPU)."""
    device = jax.local_devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except (NotImplementedError, RuntimeError):  # backends without memory statistics
        return None
    if not stats or not stats.get("bytes_limit"):
        return None
    return stats


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is XLA running out of device memory (RESOURCE_EXHAUSTED)."""
    return isinstance(err, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(err)


def program_bytes(compiled) -> int | None:
    """Device bytes a compiled program needs at once: arguments, outputs (less what
    they share with arguments) and temporaries, from XLA's memory analysis; None
    where the backend gives no analysis."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
             + m.generated_code_size_in_bytes)
    return int(total) if total > 0 else None


_BYTES_PER_EDGE: dict = {}  # (chunk program, padded size, float dtype) -> measured bytes per edge slot


def probe_bytes_per_edge(queue: "RelaxQueue", crystal: Crystal, members, n_slot: int, b: int) -> float | None:
    """Bytes per edge slot of ``queue``'s compiled chunk program, measured by compiling it
    for a probe batch of ``b`` slots holding ``members`` (input rows) padded to ``n_slot``
    atoms, on the queue's graph sizes, and reading XLA's memory analysis. Nothing runs on
    the device. Kept per program, padded size and precision for the process."""
    dtype = batch_dtype()
    key = (queue._chunk, int(n_slot), str(dtype))
    if key in _BYTES_PER_EDGE:
        return _BYTES_PER_EDGE[key]
    members = [int(i) for i in members][:b]
    probe = queue._slot_crystal(crystal, members + [-1] * (b - len(members)), n_slot)
    graph = queue._sizes(n_slot)(probe)
    state = jax.eval_shape(queue._start, probe, graph, queue._criteria(b, dtype))
    total = program_bytes(queue._chunk.lower(queue.potential.params, state, jnp.int32(0)).compile())
    per_edge = None if total is None else total / float(b * graph.capacity)
    _BYTES_PER_EDGE[key] = per_edge
    if per_edge is not None:
        log.info("relaxation program: %.3g MB for %d slots x %d edge slots, %.0f bytes per edge", total / 1e6, b,
                 graph.capacity, per_edge)
    return per_edge


def _results_template(crystal: Crystal) -> Crystal:
    """The inputs, with empty result labels to be filled in as structures finish (the
    input's own labels stay, except those a relaxation writes)."""
    b, n = crystal.batch_size, crystal.n_max
    labels = {k: v for k, v in crystal.labels.items() if k not in RESULT_LABELS}
    labels.update(energy=np.full(b, np.nan), stress=np.zeros((b, 3, 3)), status=np.full(b, -1, np.int32),
                  steps=np.zeros(b, np.int32))
    atom_labels = {k: v for k, v in crystal.atom_labels.items() if k != "forces"}
    atom_labels["forces"] = np.zeros((b, n, 3))
    return crystal.replace(lattice=crystal.lattice.copy(), frac=crystal.frac.copy(), labels=labels,
                           atom_labels=atom_labels)


class RelaxQueue:
    """Relax lists of any length in bucketed, refilled batches; ``run`` returns a Crystal.

    Parameters: ``potential`` (any :class:`~jaxinv.potentials.Potential`),
    ``config`` (:class:`~jaxinv.relax.fire.FireConfig`), ``max_edges`` (edge
    budget per batch on a CPU, and the probe's size on an accelerator),
    ``memory_fraction`` (of the accelerator's free memory a batch may take),
    ``max_batch`` (upper bound on slots; None: 128 on a CPU, memory alone on an
    accelerator; the module docstring gives the whole rule), ``chunk_steps`` (steps between harvests), ``batch_fraction`` (largest
    batch as a fraction of the pending list; None: 1/4 on a CPU, 1 on an
    accelerator), ``compact`` (shrink the batch for the last few running
    structures; None: on a CPU only), ``trajectory`` (keep every accepted frame in
    :attr:`trajectories`), ``checkpoint`` (a directory), ``progress``,
    ``precision`` (float64, the default, makes a structure's result independent
    of its batch, see the module docstring; None keeps the process's setting),
    ``batch`` (a fixed number of slots instead of the edge budget), ``bucket``
    (False: one padded size, the input's width, for all structures) and
    ``graph_floor`` (starting ``(images, capacity)`` of every graph).
    """

    def __init__(self, potential: Potential, config: FireConfig = FireConfig(), max_edges: int = MAX_EDGES,
                 max_batch: int | None = None, chunk_steps: int = 20, batch_fraction: float | None = None,
                 compact: bool | None = None, trajectory: bool = False,
                 checkpoint: str | None = None, checkpoint_every: float = 30.0, progress: bool = True,
                 precision: str | None = "float64", batch: int | None = None, bucket: bool = True,
                 graph_floor: tuple | None = None, memory_fraction: float = MEMORY_FRACTION):
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
        self.precision = precision
        self.potential = potential
        self.config = config = config.for_potential(potential)
        coarse = coarse_criteria(config, potential)
        if coarse:
            log.warning(coarse)
        self.max_edges = int(max_edges)
        self.max_batch = None if max_batch is None else int(max_batch)
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not 0.0 < memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        self.memory_fraction = float(memory_fraction)
        self.oom_limit: dict[int, int] = {}  # padded size -> most slots since a batch of it ran out of memory
        if batch_fraction is None:
            batch_fraction = default_batch_fraction()
        if not 0.0 < batch_fraction <= 1.0:
            raise ValueError(f"batch_fraction must be in (0, 1], got {batch_fraction}")
        self.batch_fraction = float(batch_fraction)
        self.batch = None if batch is None else int(batch)
        self.bucket = bool(bucket)
        self.compact = jax.default_backend() == "cpu" if compact is None else bool(compact)
        self.chunk_steps = int(chunk_steps)
        self.trajectory = bool(trajectory)
        self.trajectories: dict[int, dict] = {}  # input index -> lattice (T,3,3), frac (T,n,3), energy (T,)
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.graph_cutoff = potential.cutoff + config.skin_for(potential.cutoff)
        self.graph_floor = graph_floor
        self.graphs: dict[int, StickyGraph] = {}  # padded size -> graph sizes, kept between runs
        self._start, self._chunk = _compiled(potential.energy_fn, float(potential.cutoff), _static(config),
                                             self.chunk_steps, self.trajectory)
        self.stats = {"graph_regrowths": 0, "chunks": 0, "compactions": 0, "relaxations": 0, "oom_retries": 0,
                      "batch_sizes": []}

    def _criteria(self, b: int, dtype) -> Criteria:
        return Criteria.from_config(self.config, b, dtype)

    # --------------------------------------------------------------- helpers
    def _batch_size(self, crystal: Crystal, members, n_pending: int, n_slot: int | None = None) -> int:
        """Slots of the next batch of ``members`` (input rows of one padded size ``n_slot``,
        ``n_pending`` of them waiting): the rule of the module docstring, the one place
        it is applied. On an accelerator the graph sizes of ``n_slot`` must already hold
        the members (``_run_group`` sizes them first), since the probe compiles on them."""
        members = np.asarray(members, int)
        limit = self.oom_limit.get(n_slot)
        if self.batch is not None:
            return self.batch if limit is None else min(self.batch, limit)
        edges = self._estimated_edges(crystal[members])
        per_structure = max(float(np.percentile(edges, 90)), 1.0)
        by_list = int(np.ceil(self.batch_fraction * n_pending))
        cap = min(by_list, limit or by_list)
        # rounded down on the bucket ladder: fewer distinct batch shapes, each a compilation
        b = bucket_floor(int(np.clip(self.max_edges // per_structure, 1, min(cap, self.max_batch or MAX_BATCH))))
        memory = device_memory()
        if memory is not None:
            n_slot = int(n_slot if n_slot is not None else crystal.n_max)
            per_edge = probe_bytes_per_edge(self, crystal, members, n_slot, b)
            if per_edge is not None:
                free = float(memory["bytes_limit"]) - float(memory.get("bytes_in_use", 0))
                per_slot = per_edge * self._sizes(n_slot).capacity
                b = bucket_floor(int(np.clip(self.memory_fraction * free // per_slot, 1,
                                             min(cap, self.max_batch or cap))))
        return b

    def _estimated_edges(self, c: Crystal) -> np.ndarray:
        """Each structure's edge count estimated from its density: n^2 (4/3) pi r^3 / V."""
        n = c.n_atoms.astype(float)
        return n * n * 4.0 / 3.0 * np.pi * self.graph_cutoff**3 / np.maximum(c.volume, 1e-3)

    def _dense_last(self, crystal: Crystal, members: np.ndarray) -> list[np.ndarray]:
        """``members`` split into the regular ones and, after them, those estimated to need more
        than ``DENSE_FACTOR`` times the median edge count.

        Every slot of a batch is padded to the graph capacity of its densest structure, and
        that capacity only grows. One collapsed cell among generated samples (carbon_24
        diffusion samples reach 0.3 Å^3/atom against 6 for the data: 20x the edges) would
        make every slot of every later batch pay for it. In their own pass, relaxed last,
        they cost only themselves. In float64 a result does not depend on its batch, so the
        split changes no result. Measured on the first 32 of those samples with SevenNet-0,
        one core, cold: 902 s with the split; without it, unfinished at 1,500 s."""
        if len(members) < 2:
            return [members] if len(members) else []
        edges = self._estimated_edges(crystal[members])
        dense = edges > DENSE_FACTOR * np.median(edges)
        return [part for part in (members[~dense], members[dense]) if len(part)]

    def _sizes(self, n_slot: int) -> StickyGraph:
        """The graph sizes of one padded size. They grow with :data:`jaxinv.graph.HEADROOM` when they
        must (neighbor counts change during relaxation, and each new capacity is a new compilation)."""
        if n_slot not in self.graphs:
            self.graphs[n_slot] = StickyGraph(self.graph_cutoff, *(self.graph_floor or ((1, 1, 1), 16)))
        return self.graphs[n_slot]

    def _groups(self, crystal: Crystal) -> dict[int, np.ndarray]:
        if self.bucket:
            return group_by_bucket(crystal.n_atoms)
        return {max(crystal.n_max, 1): np.arange(crystal.batch_size)}

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
        return Crystal(lattice, frac, numbers, mask)

    def _fingerprint(self, crystal: Crystal) -> str:
        cfg = repr(self.config) + self.potential.name + str(self.precision)
        return fingerprint_arrays(crystal.lattice, crystal.frac, crystal.numbers, np.frombuffer(cfg.encode(), np.uint8))

    # ------------------------------------------------------------------ run
    def run(self, inputs) -> Crystal:
        """Relax ``inputs`` (a Crystal, pymatgen structures or ASE atoms); the relaxed
        structures in input order, as a host Crystal with the result labels."""
        if self.precision is None:
            return self._run(inputs)
        with jax.enable_x64(self.precision == "float64"):
            return self._run(inputs)

    def _run(self, inputs) -> Crystal:
        crystal = as_crystal(inputs).pad()  # atoms to the front of each row: slots and results use that layout
        check_species(self.potential, crystal)
        m = crystal.batch_size
        out = _results_template(crystal)
        done = np.zeros(m, bool)
        ckpt = None
        if self.checkpoint:
            ckpt = Checkpointer(self.checkpoint, self._fingerprint(crystal), every_seconds=self.checkpoint_every)
            restored = ckpt.restore()
            if restored is not None:
                saved = {k: np.asarray(v) for k, v in restored[1].items()}
                done[:] = saved["done"]
                out.lattice[:], out.frac[:] = saved["lattice"], saved["frac"]
                out.atom_labels["forces"][:] = saved["forces"]
                for k in RESULT_LABELS:
                    out.labels[k][:] = saved[k]
                log.info("resuming: %d of %d structures already relaxed", int(done.sum()), m)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=m, initial=int(done.sum()), desc="relax", unit="struct")
        step_counter = [ckpt.latest_step or 0] if ckpt else [0]

        def arrays():
            return dict(done=done, lattice=out.lattice, frac=out.frac, forces=out.atom_labels["forces"],
                        **{k: out.labels[k] for k in RESULT_LABELS})

        def save(force=False):
            if ckpt is None:
                return
            step_counter[0] += 1
            if force:
                ckpt.save(step_counter[0], arrays())
            else:
                ckpt.maybe_save(step_counter[0], arrays)

        try:
            for n_slot, members in self._groups(crystal).items():
                for part in self._dense_last(crystal, np.array([i for i in members if not done[i]], int)):
                    self._run_group(crystal, n_slot, deque(int(i) for i in part), out, done, bar, save)
            save(force=True)
        finally:
            if bar is not None:
                bar.close()
            if ckpt is not None:
                ckpt.close()
        for sizes in self.graphs.values():
            if sizes.tighten():  # after the first run: drop what a generous floor overshot
                log.info("graph capacity lowered to %d edges", sizes.capacity)
        self.stats["relaxations"] += m
        return out

    def _run_group(self, crystal, n_slot, pending, out, done, bar, save):
        sizes = self._sizes(n_slot)
        # size the graph for the whole group up front, so refills rarely recompile
        sizes(crystal[np.asarray(list(pending))])
        while pending:
            b = self._batch_size(crystal, np.asarray(list(pending)), len(pending), n_slot)
            slots: list[int] = []  # filled in place, so that an error leaves what was in flight
            try:
                self._run_batch(crystal, n_slot, b, slots, pending, out, done, bar, save)
            except jax.errors.JaxRuntimeError as err:
                if not is_out_of_memory(err):
                    raise
                in_flight = [i for i in slots if i >= 0]
                if len(slots) <= 1:
                    err.add_note(f"jaxinv: one structure (input {in_flight}) alone does not fit in device memory")
                    raise
                self._shrink(n_slot, len(slots), in_flight, pending)

    def _shrink(self, n_slot: int, b: int, in_flight: list[int], pending: deque):
        """After an out-of-memory error in a batch of ``b`` slots: halve the batch for this
        padded size and queue the structures that were in flight again, first, to restart
        from their input geometry (finished ones keep their results)."""
        self.oom_limit[n_slot] = max(1, min(self.oom_limit.get(n_slot, b), b) // 2)
        self.stats["oom_retries"] += 1
        pending.extendleft(reversed(in_flight))
        for i in in_flight:
            self.trajectories.pop(i, None)  # frames of the abandoned attempt
        log.warning("out of device memory with %d slots of %d atoms: %d structures restart in batches of %d",
                    b, n_slot, len(in_flight), self.oom_limit[n_slot])

    def _run_batch(self, crystal, n_slot, b, slots, pending, out, done, bar, save):
        """Relax ``pending`` in a batch of ``b`` slots, refilled until the list is empty."""
        params = self.potential.params
        sizes = self._sizes(n_slot)
        slots[:] = [pending.popleft() if pending else -1 for _ in range(b)]
        self.stats["batch_sizes"].append(b)
        batch = self._slot_crystal(crystal, slots, n_slot)
        graph = sizes(batch)
        batch, graph = shard_batch((batch, graph))
        # slots start fresh: the first step evaluates them, so starting and refilling cost no extra evaluation
        state = self._start(batch, graph, self._criteria(b, batch_dtype()))
        while True:
            if all(i < 0 for i in slots) and not pending:
                return
            free = [k for k, i in enumerate(slots) if i < 0]
            if free and pending:
                state = self._refill(state, slots, free, pending, crystal, n_slot)
            elif self.compact and not pending:
                state, slots[:] = self._compacted(state, slots)
            occupied = sum(i >= 0 for i in slots)
            # leave the loop as soon as a slot can be refilled (or the batch compacted), so that
            # finished slots do not ride along, evaluated for nothing, to the end of the chunk
            min_running = occupied - 1 if pending else (len(slots) // 4 if self.compact else 0)
            # one sharding in, whatever refill, regrowth or compaction built on the host:
            # with several devices each new input sharding would be another compilation
            state = shard_batch(state)
            state, frames, _ = self._chunk(params, state, jnp.int32(min(min_running, occupied - 1)))
            self.stats["chunks"] += 1
            sizes.saw(state.graph.n_edges)  # what the graphs rebuilt inside the step needed
            if bool(np.any(np.asarray(state.needs_graph))):
                state = self._regrow(state, sizes)
            if self._harvest(state, slots, out, done, frames, bar):
                save()  # only when something new has finished

    def _compacted(self, state: RelaxState, slots: list[int]):
        """The running slots gathered into a batch a quarter the size or smaller, once at most a
        quarter of the slots still run (finished slots would otherwise be evaluated every step).

        Never below :data:`MIN_COMPACT` slots: each smaller batch is one more program to
        compile (14-35 s for SevenNet-0 on a CPU), while the last few stragglers of a batch
        of 4 save a few milliseconds per step (NaCl, SevenNet-0: 13.7 ms for 4 slots)."""
        running = [k for k, i in enumerate(slots) if i >= 0]
        b = len(slots)
        if not running or 4 * len(running) > b or b <= MIN_COMPACT:
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
                                          (current.lattice, current.frac, current.numbers, current.mask))))
        graph = self._sizes(n_slot)(mixed)
        new = self._start(mixed, graph, self._criteria(len(slots), batch_dtype()))
        # one fresh graph for every slot (it is valid for the continuing ones too)
        nb = state.neighbors
        state = state.replace(neighbors=nb.replace(graph=graph, frac=jnp.asarray(mixed.frac, nb.frac.dtype),
                                                   lattice=jnp.asarray(mixed.lattice, nb.lattice.dtype)))
        return tree_select(jnp.asarray(changed), new, state)

    def _regrow(self, state: RelaxState, sizes: StickyGraph) -> RelaxState:
        """Rebuild the graph on the host with room for every structure, outside jit."""
        self.stats["graph_regrowths"] += 1
        host = jax.tree_util.tree_map(np.asarray, state.crystal)
        c = Crystal(host.lattice.astype(np.float64), host.frac.astype(np.float64), host.numbers, host.mask)
        # sized for the step that overflowed, not only for the geometry it was rejected back to
        sizes.at_least(*grown_sizes(state.graph, state.neighbors.lattice, self.graph_cutoff,
                                    np.asarray(state.status) == RUNNING))
        graph = sizes(c)
        status = np.asarray(state.status).copy()
        hopeless = np.asarray(graph.image_overflow) & (status == RUNNING)
        status[hopeless] = FAILED_GRAPH  # needs more than MAX_IMAGES images: the cell has collapsed
        log.info("graph regrown: capacity %d, images %s", graph.capacity, graph.images)
        nb = state.neighbors
        return state.replace(neighbors=nb.replace(graph=graph, frac=state.crystal.frac, lattice=state.crystal.lattice,
                                                  needs_graph=jnp.zeros_like(nb.needs_graph)),
                             status=jnp.asarray(status))

    def _harvest(self, state, slots, out: Crystal, done: np.ndarray, frames, bar):
        status = np.asarray(state.status)
        finished = [k for k, i in enumerate(slots) if i >= 0 and status[k] != RUNNING]
        if frames and self.trajectory:
            self._record_frames(frames, slots)
        if not finished:
            return 0
        lattice, frac, energy, forces, stress, steps = jax.device_get(
            (state.crystal.lattice, state.crystal.frac, state.energy, state.forces, state.stress, state.steps))
        n = out.n_max
        for k in finished:
            i = slots[k]
            nk = min(frac.shape[1], n)
            out.lattice[i] = lattice[k]
            out.frac[i] = 0.0
            out.frac[i, :nk] = frac[k, :nk]
            out.atom_labels["forces"][i] = 0.0
            out.atom_labels["forces"][i, :nk] = forces[k, :nk]
            out.labels["energy"][i] = energy[k]
            out.labels["stress"][i] = stress[k]
            out.labels["steps"][i] = steps[k]
            out.labels["status"][i] = status[k]
            done[i] = True
            slots[k] = -1
        if bar is not None:
            bar.update(len(finished))
        return len(finished)

    def _record_frames(self, frames, slots):
        lattice, frac, energy, steps = (np.asarray(x) for x in frames)
        for k, i in enumerate(slots):
            if i < 0:
                continue
            traj = self.trajectories.setdefault(i, {"lattice": [], "frac": [], "energy": [], "step": []})
            seen = traj["step"][-1] if traj["step"] else 0
            for t in range(steps.shape[0]):
                if steps[t, k] > seen:  # an accepted step of this slot
                    seen = int(steps[t, k])
                    traj["lattice"].append(lattice[t, k])
                    traj["frac"].append(frac[t, k])
                    traj["energy"].append(float(energy[t, k]))
                    traj["step"].append(seen)

    def trajectory_of(self, index: int, n_atoms: int) -> dict:
        """The accepted frames of input ``index``: lattice (T, 3, 3), frac (T, n, 3), energy (T,)."""
        t = self.trajectories.get(index, {"lattice": [], "frac": [], "energy": []})
        return {"lattice": np.array(t["lattice"]).reshape(-1, 3, 3),
                "frac": np.array(t["frac"]).reshape(len(t["frac"]), -1, 3)[:, :n_atoms],
                "energy": np.array(t["energy"])}


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
