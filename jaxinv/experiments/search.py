"""Global structure search: crystal structure prediction or property-targeted search.

    jaxinv run search composition=Si8 potential=sw_si algorithm=ea max_relaxations=400
    jaxinv run search composition=Si,O min_atoms=3 max_atoms=9 potential=bks_sio2     # composition range
    jaxinv run search composition=Si16 algorithm=pso objective=-volume_per_atom       # two objectives
    jaxinv run search composition=Ar13 cluster=true box=12 potential=lj potential.options.cutoff=11 \\
        potential.options.truncation=none bond_length=1.12 potential.options.species=[Ar]

Writes ``history.db`` (ASE database of every relaxed structure: energy, fitness,
operator, parents), ``convergence.png``, ``best.cif``, ``summary.json``, and
``front.csv`` (Pareto front, two objectives) or, for a composition range,
``hull.csv`` (the best structure of each reduced composition: enthalpy, formation
enthalpy, distance above the final hull, space group), ``hull.png`` and ``hull/``
(a CIF of each phase on the hull); there ``best.cif`` is the hull's most stable
compound. Rerunning with ``out_dir=<the same folder>`` resumes the search.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from jaxinv.config import (PotentialConfig, Rule, RunConfig, at_least, checked, constrain, dataset_spec, existing_path,
                           formula, load_configured_potential, module_function, non_negative, one_of, positive)
from jaxinv.experiments.relax import RelaxSettings, fire_config
from jaxinv.search import FingerprintConfig, Problem, SearchSpace, make_search, run_search
from jaxinv.search.pareto import pareto_ranks

log = logging.getLogger("jaxinv.search")


def _algorithm_options(name: str) -> list[str]:
    import inspect

    from jaxinv.search import ALGORITHMS

    factory, config = ALGORITHMS[name]
    if config is None:  # random search: the keyword arguments of random_search
        return [p for p in inspect.signature(factory).parameters if p not in ("problem", "name")]
    return [f.name for f in dataclasses.fields(config)]


def algorithm_options(name: str, options) -> dict:
    """The keyword options of ``make_search(name, ...)``: ``options`` merged onto the
    algorithm's library config, which is their schema (names and types are checked, and a
    mapping such as ``rates`` is updated key by key, as a YAML mapping is by an override)."""
    from omegaconf import DictConfig, OmegaConf

    from jaxinv.search import ALGORITHMS

    options = OmegaConf.to_container(options, resolve=True) if isinstance(options, DictConfig) else dict(options)
    config = ALGORITHMS[name][1]
    if config is None:  # random search: random_search's keywords
        return options
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(config), options))


def _options_problem(options, node):
    from omegaconf.errors import OmegaConfBaseException

    from jaxinv.search import ALGORITHMS

    if node.name not in ALGORITHMS:
        return None
    allowed = _algorithm_options(node.name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        return f"{node.name} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(allowed)}"
    try:
        values = algorithm_options(node.name, options)
        schema = ALGORITHMS[node.name][1]
        if schema is not None:
            type(schema)(**values)  # the library config's own checks (e.g. EAConfig.soft_model)
    except (OmegaConfBaseException, ValueError) as e:
        return str(e).strip().splitlines()[0]
    return None


def _composition_problem(spec: str, cfg):
    """Counts per cell (Si8) of real elements, or A,B with 0 < min_atoms <= max_atoms."""
    from jaxinv.search.composition import parse_formula

    if "," in spec:
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) != 2 or not all(parts):
            return f"{spec!r}: a composition range is two elements, A,B"
        for p in parts:
            why = formula.test(p, cfg)
            if why:
                return why
        if len(set(parts)) == 1:
            return f"{spec!r}: a binary search needs two different elements"
        if not 0 < cfg.min_atoms <= cfg.max_atoms:
            return f"a composition range needs 0 < min_atoms <= max_atoms (they are {cfg.min_atoms}, {cfg.max_atoms})"
        return None
    why = formula.test(spec, cfg)
    if why:
        return why
    try:
        parse_formula(spec)
    except ValueError as e:
        return str(e)
    return None


def _seeds_problem(spec: str, cfg):
    if spec.startswith("dataset:"):
        return dataset_spec.test(spec[len("dataset:"):], cfg)
    return existing_path().test(spec, cfg)


def _objective_problem(spec: str, cfg):
    return None if spec.lstrip("-") == "volume_per_atom" else module_function.test(spec.lstrip("-"), cfg)


@dataclass
class AlgorithmConfig:
    name: str = checked("ea", one_of(lambda: __import__("jaxinv.search").search.ALGORITHMS))
    options: Dict[str, Any] = checked({}, Rule(_options_problem, "the algorithm's config fields"))


# the fingerprint section is the library's FingerprintConfig; its rules are declared here
constrain(FingerprintConfig, r_max=non_negative, n_bins=at_least(1), sigma=positive, threshold=non_negative,
          energy_tol=non_negative)


@dataclass
class Config(RunConfig, RelaxSettings):
    """Fields and their meanings: jaxinv/configs/search.yaml, the comments here and in the
    library's config classes (``jaxinv run search --help``)."""

    potential: PotentialConfig = field(default_factory=PotentialConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    composition: str = checked("???", Rule(_composition_problem, "counts per cell (Si8) or A,B"))
    min_atoms: int = checked(0, non_negative)
    max_atoms: int = checked(0, non_negative)
    cluster: bool = False
    box: float = checked(0.0, non_negative, Rule(lambda v, c: "a cluster search needs box > 0 (Å)"
                                                 if c.cluster and v <= 0 else None, "> 0 with cluster=true"))
    bond_length: float = checked(0.0, non_negative)
    min_distance: float = checked(0.0, non_negative)
    volume_per_atom: float = checked(0.0, non_negative)
    seeds: Optional[str] = checked(None, Rule(_seeds_problem, "an existing path or dataset:NAME[:SPLIT]"))
    batch: int = checked(16, at_least(1))
    slots: Optional[int] = checked(None, at_least(1))
    max_relaxations: int = checked(400, at_least(1))
    max_generations: int = checked(1000, at_least(1))
    target: Optional[float] = None
    fingerprint: FingerprintConfig = field(default_factory=FingerprintConfig)
    objective: Optional[str] = checked(None, Rule(_objective_problem, "volume_per_atom, -volume_per_atom or "
                                                                      "module:function"))
    checkpoint: bool = True


def _volume_per_atom(crystal):
    c = crystal.to_host()
    return c.volume / np.maximum(c.n_atoms, 1)


def resolve_objective(spec: str | None):
    """A second objective to minimise: a built-in name (optionally negated with '-') or
    ``package.module:function`` taking a Crystal batch and returning (B,) values."""
    if not spec:
        return None
    sign = -1.0 if spec.startswith("-") else 1.0
    name = spec.lstrip("-")
    builtins = {"volume_per_atom": _volume_per_atom}
    if name in builtins:
        fn = builtins[name]
    elif ":" in name:
        module, attr = name.split(":", 1)
        fn = getattr(importlib.import_module(module), attr)
    else:
        raise ValueError(f"objective {spec!r}: use one of {sorted(builtins)} or module:function")
    return lambda crystal: sign * np.asarray(fn(crystal), np.float64)


def build_problem(cfg, skipped: list | None = None) -> Problem:
    """The search problem of a config; seed files that cannot be read are skipped
    (logged) and appended to ``skipped`` (:class:`jaxinv.io.Skipped` records)."""
    common = dict(cluster=cfg.cluster, box=cfg.box, bond_length=cfg.bond_length or None,
                  min_distance=cfg.min_distance or None, volume_per_atom=cfg.volume_per_atom)
    if "," in cfg.composition:
        a, b = (e.strip() for e in cfg.composition.split(","))
        if not (0 < cfg.min_atoms <= cfg.max_atoms):
            raise ValueError("a composition range needs 0 < min_atoms <= max_atoms")
        space = SearchSpace.binary(a, b, cfg.min_atoms, cfg.max_atoms, **common)
    else:
        space = SearchSpace.fixed(cfg.composition, **common)
    potential = load_configured_potential(cfg.potential)
    seeds = None
    if cfg.seeds:
        from jaxinv.search.seeds import from_structures

        if cfg.seeds.startswith("dataset:"):  # dataset:perov_5[:split]; structures of other compositions are skipped
            from jaxinv.data import load_dataset

            name, _, split = cfg.seeds[len("dataset:"):].partition(":")
            ds = load_dataset(name, split=split or None)
            structures, names = ds.structures(), [str(i) for i in ds.ids]
        else:
            from jaxinv.io import read_structures_named

            structures, names, unread = read_structures_named(cfg.seeds)
            if skipped is not None:
                skipped.extend(unread)
        seeds, _ = from_structures(space, structures, names=names)
    relax = fire_config(cfg, cell="fixed" if cfg.cluster else "frechet")
    fp = FingerprintConfig(**{f.name: getattr(cfg.fingerprint, f.name) for f in dataclasses.fields(FingerprintConfig)})
    return Problem(space, potential, relax, batch=cfg.batch, slots=cfg.slots, fingerprint=fp,
                   objective=resolve_objective(cfg.objective), seeds=seeds)


def main(cfg, run):
    unread = []
    problem = build_problem(cfg, unread)
    if cfg.seeds and not cfg.seeds.startswith("dataset:"):
        from jaxinv.io import write_skipped

        write_skipped(run.path("skipped.csv"), unread)
    search = make_search(cfg.algorithm.name, problem, **algorithm_options(cfg.algorithm.name, cfg.algorithm.options))
    print(f"{search.name} search for {cfg.composition} with {problem.potential.name}: "
          f"{len(problem.space.compositions)} composition(s), up to {problem.space.n_max} atoms, "
          f"{cfg.max_relaxations} relaxations")
    fingerprint = json.dumps({k: v for k, v in dict(cfg).items() if k not in ("out_dir", "progress",
                                                                             "max_relaxations", "max_generations")},
                             default=str, sort_keys=True)
    state = run_search(search, seed=cfg.seed, max_relaxations=cfg.max_relaxations,
                       max_generations=cfg.max_generations, target=cfg.target, out_dir=run.out_dir,
                       checkpoint=cfg.checkpoint, progress=cfg.progress, fingerprint=fingerprint)
    best = state.best.crystal.to_host()
    summary = {"algorithm": search.name, "composition": cfg.composition, "potential": problem.potential.name,
               "generations": int(state.generation), "relaxations": int(state.relaxations),
               "best_fitness": float(state.best.fitness[0]), "best_enthalpy_per_atom": float(state.best.enthalpy[0]),
               "best_formula": best.formulas()[0], "history": "history.db", "plot": "convergence.png"}
    if getattr(state.algorithm, "restarts", None) is not None:  # EAConfig.restart_after
        summary["restarts"] = int(state.algorithm.restarts)
    from jaxinv.search.history import History

    rows = History(run.out_dir / "history.db").rows()
    if problem.objective is not None:
        f = np.array([[r["fitness"], r.get("objective1", np.inf)] for r in rows])
        rank = np.asarray(pareto_ranks(f))
        front = [rows[i] for i in np.flatnonzero(rank == 0)]
        with open(run.path("front.csv"), "w") as fh:
            fh.write("ident,fitness,objective1,enthalpy\n")
            for r in sorted(front, key=lambda r: r["fitness"]):
                fh.write(f"{r['ident']},{r['fitness']:.6f},{r['objective1']:.6f},{r['enthalpy']:.6f}\n")
        summary["pareto_front"] = len(front)
    if problem.space.variable:
        from jaxinv.search.history import hull_table, most_stable, plot_hull

        try:
            table = hull_table(run.out_dir / "history.db")
        except ValueError as e:  # an element never relaxed successfully
            log.warning("no convex hull: %s", e)
            table = []
        fields = ["formula", "enthalpy_per_atom", "formation_per_atom", "e_above_hull", "on_hull", "space_group",
                  "structures", "ident"]
        with open(run.path("hull.csv"), "w") as fh:
            fh.write(",".join(fields) + "\n")
            for r in sorted(table, key=lambda r: (not r["on_hull"], r["e_above_hull"])):
                fh.write(",".join(f"{r[k]:.6f}" if isinstance(r[k], float) else str(r[k]) for k in fields) + "\n")
        if table:
            plot_hull(table, run.path("hull.png"), f"{search.name}, {problem.potential.name}: "
                                                    f"{int(state.relaxations)} relaxations")
            on_hull = [r for r in table if r["on_hull"]]
            summary["hull"] = [f"{r['formula']} ({r['space_group']})" for r in on_hull]
            print("on the hull: " + ", ".join(summary["hull"]) + f" (structures in {run.path('hull')})")
            # the result of a hull search is the final hull, not the history's best fitness (a
            # distance to the hull known when that structure was relaxed): best.cif is its most
            # stable compound, hull/ holds every phase on it
            best_row = most_stable(table)
            run.path("hull").mkdir(exist_ok=True)
            for r in on_hull:
                r["structure"].to(filename=str(run.path("hull") / f"{r['formula']}.cif"))
            best_row["structure"].to(filename=str(run.path("best.cif")))
            summary.update(best_formula=best_row["formula"], best_fitness=best_row["e_above_hull"],
                           best_enthalpy_per_atom=best_row["enthalpy_per_atom"],
                           best_formation_per_atom=best_row["formation_per_atom"],
                           best_space_group=best_row["space_group"])
            print(f"best: {best_row['formula']} (space group {best_row['space_group']}), formation enthalpy "
                  f"{best_row['formation_per_atom']:.5f} eV/atom, {best_row['e_above_hull']:.5f} above the hull; "
                  f"{summary['relaxations']} relaxations")
    if not (problem.space.variable and table):
        best.to_structures()[0].to(filename=str(run.path("best.cif")))
        print(f"best: {summary['best_formula']} fitness {summary['best_fitness']:.5f} after "
              f"{summary['relaxations']} relaxations")
    run.save_json(summary, "summary.json")
    return summary
