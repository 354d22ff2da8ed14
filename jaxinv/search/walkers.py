"""Walker methods on the energy landscape of local minima: basin hopping,
simulated annealing and minima hopping, with a batch of independent walkers.

* Basin hopping (Wales & Doye, J. Phys. Chem. A 101, 5111 (1997)): each walker
  rattles its current minimum (Gaussian displacements plus a small cell strain),
  relaxes, and accepts the new minimum with the Metropolis rule at temperature T.
* Simulated annealing: the same walk with T lowered geometrically every step
  (annealing over local minima, i.e. Monte-Carlo minimisation with a cooling
  schedule; the Metropolis test compares relaxed enthalpies).
* Minima hopping (Goedecker, J. Chem. Phys. 120, 9911 (2004)): escapes by a short
  molecular-dynamics run at kinetic energy E_kin from the current minimum, then
  relaxation; E_kin grows when the walker falls back into the same minimum or
  into one visited before and shrinks otherwise; a new minimum is accepted when
  it is less than E_diff higher, and E_diff shrinks on acceptance, grows on
  rejection. Visited minima are kept as fingerprints in a fixed-size ring buffer.

All walkers move together: one batched proposal, one batched relaxation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

import jax
import jax.numpy as jnp
from flax import struct

from jaxinv.graph import build_graph
from jaxinv.search import operators as ops
from jaxinv.search.core import (OP, Algorithm, Candidates, Problem, Search, SearchState, initial_state, next_state,
                                random_candidates, to_host)
from jaxinv.search.fingerprint import cosine_distances

__all__ = ["MCConfig", "MonteCarloState", "MonteCarlo", "basin_hopping", "simulated_annealing", "ANNEALING",
           "MHConfig", "MinimaHoppingState", "MinimaHopping", "minima_hopping", "md_escape"]


@dataclass(frozen=True)
class MCConfig:
    walkers: int = 16
    temperature: float = 0.05  # eV per structure (Metropolis on total enthalpy differences)
    cooling: float = 1.0  # T <- cooling * T every step (1: basin hopping)
    min_temperature: float = 1e-4
    rattle: float = 0.35  # x bond length: Gaussian displacement width
    strain: float = 0.05  # cell strain width (crystals)


def _metropolis(key, h_new, h_cur, n_atoms, temperature):
    """Accept with probability min(1, exp(-(H_new - H_cur) / T)), per walker."""
    with np.errstate(invalid="ignore"):  # inf - inf where both are failed relaxations: rejected below
        dh = (h_new - h_cur) * n_atoms
    u = jax.random.uniform(key, dh.shape)
    return np.isfinite(h_new) & ((dh <= 0) | (np.asarray(u) < np.exp(-np.clip(dh, 0, None) / temperature)))


def _walker_candidates(pop, crystal, operator: str) -> Candidates:
    """Each walker's move, with its current minimum as the one parent."""
    w = pop.size
    return Candidates(crystal, np.full(w, OP[operator]), np.stack([np.asarray(pop.ident), -np.ones(w, np.int64)], 1))


def _accept(state, ev, accept):
    pop = to_host(state.population)
    new = to_host(ev.population)
    return jax.tree_util.tree_map(lambda a, b: np.where(accept.reshape((-1,) + (1,) * (np.ndim(a) - 1)), a, b),
                                  new, pop)


@functools.lru_cache(maxsize=16)
def _rattle_moves(bond_length: float, config: MCConfig, cluster: bool):
    return jax.jit(jax.vmap(ops.rattle(config.rattle * bond_length, 0.0 if cluster else config.strain)))


@struct.dataclass
class MonteCarloState:
    """The walkers' own state: each walker's temperature (eV per structure)."""

    temperature: np.ndarray  # (W,)


@dataclass(frozen=True)
class MonteCarlo(Algorithm):
    """Basin hopping (``cooling=1``) or simulated annealing (``cooling<1``) over
    :class:`MonteCarloState`, with ``walkers`` independent walkers."""

    config: MCConfig = MCConfig()
    state_type = MonteCarloState

    def first(self, problem: Problem, key) -> Candidates:
        return random_candidates(problem, key, self.config.walkers)

    def init(self, problem: Problem, key, evaluated) -> SearchState:
        own = MonteCarloState(np.full(self.config.walkers, self.config.temperature))
        return initial_state(problem, jax.random.split(key)[1], evaluated, to_host(evaluated.population), own)

    def propose(self, problem: Problem, state: SearchState, search: Search) -> tuple[SearchState, Candidates]:
        _, k_move, _ = jax.random.split(state.key, 3)
        pop = state.population
        move = _rattle_moves(problem.space.bond_length, self.config, problem.space.cluster)
        moved = to_host(move(jax.random.split(k_move, self.config.walkers), pop.crystal, pop.crystal))
        return state, _walker_candidates(pop, moved, "rattle")

    def select(self, problem: Problem, state: SearchState, evaluated) -> SearchState:
        """The Metropolis test per walker; the temperatures cool."""
        key, _, k_acc = jax.random.split(state.key, 3)
        pop = state.population
        t = np.asarray(state.algorithm.temperature)
        n_atoms = np.asarray(pop.crystal.mask).sum(-1)
        accept = _metropolis(k_acc, np.asarray(evaluated.population.fitness), np.asarray(pop.fitness), n_atoms, t)
        accept |= ~np.asarray(pop.valid) & np.asarray(evaluated.population.valid)
        t = np.maximum(t * self.config.cooling, self.config.min_temperature)
        return next_state(state, key, evaluated, _accept(state, evaluated, accept), MonteCarloState(t))


def monte_carlo(problem: Problem, config: MCConfig = MCConfig(), name: str = "basin_hopping") -> Search:
    """Basin hopping (``cooling=1``) or simulated annealing (``cooling<1``) with ``walkers`` walkers."""
    return Search(MonteCarlo(config), problem, name)


# simulated annealing's defaults: hotter than basin hopping's 0.05 eV, cooling 10% per step
ANNEALING = MCConfig(temperature=0.3, cooling=0.9)


def basin_hopping(problem: Problem, config: MCConfig = MCConfig()) -> Search:
    return monte_carlo(problem, config, "basin_hopping")


def simulated_annealing(problem: Problem, config: MCConfig = ANNEALING) -> Search:
    return monte_carlo(problem, config, "annealing")


# ------------------------------------------------------------ minima hopping
# Edge headroom of the escape's graph (sized by jaxinv.graph.allocate), above jaxinv.graph.HEADROOM
# on purpose: the MD compresses bonds and its graph is rebuilt at fixed sizes with no regrowth, so a
# structure whose graph overflows stops moving; here capacity changes results, not only padding.
ESCAPE_HEADROOM = 1.6


@dataclass(frozen=True)
class MHConfig:
    walkers: int = 16
    ekin: float = 0.3  # eV/atom, initial kinetic energy of an escape
    ediff: float = 0.05  # eV/atom, initial acceptance threshold
    beta_same: float = 1.1  # E_kin factor when the walker fell back into its minimum
    beta_old: float = 1.05  # ... into a minimum visited before
    beta_new: float = 1.0 / 1.05  # ... into a new minimum
    alpha_accept: float = 1.0 / 1.02  # E_diff factor on acceptance
    alpha_reject: float = 1.02
    md_steps: int = 60
    dt: float = 0.05  # time step with unit masses (Å sqrt(mass/eV))
    history: int = 256  # visited minima remembered (ring buffer)


def md_escape(energy_fn, params, cutoff: float, images: tuple, capacity: int, steps: int, dt: float):
    """A pure, vmappable escape move: velocity Verlet with unit masses and the
    cell fixed, from random velocities of kinetic energy ``ekin`` per atom.
    Returns ``fn(key, structure, ekin) -> structure``; the graph is rebuilt inside
    every step with static ``images``/``capacity`` (an overflowing structure stops moving)."""

    def fn(key, first, ekin):
        c = ops.batched(first)
        inv = jnp.linalg.inv(first.lattice)
        m = first.mask[:, None]

        def forces(x):
            cc = c.replace(frac=(x @ inv)[None])
            g = build_graph(cc, cutoff, images, capacity)
            f = -jax.grad(lambda y: energy_fn(params, cc.replace(frac=(y @ inv)[None]), g)[0])(x)
            ok = ~g.overflow[0] & jnp.all(jnp.isfinite(f))
            return jnp.where(m & ok, f, 0.0), ok

        v = jnp.where(m, jax.random.normal(key, first.frac.shape), 0.0)
        v = v - jnp.sum(v, 0) / jnp.maximum(first.mask.sum(), 1)
        v = jnp.where(m, v, 0.0)
        n = jnp.maximum(first.mask.sum(), 1)
        v = v * jnp.sqrt(2.0 * ekin * n / jnp.maximum(jnp.sum(v * v), 1e-12))
        x0 = first.frac @ first.lattice
        f0, _ = forces(x0)

        def body(i, carry):
            x, v, f, alive = carry
            x_new = x + dt * v + 0.5 * dt * dt * f
            f_new, ok = forces(x_new)
            alive = alive & ok
            v_new = v + 0.5 * dt * (f + f_new)
            return (jnp.where(alive, x_new, x), jnp.where(alive, v_new, v), jnp.where(alive, f_new, f), alive)

        x, _, _, _ = jax.lax.fori_loop(0, steps, body, (x0, v, f0, jnp.array(True)))
        return first.replace(frac=jnp.where(m, x @ inv, 0.0))

    return fn


@functools.lru_cache(maxsize=16)
def _escapes(energy_fn, cutoff: float, images: tuple, capacity: int, steps: int, dt: float):
    """Jitted ``escape(params, keys, crystals, ekin)`` over all walkers. Cached by static
    settings (the potential's ``energy_fn``, not the potential object); the parameters are
    an argument, so they are never stale."""

    @jax.jit
    def escape(params, keys, crystals, ekin):
        return jax.vmap(md_escape(energy_fn, params, cutoff, images, capacity, steps, dt))(keys, crystals, ekin)

    return escape


@struct.dataclass
class MinimaHoppingState:
    """The walkers' own state: escape energies, acceptance thresholds, and the minima
    visited so far (a ring buffer of fingerprints and enthalpies)."""

    ekin: np.ndarray  # (W,) eV/atom
    ediff: np.ndarray  # (W,) eV/atom
    visited: np.ndarray  # (history, F) fingerprints
    visited_enthalpy: np.ndarray  # (history,) eV/atom
    n_visited: np.ndarray  # () minima recorded so far (the ring buffer wraps)


@dataclass(frozen=True)
class MinimaHopping(Algorithm):
    """Minima hopping (module docstring) over :class:`MinimaHoppingState`."""

    config: MHConfig = MHConfig()
    state_type = MinimaHoppingState

    def first(self, problem: Problem, key) -> Candidates:
        return random_candidates(problem, key, self.config.walkers)

    def init(self, problem: Problem, key, evaluated) -> SearchState:
        config, w = self.config, self.config.walkers
        f = np.asarray(evaluated.population.fingerprint)
        visited = np.zeros((config.history, f.shape[1]))
        visited_h = np.full(config.history, np.inf)
        visited[:w], visited_h[:w] = f, np.asarray(evaluated.population.enthalpy)
        own = MinimaHoppingState(np.full(w, config.ekin), np.full(w, config.ediff), visited, visited_h,
                                 np.int64(min(w, config.history)))
        return initial_state(problem, jax.random.split(key)[1], evaluated, to_host(evaluated.population), own)

    def propose(self, problem: Problem, state: SearchState, search: Search) -> tuple[SearchState, Candidates]:
        """An MD escape of every walker at its own kinetic energy."""
        config, pot, pop = self.config, problem.potential, state.population
        _, k_md = jax.random.split(state.key)
        images, capacity = search.operator_graph("md_escape", pop.crystal, pot.cutoff, ((1, 1, 1), 16),
                                                 headroom=ESCAPE_HEADROOM)
        escape = _escapes(pot.energy_fn, pot.cutoff, images, capacity, config.md_steps, config.dt)
        moved = to_host(escape(pot.params, jax.random.split(k_md, config.walkers), pop.crystal,
                               np.asarray(state.algorithm.ekin).copy()))
        return state, _walker_candidates(pop, moved, "md")

    def select(self, problem: Problem, state: SearchState, evaluated) -> SearchState:
        """Goedecker's feedback on E_kin and E_diff; new minima join the visited ones."""
        config, own = self.config, state.algorithm
        key, _ = jax.random.split(state.key)
        pop, new = state.population, evaluated.population
        ekin, ediff = np.asarray(own.ekin).copy(), np.asarray(own.ediff).copy()
        thr, tol = problem.fingerprint.threshold, problem.fingerprint.energy_tol
        h_new, h_cur = np.asarray(new.enthalpy), np.asarray(pop.enthalpy)
        same = (np.diag(np.asarray(cosine_distances(new.fingerprint, pop.fingerprint))) < thr) & \
            (np.abs(h_new - h_cur) < tol)
        nv = int(own.n_visited)
        d_old = np.asarray(cosine_distances(new.fingerprint, own.visited))
        seen = np.any((d_old < thr) & (np.abs(h_new[:, None] - own.visited_enthalpy[None]) < tol)
                      & (np.arange(config.history) < nv)[None], axis=1)
        ekin = np.where(same, ekin * config.beta_same,
                        np.where(seen, ekin * config.beta_old, ekin * config.beta_new))
        valid = np.asarray(new.valid)
        accept = valid & ~same & (h_new - h_cur < ediff)
        accept |= ~np.asarray(pop.valid) & valid
        ediff = np.where(~same & valid, np.where(accept, ediff * config.alpha_accept, ediff * config.alpha_reject),
                         ediff)
        visited, visited_h = np.array(own.visited), np.array(own.visited_enthalpy)
        for b in np.flatnonzero(valid & ~same & ~seen):  # remember new minima (ring buffer)
            visited[nv % config.history], visited_h[nv % config.history] = new.fingerprint[b], h_new[b]
            nv += 1
        own = MinimaHoppingState(ekin, ediff, visited, visited_h, np.int64(nv))
        return next_state(state, key, evaluated, _accept(state, evaluated, accept), own)


def minima_hopping(problem: Problem, config: MHConfig = MHConfig(), name: str = "minima_hopping") -> Search:
    return Search(MinimaHopping(config), problem, name)
