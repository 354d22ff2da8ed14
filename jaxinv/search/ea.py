"""Evolutionary algorithm (USPEX-like) and AIRSS-style random search.

One generation: tournament selection among the best ``parent_fraction`` of the
population, ``oversample`` x ``problem.batch`` candidates made by operators drawn
with ``rates`` (heredity, lattice strain, permutation, soft mutation along a soft
mode of a bond model or of the potential, a fresh random fraction, transmutation for
composition ranges), fingerprint
de-duplication against each other and the population, relaxation of the first
``batch`` novel ones, and (mu + lambda) survival of the best distinct structures
(NSGA-II ranking and crowding when a second objective is set). With
``restart_after``, a population whose best has stood that many generations is
dropped and the search starts again from random structures. Random search
(AIRSS, Pickard & Needs 2011) is the same loop with only the random operator.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np

import jax
import jax.numpy as jnp
from flax import struct

from jaxinv.crystal import Crystal
from jaxinv.search import operators as ops
from jaxinv.search.composition import graph_floor
from jaxinv.search.core import (OP, Algorithm, Candidates, Population, Problem, Search, SearchState,
                                best_per_composition, concat, empty_population, host_seed, hull_fitness, initial_state,
                                next_state, random_candidates, survive, take, to_host)

__all__ = ["EAConfig", "EAState", "Evolutionary", "evolutionary", "random_search", "USPEX_RATES"]

log = logging.getLogger("jaxinv.search")

# fractions of new structures per operator (USPEX defaults: 50% heredity, 20% random,
# the rest split between soft, lattice and permutation mutations)
USPEX_RATES = {"heredity": 0.5, "random": 0.2, "soft": 0.1, "strain": 0.1, "permutation": 0.1}


SOFT_MODELS = ("potential", "bonds")  # whose Hessian gives a soft mutation's mode
RESTART_TOL = 1e-3  # eV/atom: a smaller gain of the population's best counts as no improvement


@dataclass(frozen=True)
class EAConfig:
    population: int = 16
    rates: dict = field(default_factory=lambda: dict(USPEX_RATES))
    parent_fraction: float = 0.6  # only the best 60% breed (USPEX bestFrac)
    tournament: int = 2
    oversample: int = 2  # candidates made per relaxation slot, so duplicates can be replaced
    strain_sigma: float = 0.1
    max_swaps: int = 4
    soft_amplitude: tuple = (0.3, 0.6)  # x bond length: largest atomic displacement of a soft mutation
    # whose Hessian gives soft modes: bonds (ops.bond_soft_mutation: nothing of the potential to compile,
    # a cold SevenNet-0 search's generation 1 comes 15-29 s sooner) | potential (ops.soft_mutation)
    soft_model: str = "bonds"
    transmutation: float = 0.1  # rate added for composition ranges
    # composition ranges: at most this many members of one reduced composition survive while
    # other compositions can fill the population (niching; 0: no cap). Off by default: it moves
    # misses rather than removing them (issue 27, SevenNet-0, phases missed against the union
    # of all runs: Al-Ni 1-5 atoms, 3 seeds of 192 relaxations, 7 with a cap of 2 and 6
    # without; Ga-Ti 2-10 atoms, 1,600 relaxations, 3 and 3 at population 16, 2 and 3 at 32)
    per_composition: int = 0
    # restart from random structures when the population's best has not improved by more than
    # RESTART_TOL for this many generations (0: never). The best found is kept in the search's
    # best and its history; the population is dropped, since once one basin fills it every
    # operator breeds that basin again (issue 27: SevenNet-0 SnS, 3 seeds all ending in the
    # Cmc2_1 stacking 4 meV/atom up, and Cr3Ga in P2_1/m from generation 1 on)
    restart_after: int = 0

    def __post_init__(self):
        if self.soft_model not in SOFT_MODELS:
            raise ValueError(f"soft_model={self.soft_model!r}; choose one of {', '.join(SOFT_MODELS)}")
        if self.per_composition < 0:
            raise ValueError(f"per_composition={self.per_composition}; must be >= 0 (0: no cap)")
        if self.restart_after < 0:
            raise ValueError(f"restart_after={self.restart_after}; must be >= 0 (0: never restart)")

    def __hash__(self):
        return hash(repr(self))


def effective_rates(problem: Problem, config: EAConfig) -> dict:
    """Operator rates with the ones that cannot act removed (permutation on one
    species, strain on a cluster's box) and transmutation added for ranges, normalised."""
    rates = {k: float(v) for k, v in config.rates.items() if v > 0}
    unknown = set(rates) - {"heredity", "random", "soft", "strain", "permutation", "transmutation", "rattle"}
    if unknown:
        raise ValueError(f"unknown operators {sorted(unknown)}")
    if len(problem.space.elements) == 1 or (not problem.space.variable and sum(
            1 for n in problem.space.compositions[0] if n) == 1):
        rates.pop("permutation", None)
    if problem.space.cluster:
        rates.pop("strain", None)
    if problem.space.variable and config.transmutation > 0:
        rates.setdefault("transmutation", config.transmutation)
    if not problem.space.variable:
        rates.pop("transmutation", None)
    total = sum(rates.values())
    if total <= 0:
        raise ValueError("all operator rates are zero")
    return {k: v / total for k, v in rates.items()}


@functools.partial(jax.jit, static_argnames=("n",))
def _draw_operators(key, probs, n):
    """Indices into the operator table of ``n`` children (one program, not op by op)."""
    return jax.random.categorical(key, jnp.log(probs), shape=(n,))


@functools.partial(jax.jit, static_argnames=("n", "tournament"))
def _select_parents(key, fitness, valid, n, fraction, tournament):
    """Tournament selection among the best ``fraction`` of valid members; (n, 2) indices."""
    order = jnp.argsort(jnp.where(valid, fitness, jnp.inf), stable=True)
    n_elig = jnp.maximum(jnp.ceil(fraction * valid.sum()).astype(jnp.int32), 1)
    draws = jax.random.randint(key, (n, 2, tournament), 0, 1 << 30) % n_elig
    return order[jnp.min(draws, axis=-1)]  # lower position = fitter


SOFT_CHUNK = 4  # soft mutations per call (10% of 2 x batch slots draw one: ~3 for a batch of 16)


@functools.lru_cache(maxsize=16)
def _cheap_operators(space, config: EAConfig, rates: tuple):
    """The jitted proposal function of the cheap operators. Cached by its settings, so a
    resumed or repeated search of the same space does not compile it again."""
    table = {
        "heredity": ops.heredity(cluster=space.cluster),
        "strain": ops.lattice_strain(config.strain_sigma),
        "permutation": ops.permutation(config.max_swaps),
        "rattle": ops.rattle(0.1 * space.bond_length),
        "transmutation": ops.transmutation(space.elements),
    }
    names = [k for k, _ in rates if k not in ("random", "soft")]  # soft: see _soft_children

    @jax.jit
    def propose(keys, population: Crystal, first, second, codes, randoms: Crystal):
        """Children of the chosen parents by the drawn cheap operators (pure); slots of the
        random and soft operators keep ``randoms``."""
        mothers, fathers = take(population, first), take(population, second)
        child = randoms
        for name in names:
            made = jax.vmap(table[name])(keys, mothers, fathers)
            use = codes == OP[name]
            child = jax.tree_util.tree_map(
                lambda a, b: jnp.where(use.reshape(use.shape + (1,) * (a.ndim - 1)), a, b), made, child)
        return child

    return propose


@functools.lru_cache(maxsize=16)
def _soft_mutations(energy_fn, cutoff: float, images: tuple, capacity: int):
    """Jitted ``soften(params, amplitude, keys, population, rows)``: soft mutations of
    ``population[rows]``. Cached by static settings (the potential's ``energy_fn``, not the
    potential object, or None for the bond model); the parameters and the amplitude (Å, from
    the composition's bond length) are arguments, so they are never stale and another
    composition of the same shapes reuses the compiled program, in this process or from the
    persistent cache."""

    @jax.jit
    def soften(params, amplitude, keys, population: Crystal, rows):
        size = (amplitude[0], amplitude[1])
        if energy_fn is None:
            op = ops.bond_soft_mutation(cutoff, images, capacity, amplitude=size)
        else:
            op = ops.soft_mutation(energy_fn, params, cutoff, images, capacity, amplitude=size)
        mothers = take(population, rows)
        return jax.vmap(op)(keys, mothers, mothers)

    return soften


def _make_soften(problem: Problem, config: EAConfig, images, capacity):
    """``soften(keys, population, rows)``: soft mutations of ``population[rows]`` with the
    problem's potential or the bond model (``config.soft_model``), ``SOFT_CHUNK`` of them per
    call (one compilation per graph size)."""
    pot = problem.potential
    amplitude = np.array([a * problem.space.bond_length for a in config.soft_amplitude], np.float32)
    bonds = config.soft_model == "bonds"
    soften = _soft_mutations(None if bonds else pot.energy_fn, pot.cutoff, tuple(images), int(capacity))
    return lambda keys, population, rows: soften(pot.params, amplitude, keys, population, rows)


def _soft_children(children: Crystal, codes, keys, population: Crystal, mothers, soften) -> Crystal:
    """Write soft mutations into the (host, writable) ``children`` at the slots whose code is
    soft, computing them only there, ``SOFT_CHUNK`` slots per call.

    The cheap operators run on every slot and a mask picks each slot's result, but a soft
    mutation costs ~17 Hessian-vector products through the potential: run on all slots (10%
    use it) it was most of ``propose``'s time and, with SevenNet-0, a 9-13 GB memory peak.
    A short last chunk repeats its rows rather than compiling another size."""
    rows = np.flatnonzero(codes == OP["soft"])
    for start in range(0, len(rows), SOFT_CHUNK):
        part = rows[start:start + SOFT_CHUNK]
        padded = np.resize(part, SOFT_CHUNK)
        made = soften(keys[jnp.asarray(padded)], population, jnp.asarray(mothers[padded])).to_host()
        for leaf_all, leaf_new in zip((children.lattice, children.frac, children.numbers, children.mask),
                                      (made.lattice, made.frac, made.numbers, made.mask)):
            leaf_all[part] = leaf_new[:len(part)]
    return children


@struct.dataclass
class EAState:
    """The EA's own state: the lowest enthalpy per atom found for each composition of
    the space (the reference of hull fitness in a composition range), and the population's
    best since the last restart with how long it has stood (``EAConfig.restart_after``)."""

    best_per_composition: np.ndarray  # (C,) eV/atom, inf until a composition has been evaluated
    # defaults let a checkpoint written before these fields existed resume
    run_best: np.ndarray = np.float64(np.inf)  # () the population's best fitness since the last restart
    stale: np.ndarray = np.int64(0)  # () int: generations since run_best last improved by RESTART_TOL
    restarts: np.ndarray = np.int64(0)  # () int: restarts so far (EAConfig.restart_after)


@dataclass(frozen=True)
class Evolutionary(Algorithm):
    """The evolutionary algorithm (module docstring) over :class:`EAState`."""

    config: EAConfig = EAConfig()
    state_type = EAState

    def check(self, problem: Problem) -> None:
        effective_rates(problem, self.config)
        if self.config.restart_after and (problem.space.variable or problem.objective is not None):
            # a hull distance or a Pareto front has no single best whose stagnation means a stuck basin
            raise ValueError("restart_after needs one fixed composition and no second objective")

    def first(self, problem: Problem, key) -> Candidates:
        """The user's seeds, then random structures up to the population size."""
        k_rand, _ = jax.random.split(key)
        pieces, n_seed = [], 0
        if problem.seeds is not None:
            pieces.append(problem.seeds)
            n_seed = problem.seeds.batch_size
        n_rand = max(self.config.population - n_seed, 0)
        if n_rand:
            pieces.append(problem.random(n_rand, host_seed(k_rand)))
        crystal = Crystal.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        operator = np.array([OP["seed"]] * n_seed + [OP["random"]] * n_rand)
        return Candidates(crystal, operator, -np.ones((crystal.batch_size, 2)))

    def init(self, problem: Problem, key, evaluated) -> SearchState:
        _, k_next = jax.random.split(key)
        comp_best = best_per_composition(problem, np.full(len(problem.space.compositions), np.inf),
                                         evaluated.population)
        (pop,) = hull_fitness(problem, comp_best, [evaluated.population])
        evaluated = evaluated.replace(population=pop)
        pool = concat(empty_population(problem, self.config.population), pop)
        survivors = self._survive(problem, pool)
        return initial_state(problem, k_next, evaluated, survivors,
                             EAState(comp_best, _best_fitness(survivors)))

    def _survive(self, problem: Problem, pool: Population) -> Population:
        """(mu + lambda) survival; in a composition range, capped per reduced composition."""
        groups = None
        if problem.space.variable and self.config.per_composition > 0:
            ci = problem.composition_indices(pool.crystal)
            groups = np.where(ci >= 0, problem.space.reduced_indices()[ci], -1 - np.arange(len(ci)))
        return survive(pool, self.config.population, problem.fingerprint.threshold, problem.fingerprint.energy_tol,
                       groups, self.config.per_composition)

    def propose(self, problem: Problem, state: SearchState, search: Search) -> tuple[SearchState, Candidates]:
        """Parents by tournament, children by the drawn operators, duplicates dropped,
        random structures drawn only for the random slots that will be relaxed."""
        config = self.config
        _, k_par, k_ops, k_prop, k_rand = jax.random.split(state.key, 5)
        rates = effective_rates(problem, config)
        codes_table = np.array([OP[k] for k in rates])
        probs = np.array(list(rates.values()))
        pop = state.population
        if not np.any(np.asarray(pop.valid)):  # after a restart: a fresh random batch
            return state, random_candidates(problem, k_rand, problem.batch)
        n = config.oversample * problem.batch
        codes = np.asarray(codes_table[np.asarray(_draw_operators(k_ops, probs, n=n))])
        parents = np.asarray(_select_parents(k_par, np.asarray(pop.fitness), np.asarray(pop.valid), n=n,
                                             fraction=config.parent_fraction, tournament=config.tournament))
        is_random = codes == OP["random"]
        randoms = empty_population(problem, n).crystal
        keys = jax.random.split(k_prop, n)
        propose = _cheap_operators(problem.space, config, tuple(rates.items()))
        children = jax.tree_util.tree_map(np.array, propose(keys, pop.crystal, parents[:, 0], parents[:, 1],
                                                            codes, randoms))
        if np.any(codes == OP["soft"]):
            # the relaxation's graph floor (its cutoff has the skin): edges past the potential's
            # cutoff carry nothing, and the shared floor lets compositions whose relaxations
            # share programs share this one too (persistent cache)
            floor = graph_floor(problem.space, search.relaxer.graph_cutoff)
            sizes = search.operator_graph("soft", to_host(pop.crystal), problem.potential.cutoff, floor)
            children = _soft_children(children, codes, keys, pop.crystal, parents[:, 0],
                                      _make_soften(problem, config, *sizes))
        ci = problem.composition_indices(children)
        finite = np.isfinite(children.frac).all((1, 2)) & np.isfinite(children.lattice).all((1, 2))
        # de-duplicate the variation children; random structures are drawn only for the
        # slots that end up relaxed (pyxtal is slow, and they essentially never duplicate)
        ok = np.zeros(n, bool)
        ok[search.pick_novel(children, (ci >= 0) & finite & ~is_random, pop, n)] = True
        chosen = np.flatnonzero(ok | is_random)[:problem.batch]
        fill = chosen[is_random[chosen]]
        if len(fill):
            r = problem.random(len(fill), host_seed(k_rand))
            for leaf_all, leaf_new in zip((children.lattice, children.frac, children.numbers, children.mask),
                                          (r.lattice, r.frac, r.numbers, r.mask)):
                leaf_all[fill] = leaf_new
        ids = np.asarray(pop.ident)
        parent_ids = np.where(codes[:, None] == OP["random"], -1, ids[parents])
        single = np.isin(codes, [OP["strain"], OP["permutation"], OP["soft"], OP["rattle"], OP["transmutation"]])
        parent_ids[:, 1] = np.where(single, -1, parent_ids[:, 1])
        if len(chosen) == 0:  # everything was a duplicate: fall back to fresh random structures
            log.info("generation %d: every candidate duplicated the population; relaxing random ones",
                     int(state.generation) + 1)
            children = problem.random(problem.batch, host_seed(k_rand) + 1)
            chosen = np.arange(problem.batch)
            codes = np.full(problem.batch, OP["random"])
            parent_ids = -np.ones((problem.batch, 2), np.int64)
        return state, Candidates(take(children, chosen), codes[chosen], parent_ids[chosen])

    def select(self, problem: Problem, state: SearchState, evaluated) -> SearchState:
        """Hull fitness (composition ranges), then (mu + lambda) survival of distinct structures."""
        key = jax.random.split(state.key, 5)[0]
        comp_best = best_per_composition(problem, state.algorithm.best_per_composition, evaluated.population)
        pop, new = hull_fitness(problem, comp_best, [state.population, evaluated.population])
        evaluated = evaluated.replace(population=new)
        survivors = self._survive(problem, concat(pop, new))
        previous = state.algorithm
        run_best, stale, restarts = _best_fitness(survivors), np.int64(0), previous.restarts
        if not run_best < previous.run_best - RESTART_TOL:
            run_best, stale = previous.run_best, np.int64(previous.stale + 1)
        if self.config.restart_after and stale >= self.config.restart_after:
            log.info("generation %d: no gain over %.4f eV/atom for %d generations; restarting from random "
                     "structures", int(state.generation) + 1, float(run_best), int(stale))
            survivors = empty_population(problem, self.config.population)
            run_best, stale, restarts = np.float64(np.inf), np.int64(0), np.int64(restarts + 1)
        return next_state(state, key, evaluated, survivors, EAState(comp_best, run_best, stale, restarts))


def _best_fitness(pop: Population) -> np.ndarray:
    return np.float64(np.min(np.where(np.asarray(pop.valid), np.asarray(pop.fitness), np.inf)))


def evolutionary(problem: Problem, config: EAConfig = EAConfig(), name: str = "ea") -> Search:
    """An evolutionary search (see the module docstring)."""
    return Search(Evolutionary(config), problem, name)


def random_search(problem: Problem, population: int = 16, name: str = "random") -> Search:
    """AIRSS-style random search: every step relaxes ``problem.batch`` fresh random
    (symmetric, pyxtal) structures; the population keeps the best distinct ones. It is
    the EA with the random operator only (its state is an :class:`EAState`)."""
    return evolutionary(problem, EAConfig(population=population, rates={"random": 1.0}, oversample=1), name)
