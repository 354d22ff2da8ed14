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
    # tabulated radial MLPs for inference: the same model to float32 precision; training them is refused
    tabulated = load_trained(folder, radial_grid=256)
    np.testing.assert_allclose(np.asarray(tabulated(valid).energy), np.asarray(potential(valid).energy), rtol=1e-5)
    with pytest.raises(ValueError, match="radial_grid"):
        Trainer(tabulated.metadata["config"], cfg, train, valid, progress=False)


def test_label_structures_equals_direct_evaluation_and_drops_broken(perov, carbon):
    """Batched, bucketed labelling gives each structure the potential's own numbers, in input
    order; a structure with coincident atoms (infinite LJ energy) is dropped, not the batch."""
    from jaxinv.potentials.classical import lennard_jones
    from jaxinv.potentials.label import label_structures

    lj = lennard_jones(sigma=2.0, epsilon=0.05, cutoff=5.0)
    structures = perov.structures(np.arange(3)) + carbon.structures(np.flatnonzero(carbon.n_atoms > 8)[:3])
    broken = structures[0].copy()
    broken.append(broken.species[0], broken.frac_coords[0])  # on top of atom 0
    structures.insert(2, broken)
    labelled, kept = label_structures(lj, structures, batch_size=4)
    np.testing.assert_array_equal(kept, [0, 1, 3, 4, 5, 6])
    for row, i in enumerate(kept):
        direct = lj(Crystal.from_structures([structures[i]]))
        n = len(structures[i])
        np.testing.assert_allclose(labelled.labels["energy"][row], np.asarray(direct.energy)[0], rtol=1e-5)  # float32
        np.testing.assert_allclose(labelled.atom_labels["forces"][row, :n], np.asarray(direct.forces)[0, :n],
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(labelled.labels["stress"][row], np.asarray(direct.stress)[0], rtol=1e-4, atol=1e-7)
        assert labelled.n_atoms[row] == n


def test_label_then_train_potential_experiments(tmp_path):
    """`jaxinv run label` writes extxyz splits that `jaxinv run train_potential` trains on; the
    saved model loads through the registry and reproduces the reported test MAE."""
    import json

    from jaxinv.cli import main
    from jaxinv.potentials.registry import load_potential

    labels = tmp_path / "labels"
    assert main(["run", "label", "data=perov_5", "data.limit=6", "potential=lj", "copies=1", "splits=[train,test]",
                 f"out_dir={labels}", "progress=false"]) == 0
    for split in ("train", "test"):
        data = load_extxyz(labels / f"{split}.extxyz")
        assert len(data) == 12 and {"energy", "stress"} <= set(data.labels) and "forces" in data.atom_labels
        assert np.abs(data.atom_labels["forces"]).max() > 0  # rattled copies feel forces
    assert not (labels / "valid.extxyz").exists()
    out = tmp_path / "model"
    assert main(["run", "train_potential", f"data_dir={labels}", "train.epochs=3", "model.channels=4",
                 "model.num_layers=2", "model.radial_hidden=[8]", "train.batch_size=4", f"out_dir={out}",
                 "progress=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and (out / "learning_curve.png").stat().st_size > 1000
    assert "valid" not in metrics and metrics["test"]["shift_baseline_energy_mae"] > 0
    potential = load_potential("trained", path=str(out / "model"))
    test = load_extxyz(labels / "test.extxyz")
    pred = potential(test)
    e_mae = np.mean(np.abs(np.asarray(pred.energy) - test.labels["energy"]) / test.n_atoms)
    np.testing.assert_allclose(e_mae, metrics["test"]["energy_mae"], rtol=1e-4)
