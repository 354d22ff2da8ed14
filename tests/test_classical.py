"""Classical potentials: the interface contract, known values and independent implementations."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from jaxinv.crystal import Crystal
from jaxinv.graph import neighbor_graph, pad_graph
from jaxinv.potentials import energy_forces_stress
from jaxinv.potentials.classical import (bks_sio2, isolated_cluster, lennard_jones, matsui_akaogi_tio2, morse,
                                         neighbor_overflow, point_charges, stillinger_weber, tersoff)
from jaxinv.potentials.classical._common import smoothstep, truncate
from jaxinv.potentials.classical.ionic import (BKS_BUCKINGHAM, BKS_CHARGES, BKS_CORE, MA_BUCKINGHAM, MA_CHARGES,
                                              buckingham_energy)
from jaxinv.potentials.classical.tersoff import tersoff_tables

pytestmark = pytest.mark.usefixtures("float64")  # finite differences and known values need float64

K_E = 14.3996454784  # eV Å


# ---------------------------------------------------------------- structures
def _distort(s: Structure, rng, rattle=0.05, strain=0.03) -> Structure:
    """A rattled copy in a sheared (triclinic) cell; no image sits exactly at a cutoff."""
    m = np.eye(3) + rng.uniform(-strain, strain, (3, 3))
    cart = s.cart_coords @ m + rng.normal(0, rattle, (len(s), 3))
    return Structure(Lattice(s.lattice.matrix @ m), s.species, cart, coords_are_cartesian=True)


def _fcc(a, species):
    return Structure(Lattice.cubic(a), species, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _diamond(a, a_species="Si", b_species="Si"):
    fcc = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    return Structure(Lattice.cubic(a), [a_species] * 4 + [b_species] * 4, np.vstack([fcc, fcc + 0.25]))


def _rutile(a=4.594, c=2.959, u=0.3048):
    return Structure(Lattice.tetragonal(a, c), ["Ti", "Ti", "O", "O", "O", "O"],
                     [[0, 0, 0], [.5, .5, .5], [u, u, 0], [1 - u, 1 - u, 0], [.5 + u, .5 - u, .5], [.5 - u, .5 + u, .5]])


def _quartz():
    """alpha-quartz, P3_221 (Levien, Prewitt & Weidner 1980)."""
    return Structure.from_spacegroup("P3_221", Lattice.hexagonal(4.9134, 5.4052), ["Si", "O"],
                                     [[0.4697, 0, 2 / 3], [0.4135, 0.2669, 0.1191 + 2 / 3]])


def _rocksalt(a=5.64):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _sic_with_antisites():
    s = _diamond(4.36, "Si", "C")
    s.replace(1, "C")  # antisites give Si-Si and C-C bonds, so every pair and triplet type occurs
    s.replace(6, "Si")
    return s


@functools.cache
def _energy_fn(pot):
    return jax.jit(pot.energy_fn)


def _energy(pot, structures, graph=None):
    """Energies only (much cheaper to compile than forces and stress)."""
    c = Crystal.from_structures(structures)
    return np.asarray(_energy_fn(pot)(pot.params, c, graph or neighbor_graph(c, pot.cutoff)))


def _concat_graphs(graphs):
    cap = max(g.capacity for g in graphs)
    graphs = [pad_graph(g, cap) for g in graphs]
    return jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *graphs)


# ------------------------------------------------------------ the contract
# one object per potential, shared by the tests, so that compiled functions are reused
_sic_tersoff = functools.cache(lambda: tersoff(("Si", "C")))
_sw = functools.cache(stillinger_weber)
_bks = functools.cache(bks_sio2)
_ma = functools.cache(matsui_akaogi_tio2)

CASES = {
    "lj-ArKr": (lambda: lennard_jones([3.40, 3.65], [0.0104, 0.0140], species=("Ar", "Kr")),
                lambda: _fcc(5.4, ["Ar", "Kr", "Ar", "Kr"])),
    "morse-Cu": (lambda: morse(2.866, 0.3429, 1.3588, species=("Cu",)), lambda: _fcc(3.61, ["Cu"] * 4)),
    "bks-SiO2": (_bks, _quartz),
    "matsui-akaogi-TiO2": (_ma, _rutile),
    "ewald-NaCl": (lambda: point_charges({"Na": 1.0, "Cl": -1.0}, "ewald", cutoff=8.0), _rocksalt),
    "stillinger-weber-Si": (_sw, lambda: _diamond(5.431)),
    "tersoff-SiC": (_sic_tersoff, _sic_with_antisites),
}


@pytest.mark.parametrize("name", list(CASES))
def test_interface_contract(name):
    """Forces and stress against finite differences, padded batch == single, padded
    atoms inert, permutation and translation invariance; all variants go through
    one batched call so that each potential compiles twice only."""
    make_pot, make_structure = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    pot, s = make_pot(), _distort(make_structure(), rng)
    n, h = len(s), 1e-5

    # the padded batch: s, s minus one atom, s permuted and translated, an empty slot;
    # padded atom slots hold garbage (a real element on top of real atoms) that only
    # the mask keeps out
    perm = rng.permutation(n)
    moved = Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm] + rng.uniform(-1, 1, 3))
    smaller = s.copy()
    smaller.remove_sites([0])
    c = Crystal.from_structures([s, smaller, moved]).pad(n_max=n + 3, batch_size=4)
    frac, numbers = np.array(c.frac), np.array(c.numbers)
    frac[:, n:] = frac[0, :3] + 1e-3
    numbers[:, n:] = numbers[0, 0]
    c = c.replace(frac=frac, numbers=numbers)
    graph = neighbor_graph(c, pot.cutoff)

    # finite-difference copies of s (row 0) on row 0's graph: +-h along every
    # Cartesian coordinate, then +-h of every symmetric strain component
    lat, frac0 = c.lattice[0], c.frac[0]
    lattices, fracs = [], []
    for i in range(n):
        for a in range(3):
            for sign in (1, -1):
                cart = frac0 @ lat
                cart[i, a] += sign * h
                lattices.append(lat)
                fracs.append(cart @ np.linalg.inv(lat))
    for a in range(3):
        for b in range(3):
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] += sign * h / 2
                eps[b, a] += sign * h / 2
                lattices.append(lat @ (np.eye(3) + eps))
                fracs.append(frac0)
    fd = Crystal(np.array(lattices), np.array(fracs), np.repeat(c.numbers[:1], len(fracs), 0),
                 np.repeat(c.mask[:1], len(fracs), 0))
    rows = jax.tree_util.tree_map(lambda x: jnp.repeat(x[:1], len(fracs), 0), graph)
    out = pot.compute_fn(True)(pot.params, Crystal.concatenate([c, fd]), _concat_graphs([graph, rows]))

    e = np.asarray(out.energy[4:]).reshape(-1, 2)
    fd_forces = -(e[: 3 * n, 0] - e[: 3 * n, 1]).reshape(n, 3) / (2 * h)
    fd_stress = (e[3 * n:, 0] - e[3 * n:, 1]).reshape(3, 3) / (2 * h) / s.volume
    assert np.abs(fd_forces).max() > 1e-3  # the distortion makes the check non-trivial
    forces = np.asarray(out.forces[0, :n])
    np.testing.assert_allclose(forces, fd_forces, atol=1e-6 * max(1.0, np.abs(fd_forces).max()))
    np.testing.assert_allclose(np.asarray(out.stress[0]), fd_stress, atol=1e-7 * max(1.0, np.abs(fd_stress).max()))

    # padded batch == single (no padded atoms; row 0 of the graph indexes real atoms only)
    single = _energy(pot, [s], jax.tree_util.tree_map(lambda x: x[:1], graph))
    np.testing.assert_allclose(float(out.energy[0]), single[0], rtol=1e-10)
    # padding inert, empty slot zero, everything finite
    assert float(out.energy[3]) == 0.0
    assert np.all(np.asarray(out.forces[:4, n:]) == 0) and np.all(np.asarray(out.forces[1, n - 1:]) == 0)
    assert np.isfinite(np.asarray(out.forces)).all() and np.isfinite(np.asarray(out.stress)).all()
    assert float(out.energy[1]) != pytest.approx(float(out.energy[0]), rel=1e-6)  # removing an atom matters
    # permutation and translation invariance
    np.testing.assert_allclose(float(out.energy[2]), single[0], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(out.forces[2, :n]), forces[perm], atol=1e-8)


# ------------------------------------------------------------ cutoff treatments
def test_truncations_vanish_at_the_cutoff_as_documented():
    lj = lambda r, sigma=1.0, epsilon=1.0: 4 * epsilon * ((sigma / r) ** 12 - (sigma / r) ** 6)
    dlj = lambda r: 4 * (-12 * r**-13 + 6 * r**-7)
    rc, onset, modes = 2.5, 2.0, ("none", "shift", "force_shift", "switch")

    @jax.jit
    def probe(r):  # value and slope of every truncation at r
        return {m: jax.vmap(jax.value_and_grad(lambda x: truncate(lj, rc, m, onset)(x[None])[0]))(r) for m in modes}

    out = {m: (np.asarray(v), np.asarray(g)) for m, (v, g) in probe(jnp.array([rc - 1e-7, 1.9])).items()}
    assert out["none"][0][0] == pytest.approx(lj(rc), abs=1e-6)  # plain truncation jumps by V(rc)
    assert all(abs(out[m][0][0]) < 1e-6 for m in ("shift", "force_shift", "switch"))
    assert out["shift"][1][0] == pytest.approx(dlj(rc), abs=1e-6)  # its force jumps
    assert abs(out["force_shift"][1][0]) < 1e-6 and abs(out["switch"][1][0]) < 1e-6
    # switching leaves the potential untouched below the onset
    assert out["switch"][0][1] == pytest.approx(lj(1.9), rel=1e-12)
    assert out["switch"][1][1] == pytest.approx(dlj(1.9), rel=1e-12)
    assert float(smoothstep(jnp.array(2.25), 2.0, 2.5)) == pytest.approx(0.5)


# ------------------------------------------------------------ Lennard-Jones
def _numpy_fcc_lattice_sum(nn, rc, pair):
    """Energy per atom of an fcc lattice: 1/2 sum over lattice vectors |R| < rc."""
    a = nn * math.sqrt(2)
    basis = np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]) * a
    n = int(rc / nn) + 2
    m = np.array(np.meshgrid(*[np.arange(-n, n + 1)] * 3, indexing="ij")).reshape(3, -1).T
    r = np.linalg.norm(m @ basis, axis=1)
    r = r[(r > 0) & (r < rc)]
    return 0.5 * pair(r).sum()


def test_lj_fcc_lattice_energy():
    nn = 1.09017  # equilibrium nearest-neighbor distance of the infinite fcc lattice (sigma)
    prim = Structure(Lattice(np.array([[0, .5, .5], [.5, 0, .5], [.5, .5, 0]]) * nn * math.sqrt(2)), ["Ar"], [[0, 0, 0]])
    v = lambda r: 4 * (r**-12 - r**-6)
    rc, onset = 3.0, 2.4
    x = lambda r: np.clip((rc - r) / (rc - onset), 0, 1)
    references = {"shift": lambda r: v(r) - v(rc), "switch": lambda r: v(r) * x(r) ** 3 * (10 - 15 * x(r) + 6 * x(r) ** 2)}
    for truncation, pair in references.items():
        pot = lennard_jones(1.0, 1.0, cutoff=rc, truncation=truncation, r_onset=onset)
        e = _energy(pot, [prim, _fcc(nn * math.sqrt(2), ["Ar"] * 4)]) / [1, 4]
        np.testing.assert_allclose(e, _numpy_fcc_lattice_sum(nn, rc, pair), rtol=1e-12)
    # untruncated at 6 sigma plus the uniform-density tail, -8 pi rho / (3 rc^3): the
    # known infinite-lattice energy -8.6102 epsilon/atom
    rc = 6.0
    e = _energy(lennard_jones(1.0, 1.0, cutoff=rc, truncation="none"), [prim])[0]
    tail = -8 * math.pi * (math.sqrt(2) / nn**3) / (3 * rc**3)
    assert e + tail == pytest.approx(-8.6102, abs=2e-3)


def test_lj_matches_ase_lennard_jones():
    from ase.calculators.lj import LennardJones
    from ase.stress import voigt_6_to_full_3x3_stress

    s = _distort(_fcc(5.3, ["Ar"] * 4), np.random.default_rng(1))
    pot = lennard_jones(3.4, 0.0104, species=("Ar",), cutoff=9.0, truncation="shift")
    out = pot(Crystal.from_structures([s]))
    atoms = Crystal.from_structures([s]).to_atoms()[0]
    atoms.calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=9.0)
    np.testing.assert_allclose(float(out.energy[0]), atoms.get_potential_energy(), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(out.forces[0]), atoms.get_forces(), atol=1e-10)
    np.testing.assert_allclose(np.asarray(out.stress[0]), voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=1e-10)


def test_morse_matches_ase_morse_potential():
    from ase.calculators.morse import MorsePotential
    from ase.stress import voigt_6_to_full_3x3_stress

    s = _distort(_fcc(3.61, ["Cu"] * 4), np.random.default_rng(2))
    r0, eps, alpha = 2.866, 0.3429, 1.3588
    pot = morse(r0, eps, alpha, species=("Cu",), cutoff=2.7 * r0, r_onset=1.9 * r0)  # ASE's default switch
    out = pot(Crystal.from_structures([s]))
    atoms = Crystal.from_structures([s]).to_atoms()[0]
    atoms.calc = MorsePotential(epsilon=eps, r0=r0, rho0=alpha * r0)
    np.testing.assert_allclose(float(out.energy[0]), atoms.get_potential_energy(), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(out.forces[0]), atoms.get_forces(), atol=1e-10)
    np.testing.assert_allclose(np.asarray(out.stress[0]), voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=1e-10)


def _relax_cluster(positions):
    """Untruncated LJ (reduced units) of a free cluster, relaxed with L-BFGS; returns the energy."""
    from scipy.optimize import minimize

    n = len(positions)
    rc = 3.0 * np.ptp(positions, 0).max()  # far beyond any distance reachable in a local relaxation
    pot = lennard_jones(1.0, 1.0, cutoff=rc, truncation="none")
    c = isolated_cluster(positions, np.full(n, 18), rc)
    g = neighbor_graph(c, rc)
    assert int(g.n_edges[0]) == n * (n - 1)  # every pair, no periodic image
    inv = np.linalg.inv(np.asarray(c.lattice[0]))
    fn = jax.jit(lambda x: energy_forces_stress(pot.energy_fn, pot.params, c.replace(frac=(x.reshape(1, n, 3) @ inv)),
                                                g, compute_stress=False))

    def fun(x):
        out = fn(x)
        return float(out.energy[0]), -np.asarray(out.forces[0]).ravel()

    res = minimize(fun, np.asarray(c.positions[0]).ravel(), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-9, "ftol": 1e-15, "maxiter": 1000})
    return res.fun


def test_lj13_icosahedron_and_lj38_truncated_octahedron():
    # LJ13: centered icosahedron, vertices the cyclic permutations of (0, +-1, +-phi)
    phi = (1 + 5**0.5) / 2
    v = np.array([p for s1 in (1, -1) for s2 in (1, -1) for p in ((0, s1, s2 * phi), (s1, s2 * phi, 0), (s2 * phi, 0, s1))])
    ico = np.vstack([[0, 0, 0], 1.1 * v / np.linalg.norm(v[0])])
    assert _relax_cluster(ico) == pytest.approx(-44.326801, abs=1e-6)  # Cambridge Cluster Database
    # LJ38: the fcc truncated octahedron, shells 1, 3, 5 (units (a/2)^2) around an octahedral site
    g = np.array([(x, y, z) for x in range(-2, 3) for y in range(-2, 3) for z in range(-2, 3)
                  if (x + y + z) % 2 and x * x + y * y + z * z <= 5], float)
    assert len(g) == 38
    assert _relax_cluster(g * 2 ** (1 / 6) / math.sqrt(2)) == pytest.approx(-173.928427, abs=1e-6)


# ------------------------------------------------------------ Coulomb
def test_ewald_matches_pymatgen_and_madelung_and_dsf_converges_to_it():
    from pymatgen.analysis.ewald import EwaldSummation

    structures = [_rocksalt(), _rutile()]
    charges = {"Na": 1.0, "Cl": -1.0, "Ti": 4.0, "O": -2.0}
    reference = []
    for s in structures:
        s = s.copy()
        s.add_oxidation_state_by_element({k: v for k, v in charges.items() if k in s.symbol_set})
        reference.append(EwaldSummation(s).total_energy)
    ewald = _energy(point_charges(charges, "ewald"), structures)
    np.testing.assert_allclose(ewald, reference, rtol=1e-7)
    # Madelung constant of rocksalt, 1.747565, per Na-Cl distance
    assert ewald[0] / 4 == pytest.approx(-K_E * 1.747565 / 2.82, rel=1e-6)
    # too small a k box is reported as NaN, not as a truncated sum
    assert np.isnan(_energy(point_charges(charges, "ewald", kmax=2), structures)).all()
    # DSF (default alpha) at growing cutoffs, on one graph (edges beyond a potential's cutoff are ignored)
    g = neighbor_graph(Crystal.from_structures(structures), 14.0)
    errors = np.array([np.abs(_energy(point_charges(charges, "dsf", cutoff=rc), structures, g) - ewald) / np.abs(ewald)
                       for rc in (8.0, 10.0, 12.0, 14.0)])
    assert np.all(np.diff(errors, axis=0) < 0), errors
    assert np.all(errors[2] < 1e-4) and np.all(errors[3] < 1e-5), errors  # the default 12 Å, and beyond


def _numpy_buckingham(structure, rc, table, core):
    """Short-range BKS energy summed pair by pair over an ASE neighbor list, with the C^2 switch."""
    from ase.neighborlist import neighbor_list

    atoms = Crystal.from_structures([structure]).to_atoms()[0]
    i, j, r = neighbor_list("ijd", atoms, rc)
    sym = np.array(atoms.get_chemical_symbols())
    total = 0.0
    for key, (a, rho, c) in table.items():
        pick = ((sym[i] == key[0]) & (sym[j] == key[1])) | ((sym[i] == key[1]) & (sym[j] == key[0]))
        x = r[pick]
        eps, sigma = core[key]
        v = a * np.exp(-x / rho) - c / x**6 + 4 * eps * ((sigma / x) ** 30 - (sigma / x) ** 6)
        s = np.clip((rc - x) / (0.2 * rc), 0, 1)
        total += 0.5 * np.sum(v * s**3 * (10 - 15 * s + 6 * s**2))
    return total


def test_oxides_dsf_ewald_and_independent_reference():
    """BKS quartz and Matsui-Akaogi rutile at their experimental structures:
    pressures of a few GPa (not the ~100 GPa a wrong unit or sign gives), DSF within
    1 meV/atom of Ewald, and the Ewald form equal to a NumPy Buckingham sum plus
    pymatgen's Ewald energy."""
    from pymatgen.analysis.ewald import EwaldSummation

    # a graph wider than the potential's cutoff changes nothing
    wide = neighbor_graph(Crystal.from_structures([_quartz()]), 13.0)
    assert _energy(_bks(), [_quartz()], wide)[0] == pytest.approx(_energy(_bks(), [_quartz()])[0], rel=1e-12)
    for dsf, charges, s in [(_bks(), BKS_CHARGES, _quartz()), (_ma(), MA_CHARGES, _rutile())]:
        ewald = bks_sio2(coulomb="ewald") if dsf is _bks() else matsui_akaogi_tio2(coulomb="ewald")
        out = dsf(Crystal.from_structures([s]))
        reference = _energy(ewald, [s])[0]  # its forces and stress: see the contract test (ewald-NaCl)
        pressure_gpa = -np.trace(np.asarray(out.stress[0])) / 3 * 160.21766
        assert abs(pressure_gpa) < 8.0, (dsf.name, pressure_gpa)
        assert abs(float(out.energy[0]) - reference) / len(s) < 1e-3
        charged = s.copy()
        charged.add_oxidation_state_by_element(charges)
        table, core = (BKS_BUCKINGHAM, BKS_CORE) if dsf is _bks() else (MA_BUCKINGHAM, {k: (0.0, 1.0) for k in MA_BUCKINGHAM})
        independent = _numpy_buckingham(s, ewald.cutoff, table, core) + EwaldSummation(charged).total_energy
        assert reference == pytest.approx(independent, rel=1e-8)


def test_bks_core_keeps_si_o_repulsive_at_short_range():
    r = np.linspace(0.5, 1.1, 13)
    coul = K_E * BKS_CHARGES["Si"] * BKS_CHARGES["O"] / r
    a, rho, c = BKS_BUCKINGHAM[("Si", "O")]
    bare = np.asarray(buckingham_energy(r, a, rho, c, 0.0, 1.0)) + coul
    fixed = np.asarray(buckingham_energy(r, a, rho, c, *BKS_CORE[("Si", "O")])) + coul
    assert bare[0] < -1e3 and bare[0] < bare[-1]  # plain BKS falls into the fusion hole
    assert np.all(np.diff(fixed) < 0) and fixed[0] > 0  # with the core it rises monotonically inward
    # the core barely touches the equilibrium bond (1.61 Å): < 10 meV
    r0 = 1.61
    assert abs(float(buckingham_energy(r0, a, rho, c, *BKS_CORE[("Si", "O")]) -
                     buckingham_energy(r0, a, rho, c, 0.0, 1.0))) < 1e-2


# ------------------------------------------------------------ Stillinger-Weber
def _numpy_stillinger_weber(s, p):
    """Stillinger-Weber by explicit loops over an ASE neighbor list (all images)."""
    from ase.neighborlist import neighbor_list

    atoms = Crystal.from_structures([s]).to_atoms()[0]
    rc = p["a"] * p["sigma"]
    i, d, vec = neighbor_list("idD", atoms, rc)
    two = 0.5 * np.sum(p["epsilon"] * p["A"] * (p["B"] * (p["sigma"] / d) ** 4 - 1) * np.exp(p["sigma"] / (d - rc)))
    three = 0.0
    for center in range(len(atoms)):
        v = vec[i == center]
        for j in range(len(v)):
            for k in range(j + 1, len(v)):
                rj, rk = np.linalg.norm(v[j]), np.linalg.norm(v[k])
                cos = v[j] @ v[k] / (rj * rk)
                three += p["epsilon"] * p["lambda"] * (cos + 1 / 3) ** 2 * \
                    np.exp(p["gamma"] * p["sigma"] * (1 / (rj - rc) + 1 / (rk - rc)))
    return two + three


def test_stillinger_weber_diamond_minimum_and_numpy_reference():
    from jaxinv.potentials.classical.stillinger_weber import SW_SILICON

    a = np.linspace(5.38, 5.48, 11)
    rng = np.random.default_rng(7)
    others = [_distort(_diamond(5.431), rng, rattle=0.15, strain=0.06),
              # simple cubic, 6 neighbors, a cell smaller than the cutoff: many images of one atom
              _distort(Structure(Lattice.cubic(2.7), ["Si"], [[0, 0, 0]]), rng, rattle=0.0, strain=0.05)]
    e = _energy(_sw(), [_diamond(x) for x in a] + others)
    scan = e[: len(a)] / 8
    assert scan[np.argmin(np.abs(a - 5.431))] == pytest.approx(-4.3366, abs=1e-4)  # = -2 eps = -4.33652
    assert np.argmin(scan) == np.argmin(np.abs(a - 5.431))
    fit = np.polyder(np.polyfit(a, scan, 4))
    a_min = [r.real for r in np.roots(fit) if abs(r.imag) < 1e-9 and 5.40 < r.real < 5.46]
    assert len(a_min) == 1 and a_min[0] == pytest.approx(5.431, abs=2e-3)
    np.testing.assert_allclose(e[len(a):], [_numpy_stillinger_weber(s, SW_SILICON) for s in others], rtol=1e-10)


def test_neighbor_table_overflow_gives_nan_and_edge_order_does_not_matter():
    c = Crystal.from_structures([_diamond(5.431)])  # exactly 4 neighbors each
    g = neighbor_graph(c, _sw().cutoff)
    assert bool(neighbor_overflow(g, c.n_max, 3)[0]) and not bool(neighbor_overflow(g, c.n_max, 4)[0])
    assert np.isnan(_energy(stillinger_weber(max_neighbors=3), [_diamond(5.431)], g)[0])
    # the neighbor table is built by sorting, so any edge order gives the same energy
    rng = np.random.default_rng(8)
    for pot, s in [(_sw(), _distort(_diamond(5.431), rng, rattle=0.15)),
                   (_sic_tersoff(), _distort(_sic_with_antisites(), rng, rattle=0.1))]:
        g = neighbor_graph(Crystal.from_structures([s]), pot.cutoff)
        perm = rng.permutation(g.capacity)
        shuffled = g.replace(senders=g.senders[:, perm], receivers=g.receivers[:, perm],
                             shifts=g.shifts[:, perm], mask=g.mask[:, perm])
        e = [_energy(pot, [s], graph)[0] for graph in (g, shuffled)]
        assert np.isfinite(e[0]) and e[1] == pytest.approx(e[0], rel=1e-12)


# ------------------------------------------------------------ Tersoff
def test_tersoff_diamond_known_values():
    """Si (T3) -4.63 eV/atom at 5.432 Å and C -7.37 eV/atom at 3.566 Å, each the minimum.

    Evaluated with the Si-C potential: pure Si and pure C use only their own
    parameters, so this is the same as tersoff(("Si",)) and tersoff(("C",))."""
    scale = np.linspace(0.98, 1.02, 9)
    structures = [_diamond(5.432 * x, "Si", "Si") for x in scale] + [_diamond(3.566 * x, "C", "C") for x in scale]
    e = _energy(_sic_tersoff(), structures).reshape(2, -1) / 8
    for (a0, e0), row in zip([(5.432, -4.63), (3.566, -7.37)], e):
        assert row[4] == pytest.approx(e0, abs=5e-3)
        fit = np.polyfit(a0 * scale, row, 2)
        assert -fit[1] / (2 * fit[0]) == pytest.approx(a0, abs=5e-3)
    si_only = tersoff(("Si",))
    assert _energy(si_only, structures[4:5])[0] == pytest.approx(8 * e[0, 4], rel=1e-12)


def test_tersoff_matches_ase_tersoff_calculator():
    from ase.calculators.tersoff import Tersoff, TersoffParameters
    from ase.stress import voigt_6_to_full_3x3_stress

    elements = ("Si", "C")
    t = tersoff_tables(elements)
    params = {}
    for i, ei in enumerate(elements):
        for j, ej in enumerate(elements):
            for k, ek in enumerate(elements):
                # LAMMPS/ASE convention: the (i, j, k) entry carries the i-k pair and i's three-body terms
                R, S = t["R"][i, k], t["S"][i, k]
                params[(ei, ej, ek)] = TersoffParameters(
                    m=3.0, gamma=1.0, lambda3=0.0, c=t["c"][i], d=t["d"][i], h=t["h"][i], n=t["n"][i],
                    beta=t["beta"][i], lambda2=t["mu"][i, k], B=t["B"][i, k], R=(R + S) / 2, D=(S - R) / 2,
                    lambda1=t["lambda"][i, k], A=t["A"][i, k])
    s = _distort(_sic_with_antisites(), np.random.default_rng(11), rattle=0.08)
    out = _sic_tersoff()(Crystal.from_structures([s]))
    atoms = Crystal.from_structures([s]).to_atoms()[0]
    atoms.calc = Tersoff(params)
    np.testing.assert_allclose(float(out.energy[0]), atoms.get_potential_energy(), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(out.forces[0]), atoms.get_forces(), atol=1e-8)
    np.testing.assert_allclose(np.asarray(out.stress[0]), voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=1e-8)


def test_many_body_energy_vmaps_over_single_structures():
    rng = np.random.default_rng(12)
    structures = [_distort(_sic_with_antisites(), rng), _distort(_sic_with_antisites(), rng)]
    c = Crystal.from_structures(structures)
    pot = _sic_tersoff()
    g = neighbor_graph(c, pot.cutoff)
    one = lambda cc, gg: pot.energy_fn(pot.params, *jax.tree_util.tree_map(lambda x: x[None], (cc, gg)))[0]
    np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(one))(c, g)), _energy(pot, structures, g), rtol=1e-12)
