"""Hydra configs for experiments: composition, validation and run folders.

An experiment is a module in ``experiments/`` with a ``Config`` dataclass (the
schema) and a ``main(cfg, run)`` function, and a YAML file of the same name in
``configs/``. ``jaxinv run NAME key=value ...`` composes the YAML with Hydra
(config groups such as ``data=perov_5`` and ``potential=sevennet0`` included),
checks it against the schema, creates ``outputs/NAME/<timestamp>/`` holding the
resolved ``config.yaml`` and ``run.log``, and calls ``main``.

Any error in the config (a misspelt key, a wrong type, a missing value, an
unknown group option) is raised as :class:`ConfigError` naming the field, before
any work starts.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigError", "compose", "validate", "Run", "start_run", "repo_root", "DataConfig", "PotentialConfig", "RunConfig"]

log = logging.getLogger("jaxinv")


class ConfigError(ValueError):
    """A config problem, with the dotted name of the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config error in field '{field}': {message}" if field else f"config error: {message}")


@dataclass
class DataConfig:
    """Which dataset to use: a registry name or a path, a split and an optional cap."""

    name: str = "perov_5"
    split: Optional[str] = None
    limit: Optional[int] = None  # first N structures of the split (after a seeded shuffle)


@dataclass
class PotentialConfig:
    """A registered potential (``jaxinv.potentials.registry``) and options for its factory."""

    name: str = "sevennet0"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Fields every experiment has."""

    seed: int = 0
    out_dir: Optional[str] = None  # default outputs/<experiment>/<timestamp>
    progress: bool = True


def repo_root() -> Path:
    """The checkout holding ``configs/`` and ``experiments/`` (or ``$JAXINV_HOME``)."""
    if os.environ.get("JAXINV_HOME"):
        return Path(os.environ["JAXINV_HOME"]).resolve()
    return Path(__file__).resolve().parents[1]


def compose(name: str, overrides: list[str] | None = None, config_dir: str | Path | None = None) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with Hydra overrides (``key=value``, ``group=option``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    config_dir = Path(config_dir or repo_root() / "configs").resolve()
    if not (config_dir / f"{name}.yaml").exists():
        known = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise ConfigError("", f"no config '{name}.yaml' in {config_dir}; known: {', '.join(known)}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(config_name=name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_field_of(e), _first_line(e)) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _field_of(e: Exception) -> str:
    key = getattr(e, "full_key", None)
    if key:
        return str(key)
    text = str(e)
    for marker in ("Could not override '", "override '", "Key '"):
        if marker in text:
            return text.split(marker, 1)[1].split("'", 1)[0]
    if "Could not find '" in text:  # an unknown option of a config group, e.g. data=mp21
        return text.split("Could not find '", 1)[1].split("'", 1)[0].rsplit("/", 1)[0]
    return ""


def validate(cfg: DictConfig, schema: type) -> DictConfig:
    """Merge ``cfg`` onto the dataclass ``schema``: unknown keys, wrong types and
    missing (``???``) values raise :class:`ConfigError` naming the field."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_field_of(e), _first_line(e)) from None
    # merging '???' onto a default keeps the default, so look at both sides
    missing = sorted(OmegaConf.missing_keys(merged) | OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "a value is required (it is '???' in the config); set it on the command line, "
                          f"e.g. {missing[0]}=...")
    return merged


@dataclass
class Run:
    """A run folder: the resolved config, a log file and results live here."""

    name: str
    cfg: DictConfig
    out_dir: Path

    def path(self, *parts: str) -> Path:
        p = self.out_dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def save_json(self, obj: Any, name: str = "results.json") -> Path:
        import json

        import numpy as np

        def default(o):
            if isinstance(o, np.generic):
                return o.item()
            if isinstance(o, np.ndarray):
                return o.tolist()
            if dataclasses.is_dataclass(o):
                return dataclasses.asdict(o)
            return str(o)

        p = self.path(name)
        p.write_text(json.dumps(obj, indent=2, default=default))
        return p


def start_run(name: str, cfg: DictConfig) -> Run:
    """Create the run folder, write the resolved config and attach a log file."""
    if cfg.get("out_dir"):
        out = Path(cfg.out_dir)
    else:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        out = Path("outputs") / name / stamp
        k = 1
        while out.exists():
            out = Path("outputs") / name / f"{stamp}_{k}"
            k += 1
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_jaxinv_run", False):
            root.removeHandler(h)
    fh = logging.FileHandler(out / "run.log")
    fh._jaxinv_run = True
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in root.handlers):
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(sh)
    root.setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax bookkeeping at INFO
    log.info("run %s -> %s", name, out)
    return Run(name, cfg, out)
