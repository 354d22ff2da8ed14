import jax
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from jaxinv.crystal import Crystal, bucket_size
from jaxinv.graph import (build_graph, edge_lengths, edge_vectors, image_slots, images_for, images_needed,
                          neighbor_graph)


def edge_multiset(g, b):
    m = np.asarray(g.mask[b])
    shifts = np.rint(np.asarray(g.shifts[b])[m]).astype(int)
    return sorted(zip(np.asarray(g.receivers[b])[m].tolist(), np.asarray(g.senders[b])[m].tolist(),
                      map(tuple, shifts.tolist())))


def pymatgen_multiset(s, cutoff):
    i, j, images, _ = s.get_neighbor_list(cutoff)
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, np.rint(images).astype(int).tolist())))


def test_batio3_has_60_edges_at_3A(batio3):
    g = neighbor_graph(Crystal.from_structures([batio3]), 3.0)
    assert int(g.n_edges[0]) == 60  # jax-md's minimum image finds 18
    assert edge_multiset(g, 0) == pymatgen_multiset(batio3, 3.0)


@pytest.mark.parametrize("cutoff", [3.0, 5.0, 6.0])
def test_matches_pymatgen_on_real_structures(perov, carbon, cutoff):
    rng = np.random.default_rng(int(cutoff))
    structures = perov.structures(rng.choice(len(perov), 120, replace=False)) + \
        carbon.structures(rng.choice(len(carbon), 120, replace=False))
    c = Crystal.from_structures(structures, bucket=True)
    g = neighbor_graph(c, cutoff)
    assert not np.asarray(g.overflow).any()
    for b, s in enumerate(structures):
        assert edge_multiset(g, b) == pymatgen_multiset(s, cutoff), f"structure {b} ({s.formula})"
    # distances agree too
    d = np.linalg.norm(np.asarray(edge_vectors(c, g)), axis=-1)
    m = np.asarray(g.mask)
    assert d[m].max() <= cutoff + 1e-5 and d[m].min() > 0.5


def _skewed(rng):
    """Cells far from reduced: unimodular transforms of compact cells, and flat triclinic cells."""
    base = Structure(Lattice.cubic(3.0), ["Si", "C"], [[0, 0, 0], [0.25, 0.3, 0.2]])
    out = []
    for t in ([[1, 3, 0], [0, 1, 0], [2, 0, 1]], [[1, 0, 0], [5, 1, 0], [0, -4, 1]], [[1, 2, 3], [0, 1, 4], [0, 0, 1]]):
        s = base.copy()
        s.make_supercell(t)  # same crystal, unimodular (det 1) but very skewed basis
        out.append(s)
    out.append(Structure(Lattice.from_parameters(2.1, 9.0, 3.3, 35, 110, 80), ["C", "C", "O"],
                         rng.random((3, 3))))
    out.append(Structure(Lattice([[6, 0, 0], [5.7, 0.6, 0], [0.3, 0.2, 0.9]]), ["Na", "Cl"], rng.random((2, 3))))
    return out, base


@pytest.mark.parametrize("cutoff", [3.0, 5.0, 6.0])
def test_skewed_cells(cutoff, rng):
    structures, base = _skewed(rng)
    c = Crystal.from_structures(structures)
    g = neighbor_graph(c, cutoff)
    for b, s in enumerate(structures):
        assert edge_multiset(g, b) == pymatgen_multiset(s, cutoff)
    # a change of basis does not change the crystal: same number of neighbors
    g0 = neighbor_graph(Crystal.from_structures([base]), cutoff)
    for b in range(3):
        assert int(g.n_edges[b]) == int(g0.n_edges[0])


def test_overflow_is_flagged_inside_jit_and_grown_outside(carbon):
    c = carbon.crystal(np.arange(16))
    small = build_graph(c, 5.0, (2, 2, 2), 8)
    assert np.asarray(small.overflow).all()
    # too few images searched is flagged too
    tiny = build_graph(c, 5.0, (0, 0, 0), 4096)
    need = images_needed(c.lattice, 5.0)
    np.testing.assert_array_equal(np.asarray(tiny.image_overflow), (need > 0).any(-1))
    g = neighbor_graph(c, 5.0, capacity=8)
    assert not np.asarray(g.overflow).any() and g.capacity >= int(np.max(g.n_edges))


def test_graph_is_jittable_and_padding_is_inert(perov):
    c = perov.crystal(np.arange(4)).pad(n_max=8, batch_size=6)
    g = neighbor_graph(c, 4.0)
    assert int(g.n_edges[4]) == 0 and int(g.n_edges[5]) == 0
    # padded atoms (mask False) never appear in edges
    for b in range(4):
        m = np.asarray(g.mask[b])
        assert np.asarray(g.senders[b])[m].max() < 5 and np.asarray(g.receivers[b])[m].max() < 5
    vec = jax.jit(edge_vectors)(c, g)
    assert np.all(np.asarray(vec)[~np.asarray(g.mask)] == 0)


def test_broken_cell_is_flagged_not_fatal(perov):
    c = perov.crystal(np.arange(3))
    lattice = np.array(c.lattice)
    lattice[1] = np.nan
    lattice[2, 2] *= 1e-4  # a collapsed cell
    g = neighbor_graph(c.replace(lattice=lattice), 5.0)
    np.testing.assert_array_equal(np.asarray(g.overflow), [False, True, True])
    assert edge_multiset(g, 0) == pymatgen_multiset(perov.structures([0])[0], 5.0)


def test_jitted_and_host_builders_agree(carbon):
    c = carbon.crystal(np.arange(30))
    host = neighbor_graph(c, 5.0)
    jitted = build_graph(c, 5.0, host.images, host.capacity)
    for b in range(30):
        assert edge_multiset(host, b) == edge_multiset(jitted, b)
    np.testing.assert_array_equal(np.asarray(host.n_edges), np.asarray(jitted.n_edges))


def test_each_cell_walks_its_own_image_box():
    """A long and a flat cell in one batch: the graph holds as many image slots as the more
    demanding cell needs (not the box of both cells' per-axis maxima), both cells get
    exactly pymatgen's edges, jitted and host builds agree, and a cell that needs more
    slots than the graph has is flagged and gets no edges."""
    long = Structure(Lattice.from_parameters(2.0, 2.1, 20.0, 90, 90, 90), ["Si", "C"], [[0, 0, 0], [0.5, 0.5, 0.3]])
    flat = Structure(Lattice.from_parameters(20.0, 19.0, 2.2, 90, 90, 120), ["Si", "C"], [[0, 0, 0], [0.3, 0.6, 0.5]])
    c = Crystal.from_structures([long, flat])
    cutoff = 6.0
    need = images_needed(np.asarray(c.lattice, np.float64), cutoff)
    per_axis_max = tuple(int(x) for x in need.max(0))
    g = neighbor_graph(c, cutoff)
    assert image_slots(g.images) == max(image_slots(tuple(n)) for n in need) <= image_slots(per_axis_max) / 2
    for b, s in enumerate([long, flat]):
        assert edge_multiset(g, b) == pymatgen_multiset(s, cutoff)
    jitted = build_graph(c, cutoff, g.images, g.capacity)
    assert all(edge_multiset(jitted, b) == edge_multiset(g, b) for b in range(2))
    # a graph sized for the flat cell alone is too small for the long one
    assert images_for(need[1:]) == tuple(need[1])
    small = build_graph(c, cutoff, tuple(int(x) for x in need[1]), g.capacity)
    assert image_slots(tuple(need[0])) > image_slots(tuple(need[1]))
    np.testing.assert_array_equal(np.asarray(small.image_overflow), [True, False])
    assert int(np.asarray(small.mask)[0].sum()) == 0 and edge_multiset(small, 1) == edge_multiset(g, 1)


def test_edge_lengths_and_their_derivatives_match_plain_autodiff(rng, float64):
    """edge_lengths' hand-written reverse rule against autodiff of a plain einsum formula:
    lengths, the gradient in coordinates and lattice, and a Hessian-vector product
    (reverse over reverse, as the soft mutation takes it), on skewed cells of
    different sizes (padded atoms and edges)."""
    import jax.numpy as jnp

    structures, _ = _skewed(rng)
    c = Crystal.from_structures(structures)
    c = c.replace(lattice=jnp.asarray(c.lattice, jnp.float64), frac=jnp.asarray(c.frac, jnp.float64))
    g = neighbor_graph(c, 5.0)
    assert not np.asarray(g.mask).all()  # there is padding to ignore

    def plain(frac, lattice):
        pick = jax.vmap(lambda f, i: f[i])
        d = pick(frac, g.senders) - pick(frac, g.receivers) + g.shifts
        vec = jnp.einsum("bea,bac->bec", d, lattice)
        sq = jnp.where(g.mask, jnp.sum(vec * vec, -1), 1.0)
        return jnp.where(g.mask, jnp.sqrt(sq), 0.0)

    def fast(frac, lattice):
        return edge_lengths(c.replace(frac=frac, lattice=lattice), g)

    w = jnp.asarray(rng.random(g.mask.shape))

    def energy(lengths_fn):  # a smooth pair energy with different weights per edge
        return lambda f, l: jnp.sum(jnp.where(g.mask, w * jnp.exp(-lengths_fn(f, l)) / (1 + lengths_fn(f, l)), 0.0))

    np.testing.assert_allclose(fast(c.frac, c.lattice), plain(c.frac, c.lattice), rtol=1e-12, atol=1e-12)
    e_fast, e_plain = energy(fast), energy(plain)
    for a, b in zip(jax.grad(e_fast, (0, 1))(c.frac, c.lattice), jax.grad(e_plain, (0, 1))(c.frac, c.lattice)):
        assert np.abs(np.asarray(b)).max() > 1e-3
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    v = jnp.asarray(rng.normal(size=c.frac.shape)) * c.mask[..., None]
    hvp = lambda e: jax.grad(lambda f: jnp.vdot(jax.grad(e, 0)(f, c.lattice), v))(c.frac)
    np.testing.assert_allclose(hvp(e_fast), hvp(e_plain), rtol=1e-9, atol=1e-12)


def test_graph_sizing_is_one_rule_allocate_then_update(batio3):
    """Every graph capacity derived from counted edges is ``capacity_for``: allocate with
    headroom h gives bucket_size(int(h * most edges) + 4, 16) (None: the exact bucket), the
    same arrays a rebuild at that capacity gives; the relaxers' sticky graphs and regrowth
    use it too. ``update`` rebuilds at fixed sizes and flags the overflow of a densified cell."""
    from jaxinv.graph import (HEADROOM, allocate, capacity_for, did_buffer_overflow, grown_sizes,
                              update)
    from jaxinv.graph import StickyGraph

    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    c = Crystal.from_structures([batio3, si])
    rc = 3.0
    exact = neighbor_graph(c, rc)
    most = int(np.max(np.asarray(exact.n_edges)))
    assert most == 60 and exact.capacity == bucket_size(most, 16) == capacity_for(exact.n_edges, None)
    assert allocate(c, rc, headroom=None).capacity == exact.capacity
    for h in (HEADROOM, 1.6, 3.0):
        g = allocate(c, rc, headroom=h)
        assert g.capacity == bucket_size(int(h * most) + 4, 16) == capacity_for(exact.n_edges, h)
        rebuilt = neighbor_graph(c, rc, capacity=g.capacity, images=g.images)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(rebuilt)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert StickyGraph(rc)(c).capacity == allocate(c, rc).capacity == bucket_size(int(HEADROOM * most) + 4, 16)
    assert allocate(c, rc, capacity=512).capacity == 512  # a minimum that fits is kept
    assert allocate(c, rc, capacity=16).capacity == allocate(c, rc).capacity  # one that does not grows by the rule

    g = allocate(c, rc, images=(2, 2, 2))  # images to spare: the compressed cell below runs out of edge slots
    step = jax.jit(update)
    same = step(g, c)
    assert not bool(did_buffer_overflow(same)) and same.capacity == g.capacity and same.images == g.images
    assert edge_multiset(same, 0) == edge_multiset(g, 0) and edge_multiset(same, 1) == edge_multiset(g, 1)
    dense = c.replace(lattice=np.asarray(c.lattice) * 0.7)  # the same atoms in a compressed cell
    over = step(g, dense)
    assert bool(did_buffer_overflow(over)) and int(over.n_edges[0]) > g.capacity and not over.image_overflow.any()
    capacity, images = grown_sizes(over, dense.lattice, rc)
    assert capacity == capacity_for(over.n_edges)
    regrown = allocate(dense, rc, capacity=capacity, images=images)
    assert regrown.capacity == capacity and not bool(did_buffer_overflow(step(regrown, dense)))
