"""Hydra configs for experiments: composition, validation and run folders.

An experiment is a module of :mod:`jaxinv.experiments` with a ``Config``
dataclass (the schema) and a ``main(cfg, run)`` function, and a YAML file of the
same name in ``jaxinv/configs/`` (package data, :data:`CONFIG_DIR`): both ship
in the wheel, so ``jaxinv run`` works from any folder of an installed jaxinv.
``jaxinv run NAME key=value ...`` composes the YAML with Hydra (config groups
such as ``data=perov_5`` and ``potential=sevennet0`` included), checks it
against the schema, creates ``outputs/NAME/<timestamp>/`` holding the
resolved ``config.yaml`` and ``run.log``, and calls ``main``.

Any error in the config (a misspelt key, a wrong type, a missing value, an
unknown group option, a value its field does not accept) is raised as
:class:`ConfigError` naming the field, before any work starts. A schema field
declares the values it accepts next to its default, ``max_steps: int =
checked(500, at_least(1))``, and :func:`validate` checks them all.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import functools
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

__all__ = ["ConfigError", "compose", "validate", "check_values", "Run", "start_run", "CONFIG_DIR", "DataConfig",
           "PotentialConfig", "OptionalPotentialConfig", "RunConfig", "load_configured_potential", "Rule", "checked",
           "constrain", "at_least", "between", "positive", "non_negative", "fraction", "one_of", "each", "nonempty",
           "existing_path", "formula", "dataset_spec", "module_function", "potential_name", "potential_options"]

log = logging.getLogger("jaxinv")


class ConfigError(ValueError):
    """A config problem, with the dotted name of the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"config error in field '{field}': {message}" if field else f"config error: {message}")


# --------------------------------------------------------------------------- constraints
# A schema field declares what values it accepts next to its default:
#     max_steps: int = checked(500, at_least(1))
# and validate() checks every field of every nested dataclass after the merge.


@dataclass(frozen=True)
class Rule:
    """A constraint on one config value. ``test(value, node)`` returns why ``value`` is
    wrong, or None when it is fine (``node``: the config section holding the field, for
    rules that depend on a sibling); ``text`` says what is allowed (shown by ``--help``;
    a callable gives it lazily). A null value passes without a test unless ``check_none``."""

    test: Callable[[Any, Any], Optional[str]]
    text: Any
    check_none: bool = False

    def describe(self) -> str:
        return str(self.text() if callable(self.text) else self.text)


def checked(default: Any, *rules: Rule) -> Any:
    """A dataclass field whose value must pass ``rules`` (checked by :func:`validate`;
    None, where the type is Optional, passes unless a rule says otherwise). A mutable default (list, dict,
    dataclass instance) is copied for each instance."""
    for r in rules:  # e.g. a field named like a rule, used further down the same class body
        if not isinstance(r, Rule):
            raise TypeError(f"checked() takes Rules after the default, not {r!r}")
    meta = {"rules": tuple(rules)}
    if isinstance(default, (list, dict, set)) or (dataclasses.is_dataclass(default) and not isinstance(default, type)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


_EXTRA_RULES: dict[type, dict[str, tuple[Rule, ...]]] = {}


def constrain(cls: type, **rules: Rule | tuple[Rule, ...]) -> None:
    """Rules for fields of a dataclass defined elsewhere (a library class used as a schema
    section), for ``validate`` to check like those declared with :func:`checked`."""
    names = {f.name for f in dataclasses.fields(cls)}
    for name, r in rules.items():
        if name not in names:
            raise TypeError(f"{cls.__name__} has no field {name!r}")
        _EXTRA_RULES.setdefault(cls, {})[name] = r if isinstance(r, tuple) else (r,)


def field_rules(cls: type, f: dataclasses.Field) -> tuple[Rule, ...]:
    """The rules of field ``f`` of ``cls``: declared with it, or by :func:`constrain`."""
    extra = next((_EXTRA_RULES[c][f.name] for c in cls.__mro__ if f.name in _EXTRA_RULES.get(c, {})), ())
    return tuple(f.metadata.get("rules", ())) + tuple(extra)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def at_least(lo: float, strict: bool = False) -> Rule:
    """v >= lo (v > lo when ``strict``)."""
    text = f"> {lo:g}" if strict else f">= {lo:g}"

    def test(v, node):
        if not _is_number(v) or not (v > lo if strict else v >= lo):
            return f"must be {text}, got {v!r}"
    return Rule(test, text)


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """lo <= v <= hi, with open ends as asked."""
    text = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def test(v, node):
        ok = _is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            return f"must be {text}, got {v!r}"
    return Rule(test, text)


positive = at_least(0, strict=True)
non_negative = at_least(0)
fraction = between(0, 1, lo_open=True)  # a share of something: (0, 1]


def one_of(*choices: Any) -> Rule:
    """v is one of ``choices``; a single callable argument gives them lazily (a library
    constant that is costly to import)."""
    lazy = len(choices) == 1 and callable(choices[0])

    def options():
        return tuple(choices[0]()) if lazy else choices

    def test(v, node):
        if v not in options():
            return f"{v!r} is not one of {' | '.join(map(str, options()))}"
    return Rule(test, lambda: " | ".join(map(str, options())))


def each(rule: Rule) -> Rule:
    """``rule`` for every item of a list (or value of a mapping)."""

    def test(v, node):
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, item in items:
            why = rule.test(item, node)
            if why:
                return f"item {k!r}: {why}" if isinstance(v, dict) else f"item {k} ({item!r}): {why}"
    return Rule(test, lambda: f"each {rule.describe()}")


nonempty = Rule(lambda v, node: None if len(v) else "must not be empty", "not empty")


def existing_path(kind: str = "any") -> Rule:
    """A path that exists (``kind``: 'any', 'file' or 'dir')."""
    text = {"any": "an existing path", "file": "an existing file", "dir": "an existing folder"}[kind]

    def test(v, node):
        p = Path(str(v)).expanduser()
        if not p.exists():
            return f"{v} does not exist (relative to {Path.cwd()})"
        if kind == "file" and not p.is_file():
            return f"{v} is not a file"
        if kind == "dir" and not p.is_dir():
            return f"{v} is not a folder"
    return Rule(test, text)


def _element_problem(symbols) -> Optional[str]:
    from pymatgen.core.periodic_table import Element

    bad = [s for s in symbols if not Element.is_valid_symbol(s)]
    if bad:
        return f"{', '.join(map(repr, bad))} {'is not an element' if len(bad) == 1 else 'are not elements'}"
    return None


def _formula_problem(v) -> Optional[str]:
    from pymatgen.core import Composition

    try:
        comp = Composition(str(v))
    except Exception as e:  # pymatgen raises ValueError and others for text it cannot read
        return f"{v!r} is not a chemical formula ({_first_line(e)})"
    if comp.num_atoms <= 0:
        return f"{v!r} has no atoms"
    return _element_problem([str(getattr(e, "symbol", e)) for e in comp.elements])


formula = Rule(lambda v, node: _formula_problem(v), "a chemical formula of real elements (SrTiO3)")

_SPLITS = ("train", "valid", "test")


def _dataset_problem(spec: str) -> Optional[str]:
    from jaxinv.data.registry import REGISTRY

    if Path(spec).expanduser().exists():
        return None
    name, split = spec.rsplit(":", 1) if ":" in spec else (spec, None)
    if Path(name).expanduser().exists() or name in REGISTRY:
        if split is not None and {"val": "valid", "validation": "valid"}.get(split, split) not in _SPLITS:
            return f"split {split!r} of {spec!r} is not one of {' | '.join(_SPLITS)}"
        return None
    return f"{name!r} is neither a known dataset ({', '.join(sorted(REGISTRY))}) nor an existing path"


dataset_spec = Rule(lambda v, node: _dataset_problem(str(v)), "a dataset name[:split] or an existing path")


def _callable_problem(spec: str) -> Optional[str]:
    """'module:function' names something callable (the module is imported to see)."""
    import importlib

    module, _, attr = spec.partition(":")
    if not module or not attr:
        return f"{spec!r}: write module:function"
    try:
        found = importlib.import_module(module)
    except ImportError as e:
        return f"{spec!r}: cannot import {module!r} ({_first_line(e)})"
    if not callable(getattr(found, attr, None)):
        return f"{spec!r}: {module} has no function {attr!r}"
    return None


module_function = Rule(lambda v, node: _callable_problem(str(v)), "module:function")


def potential_name(optional: bool = False) -> Rule:
    """A registered potential (``jaxinv.potentials.registry``) or 'module:factory';
    'none' too where ``optional``."""

    def test(v, node):
        if v == "none":
            return None if optional else "this workflow needs a potential; registered: " + _registered()
        if ":" in str(v):
            return _callable_problem(str(v))
        from jaxinv.potentials.registry import available_potentials

        if v not in available_potentials():
            return (f"unknown potential {v!r}; registered: {_registered()}" + (", none" if optional else "")
                    + " (or module:factory)")
    return Rule(test, "a registered potential or module:factory" + (", or none" if optional else ""))


def _registered() -> str:
    from jaxinv.potentials.registry import available_potentials

    return ", ".join(sorted(available_potentials()))


def _factory_signature(name: str):
    """({parameter: required}, takes **kwargs, registry defaults) of a potential's factory,
    or None. A registered factory whose module is not imported yet is read from its
    source, so that checking a config does not import SevenNet's (slow) module."""
    import importlib
    import importlib.util
    import inspect

    if ":" in name:
        module, _, attr = name.partition(":")
        defaults = {}
    else:
        from jaxinv.potentials.registry import factory_of

        entry = factory_of(name)
        if entry is None:
            return None
        module, attr, defaults = entry
    if module not in sys.modules:
        found = _signature_in_source(importlib.util.find_spec(module), attr)
        if found is not None:
            return (*found, defaults)
    try:
        params = inspect.signature(getattr(importlib.import_module(module), attr)).parameters
    except (TypeError, ValueError, AttributeError):
        return None
    kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {k: p.default is p.empty for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, kwargs, defaults


def _signature_in_source(spec, function: str):
    """({parameter: required}, takes **kwargs) of a top-level ``def function`` in a module's file."""
    import ast

    if spec is None or not spec.origin or not str(spec.origin).endswith(".py"):
        return None
    for node in ast.parse(Path(spec.origin).read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            a = node.args
            positional = a.posonlyargs + a.args
            first_default = len(positional) - len(a.defaults)
            named = {p.arg: k < first_default for k, p in enumerate(positional)}
            named.update({p.arg: d is None for p, d in zip(a.kwonlyargs, a.kw_defaults)})
            return named, a.kwarg is not None
    return None


def _options_problem(options, node) -> Optional[str]:
    name = str(node.get("name"))
    if name == "none":
        return f"options {sorted(options)} given but the potential is none" if options else None
    sig = _factory_signature(name)
    if sig is None:
        return None
    params, kwargs, defaults = sig
    unknown = sorted(set(options) - set(params)) if not kwargs else []
    if unknown:
        return f"{name} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(params) or 'none'}"
    need = [k for k, required in params.items() if required and k not in options and k not in defaults]
    if need:
        return f"{name} needs the option{'s' * (len(need) > 1)} {', '.join(need)} (options.<name>=<value>)"
    if "path" in options and name == "trained":
        folder = Path(str(options["path"])).expanduser()
        missing = [f for f in ("config.json", "params.npz") if not (folder / f).is_file()]
        if missing:
            return (f"path {options['path']} holds no trained potential (no {', '.join(missing)}); "
                    "give a `jaxinv run train_potential` run's model folder")
    return None


potential_options = Rule(_options_problem, "keyword arguments of the potential's factory")


@dataclass
class DataConfig:
    """Which dataset to use: a registry name or a path, a split and an optional cap."""

    name: str = checked("perov_5", dataset_spec)
    split: Optional[str] = checked(None, one_of(*_SPLITS))
    limit: Optional[int] = checked(None, at_least(1))


@dataclass
class PotentialConfig:
    """A registered potential (``jaxinv.potentials.registry``) and options for its factory."""

    name: str = checked("sevennet0", potential_name())
    options: Dict[str, Any] = checked({}, potential_options)


@dataclass
class OptionalPotentialConfig(PotentialConfig):
    """A potential where a workflow can do without one: ``potential=none`` (the default)."""

    name: str = checked("none", potential_name(optional=True))


@dataclass
class RunConfig:
    """Fields every experiment has."""

    seed: int = checked(0, non_negative)
    out_dir: Optional[str] = None
    progress: bool = True


# The experiments' YAML files, shipped inside the package (jaxinv/configs/**.yaml),
# so that an installed jaxinv finds them from any folder.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def compose(name: str, overrides: list[str] | None = None, config_dir: str | Path | None = None,
            hydra_config: bool = False) -> DictConfig:
    """Compose ``<config_dir>/<name>.yaml`` (default :data:`CONFIG_DIR`) with Hydra
    overrides (``key=value``, ``group=option``).

    ``group=null`` selects the group's ``none`` option where it has one
    (``potential=null``); a group placed elsewhere by the defaults list
    (``potential@relax.potential: none``) is chosen by that key (``relax.potential=lj``);
    ``key={...}`` replaces the YAML's mapping; and a key inside a free-form ``options`` mapping
    (``potential.options.cutoff=11``) is added when the YAML does not list it (its
    factory's signature is checked by :func:`validate`). ``hydra_config``: keep the
    ``hydra`` node (its ``runtime.choices`` say which group options were used)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    if not (config_dir / f"{name}.yaml").exists():
        known = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise ConfigError("", f"no config '{name}.yaml' in {config_dir}; known: {', '.join(known)}")
    GlobalHydra.instance().clear()
    try:
        files = [OmegaConf.load(config_dir / f"{n}.yaml") for n in _included(config_dir, name)]
    except (OmegaConfBaseException, ValueError) as e:  # yaml's errors are ValueErrors
        raise ConfigError("", f"{config_dir / name}.yaml: {_first_line(e)}") from None
    placed = {}  # relax.potential -> potential@relax.potential: a group whose options land under another key
    for entry in [e for f in files for e in f.get("defaults", None) or []]:
        for spec in (entry.keys() if isinstance(entry, DictConfig) else []):
            group, at, package = str(spec).partition("@")
            if at:
                placed[package] = (group, str(spec))
    for f in files:
        f.pop("defaults", None)
    primary = OmegaConf.merge(*reversed(files))  # the keys the YAML files give, the nearest winning
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(config_name=name, overrides=_plain_overrides(overrides or [], config_dir, primary,
                                                                              placed),
                                 return_hydra_config=hydra_config)
    except (HydraException, OmegaConfBaseException) as e:
        raise _unknown_option(e, placed) or ConfigError(_field_of(e), _first_line(e)) from None


def _unknown_option(e: Exception, placed: dict) -> Optional[ConfigError]:
    """An unknown option of a config group (data=perov_6, potential=nonexistent), with the options."""
    import re

    found = re.search(r"Could not find '([^']+)/([^'/]+)'", str(e))
    if not found:
        return None
    group, option = found.groups()
    package = next((p for p, (g, _) in placed.items() if g == group), group)
    if group == "potential":
        return ConfigError(f"{package}.name", f"unknown potential {option!r}; registered: {_registered()}")
    options = []
    for line in str(e).split("Available options in", 1)[-1].splitlines()[1:]:
        if not line.startswith("\t"):
            break
        options.append(line.strip())
    return ConfigError(package, f"unknown option {option!r}; available: {', '.join(options) or 'none'}")


def _plain_overrides(overrides: list[str], config_dir: Path, primary: DictConfig, placed: dict) -> list[str]:
    """Overrides as a user means them, in Hydra's syntax (see :func:`compose`)."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key in placed:
            group, key = placed[key]
            o = f"{key}={value}"
        else:
            group = key
        if eq and not key.startswith(("+", "~")):
            if value.strip() == "null" and (config_dir / group / "none.yaml").is_file():
                o = f"{key}=none"
            elif value.lstrip().startswith("{") and isinstance(_select(primary, key), DictConfig):
                # 'objectives={energy_per_atom: min}' replaces the YAML's mapping (Hydra would merge into it)
                out.append(f"~{key}")
                o = f"+{o}"
            elif ("." in key and "@" not in key and not key.startswith("hydra.")) or (
                    "." not in key and key not in primary and not (config_dir / key).is_dir()):
                # a field that the YAML leaves at its schema default (train.warmup=0.5, fmax=0.01), or a
                # key of a free-form options mapping; a misspelt one is caught by validate()
                o = f"++{o}"
            if "," in value and value[:1] not in "[{'\"" and not any(c in value for c in "()$\"'"):
                # composition=Si,O is a string here; Hydra would read a multirun sweep and give up
                o = o[: len(o) - len(value)] + f'"{value}"'
        out.append(o)
    return out


def _included(config_dir: Path, name: str) -> list[str]:
    """``name`` and the configs its defaults list includes by name, without a group
    (quickstart.yaml: ``- screen``), nearest first."""
    out = [name]
    for entry in OmegaConf.load(config_dir / f"{name}.yaml").get("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_" and (config_dir / f"{entry}.yaml").is_file():
            out += _included(config_dir, entry)
    return out


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=None)
    except OmegaConfBaseException:  # not a key OmegaConf can look up: leave the override to Hydra
        return None


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
    """Merge ``cfg`` onto the dataclass ``schema`` and check it: unknown keys, wrong types,
    missing (``???``) values and values that break a field's rules (:func:`checked`,
    :func:`constrain`) raise :class:`ConfigError` naming the field."""
    try:
        base = _structured(schema)
        _clear_mappings(base, cfg)
        merged = OmegaConf.merge(base, cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_field_of(e), _first_line(e)) from None
    # merging '???' onto a default keeps the default, so look at both sides
    missing = sorted(OmegaConf.missing_keys(merged) | OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(missing[0], "a value is required (it is '???' in the config); set it on the command line, "
                          f"e.g. {missing[0]}=...")
    check_values(merged, schema)
    return merged


def _structured(schema: type) -> DictConfig:
    """The schema as a DictConfig whose every section takes values, also a section typed with a
    frozen library dataclass (jaxinv.potentials.train.TrainConfig), which OmegaConf makes read-only."""
    base = OmegaConf.structured(schema)

    def writable(node):
        node._set_flag("readonly", None)
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig):
                writable(child)
    writable(base)
    return base


def _clear_mappings(base: DictConfig, cfg: DictConfig) -> None:
    """Empty the schema's default of every free-form mapping (``Dict[str, Any]``) that
    ``cfg`` gives, so that the merge takes the config's mapping as it is rather than
    the union of both (the YAML says objectives={energy_per_atom: min}: no heat_ref)."""
    for key in list(base.keys()):
        if not isinstance(cfg, DictConfig) or key not in cfg:
            continue
        node = base._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            if dataclasses.is_dataclass(OmegaConf.get_type(node)):
                _clear_mappings(node, cfg._get_node(key))
            elif isinstance(cfg._get_node(key), DictConfig):
                base[key] = {}


def check_values(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Check every field's rules, nested sections included (a section's own fields before
    the rules on the section); the first value that fails raises :class:`ConfigError`."""
    for f in dataclasses.fields(schema):
        name = prefix + f.name
        try:
            value = node[f.name]
        except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve
            raise ConfigError(name, _first_line(e)) from None
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
            check_values(value, OmegaConf.get_type(value), name + ".")
        rules = field_rules(schema, f)
        if not rules:
            continue
        plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
        for rule in rules:
            if plain is None and not rule.check_none:
                continue
            try:
                why = rule.test(plain, node)
            except ConfigError:
                raise
            except Exception as e:  # a rule that cannot even read the value says so
                why = f"{plain!r}: {_first_line(e)}"
            if why:
                raise ConfigError(name, why)


def load_configured_potential(section) -> Any:
    """The potential a ``potential`` section names, built with its ``options``: a
    registered name (``jaxinv.potentials.registry``) or ``module:factory``; None for none."""
    import importlib

    name = str(section.name)
    if name == "none":
        return None
    options = section.options
    options = OmegaConf.to_container(options, resolve=True) if isinstance(options, DictConfig) else dict(options or {})
    if ":" in name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)(**options)
    from jaxinv.potentials import registry

    return registry.load_potential(name, **options)


def yaml_comments(path: Path, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the comment at the end of its line in a config YAML (the meaning of a
    field, as ``--help`` shows it). A ``# @package _global_`` file's keys are not prefixed."""
    import re

    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in Path(path).read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("# @package"):
            prefix = "" if "_global_" in stripped else prefix
            continue
        found = re.match(r"^(\s*)([A-Za-z_]\w*)\s*:(.*)$", line)
        if not found or stripped.startswith(("#", "-")):
            continue
        indent, key, rest = len(found.group(1)), found.group(2), found.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        comment = _trailing_comment(rest)
        if comment:
            out.setdefault(prefix + ".".join(k for _, k in stack), comment)
    return out


def _trailing_comment(text: str) -> str:
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[i + 1:].strip()
    return ""


@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment at the end of its declaration in a dataclass body (its
    bases' too): the meaning of a library field that no YAML restates."""
    import ast
    import inspect
    import textwrap

    out: dict[str, str] = {}
    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (defined in a REPL)
            continue
        lines = source.splitlines()
        for stmt in ast.parse(source).body[0].body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                comment = next(filter(None, map(_trailing_comment, lines[stmt.lineno - 1:stmt.end_lineno])), "")
                out.setdefault(stmt.target.id, comment)
    return out


def config_fields(name: str, schema: type, overrides: list[str] | None = None,
                  config_dir: str | Path | None = None) -> tuple[dict, list[tuple[str, str, str, str]]]:
    """(group choices, rows): every leaf field of experiment ``name`` as (dotted key,
    default after ``overrides``, meaning, accepted values). The meaning is the comment
    beside the key in the experiment's YAML (or one it includes) or in the chosen group
    option's YAML, else the comment beside the field in its dataclass (a library field
    the YAML leaves at its default); accepted values come from the field's rules."""
    import json

    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    cfg = compose(name, overrides, config_dir, hydra_config=True)
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items()
               if not k.startswith("hydra/") and v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
    meanings: dict[str, str] = {}
    for included in _included(config_dir, name):
        for key, text in yaml_comments(config_dir / f"{included}.yaml").items():
            meanings.setdefault(key, text)
    for spec, option in choices.items():
        group, _, package = spec.partition("@")
        path = config_dir / group / f"{option}.yaml"
        if path.is_file():
            for key, text in yaml_comments(path, f"{package or group}.").items():
                meanings.setdefault(key, text)
    base = _structured(schema)
    _clear_mappings(base, cfg)
    merged = OmegaConf.merge(base, cfg)

    def show(v):
        if isinstance(v, (DictConfig, ListConfig)):
            v = OmegaConf.to_container(v, resolve=False)
        return v if isinstance(v, str) else json.dumps(v)

    rows = []

    def walk(node, cls, prefix):
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            value = node._get_node(f.name)
            if isinstance(value, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(value)):
                walk(value, OmegaConf.get_type(value), key + ".")
                continue
            rules = "; ".join(r.describe() for r in field_rules(cls, f))
            shown = show(value if isinstance(value, (DictConfig, ListConfig)) else value._value())
            rows.append((key, shown, meanings.get(key) or field_comments(cls).get(f.name, ""), rules))

    walk(merged, schema, "")
    return choices, rows


def describe(name: str, schema: type, overrides: list[str] | None = None, config_dir: str | Path | None = None) -> str:
    """What ``jaxinv run NAME --help`` prints after the experiment's docstring: the config
    groups and every field with its default, meaning and accepted values (:func:`config_fields`)."""
    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    choices, fields = config_fields(name, schema, overrides, config_dir)
    rows = [(f"{key} = {default}", "  ".join(t for t in (meaning, rules and f"[{rules}]") if t))
            for key, default, meaning, rules in fields]
    lines = []
    if choices:
        lines.append("config groups (group=option):")
        for spec, option in choices.items():
            group, _, package = spec.partition("@")
            folder = config_dir / group
            known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
            lines.append(f"  {package or group}={option}" + (f"   ({' | '.join(known)})" if known else ""))
        lines.append("")
    lines.append("fields (key = default   meaning  [accepted values]):")
    width = min(44, max(len(left) for left, _ in rows) + 2)
    for left, right in rows:
        lines.append(f"  {left:<{width}}{right}" if len(left) < width else f"  {left}\n  {'':<{width}}{right}")
    return "\n".join(line.rstrip() for line in lines)


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
