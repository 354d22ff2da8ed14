"""The train_property experiment on a few dozen real perov_5 structures: held-out
metrics, hurdle gaps, the saved model and its plots."""
import json

import numpy as np
import pytest

from jaxinv.cli import run_experiment


def test_train_property_experiment_reports_calibration_and_hurdle_gaps(tmp_path):
    """Held-out metrics for every target, σ scales, the saved model; the gaps (mostly
    exactly 0) become hurdle targets, scored by ROC-AUC and on the gapped structures."""
    from jaxinv.screening.train import PropertyModel

    out = tmp_path / "tp"
    res = run_experiment("train_property", [f"out_dir={out}", "progress=false", "data.limit=96",
                                            "train.epochs=2", "train.n_members=2", "model.hidden=[16]",
                                            "model.features=magpie", "checkpoint=false"])
    assert set(res["targets"]) == {"heat_ref", "dir_gap", "ind_gap"}
    assert res["hurdle"] == ["dir_gap", "ind_gap"]
    n_test = res["n"]["test"]
    assert res["targets"]["heat_ref"]["test"]["n"] == n_test > 0
    for t, r in res["targets"].items():
        assert 0.0 <= r["test"]["within_1sigma"] <= r["test"]["within_2sigma"] <= 1.0
        assert r["sigma_scale"] > 0
    for t in ("dir_gap", "ind_gap"):
        r = res["targets"][t]
        # scored on the gapped test structures only, and their share is reported
        assert r["test"]["n"] == round(r["test_fraction_positive"] * n_test) < n_test
        assert 0.0 <= r["roc_auc"] <= 1.0 and r["test_positive_median_mae"] > 0
    assert res["n"]["train"] == 96
    m = PropertyModel.load(out / "model")
    assert m.targets == ("heat_ref", "dir_gap", "ind_gap") and m.sigma_scale.shape == (3,)
    assert m.hurdle == ("dir_gap", "ind_gap")
    assert (out / "parity.png").stat().st_size > 10_000 and (out / "learning_curve.png").exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["targets"]["dir_gap"]["roc_auc"] == pytest.approx(res["targets"]["dir_gap"]["roc_auc"])


def test_hurdle_setting_names_the_field_and_auto_picks_zero_inflated_targets():
    from jaxinv.experiments.train_property import hurdle_targets

    y = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, 0.0], [3.0, 1.5, 0.0], [-0.5, 0.0, 2.0]])
    assert hurdle_targets("auto", ("e", "gap", "signed"), y) == ("gap",)  # 'signed' has a negative label
    assert hurdle_targets([], ("e", "gap"), y[:, :2]) == ()
    with pytest.raises(ValueError, match="model.hurdle"):
        hurdle_targets(["band_gap"], ("e", "gap"), y[:, :2])


def test_finetune_config_names_the_field():
    from jaxinv.cli import load_experiment
    from jaxinv.config import ConfigError, compose, validate

    schema = load_experiment("train_property").Config
    cfg = validate(compose("train_property", ["model.kind=finetune", "model.features=sevennet0"]), schema)
    assert cfg.model.backbone_lr == 0.05
    with pytest.raises(ConfigError, match="field 'model.kind': model.kind=finetune fine-tunes a potential"):
        validate(compose("train_property", ["model.kind=finetune", "model.features=magpie"]), schema)
    with pytest.raises(ConfigError, match="field 'model.backbone_lr'"):
        validate(compose("train_property", ["model.backbone_lr=-1"]), schema)


def test_training_shows_a_progress_bar_over_epochs(capsys):
    from jaxinv.screening.train import PropertyModel, TrainConfig

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    m = PropertyModel("composition", ("y",), {"hidden": [8]})
    m.fit(x, x[:, :1], TrainConfig(n_members=2, epochs=6, batch_size=16, chunk_epochs=3), progress=True)
    err = capsys.readouterr().err
    assert "train CompositionMLP x2" in err and "6/6" in err and "best_val_nll" in err
    m.fit(x, x[:, :1], TrainConfig(n_members=2, epochs=6, batch_size=16, chunk_epochs=3))
    assert "CompositionMLP" not in capsys.readouterr().err  # off unless asked for
