"""Evolutionary algorithm (USPEX-like) and AIRSS-style random search.

One generation: tournament selection among the best ``parent_fraction`` of the
population, ``oversample`` x ``problem.batch`` candidates made by operators drawn
with ``rates`` (heredity, lattice strain, permutation, soft mutation, a fresh
random fraction, transmutation for composition ranges), fingerprint
de-duplication against each other and the population, relaxation of the first
``batch`` novel ones, and (mu + lambda) survival of the best distinct structures
(NSGA-II ranking and crowding when a second objective is set). Random search
(AIRSS, Pickard & Needs 2011) is the same loop with only the random operator.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.graph import allocate
from jaxinv.search import operators as ops
from jaxinv.search.composition import graph_floor
from jaxinv.search.core import (OP, Problem, Search, SearchState, best_per_composition, concat,
                                empty_population, evaluate_candidates, host_seed, hull_fitness, pick_novel,
                                survive, take, to_host, update_best)

__all__ = ["EAConfig", "evolutionary", "random_search", "USPEX_RATES"]

log = logging.getLogger("jaxinv.search")

# fractions of new structures per operator (USPEX defaults: 50% heredity, 20% random,
# the rest split between soft, lattice and permutation mutations)
USPEX_RATES = {"heredity": 0.5, "random": 0.2, "soft": 0.1, "strain": 0.1, "permutation": 0.1}


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
    transmutation: float = 0.1  # rate added for composition ranges

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


def _select_parents(key, fitness, valid, n, fraction, tournament):
    """Tournament selection among the best ``fraction`` of valid members; (n, 2) indices."""
    order = jnp.argsort(jnp.where(valid, fitness, jnp.inf), stable=True)
    n_elig = jnp.maximum(jnp.ceil(fraction * valid.sum()).astype(jnp.int32), 1)
    draws = jax.random.randint(key, (n, 2, tournament), 0, 1 << 30) % n_elig
    return order[jnp.min(draws, axis=-1)]  # lower position = fitter


_PROPOSE_CACHE: dict = {}  # jitted proposal and soft-mutation functions, kept across searches
# (potential, space) -> the largest soft-mutation graph sizes (images, capacity) used so far in this
# process. Every new size recompiles the soft mutation (15-90 s with a machine-learned or long-range
# potential, whose Hessian-vector products it contains), so a search starts from the generous
# ``graph_floor`` sizes the relaxer also starts from, or from the sizes that earlier searches of the
# same problem grew to, instead of growing through them one compilation at a time.
_SOFT_GRAPH_SIZES: dict = {}
SOFT_CHUNK = 4  # soft mutations per call (10% of 2 x batch slots draw one: ~3 for a batch of 16)


def _make_propose(problem: Problem, config: EAConfig, rates: dict):
    """The jitted proposal function of the cheap operators, shared by searches with the same
    space and settings (so a resumed or repeated search does not compile it again)."""
    key = (problem.space, config, tuple(sorted(rates.items())))
    if key not in _PROPOSE_CACHE:
        _PROPOSE_CACHE[key] = _build_propose(problem, config, rates)
    return _PROPOSE_CACHE[key]


def _build_propose(problem: Problem, config: EAConfig, rates: dict):
    space = problem.space
    table = {
        "heredity": ops.heredity(cluster=space.cluster),
        "strain": ops.lattice_strain(config.strain_sigma),
        "permutation": ops.permutation(config.max_swaps),
        "rattle": ops.rattle(0.1 * space.bond_length),
        "transmutation": ops.transmutation(space.elements),
    }
    names = [k for k in rates if k not in ("random", "soft")]  # soft: see _soft_children

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


def _make_soften(problem: Problem, config: EAConfig, images, capacity):
    """Jitted ``soften(keys, population, rows)``: soft mutations of ``population[rows]``,
    ``SOFT_CHUNK`` of them per call (one compilation per graph size)."""
    pot = problem.potential
    key = ("soft", id(pot), pot.energy_fn, problem.space, config, images, capacity)
    if key not in _PROPOSE_CACHE:
        op = ops.soft_mutation(pot.energy_fn, pot.params, pot.cutoff, images, capacity,
                               amplitude=tuple(a * problem.space.bond_length for a in config.soft_amplitude))

        @jax.jit
        def soften(keys, population: Crystal, rows):
            mothers = take(population, rows)
            return jax.vmap(op)(keys, mothers, mothers)

        _PROPOSE_CACHE[key] = soften
    return _PROPOSE_CACHE[key]


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


def evolutionary(problem: Problem, config: EAConfig = EAConfig(), name: str = "ea") -> Search:
    """An evolutionary search as an ``(init, step)`` pair (see the module docstring)."""
    rates = effective_rates(problem, config)
    codes_table = np.array([OP[k] for k in rates])
    probs = np.array(list(rates.values()))
    sizes_key = (id(problem.potential), problem.potential.energy_fn, problem.space)
    images, capacity = _SOFT_GRAPH_SIZES.get(sizes_key, graph_floor(problem.space, problem.potential.cutoff))
    cache: dict = {"images": images, "capacity": capacity}

    def soften_fn(pop_crystal):
        # static graph sizes for the soft mode, only ever growing
        g = allocate(to_host(pop_crystal), problem.potential.cutoff)
        cache["images"] = tuple(max(a, b) for a, b in zip(cache["images"], g.images))
        cache["capacity"] = max(cache["capacity"], g.capacity)
        _SOFT_GRAPH_SIZES[sizes_key] = (cache["images"], cache["capacity"])
        return _make_soften(problem, config, cache["images"], cache["capacity"])

    def init(key) -> SearchState:
        k_rand, k_next = jax.random.split(key)
        p = config.population
        pieces, n_seed = [], 0
        if problem.seeds is not None:
            pieces.append(problem.seeds)
            n_seed = problem.seeds.batch_size
        n_rand = max(p - n_seed, 0)
        if n_rand:
            pieces.append(problem.random(n_rand, host_seed(k_rand)))
        crystal = Crystal.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        operator = np.array([OP["seed"]] * n_seed + [OP["random"]] * n_rand)
        evaluated = evaluate_candidates(problem, crystal, 0, operator, -np.ones((crystal.batch_size, 2)))
        comp_best = best_per_composition(problem, np.full(len(problem.space.compositions), np.inf),
                                         evaluated.population)
        (pop,) = hull_fitness(problem, comp_best, [evaluated.population])
        evaluated = evaluated.replace(population=pop)
        pool = concat(empty_population(problem, p), pop)
        population = survive(pool, p, problem.fingerprint.threshold, problem.fingerprint.energy_tol)
        best = update_best(empty_population(problem, 1), pop)
        return SearchState(key=k_next, generation=np.int64(0), relaxations=np.int64(crystal.batch_size),
                           next_id=np.int64(crystal.batch_size), population=population, best=best,
                           evaluated=evaluated, aux={"comp_best": comp_best})

    def step(state: SearchState) -> SearchState:
        key, k_par, k_ops, k_prop, k_rand = jax.random.split(state.key, 5)
        pop = state.population
        n = config.oversample * problem.batch
        codes = np.asarray(codes_table[np.asarray(jax.random.categorical(k_ops, jnp.log(probs), shape=(n,)))])
        parents = np.asarray(_select_parents(k_par, jnp.asarray(pop.fitness), jnp.asarray(pop.valid), n,
                                             config.parent_fraction, config.tournament))
        is_random = codes == OP["random"]
        randoms = empty_population(problem, n).crystal
        keys = jax.random.split(k_prop, n)
        propose = _make_propose(problem, config, rates)
        children = jax.tree_util.tree_map(np.array, propose(keys, pop.crystal, parents[:, 0], parents[:, 1],
                                                            codes, randoms))
        if np.any(codes == OP["soft"]):
            children = _soft_children(children, codes, keys, pop.crystal, parents[:, 0], soften_fn(pop.crystal))
        ci = problem.composition_indices(children)
        finite = np.isfinite(children.frac).all((1, 2)) & np.isfinite(children.lattice).all((1, 2))
        # de-duplicate the variation children; random structures are drawn only for the
        # slots that end up relaxed (pyxtal is slow, and they essentially never duplicate)
        ok = np.zeros(n, bool)
        ok[pick_novel(problem, children, (ci >= 0) & finite & ~is_random, pop, n)] = True
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
        evaluated = evaluate_candidates(problem, take(children, chosen), int(state.next_id), codes[chosen],
                                        parent_ids[chosen])
        comp_best = best_per_composition(problem, state.aux["comp_best"], evaluated.population)
        pop, new = hull_fitness(problem, comp_best, [pop, evaluated.population])
        evaluated = evaluated.replace(population=new)
        population = survive(concat(pop, new), config.population, problem.fingerprint.threshold,
                             problem.fingerprint.energy_tol)
        k = len(chosen)
        return state.replace(key=key, generation=np.int64(int(state.generation) + 1),
                             relaxations=np.int64(int(state.relaxations) + k),
                             next_id=np.int64(int(state.next_id) + k), population=population,
                             best=update_best(state.best, new), evaluated=evaluated,
                             aux={**state.aux, "comp_best": comp_best})

    return Search(init, step, name, problem)


def random_search(problem: Problem, population: int = 16, name: str = "random") -> Search:
    """AIRSS-style random search: every step relaxes ``problem.batch`` fresh random
    (symmetric, pyxtal) structures; the population keeps the best distinct ones."""
    return evolutionary(problem, EAConfig(population=population, rates={"random": 1.0}, oversample=1), name)
