"""Local relaxation of a search's candidates, through the library's one relaxation driver.

A search relaxes a batch of the same size every generation, so its
:class:`~jaxinv.relax.RelaxQueue` keeps shapes fixed for its whole life: a fixed number
of slots, every structure padded to the space's ``n_max`` (``bucket=False``), and graph
sizes that start from the space's generous :func:`~jaxinv.search.composition.graph_floor`,
only grow, and are lowered once after the first generation if they overshot more than twice. jit then
compiles a few times per run, not once per generation.

Slots: on an accelerator, one per structure of the generation (a batch costs about what
one structure does). On a CPU a batch costs the sum of its slots, and a finished slot is
evaluated every step until it is refilled, so a generation of ``batch`` structures runs
through a quarter as many slots (the queue's :func:`~jaxinv.relax.queue.default_batch_fraction`),
refilled from the generation's list as they finish. The FIRE step counts of one generation
spread from 1 to ``max_steps`` (ZnCO3 with SevenNet-0: 3,948 steps in all for 16 random
structures, 4 of them at the 500-step cap): 16 slots pay 16 x 500 slot-steps, 4 refilled
slots about the sum. Measured on one core, cold, ZnCO3's first generation came at 82 s
instead of 128 s and each later one took 63 s instead of 102 s (issue 27).

The batch keeps its size to the end of each generation (no ``compact``, on a CPU too):
gathering the last running structures into fewer slots is a second relaxation program,
which on one CPU core cost a cold SevenNet-0 search of GaP 22 s of its first generation
(first batch at 73 s), for 10% per generation afterwards (13.6 s against 15.0 s, issue 27).

Searches run in the process's float precision (float32 unless x64 is on): relaxations
from random starts are compared by enthalpy to meV/atom, far above float32's batch noise.
"""
from __future__ import annotations

import numpy as np

import jax

from jaxinv.crystal import Crystal
from jaxinv.potentials.base import Potential
from jaxinv.relax.fire import FAILED_NAN, FireConfig
from jaxinv.relax.queue import RelaxQueue, default_batch_fraction

__all__ = ["search_relaxer", "enthalpy_per_atom"]


def search_relaxer(potential: Potential, config: FireConfig, batch: int, graph_floor: tuple,
                   chunk_steps: int = 50, compact: bool | None = False, slots: int | None = None) -> RelaxQueue:
    """The relaxation driver of a search whose generations hold ``batch`` structures: ``slots``
    fixed slots of one padded size (None: ``batch`` times the queue's default batch fraction,
    module docstring, rounded up to a whole multiple of the process's devices), graph sizes
    from ``graph_floor`` = ``(images, capacity)``; ``compact`` off (module docstring; None:
    the queue's default, on for a CPU)."""
    if slots is None:  # whole multiples of the devices, so that a batch still splits over them
        devices = jax.local_device_count()
        slots = devices * max(1, int(np.ceil(batch * default_batch_fraction() / devices)))
    return RelaxQueue(potential, config, chunk_steps=chunk_steps, compact=compact, progress=False, precision=None,
                      batch=int(slots), bucket=False, graph_floor=graph_floor)


def enthalpy_per_atom(relaxed: Crystal, pressure: float) -> np.ndarray:
    """(E + P V) / n_atoms in eV/atom of relaxed structures; inf for failed relaxations (a
    collapse, NaN, a runaway cell, isolated atoms), so that they never rank."""
    energy = np.asarray(relaxed.labels["energy"], np.float64)
    n = np.maximum(relaxed.n_atoms, 1)
    enthalpy = (energy + pressure * relaxed.volume) / n
    failed = (np.asarray(relaxed.labels["status"]) >= FAILED_NAN) | ~np.isfinite(enthalpy)
    return np.where(failed, np.inf, enthalpy)

