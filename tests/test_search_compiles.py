"""Later generations of a search reuse the executables of the first ones (issue 27).

On one CPU core a cold SevenNet-0 search spent 22 s of its first generation compiling a
second relaxation program and, before the fixes, compiled a program per leaf for host
bookkeeping. Here a cheap problem (Lennard-Jones crystal) runs a few generations with
every operator, soft mutation included, and every lowering to XLA is counted through
``jax.monitoring`` (lowering, not backend compilation, so a hit in the persistent XLA
cache still counts): after the first step, further steps must lower nothing but the
host-side neighbor search of a grown image box.
"""
import jax
import numpy as np
from jax._src import dispatch, monitoring

from jaxinv.potentials import lennard_jones
from jaxinv.relax import FireConfig
from jaxinv.search import EAConfig, Problem, SearchSpace, evolutionary

LJ = lennard_jones(sigma=1.0, epsilon=1.0, species=None, cutoff=2.5, truncation="shift")
# every operator of a fixed composition, soft mutation frequent enough to be drawn in every generation
RATES = {"heredity": 0.3, "random": 0.1, "soft": 0.3, "strain": 0.15, "permutation": 0.15}


class Lowerings:
    """Names of the functions lowered to XLA while the block runs."""

    def __enter__(self):
        self.names = []
        monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT:
            self.names.append(kwargs.get("fun_name", "?"))

    def __exit__(self, *exc):
        monitoring.unregister_event_duration_listener(self._listen)


def test_later_generations_compile_nothing():
    space = SearchSpace.fixed("Ar2Kr2", bond_length=2 ** (1 / 6), min_distance=0.85, volume_per_atom=1.2)
    problem = Problem(space, LJ, FireConfig(fmax=0.02, max_steps=300), batch=8)
    search = evolutionary(problem, EAConfig(population=8, rates=RATES))
    with Lowerings() as first:
        state = search.init(jax.random.PRNGKey(3))
        state = search.step(state)
    assert first.names  # the counter sees compilations at all
    with Lowerings() as later:
        for _ in range(3):
            state = search.step(state)
    assert int(state.generation) == 4 and np.isfinite(float(state.best.enthalpy[0]))
    # the one exception: the host-side neighbor search (jaxinv.graph._candidates, about 0.5 s to
    # compile) is static in its image box, which a sticky graph grows when a new cell needs more
    # images; the programs that consume the graphs keep their shapes
    assert [n for n in later.names if n != "jit(_candidates)"] == [], f"later generations compiled {later.names}"
