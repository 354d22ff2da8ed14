import json

import pytest

from jaxinv.cli import main, run_experiment
from jaxinv.config import ConfigError, compose, validate


@pytest.mark.parametrize("overrides, field", [
    (["cutof=3"], "cutof"),
    (["cutoff=abc"], "cutoff"),
    (["data=perov_6"], "data"),
    (["data.limt=3"], "data.limt"),
    (["n_export=1.5"], "n_export"),
])
def test_config_errors_name_the_field(overrides, field, capsys):
    assert main(["run", "explore", *overrides]) == 2
    err = capsys.readouterr().err
    assert f"field '{field}'" in err
    assert "Traceback" not in err


def test_missing_value_is_reported(tmp_path):
    from dataclasses import dataclass

    from omegaconf import OmegaConf

    @dataclass
    class Schema:
        target: float = 1.0
        name: str = "x"

    with pytest.raises(ConfigError, match="field 'name'"):
        validate(OmegaConf.create({"target": 2.0, "name": "???"}), Schema)


def test_unknown_experiment(capsys):
    assert main(["run", "no_such_experiment"]) == 2
    assert "unknown experiment" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("run", "data", "evaluate"):
        assert cmd in out


def test_explore_writes_a_run_folder(tmp_path):
    out = tmp_path / "run"
    summary = run_experiment("explore", ["data=carbon_24", "data.limit=40", "n_export=5", f"out_dir={out}",
                                            "progress=false"])
    assert summary["structures"] == 40
    assert (out / "config.yaml").read_text().count("carbon_24") >= 1
    assert (out / "run.log").exists()
    assert len(list((out / "structures" / "cif").glob("*.cif"))) == 5
    saved = json.loads((out / "summary.json").read_text())
    assert saved["graphs"]["mean_degree"] > 10
    cfg = compose("explore", ["cutoff=6"])
    assert cfg.cutoff == 6.0 and cfg.data.name == "perov_5"
