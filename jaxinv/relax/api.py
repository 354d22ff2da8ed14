"""``jaxinv.relax``: relax structures with any jaxinv potential, in batches."""
from __future__ import annotations

import numpy as np

from jaxinv.crystal import Crystal
from jaxinv.potentials.base import Potential
from jaxinv.relax.fire import CONVERGED, FAILED_NAN, GPA, STATUS_NAMES, FireConfig
from jaxinv.relax.queue import PRECISIONS, RelaxQueue

__all__ = ["relax", "status_names", "converged", "failed", "energy_per_atom"]


def relax(structures, potential: Potential, fmax: float = FireConfig.fmax, stress_tol: float = FireConfig.stress_tol,
          max_steps: int = FireConfig.max_steps, pressure_gpa: float = 0.0, cell: str = FireConfig.cell,
          criterion: str = FireConfig.criterion, min_bond_fraction: float = FireConfig.min_bond_fraction,
          checkpoint: str | None = None, progress: bool = True, precision: str = PRECISIONS[0],
          **queue_options) -> Crystal:
    """Relax pymatgen structures, ASE atoms or a :class:`~jaxinv.crystal.Crystal`.

    Positions and cell relax together (``cell='frechet'``, as ASE's
    FrechetCellFilter) under an external pressure ``pressure_gpa``; use
    ``cell='fixed'`` for positions only, ``'volume'`` for constant volume or
    ``'shape'`` for constant shape. A structure is converged when ASE's
    FrechetCellFilter test at the same ``fmax`` (eV/Å) passes, both for the
    running filter and for one started at the result, and every stress
    component (plus the pressure) is below ``stress_tol`` (eV/Å^3);
    ``criterion='ase'`` stops exactly where ASE's FIRE + FrechetCellFilter would
    (see :mod:`jaxinv.relax.fire`). A structure with two atoms closer than
    ``min_bond_fraction`` times their covalent-radius sum fails
    (``failed_collapse``).

    Returns the relaxed structures in input order as a host :class:`Crystal`:
    ``labels`` ``energy`` (eV, no P V term), ``stress`` (3x3, eV/Å^3, ASE sign),
    ``status`` (a code; :func:`status_names` gives ``converged``, ``max_steps``,
    ``failed_nan``, ...) and ``steps``, and ``atom_labels["forces"]`` (eV/Å).
    Failures are flagged in the status, never raised. ``.to_structures()`` or
    ``.to_atoms()`` converts the result (ASE atoms carry energy, forces and
    stress). ``precision='float64'`` (the default) makes each result independent
    of the batch it ran in; ``'float32'`` is about 2.5x faster for SevenNet-0 on a
    CPU but lets float32 rounding, which depends on the batch, steer FIRE (see
    :mod:`jaxinv.relax.queue`). Defaults are :class:`FireConfig`'s.

    ``queue_options`` go to :class:`~jaxinv.relax.queue.RelaxQueue`
    (``max_edges``, ``max_batch``, ``chunk_steps``, ``checkpoint_every``, ...;
    use a queue with ``trajectory=True`` to keep every frame).
    """
    config = FireConfig(fmax=fmax, stress_tol=stress_tol, max_steps=max_steps, pressure=pressure_gpa * GPA,
                        cell=cell, criterion=criterion, min_bond_fraction=min_bond_fraction)
    queue = RelaxQueue(potential, config, checkpoint=checkpoint, progress=progress, precision=precision,
                       **queue_options)
    return queue.run(structures)


def status_names(relaxed: Crystal) -> list[str]:
    """The status of each relaxed structure by name (``converged``, ``max_steps``, ``failed_*``)."""
    return [STATUS_NAMES.get(int(s), "unknown") for s in np.asarray(relaxed.labels["status"])]


def converged(relaxed: Crystal) -> np.ndarray:
    """(B,) bool: the relaxation converged."""
    return np.asarray(relaxed.labels["status"]) == CONVERGED


def failed(relaxed: Crystal) -> np.ndarray:
    """(B,) bool: the relaxation failed (NaN, cell, graph, collapse or isolated atoms)."""
    return np.asarray(relaxed.labels["status"]) >= FAILED_NAN


def energy_per_atom(relaxed: Crystal) -> np.ndarray:
    """(B,) eV/atom."""
    return np.asarray(relaxed.labels["energy"]) / np.maximum(relaxed.n_atoms, 1)
