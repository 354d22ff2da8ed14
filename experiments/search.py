"""Global structure search: crystal structure prediction or property-targeted search.

    jaxinv run search composition=Si8 potential=sw_si algorithm=ea max_relaxations=400
    jaxinv run search composition=Si,O min_atoms=3 max_atoms=9 potential=bks_sio2     # composition range
    jaxinv run search composition=Si16 algorithm=pso objective=-volume_per_atom       # two objectives
    jaxinv run search composition=Ar13 cluster=true box=12 potential=lj potential.options.cutoff=11 \\
        potential.options.truncation=none bond_length=1.12 potential.options.species=[Ar]

Writes ``history.db`` (ASE database of every relaxed structure: energy, fitness,
operator, parents), ``convergence.png``, ``best.cif``, ``summary.json``, and
``front.csv`` (Pareto front, two objectives) or ``hull.csv`` (composition
range). Rerunning with ``out_dir=<the same folder>`` resumes the search.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from jaxinv.config import PotentialConfig, RunConfig
from jaxinv.potentials.registry import load_potential
from jaxinv.relax import GPA, FireConfig
from jaxinv.search import FingerprintConfig, Problem, SearchSpace, make_search, run_search
from jaxinv.search.pareto import pareto_ranks

log = logging.getLogger("jaxinv.search")


@dataclass
class AlgorithmConfig:
    name: str = "ea"
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class FingerprintOptions:
    r_max: float = 0.0
    n_bins: int = 128
    sigma: float = 0.01
    threshold: float = 0.002
    energy_tol: float = 0.002


@dataclass
class Config(RunConfig):
    potential: PotentialConfig = field(default_factory=PotentialConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    composition: str = "???"  # Si8 (counts per cell) or A,B for a binary range with min/max_atoms
    min_atoms: int = 0
    max_atoms: int = 0
    cluster: bool = False
    box: float = 0.0  # vacuum box edge of a cluster search (Å)
    bond_length: float = 0.0  # 0: from covalent radii
    min_distance: float = 0.0  # 0: 0.7 bond_length
    volume_per_atom: float = 0.0  # 0: pyxtal's estimate
    seeds: Optional[str] = None  # CIF folder / extxyz / JSON, or dataset:NAME[:SPLIT]
    batch: int = 16
    max_relaxations: int = 400
    max_generations: int = 1000
    target: Optional[float] = None  # stop when the best fitness reaches it
    fmax: float = 0.05
    stress_tol: float = 0.005
    max_steps: int = 500
    pressure_gpa: float = 0.0
    fingerprint: FingerprintOptions = field(default_factory=FingerprintOptions)
    objective: Optional[str] = None  # volume_per_atom, -volume_per_atom, or module:function (minimised)
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
    potential = load_potential(cfg.potential.name, **cfg.potential.options)
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
    relax = FireConfig(fmax=cfg.fmax, stress_tol=cfg.stress_tol, max_steps=cfg.max_steps,
                       pressure=cfg.pressure_gpa * GPA, cell="fixed" if cfg.cluster else "frechet")
    fp = FingerprintConfig(**{f.name: getattr(cfg.fingerprint, f.name) for f in dataclasses.fields(FingerprintConfig)})
    return Problem(space, potential, relax, batch=cfg.batch, fingerprint=fp,
                   objective=resolve_objective(cfg.objective), seeds=seeds)


def main(cfg, run):
    unread = []
    problem = build_problem(cfg, unread)
    if cfg.seeds and not cfg.seeds.startswith("dataset:"):
        from jaxinv.io import write_skipped

        write_skipped(run.path("skipped.csv"), unread)
    options = dict(cfg.algorithm.options)
    search = make_search(cfg.algorithm.name, problem, **options)
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
    best.to_structures()[0].to(filename=str(run.path("best.cif")))
    summary = {"algorithm": search.name, "composition": cfg.composition, "potential": problem.potential.name,
               "generations": int(state.generation), "relaxations": int(state.relaxations),
               "best_fitness": float(state.best.fitness[0]), "best_enthalpy_per_atom": float(state.best.enthalpy[0]),
               "best_formula": best.formulas()[0], "history": "history.db", "plot": "convergence.png"}
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
        from ase.db import connect

        best_by = {}
        db = connect(str(run.out_dir / "history.db"))
        for row in db.select():
            f = row.formula
            if f not in best_by or row.enthalpy < best_by[f][0]:
                best_by[f] = (row.enthalpy, row.fitness, row.key_value_pairs["ident"])
        with open(run.path("hull.csv"), "w") as fh:
            fh.write("formula,enthalpy_per_atom,e_above_hull_at_evaluation,ident\n")
            for f, (h, fit, i) in sorted(best_by.items(), key=lambda kv: kv[1][1]):
                fh.write(f"{f},{h:.6f},{fit:.6f},{i}\n")
    print(f"best: {summary['best_formula']} fitness {summary['best_fitness']:.5f} after "
          f"{summary['relaxations']} relaxations")
    run.save_json(summary, "summary.json")
    return summary
