"""Generative representations: coordinate and voxel round trips, symmetry augmentation."""
import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

import jax
import jax.numpy as jnp

from jaxinv.crystal import Crystal
from jaxinv.generative.coords import (CoordSpec, LatticeScaler, canonical_order, decode_coords, encode_coords,
                                      lattice_to_params, params_to_lattice)
from jaxinv.generative.species import Vocabulary
from jaxinv.generative.symmetry import (augment_frac, augment_voxels, automorphism_table, lattice_automorphisms,
                                        sort_slots)
from jaxinv.generative.voxel import VoxelSpec, decode_voxels, find_peaks, voxelize


def _gram(lattice):
    return np.einsum("...ij,...kj->...ik", lattice, lattice)


def test_lattice_parameters_round_trip(rng):
    lat = rng.normal(size=(20, 3, 3)) + 4 * np.eye(3)
    back = params_to_lattice(lattice_to_params(lat))
    np.testing.assert_allclose(_gram(back), _gram(lat), atol=1e-9)  # same cell up to a rotation
    assert np.allclose(np.triu(back, 1), 0)  # canonical lower-triangular form
    j = np.asarray(params_to_lattice(jnp.asarray(lattice_to_params(lat), jnp.float32)))
    np.testing.assert_allclose(_gram(j), _gram(lat), rtol=1e-4)


@pytest.mark.parametrize("niggli", [False, True])
def test_coordinate_round_trip_is_exact(perov, carbon, niggli):
    for ds in (perov.subset("test"), carbon.subset("test")):
        c = ds.crystal(np.arange(12), bucket=False)
        spec = CoordSpec(int(ds.n_atoms.max()), Vocabulary.from_dataset(ds), niggli)
        rep = encode_coords(c, spec)
        assert rep["frac"].shape == (12, spec.n_slots, 3) and rep["species"].shape == (12, spec.n_slots)
        out = decode_coords(rep, spec.vocab)
        np.testing.assert_array_equal(out.n_atoms, c.n_atoms)
        matcher = StructureMatcher()
        for a, b in zip(c.to_structures(), out.to_structures()):
            assert a.composition == b.composition
            assert matcher.get_rms_dist(a, b)[0] < 1e-6
        if not niggli:  # the very same cell: metric and sorted coordinates equal
            np.testing.assert_allclose(_gram(out.lattice), _gram(c.lattice), atol=1e-9)
            for b in range(12):
                m = c.mask[b]
                key = lambda f, z: sorted(zip(z.tolist(), np.round(np.mod(f, 1) % 1, 9).tolist()))
                assert key(c.frac[b][m], c.numbers[b][m]) == key(out.frac[b][out.mask[b]], out.numbers[b][out.mask[b]])


def test_canonical_order_ignores_input_order(perov):
    c = perov.subset("test").crystal(np.arange(6), bucket=False)
    spec = CoordSpec(5, Vocabulary.from_dataset(perov))
    perm = np.random.default_rng(1).permutation(5)
    shuffled = c.replace(frac=c.frac[:, perm], numbers=c.numbers[:, perm], mask=c.mask[:, perm])
    a, b = encode_coords(c, spec), encode_coords(shuffled, spec)
    np.testing.assert_array_equal(a["species"], b["species"])
    np.testing.assert_allclose(a["frac"], b["frac"])
    s, f = sort_slots(jnp.asarray(b["species"][:, ::-1]), jnp.asarray(b["frac"][:, ::-1]))
    np.testing.assert_array_equal(np.asarray(s), a["species"])
    order = canonical_order(a["species"], a["frac"])
    np.testing.assert_array_equal(order, np.tile(np.arange(5), (6, 1)))


def test_vocabulary(perov):
    v = Vocabulary.from_dataset(perov.subset("train"))
    assert len(v) == 56 and v.n_classes == 57
    z = np.array([[8, 22, 0]])
    np.testing.assert_array_equal(v.atomic_numbers(v.classes(z)), z)
    np.testing.assert_array_equal(v.nearest(v.descriptors), v.numbers)
    with pytest.raises(ValueError, match="not in the model's vocabulary"):
        v.classes(np.array([92]))


def test_lattice_scaler_inverts(perov):
    p = lattice_to_params(perov.lattice[:50])
    s = LatticeScaler.fit(p)
    np.testing.assert_allclose(s.inverse(s.transform(p)), p, rtol=1e-10)


def test_voxel_round_trip_perov(perov):
    test = perov.subset("test")
    c = test.crystal(np.arange(8), bucket=False)
    spec = VoxelSpec(Vocabulary.from_dataset(perov.subset("train")))
    images = voxelize(c, spec)
    assert images.shape == (8, 32, 32, 32, 3)
    assert images[..., 0].max() == pytest.approx(1.0, abs=0.02)
    out = decode_voxels(images, c.lattice, spec)
    matcher = StructureMatcher()
    for a, b in zip(c.to_structures(), out.to_structures()):
        assert a.composition == b.composition
        assert matcher.get_rms_dist(a, b)[0] < 1e-4


def test_voxel_decoding_to_a_predicted_atom_count(perov):
    # a faint image (peaks at 0.1, under the fixed 0.25 threshold) decodes to nothing by
    # threshold, but to its atoms when the model says how many there are
    test = perov.subset("test")
    c = test.crystal(np.arange(4), bucket=False)
    spec = VoxelSpec(Vocabulary.from_dataset(perov.subset("train")))
    images = voxelize(c, spec)
    faint = images.copy()
    faint *= 0.1  # every channel: the element descriptors are density-weighted
    assert decode_voxels(faint, c.lattice, spec).mask.sum() == 0
    out = decode_voxels(faint, c.lattice, spec, counts=np.full(4, 5))
    for a, b in zip(c.to_structures(), out.to_structures()):
        assert a.composition == b.composition and StructureMatcher().fit(a, b)
    # fewer atoms asked: three of the true sites are kept
    three = decode_voxels(images, c.lattice, spec, counts=np.full(4, 3))
    assert (three.mask.sum(-1) == 3).all()
    for b in range(4):
        true = np.asarray(c.frac[b])[np.asarray(c.mask[b])]
        d = three.frac[b][three.mask[b]][:, None] - true[None]
        d -= np.round(d)
        assert np.linalg.norm(d @ np.asarray(c.lattice[b]), axis=-1).min(1).max() < 1e-3


def test_voxel_decoding_with_a_predicted_composition(perov):
    # a faint image decodes, with a predicted element multiset, to its crystal: the
    # elements are matched one-to-one to the peaks by their descriptor channels
    test = perov.subset("test")
    c = test.crystal(np.arange(6), bucket=False)
    vocab = Vocabulary.from_dataset(perov.subset("train"))
    spec = VoxelSpec(vocab)
    images = voxelize(c, spec)
    species = np.asarray(c.numbers) * np.asarray(c.mask)
    out = decode_voxels(images * 0.1, c.lattice, spec, species=species[:, ::-1])  # any order
    for a, b in zip(c.to_structures(), out.to_structures()):
        assert a.composition == b.composition and StructureMatcher().fit(a, b)
    # a wrong multiset is taken as given: the elements come from the prediction
    wrong = np.where(species > 0, species[:, :1], 0)  # every site the first site's element
    bad = decode_voxels(images, c.lattice, spec, species=wrong)
    assert all(len(set(s.atomic_numbers)) == 1 for s in bad.to_structures())


def test_voxel_round_trip_skewed_carbon(carbon):
    # the most skewed test cells: the windowed smearing must still see every image
    test = carbon.subset("test")
    angles = lattice_to_params(test.lattice)[:, 3:]
    idx = np.argsort(-np.abs(angles - 90).max(1))[:3]
    c = test.crystal(idx, bucket=False)
    spec = VoxelSpec(Vocabulary((6,)))
    assert spec.channels == 1
    out = decode_voxels(voxelize(c, spec), c.lattice, spec)
    for a, b in zip(c.to_structures(), out.to_structures()):
        assert len(a) == len(b)
        assert StructureMatcher().fit(a, b)


def test_voxel_gaussian_sums_periodic_images():
    # one atom in a 1.2 Å cubic cell: every image within the cutoff (4.5 sigma) adds its Gaussian
    spec = VoxelSpec(Vocabulary((6,)), grid=8, sigma=0.5)
    c = Crystal.from_arrays([1.2 * np.eye(3)], [np.zeros((1, 3))], [np.array([6])])
    img = voxelize(c, spec)[0, ..., 0]
    r2 = [1.44 * (i * i + j * j + k * k) for i in range(-4, 5) for j in range(-4, 5) for k in range(-4, 5)]
    expect = sum(np.exp(-x / 0.5) for x in r2 if x <= 2.25 ** 2)
    assert expect > 1.3  # the images matter
    assert img[0, 0, 0] == pytest.approx(expect, rel=1e-5)


def test_find_peaks_empty_and_merge():
    rho = np.zeros((8, 8, 8))
    f, _ = find_peaks(rho, 4 * np.eye(3))
    assert len(f) == 0
    rho[2, 2, 2] = rho[2, 2, 3] = 1.0  # a plateau: two maxima 0.5 Å apart merge into one
    f, _ = find_peaks(rho, 4 * np.eye(3), merge_distance=0.6)
    assert len(f) == 1


def test_automorphisms():
    cubic = lattice_automorphisms(4.0 * np.eye(3))
    hexagonal = lattice_automorphisms(Lattice.hexagonal(3.0, 5.0).matrix)
    triclinic = lattice_automorphisms(Lattice.from_parameters(3, 4, 5, 70, 80, 100).matrix)
    assert (len(cubic), len(hexagonal), len(triclinic)) == (48, 24, 2)
    for lat, ops in ((Lattice.hexagonal(3.0, 5.0).matrix, hexagonal),):
        G = lat @ lat.T
        for R in ops:
            np.testing.assert_allclose(R.T @ G @ R, G, atol=1e-9)
    ops, counts = automorphism_table(np.stack([4 * np.eye(3), Lattice.hexagonal(3.0, 5.0).matrix]))
    assert ops.shape == (2, 48, 3, 3) and counts.tolist() == [48, 24]


def test_augmented_coordinates_are_the_same_crystal(batio3):
    hexa = Structure(Lattice.hexagonal(2.5, 4.0), ["C", "C"], [[1 / 3, 2 / 3, 0.1], [2 / 3, 1 / 3, 0.6]])
    c = Crystal.from_structures([batio3, hexa])
    ops, counts = automorphism_table(c.lattice)
    matcher = StructureMatcher(primitive_cell=False, scale=False)
    for seed in range(4):
        f = augment_frac(jax.random.PRNGKey(seed), jnp.asarray(c.frac), jnp.asarray(ops), jnp.asarray(counts))
        moved = c.replace(frac=np.asarray(f, np.float64))
        for a, b in zip(c.to_structures(), moved.to_structures()):
            assert matcher.fit(a, b)


def test_voxel_augmentation_equals_voxelizing_the_moved_crystal(batio3):
    c = Crystal.from_structures([batio3])
    spec = VoxelSpec(Vocabulary((8, 22, 56)), grid=16)
    ops, counts = automorphism_table(c.lattice)
    key = jax.random.PRNGKey(3)
    img = augment_voxels(key, jnp.asarray(voxelize(c, spec)), jnp.asarray(ops), jnp.asarray(counts))
    # the same random draws applied to coordinates: the op, and a whole-voxel shift
    k_op, k_shift = jax.random.split(key)
    from jaxinv.generative.symmetry import _pick_ops

    R = np.asarray(_pick_ops(k_op, jnp.asarray(ops), jnp.asarray(counts)))[0]
    s = np.asarray(jax.random.randint(k_shift, (1, 1, 3), 0, 16))[0, 0]
    frac = c.frac[0] @ R.T + s / 16
    expect = voxelize(c.replace(frac=frac[None]), spec)
    np.testing.assert_allclose(np.asarray(img), expect, atol=1e-5)
