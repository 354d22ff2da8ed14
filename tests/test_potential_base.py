"""The autodiff forces and stress of the common interface, against finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from jaxinv.crystal import Crystal, bucket_size
from jaxinv.graph import neighbor_graph
from jaxinv.potentials import UnsupportedElementError
from toy_potentials import LJ


pytestmark = pytest.mark.usefixtures("float64")  # finite differences need float64 (scoped, see conftest)


@pytest.fixture
def triclinic():
    rng = np.random.default_rng(3)
    lat = Lattice.from_parameters(4.1, 4.6, 5.2, 80, 100, 70)  # no image exactly at the cutoff
    return Structure(lat, ["Si", "Si", "C", "C", "Si"], rng.random((5, 3)) * 0.9)


def _energy(structure):
    c = Crystal.from_structures([structure])
    return float(LJ(c).energy[0])


def test_forces_match_finite_differences(triclinic):
    c = Crystal.from_structures([triclinic], n_max=8)  # padded atoms must not matter
    out = LJ(c)
    h = 1e-5
    fd = np.zeros((5, 3))
    for i in range(5):
        for a in range(3):
            plus, minus = triclinic.copy(), triclinic.copy()
            d = np.zeros(3)
            d[a] = h
            plus.translate_sites([i], d, frac_coords=False, to_unit_cell=False)
            minus.translate_sites([i], -d, frac_coords=False, to_unit_cell=False)
            fd[i, a] = -(_energy(plus) - _energy(minus)) / (2 * h)
    np.testing.assert_allclose(np.asarray(out.forces[0, :5]), fd, atol=1e-6)
    assert np.all(np.asarray(out.forces[0, 5:]) == 0)


def test_stress_matches_finite_differences_and_ase_sign(triclinic):
    out = LJ(Crystal.from_structures([triclinic]))
    h = 1e-6
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] += h / 2
            eps[b, a] += h / 2
            def strained(sign):
                s = triclinic.copy()
                m = np.eye(3) + sign * eps
                return Structure(Lattice(s.lattice.matrix @ m), s.species, s.frac_coords)
            fd[a, b] = (_energy(strained(1)) - _energy(strained(-1))) / (2 * h) / triclinic.volume
    np.testing.assert_allclose(np.asarray(out.stress[0]), fd, atol=1e-7)
    # ASE convention: squeeze a cell well below the LJ minimum -> positive pressure, negative stress
    s = Structure(Lattice.cubic(1.7), ["Si"], [[0, 0, 0]])
    st = np.asarray(LJ(Crystal.from_structures([s])).stress[0])
    assert np.trace(st) < 0


def test_batch_padding_and_isolated_atom(triclinic):
    lonely = Structure(Lattice.cubic(12.0), ["Si"], [[0, 0, 0]])
    c = Crystal.from_structures([triclinic, lonely]).pad(batch_size=3)
    out = LJ(c)
    single = LJ(Crystal.from_structures([triclinic]))
    np.testing.assert_allclose(float(out.energy[0]), float(single.energy[0]), rtol=1e-12)
    assert float(out.energy[1]) == 0.0 and float(out.energy[2]) == 0.0
    assert np.isfinite(np.asarray(out.forces)).all() and np.isfinite(np.asarray(out.stress)).all()
    # invariance: a rigid translation and a permutation change nothing
    moved = triclinic.copy()
    moved.translate_sites(range(5), [0.3, -0.2, 0.7], frac_coords=True, to_unit_cell=False)
    perm = Structure(triclinic.lattice, [triclinic.species[i] for i in [4, 2, 0, 3, 1]],
                     triclinic.frac_coords[[4, 2, 0, 3, 1]])
    e = [float(LJ(Crystal.from_structures([s])).energy[0]) for s in (triclinic, moved, perm)]
    np.testing.assert_allclose(e, e[0], rtol=1e-12)


def test_unknown_element_is_a_clear_error():
    s = Structure(Lattice.cubic(4.0), ["Si", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnsupportedElementError, match="Og"):
        LJ(Crystal.from_structures([s]))


def test_vmap_and_jit_compose(triclinic):
    c = Crystal.from_structures([triclinic] * 3)
    g = neighbor_graph(c, LJ.cutoff)
    fn = LJ.compute_fn(True)
    e_batch = fn(LJ.params, c, g).energy
    # vmapping a per-structure call gives the same
    one = lambda cc, gg: fn(LJ.params, jax.tree_util.tree_map(lambda x: x[None], cc),
                            jax.tree_util.tree_map(lambda x: x[None], gg)).energy[0]
    e_vmap = jax.vmap(one)(c, g)
    np.testing.assert_allclose(np.asarray(e_vmap), np.asarray(e_batch), rtol=1e-12)


def test_calculator_shapes_only_grow_so_a_mixed_loop_compiles_a_few_times(perov, carbon):
    """One JaxinvCalculator over mixed perov_5 (5 atoms) and carbon_24 (6-24 atoms) structures:
    atom slots and edge capacity only grow on the bucket ladder, so a loop over them compiles a
    few times (not once per size), a second pass compiles nothing, and each result equals a
    direct batch evaluation."""
    from jaxinv.potentials import lennard_jones
    from jaxinv.potentials.calculator import JaxinvCalculator

    pot = lennard_jones(sigma=2.0, epsilon=0.01, cutoff=5.0)
    rng = np.random.default_rng(3)
    structures = perov.structures(rng.choice(len(perov), 8, replace=False)) + carbon.structures(
        rng.choice(len(carbon), 8, replace=False))
    order = rng.permutation(len(structures))
    atoms_list = Crystal.from_structures(structures).to_atoms()
    direct = pot(Crystal.from_structures(structures))
    calc, fn = JaxinvCalculator(pot), pot.compute_fn(True)
    before = fn._cache_size()
    for sweep in range(2):
        for k in order:
            atoms = atoms_list[k].copy()
            atoms.calc = calc
            n = len(atoms)
            np.testing.assert_allclose(atoms.get_potential_energy(), float(direct.energy[k]), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(atoms.get_forces(), np.asarray(direct.forces[k])[:n], atol=1e-5)
        if sweep == 0:
            first = fn._cache_size() - before
    assert 1 <= first <= 4  # 16 structures of 5 to 12+ atoms
    assert fn._cache_size() - before == first  # the second sweep reused every program
    assert calc._slots == bucket_size(max(len(s) for s in structures)) > bucket_size(5)
