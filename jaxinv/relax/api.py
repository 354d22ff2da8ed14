"""``jaxinv.relax``: relax structures with any jaxinv potential, in batches."""
from __future__ import annotations

from jaxinv.potentials.base import Potential
from jaxinv.relax.fire import GPA, FireConfig
from jaxinv.relax.queue import RelaxQueue, RelaxResult

__all__ = ["relax"]


def relax(structures, potential: Potential, fmax: float = 0.05, stress_tol: float = 0.005,
          max_steps: int = 500, pressure_gpa: float = 0.0, cell: str = "frechet", criterion: str = "stress",
          trajectory: bool = False,
          checkpoint: str | None = None, progress: bool = True, **queue_options) -> list[RelaxResult]:
    """Relax pymatgen structures, ASE atoms or a :class:`~jaxinv.crystal.Crystal`.

    Positions and cell relax together (``cell='frechet'``, as ASE's
    FrechetCellFilter) under an external pressure ``pressure_gpa``; use
    ``cell='fixed'`` for positions only, ``'volume'`` for constant volume or
    ``'shape'`` for constant shape. A structure is converged when every atomic
    force is below ``fmax`` (eV/Å) and every stress component (plus the
    pressure) below ``stress_tol`` (eV/Å^3); ``criterion='ase'`` instead stops
    where ASE's FIRE + FrechetCellFilter at the same ``fmax`` would (see
    :mod:`jaxinv.relax.fire`). Results come back in input order;
    failures are flagged in ``result.status``, never raised.

    ``queue_options`` go to :class:`~jaxinv.relax.queue.RelaxQueue`
    (``max_edges``, ``max_batch``, ``chunk_steps``, ``checkpoint_every``).
    """
    config = FireConfig(fmax=fmax, stress_tol=stress_tol, max_steps=max_steps, pressure=pressure_gpa * GPA,
                        cell=cell, criterion=criterion)
    queue = RelaxQueue(potential, config, trajectory=trajectory, checkpoint=checkpoint, progress=progress,
                       **queue_options)
    return queue.run(structures)
