"""The NequIP model with random parameters: symmetry, padding, and autodiff against finite differences.

Compilation dominates the run time here, so tests share potentials (and so their
jit caches) and, where they can, batch shapes.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from scipy.spatial.transform import Rotation

from jaxinv.crystal import Crystal
from jaxinv.graph import neighbor_graph
from jaxinv.potentials.nequip import NequIPConfig, hermite_weights, init_params, nequip_potential

SPECIES = (6, 8, 22, 38)  # C, O, Ti, Sr


def small_config(**kw) -> NequIPConfig:
    base = dict(channels=8, lmax=2, num_layers=2, cutoff=4.0, radial_hidden=(16,), readout_hidden=8,
                conv_denominator=3.0, shift=(-1.0, -2.0, -3.0, -4.0), scale=0.5, edge_chunk=64)
    base.update(kw)
    return NequIPConfig.simple(SPECIES, **base)


@functools.cache
def potential(config, seed=0):
    params = init_params(config, jax.random.key(seed))
    # random (not initial) Bessel frequencies and scales exercise every parameter
    p = params["params"]
    if "bessel_coeffs" in p:
        p["bessel_coeffs"] = p["bessel_coeffs"] * (1 + 0.1 * jax.random.normal(jax.random.key(seed + 1), (config.num_basis,)))
    return nequip_potential(config, params)


@pytest.fixture(scope="module")
def triclinic():
    rng = np.random.default_rng(11)
    lat = Lattice.from_parameters(4.3, 4.9, 5.4, 78, 101, 69)
    return Structure(lat, ["Sr", "Ti", "O", "O", "C", "O"], rng.random((6, 3)))


CONFIGS = {
    "parity-poly-linear": small_config(parity=True, envelope="polynomial"),
    "parity-poly-linear-tabulated": small_config(parity=True, envelope="polynomial", radial_grid=512),
    "even-xplor-speciestp": small_config(parity=False, lmax=1, envelope="xplor", r_on=3.3,
                                         self_connection="species_tp", trainable_basis=False, normalize_sh=False),
}


@pytest.fixture(params=list(CONFIGS))
def pot(request, float64):
    return potential(CONFIGS[request.param])


def copies(structure, k=4):
    """k copies in one batch: the same shapes as the 4-structure batch of the symmetry test."""
    c = Crystal.from_structures([structure] * k)
    return c, neighbor_graph(c, 4.0)


def _rotate(structure, rot):
    """The structure rotated by ``rot`` (Cartesian), fractional coordinates unchanged."""
    return Structure(Lattice(structure.lattice.matrix @ rot.T), structure.species, structure.frac_coords)


def test_rotation_translation_permutation(pot, triclinic):
    cfg = pot.metadata["config"]
    rot = Rotation.random(random_state=3).as_matrix()
    if cfg.parity:  # an O(3) model is also invariant under inversion
        rot = -rot
    moved = triclinic.copy()
    moved.translate_sites(range(len(moved)), [0.31, -0.72, 1.4], frac_coords=True, to_unit_cell=False)
    perm = [4, 2, 0, 5, 3, 1]
    permuted = Structure(triclinic.lattice, [triclinic.species[i] for i in perm], triclinic.frac_coords[perm])
    c = Crystal.from_structures([triclinic, _rotate(triclinic, rot), moved, permuted])
    out = pot(c)
    e = np.asarray(out.energy)
    np.testing.assert_allclose(e, e[0], rtol=1e-10, atol=1e-10)
    f, s = np.asarray(out.forces), np.asarray(out.stress)
    assert np.abs(f[0]).max() > 1e-3  # a nontrivial test: forces do not vanish
    np.testing.assert_allclose(f[1], f[0] @ rot.T, atol=1e-9)  # forces rotate as vectors
    np.testing.assert_allclose(f[2], f[0], atol=1e-9)
    np.testing.assert_allclose(f[3], f[0][perm], atol=1e-9)
    np.testing.assert_allclose(s[1], rot @ s[0] @ rot.T, atol=1e-10)  # stress rotates as a tensor


def test_padding_batching_and_isolated_atom(triclinic, float64):
    pot = potential(CONFIGS["parity-poly-linear"])
    lonely = Structure(Lattice.cubic(10.0), ["Ti"], [[0.1, 0.2, 0.3]])
    dimer = Structure(Lattice.cubic(9.0), ["O", "C"], [[0, 0, 0], [0.2, 0.1, 0.05]])
    batch = Crystal.from_structures([triclinic, lonely, dimer], n_max=9).pad(batch_size=4)
    out = pot(batch)
    c, g = copies(triclinic)
    alone = pot.compute_fn(True)(pot.params, c, g)
    np.testing.assert_allclose(float(out.energy[0]), float(alone.energy[0]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(out.forces[0, :6]), np.asarray(alone.forces[0]), atol=1e-11)
    np.testing.assert_allclose(np.asarray(out.stress[0]), np.asarray(alone.stress[0]), atol=1e-12)
    assert np.all(np.asarray(out.forces[:, 6:]) == 0)
    # an isolated atom: finite energy, no force, no stress; the empty slot has zero energy
    assert np.isfinite(float(out.energy[1])) and float(out.energy[1]) != 0.0
    assert np.all(np.asarray(out.forces[1]) == 0) and np.abs(np.asarray(out.stress[1])).max() < 1e-14
    assert float(out.energy[3]) == 0.0
    assert np.isfinite(np.asarray(out.stress)).all()
    # the dimer: equal and opposite forces
    np.testing.assert_allclose(np.asarray(out.forces[2, 0]), -np.asarray(out.forces[2, 1]), atol=1e-12)
    assert np.abs(np.asarray(out.forces[2, 0])).max() > 1e-6


def test_edge_chunks_do_not_change_results(triclinic, float64):
    """The convolution's edge loop (chunks, padding-only chunks skipped) is exact."""
    cfg = CONFIGS["parity-poly-linear"]
    lonely = Structure(Lattice.cubic(10.0), ["Ti"], [[0.1, 0.2, 0.3]])
    batch = Crystal.from_structures([lonely, triclinic, lonely], n_max=9).pad(batch_size=4)  # padding in between
    params = potential(cfg).params
    one_step = nequip_potential(dataclasses.replace(cfg, edge_chunk=10**6), params)(batch)  # no loop
    chunked = nequip_potential(dataclasses.replace(cfg, edge_chunk=8), params)(batch)
    np.testing.assert_allclose(np.asarray(chunked.energy), np.asarray(one_step.energy), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(chunked.forces), np.asarray(one_step.forces), atol=1e-11)
    np.testing.assert_allclose(np.asarray(chunked.stress), np.asarray(one_step.stress), atol=1e-12)


def test_edges_beyond_cutoff_and_padded_edges_are_inert(triclinic, float64):
    pot = potential(CONFIGS["even-xplor-speciestp"])
    c, exact = copies(triclinic)
    skin = neighbor_graph(c, pot.cutoff + 1.0)  # more and longer edges, more periodic images
    assert int(skin.n_edges[0]) > int(exact.n_edges[0])
    fn = pot.compute_fn(True)
    a, b = fn(pot.params, c, exact), fn(pot.params, c, skin)
    np.testing.assert_allclose(float(a.energy[0]), float(b.energy[0]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(a.forces), np.asarray(b.forces), atol=1e-11)
    np.testing.assert_allclose(np.asarray(a.stress), np.asarray(b.stress), atol=1e-12)


def test_forces_and_stress_match_finite_differences(pot, triclinic):
    c, g = copies(triclinic)
    fn = pot.compute_fn(True)  # displaced copies reuse the symmetry test's compilation
    out = fn(pot.params, c, g)

    def energy(frac, lattice):
        return float(fn(pot.params, c.replace(frac=np.broadcast_to(frac, c.frac.shape),
                                               lattice=np.broadcast_to(lattice, c.lattice.shape)), g).energy[0])

    lattice, frac = c.lattice[:1], c.frac[:1]
    inv = np.linalg.inv(c.lattice[0])
    h = 1e-5
    fd = np.zeros((len(triclinic), 3))
    for i in range(len(triclinic)):
        for a in range(3):
            d = np.zeros((1, len(triclinic), 3))
            d[0, i] = h * inv[a]  # a Cartesian step along axis a, in fractional coordinates
            fd[i, a] = -(energy(frac + d, lattice) - energy(frac - d, lattice)) / (2 * h)
    np.testing.assert_allclose(np.asarray(out.forces[0]), fd, atol=1e-7)
    fd_s = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] += h / 2
            eps[b, a] += h / 2
            plus, minus = lattice @ (np.eye(3) + eps), lattice @ (np.eye(3) - eps)
            fd_s[a, b] = (energy(frac, plus) - energy(frac, minus)) / (2 * h) / triclinic.volume
    np.testing.assert_allclose(np.asarray(out.stress[0]), fd_s, atol=1e-8)


def test_parameters_get_finite_gradients(triclinic, float64):
    """Training on energies and forces: every parameter gets a finite gradient (scan + remat included)."""
    cfg = dataclasses.replace(CONFIGS["even-xplor-speciestp"], edge_chunk=32)  # several edge chunks
    pot = potential(cfg)
    c = Crystal.from_structures([triclinic])
    g = neighbor_graph(c, cfg.cutoff)
    assert g.capacity > 2 * 32

    @jax.jit
    def loss(params):
        forces = jax.grad(lambda f: pot.energy_fn(params, c.replace(frac=f), g).sum())(jnp.asarray(c.frac))
        return pot.energy_fn(params, c, g).sum() ** 2 + jnp.sum(forces**2)

    grads = jax.grad(loss)(pot.params)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for path, leaf in leaves:
        leaf = np.asarray(leaf)
        assert np.isfinite(leaf).all(), path
        assert np.abs(leaf).max() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_config_round_trip_and_validation():
    cfg = CONFIGS["even-xplor-speciestp"]
    assert NequIPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="regrouped"):
        NequIPConfig(species=SPECIES, irreps=("8x0e", "4x1e+8x0e"))
    with pytest.raises(ValueError, match="envelope"):
        small_config(envelope="cosine")


def test_hermite_table_interpolates_value_and_slope(float64):
    """A table of f = sin(3r) r^2 and its slope reproduces f and f' between the knots."""
    f = lambda r: jnp.sin(3 * r) * r * r
    df = jax.vmap(jax.grad(f))
    grid, rc = 200, 5.0
    h = rc / grid
    knots = jnp.arange(grid + 1) * h
    v, d = f(knots), df(knots)
    table = jnp.stack([v[:-1], h * d[:-1], v[1:], h * d[1:]], axis=1)[:, :, None]  # one weight column
    weights = hermite_weights(table, h)
    r = jnp.asarray(np.random.default_rng(0).uniform(0.01, rc - 1e-9, 500))
    np.testing.assert_allclose(np.asarray(weights(r[:, None])[:, 0]), np.asarray(f(r)), atol=2e-6)
    slope = jax.vmap(jax.grad(lambda x: weights(x[None, None])[0, 0]))(r)
    np.testing.assert_allclose(np.asarray(slope), np.asarray(df(r)), atol=5e-4)
    assert float(weights(jnp.zeros((1, 1)))[0, 0]) == 0.0  # length 0 marks an edge with no message


def test_tabulated_radial_weights_match_the_mlp(triclinic, float64):
    """The same parameters with the radial MLPs tabulated (512 intervals) give the same model."""
    tab_cfg = CONFIGS["parity-poly-linear-tabulated"]
    tabulated = potential(tab_cfg)
    exact = nequip_potential(dataclasses.replace(tab_cfg, radial_grid=0), tabulated.params)
    c, g = copies(triclinic)
    a, b = exact.compute_fn(True)(exact.params, c, g), tabulated.compute_fn(True)(tabulated.params, c, g)
    assert np.abs(np.asarray(a.forces)).max() > 1e-3
    np.testing.assert_allclose(np.asarray(b.energy), np.asarray(a.energy), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(b.forces), np.asarray(a.forces), atol=1e-6)
    np.testing.assert_allclose(np.asarray(b.stress), np.asarray(a.stress), atol=1e-7)
    # the tables follow the parameters they were built from, and a coarse grid is measurably off
    coarse = nequip_potential(dataclasses.replace(tab_cfg, radial_grid=4), tabulated.params)
    assert abs(float(coarse(c).energy[0]) - float(a.energy[0])) > 1e-4
