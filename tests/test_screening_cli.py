"""The screen experiment end to end on a tiny prototype set, including a resumed rerun."""
import csv

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
    assert [s["type"] for s in cfg.stages] == [s["type"] for s in screen.stages] == ["composition", "property", "rank"]

