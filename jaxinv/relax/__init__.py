"""Batched variable-cell relaxation: FIRE as a pure init/step pair, an autobatching queue, ``relax()``."""
from jaxinv.relax.api import relax
from jaxinv.relax.cell import CELL_MODES
from jaxinv.relax.fire import (CONVERGED, FAILED_CELL, FAILED_COLLAPSE, FAILED_GRAPH, FAILED_ISOLATED, FAILED_NAN, GPA,
                               MAX_STEPS, RUNNING, STATUS_NAMES, FireConfig, RelaxState, fire_relaxer)
from jaxinv.relax.queue import RelaxQueue, RelaxResult

__all__ = ["relax", "CELL_MODES", "FireConfig", "RelaxState", "fire_relaxer", "RelaxQueue", "RelaxResult", "GPA",
           "RUNNING", "CONVERGED", "MAX_STEPS", "FAILED_NAN", "FAILED_CELL", "FAILED_GRAPH", "FAILED_COLLAPSE",
           "FAILED_ISOLATED", "STATUS_NAMES"]
