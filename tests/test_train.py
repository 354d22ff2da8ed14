"""Training a small NequIP model on labelled crystals: loss decreases, resume, save/load."""
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from jaxinv.crystal import Crystal
from jaxinv.data.perturb import perturb
from jaxinv.potentials.nequip import NequIPConfig
from jaxinv.potentials.train import Trainer, TrainConfig, fit_element_shifts, load_extxyz, load_trained, save_potential
from toy_potentials import LJ


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Rattled, strained two-species cells labelled with the toy LJ, through an extxyz file."""
    from ase.io import write

    base = Structure(Lattice.cubic(3.3), ["Si", "Si", "C", "C"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    structures = [perturb([base], rattle=0.1, strain=0.04, seed=k)[0] for k in range(40)]
    c = Crystal.from_structures(structures)
    out = LJ(c)
    labelled = Crystal.from_arrays(c.lattice, list(c.frac), list(c.numbers),
                                   labels={"energy": np.asarray(out.energy), "stress": np.asarray(out.stress)},
                                   atom_labels={"forces": list(np.asarray(out.forces))})
    path = tmp_path_factory.mktemp("data") / "lj.extxyz"
    write(path, labelled.to_atoms())
    return load_extxyz(path)


def tiny_model():
    return NequIPConfig.simple(species=(6, 14), channels=8, lmax=1, num_layers=2, cutoff=5.0, radial_hidden=(16,))


def test_shift_fit_recovers_reference_energies():
    lattice = np.eye(3)[None].repeat(3, 0) * 5
    c = Crystal.from_arrays(lattice, [np.zeros((n, 3)) for n in (2, 3, 4)], [[6, 14], [6, 6, 14], [14, 14, 14, 6]],
                            labels={"energy": np.array([1.0 * 1 + 2.0 * 1, 1.0 * 2 + 2.0, 1.0 + 2.0 * 3])})
    np.testing.assert_allclose(fit_element_shifts(c, (6, 14)), [1.0, 2.0], atol=1e-10)


def test_training_reduces_validation_error_and_resumes(labelled, tmp_path, monkeypatch):
    train, valid = labelled[:32], labelled[32:]
    cfg = TrainConfig(epochs=6, batch_size=8, learning_rate=1e-2, seed=1)
    trainer = Trainer(tiny_model(), cfg, train, valid, progress=False)
    before = trainer.evaluate()
    potential = trainer.fit(checkpoint_dir=str(tmp_path / "uninterrupted"))
    after = trainer.evaluate()
    assert after["force_mae"] < 0.7 * before["force_mae"]
    assert after["energy_mae"] < before["energy_mae"]
    assert len(trainer.history) == 6 and "valid_stress_mae" in trainer.history[-1]

    # kill after two epochs, then resume: the same final parameters as the uninterrupted run
    killed = Trainer(tiny_model(), cfg, train, valid, progress=False)
    calls = {"n": 0}
    original = killed.evaluate

    def evaluate_then_die(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(killed, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        killed.fit(checkpoint_dir=str(tmp_path / "killed"))
    resumed = Trainer(tiny_model(), cfg, train, valid, progress=False)
    final = resumed.fit(checkpoint_dir=str(tmp_path / "killed"))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    import jax
    for a, b in zip(jax.tree_util.tree_leaves(final.params), jax.tree_util.tree_leaves(potential.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # save and load give the same energies
    folder = save_potential(potential, tmp_path / "model")
    loaded = load_trained(folder)
    np.testing.assert_allclose(np.asarray(loaded(valid).energy), np.asarray(potential(valid).energy), rtol=1e-6)
