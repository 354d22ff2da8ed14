import numpy as np
from ase.io import read

from jaxinv.crystal import Crystal
from jaxinv.io import read_structures, write_all


def test_export_and_read_back(carbon, tmp_path):
    c = carbon.crystal(np.arange(6))
    paths = write_all(c, tmp_path)
    assert len(paths["cif"]) == 6
    from_cif = read_structures(tmp_path / "cif")
    from_json = read_structures(paths["json"])
    from_xyz = read_structures(paths["extxyz"])
    ref = c.to_structures()
    for a, b, x in zip(ref, from_json, from_xyz):
        np.testing.assert_array_equal(a.lattice.matrix, b.lattice.matrix)
        np.testing.assert_allclose(a.frac_coords, b.frac_coords, atol=0)
        np.testing.assert_allclose(a.cart_coords, x.cart_coords, atol=1e-6)
        assert b.properties["energy_per_atom"] == a.properties["energy_per_atom"]
    for a, b in zip(ref, from_cif):  # CIF stores 8 decimals
        assert a.composition == b.composition
        np.testing.assert_allclose(a.lattice.abc, b.lattice.abc, atol=1e-6)
    atoms = read(paths["extxyz"], index=":")
    np.testing.assert_allclose([a.info["energy_per_atom"] for a in atoms], c.labels["energy_per_atom"])
    assert Crystal.from_atoms(atoms).labels["energy_per_atom"].shape == (6,)
