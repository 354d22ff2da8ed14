"""Global optimisation of crystal structures (crystal structure prediction and targeted search).

The whole population is one padded :class:`~jaxinv.crystal.Crystal` batch:
variation operators are ``vmap``-ed pure functions, fingerprints and duplicate
tests are single jitted matrix operations, and candidates are relaxed together
in one fixed-shape batch. Each algorithm is a small class of host functions
(``first``, ``init``, ``propose``, ``select``) over its own typed state
(``EAState``, ``PSOState``, ``MonteCarloState``, ``MinimaHoppingState``);
:class:`~jaxinv.search.core.Search` is the one driver that runs them and owns
the relaxer.

    from jaxinv.search import SearchSpace, Problem, evolutionary, run_search
    problem = Problem(SearchSpace.fixed("Si8"), load_potential("sw_si"), batch=16)
    state = run_search(evolutionary(problem), max_relaxations=200, out_dir="out/si8")

Modules: :mod:`~jaxinv.search.composition` (what to search),
:mod:`~jaxinv.search.seeds` (random symmetric structures, user seeds),
:mod:`~jaxinv.search.operators` (variation), :mod:`~jaxinv.search.fingerprint`
(duplicates), :mod:`~jaxinv.search.pareto` (NSGA-II),
:mod:`~jaxinv.search.evaluate` (batched relaxation), :mod:`~jaxinv.search.core`
(shared state, survival and the driver), algorithms in :mod:`~jaxinv.search.ea` (EA, random
search), :mod:`~jaxinv.search.pso` (CALYPSO-style PSO) and
:mod:`~jaxinv.search.walkers` (basin hopping, simulated annealing, minima
hopping), and :mod:`~jaxinv.search.run` (checkpoints, history, plot).
"""
import dataclasses

from jaxinv.search.composition import SearchSpace, parse_formula
from jaxinv.search.core import (OPERATORS, Algorithm, FingerprintConfig, Population, Problem, Search,
                                SearchState)
from jaxinv.search.ea import USPEX_RATES, EAConfig, EAState, Evolutionary, evolutionary, random_search
from jaxinv.search.pareto import crowding_distance, nsga2_order, pareto_ranks
from jaxinv.search.pso import ParticleSwarm, PSOConfig, PSOState, particle_swarm
from jaxinv.search.run import run_search
from jaxinv.search.walkers import (ANNEALING, MCConfig, MHConfig, MinimaHopping, MinimaHoppingState, MonteCarlo,
                                   MonteCarloState, basin_hopping, minima_hopping, simulated_annealing)

__all__ = ["SearchSpace", "parse_formula", "OPERATORS", "Algorithm", "FingerprintConfig", "Population", "Problem",
           "Search", "SearchState", "USPEX_RATES", "EAConfig", "EAState", "Evolutionary", "evolutionary",
           "random_search", "crowding_distance", "nsga2_order", "pareto_ranks", "PSOConfig", "PSOState",
           "ParticleSwarm", "particle_swarm", "run_search", "MCConfig", "MonteCarloState", "MonteCarlo", "MHConfig",
           "MinimaHoppingState", "MinimaHopping", "ANNEALING", "basin_hopping", "minima_hopping",
           "simulated_annealing", "ALGORITHMS", "make_search"]

# name -> (factory, its config: the defaults that options replace; None: random_search's keywords)
ALGORITHMS = {
    "ea": (evolutionary, EAConfig()),
    "random": (random_search, None),
    "pso": (particle_swarm, PSOConfig()),
    "basin_hopping": (basin_hopping, MCConfig()),
    "annealing": (simulated_annealing, ANNEALING),
    "minima_hopping": (minima_hopping, MHConfig()),
}


def make_search(name: str, problem: Problem, **options) -> Search:
    """An algorithm by name (``ALGORITHMS``) with its config fields as keyword options."""
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    factory, config = ALGORITHMS[name]
    if config is None:
        return factory(problem, **options)
    if "soft_amplitude" in options:
        options["soft_amplitude"] = tuple(options["soft_amplitude"])
    return factory(problem, dataclasses.replace(config, **options))
