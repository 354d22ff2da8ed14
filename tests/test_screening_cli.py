"""The screen experiment end to end on a tiny prototype set, including a resumed rerun."""
import csv

import numpy as np

from jaxinv.cli import run_experiment
from jaxinv.config import compose


def test_screen_experiment_runs_and_resumes(tmp_path, batio3):
    protos = tmp_path / "protos"
    protos.mkdir()
    batio3.to(filename=str(protos / "BaTiO3.cif"))
    out = tmp_path / "run"
    args = [f"candidates.prototypes={protos}", "candidates.threshold=0.003", f"out_dir={out}", "progress=false",
            "stages=[{type:composition,smact:true},{type:rank,by:log_prob,top_k:5}]", "n_cif=3"]
    summary = run_experiment("screen", args)
    assert summary["survivors"] == 5
    with open(out / "ranked.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    logp = [float(r["log_prob"]) for r in rows]
    assert logp == sorted(logp, reverse=True)
    assert len(list((out / "cif").glob("*.cif"))) == 3
    assert (out / "funnel.png").exists() and "| composition |" in (out / "report.md").read_text()
    again = run_experiment("screen", args)  # everything is done: read back, nothing recomputed
    assert again["stages"] == summary["stages"]


def test_screen_with_the_quick_hurdle_model(tmp_path):
    """No model=: a quick magpie_site_oxi model with dir_gap as a hurdle target is trained, σ-scaled on
    perov_5's valid split and saved; the property stage adds P(gap > 0) and keeps only what can pass."""
    import json

    from jaxinv.screening.train import PropertyModel

    out = tmp_path / "run"
    # p_min 0.005 (not the default Φ(-2)): a 2-epoch, 2-member model leaves no candidate above Φ(-2) here
    summary = run_experiment("screen", ["candidates.n_prototypes=3", "candidates.threshold=0.01", f"out_dir={out}",
                                        "progress=false", "quick_model_epochs=2", "quick_model_members=2", "n_cif=0",
                                        "stages=[{type:composition},{type:property,windows:{heat_ref:[null,1.0],"
                                        "dir_gap:[1.5,3.0]},k:2.0,p_min:0.005},{type:rank,by:p_window,top_k:20}]"])
    model = PropertyModel.load(out / "quick_model")
    assert model.features == "magpie_site_oxi" and model.hurdle == ("dir_gap",)
    assert model.targets == ("dir_gap", "heat_ref") and np.all(model.sigma_scale > 0)
    assert not np.allclose(model.sigma_scale, 1.0)  # fitted on the valid split
    assert model.platt is not None and model.platt.shape == (1, 2)  # Platt scaling of P(dir_gap > 0), on valid
    with open(out / "ranked.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {"p_positive_dir_gap", "pred_dir_gap", "sigma_heat_ref", "p_window"} <= set(rows[0])
    assert all(0.0 <= float(r["p_positive_dir_gap"]) <= 1.0 for r in rows)
    stages = {s["name"]: s for s in summary["stages"]}
    assert stages["property"]["n_in"] >= stages["property"]["n_out"] == stages["rank"]["n_in"]
    assert json.loads((out / "quick_model" / "model.json").read_text())["hurdle"] == ["dir_gap"]


def test_configs_compose():
    for name in ("screen", "train_property", "castelli"):
        cfg = compose(name)
        assert cfg.seed == 0
    assert compose("castelli", ["seeds=3"]).seeds == 3


def test_quickstart_is_the_screen_experiment_with_small_defaults():
    from jaxinv.cli import load_experiment
    from jaxinv.config import validate

    module = load_experiment("quickstart")
    cfg = validate(compose("quickstart"), module.Config)
    screen = validate(compose("screen"), load_experiment("screen").Config)
    assert cfg.candidates.n_prototypes == 50 and cfg.model is None
    # the quick model's defaults: the setting whose 2σ filter keeps >= 95% of held-out hits (RESULTS.md)
    assert cfg.quick_model_features == screen.quick_model_features == "magpie_site_oxi"
    assert list(cfg.quick_model_hurdle) == ["dir_gap", "ind_gap"]
    assert [s["type"] for s in cfg.stages] == [s["type"] for s in screen.stages] == ["composition", "property", "rank"]
    # the property stage's floor on P(dir_gap > 0) is the default Φ(-k) (the quick model's P is Platt-scaled)
    assert all("p_min" not in s for s in list(cfg.stages) + list(screen.stages))

