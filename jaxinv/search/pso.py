"""Particle swarm optimisation in the style of CALYPSO (Wang, Lv, Zhu, Ma, PRB 82, 094116 (2010)).

Each particle is a relaxed structure with a velocity in fractional coordinates
and lattice vectors. A step moves every particle by

    v <- w v + c1 r1 (pbest - x) + c2 r2 (gbest - x),    x <- x + v

(fractional differences wrapped to the nearest image, atoms matched slot by slot
within each species), relaxes it, and updates personal and global bests. As in
CALYPSO, the worst ``random_fraction`` of particles, and any particle that
duplicates a better one, are replaced by fresh random structures with zero
velocity. Fixed compositions only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import jax
import jax.numpy as jnp
from flax import struct

from jaxinv.search.core import (OP, Algorithm, Candidates, Population, Problem, Search, SearchState, empty_population,
                                host_seed, initial_state, next_state, random_candidates, take, to_host)
from jaxinv.search.fingerprint import unique_mask

__all__ = ["PSOConfig", "PSOState", "ParticleSwarm", "particle_swarm"]


@dataclass(frozen=True)
class PSOConfig:
    particles: int = 16
    inertia: float = 0.7  # w
    cognitive: float = 1.5  # c1, towards the personal best
    social: float = 1.5  # c2, towards the global best
    max_speed: float = 0.2  # largest fractional step per coordinate
    random_fraction: float = 0.4  # CALYPSO replaces 40% of particles by random ones each generation


@jax.jit
def _move(key, x, v_frac, v_lat, pbest, gbest, w, c1, c2, vmax):
    """PSO update of positions and velocities (pure), batched over particles."""
    k1, k2 = jax.random.split(key)
    r1 = jax.random.uniform(k1, (x.frac.shape[0], 1, 1))
    r2 = jax.random.uniform(k2, (x.frac.shape[0], 1, 1))
    wrap = lambda d: d - jnp.round(d)
    g_frac = jnp.broadcast_to(gbest.frac, x.frac.shape)
    g_lat = jnp.broadcast_to(gbest.lattice, x.lattice.shape)
    v_frac = w * v_frac + c1 * r1 * wrap(pbest.frac - x.frac) + c2 * r2 * wrap(g_frac - x.frac)
    v_frac = jnp.clip(v_frac, -vmax, vmax)
    scale = jnp.linalg.norm(x.lattice, axis=-1, keepdims=True)
    v_lat = w * v_lat + c1 * r1 * (pbest.lattice - x.lattice) + c2 * r2 * (g_lat - x.lattice)
    v_lat = jnp.clip(v_lat, -vmax * scale, vmax * scale)
    m = x.mask[..., None]
    return x.replace(frac=jnp.where(m, x.frac + v_frac, 0.0), lattice=x.lattice + v_lat), \
        jnp.where(m, v_frac, 0.0), v_lat


@struct.dataclass
class PSOState:
    """The swarm's own state: each particle's velocity and its best structure so far."""

    velocity_frac: np.ndarray  # (P, N, 3) fractional coordinates per step
    velocity_lattice: np.ndarray  # (P, 3, 3) Å per step
    personal_best: Population  # (P,)


@dataclass(frozen=True)
class ParticleSwarm(Algorithm):
    """CALYPSO-style particle swarm (module docstring) over :class:`PSOState`."""

    config: PSOConfig = PSOConfig()
    state_type = PSOState

    def check(self, problem: Problem) -> None:
        if problem.space.variable:
            raise ValueError("particle swarm needs a fixed composition (particles are matched atom by atom)")

    def first(self, problem: Problem, key) -> Candidates:
        return random_candidates(problem, key, self.config.particles)

    def init(self, problem: Problem, key, evaluated) -> SearchState:
        p, n = self.config.particles, problem.space.n_max
        pop = to_host(evaluated.population)
        own = PSOState(np.zeros((p, n, 3)), np.zeros((p, 3, 3)), pop)
        return initial_state(problem, jax.random.split(key)[1], evaluated, pop, own)

    def propose(self, problem: Problem, state: SearchState, search: Search) -> tuple[SearchState, Candidates]:
        """Every particle moved; the worst, duplicates and collapsed ones restart at random
        with zero velocity."""
        config, p = self.config, self.config.particles
        _, k_move, k_rand = jax.random.split(state.key, 3)
        pop, own = state.population, state.algorithm
        moved, v_frac, v_lat = _move(k_move, pop.crystal, own.velocity_frac, own.velocity_lattice,
                                     own.personal_best.crystal, take(state.best.crystal, 0), config.inertia,
                                     config.cognitive, config.social, config.max_speed)
        moved = jax.tree_util.tree_map(np.array, moved)  # writable host copies
        v_frac, v_lat = np.array(v_frac), np.array(v_lat)
        # the worst particles, and those duplicating a better one, restart at random
        f = np.where(np.asarray(pop.valid), np.asarray(pop.fitness), np.inf)
        order = np.argsort(f, kind="stable")
        keep = np.asarray(unique_mask(np.asarray(pop.fingerprint)[order], np.asarray(pop.valid)[order],
                                      problem.fingerprint.threshold, np.asarray(pop.enthalpy)[order],
                                      problem.fingerprint.energy_tol))
        restart = np.zeros(p, bool)
        restart[order[~keep]] = True
        restart[order[p - int(round(config.random_fraction * p)):]] = True
        fresh = problem.random(int(restart.sum()), host_seed(k_rand)) if restart.any() else None
        codes = np.full(p, OP["pso"])
        if fresh is not None:
            for a, b in zip((moved.lattice, moved.frac, moved.numbers, moved.mask),
                            (fresh.lattice, fresh.frac, fresh.numbers, fresh.mask)):
                a[restart] = b
            v_frac[restart], v_lat[restart] = 0.0, 0.0
            codes[restart] = OP["random"]
        # moved particles that collapsed onto each other are replaced by random ones too
        ok = np.isfinite(moved.frac).all((1, 2)) & np.isfinite(moved.lattice).all((1, 2))
        novel = np.zeros(p, bool)
        novel[search.pick_novel(moved, ok, empty_population(problem, 1), p)] = True
        if (~novel).any():
            extra = problem.random(int((~novel).sum()), host_seed(k_rand) + 7)
            for a, b in zip((moved.lattice, moved.frac, moved.numbers, moved.mask),
                            (extra.lattice, extra.frac, extra.numbers, extra.mask)):
                a[~novel] = b
            v_frac[~novel], v_lat[~novel] = 0.0, 0.0
            codes[~novel] = OP["random"]
        ids = np.asarray(pop.ident)
        parents = np.stack([ids, np.full(p, int(state.best.ident[0]))], 1)
        parents[codes == OP["random"]] = -1
        own = own.replace(velocity_frac=v_frac, velocity_lattice=v_lat)
        return state.replace(algorithm=own), Candidates(moved, codes, parents)

    def select(self, problem: Problem, state: SearchState, evaluated) -> SearchState:
        """Every particle takes its new structure; personal bests improve or restart."""
        key = jax.random.split(state.key, 3)[0]
        new, own = evaluated.population, state.algorithm
        better = np.asarray(new.fitness) < np.asarray(own.personal_best.fitness)
        better |= np.asarray(evaluated.operator) == OP["random"]  # a restarted particle starts a new personal history
        personal_best = jax.tree_util.tree_map(
            lambda a, b: np.where(better.reshape((-1,) + (1,) * (np.ndim(a) - 1)), a, b), to_host(new),
            to_host(own.personal_best))
        return next_state(state, key, evaluated, to_host(new), own.replace(personal_best=personal_best))


def particle_swarm(problem: Problem, config: PSOConfig = PSOConfig(), name: str = "pso") -> Search:
    return Search(ParticleSwarm(config), problem, name)
