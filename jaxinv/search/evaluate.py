"""Local relaxation of a search's candidates, through the library's one relaxation driver.

A search relaxes a batch of the same size every generation, so its
:class:`~jaxinv.relax.RelaxQueue` keeps shapes fixed for its whole life: ``batch``
slots, every structure padded to the space's ``n_max`` (``bucket=False``), and graph
sizes that start from the space's generous :func:`~jaxinv.search.composition.graph_floor`,
only grow, and are lowered once after the first generation if they overshot more than twice. jit then
compiles a few times per run, not once per generation. The batch keeps its size to the
end of each generation (no ``compact``, on a CPU too): gathering the last running
structures into 4 slots is a second relaxation program, which on one CPU core cost a cold
SevenNet-0 search of GaP 22 s of its first generation (first batch at 73 s), for 10% per
generation afterwards (13.6 s against 15.0 s, issue 27).

Searches run in the process's float precision (float32 unless x64 is on): relaxations
from random starts are compared by enthalpy to meV/atom, far above float32's batch noise.
"""
from __future__ import annotations

import numpy as np

from jaxinv.crystal import Crystal
from jaxinv.potentials.base import Potential
from jaxinv.relax.fire import FAILED_NAN, FireConfig
from jaxinv.relax.queue import RelaxQueue

__all__ = ["search_relaxer", "enthalpy_per_atom"]


def search_relaxer(potential: Potential, config: FireConfig, batch: int, graph_floor: tuple,
                   chunk_steps: int = 50, compact: bool | None = False) -> RelaxQueue:
    """The relaxation driver of a search: ``batch`` fixed slots of one padded size, graph
    sizes from ``graph_floor`` = ``(images, capacity)``; ``compact`` off (module docstring;
    None: the queue's default, on for a CPU)."""
    return RelaxQueue(potential, config, chunk_steps=chunk_steps, compact=compact, progress=False, precision=None,
                      batch=batch, bucket=False, graph_floor=graph_floor)


def enthalpy_per_atom(relaxed: Crystal, pressure: float) -> np.ndarray:
    """(E + P V) / n_atoms in eV/atom of relaxed structures; inf for failed relaxations (a
    collapse, NaN, a runaway cell, isolated atoms), so that they never rank."""
    energy = np.asarray(relaxed.labels["energy"], np.float64)
    n = np.maximum(relaxed.n_atoms, 1)
    enthalpy = (energy + pressure * relaxed.volume) / n
    failed = (np.asarray(relaxed.labels["status"]) >= FAILED_NAN) | ~np.isfinite(enthalpy)
    return np.where(failed, np.inf, enthalpy)

