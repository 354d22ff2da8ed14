"""The ``jaxinv`` command line: run experiments, inspect data, evaluate samples."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

__all__ = ["main", "load_experiment", "run_experiment"]


def list_experiments() -> list[str]:
    """The experiments: the modules of :mod:`jaxinv.experiments` (names starting with ``_`` excluded)."""
    import pkgutil

    import jaxinv.experiments

    return sorted(m.name for m in pkgutil.iter_modules(jaxinv.experiments.__path__) if not m.name.startswith("_"))


def load_experiment(name: str):
    """Import ``jaxinv.experiments.<name>`` (it needs ``Config`` and ``main(cfg, run)``)."""
    from jaxinv.config import ConfigError

    known = list_experiments()
    if name not in known:
        raise ConfigError("", f"unknown experiment '{name}'; known: {', '.join(known) or 'none'}")
    module = importlib.import_module(f"jaxinv.experiments.{name}")
    for attr in ("Config", "main"):
        if not hasattr(module, attr):
            raise ConfigError("", f"jaxinv/experiments/{name}.py defines no {attr}")
    return module


def run_experiment(name: str, overrides: list[str] | None = None, print_config: bool = False):
    """Compose, validate, create the run folder and call the experiment's ``main``."""
    from omegaconf import OmegaConf

    from jaxinv.config import compose, start_run, validate

    module = load_experiment(name)
    cfg = validate(compose(name, overrides), module.Config)
    if print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return None
    run = start_run(name, cfg)
    result = module.main(cfg, run)
    print(f"\nrun folder: {run.out_dir}")
    return result


def experiment_help(name: str, overrides: list[str] | None = None) -> str:
    """``jaxinv run NAME --help``: what the experiment does and every field of its config
    (default, meaning, accepted values); composes the config, loads nothing."""
    import inspect

    from jaxinv.config import describe

    module = load_experiment(name)
    doc = inspect.cleandoc(module.__doc__ or "")
    head = f"usage: jaxinv run {name} [key=value ...] [--cfg] [--help]"
    return "\n\n".join(part for part in (head, doc, describe(name, module.Config, overrides)) if part)


def _split_flags(overrides: list[str]) -> tuple[list[str], set[str]]:
    """Flags that argparse leaves among the overrides (they may follow the experiment name)."""
    flags = {"--cfg", "--help", "-h"}
    return [o for o in overrides if o not in flags], {o for o in overrides if o in flags}


def _data_info(name: str, as_json: bool) -> int:
    from jaxinv.data import load_dataset

    s = load_dataset(name).summary()
    if as_json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['name']}: {s['structures']} structures  (train {s['splits']['train']}, "
          f"valid {s['splits']['valid']}, test {s['splits']['test']})")
    print(f"  splits: {s['split_source']}")
    print(f"  skipped malformed rows: {s['skipped_rows']}")
    a = s["atoms_per_cell"]
    hist = ", ".join(f"{k}: {v}" for k, v in a["histogram"].items())
    print(f"  atoms per cell: min {a['min']}, max {a['max']}, mean {a['mean']:.2f}  ({hist})")
    els = sorted(s["elements"].items(), key=lambda kv: -kv[1])
    print(f"  elements ({len(els)}): " + " ".join(f"{e}:{n}" for e, n in els))
    print("  properties:")
    for k, p in s["properties"].items():
        print(f"    {k:<28s} min {p['min']:10.4f}  max {p['max']:10.4f}  mean {p['mean']:10.4f}  "
              f"std {p['std']:8.4f}  {p['unit']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from jaxinv.config import ConfigError

    parser = argparse.ArgumentParser(
        prog="jaxinv",
        description="jaxinv: inverse design of inorganic crystals in JAX (screening, global optimization, "
                    "generative models).",
        epilog="Examples:\n  jaxinv run quickstart\n  jaxinv run explore data=carbon_24 cutoff=6\n"
               "  jaxinv data info perov_5\n  jaxinv run --list",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_run = sub.add_parser("run", help="run an experiment: jaxinv run NAME [key=value ...]",
                           epilog="jaxinv run NAME --help lists the experiment's fields, defaults and meanings.")
    p_run.add_argument("experiment", nargs="?", help="experiment name (see --list)")
    p_run.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides, e.g. data=carbon_24 seed=1")
    p_run.add_argument("--list", action="store_true", help="list the experiments")
    p_run.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    p_data = sub.add_parser("data", help="inspect datasets: jaxinv data info NAME")
    data_sub = p_data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    p_info = data_sub.add_parser("info", help="counts, elements, atoms per cell and property ranges")
    p_info.add_argument("name", help="perov_5, carbon_24, mp_20, or a CSV path")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    p_eval = sub.add_parser("evaluate", help="score generated structures (same as: jaxinv run evaluate ...)")
    p_eval.add_argument("overrides", nargs=argparse.REMAINDER, help="e.g. samples=out/ reference=perov_5:test")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" chatter
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax bookkeeping at INFO
    # each command is a new process: `import jaxinv` has turned the persistent compile cache on
    # (jaxinv.xla_cache), so it reuses what earlier runs compiled (JAXINV_XLA_CACHE=off: it doesn't)
    try:
        if args.command == "run":
            if args.list or not args.experiment:
                print("experiments:\n  " + "\n  ".join(list_experiments()))
                return 0
            # flags may also follow the experiment name, where REMAINDER collects them
            overrides, flags = _split_flags(args.overrides)
            if flags & {"--help", "-h"}:
                print(experiment_help(args.experiment, overrides))
                return 0
            run_experiment(args.experiment, overrides, print_config=args.cfg or "--cfg" in flags)
            return 0
        if args.command == "evaluate":
            overrides, flags = _split_flags(args.overrides)
            if flags & {"--help", "-h"}:
                print(experiment_help("evaluate", overrides))
                return 0
            run_experiment("evaluate", overrides, print_config="--cfg" in flags)
            return 0
        if args.command == "data":
            if args.data_command != "info":
                p_data.print_help()
                return 2
            return _data_info(args.name, args.json)
        parser.print_help()
        return 0
    except ConfigError as e:
        print(f"jaxinv: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"jaxinv: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
