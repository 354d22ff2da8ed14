"""Pieces every search algorithm shares, and :class:`Search`, the one host driver that runs them.

An algorithm is a small class of host functions over a typed state, as optax's
``scale_by_adam`` sits beside ``ScaleByAdamState``: its own variables are one
``flax.struct`` dataclass (:class:`~jaxinv.search.ea.EAState`,
:class:`~jaxinv.search.pso.PSOState`, :class:`~jaxinv.search.walkers.MonteCarloState`,
:class:`~jaxinv.search.walkers.MinimaHoppingState`) held in ``SearchState.algorithm``,
and it has four functions (:class:`Algorithm`)::

    first(problem, key) -> Candidates                   the structures relaxed first
    init(problem, key, evaluated) -> SearchState
    propose(problem, state, search) -> (state, Candidates)   variation and de-duplication
    select(problem, state, evaluated) -> SearchState         fitness, acceptance, survival

None of them relaxes anything. :class:`Search` owns the relaxer, the fingerprint
graphs and the graph sizes of compiled operators, and relaxes every batch in one
method, :meth:`Search.evaluate`::

    search = evolutionary(problem, EAConfig())   # Search(Evolutionary(EAConfig()), problem, "ea")
    state = search.init(jax.random.PRNGKey(0))
    for _ in range(20):
        state = search.step(state)   # propose -> evaluate -> select

What compiles: the variation operators (one jitted ``vmap`` over the population),
fingerprints, fingerprint distances, de-duplication and the survival order. A step
itself is host code, not one jitted function: relaxation runs a host loop (graph
regrowth, early exit once a batch has converged), and the algorithms' bookkeeping
is NumPy. Every random draw comes from the PRNG key in the state (host NumPy
generators are seeded from it, :func:`host_seed`), so a state saved after any step
resumes the run exactly.

Fitness is minimised: the enthalpy per atom after relaxation for a fixed
composition, the distance to the convex hull (eV/atom) for a composition range.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

import jax
import jax.numpy as jnp
from flax import struct

from jaxinv.crystal import Crystal
from jaxinv.graph import HEADROOM, StickyGraph, allocate
from jaxinv.potentials.base import Potential, check_species
from jaxinv.relax.fire import FireConfig
from jaxinv.search.composition import SearchSpace, graph_floor
from jaxinv.search.evaluate import enthalpy_per_atom, search_relaxer
from jaxinv.search.fingerprint import compute_fingerprints, novel_mask, unique_mask
from jaxinv.search.pareto import nsga2_order
from jaxinv.search.seeds import random_structures

__all__ = ["OPERATORS", "FingerprintConfig", "Problem", "Population", "Evaluated", "Candidates", "SearchState",
           "Algorithm", "Search", "survive", "empty_population", "concat", "take", "host_seed", "random_candidates",
           "initial_state", "next_state"]

log = logging.getLogger("jaxinv.search")

# operator codes recorded for every evaluated structure (history column "operator")
OPERATORS = ("seed", "random", "heredity", "strain", "permutation", "soft", "transmutation", "rattle", "pso",
             "md")
OP = {name: k for k, name in enumerate(OPERATORS)}


@dataclass
class FingerprintConfig:
    """Fingerprint range and duplicate thresholds (see :mod:`jaxinv.search.fingerprint`)."""

    r_max: float = 0.0  # Å; 0: 2.5 x the space's bond length
    n_bins: int = 128  # bins of the pair-distance fingerprint
    sigma: float = 0.01  # Gaussian width as a fraction of r_max
    threshold: float = 0.002  # cosine distance below which two structures may be duplicates
    energy_tol: float = 0.002  # eV/atom: relaxed duplicates must also agree in enthalpy


@dataclass
class Problem:
    """What to search and how to evaluate a structure (a description; the driver,
    :class:`Search`, holds everything built from it).

    ``objective`` is an optional second objective, a function of a host
    :class:`Crystal` batch returning (B,) values to *minimise* (negate a property
    to maximise it); with it, survival is NSGA-II over (fitness, objective).
    ``seeds`` are user or dataset structures placed in the first population.
    """

    space: SearchSpace
    potential: Potential
    relax: FireConfig = field(default_factory=FireConfig)
    batch: int = 16  # structures relaxed per step
    slots: int | None = None  # relaxation slots they run through (None: search_relaxer's rule, a quarter on a CPU)
    fingerprint: FingerprintConfig = field(default_factory=FingerprintConfig)
    objective: Callable[[Crystal], np.ndarray] | None = None
    seeds: Crystal | None = None
    random_options: dict = field(default_factory=dict)  # for seeds.random_crystals (p1_fraction, symmetric)

    def __post_init__(self):
        if self.space.cluster and self.relax.cell != "fixed":
            self.relax = dataclasses.replace(self.relax, cell="fixed")  # a vacuum box must not relax
        z = np.array(self.space.elements)[None]
        check_species(self.potential, Crystal(np.eye(3)[None], np.zeros((1, len(self.space.elements), 3)), z,
                                              np.ones_like(z, bool), {}))

    @property
    def r_max(self) -> float:
        return self.fingerprint.r_max or 2.5 * self.space.bond_length

    @property
    def n_objectives(self) -> int:
        return 1 if self.objective is None else 2

    def random(self, n: int, seed: int) -> Crystal:
        c, _ = random_structures(self.space, n, np.random.default_rng(seed), **self.random_options)
        return c

    def composition_indices(self, crystal: Crystal) -> np.ndarray:
        c = crystal.to_host()
        return np.array([self.space.composition_index(c.numbers[b], c.mask[b]) for b in range(c.batch_size)],
                        np.int64)


@struct.dataclass
class Population:
    """A fixed-size set of evaluated structures, one padded batch (leading axis P)."""

    crystal: Crystal
    energy: jax.Array  # (P,) eV per cell
    enthalpy: jax.Array  # (P,) eV/atom
    fitness: jax.Array  # (P,) minimised; inf when invalid
    objectives: jax.Array  # (P, M): fitness and, in multi-objective runs, the property
    fingerprint: jax.Array  # (P, F)
    ident: jax.Array  # (P,) history id, -1 for empty slots
    valid: jax.Array  # (P,) bool

    @property
    def size(self) -> int:
        return self.valid.shape[0]


@struct.dataclass
class Candidates:
    """Structures an algorithm asks the driver to relax, with where each came from."""

    crystal: Crystal
    operator: np.ndarray  # (K,) index into OPERATORS
    parents: np.ndarray  # (K, 2) history ids of the parents, -1 for none


@struct.dataclass
class Evaluated:
    """The structures relaxed in the last step, as written to the history."""

    population: Population
    operator: jax.Array  # (B,) index into OPERATORS
    parents: jax.Array  # (B, 2) history ids of the parents, -1 for none
    status: jax.Array  # (B,) relaxation status
    steps: jax.Array  # (B,) FIRE steps


@struct.dataclass
class SearchState:
    """State of any search: the population, the PRNG key, counters, the best
    structure found, the last evaluated batch, and ``algorithm``, the algorithm's
    own typed state (:class:`~jaxinv.search.ea.EAState`, ...)."""

    key: jax.Array
    generation: jax.Array  # () int
    relaxations: jax.Array  # () int: local relaxations so far
    next_id: jax.Array  # () int: next history id
    population: Population
    best: Population  # size 1
    evaluated: Evaluated
    algorithm: Any


class Algorithm:
    """A search method (see the module docstring): a frozen dataclass holding its
    config, with host functions over ``SearchState.algorithm`` (of type ``state_type``).
    ``propose`` and ``select`` derive their subkeys from ``state.key`` alike, so
    ``select`` needs nothing from ``propose`` but the state it returns."""

    state_type: ClassVar[type]

    def check(self, problem: Problem) -> None:
        """Raise when this method cannot search ``problem``."""

    def first(self, problem: Problem, key) -> Candidates:
        raise NotImplementedError

    def init(self, problem: Problem, key, evaluated: Evaluated) -> SearchState:
        raise NotImplementedError

    def propose(self, problem: Problem, state: SearchState, search: "Search") -> tuple[SearchState, Candidates]:
        raise NotImplementedError

    def select(self, problem: Problem, state: SearchState, evaluated: Evaluated) -> SearchState:
        raise NotImplementedError


class Search:
    """The host driver of one search: ``init(key) -> state`` and ``step(state) -> state``
    around an :class:`Algorithm`'s functions.

    It owns what a search builds and keeps on the host for its lifetime: the relaxer
    (:meth:`evaluate` is the only place that relaxes), the sticky fingerprint graphs,
    and the graph sizes of compiled operators (:meth:`operator_graph`), which only grow,
    so each operator compiles a few times per search. Compiled functions themselves are
    cached by their static settings (the potential's ``energy_fn``, graph sizes, config),
    never by object id, and take the potential's parameters as arguments.
    """

    def __init__(self, algorithm: Algorithm, problem: Problem, name: str = ""):
        algorithm.check(problem)
        self.algorithm, self.problem, self.name = algorithm, problem, name
        pot, space = problem.potential, problem.space
        cutoff = pot.cutoff + problem.relax.skin_for(pot.cutoff)
        self.relaxer = search_relaxer(pot, problem.relax, problem.batch, graph_floor(space, cutoff), slots=problem.slots)
        self.fingerprint_graphs = StickyGraph(problem.r_max, *graph_floor(space, problem.r_max))
        self._operator_graphs: dict = {}  # operator name -> (images, capacity)

    def init(self, key) -> SearchState:
        evaluated = self.evaluate(self.algorithm.first(self.problem, key), 0)
        return self.algorithm.init(self.problem, key, evaluated)

    def step(self, state: SearchState) -> SearchState:
        state, candidates = self.algorithm.propose(self.problem, state, self)
        return self.algorithm.select(self.problem, state, self.evaluate(candidates, int(state.next_id)))

    def evaluate(self, candidates: Candidates, first_id: int) -> Evaluated:
        """Relax candidates and measure them: energies, fingerprints, the optional
        objective; fitness is the enthalpy per atom (hull distances are filled in by
        :func:`hull_fitness` for composition ranges). History ids count from ``first_id``."""
        problem = self.problem
        relaxed = self.relaxer.run(candidates.crystal.to_host().without_labels())
        crystal = relaxed.without_labels()
        enthalpy = enthalpy_per_atom(relaxed, problem.relax.pressure)
        fp = self.fingerprints(crystal)
        valid = np.isfinite(enthalpy)
        objectives = [enthalpy]
        if problem.objective is not None:
            prop = np.asarray(problem.objective(crystal), np.float64)
            objectives.append(np.where(np.isfinite(prop), prop, np.inf))
            valid &= np.isfinite(prop)
        k = candidates.crystal.batch_size
        pop = Population(crystal, np.asarray(relaxed.labels["energy"], np.float64), enthalpy,
                         np.where(valid, enthalpy, np.inf), np.stack(objectives, -1), fp,
                         first_id + np.arange(k, dtype=np.int64), valid)
        return Evaluated(pop, np.asarray(candidates.operator, np.int64), np.asarray(candidates.parents, np.int64),
                         relaxed.labels["status"], relaxed.labels["steps"])

    def fingerprints(self, crystal: Crystal) -> np.ndarray:
        f = self.problem.fingerprint
        # in chunks of one batch, the last one padded: the relaxed batch and the 2x oversampled
        # candidates share one compiled program
        return compute_fingerprints(crystal, self.problem.space.elements, self.problem.r_max, f.n_bins, f.sigma,
                                    chunk=self.problem.batch, graphs=self.fingerprint_graphs, pad=True)

    def pick_novel(self, candidates: Crystal, valid: np.ndarray, reference: Population, n: int) -> np.ndarray:
        """Indices of up to ``n`` candidates, in order, that duplicate neither each other
        nor a valid member of ``reference`` (fingerprint distance below the threshold).
        This runs before relaxation, so no relaxation is spent on a duplicate."""
        fp = self.fingerprints(candidates)
        thr = self.problem.fingerprint.threshold
        novel = np.asarray(novel_mask(fp, np.asarray(reference.fingerprint), np.asarray(reference.valid), thr))
        keep = np.asarray(unique_mask(fp, np.asarray(valid) & novel, thr))
        return np.flatnonzero(keep)[:n]

    def operator_graph(self, name: str, crystal: Crystal, cutoff: float, start: tuple,
                       headroom: float = HEADROOM) -> tuple[tuple[int, int, int], int]:
        """Static (images, capacity) for the graphs a compiled operator ``name`` builds:
        at least ``start`` and what ``crystal`` needs, never shrinking during this search
        (every new size compiles the operator again)."""
        g = allocate(crystal, cutoff, headroom=headroom)
        images, capacity = self._operator_graphs.get(name, start)
        sizes = tuple(max(a, b) for a, b in zip(images, g.images)), max(capacity, g.capacity)
        self._operator_graphs[name] = sizes
        return sizes


# ------------------------------------------------------------------ pytrees
def take(tree, idx):
    """Rows ``idx`` of every leaf (host or device)."""
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def concat(a, b):
    """Two populations (or any pytrees with matching structure) joined along axis 0, on the
    host. Populations are host bookkeeping: ``jnp.concatenate`` dispatched one small program
    per leaf shape, and the ``take`` that follows one gather each (about 60 compilations, 3 s
    of a cold first generation with SevenNet-0 on one core, issue 27)."""
    return jax.tree_util.tree_map(lambda x, y: np.concatenate([np.asarray(x), np.asarray(y)]), a, b)


def to_host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def empty_population(problem: Problem, size: int) -> Population:
    """``size`` invalid slots (used to pad populations to a fixed shape)."""
    n = problem.space.n_max
    z, m = problem.space.numbers(0)
    f = len(problem.space.elements) * (len(problem.space.elements) + 1) // 2 * problem.fingerprint.n_bins
    box = problem.space.box if problem.space.cluster else 10.0
    crystal = Crystal(np.broadcast_to(box * np.eye(3), (size, 3, 3)).copy(), np.zeros((size, n, 3)),
                      np.broadcast_to(z, (size, n)).copy(), np.broadcast_to(m, (size, n)).copy(), {})
    return Population(crystal, np.zeros(size), np.full(size, np.inf), np.full(size, np.inf),
                      np.full((size, problem.n_objectives), np.inf), np.zeros((size, f)),
                      np.full(size, -1, np.int64), np.zeros(size, bool))


def host_seed(key) -> int:
    """A NumPy seed drawn from a JAX key (host-side randomness stays reproducible)."""
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def random_candidates(problem: Problem, key, n: int) -> Candidates:
    """``n`` random structures (pyxtal) drawn with the first half of ``jax.random.split(key)``:
    the first batch of the algorithms that start from random structures."""
    k_rand, _ = jax.random.split(key)
    return Candidates(problem.random(n, host_seed(k_rand)), np.full(n, OP["random"]), -np.ones((n, 2)))


def initial_state(problem: Problem, key, evaluated: Evaluated, population: Population, algorithm) -> SearchState:
    """The state after the first evaluated batch (generation 0)."""
    k = evaluated.population.size
    return SearchState(key=key, generation=np.int64(0), relaxations=np.int64(k), next_id=np.int64(k),
                       population=population, best=update_best(empty_population(problem, 1), evaluated.population),
                       evaluated=evaluated, algorithm=algorithm)


def next_state(state: SearchState, key, evaluated: Evaluated, population: Population, algorithm) -> SearchState:
    """The state one generation on: counters advanced by the evaluated batch, the best kept."""
    k = evaluated.population.size
    return state.replace(key=key, generation=np.int64(int(state.generation) + 1),
                         relaxations=np.int64(int(state.relaxations) + k), next_id=np.int64(int(state.next_id) + k),
                         population=population, best=update_best(state.best, evaluated.population),
                         evaluated=evaluated, algorithm=algorithm)


# ------------------------------------------------------------- composition
def hull_fitness(problem: Problem, best_per_composition: np.ndarray, pops: list[Population]) -> list[Population]:
    """Replace the fitness of composition-range populations by the distance above
    the convex hull of the best enthalpy found per composition (pymatgen
    ``PhaseDiagram``; every end member must have been evaluated, otherwise the
    enthalpy per atom is kept as the fitness)."""
    if not problem.space.variable:
        return pops
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition, Element

    space = problem.space
    sym = [Element.from_Z(z).symbol for z in space.elements]
    entries = [PDEntry(Composition(dict(zip(sym, comp))), float(e) * sum(comp))
               for comp, e in zip(space.compositions, best_per_composition) if np.isfinite(e)]
    have = {el for en in entries for el in en.composition.elements}
    if len(have) < len(sym) or not any(len(en.composition.elements) == 1 for en in entries):
        return pops
    try:
        pd = PhaseDiagram(entries)
    except Exception as e:  # missing end members: keep enthalpies until they are found
        log.debug("no hull yet: %s", e)
        return pops
    hull = {}
    out = []
    for p in pops:
        c = to_host(p.crystal)
        f = np.array(p.fitness, np.float64, copy=True)
        for b in range(len(f)):
            if not bool(p.valid[b]):
                continue
            ci = space.composition_index(c.numbers[b], c.mask[b])
            if ci not in hull:
                hull[ci] = pd.get_hull_energy_per_atom(Composition(dict(zip(sym, space.compositions[ci]))))
            f[b] = float(p.enthalpy[b]) - hull[ci]
        obj = np.array(p.objectives, copy=True)
        obj[:, 0] = f
        out.append(p.replace(fitness=f, objectives=obj))
    return out


def best_per_composition(problem: Problem, current: np.ndarray, pop: Population) -> np.ndarray:
    """Update the lowest enthalpy per atom seen for each composition of the space."""
    out = np.array(current, np.float64, copy=True)
    ci = problem.composition_indices(pop.crystal)
    for b, k in enumerate(ci):
        if k >= 0 and bool(pop.valid[b]):
            out[k] = min(out[k], float(pop.enthalpy[b]))
    return out


# ----------------------------------------------------------------- survival
def _order(objectives, fitness, valid):
    if objectives.shape[-1] == 1:
        return jnp.argsort(jnp.where(valid, fitness, jnp.inf), stable=True)
    return nsga2_order(objectives, valid)


def survive(pool: Population, size: int, threshold: float, energy_tol: float, groups: np.ndarray | None = None,
            per_group: int = 0) -> Population:
    """The best ``size`` distinct members of ``pool``.

    Members are ordered by fitness (NSGA-II rank and crowding with two
    objectives); a member within ``threshold`` (fingerprint) and ``energy_tol``
    (eV/atom) of a better kept one is a duplicate and dropped. With ``groups``
    ((len(pool),) labels) and ``per_group`` > 0, at most ``per_group`` members of a
    group survive while members of other groups are left to fill the population
    (niching: a hull search keeps compositions off the current hull breeding).
    Missing members are invalid slots. The order is one jitted function; the gather
    and the niche cap are on the host.
    """
    idx, keep = _survive_order(pool, threshold, energy_tol)
    idx, keep = np.asarray(idx), np.asarray(keep)
    if groups is not None and per_group > 0:
        idx, keep = _cap_groups(idx, keep, np.asarray(groups)[idx], per_group)
    idx, keep = idx[:size], keep[:size]
    out = to_host(take(pool, idx))
    return out.replace(valid=keep & out.valid, fitness=np.where(keep, out.fitness, np.inf))


def _cap_groups(idx: np.ndarray, keep: np.ndarray, groups: np.ndarray, per_group: int):
    """Reorder a survival order (kept members first, best first): each group's best
    ``per_group`` kept members, then the other kept members, then the dropped ones,
    each part in its former order."""
    rank = np.zeros(len(idx), np.int64)  # how many better kept members share the group
    seen: dict[int, int] = {}
    for i in np.flatnonzero(keep):
        rank[i] = seen.get(int(groups[i]), 0)
        seen[int(groups[i])] = rank[i] + 1
    part = np.where(~keep, 2, np.where(rank < per_group, 0, 1))
    order = np.argsort(part, stable=True)
    return idx[order], keep[order]


@jax.jit
def _survive_order(pool: Population, threshold, energy_tol):
    order = _order(pool.objectives, pool.fitness, pool.valid)
    p = take(pool, order)
    keep = unique_mask(p.fingerprint, p.valid, threshold, p.enthalpy, energy_tol)
    # kept members first, in order; then the rest (they become invalid)
    return order[jnp.argsort(~keep, stable=True)], keep[jnp.argsort(~keep, stable=True)]


def update_best(best: Population, pool: Population) -> Population:
    """The single best valid member of ``best`` and ``pool`` (by fitness)."""
    merged = concat(best, pool)
    f = np.where(np.asarray(merged.valid), np.asarray(merged.fitness), np.inf)
    return to_host(take(merged, np.array([int(np.argmin(f))])))
