"""jaxinv.search building blocks: operators, fingerprints, duplicates, Pareto ranking, seeds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from jaxinv.crystal import Crystal
from jaxinv.search import SearchSpace
from jaxinv.search import operators as ops
from jaxinv.search.fingerprint import compute_fingerprints, cosine_distances, unique_mask
from jaxinv.search.pareto import crowding_distance, nsga2_order, pareto_ranks
from jaxinv.search.seeds import from_structures, random_clusters, random_crystals

SPACE = SearchSpace.fixed("Ti2O4")


def counts(c: Crystal):
    c = c.to_host()
    return [sorted(np.unique(c.numbers[b][c.mask[b]], return_counts=True)[1].tolist()) for b in range(c.batch_size)]


@pytest.fixture(scope="module")
def tio2():
    c, ci = random_crystals(SPACE, 6, np.random.default_rng(0))
    return c


def test_random_crystals_have_the_composition_layout_and_spacing(tio2):
    assert tio2.n_max == 6
    np.testing.assert_array_equal(tio2.numbers, np.tile([8, 8, 8, 8, 22, 22], (6, 1)))  # sorted by Z
    from jaxinv.search.seeds import _min_distance_fast

    for b in range(6):
        assert _min_distance_fast(tio2.lattice[b], tio2.frac[b]) >= SPACE.min_distance - 1e-9


def test_shared_tolerances_do_not_change_pyxtal(monkeypatch):
    """The shared pyxtal tolerance table (a speed-up) draws exactly the structures pyxtal draws alone."""
    import contextlib

    import pyxtal.symmetry

    from jaxinv.search import seeds

    original = pyxtal.symmetry.check_images
    monkeypatch.setattr(seeds, "_FAILED", set())
    fast, _ = seeds.random_crystals(SPACE, 4, np.random.default_rng(7), p1_fraction=0.0)
    assert pyxtal.symmetry.check_images is original  # restored after use
    monkeypatch.setattr(seeds, "_shared_tolerances", contextlib.nullcontext)
    monkeypatch.setattr(seeds, "_FAILED", set())
    plain, _ = seeds.random_crystals(SPACE, 4, np.random.default_rng(7), p1_fraction=0.0)
    np.testing.assert_array_equal(fast.lattice, plain.lattice)
    np.testing.assert_array_equal(fast.frac, plain.frac)


def test_impossible_space_group_pairs_are_skipped_not_retried(monkeypatch, caplog):
    import logging

    import pyxtal

    from jaxinv.search import seeds

    groups = seeds.compatible_groups(("Si",), (3,))
    assert 1 in groups and 227 not in groups  # 3 atoms cannot fill diamond's 8a
    # a pair pyxtal accepts on paper but cannot build: every group but P1 fails here
    original = pyxtal.pyxtal.from_random
    calls = []

    def failing(self, dim, group, *args, **kwargs):
        calls.append(group)
        if group != 1:
            raise RuntimeError("cannot place atoms")
        return original(self, dim, group, *args, **kwargs)

    monkeypatch.setattr(pyxtal.pyxtal, "from_random", failing)
    monkeypatch.setattr(seeds, "_FAILED", set())
    with caplog.at_level(logging.INFO, logger="jaxinv.search"):
        c, _ = seeds.random_crystals(SearchSpace.fixed("Si3"), 6, np.random.default_rng(1), p1_fraction=0.0)
    assert c.batch_size == 6
    failed = [g for g in calls if g != 1]
    assert len(failed) == len(set(failed))  # each impossible group tried once, then skipped
    assert {("Si",), } == {k[0] for k in seeds._FAILED} and "skipped from now on" in caplog.text


OPS = {"heredity": jax.jit(jax.vmap(ops.heredity())), "strain": jax.jit(jax.vmap(ops.lattice_strain(0.2))),
       "permutation": jax.jit(jax.vmap(ops.permutation(3))), "rattle": jax.jit(jax.vmap(ops.rattle(0.2, 0.05)))}


@pytest.mark.parametrize("name", list(OPS))
def test_operators_keep_composition_and_vmap(tio2, name):
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    first = Crystal(tio2.lattice, tio2.frac, tio2.numbers, tio2.mask, {})
    second = jax.tree_util.tree_map(lambda x: x[::-1], first)
    child = OPS[name](keys, first, second).to_host()
    np.testing.assert_array_equal(child.numbers, tio2.numbers)
    np.testing.assert_array_equal(child.mask, tio2.mask)
    assert np.isfinite(child.frac).all() and np.isfinite(child.lattice).all()
    changed = ~np.isclose(child.frac, tio2.frac).all((1, 2)) | ~np.isclose(child.lattice, tio2.lattice).all((1, 2))
    assert changed.all()
    if name == "strain":
        np.testing.assert_allclose(child.volume, tio2.volume, rtol=1e-5)


def test_heredity_takes_atoms_from_both_parents(tio2):
    # parents whose atoms sit in two separate clumps: children mix both clumps
    frac = 0.1 + 0.01 * np.arange(6)[None, :, None] * np.ones((6, 6, 3))
    a = Crystal(np.broadcast_to(4.0 * np.eye(3), (6, 3, 3)), frac, tio2.numbers, tio2.mask, {})
    b = a.replace(frac=frac + 0.5)
    frac = np.concatenate([np.asarray(OPS["heredity"](jax.random.split(jax.random.PRNGKey(k), 6), a, b).frac)
                           for k in range(3)])
    d = frac[:, :, None] - frac[:, None]
    d = np.abs(d - np.round(d)).max(-1)  # fractional minimum-image separations
    # a clump spans 0.05; a child of one parent only would stay within it
    assert (d.max((1, 2)) > 0.2).any()
    # ... and every atom still sits in a clump of one of the parents (rigidly shifted)
    assert ((d < 0.06).sum(-1) >= 1).all()


def test_permutation_swaps_unlike_atoms_only():
    c = Crystal(np.eye(3)[None] * 5, np.random.default_rng(0).random((1, 4, 3)), np.array([[8, 8, 22, 22]]),
                np.ones((1, 4), bool), {})
    child = ops.permutation(1)(jax.random.PRNGKey(0), ops.single(c), ops.single(c))
    moved = ~np.isclose(np.asarray(child.frac), c.frac[0]).all(-1)
    assert moved.sum() == 2
    assert set(c.numbers[0][moved].tolist()) == {8, 22}


def test_transmutation_changes_one_atom_and_keeps_sorted_layout():
    space = SearchSpace.binary("Mg", "O", 4, 4)
    z, m = space.numbers(space.compositions.index((2, 2)))
    c = Crystal(np.eye(3)[None] * 5, np.random.default_rng(0).random((1, 4, 3)), z[None], m[None], {})
    child = ops.transmutation(space.elements)(jax.random.PRNGKey(2), ops.single(c), ops.single(c))
    n = np.asarray(child.numbers)
    assert sorted(np.unique(n, return_counts=True)[1].tolist()) == [1, 3]
    assert np.all(np.diff(n) >= 0)
    assert space.composition_index(n, np.asarray(child.mask)) >= 0


def test_soft_mutation_moves_along_a_mode_only_where_the_ea_drew_it():
    """A soft mutation moves the most displaced atom by the drawn amplitude, without rigid
    translation. The EA computes them (17 Hessian-vector products each) only for the slots that drew
    one, SOFT_CHUNK at a time; those children must equal the operator vmapped over every slot."""
    from jaxinv.potentials import lennard_jones
    from jaxinv.relax import FireConfig
    from jaxinv.search import EAConfig, Problem, ea
    from jaxinv.search.core import OP, take

    lj = lennard_jones(sigma=1.0, epsilon=1.0, cutoff=2.5)
    space = SearchSpace.fixed("Ar4", bond_length=1.12, min_distance=0.8, volume_per_atom=1.6)
    config = EAConfig(population=6, soft_amplitude=(0.25, 0.25), soft_model="potential")  # x bond 1.12: 0.28 A
    population, _ = random_crystals(space, 6, np.random.default_rng(3), symmetric=False)
    n, soft_rows = 10, [0, 3, 4, 7, 9]
    codes = np.full(n, OP["heredity"])
    codes[soft_rows] = OP["soft"]
    mothers = np.random.default_rng(4).integers(0, 6, n)
    keys = jax.random.split(jax.random.PRNGKey(5), n)
    randoms, _ = random_crystals(space, n, np.random.default_rng(6), symmetric=False)
    children = jax.tree_util.tree_map(np.array, randoms)
    soften = ea._make_soften(Problem(space, lj, FireConfig(), batch=4), config, (3, 3, 3), 512)
    calls = []

    def counting(k, pop, rows):
        calls.append(len(rows))
        return soften(k, pop, rows)

    out = ea._soft_children(children, codes, keys, population, mothers, counting)
    chunks = -(-len(soft_rows) // ea.SOFT_CHUNK)
    assert calls == [ea.SOFT_CHUNK] * chunks and chunks * ea.SOFT_CHUNK < n  # not every slot
    op = ops.soft_mutation(lj.energy_fn, lj.params, lj.cutoff, (3, 3, 3), 512,
                           amplitude=tuple(1.12 * a for a in config.soft_amplitude))
    parents = take(population, mothers)
    whole = jax.jit(jax.vmap(op))(keys, parents, parents).to_host()
    np.testing.assert_allclose(out.frac[soft_rows], whole.frac[soft_rows], atol=1e-6)
    dx = np.einsum("bni,bij->bnj", out.frac - np.asarray(parents.frac), np.asarray(parents.lattice))[soft_rows]
    np.testing.assert_allclose(np.linalg.norm(dx, axis=-1).max(-1), 0.28, rtol=1e-4)  # largest displacement
    np.testing.assert_allclose(dx.mean(1), 0.0, atol=1e-5)  # no rigid translation
    np.testing.assert_array_equal(out.numbers[soft_rows], np.asarray(parents.numbers)[soft_rows])
    rest = [i for i in range(n) if i not in soft_rows]
    np.testing.assert_array_equal(out.frac[rest], np.asarray(randoms.frac)[rest])
    np.testing.assert_allclose(out.lattice[soft_rows], np.asarray(parents.lattice)[soft_rows], rtol=1e-6)


def test_soft_mutation_follows_the_exact_hessian_power_iteration():
    """The soft mode comes from finite differences of forces (a first-order program); in
    float64 it must be the mode that power iteration on the exact Hessian finds from the
    same random start, and much softer than a random direction."""
    from jaxinv.potentials import lennard_jones

    lj = lennard_jones(sigma=1.0, epsilon=1.0, cutoff=2.5)
    space = SearchSpace.fixed("Ar4", bond_length=1.12, min_distance=0.8, volume_per_atom=1.6)
    c, _ = random_crystals(space, 1, np.random.default_rng(7), symmetric=False)
    key = jax.random.PRNGKey(11)
    with jax.enable_x64(True):
        c = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a, c)
        op = ops.soft_mutation(lj.energy_fn, lj.params, lj.cutoff, (3, 3, 3), 512, amplitude=(0.2, 0.2))
        child = jax.jit(op)(key, ops.single(c), ops.single(c))
        lattice, x0 = c.lattice[0], c.frac[0] @ c.lattice[0]
        graph = ops.build_graph(c, lj.cutoff, (3, 3, 3), 512)
        energy = lambda x: lj.energy_fn(lj.params, c.replace(frac=(x @ np.linalg.inv(lattice))[None]), graph)[0]
        h = np.asarray(jax.hessian(energy)(jnp.asarray(x0))).reshape(12, 12)
        k_v = jax.random.split(key, 3)[0]
        start = np.asarray(jax.random.normal(k_v, x0.shape, jnp.float64))
    dx = ((np.asarray(child.frac) - c.frac[0]) @ lattice).reshape(-1)

    def project(v):
        v = v.reshape(4, 3) - v.reshape(4, 3).mean(0)
        return (v / np.linalg.norm(v)).reshape(-1)

    v = project(start)
    top = v
    for _ in range(4):
        top = project(h @ top)
    shift = 1.2 * abs(top @ h @ top) + 1e-6
    mode = v
    for _ in range(12):
        mode = project(shift * mode - h @ mode)
    assert abs(dx @ mode) / np.linalg.norm(dx) > 0.9999
    rayleigh = lambda u: u @ h @ u / (u @ u)
    randoms = [rayleigh(project(r)) for r in np.random.default_rng(0).normal(size=(200, 12))]
    assert rayleigh(dx) < np.percentile(randoms, 10)


def test_bond_model_hessian_and_its_soft_mutation():
    """The bond model's H v equals the Hessian (jax.hessian) of an explicit energy: a spring
    along every pair of a GaP cell, at rest at its current length, of stiffness
    exp(-3 (r / r0 - 1)); its soft mutation moves along a mode softer than 90% of random
    directions of that Hessian, by the drawn amplitude, without rigid translation."""
    from ase.data import covalent_radii

    space = SearchSpace.fixed("Ga2P2", bond_length=2.4, min_distance=2.0)
    c, _ = random_crystals(space, 1, np.random.default_rng(3), symmetric=False)
    cutoff, images, capacity = 5.0, (3, 3, 3), 2048
    with jax.enable_x64(True):
        c = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64) if a.dtype.kind == "f" else a, c)
        graph = ops.build_graph(c, cutoff, images, capacity)
        assert not bool(graph.overflow[0])
        first = ops.single(c)
        lattice, x0 = c.lattice[0], c.frac[0] @ c.lattice[0]
        send, recv, mask = (np.asarray(a[0]) for a in (graph.senders, graph.receivers, graph.mask))
        shifts = np.asarray(graph.shifts[0]) @ lattice
        z = c.numbers[0]
        r_now = np.linalg.norm(x0[send] + shifts - x0[recv], axis=-1)
        k = np.exp(-ops.BOND_DECAY * (r_now / (covalent_radii[z[send]] + covalent_radii[z[recv]]) - 1.0))

        def springs(x):  # each pair twice in the graph, hence 1/4 instead of 1/2
            d = jnp.where(mask[:, None], x[send] + shifts - x[recv], 1.0)  # padded edges: no 0/0 in the gradient
            r = jnp.linalg.norm(d, axis=-1)
            return 0.25 * jnp.sum(jnp.where(mask, k * (r - r_now) ** 2, 0.0))

        h = np.asarray(jax.hessian(springs)(jnp.asarray(x0))).reshape(12, 12)
        hvp = ops.bond_curvature(first, graph)
        v = np.random.default_rng(0).normal(size=(4, 3))
        np.testing.assert_allclose(np.asarray(hvp(jnp.asarray(v))).reshape(-1), h @ v.reshape(-1), rtol=1e-9,
                                   atol=1e-9)
        op = ops.bond_soft_mutation(cutoff, images, capacity, amplitude=(0.3, 0.3))
        child = jax.jit(op)(jax.random.PRNGKey(5), first, first)
    dx = (np.asarray(child.frac) - c.frac[0]) @ lattice
    assert np.linalg.norm(dx, axis=-1).max() == pytest.approx(0.3, rel=1e-6)
    np.testing.assert_allclose(dx.mean(0), 0.0, atol=1e-9)
    rayleigh = lambda u: u @ h @ u / (u @ u)
    randoms = []
    for r in np.random.default_rng(1).normal(size=(200, 4, 3)):
        randoms.append(rayleigh((r - r.mean(0)).reshape(-1)))
    assert rayleigh(dx.reshape(-1)) < np.percentile(randoms, 10)


def test_soft_mutation_with_numpy_nequip_parameters():
    """Checkpoint-loaded NequIP parameters are NumPy arrays closed over by the operator (the
    SevenNet-0 search rungs failed on this: NumPy embedding indexed by traced species)."""
    from jaxinv.potentials.nequip import NequIPConfig, init_params, nequip_potential

    cfg = NequIPConfig.simple(species=(18,), channels=4, lmax=1, num_layers=1, cutoff=2.5, radial_hidden=(8,))
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    pot = nequip_potential(cfg, params)
    space = SearchSpace.fixed("Ar4", bond_length=1.12, min_distance=0.8, volume_per_atom=1.6)
    c, _ = random_crystals(space, 2, np.random.default_rng(2), symmetric=False)
    op = ops.soft_mutation(pot.energy_fn, pot.params, pot.cutoff, (3, 3, 3), 512, amplitude=(0.2, 0.2))
    child = jax.jit(jax.vmap(op))(jax.random.split(jax.random.PRNGKey(0), 2), c, c).to_host()
    dx = np.einsum("bni,bij->bnj", child.frac - c.frac, c.lattice)
    np.testing.assert_allclose(np.linalg.norm(dx, axis=-1).max(-1), 0.2, rtol=1e-4)


# ---------------------------------------------------------- fingerprints
def _rutile():
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                     [[0, 0, 0], [0.3048, 0.3048, 0]])


def _fp(structures, space):
    c, _ = from_structures(space, structures)
    return compute_fingerprints(c, space.elements, 6.0)


def test_fingerprint_is_invariant_to_symmetry_operations_and_cell_choice():
    rutile = _rutile()
    rotated = rutile.copy()
    from pymatgen.core.operations import SymmOp

    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0))
    shifted = rutile.copy()
    shifted.translate_sites(range(len(shifted)), [0.13, 0.27, 0.41])
    permuted = Structure(rutile.lattice, [rutile[i].species_string for i in [5, 1, 3, 0, 2, 4]],
                         [rutile[i].frac_coords for i in [5, 1, 3, 0, 2, 4]])
    sheared = Structure(Lattice(rutile.lattice.matrix + np.outer([0, 1, 0], rutile.lattice.matrix[0])),
                        rutile.species, rutile.cart_coords, coords_are_cartesian=True, to_unit_cell=True)
    supercell = rutile * (1, 1, 2)
    space = SearchSpace.binary("Ti", "O", 6, 12)
    fp = _fp([rutile, rotated, shifted, permuted, sheared, supercell], space)
    d = np.asarray(cosine_distances(fp, fp))
    assert d[0].max() < 1e-5


def test_fingerprint_distinguishes_polymorphs():
    rutile = _rutile()
    anatase = Structure.from_spacegroup("I4_1/amd", Lattice.tetragonal(3.785, 9.514), ["Ti", "O"],
                                        [[0, 0, 0], [0, 0, 0.2081]]).get_primitive_structure()
    squeezed = rutile.copy()
    squeezed.apply_strain([0.05, 0.0, -0.05])
    fp = _fp([rutile, anatase, squeezed], SPACE)
    d = np.asarray(cosine_distances(fp, fp))
    assert d[0, 1] > 0.02  # polymorphs: far apart
    assert 0.002 < d[0, 2] < d[0, 1]  # a 5% strain: above the default duplicate threshold


def test_unique_mask_keeps_the_first_of_each_group():
    fp = jnp.array([[1.0, 0.0], [1.0, 1e-4], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    valid = jnp.array([True, True, True, False, True])
    keep = np.asarray(unique_mask(fp, valid, 0.01))
    np.testing.assert_array_equal(keep, [True, False, True, False, True])
    energy = jnp.array([0.0, 1.0, 0.0, 0.0, 0.0])  # same fingerprint, different energy: not a duplicate
    np.testing.assert_array_equal(np.asarray(unique_mask(fp, valid, 0.01, energy, 0.1)), [True, True, True, False, True])


# ---------------------------------------------------------------- Pareto
def test_pareto_ranks_and_crowding_on_hand_made_points():
    f = jnp.array([[0.0, 4.0], [1.0, 2.0], [2.0, 1.0], [4.0, 0.0],  # front 0
                   [2.0, 3.0], [3.0, 2.0],  # front 1
                   [4.0, 4.0],  # front 2
                   [jnp.nan, 0.0]])  # invalid
    rank = np.asarray(pareto_ranks(f))
    np.testing.assert_array_equal(rank, [0, 0, 0, 0, 1, 1, 2, 8])
    crowd = np.asarray(crowding_distance(f, jnp.asarray(rank)))
    assert np.isinf(crowd[[0, 3, 4, 5, 6]]).all()
    # interior points of front 0: (2 - 0)/4 + (4 - 1)/4 and (4 - 1)/4 + (2 - 0)/4
    np.testing.assert_allclose(crowd[[1, 2]], [1.25, 1.25])
    order = np.asarray(nsga2_order(f))
    assert set(order[:4]) == {0, 1, 2, 3} and list(order[4:]) == [4, 5, 6, 7] or set(order[4:6]) == {4, 5}
    assert order[-1] == 7


def test_random_clusters_are_centred_and_spaced():
    space = SearchSpace.fixed("Ar13", cluster=True, box=15.0, bond_length=1.12, min_distance=0.9)
    c, _ = random_clusters(space, 4, np.random.default_rng(0))
    x = np.einsum("bni,bij->bnj", c.frac, c.lattice)
    np.testing.assert_allclose(c.lattice, np.broadcast_to(15.0 * np.eye(3), (4, 3, 3)))
    d = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1) + 100 * np.eye(13)
    assert d.min() >= 0.9
    assert np.abs(x.mean(1) - 7.5).max() < 2.0


def test_hull_fitness_is_the_distance_above_the_binary_hull():
    from jaxinv.potentials import lennard_jones
    from jaxinv.search import Problem
    from jaxinv.search.core import empty_population, hull_fitness

    space = SearchSpace.binary("Ar", "Kr", 2, 2, bond_length=1.2)  # Kr2, ArKr, Ar2
    problem = Problem(space, lennard_jones(species=["Ar", "Kr"]))
    # best enthalpies per atom: Ar2 -1, ArKr -2.5, Kr2 -2 -> ArKr is 1 eV/atom below the tie line
    best = np.full(len(space.compositions), np.inf)
    for comp, e in {(2, 0): -1.0, (1, 1): -2.5, (0, 2): -2.0}.items():
        best[space.compositions.index(comp)] = e
    pop = empty_population(problem, 3)
    numbers = np.array([space.numbers(space.compositions.index(c))[0] for c in [(2, 0), (1, 1), (1, 1)]])
    pop = pop.replace(crystal=pop.crystal.replace(numbers=numbers), enthalpy=np.array([-1.0, -2.5, -2.0]),
                      fitness=np.array([-1.0, -2.5, -2.0]), valid=np.ones(3, bool))
    (out,) = hull_fitness(problem, best, [pop])
    np.testing.assert_allclose(out.fitness, [0.0, 0.0, 0.5], atol=1e-9)
    np.testing.assert_allclose(np.asarray(out.objectives)[:, 0], out.fitness)


def test_random_compositions_are_uniform_over_reduced_compositions():
    """Ga-Ti with 2-10 atoms: 63 cells, 33 reduced compositions. Each reduced
    composition is drawn with probability 1/33 (the elements had 9/63 each when cells
    were drawn uniformly); a fixed composition takes exactly one draw, as before."""
    from math import gcd

    space = SearchSpace.binary("Ga", "Ti", 2, 10)
    assert len(space.compositions) == 63
    reduced = lambda c: tuple(k // gcd(*c) for k in c)
    rng = np.random.default_rng(0)
    draws = [reduced(space.compositions[space.draw_composition(rng)]) for _ in range(33000)]
    kinds, counts = np.unique(np.array(draws), axis=0, return_counts=True)
    assert len(kinds) == 33  # 2 elements and the 31 coprime x:y with x + y <= 10
    assert np.abs(counts / 33000 - 1 / 33).max() < 0.004  # ~4 standard errors
    fixed = SearchSpace.fixed("Ga2Ti2")
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert fixed.draw_composition(a) == 0 and a.integers(1 << 30) == (b.integers(1), b.integers(1 << 30))[1]


def test_random_crystals_keep_every_composition_of_a_range():
    """A Ne-Xe Lennard-Jones range, 1-3 atoms, bond length 3.5 Å (min distance 2.45 Å).
    pyxtal sizes Ne cells from its radii, below 2.45 Å, and they were all rejected and the
    composition redrawn: a new user's run got no Ne in 32 random crystals, so no hull.
    Now a short cell is stretched to the min distance, and a rejected structure is redrawn
    in the same composition. Each of the 5 reduced compositions gets about 40/5."""
    from math import gcd

    from jaxinv.search.seeds import _min_distance_fast

    space = SearchSpace.binary("Ne", "Xe", 1, 3, bond_length=3.5)
    for symmetric in (False, True):
        c, ci = random_crystals(space, 40, np.random.default_rng(0), symmetric=symmetric)
        reduced = [tuple(k // gcd(*space.compositions[i]) for k in space.compositions[i]) for i in ci]
        kinds, counts = np.unique(np.array(reduced), axis=0, return_counts=True)
        assert len(kinds) == 5, kinds
        assert counts.min() >= 3, dict(zip(map(tuple, kinds), counts))  # binomial(40, 1/5) < 3: p = 0.008
        for k in range(len(ci)):  # single-atom Ne cells too: their distance is to their own images
            n = int(c.mask[k].sum())
            assert _min_distance_fast(c.lattice[k], c.frac[k][:n]) >= space.min_distance - 1e-9


def test_survival_caps_each_reduced_composition():
    """Ar-Kr, 2-4 atoms. Eight distinct members: five ArKr-type (ArKr and Ar2Kr2 are one
    reduced composition) best of all, then Ar, Kr and Ar3Kr. With a cap of 2, a population
    of 5 keeps the two best ArKr and the best of each other composition; without it, the
    five ArKr. With too few compositions to fill the population, capped members fill it."""
    from jaxinv.potentials import lennard_jones
    from jaxinv.search import Problem
    from jaxinv.search.core import empty_population, survive

    space = SearchSpace.binary("Ar", "Kr", 2, 4, bond_length=1.2)
    problem = Problem(space, lennard_jones(species=["Ar", "Kr"]))
    comps = [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1), (2, 0), (0, 3), (3, 1)]
    fitness = np.array([0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07])
    pool = empty_population(problem, len(comps))
    numbers = np.array([space.numbers(space.compositions.index(c))[0] for c in comps])
    masks = np.array([space.numbers(space.compositions.index(c))[1] for c in comps])
    fp = np.eye(len(comps), pool.fingerprint.shape[1])  # all distinct
    pool = pool.replace(crystal=pool.crystal.replace(numbers=numbers, mask=masks), enthalpy=fitness,
                        fitness=fitness, objectives=fitness[:, None], fingerprint=fp, ident=np.arange(len(comps)),
                        valid=np.ones(len(comps), bool))
    groups = space.reduced_indices()[problem.composition_indices(pool.crystal)]
    assert groups[0] == groups[1] and len(set(groups)) == 4
    kept = lambda p: list(np.asarray(p.ident)[np.asarray(p.valid)])
    assert kept(survive(pool, 5, 0.002, 0.002)) == [0, 1, 2, 3, 4]
    assert kept(survive(pool, 5, 0.002, 0.002, groups, 2)) == [0, 1, 5, 6, 7]
    assert kept(survive(pool, 7, 0.002, 0.002, groups, 1)) == [0, 5, 6, 7, 1, 2, 3]
