"""SevenNet-0 in jaxinv: locating and converting the checkpoint without torch, and agreement with sevenn.

The cross-check against sevenn's own torch calculator is marked ``crosscheck``;
it runs wherever torch and sevenn are installed (CI installs them).
"""
import dataclasses
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import all_changes
from pymatgen.core import Lattice, Structure

import e3nn_jax as e3nn

from jaxinv.crystal import Crystal
from jaxinv.potentials import UnsupportedElementError
from jaxinv.potentials import sevennet as sn
from jaxinv.potentials.calculator import JaxinvCalculator
from jaxinv.potentials.torch_pickle import load_pth

# sevenn's calculator on cubic SrTiO3 (a = 3.905 Å), from /work/notes/sevennet_spec.md §12
SRTIO3_ENERGY = -40.079826


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jaxinv-cache")


@pytest.fixture(scope="module")
def checkpoint():
    try:
        return sn.find_checkpoint("7net-0")
    except FileNotFoundError as err:
        pytest.skip(f"no SevenNet checkpoint available offline: {err}")


@pytest.fixture(scope="module")
def pot(cache, checkpoint):
    return sn.load_sevennet("7net-0", cache=cache)


def srtio3(a=3.905):
    return Structure(Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])


# ------------------------------------------------------------------ without torch
def test_import_and_run_without_torch(tmp_path, checkpoint):
    """jaxinv's SevenNet never imports torch (or sevenn): torch is made unimportable."""
    code = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
import jax
from jaxinv.crystal import Crystal
from jaxinv.potentials.sevennet import load_sevennet
from pymatgen.core import Lattice, Structure
pot = load_sevennet("7net-0")
s = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
              [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
c = Crystal.from_structures([s])
from jaxinv.graph import neighbor_graph
e = float(jax.jit(pot.energy_fn)(pot.params, c, neighbor_graph(c, pot.cutoff))[0])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sevenn", "e3nn"))
print(e, loaded)
"""
    env = {**os.environ, "JAXINV_CACHE": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    energy, loaded = out.stdout.strip().split(" ", 1)
    assert loaded == "[]", loaded
    assert abs(float(energy) - SRTIO3_ENERGY) < 5e-5 * 5
    assert list((tmp_path / "sevennet").glob("7net-0-*.npz"))  # the conversion was cached


def test_converted_parameters_are_cached(cache, pot, monkeypatch):
    def no_checkpoint(*args, **kwargs):
        raise AssertionError("the cached conversion should be used")

    monkeypatch.setattr(sn, "find_checkpoint", no_checkpoint)
    again = sn.load_sevennet("7net-0", cache=cache)
    assert again.metadata["config"] == pot.metadata["config"]
    flat = lambda p: dict(sn._flatten(p))
    a, b = flat(pot.params), flat(again.params)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert len(pot.species) == 89 and pot.cutoff == 5.0


def test_stale_cached_conversion_is_converted_again(cache, pot, tmp_path, caplog):
    """A cached conversion whose config this version cannot read (e.g. written by a
    jaxinv with an extra config field) is ignored and replaced, not an error."""
    import json
    import shutil

    stale = tmp_path / "sevennet"
    stale.mkdir()
    (src,) = (cache / "sevennet").glob("7net-0-*.npz")
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["__header__"]))
    header["config"]["field_from_another_version"] = 1
    arrays["__header__"] = np.array(json.dumps(header))
    np.savez(stale / src.name, **arrays)
    with caplog.at_level("WARNING"):
        again = sn.load_sevennet("7net-0", cache=tmp_path)
    assert "converting the checkpoint again" in caplog.text
    assert again.metadata["config"] == pot.metadata["config"]
    # the cache was rewritten; it holds the exact model (the radial tables are built at load)
    assert sn._load(stale / src.name)[0] == dataclasses.replace(pot.metadata["config"], radial_grid=0)
    shutil.rmtree(stale)


def test_checkpoint_from_cache_then_from_wheel(tmp_path, checkpoint, monkeypatch):
    """Without an installed sevenn the checkpoint comes from the cache, else from the wheel."""
    monkeypatch.setattr(sn, "_installed_sevenn", lambda: [])
    with pytest.raises(FileNotFoundError):
        sn.find_checkpoint("7net-0", cache=tmp_path, download=False)

    calls = []

    def fake_pip(dest, name, cache):  # stands in for `pip download sevenn==0.13.0 --no-deps -d dest`
        calls.append(dest)
        wheel = dest / f"sevenn-{sn.SEVENN_VERSION}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.write(checkpoint, sn._member("7net-0"))
        return wheel

    monkeypatch.setattr(sn, "_pip_download", fake_pip)
    path = sn.find_checkpoint("7net-0", cache=tmp_path)
    assert path.is_relative_to(tmp_path) and path.read_bytes() == Path(checkpoint).read_bytes()
    assert sn.find_checkpoint("7net-0", cache=tmp_path) == path and len(calls) == 1  # now cached


def test_old_checkpoint_sign_patch(checkpoint):
    """The signs of three path blocks per middle layer come from the stored Wigner-3j buffers."""
    ck = load_pth(checkpoint)
    config, params = sn.convert_checkpoint(ck)
    sd = ck["model_state_dict"]
    hidden = e3nn.Irreps(config.irreps[1])
    gates = sn.gate_irreps(hidden)
    for t in (1, 2, 3):
        raw = sd[f"{t}_convolution.weight_nn.layer2.weight"]
        unsigned = sn._patch_radial_weights(raw, hidden, config.sh_irreps, gates, {})
        patched = params["params"][f"layer_{t}"]["radial"]["w_2"]
        paths = sn.conv_paths(hidden, config.sh_irreps, gates)
        start = np.cumsum([0] + [p.mul for p in paths])
        flipped = {(p.ir_in.l, p.ir_sh.l, p.ir_out.l) for k, p in enumerate(paths)
                   if np.array_equal(patched[:, start[k]:start[k + 1]], -unsigned[:, start[k]:start[k + 1]])}
        assert flipped == {(1, 2, 2), (2, 1, 2), (2, 2, 1)}


def test_unknown_element_is_a_clear_error(pot):
    s = Structure(Lattice.cubic(4.0), ["Sr", "Po"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnsupportedElementError, match="Po"):
        pot(Crystal.from_structures([s]))
    atoms = Crystal.from_structures([s]).to_atoms()[0]
    atoms.calc = JaxinvCalculator(pot)
    with pytest.raises(UnsupportedElementError, match="Po"):
        atoms.get_potential_energy()


def test_unknown_model_name():
    with pytest.raises(ValueError, match="7net-0"):
        sn.load_sevennet("7net-omni")


# ------------------------------------------------------------------ against sevenn (torch)
def _perturbed(structures, rng, n_rattled, n_strained):
    out = []
    for k, s in enumerate(structures):
        s = s.copy()
        if k < n_rattled + n_strained:
            cart = s.cart_coords + rng.normal(0, 0.06, (len(s), 3))
            s = Structure(s.lattice, s.species, cart, coords_are_cartesian=True)
        if n_rattled <= k < n_rattled + n_strained:
            strain = rng.uniform(-0.04, 0.04, (3, 3))
            s = Structure(Lattice(s.lattice.matrix @ (np.eye(3) + 0.5 * (strain + strain.T))), s.species,
                          s.frac_coords)
        out.append(s)
    return out


@pytest.fixture(scope="module")
def crosscheck_structures(perov, carbon):
    rng = np.random.default_rng(7)
    p = _perturbed(perov.structures(rng.choice(len(perov), 50, replace=False)), rng, 15, 15)
    c = _perturbed(carbon.structures(rng.choice(len(carbon), 50, replace=False)), rng, 15, 15)
    return {"perov_5": p, "carbon_24": c}


@pytest.fixture(scope="module")
def jaxinv_results(crosscheck_structures, pot):
    """Each data set in one batch: one compilation per data set."""
    cache = {}

    def get(dataset):
        if dataset not in cache:
            cache[dataset] = pot(Crystal.from_structures(crosscheck_structures[dataset]))
        return cache[dataset]

    return get


_SEVENN_SCRIPT = """
import sys
import numpy as np
import torch
from ase.calculators.calculator import all_changes
from ase.io import read
from sevenn.calculator import SevenNetCalculator

torch.set_num_threads(1)  # the test machine is shared; oversubscribed threads crawl
calc = SevenNetCalculator("7net-0", device="cpu")
for path in sys.argv[1:]:
    out = {"energy": [], "forces": [], "stress": [], "energies": []}
    for atoms in read(path, ":"):
        calc.calculate(atoms, ["energy", "forces", "stress", "energies"], all_changes)
        for k in out:
            out[k].append(np.asarray(calc.results[k], np.float64))
    np.savez(path + ".npz", energy=np.array(out["energy"]), stress=np.stack(out["stress"]),
             forces=np.concatenate(out["forces"]), energies=np.concatenate(out["energies"]),
             n=np.array([len(f) for f in out["forces"]]))
"""


@pytest.fixture(scope="module")
def sevenn_reference(crosscheck_structures, tmp_path_factory):
    """sevenn's own energies, forces, stresses and atomic energies for the cross-check sets,
    computed in a separate process, so that torch never shares the test process with XLA. (Torch
    was once suspected of a native crash late in the full suite; the cause was XLA's memory maps
    passing Linux's limit, see ``conftest.py``. Keeping the two runtimes apart costs nothing.)"""
    import importlib.util
    import subprocess
    import sys

    from ase.io import write

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("sevenn") is None:
        pytest.skip("needs torch and sevenn (the crosscheck extra)")
    folder = tmp_path_factory.mktemp("sevenn_reference")
    paths = {}
    for name, structures in crosscheck_structures.items():
        paths[name] = folder / f"{name}.extxyz"
        write(paths[name], [Atoms(a.numbers, cell=a.cell, positions=a.positions, pbc=True)
                            for a in Crystal.from_structures(structures).to_atoms()])
    subprocess.run([sys.executable, "-c", _SEVENN_SCRIPT, *map(str, paths.values())], check=True, timeout=1800)
    out = {}
    for name, path in paths.items():
        ref = np.load(str(path) + ".npz")
        splits = np.cumsum(ref["n"])[:-1]
        out[name] = [{"energy": float(ref["energy"][k]), "forces": f, "stress": ref["stress"][k], "energies": e}
                     for k, (f, e) in enumerate(zip(np.split(ref["forces"], splits),
                                                    np.split(ref["energies"], splits)))]
    return out


def _voigt(s):
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


@pytest.mark.crosscheck
@pytest.mark.parametrize("dataset", ["perov_5", "carbon_24"])
def test_matches_sevenn(dataset, crosscheck_structures, jaxinv_results, sevenn_reference):
    structures = crosscheck_structures[dataset]
    out = jaxinv_results(dataset)
    errors = []
    for k, atoms in enumerate(Crystal.from_structures(structures).to_atoms()):
        n = len(atoms)
        ref = sevenn_reference[dataset][k]
        errors.append((abs(float(out.energy[k]) - ref["energy"]) / n,
                       np.abs(np.asarray(out.forces[k, :n]) - ref["forces"]).max(),
                       np.abs(_voigt(np.asarray(out.stress[k])) - ref["stress"]).max()))
    e, f, s = np.max(errors, axis=0)
    print(f"\n{dataset}: {len(structures)} structures, max |dE|/atom {e:.2e} eV, max |dF| {f:.2e} eV/Å, "
          f"max |dσ| {s:.2e} eV/Å^3")
    assert e < 1e-4 and f < 1e-3 and s < 1e-4


@pytest.mark.crosscheck
def test_ase_calculator_matches_direct_call_and_sevenn(crosscheck_structures, jaxinv_results, pot,
                                                      sevenn_reference):
    structures = crosscheck_structures["perov_5"]
    direct = jaxinv_results("perov_5")
    # densest first: the calculator's edge capacity and image range then never grow
    order = sorted(range(4), key=lambda k: structures[k].volume)
    calc = JaxinvCalculator(pot)
    fn = pot.compute_fn(True)
    atoms_list = Crystal.from_structures(structures[:4]).to_atoms()
    for k in order:
        atoms = atoms_list[k]
        atoms.calc = calc
        np.testing.assert_allclose(atoms.get_potential_energy(), float(direct.energy[k]), rtol=1e-6)
        # float32 sums over differently ordered and padded edges
        np.testing.assert_allclose(atoms.get_forces(), np.asarray(direct.forces[k]), atol=5e-5)
        np.testing.assert_allclose(atoms.get_stress(), _voigt(np.asarray(direct.stress[k])), atol=1e-6)
        energies = atoms.get_potential_energies()
        assert energies.shape == (5,)
        np.testing.assert_allclose(energies.sum(), atoms.get_potential_energy(), rtol=1e-6)
        np.testing.assert_allclose(energies, sevenn_reference["perov_5"][k]["energies"], atol=1e-4)
        if k == order[0]:
            compiled = fn._cache_size()
    assert fn._cache_size() == compiled  # same bucket: later structures reuse the compiled function


# ------------------------------------------------------------------ SevenNet-l3i5 (same machinery, lmax 3)
@pytest.fixture(scope="module")
def l3i5(cache):
    try:
        return sn.load_sevennet("7net-l3i5", cache=cache)
    except FileNotFoundError as err:
        pytest.skip(f"no SevenNet-l3i5 checkpoint available offline: {err}")


def test_l3i5_conversion(l3i5):
    cfg = l3i5.metadata["config"]
    assert cfg.sh_lmax == 3 and cfg.envelope == "polynomial" and cfg.irreps[1] == "128x0e+64x1e+32x2e+32x3e"
    assert len(l3i5.species) == 89


@pytest.mark.slow
@pytest.mark.crosscheck
def test_l3i5_matches_sevenn(crosscheck_structures, l3i5):
    pytest.importorskip("torch", reason="needs torch (the crosscheck extra)")
    from sevenn.calculator import SevenNetCalculator

    calc = SevenNetCalculator("7net-l3i5", device="cpu")
    structures = crosscheck_structures["perov_5"][:8] + crosscheck_structures["carbon_24"][:8]
    out = l3i5(Crystal.from_structures(structures))
    for k, atoms in enumerate(Crystal.from_structures(structures).to_atoms()):
        n = len(atoms)
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
        assert abs(float(out.energy[k]) - calc.results["energy"]) / n < 1e-4
        assert np.abs(np.asarray(out.forces[k, :n]) - calc.results["forces"]).max() < 1e-3
        assert np.abs(_voigt(np.asarray(out.stress[k])) - calc.results["stress"]).max() < 1e-4
