"""The generative experiments end to end, tiny: train, resume, generate, optimize latents."""
import json

import numpy as np
import pytest

from jaxinv.cli import run_experiment
from jaxinv.config import ConfigError

TINY = ["model.latent=8", "model.hidden=32", "model.enc_hidden=16", "model.encoder=mlp", "data.limit=64",
        "train.batch_size=16", "train.eval_every=2", "train.eval_size=16", "check_samples=4", "check_recon=4",
        "n_samples=8", "n_cif=2", "progress=false"]


def test_train_generate_optimize(tmp_path):
    run = tmp_path / "train"
    res = run_experiment("train_generative", TINY + ["train.steps=2", "evaluate=false", f"out_dir={run}"])
    assert res["steps"] == 2
    assert (run / "checkpoint" / "model.json").exists()
    assert len(list((run / "samples" / "cif").glob("*.cif"))) == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 2 and "sample/valid" in records[0] and "recon/match_rate" in records[0]
    # resume the same run folder for more steps
    res = run_experiment("train_generative", TINY + ["train.steps=4", "evaluate=false", f"out_dir={run}"])
    assert res["steps"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    # sample it and score validity
    # references from the user's files: a bad file is skipped by name, the rest are used
    refs = tmp_path / "refs"
    from jaxinv.data import load_dataset
    from jaxinv.io import write_cifs

    write_cifs(load_dataset("perov_5").structures()[:2], refs, names=["good_a", "good_b"])
    (refs / "broken.cif").write_text("data_broken\n_cell_length_a 4.0\n")
    gen = run_experiment("generate", [f"model={run}", "n=8", "metrics=[validity]", "progress=false",
                                      "symmetrize=0.1", f"reference={refs}", f"train={refs}",
                                      f"out_dir={tmp_path / 'gen'}"])
    assert gen["n"] == 8 and 0 <= gen["metrics"]["validity"]["valid"] <= 1
    skipped = (tmp_path / "gen" / "skipped.csv").read_text().splitlines()
    assert skipped[0] == "file,reason" and all("broken.cif" in line for line in skipped[1:]) and len(skipped) > 1
    sym = gen["symmetrization"]
    assert sym["symprec"] == 0.1 and sym["symmetrized"] + sym["kept"] == 8
    assert (tmp_path / "gen" / "samples" / "samples.extxyz").exists()
    assert (tmp_path / "gen" / "metrics.md").exists()
    # latent optimization toward the perov_5 target
    opt = run_experiment("optimize_latent", [f"model={run}", "n=8", "steps=5", "progress=false",
                                             f"out_dir={tmp_path / 'opt'}"])
    s = opt["summary"]
    assert s["n"] == 8 and 0 <= s["valid"] <= 1 and "known_dft_hit" in s
    assert len(opt["per_candidate"]["head"]) == 8


def test_check_recon_zero_skips_the_reconstruction_check(tmp_path):
    """check_recon=0 is allowed by its rule (>= 0): it turns the check off instead of failing
    on an empty reconstruction batch."""
    args = [a for a in TINY if not a.startswith("check_recon=")] + ["check_recon=0", "train.steps=2",
                                                                       "evaluate=false", f"out_dir={tmp_path}"]
    assert run_experiment("train_generative", args)["steps"] == 2
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert "sample/valid" in record and "recon/match_rate" not in record


def test_bad_model_settings_are_config_errors():
    with pytest.raises(ConfigError, match="model"):
        run_experiment("train_generative", ["model=no_such_model"])
    with pytest.raises(ConfigError, match="latent"):
        run_experiment("train_generative", ["model.latent=many"])
    with pytest.raises(ConfigError, match="model"):
        run_experiment("generate", [])
