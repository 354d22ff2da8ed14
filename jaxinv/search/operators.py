"""Variation operators: pure functions on one structure, to ``vmap`` over a population.

Every operator has the one signature

    child = op(key, first, second)

where ``first`` and ``second`` are single structures (a
:class:`~jaxinv.crystal.Crystal` whose leaves have no batch axis: lattice (3, 3),
frac (N, 3), numbers (N,), mask (N,), no labels) and ``child`` has the layout and
composition of ``first`` (atom slots keep their species, so a population stays
one padded array). Unary operators ignore ``second``. Operators are built by
factories that close over their settings, as optax builds transforms::

    ops = {"heredity": heredity(), "strain": lattice_strain(0.1)}
    children = jax.vmap(ops["heredity"])(keys, mothers, fathers)

None of them relaxes anything; the search relaxes children afterwards. Soft
mutation needs the potential (it follows a low-curvature direction of the energy),
so its factory takes the energy function and the static graph sizes.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.graph import build_graph, edge_vectors

__all__ = ["Operator", "heredity", "lattice_strain", "permutation", "soft_mutation", "bond_soft_mutation",
           "bond_curvature", "rattle", "transmutation", "single", "batched"]

Operator = Callable[[jax.Array, Crystal, Crystal], Crystal]


def single(c: Crystal, b: int = 0) -> Crystal:
    """Structure ``b`` of a batch, without the batch axis (and without labels)."""
    return Crystal(c.lattice[b], c.frac[b], c.numbers[b], c.mask[b], {})


def batched(c: Crystal) -> Crystal:
    """A one-structure batch from a single structure."""
    return Crystal(c.lattice[None], c.frac[None], c.numbers[None], c.mask[None], {})


def _wrap(frac):
    return frac - jnp.floor(frac)


def _volume(lattice):
    return jnp.abs(jnp.linalg.det(lattice))


def _random_rotation(key):
    """A uniformly random proper rotation (QR of a Gaussian matrix, signs fixed)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (3, 3)))
    q = q * jnp.sign(jnp.diag(r))[None, :]
    return q * jnp.sign(jnp.linalg.det(q))


def heredity(cluster: bool = False, min_fraction: float = 0.25) -> Operator:
    """Cut-and-splice crossover (Deaven & Ho 1995 for clusters; Oganov & Glass 2006 for crystals).

    Crystals: both parents are shifted by random fractional translations, a plane
    parallel to two cell vectors cuts the cell at a random height ``c`` along the
    third, and the child takes ``first``'s atoms below ``c`` and ``second``'s above.
    Its lattice is the ``c``-weighted mean of the parents' lattices, rescaled to the
    weighted mean volume. Clusters (``cluster=True``): each parent is centred and
    randomly rotated, the cut is a plane through the centre of mass, and the box is kept.

    Atom counts are repaired per species so the child has ``first``'s composition:
    for each species the atoms deepest inside their own parent's region are taken
    first, then (when a region holds too few) the atoms nearest to it. Without any
    candidate left of a species (variable composition), an atom is placed at random.
    """

    def op(key, first: Crystal, second: Crystal) -> Crystal:
        k_shift_a, k_shift_b, k_axis, k_cut, k_rand, k_jit = jax.random.split(key, 6)
        n = first.frac.shape[0]
        cut = jax.random.uniform(k_cut, (), minval=min_fraction, maxval=1.0 - min_fraction)
        if cluster:
            box = first.lattice
            centre = 0.5 * jnp.sum(box, axis=0)

            def centred(c, k):
                x = c.frac @ c.lattice
                com = jnp.sum(jnp.where(c.mask[:, None], x, 0.0), 0) / jnp.maximum(c.mask.sum(), 1)
                return (x - com) @ _random_rotation(k)

            xa, xb = centred(first, k_shift_a), centred(second, k_shift_b)
            # cut height: the plane splits the z range of first at the ``cut`` quantile of its extent
            za, zb = xa[:, 2], xb[:, 2]
            lo = jnp.min(jnp.where(first.mask, za, jnp.inf))
            hi = jnp.max(jnp.where(first.mask, za, -jnp.inf))
            plane = lo + cut * (hi - lo)
            # first keeps z < plane, second z >= plane; depth = signed distance into the own side
            depth_a, depth_b = plane - za, zb - plane
            cand_x = jnp.concatenate([xa, xb]) + centre
            lattice = box
            cand_frac = cand_x @ jnp.linalg.inv(box)
        else:
            axis = jax.random.randint(k_axis, (), 0, 3)
            fa = _wrap(first.frac + jax.random.uniform(k_shift_a, (3,)))
            fb = _wrap(second.frac + jax.random.uniform(k_shift_b, (3,)))
            sa, sb = fa[:, axis], fb[:, axis]
            # region of first: [0, cut); of second: [cut, 1). Depth is the fractional
            # distance to the nearest face of the own slab, negative outside it.
            depth_a = jnp.where(sa < cut, jnp.minimum(sa, cut - sa), -jnp.minimum(sa - cut, 1.0 - sa))
            depth_b = jnp.where(sb >= cut, jnp.minimum(sb - cut, 1.0 - sb), -jnp.minimum(cut - sb, sb))
            lattice = cut * first.lattice + (1.0 - cut) * second.lattice
            target_v = cut * _volume(first.lattice) + (1.0 - cut) * _volume(second.lattice)
            lattice = lattice * (target_v / jnp.maximum(_volume(lattice), 1e-9)) ** (1.0 / 3.0)
            cand_frac = jnp.concatenate([fa, fb])
        cand_z = jnp.concatenate([first.numbers, second.numbers])
        cand_ok = jnp.concatenate([first.mask, second.mask])
        jitter = 1e-6 * jax.random.uniform(k_jit, (2 * n,))  # breaks ties between equal depths at random
        priority = jnp.concatenate([depth_a, depth_b]) + jitter
        # for every slot of the child, the candidates of its species ranked by priority
        score = jnp.where((cand_z[None, :] == first.numbers[:, None]) & cand_ok[None, :], priority[None, :], -jnp.inf)
        order = jnp.argsort(-score, axis=1)  # best candidate first
        same = (first.numbers[:, None] == first.numbers[None, :]) & first.mask[None, :]
        rank = jnp.sum(jnp.tril(same, k=-1), axis=1)  # earlier slots of the same species
        pick = jnp.take_along_axis(order, rank[:, None], axis=1)[:, 0]
        found = jnp.take_along_axis(score, pick[:, None], axis=1)[:, 0] > -jnp.inf
        frac = jnp.where(found[:, None], cand_frac[pick], jax.random.uniform(k_rand, (n, 3)))
        frac = jnp.where(first.mask[:, None], frac, 0.0)
        return first.replace(lattice=lattice, frac=frac)

    return op


def lattice_strain(sigma: float = 0.1, keep_volume: bool = True) -> Operator:
    """Lattice mutation: L -> L (1 + eps) with a symmetric Gaussian strain of width
    ``sigma`` (USPEX-style), rescaled to the parent's volume when ``keep_volume``.
    Fractional coordinates are unchanged."""

    def op(key, first: Crystal, second: Crystal) -> Crystal:
        e = sigma * jax.random.normal(key, (3, 3))
        e = 0.5 * (e + e.T)
        lattice = first.lattice @ (jnp.eye(3) + e)
        if keep_volume:
            lattice = lattice * (_volume(first.lattice) / jnp.maximum(_volume(lattice), 1e-9)) ** (1.0 / 3.0)
        return first.replace(lattice=lattice)

    return op


def permutation(max_swaps: int = 4) -> Operator:
    """Swap the positions of 1..``max_swaps`` random pairs of unlike atoms.

    A structure of one species comes back unchanged (there is nothing to swap).
    """

    def op(key, first: Crystal, second: Crystal) -> Crystal:
        first = jax.tree_util.tree_map(jnp.asarray, first)
        k_n, k_loop = jax.random.split(key)
        n_swaps = jax.random.randint(k_n, (), 1, max_swaps + 1)

        def body(t, carry):
            frac, k = carry
            k, ki, kj = jax.random.split(k, 3)
            gi = jnp.where(first.mask, jax.random.gumbel(ki, first.mask.shape), -jnp.inf)
            i = jnp.argmax(gi)
            unlike = first.mask & (first.numbers != first.numbers[i])
            gj = jnp.where(unlike, jax.random.gumbel(kj, first.mask.shape), -jnp.inf)
            j = jnp.argmax(gj)
            do = (t < n_swaps) & unlike.any()
            fi, fj = frac[i], frac[j]
            frac = jnp.where(do, frac.at[i].set(fj).at[j].set(fi), frac)
            return frac, k

        frac, _ = jax.lax.fori_loop(0, max_swaps, body, (first.frac, k_loop))
        return first.replace(frac=frac)

    return op


def rattle(sigma: float = 0.1, strain: float = 0.0) -> Operator:
    """Gaussian displacements of width ``sigma`` (Å) on every atom, plus an optional
    random symmetric strain of width ``strain`` (the basin-hopping move)."""

    def op(key, first: Crystal, second: Crystal) -> Crystal:
        k_x, k_e = jax.random.split(key)
        dx = sigma * jax.random.normal(k_x, first.frac.shape)
        frac = first.frac + dx @ jnp.linalg.inv(first.lattice)
        lattice = first.lattice
        if strain > 0:
            e = strain * jax.random.normal(k_e, (3, 3))
            lattice = lattice @ (jnp.eye(3) + 0.5 * (e + e.T))
        return first.replace(lattice=lattice, frac=jnp.where(first.mask[:, None], frac, 0.0))

    return op


def transmutation(elements: tuple[int, ...]) -> Operator:
    """Turn one random atom into another of ``elements`` (variable-composition searches).

    The only operator that changes a composition; the search discards children
    whose composition falls outside its space. Slots are re-sorted by atomic
    number so the layout convention (atoms sorted by Z, padding last) holds.
    """
    table = jnp.asarray(elements, jnp.int32)

    def op(key, first: Crystal, second: Crystal) -> Crystal:
        first = jax.tree_util.tree_map(jnp.asarray, first)
        k_i, k_e = jax.random.split(key)
        i = jnp.argmax(jnp.where(first.mask, jax.random.gumbel(k_i, first.mask.shape), -jnp.inf))
        others = table != first.numbers[i]
        e = table[jnp.argmax(jnp.where(others, jax.random.gumbel(k_e, table.shape), -jnp.inf))]
        numbers = first.numbers.at[i].set(e)
        sort_key = jnp.where(first.mask, numbers, 10_000)
        order = jnp.argsort(sort_key, stable=True)
        return first.replace(numbers=numbers[order], frac=first.frac[order], mask=first.mask[order])

    return op


FD_STEP = 1e-2  # Å along a unit-norm mode: far above float32 force noise, far below anharmonicity


def soft_mutation(energy_fn, params, cutoff: float, images: tuple, capacity: int, iterations: int = 12,
                  amplitude: tuple[float, float] = (0.5, 1.2)) -> Operator:
    """Move atoms along a soft (low-curvature) mode of the potential's energy.

    The mode is the dominant eigenvector of ``s 1 - H`` (H the Hessian of the
    energy in Cartesian positions, s above its largest eigenvalue), found by power
    iteration on Hessian-vector products from a random start: a few iterations
    already favour collective, weakly restoring motions over the stiff bond stretches
    a random displacement is dominated by. Rigid translations are projected out.

    A Hessian-vector product is the central difference of the forces at
    ``x +- FD_STEP v`` (``v`` of unit norm), so the program holds only the
    potential's first derivative. Differentiating twice (reverse over reverse)
    gave the same modes but, with SevenNet-0, a program that took 51 s to trace
    and 74 s to compile on one CPU core, more than all of a small search's
    relaxations (benchmarks/RESULTS.md, issue 24). Even the first-derivative
    program costs a SevenNet-0 search about 21 s of compilation;
    :func:`bond_soft_mutation` takes the mode of a bond model instead. The
    displacement is scaled so the most displaced atom moves a uniform random
    distance in ``amplitude`` (in units of Å), with a random sign.

    ``images`` and ``capacity`` fix the graph built inside (static shapes); a
    structure whose graph overflows them, or whose mode is not finite, gets a
    random displacement of the same size instead.
    """

    def curvature(first: Crystal, graph):
        x0, inv, m = first.frac @ first.lattice, jnp.linalg.inv(first.lattice), first.mask[:, None]
        pair = Crystal(*(jnp.stack([a, a]) for a in (first.lattice, first.frac, first.numbers, first.mask)), {})
        pair_graph = jax.tree_util.tree_map(lambda g: jnp.concatenate([g, g]), graph)  # built at x0: tiny steps

        def total_energy(x):
            return jnp.sum(energy_fn(params, pair.replace(frac=x @ inv), pair_graph))

        grad = jax.grad(total_energy)

        def hvp(v):
            step = FD_STEP * v
            g = grad(jnp.stack([x0 + step, x0 - step]))  # one batch of two: forces at x0 +- step
            return jnp.where(m, (g[0] - g[1]) / (2.0 * FD_STEP), 0.0)

        return hvp

    return _along_soft_mode(curvature, cutoff, images, capacity, iterations, amplitude)


BOND_DECAY = 3.0  # stiffness exp(-BOND_DECAY (r / r0 - 1)) of a pair at r, r0 the covalent-radius sum


def bond_curvature(first: Crystal, graph):
    """``hvp(v)``: the Hessian of the bond model at ``first`` (one structure, its graph with a
    batch axis of one) times Cartesian displacements ``v`` (N, 3).

    Every pair in the graph is a spring along its bond, of stiffness
    ``exp(-BOND_DECAY (r / r0 - 1))`` (r0: the sum of the two covalent radii), so short
    bonds are stiff and distant pairs barely count: (H v)_i = sum over i's bonds of
    k (u . (v_i - v_j)) u, u the bond's unit vector. Each pair is in the graph both ways."""
    from jaxinv.relax.fire import covalent_radii

    radii = jnp.asarray(covalent_radii())
    u = edge_vectors(batched(first), graph)[0]
    r = jnp.linalg.norm(u, axis=-1)
    send, recv, mask = graph.senders[0], graph.receivers[0], graph.mask[0]
    u = u / jnp.maximum(r, 1e-12)[:, None]
    r0 = radii[first.numbers[send]] + radii[first.numbers[recv]]
    k = jnp.where(mask, jnp.exp(-BOND_DECAY * (r / jnp.maximum(r0, 1e-3) - 1.0)), 0.0)
    n = first.numbers.shape[0]

    def hvp(v):
        stretch = k * jnp.sum(u * (v[recv] - v[send]), -1)
        return jnp.where(first.mask[:, None], jax.ops.segment_sum(stretch[:, None] * u, recv, n), 0.0)

    return hvp


def bond_soft_mutation(cutoff: float, images: tuple, capacity: int, iterations: int = 12,
                       amplitude: tuple[float, float] = (0.5, 1.2)) -> Operator:
    """:func:`soft_mutation` with the Hessian of a bond model (:func:`bond_curvature`)
    instead of the potential's: the idea of Lyakhov et al., Comput. Phys. Commun. 181,
    1623 (2010), which USPEX and ASE-GA's ``SoftMutation`` use with their own stiffness
    rules. It needs no program of the potential: a cold SevenNet-0 search saves the
    ~21 s the potential's force program takes to compile."""
    return _along_soft_mode(bond_curvature, cutoff, images, capacity, iterations, amplitude)


def _along_soft_mode(curvature, cutoff, images, capacity, iterations, amplitude) -> Operator:
    """The soft-mutation operator for ``curvature(first, graph) -> hvp``: power iteration
    on ``s 1 - H`` from a random start, then a displacement along the mode."""

    def op(key, first: Crystal, second: Crystal) -> Crystal:
        k_v, k_a, k_s = jax.random.split(key, 3)
        graph = build_graph(batched(first), cutoff, images, capacity)
        inv = jnp.linalg.inv(first.lattice)
        x0 = first.frac @ first.lattice
        m = first.mask[:, None]
        hvp = curvature(first, graph)

        def project(v):
            mean = jnp.sum(jnp.where(m, v, 0.0), 0) / jnp.maximum(first.mask.sum(), 1)
            v = jnp.where(m, v - mean, 0.0)
            return v / jnp.maximum(jnp.linalg.norm(v), 1e-12)

        v = project(jax.random.normal(k_v, x0.shape))

        def iterate(i, carry):
            # one loop with one product, so the potential's gradient is compiled once:
            # i < 4, power steps towards H's top eigenvector; i = 4, its Rayleigh quotient
            # sets the shift and the iteration restarts from v; i > 4, power steps on s 1 - H
            u, shift = carry
            hu = hvp(u)
            shift = jnp.where(i == 4, 1.2 * jnp.abs(jnp.vdot(u, hu)) + 1e-6, shift)
            u = jnp.where(i < 4, project(hu), jnp.where(i == 4, v, project(shift * u - hu)))
            return u, shift

        mode, _ = jax.lax.fori_loop(0, 5 + iterations, iterate, (v, jnp.zeros((), x0.dtype)))
        fallback = project(jax.random.normal(k_s, x0.shape))
        ok = jnp.all(jnp.isfinite(mode)) & ~graph.overflow[0]
        mode = jnp.where(ok, mode, fallback)
        largest = jnp.max(jnp.linalg.norm(mode, axis=-1))
        size = jax.random.uniform(k_a, (), minval=amplitude[0], maxval=amplitude[1])
        sign = jnp.where(jax.random.bernoulli(k_a), 1.0, -1.0)
        dx = sign * size * mode / jnp.maximum(largest, 1e-12)
        return first.replace(frac=jnp.where(m, (x0 + dx) @ inv, 0.0))

    return op
