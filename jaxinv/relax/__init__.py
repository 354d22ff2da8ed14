"""Batched variable-cell relaxation: FIRE as a pure init/step pair, an autobatching queue, ``relax()``."""
from jaxinv.relax.api import converged, energy_per_atom, failed, relax, status_names
from jaxinv.relax.cell import CELL_MODES
from jaxinv.relax.fire import (CONVERGED, FAILED_CELL, FAILED_COLLAPSE, FAILED_ENERGY, FAILED_GRAPH, FAILED_ISOLATED,
                               FAILED_NAN, GPA,
                               MAX_STEPS, RUNNING, STATUS_NAMES, Evaluation, FireConfig, FireState, Neighbors,
                               RelaxState, fire_relaxer)
from jaxinv.relax.queue import RelaxQueue

__all__ = ["relax", "status_names", "converged", "failed", "energy_per_atom", "CELL_MODES", "FireConfig", "FireState",
           "Evaluation", "Neighbors", "RelaxState", "fire_relaxer", "RelaxQueue", "GPA",
           "RUNNING", "CONVERGED", "MAX_STEPS", "FAILED_NAN", "FAILED_CELL", "FAILED_GRAPH", "FAILED_COLLAPSE",
           "FAILED_ISOLATED", "FAILED_ENERGY", "STATUS_NAMES"]
