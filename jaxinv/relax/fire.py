"""Batched FIRE relaxation of positions and cell, as a pure ``init``/``step`` pair.

    init_fn, step_fn = fire_relaxer(potential.energy_fn, potential.cutoff, FireConfig(fmax=0.05))
    state = init_fn(params, crystal, graph)      # graph built at cutoff + skin
    state = jax.lax.fori_loop(0, 100, lambda i, s: step_fn(params, s), state)

Every structure of the batch runs its own FIRE (Bitzek et al., PRL 97, 170201
(2006)) with ASE's update rule and defaults, on the generalized coordinates of
:mod:`jaxinv.relax.cell` (ASE ``FrechetCellFilter`` semantics). Structures are
independent: each has its own time step, mixing, convergence test and status,
and a structure that converges, fails or hits the step limit freezes while the
others continue. Padded atoms never move (their forces and velocities are 0).

Convergence is at least as strict as ASE's at the same ``fmax``. With
``criterion="ase"`` a structure stops exactly where ASE's FIRE +
FrechetCellFilter would: every row of the filter's generalized forces (atoms,
and the three cell rows, whose scale is ``V |sigma| / N``) below ``fmax``.
The default, ``criterion="stress"``, also requires the rows that a filter
started afresh at the final geometry would test (the physical forces, and
``V |sigma + P| / N``), so that re-checking a result with ASE never finds it
unconverged, and, unless the cell is fixed, every component of
``stress + pressure`` below ``stress_tol`` (eV/Å^3; default 0.005 ≈ 0.8 GPa).
Failures are flagged, never raised:

* ``FAILED_NAN``: energy, forces or stress became NaN/inf (the last finite
  configuration is kept);
* ``FAILED_CELL``: the volume left [min_volume_ratio, max_volume_ratio] times
  its initial value (a collapsed or exploded cell);
* ``FAILED_GRAPH``: the cell became so thin that no neighbor search could cover it;
* ``FAILED_COLLAPSE``: two atoms are closer than ``min_bond_fraction`` (0.65)
  times the sum of their covalent radii (Cordero et al. 2008, ASE's table)
  and either closer than they started or stopping there (converged, or out
  of steps); a too-close start that a real repulsion pushes apart goes on.
  Machine-learned potentials have unphysical "holes" at short range where the
  energy falls without bound, and a structure that slides into one would
  otherwise win every energy ranking. SevenNet-0
  searches found Si2 at 0.46 of the covalent sum (-6.00 eV/atom, diamond is
  -5.40) and GaAs at 0.46 (-138 eV/atom) and, with a 0.55 guard, at 0.64
  (-18.8 eV/atom). Real bonds stay above about 0.74 of the sum (triple bonds,
  metal-metal quadruple bonds); the shortest in perov_5 is 0.667 (Cs-N in the
  hypothetical CsBeN3) and in carbon_24 0.80, hence 0.65.
  Two atoms of one element have their own, stricter limit per element
  (``like_bond_fractions``; ``species_limits=False`` turns it off, e.g. at
  pressures of tens of GPa). A SevenNet-0 search of SnS ended with Sn-Sn at 1.86 Å (0.67
  of the sum) and another with flat Sn and S sheets, Sn-Sn 2.18 Å (0.78), 1.3
  eV/atom below every real SnS structure. Three tiers, from the shortest known
  bonds between two atoms of one element: H and groups 12-18 except B, C and
  N stay above about 0.90 (S2 0.90, Cd2^2+ 0.90, O2 0.92, Sn 0.96), so 0.85;
  alkali and alkaline-earth cations, B, C, N, group 3, the lanthanides and the
  other d and f elements reach 0.76-0.84 (Cs-Cs 0.795 in perov_5's CsBN3, CsCl
  0.84, C-C 0.78 in CaC2, N2 0.775, alpha-Ce 0.84, Fe-Fe 0.77 in the Fe2 molecule
  and 0.81 in the shortest Fe-Fe bond of a complex, 2.13 Å), so 0.72; the transition
  metals of groups 5-8 other than Fe, and U, Np, Pu (``MULTIPLE_BOND_DIMERS``) reach
  0.68-0.70 (Mo-Mo 2.14 Å in K4Mo2Cl8, U-U 2.75 Å in alpha-U), so ``min_bond_fraction``.
  SevenNet-0 searches of SmFeAsO slid into cells of -10.3 to -14.2 eV/atom (real
  SmFeAsO: about -7.0) with Fe-Fe at 0.68-0.70 of the sum, which Fe's tier fails.
  Two different elements of the strict tier (H and groups 12-18 except B, C, N)
  fail below 0.75: their shortest known bonds are double bonds to oxygen at 0.84
  (S=O, P=O, Xe=O; I-O 0.87), and the 45,768 such pairs in perov_5 stay above 0.88.
  SevenNet-0 searches found GaAs at 0.64 and GaP at 0.68 of the sum (a 4-atom GaP
  cell at 6.3 Å^3/atom and -62 eV/atom, against -4.62 for wurtzite) above the 0.65
  of other pairs. These are facts about elements, so they apply with covalent radii
  only, not with a potential's own radii; ``species_limits=False`` turns them off.
  Potentials in reduced units give their own radii (``Potential.bond_radii``);
* ``FAILED_ISOLATED``: an atom has no neighbor within the potential's cutoff
  (a cell of isolated atoms, or an atom left in vacuum): the potential exerts
  no force on it, so "no force" says nothing about a minimum;
* ``FAILED_ENERGY``: the formation energy against the potential's own elemental
  references (``element_energies``, :mod:`jaxinv.potentials.references`) fell below
  ``min_formation_energy`` (-5 eV/atom; no known compound is below about -4.5): a hole
  whose pairs stay above the collapse limits. A SevenNet-0 search of SmFeAsO relaxed an
  8-atom cell to -14.16 eV/atom (formation -8.5; real SmFeAsO is near -7.0, formation
  -1.35) with Fe-Fe at 0.68 and As-Fe at 0.69 of their covalent sums, above the pair
  limits of the time (Fe's like-pair tier catches it now; the floor is the net for holes
  that no pair limit names). The floor also rises with how ionic the structure can be:
  below ``c0 + c1 * dchi`` (``electronegativity_floor``, -1 - 2 dchi eV/atom, dchi the
  largest Pauling electronegativity difference of its elements) fails too, which catches
  a SevenNet-0 GaP cell of flat sheets at formation -2.05 eV/atom (floor -1.76; wurtzite
  -0.42) while real low-dchi compounds stay 0.41 eV/atom or more above it
  (:func:`~jaxinv.potentials.references.electronegativity_floor`). Off for a potential
  without references, and for a structure with an element that has none;
* ``MAX_STEPS``: not converged within ``max_steps``.

The neighbor graph is built with a skin (``cutoff + skin``) and rebuilt inside
the step only when it may have become stale: the edge set can only change once
``s_min(D) (rc + skin) - 2 d_max < rc``, where ``D`` is the deformation of the
cell since the last build and ``d_max`` the largest atomic displacement.
When a rebuilt graph overflows its static capacity or image range, the
affected structures pause (``needs_graph``) until the host grows the graph
(see ``queue.py``); only a cell too thin for any search fails (``FAILED_GRAPH``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
from flax import struct

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal, bucket_size
from jaxinv.graph import Graph, build_graph, edge_lengths
from jaxinv.potentials.base import strained
from jaxinv.potentials.references import formation_energy, formation_floor
from jaxinv.relax.cell import CELL_MODES, current_cell, project_cell_force

__all__ = ["FireConfig", "Criteria", "RelaxState", "FireState", "Evaluation", "Neighbors", "fire_relaxer", "RUNNING", "CONVERGED", "MAX_STEPS", "FAILED_NAN",
           "FAILED_CELL", "FAILED_GRAPH", "FAILED_COLLAPSE", "FAILED_ISOLATED", "FAILED_ENERGY", "STATUS_NAMES", "GPA", "gather_slots",
           "covalent_radii", "collapse_limits", "like_bond_fractions", "MULTIPLE_BOND_DIMERS", "STRICT_LIKE_PAIRS",
           "coarse_criteria"]

(RUNNING, CONVERGED, MAX_STEPS, FAILED_NAN, FAILED_CELL, FAILED_GRAPH, FAILED_COLLAPSE, FAILED_ISOLATED,
 FAILED_ENERGY) = range(9)
STATUS_NAMES = {RUNNING: "running", CONVERGED: "converged", MAX_STEPS: "max_steps", FAILED_NAN: "failed_nan",
                FAILED_CELL: "failed_cell", FAILED_GRAPH: "failed_graph", FAILED_COLLAPSE: "failed_collapse",
                FAILED_ISOLATED: "failed_isolated", FAILED_ENERGY: "failed_energy"}
GPA = 1.0 / 160.21766208  # 1 GPa in eV/Å^3


@dataclass(frozen=True)
class FireConfig:
    """Convergence criteria, cell mode and FIRE constants (ASE's defaults)."""

    fmax: float = 0.05  # eV/Å
    stress_tol: float = 0.005  # eV/Å^3, on |stress + pressure| componentwise
    max_steps: int = 500
    pressure: float = 0.0  # eV/Å^3 (use GPA * p_in_gpa)
    cell: str = "frechet"  # frechet | fixed | volume | shape
    criterion: str = "stress"  # stress: ASE's rows (both frames) + stress_tol | ase: exactly ASE's test
    skin: float | None = None  # Å added to the potential's cutoff when building graphs; None: skin_for()
    min_volume_ratio: float = 0.25
    max_volume_ratio: float = 4.0
    # a pair closer than this times the sum of its atoms' bond radii fails the structure (0 disables)
    min_bond_fraction: float = 0.65
    # the stricter limits of collapse_limits for two atoms of one element and for two p-block
    # elements (with covalent radii; off for tens of GPa)
    species_limits: bool = True
    bond_radii: tuple | None = None  # Å per atomic number 0..118; None: covalent radii (Potential.bond_radii)
    # eV/atom per atomic number 0..118 (NaN: none), the potential's elemental references; None: no
    # energy floor (Potential.element_energies, filled in by for_potential)
    element_energies: tuple | None = None
    # a formation energy (eV/atom) against element_energies below this fails the structure (failed_energy)
    min_formation_energy: float = -5.0
    # (c0, c1): so does one below c0 + c1 * dchi eV/atom, dchi the largest Pauling electronegativity
    # difference among its elements (references.electronegativity_floor); None: only min_formation_energy
    electronegativity_floor: tuple | None = (-1.0, -2.0)
    # FIRE constants, as ase.optimize.FIRE
    dt_start: float = 0.1
    dt_max: float = 1.0
    max_step: float = 0.2
    n_min: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha_start: float = 0.1
    f_alpha: float = 0.99

    def skin_for(self, cutoff: float) -> float:
        """The skin used with a potential of this cutoff: ``skin``, or by default
        0.25 Å up to a 6 Å cutoff and cutoff/12 beyond.

        The graph is rebuilt once the cell strains by about skin/cutoff, and for
        long-range pair potentials (BKS at 12 Å) a rebuild costs several energy
        evaluations: 16 SiO2 cells relaxed 1.7x faster per step with 1 Å than with
        0.25 Å (2.1 against 3.6 ms per structure and step). Short-cutoff learned
        potentials cost per edge, so they keep 0.25 Å.
        """
        if self.skin is not None:
            return float(self.skin)
        return 0.25 if cutoff <= 6.0 else float(cutoff) / 12.0

    def formation_and_floor(self, numbers, mask, energy, xp=np):
        """(B,) formation energy per atom of structures of total ``energy`` (eV) against
        ``element_energies``, and the floor below which each is FAILED_ENERGY (eV/atom); NaN
        without references. ``xp=jnp`` inside a jitted function."""
        if self.element_energies is None:
            nan = xp.full(numbers.shape[:-1], xp.nan)
            return nan, nan
        formation = formation_energy(numbers, mask, energy, np.asarray(self.element_energies), xp=xp)
        return formation, formation_floor(numbers, mask, self.min_formation_energy, self.electronegativity_floor, xp=xp)

    def for_potential(self, potential) -> "FireConfig":
        """This config with the collapse guard in ``potential``'s length units (its
        ``bond_radii``, when it has its own and none are set here) and the energy floor at
        its elemental references (``element_energies``, likewise)."""
        config = self
        if config.bond_radii is None and getattr(potential, "bond_radii", None) is not None:
            config = dataclasses.replace(config, bond_radii=potential.bond_radii)
        if config.element_energies is None and getattr(potential, "element_energies", None) is not None:
            config = dataclasses.replace(config, element_energies=potential.element_energies)
        return config

    def __post_init__(self):
        if self.cell not in CELL_MODES:
            raise ValueError(f"cell={self.cell!r}; choose one of {CELL_MODES}")
        if self.criterion not in ("stress", "ase"):
            raise ValueError(f"criterion={self.criterion!r}; choose 'stress' or 'ase'")
        for name in ("bond_radii", "element_energies"):
            if getattr(self, name) is not None and len(getattr(self, name)) != 119:
                raise ValueError(f"{name} needs one value per atomic number 0..118, got {len(getattr(self, name))}")
        if self.electronegativity_floor is not None:
            if len(self.electronegativity_floor) != 2:
                raise ValueError(f"electronegativity_floor needs (c0, c1), got {self.electronegativity_floor!r}")
            object.__setattr__(self, "electronegativity_floor", tuple(float(c) for c in self.electronegativity_floor))
        for name in ("fmax", "stress_tol", "skin", "dt_start", "max_step", "min_bond_fraction"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def covalent_radii() -> tuple:
    """Covalent radii (Å) by atomic number 0..118, Cordero et al., Dalton Trans. 2832 (2008), as in ASE."""
    from ase.data import covalent_radii as table

    return tuple(float(r) for r in table)


COARSE = 0.25  # a criterion coarser than this fraction of the potential's force (stress) scale is flagged


def coarse_criteria(config: FireConfig, potential) -> str | None:
    """Why ``config``'s ``fmax`` or ``stress_tol`` cannot locate ``potential``'s minima, or None.

    Pair potentials declare ``force_scale``, their weakest pair's strongest attraction (eV/Å),
    and ``stress_scale`` (eV/Å^3) in their metadata. A criterion above a quarter of that
    passes structures that are nowhere near a minimum: with Lennard-Jones Ne (0.0027 eV/Å)
    and the default fmax 0.05 eV/Å, random starts of 50-113 Å^3/atom "converged" in 0-14 steps
    and a search's Ne ended in a C2/m cell 0.011 eV/atom above the fcc that fmax 0.0005 and
    stress_tol 1e-5 find. Learned potentials declare nothing (their forces are eV/Å)."""
    meta = getattr(potential, "metadata", None) or {}
    force, stress = meta.get("force_scale"), meta.get("stress_scale")
    problems = []
    if force and config.fmax > COARSE * force:
        problems.append(f"fmax={config.fmax:g} eV/Å (use <= {COARSE * force:.2g})")
    if stress and config.cell != "fixed" and config.stress_tol > COARSE * stress:
        problems.append(f"stress_tol={config.stress_tol:g} eV/Å^3 (use <= {COARSE * stress:.2g})")
    if not problems:
        return None
    scale = f"whose weakest pair attracts with at most {force:.2g} eV/Å" if force else f"stress scale {stress:.2g} eV/Å^3"
    return (f"{' and '.join(problems)} too coarse for {potential.name}, {scale}: structures far from a minimum "
            f"meet it and are called converged")


# V Cr Mn, Nb Mo Tc Ru, Ta W Re Os, U Np Pu: like pairs as short as min_bond_fraction
MULTIPLE_BOND_DIMERS = (23, 24, 25, 41, 42, 43, 44, 73, 74, 75, 76, 92, 93, 94)
# H and groups 12-18 except B, C, N: like pairs above about 0.90 of the sum in every known structure
STRICT_LIKE_PAIRS = (1, 2, 8, 9, 10, *range(13, 19), *range(30, 37), *range(48, 55), *range(80, 87))
STRICT_LIKE_FRACTION, LIKE_FRACTION = 0.85, 0.72
# two different elements of STRICT_LIKE_PAIRS (module docstring)
STRICT_UNLIKE_FRACTION = 0.75
_STRICT = np.isin(np.arange(119), STRICT_LIKE_PAIRS)


def like_bond_fractions(min_bond_fraction: float = 0.65) -> np.ndarray:
    """(119,) the collapse limit of two atoms of one element, by atomic number, in units
    of twice its covalent radius (module docstring): 0.85 for ``STRICT_LIKE_PAIRS``,
    ``min_bond_fraction`` for ``MULTIPLE_BOND_DIMERS``, 0.72 for the rest; never below
    ``min_bond_fraction``."""
    like = np.full(119, LIKE_FRACTION)
    like[list(STRICT_LIKE_PAIRS)] = STRICT_LIKE_FRACTION
    like[list(MULTIPLE_BOND_DIMERS)] = min_bond_fraction
    return np.maximum(like, min_bond_fraction)


def collapse_limits(z_a, z_b, config: FireConfig = FireConfig(), xp=np):
    """The shortest allowed distance (Å) between atoms of atomic numbers ``z_a`` and ``z_b``
    (arrays, broadcast): ``min_bond_fraction`` times their bond-radius sum; with
    ``species_limits`` and covalent radii, :func:`like_bond_fractions` of the element for
    two atoms of one element and ``STRICT_UNLIKE_FRACTION`` for two different elements of
    ``STRICT_LIKE_PAIRS`` (never below ``min_bond_fraction``). ``xp=jnp`` inside a jitted
    function."""
    own_radii = config.bond_radii is not None
    radii = xp.asarray(config.bond_radii if own_radii else covalent_radii())
    fraction = config.min_bond_fraction
    if config.species_limits and not own_radii:
        like = xp.asarray(like_bond_fractions(config.min_bond_fraction))
        strict = xp.asarray(_STRICT)
        fraction = xp.where(strict[z_a] & strict[z_b], max(STRICT_UNLIKE_FRACTION, fraction), fraction)
        fraction = xp.where(z_a == z_b, like[z_b], fraction)
    return fraction * (radii[z_a] + radii[z_b])


@struct.dataclass
class FireState:
    """FIRE's own variables (ASE's update rule) on the generalized coordinates of
    :mod:`jaxinv.relax.cell`: positions ``q`` in the reference cell and the cell's
    log-deformation ``lam``, their velocities, and the per-structure time step and mixing."""

    reference_lattice: jax.Array  # (B, 3, 3) L0
    q: jax.Array  # (B, N, 3) positions in the reference cell
    lam: jax.Array  # (B, 3, 3) log-deformation
    factor: jax.Array  # (B,) exp_cell_factor (number of atoms)
    v_atoms: jax.Array  # (B, N, 3)
    v_cell: jax.Array  # (B, 3, 3)
    dt: jax.Array  # (B,)
    alpha: jax.Array  # (B,)
    n_pos: jax.Array  # (B,) steps since the power last turned negative
    started: jax.Array  # (B,) bool, the first FIRE step has been taken


@struct.dataclass
class Evaluation:
    """The potential's answer at the current geometry."""

    energy: jax.Array  # (B,) eV
    forces: jax.Array  # (B, N, 3) physical forces, eV/Å
    stress: jax.Array  # (B, 3, 3) eV/Å^3 (ASE sign)
    f_q: jax.Array  # (B, N, 3) generalized forces
    f_cell: jax.Array  # (B, 3, 3)


@struct.dataclass
class Neighbors:
    """The neighbor graph and what the host driver tracks about it: the geometry it was
    built for (to tell when it may be stale) and which slots wait for a larger one."""

    graph: Graph
    frac: jax.Array  # (B, N, 3) frac at the last build
    lattice: jax.Array  # (B, 3, 3) lattice at the last build
    needs_graph: jax.Array  # (B,) bool: paused until the host grows the graph


@struct.dataclass
class RelaxState:
    """A batch of relaxations: the structures, FIRE's state, the last evaluation, the
    neighbor graph, and each structure's progress and targets."""

    crystal: Crystal  # current structures
    fire: FireState
    evaluation: Evaluation
    neighbors: Neighbors
    criteria: "Criteria"  # per-structure targets (traced, so changing them never recompiles)
    steps: jax.Array  # (B,) int32
    status: jax.Array  # (B,) int32
    fresh: jax.Array  # (B,) bool, not evaluated yet (``init_fn(..., evaluate=False)``): the next step only evaluates
    volume0: jax.Array  # (B,)
    closest_start: jax.Array  # (B,) closest pair over its collapse limit at the first evaluation (inf before it)

    # the fields callers read most, by their plain names
    energy = property(lambda self: self.evaluation.energy)
    forces = property(lambda self: self.evaluation.forces)
    stress = property(lambda self: self.evaluation.stress)
    graph = property(lambda self: self.neighbors.graph)
    needs_graph = property(lambda self: self.neighbors.needs_graph)


@struct.dataclass
class Checks:
    """Per-structure trust checks of one evaluation, (B,) each."""

    closest: jax.Array  # shortest edge within the cutoff over its collapse limit (collapse_limits)
    isolated: jax.Array  # bool: some atom has no neighbor within the cutoff
    below_floor: jax.Array  # bool: formation energy below min_formation_energy (FAILED_ENERGY)


@struct.dataclass
class Criteria:
    """Per-structure convergence targets and pressure, (B,) each."""

    fmax: jax.Array
    stress_tol: jax.Array
    pressure: jax.Array
    max_steps: jax.Array

    @classmethod
    def from_config(cls, config: "FireConfig", batch: int, dtype=jnp.float32) -> "Criteria":
        full = lambda v, dt=dtype: jnp.full((batch,), v, dt)
        return cls(full(config.fmax), full(config.stress_tol), full(config.pressure),
                   full(config.max_steps, jnp.int32))


def _bcast(mask, x):
    return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def tree_select(mask, a, b):
    """Per-structure choice between two pytrees whose leaves lead with the batch axis."""
    return jax.tree_util.tree_map(lambda x, y: jnp.where(_bcast(mask, x), x, y), a, b)


def gather_slots(state: "RelaxState", live) -> tuple["RelaxState", np.ndarray]:
    """The slots ``live`` (indices) of a state, in the smallest batch on the bucket ladder
    (:func:`~jaxinv.crystal.bucket_size`, at least 4) that holds them.

    A batch on a CPU costs about the sum of its slots, so finished slots are dropped
    instead of evaluated every step; the ladder keeps the number of compiled shapes
    small. The extra slots are frozen copies of ``live[0]`` (status CONVERGED) and must
    not be read back: the second return value marks them.
    """
    live = np.asarray(live)
    size = bucket_size(len(live))
    keep = np.concatenate([live, np.full(size - len(live), live[0])])
    state = jax.tree_util.tree_map(lambda x: x[keep], state)
    pad = np.arange(size) >= len(live)
    return state.replace(status=jnp.where(jnp.asarray(pad), CONVERGED, state.status)), pad


def fire_relaxer(energy_fn: Callable, cutoff: float, config: FireConfig = FireConfig()):
    """``(init_fn, step_fn)`` for batched FIRE with ``energy_fn(params, crystal, graph) -> (B,)``."""
    cfg = config
    graph_cutoff = float(cutoff) + cfg.skin_for(cutoff)

    def evaluate_potential(params, crystal, graph, fire: FireState, pressure):
        """The :class:`Evaluation` at FIRE's coordinates (energy, physical forces and stress,
        generalized forces), the volume and the :class:`Checks` (closest pair relative to its
        collapse limit; an atom without neighbors; the energy floor), in one reverse pass."""
        reference_lattice, q, lam, factor = fire.reference_lattice, fire.q, fire.lam, fire.factor
        frac = jnp.einsum("bnj,bji->bni", q, jnp.linalg.inv(reference_lattice))
        lattice_now, _, f = current_cell(reference_lattice, q, lam, factor)
        # the graph carries a skin; the potential sees only edges within its cutoff (as trim_graph,
        # with the lengths kept for the checks below)
        fixed = crystal.replace(lattice=jax.lax.stop_gradient(lattice_now), frac=jax.lax.stop_gradient(frac))
        r = edge_lengths(fixed, graph)
        trimmed = graph.replace(mask=graph.mask & (r < cutoff))
        take = jax.vmap(lambda x, idx: x[idx])
        limit = collapse_limits(take(crystal.numbers, graph.senders), take(crystal.numbers, graph.receivers), cfg,
                                xp=jnp)
        closest = jnp.min(jnp.where(trimmed.mask, r / jnp.maximum(limit, 1e-12), jnp.inf), axis=-1)  # (B,) of limit
        degree = jax.vmap(lambda m, idx: jax.ops.segment_sum(m.astype(jnp.int32), idx, crystal.numbers.shape[1]))(
            trimmed.mask, trimmed.receivers)
        isolated = jnp.any(crystal.mask & (degree == 0), axis=-1)

        def enthalpy(q, lam, eps):
            lattice = strained(current_cell(reference_lattice, q, lam, factor)[0], eps)
            frac_q = jnp.einsum("bnj,bji->bni", q, jnp.linalg.inv(reference_lattice))
            e = energy_fn(params, crystal.replace(lattice=lattice, frac=frac_q), trimmed)
            volume = jnp.abs(jnp.linalg.det(lattice))
            return jnp.sum(e + pressure * volume), (e, volume)

        zeros = jnp.zeros_like(lam)
        (_, (e, volume)), (dq, dlam, deps) = jax.value_and_grad(enthalpy, argnums=(0, 1, 2), has_aux=True)(
            q, lam, zeros)
        mask = crystal.mask[..., None]
        f_q = jnp.where(mask, -dq, 0.0)
        # x = q F^T, so dE/dq = dE/dx F and the physical force is f_q F^-1
        forces = jnp.einsum("bnj,bjk->bnk", f_q, jnp.linalg.inv(f))
        eye = jnp.eye(3, dtype=deps.dtype)
        stress = deps / volume[:, None, None] - pressure[:, None, None] * eye  # d(PV)/d(eps) = P V 1
        f_cell = project_cell_force(-dlam, cfg.cell)
        # NaN (no references, or an element without one) compares False
        formation, floor = cfg.formation_and_floor(crystal.numbers, crystal.mask, e, xp=jnp)
        below_floor = formation < floor
        return Evaluation(e, forces, stress, f_q, f_cell), volume, Checks(closest, isolated, below_floor)

    def trust_status(status, checks: Checks, accept, closest_start):
        """FAILED_COLLAPSE / FAILED_ISOLATED / FAILED_ENERGY for accepted evaluations that cannot be trusted.

        A pair below the limit fails its structure once it is closer than it started, or when the
        structure stops there (converged or out of steps): a potential's hole pulls such a pair in,
        while a start that is merely too close (a search's child, a user's guess) under a real
        repulsion moves apart and goes on. An energy below the floor fails at once: no real
        structure, start or minimum, is there."""
        status = jnp.where(accept & checks.isolated, FAILED_ISOLATED, status)
        if cfg.min_bond_fraction > 0:
            stopping = (status == CONVERGED) | (status == MAX_STEPS)
            collapsed = (checks.closest < 1.0) & ((checks.closest < closest_start) | stopping)
            status = jnp.where(accept & collapsed, FAILED_COLLAPSE, status)
        return jnp.where(accept & checks.below_floor, FAILED_ENERGY, status)

    def converged(ev: Evaluation, volume, mask, crit: Criteria):
        forces, stress, f_q, f_cell = ev.forces, ev.stress, ev.f_q, ev.f_cell
        row_max = lambda x: jnp.max(jnp.sum(x**2, -1), axis=-1)  # largest squared row norm
        # ASE's test on the running filter's N + 3 rows: atoms (f_q = F_phys deform_grad) and the
        # generalized cell force (virial-derived, divided by exp_cell_factor = N)
        rows = jnp.maximum(row_max(jnp.where(mask[..., None], f_q, 0.0)), row_max(f_cell))
        if cfg.criterion == "ase":
            return jnp.sqrt(rows) < crit.fmax
        # and the rows of a filter started at this geometry: physical forces, virial / N
        eye = jnp.eye(3, dtype=stress.dtype)
        residual = project_cell_force(stress + crit.pressure[:, None, None] * eye, cfg.cell)  # what the cell can relieve
        n_atoms = jnp.maximum(jnp.sum(mask, -1), 1).astype(stress.dtype)
        virial_rows = residual * (volume / n_atoms)[:, None, None]
        rows = jnp.maximum(rows, jnp.maximum(row_max(jnp.where(mask[..., None], forces, 0.0)), row_max(virial_rows)))
        ok = jnp.sqrt(rows) < crit.fmax
        if cfg.cell != "fixed":
            ok &= jnp.max(jnp.abs(residual), axis=(-1, -2)) < crit.stress_tol
        return ok

    def finite(*xs):
        out = None
        for x in xs:
            f = jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=-1)
            out = f if out is None else out & f
        return out

    def init_fn(params, crystal: Crystal, graph: Graph, criteria: Criteria | None = None,
                evaluate: bool = True) -> RelaxState:
        """Start a relaxation; ``graph`` should be built at ``cutoff + config.skin_for(cutoff)``.

        ``criteria`` (per-structure fmax, stress_tol, pressure, max_steps)
        defaults to the config's values for every structure.

        ``evaluate=False`` skips the potential: the structures start ``fresh``,
        and the first ``step_fn`` evaluates them without moving them (and
        without counting a step), then relaxes them exactly as if ``init_fn``
        had evaluated them. A queue that refills a few slots of a running batch
        uses it, so that a refill costs no extra evaluation of the whole batch.
        """
        dtype = crystal.frac.dtype if jnp.issubdtype(crystal.frac.dtype, jnp.floating) else jnp.float32
        lattice = jnp.asarray(crystal.lattice, dtype)
        b, n = crystal.numbers.shape
        crit = criteria if criteria is not None else Criteria.from_config(cfg, b, dtype)
        q = jnp.einsum("bni,bij->bnj", crystal.frac, lattice)
        lam = jnp.zeros((b, 3, 3), dtype)
        factor = jnp.maximum(crystal.mask.sum(-1), 1).astype(dtype)
        present = crystal.mask.any(-1)
        fire = FireState(reference_lattice=lattice, q=q, lam=lam, factor=factor, v_atoms=jnp.zeros_like(q),
                         v_cell=jnp.zeros_like(lam), dt=jnp.full((b,), cfg.dt_start, dtype),
                         alpha=jnp.full((b,), cfg.alpha_start, dtype), n_pos=jnp.zeros((b,), jnp.int32),
                         started=jnp.zeros((b,), bool))
        crystal = crystal.replace(lattice=lattice)
        steps = jnp.zeros((b,), jnp.int32)
        if not evaluate:
            zeros_b = jnp.zeros((b,), dtype)
            evaluation = Evaluation(zeros_b, jnp.zeros_like(q), jnp.zeros_like(lam), jnp.zeros_like(q),
                                    jnp.zeros_like(lam))
            return RelaxState(crystal, fire, evaluation, Neighbors(graph, crystal.frac, lattice, jnp.zeros((b,), bool)),
                              crit, steps, status=jnp.where(present, RUNNING, CONVERGED).astype(jnp.int32),
                              fresh=present, volume0=jnp.abs(jnp.linalg.det(lattice)),
                              closest_start=jnp.full((b,), jnp.inf, dtype))
        evaluation, volume, checks = evaluate_potential(params, crystal, graph, fire, crit.pressure)
        coords = jnp.where(crystal.mask[..., None], crystal.frac, 0.0)
        ok = finite(evaluation.energy, evaluation.forces, evaluation.stress, coords, lattice)  # a NaN coordinate would silently lose its edges
        done = converged(evaluation, volume, crystal.mask, crit)
        status = jnp.where(~ok, FAILED_NAN, jnp.where(done, CONVERGED, RUNNING))
        status = trust_status(status, checks, ok & ~graph.overflow, checks.closest)
        status = jnp.where(graph.image_overflow, FAILED_GRAPH, status)
        status = jnp.where(present, status, CONVERGED).astype(jnp.int32)  # empty slots are done
        neighbors = Neighbors(graph, crystal.frac, lattice, graph.n_edges > graph.capacity)
        return RelaxState(crystal, fire, evaluation, neighbors, crit, steps, status, fresh=jnp.zeros((b,), bool),
                          volume0=volume, closest_start=checks.closest)

    def fire_update(fire: FireState, ev: Evaluation, fresh) -> FireState:
        """One ASE FIRE move of (q, lam) from the generalized forces of the last evaluation."""
        def dot(a_atoms, a_cell, b_atoms, b_cell):
            return jnp.sum(a_atoms * b_atoms, axis=(1, 2)) + jnp.sum(a_cell * b_cell, axis=(1, 2))

        s = fire
        f_atoms, f_cell = ev.f_q, ev.f_cell
        vf = dot(s.v_atoms, s.v_cell, f_atoms, f_cell)
        f_norm = jnp.sqrt(dot(f_atoms, f_cell, f_atoms, f_cell))
        v_norm = jnp.sqrt(dot(s.v_atoms, s.v_cell, s.v_atoms, s.v_cell))
        uphill = s.started & (vf <= 0.0)
        downhill = s.started & (vf > 0.0)
        scale = jnp.where(f_norm > 0, v_norm / jnp.where(f_norm > 0, f_norm, 1.0), 0.0)
        mix = lambda v, f: (1.0 - _bcast(s.alpha, v)) * v + _bcast(s.alpha * scale, f) * f
        v_atoms = jnp.where(_bcast(downhill, s.v_atoms), mix(s.v_atoms, f_atoms), s.v_atoms)
        v_cell = jnp.where(_bcast(downhill, s.v_cell), mix(s.v_cell, f_cell), s.v_cell)
        grow = downhill & (s.n_pos > cfg.n_min)
        dt = jnp.where(grow, jnp.minimum(s.dt * cfg.f_inc, cfg.dt_max), s.dt)
        alpha = jnp.where(grow, s.alpha * cfg.f_alpha, s.alpha)
        n_pos = jnp.where(downhill, s.n_pos + 1, s.n_pos)
        v_atoms = jnp.where(_bcast(uphill, v_atoms), 0.0, v_atoms)
        v_cell = jnp.where(_bcast(uphill, v_cell), 0.0, v_cell)
        alpha = jnp.where(uphill, cfg.alpha_start, alpha)
        dt = jnp.where(uphill, dt * cfg.f_dec, dt)
        n_pos = jnp.where(uphill, 0, n_pos)
        v_atoms = v_atoms + _bcast(dt, f_atoms) * f_atoms
        v_cell = v_cell + _bcast(dt, f_cell) * f_cell
        dr_atoms, dr_cell = _bcast(dt, v_atoms) * v_atoms, _bcast(dt, v_cell) * v_cell
        dr_norm = jnp.sqrt(dot(dr_atoms, dr_cell, dr_atoms, dr_cell))
        shrink = jnp.where(dr_norm > cfg.max_step, cfg.max_step / jnp.where(dr_norm > 0, dr_norm, 1.0), 1.0)
        q = s.q + _bcast(shrink, dr_atoms) * dr_atoms
        lam = s.lam + _bcast(shrink, dr_cell) * dr_cell
        # a fresh slot has zero forces and velocities, so it has not moved; it starts once evaluated
        return s.replace(q=q, lam=lam, v_atoms=v_atoms, v_cell=v_cell, dt=dt, alpha=alpha, n_pos=n_pos,
                         started=s.started | ~fresh)

    def graph_is_stale(nb: Neighbors, mask, lattice, frac):
        """Whether an edge could have entered the cutoff since the last build."""
        d = jnp.einsum("bij,bjk->bik", jnp.linalg.inv(nb.lattice), lattice)
        s_min = jnp.sqrt(jnp.maximum(jnp.min(jnp.linalg.eigvalsh(jnp.einsum("bij,bkj->bik", d, d)), -1), 0.0))
        moved = jnp.einsum("bni,bij->bnj", frac - nb.frac, lattice)
        d_max = jnp.sqrt(jnp.max(jnp.where(mask, jnp.sum(moved**2, -1), 0.0), -1))
        return s_min * graph_cutoff - 2.0 * d_max < cutoff

    def step_fn(params, s: RelaxState) -> RelaxState:
        active = (s.status == RUNNING) & ~s.needs_graph
        fire = fire_update(s.fire, s.evaluation, s.fresh)
        lattice, _, _ = current_cell(fire.reference_lattice, fire.q, fire.lam, fire.factor)
        frac = jnp.einsum("bnj,bji->bni", fire.q, jnp.linalg.inv(fire.reference_lattice))
        frac = jnp.where(_bcast(active, frac), frac, s.crystal.frac)
        lattice = jnp.where(_bcast(active, lattice), lattice, s.crystal.lattice)
        crystal = s.crystal.replace(lattice=lattice, frac=frac)
        stale = graph_is_stale(s.neighbors, s.crystal.mask, lattice, frac) & active
        nb = s.neighbors
        graph, graph_frac, graph_lattice = jax.lax.cond(
            jnp.any(stale),
            lambda: (build_graph(crystal, graph_cutoff, nb.graph.images, nb.graph.capacity), frac, lattice),
            lambda: (nb.graph, nb.frac, nb.lattice))
        ev, volume, checks = evaluate_potential(params, crystal, graph, fire, s.criteria.pressure)
        overflow = graph.overflow & active  # too many edges or images for the static graph: pause
        ok = finite(ev.energy, ev.forces, ev.stress)
        coords = jnp.where(s.crystal.mask[..., None], s.crystal.frac, 0.0)
        ok &= ~s.fresh | finite(coords, s.crystal.lattice)  # as init_fn checks its inputs
        accept = active & ok & ~overflow
        new = s.replace(crystal=crystal, fire=fire, evaluation=ev, steps=s.steps + (~s.fresh).astype(s.steps.dtype),
                        volume0=jnp.where(s.fresh, volume, s.volume0),
                        closest_start=jnp.where(s.fresh, checks.closest, s.closest_start),
                        fresh=jnp.zeros_like(s.fresh))
        out = tree_select(accept, new, s)
        ratio = volume / out.volume0
        status = out.status
        status = jnp.where(active & ~ok & ~overflow, FAILED_NAN, status)
        done = converged(ev, volume, s.crystal.mask, s.criteria)
        status = jnp.where(accept & done, CONVERGED, status)
        status = jnp.where((status == RUNNING) & (out.steps >= s.criteria.max_steps), MAX_STEPS, status)
        # the checks come last: a structure that stops in a potential's hole is a failure, not a minimum
        status = trust_status(status, checks, accept, out.closest_start)
        bad_cell = (ratio < cfg.min_volume_ratio) | (ratio > cfg.max_volume_ratio)
        status = jnp.where(accept & bad_cell, FAILED_CELL, status)
        # the graph built this step is kept even for a rejected step: it is what an overflow needed
        return out.replace(status=status.astype(jnp.int32),
                           neighbors=Neighbors(graph, graph_frac, graph_lattice, s.needs_graph | overflow))

    return init_fn, step_fn
