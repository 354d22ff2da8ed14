"""``jaxinv.relax``: relax structures with any jaxinv potential, in batches."""
from __future__ import annotations

from jaxinv.potentials.base import Potential
from jaxinv.relax.fire import GPA, FireConfig
from jaxinv.relax.queue import RelaxQueue, RelaxResult

__all__ = ["relax"]


def relax(structures, potential: Potential, fmax: float = 0.05, stress_tol: float = 0.005,
          max_steps: int = 500, pressure_gpa: float = 0.0, cell: str = "frechet", criterion: str = "stress",
          min_bond_fraction: float = FireConfig.min_bond_fraction, trajectory: bool = False,
          checkpoint: str | None = None, progress: bool = True, precision: str = "float64",
          **queue_options) -> list[RelaxResult]:
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
    (``failed_collapse``). Results come back in input order; failures are
    flagged in ``result.status``, never raised. ``precision='float64'`` (the
    default) makes each result independent of the batch it ran in; ``'float32'``
    is about 2.5x faster for SevenNet-0 on a CPU but lets float32 rounding, which
    depends on the batch, steer FIRE (see :mod:`jaxinv.relax.queue`).

    ``queue_options`` go to :class:`~jaxinv.relax.queue.RelaxQueue`
    (``max_edges``, ``max_batch``, ``chunk_steps``, ``checkpoint_every``).
    """
    config = FireConfig(fmax=fmax, stress_tol=stress_tol, max_steps=max_steps, pressure=pressure_gpa * GPA,
                        cell=cell, criterion=criterion, min_bond_fraction=min_bond_fraction)
    queue = RelaxQueue(potential, config, trajectory=trajectory, checkpoint=checkpoint, progress=progress,
                       precision=precision, **queue_options)
    return queue.run(structures)
