"""Config values are checked at start-up (jaxinv.config rules), every workflow that uses a
potential takes ``potential=<any registered name>``, and ``jaxinv run NAME --help`` lists
the fields. Nothing here loads a model or starts a run: ``load_potential`` and
``start_run`` are replaced by functions that fail the test if they are called."""
import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from omegaconf import OmegaConf

from jaxinv.cli import load_experiment, main
from jaxinv.config import (CONFIG_DIR, ConfigError, Rule, at_least, checked, compose, config_fields, constrain, each,
                           one_of, validate)
from jaxinv.potentials.registry import available_potentials

REGISTERED = sorted(available_potentials())
# workflow -> (key of its potential section, overrides it needs to compose)
WORKFLOWS = {
    "relax": ("potential", []),
    "label": ("potential", []),
    "search": ("potential", ["composition=Si8"]),
    "screen": ("potential", []),
    "quickstart": ("potential", []),
    "optimize_latent": ("potential", ["model=MODEL"]),
    "generate": ("relax.potential", ["model=MODEL"]),
}
OPTIONAL = {"screen", "quickstart", "optimize_latent", "generate"}  # may run without a potential


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail on any attempt to build a potential or to create a run folder."""
    import jaxinv.config
    import jaxinv.potentials.registry

    def load_potential(*args, **kwargs):
        raise AssertionError(f"a potential was loaded: {args} {kwargs}")

    def start_run(*args, **kwargs):
        raise AssertionError("a run was started")

    monkeypatch.setattr(jaxinv.potentials.registry, "load_potential", load_potential)
    monkeypatch.setattr(jaxinv.config, "start_run", start_run)


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model_run"
    d.mkdir()
    return d


@pytest.fixture
def trained_dir(tmp_path):
    d = tmp_path / "trained" / "model"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "params.npz").write_bytes(b"")
    return d


def options_for(name, key, trained_dir):
    """Options a potential cannot do without (no defaults in its factory)."""
    if name == "morse":
        return [f"{key}.options.r0=2.3", f"{key}.options.epsilon=0.4", f"{key}.options.alpha=1.4"]
    if name == "trained":
        return [f"{key}.options.path={trained_dir}"]
    return []


def fails(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


# ------------------------------------------------------------------------------- the probes
@pytest.mark.parametrize("argv, field", [
    (["run", "relax", "max_steps=-5", "data.split=test", "data.limit=2"], "max_steps"),
    (["run", "relax", "data.limit=0"], "data.limit"),
    (["run", "explore", "data.limit=0"], "data.limit"),
    (["run", "relax", "data.split=tset", "data.limit=2"], "data.split"),
    (["run", "relax", "cell=frechett", "data.limit=2"], "cell"),
    (["run", "relax", "criterion=loose", "data.limit=2"], "criterion"),
    (["run", "relax", "fmax=0", "data.limit=2"], "fmax"),
    (["run", "relax", "seed=-1", "data.limit=2"], "seed"),
    (["run", "search", "composition=Xx2O"], "composition"),
    (["run", "search", "composition=Si8", "algorithm.name=ga"], "algorithm.name"),
    (["run", "search", "composition=Si8", "fingerprint.sigma=0"], "fingerprint.sigma"),
    (["run", "search", "composition=Si8", "slots=0"], "slots"),
    (["run", "search", "composition=Si8", "algorithm.options.soft_model=hessian"], "algorithm.options"),
    (["run", "relax", "potential=nonexistent"], "potential.name"),
    (["run", "relax", "potential.name=nonexistent"], "potential.name"),
    (["run", "search", "composition=Si8", "potential=nonexistent"], "potential.name"),
    (["run", "screen", "potential=nonexistent"], "potential.name"),
    (["run", "relax", "potential=lj", "potential.options.sigmaa=2", "data.limit=2"], "potential.options"),
    (["run", "relax", "potential=none", "data.limit=2"], "potential.name"),
    (["run", "screen", "candidates.threshold=0"], "candidates.threshold"),
    (["run", "screen", "stages=[{type: relx}]"], "stages"),
    (["run", "screen", "stages=[{type: relax}]"], "potential"),
    (["run", "screen", "potential=lj", "stages=[{type: stability}]"], "reference"),
    (["run", "castelli", "strategies=[p_window,greedy]"], "strategies"),
    (["run", "train_property", "targets=[band_gap]"], "targets"),
    (["run", "train_generative", "model=voxel_vae", "model.grid=12"], "model.grid"),
    (["run", "label", "copies=-1", "data.limit=2"], "copies"),
    (["run", "evaluate", "samples=.", "metrics=[validity,beauty]"], "metrics"),
])
def test_bad_values_stop_at_start_up_naming_the_field(argv, field, capsys, nothing_loads, tmp_path):
    code, err = fails([*argv, f"out_dir={tmp_path / 'run'}"], capsys)
    assert code == 2, err
    assert err.startswith(f"jaxinv: config error in field '{field}': "), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, field", [
    (["n=0"], "n"),
    (["composition=Xx2O"], "composition"),
    (["batch_size=0"], "batch_size"),
    (["relax.max_steps=0"], "relax.max_steps"),
    (["relax.potential=nonexistent"], "relax.potential.name"),
    (["metrics=[validity,beauty]"], "metrics"),
])
def test_generate_values(overrides, field, capsys, nothing_loads, model_dir, tmp_path):
    code, err = fails(["run", "generate", f"model={model_dir}", *overrides, f"out_dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    assert err.startswith(f"jaxinv: config error in field '{field}': "), err


def test_messages_say_what_is_wrong(capsys, nothing_loads):
    _, err = fails(["run", "relax", "max_steps=-5", "--cfg"], capsys)
    assert "must be >= 1, got -5" in err
    _, err = fails(["run", "search", "composition=Xx2O", "--cfg"], capsys)
    assert "'Xx' is not an element" in err
    _, err = fails(["run", "relax", "data.limit=0", "--cfg"], capsys)
    assert "must be >= 1, got 0" in err
    for argv in (["run", "relax", "potential=nonexistent"], ["run", "relax", "potential.name=nonexistent"]):
        _, err = fails(argv, capsys)
        assert "unknown potential 'nonexistent'" in err
        assert "registered: " + ", ".join(REGISTERED) in err
    _, err = fails(["run", "relax", "potential=lj", "potential.options.sigmaa=2"], capsys)
    assert "lj has no option 'sigmaa'" in err and "sigma" in err
    _, err = fails(["run", "search", "composition=Si8", "algorithm.options.soft_model=hessian"], capsys)
    assert "soft_model='hessian'; choose one of potential, bonds" in err


# ------------------------------------------------------------------------------- potentials
def test_every_registered_potential_has_a_config():
    folder = CONFIG_DIR / "potential"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted([*REGISTERED, "none"])
    for name in REGISTERED:
        assert OmegaConf.load(folder / f"{name}.yaml").name == name


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_every_workflow_takes_every_registered_potential(workflow, nothing_loads, model_dir, trained_dir):
    key, extra = WORKFLOWS[workflow]
    extra = [o.replace("MODEL", str(model_dir)) for o in extra]
    schema = load_experiment(workflow).Config
    for name in REGISTERED:
        cfg = validate(compose(workflow, [*extra, f"{key}={name}", *options_for(name, key, trained_dir)]), schema)
        section = OmegaConf.select(cfg, key)
        assert section.name == name
        if name == "trained":
            assert section.options.path == str(trained_dir)
        if name == "morse":
            assert section.options == {"r0": 2.3, "epsilon": 0.4, "alpha": 1.4}
    # a free-form option the YAML does not list is added, and checked against the factory
    cfg = validate(compose(workflow, [*extra, f"{key}=lj", f"{key}.options.cutoff=11"]), schema)
    assert OmegaConf.select(cfg, key).options == {"cutoff": 11}
    with pytest.raises(ConfigError, match=f"field '{key}.options': lj has no option 'cutof'"):
        validate(compose(workflow, [*extra, f"{key}=lj", f"{key}.options.cutof=11"]), schema)
    # required options are named
    with pytest.raises(ConfigError, match=f"field '{key}.options.path'"):
        validate(compose(workflow, [*extra, f"{key}=trained"]), schema)
    with pytest.raises(ConfigError, match=f"field '{key}.options': path .* holds no trained potential"):
        validate(compose(workflow, [*extra, f"{key}=trained", f"{key}.options.path={model_dir}"]), schema)
    # none / null: no potential where the workflow can do without one
    for none in ("none", "null"):
        if workflow in OPTIONAL:
            assert OmegaConf.select(validate(compose(workflow, [*extra, f"{key}={none}"]), schema), key).name == "none"
        else:
            with pytest.raises(ConfigError, match=f"field '{key}.name': this workflow needs a potential"):
                validate(compose(workflow, [*extra, f"{key}={none}"]), schema)


def test_screen_and_optimize_latent_potential_on_the_command_line(capsys, nothing_loads, model_dir):
    assert main(["run", "screen", "potential=sevennet0", "--cfg"]) == 0
    assert "name: sevennet0" in capsys.readouterr().out
    assert main(["run", "screen", "potential=sevennet0", "stages=[{type: composition}, {type: relax}]", "--cfg"]) == 0
    assert main(["run", "quickstart", "potential=sw_si", "--cfg"]) == 0
    assert main(["run", "optimize_latent", f"model={model_dir}", "potential=lj", "--cfg"]) == 0
    out = capsys.readouterr().out
    assert "name: sw_si" in out and "name: lj" in out
    assert main(["run", "generate", f"model={model_dir}", "relax.potential=tersoff_c", "--cfg"]) == 0
    assert "name: tersoff_c" in capsys.readouterr().out


def test_the_configured_potential_is_what_main_loads(monkeypatch):
    import jaxinv.potentials.registry
    from jaxinv.config import load_configured_potential

    calls = []
    monkeypatch.setattr(jaxinv.potentials.registry, "load_potential", lambda name, **kw: calls.append((name, kw)))
    cfg = validate(compose("optimize_latent", ["model=.", "potential=lj", "potential.options.sigma=2.5"]),
                   load_experiment("optimize_latent").Config)
    load_configured_potential(cfg.potential)
    assert calls == [("lj", {"sigma": 2.5})]
    assert load_configured_potential(OmegaConf.create({"name": "none", "options": {}})) is None


# ------------------------------------------------------------------------------- overrides
def test_overrides_as_the_readme_writes_them(model_dir):
    schema = load_experiment("search").Config
    cfg = validate(compose("search", ["composition=Si,O", "min_atoms=3", "max_atoms=9", "potential=bks_sio2"]), schema)
    assert cfg.composition == "Si,O"
    with pytest.raises(ConfigError, match="field 'composition': a composition range needs 0 < min_atoms <= max_atoms"):
        validate(compose("search", ["composition=Si,O"]), schema)
    cfg = validate(compose("optimize_latent", [f"model={model_dir}", "objectives={energy_per_atom: min}"]),
                   load_experiment("optimize_latent").Config)
    assert OmegaConf.to_container(cfg.objectives) == {"energy_per_atom": "min"}  # replaced, not merged
    cfg = validate(compose("generate", [f"model={model_dir}", "targets={heat_ref: 0.3, dir_gap: 2.0}"]),
                   load_experiment("generate").Config)
    assert OmegaConf.to_container(cfg.targets) == {"heat_ref": 0.3, "dir_gap": 2.0}


def test_unknown_group_option_lists_the_options(capsys):
    _, err = fails(["run", "explore", "data=perov_6"], capsys)
    assert err.startswith("jaxinv: config error in field 'data': unknown option 'perov_6'; "
                          "available: carbon_24, mp_20, perov_5")


# ------------------------------------------------------------------------------- the rules
def test_rules_are_checked_through_nested_sections():
    @dataclass_
    class Inner:
        share: float = checked(0.5, Rule(lambda v, node: None if 0 < v <= 1 else "not a share", "(0, 1]"))
        names: List[str] = checked(["a"], each(one_of("a", "b")))

    @dataclass_
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        count: Optional[int] = checked(None, at_least(1))
        needed: Optional[str] = checked(None, Rule(lambda v, node: "give it" if v is None and node.count else None,
                                                   "with count", check_none=True))
        free: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"x": 1})

    ok = validate(OmegaConf.create({"inner": {"share": 1.0}, "free": {"y": 2}}), Outer)
    assert ok.count is None and ok.inner.names == ["a"]
    assert OmegaConf.to_container(ok.free) == {"y": 2}  # the config's mapping, not the union with the default
    for given, field, why in [({"inner": {"share": 0.0}}, "inner.share", "not a share"),
                              ({"inner": {"names": ["a", "c"]}}, "inner.names",
                               "item 1 ('c'): 'c' is not one of a | b"),
                              ({"count": 0}, "count", "must be >= 1, got 0"),
                              ({"count": 2}, "needed", "give it")]:
        with pytest.raises(ConfigError) as e:
            validate(OmegaConf.create(given), Outer)
        assert str(e.value) == f"config error in field '{field}': {why}"


def test_constrain_a_dataclass_from_elsewhere():
    @dataclass_
    class Library:
        steps: int = 10

    constrain(Library, steps=at_least(1))
    with pytest.raises(ConfigError, match="field 'steps': must be >= 1, got 0"):
        validate(OmegaConf.create({"steps": 0}), Library)
    with pytest.raises(TypeError):
        constrain(Library, stepz=at_least(1))
    with pytest.raises(TypeError):
        checked(1, "not a rule")


dataclass_ = dataclasses.dataclass


# ------------------------------------------------------------------------------- --help
def test_run_help_lists_fields_and_starts_nothing(capsys, nothing_loads):
    assert main(["run", "relax", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: jaxinv run relax")
    _, rows = config_fields("relax", load_experiment("relax").Config)
    keys = [k for k, *_ in rows]
    assert {"seed", "data.limit", "potential.name", "potential.options", "max_steps", "cell"} <= set(keys)
    for key, default, meaning, rules in rows:
        assert f"  {key} = {default}" in out
    assert "max_steps = 500" in out and "FIRE steps at most" in out and "[>= 1]" in out
    assert "cell = frechet" in out and "frechet | fixed | volume | shape" in out
    assert "potential=sevennet0" in out and "morse" in out
    assert main(["run", "relax", "potential=lj", "-h"]) == 0  # defaults after the overrides
    assert "potential.name = lj" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    assert "--help lists the experiment's fields" in capsys.readouterr().out


def test_every_field_of_every_experiment_has_a_meaning(model_dir):
    from jaxinv.cli import list_experiments

    needs = {"generate": [f"model={model_dir}"], "optimize_latent": [f"model={model_dir}"],
             "search": ["composition=Si8"], "evaluate": ["samples=."]}
    for name in list_experiments():
        _, rows = config_fields(name, load_experiment(name).Config, needs.get(name, []))
        assert [key for key, _, meaning, _ in rows if not meaning] == [], name


# ------------------------------------------------------------------------------- packaging
def test_dependencies_for_the_xla_cache_and_the_tests():
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs}
    # without filelock jax cannot size the persistent cache and never reads or writes it
    assert "filelock" in names(project["dependencies"])
    assert "hypothesis" in names(project["optional-dependencies"]["test"])


def test_library_sections_take_every_field_and_name_a_misspelt_one(capsys, nothing_loads):
    """A section typed with a library dataclass (frozen ones too) takes a field its YAML leaves
    at the library's default; a misspelt field is named; its meaning is the dataclass's comment."""
    from jaxinv.cli import load_experiment

    schema = load_experiment("train_potential").Config
    cfg = validate(compose("train_potential", [f"train_file={__file__}", "train.huber_delta=0.2", "seed=4"]), schema)
    assert cfg.train.huber_delta == 0.2 and cfg.train.epochs == 30 and cfg.train.seed == 4
    _, err = fails(["run", "train_property", "train.epochz=3", "--cfg"], capsys)
    assert err.startswith("jaxinv: config error in field 'train.epochz': "), err
    _, rows = config_fields("train_property", load_experiment("train_property").Config)
    assert ("train.warmup", "0.3", "fraction of epochs with the MSE mean loss", "in [0, 1]") in rows
