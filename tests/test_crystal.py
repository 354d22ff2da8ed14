import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinv.crystal import Crystal, bucket_size, group_by_bucket


def _sample(ds, n, seed=0):
    return np.random.default_rng(seed).choice(len(ds), n, replace=False)


@pytest.mark.parametrize("name", ["perov", "carbon"])
def test_structure_round_trip_is_exact(name, request):
    ds = request.getfixturevalue(name)
    idx = _sample(ds, 100)
    structures = ds.structures(idx)
    back = Crystal.from_structures(structures, bucket=True).to_structures()
    for a, b in zip(structures, back):
        assert a.species == b.species
        np.testing.assert_array_equal(a.lattice.matrix, b.lattice.matrix)
        np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
        assert a.properties.keys() - {"material_id"} == b.properties.keys()
        for k in b.properties:
            assert a.properties[k] == b.properties[k]


@pytest.mark.parametrize("name", ["perov", "carbon"])
def test_atoms_round_trip(name, request):
    ds = request.getfixturevalue(name)
    c = ds.crystal(_sample(ds, 50, 1))
    atoms = c.to_atoms()
    c2 = Crystal.from_atoms(atoms, n_max=c.n_max)
    np.testing.assert_array_equal(c2.numbers, c.numbers)
    np.testing.assert_array_equal(c2.mask, c.mask)
    np.testing.assert_array_equal(c2.lattice, c.lattice)
    np.testing.assert_allclose(c2.frac, c.frac, atol=1e-12)
    for k in c.labels:
        np.testing.assert_array_equal(c2.labels[k], c.labels[k])
    # positions in ASE are the Cartesian positions of the Crystal
    for b, a in enumerate(atoms):
        np.testing.assert_allclose(a.positions, c.positions[b][c.mask[b]], atol=1e-12)


def test_unwrapped_coordinates_survive(batio3):
    s = batio3.copy()
    s.translate_sites([0], [1.25, -0.5, 2.0], frac_coords=True, to_unit_cell=False)
    c = Crystal.from_structures([s])
    np.testing.assert_array_equal(c.to_structures()[0].frac_coords, s.frac_coords)
    np.testing.assert_allclose(Crystal.from_atoms(c.to_atoms()).frac, c.frac, atol=1e-12)
    w = c.wrapped()
    assert (w.frac >= 0).all() and (w.frac < 1).all()


def test_bucket_ladder():
    assert [bucket_size(n) for n in (1, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 100)] == \
           [4, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
    groups = group_by_bucket([5, 6, 9, 24, 7, 8])
    assert {k: v.tolist() for k, v in groups.items()} == {6: [0, 1], 8: [4, 5], 12: [2], 24: [3]}


def test_padding_and_masks(carbon):
    c = carbon.crystal(np.arange(10), bucket=True)
    assert c.n_max == bucket_size(int(carbon.n_atoms[:10].max()))
    np.testing.assert_array_equal(c.n_atoms, carbon.n_atoms[:10])
    p = c.pad(n_max=32, batch_size=16)
    assert p.frac.shape == (16, 32, 3)
    assert not p.mask[10:].any() and np.isfinite(p.volume).all() and (p.volume > 0).all()
    assert [s.composition for s in p[:10].to_structures()] == [s.composition for s in c.to_structures()]
    with pytest.raises(ValueError, match="n_max"):
        c.pad(n_max=4)


def test_concatenate_keeps_labels(perov, carbon):
    a, b = perov.crystal(np.arange(3)), carbon.crystal(np.arange(2))
    c = Crystal.concatenate([a, b])
    assert c.batch_size == 5 and c.n_max == max(a.n_max, b.n_max)
    assert c.labels == {}  # no label is common to both
    assert Crystal.concatenate([a, perov.crystal(np.arange(3, 5))]).labels["heat_ref"].shape == (5,)


def test_jit_and_vmap(perov):
    c = perov.crystal(np.arange(8))

    @jax.jit
    def mean_bond(c: Crystal):
        return jnp.sum(c.volume) / jnp.sum(c.n_atoms), c.positions

    v, pos = mean_bond(c)
    np.testing.assert_allclose(v, c.volume.sum() / c.n_atoms.sum(), rtol=1e-6)
    np.testing.assert_allclose(pos, c.positions, rtol=1e-5, atol=1e-5)

    # vmap over the batch of a per-structure function sees unbatched fields
    def per_structure(lat, frac, mask):
        return jnp.sum(jnp.where(mask[:, None], frac @ lat, 0.0))

    out = jax.vmap(per_structure)(c.lattice, c.frac, c.mask)
    np.testing.assert_allclose(out, c.positions.sum((1, 2)), rtol=1e-5)
    # a Crystal batch itself can be vmapped as a pytree
    vols = jax.vmap(lambda x: jnp.abs(jnp.linalg.det(x.lattice)))(c)
    np.testing.assert_allclose(vols, c.volume, rtol=1e-5)


def test_jit_compiles_once_per_bucket(carbon):
    traces = []

    @jax.jit
    def f(c):
        traces.append(c.n_max)
        return c.volume.sum()

    for _, batch in carbon.batches(64):
        f(batch)
    assert sorted(set(traces)) == sorted(traces)  # one trace per distinct bucket
    assert len(traces) <= 5


def test_disordered_structure_is_rejected():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        Crystal.from_structures([s])


def test_energy_forces_stress_labels_survive_extxyz(carbon, tmp_path):
    from ase.io import read, write

    c = carbon.crystal(np.arange(5))
    rng = np.random.default_rng(0)
    forces = [rng.normal(size=(int(n), 3)) for n in c.n_atoms]
    stress = rng.normal(size=(5, 3, 3))
    stress = 0.5 * (stress + stress.transpose(0, 2, 1))
    labelled = Crystal.from_arrays(c.lattice, [c.frac[i][c.mask[i]] for i in range(5)],
                                   [c.numbers[i][c.mask[i]] for i in range(5)],
                                   labels={"energy": np.arange(5.0), "stress": stress}, atom_labels={"forces": forces})
    write(tmp_path / "x.extxyz", labelled.to_atoms())
    back = Crystal.from_atoms(read(tmp_path / "x.extxyz", index=":"), n_max=labelled.n_max)
    np.testing.assert_allclose(back.labels["energy"], np.arange(5.0))
    np.testing.assert_allclose(back.labels["stress"], stress, atol=1e-7)  # extxyz keeps 8 digits
    np.testing.assert_allclose(back.atom_labels["forces"], labelled.atom_labels["forces"], atol=1e-7)
    padded = back.pad(n_max=32, batch_size=8)
    assert padded.atom_labels["forces"].shape == (8, 32, 3)
    np.testing.assert_array_equal(padded.atom_labels["forces"][:5][padded.mask[:5]],
                                  back.atom_labels["forces"][back.mask])
