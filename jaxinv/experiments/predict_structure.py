"""Crystal structure prediction from a composition with a trained CSP diffusion model.

    jaxinv run predict_structure model=outputs/train_generative/<diffcsp run> composition=SrTiO3
    jaxinv run predict_structure model=<run> 'composition=[SrTiO3, BaZrO3]' k=50
    jaxinv run predict_structure model=<run> composition=SrTiO3 potential=none   # rank nothing, as sampled

``model`` is a ``train_generative model=diffcsp`` run in CSP mode (the default). For
each composition the model draws ``k`` candidates; they are relaxed with
``potential`` (SevenNet-0 by default; cell included, at ``pressure_gpa``), grouped
into distinct structures with StructureMatcher (the metrics' settings: stol 0.5,
angle_tol 10, ltol 0.3), and the groups are ranked by the lowest energy per atom in
each. A candidate whose relaxation failed (a collapse into the potential's
short-range hole, NaN, a runaway cell) is listed with its status and never ranked.

Writes ``candidates.csv`` (one row per candidate: formula, rank of its group,
energy per atom, meV/atom above the best of its composition, space group found by
spglib at symprec 0.1 Å, volume per atom, relaxation status, group size),
``predicted/<formula>_rank<r>.cif`` (the best member of each of the first
``n_cif`` groups) and ``samples.extxyz`` (every candidate, relaxed). With
``potential=none`` the candidates are not relaxed, grouped by StructureMatcher
only, and ranked by group size (how often the model proposed the structure).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from jaxinv.config import (ConfigError, OptionalPotentialConfig, Rule, RunConfig, at_least, checked, existing_path,
                           formula, load_configured_potential)


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/predict_structure.yaml."""

    model: str = checked(MISSING, existing_path("dir"))
    composition: Any = checked(MISSING, Rule(lambda v, c: _formulas_problem(v), "a formula or a list of formulas"))
    k: int = checked(20, at_least(1))
    batch_size: int = checked(256, at_least(1))
    potential: OptionalPotentialConfig = field(default_factory=lambda: OptionalPotentialConfig(name="sevennet0"))
    pressure_gpa: float = 0.0
    max_steps: int = checked(300, at_least(1))
    n_cif: int = checked(5, at_least(0))


def _formulas(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _formulas_problem(value) -> str | None:
    formulas = _formulas(value)
    if not formulas:
        return "give at least one formula"
    return next((f"{f!r}: {formula.test(f, None)}" for f in formulas if formula.test(f, None)), None)


def main(cfg, run):
    import csv
    from pathlib import Path

    import jax
    import numpy as np

    from jaxinv.generative.diffusion import CrystalDiffusion
    from jaxinv.io import write_cifs, write_extxyz

    checkpoint = Path(cfg.model) / "checkpoint"
    if not (checkpoint / "diffusion.json").exists():
        raise ValueError(f"model: {cfg.model} is not a train_generative model=diffcsp run (no checkpoint/diffusion.json)")
    model, params = CrystalDiffusion.load(checkpoint)
    if model.config.mode != "csp":
        raise ValueError(f"model: {cfg.model} is a {model.config.mode} model; structure prediction needs a CSP one")
    formulas = [str(f) for f in _formulas(cfg.composition)]
    for f in formulas:  # fail before sampling, naming the field and formula (unknown element, too many atoms)
        try:
            model.csp_inputs([f])
        except (ValueError, KeyError) as err:
            raise ConfigError("composition", f"{f}: {err}") from None
    given = [f for f in formulas for _ in range(cfg.k)]
    print(f"{cfg.k} candidates for each of {', '.join(formulas)} from the CSP model trained on {model.dataset}")
    samples = model.sample(params, jax.random.PRNGKey(cfg.seed), compositions=given, seed=cfg.seed,
                           batch_size=min(cfg.batch_size, len(given)))
    potential = load_configured_potential(cfg.potential)
    energy = np.full(len(given), np.nan)
    status = ["sampled"] * len(given)
    if potential is not None:
        from jaxinv.relax import energy_per_atom, failed, relax, status_names

        relaxed = relax(samples, potential, pressure_gpa=cfg.pressure_gpa, max_steps=cfg.max_steps,
                        progress=cfg.progress)
        status = status_names(relaxed)
        ok = ~failed(relaxed)
        energy = np.where(ok, energy_per_atom(relaxed), np.nan)
        samples = relaxed
    structures = samples.to_structures()
    rows = []
    for f in formulas:
        rows += _rank(f, [i for i, g in enumerate(given) if g == f], structures, energy, status, potential is not None)
    rows.sort(key=lambda r: (formulas.index(r["given"]), r["rank"] or 10 ** 9, r["energy_per_atom"]))
    fields = ["given", "formula", "candidate", "rank", "energy_per_atom", "above_best_mev", "spacegroup",
              "volume_per_atom", "status", "group_size"]
    with open(run.path("candidates.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    best = [r for r in rows if r["rank"] and r["rank"] <= cfg.n_cif and r["best_of_group"]]
    write_cifs([structures[r["candidate"]] for r in best], run.out_dir / "predicted",
               names=[f"{r['given']}_rank{r['rank']}" for r in best])
    write_extxyz(samples, run.path("samples.extxyz"))
    summary = {}
    for f in formulas:
        top = next((r for r in rows if r["given"] == f and r["rank"] == 1), None)
        n_groups = max((r["rank"] or 0 for r in rows if r["given"] == f), default=0)
        summary[f] = {"best_spacegroup": top and top["spacegroup"], "best_energy_per_atom": top and top["energy_per_atom"],
                      "distinct": n_groups, "failed": sum(r["given"] == f and not r["rank"] for r in rows)}
        print(f"{f}: {n_groups} distinct structure{'s' if n_groups != 1 else ''} among {cfg.k} candidates"
              + (f"; best: space group {top['spacegroup']}" if top else "")
              + (f", {top['energy_per_atom']:.4f} eV/atom ({potential.name})" if top and potential else "")
              + (f"; {summary[f]['failed']} failed relaxations" if summary[f]["failed"] else ""))
    results = {"model": str(cfg.model), "k": cfg.k, "potential": potential.name if potential else None,
               "compositions": summary}
    run.save_json(results)
    return results


def _rank(given: str, idx: list, structures: list, energy, status: list, by_energy: bool) -> list[dict]:
    """Rows for the candidates ``idx`` of one composition: grouped by StructureMatcher,
    groups ranked by their lowest energy (or, unrelaxed, by size)."""
    import numpy as np

    from jaxinv.metrics.matching import make_matcher, matchable, structures_match

    matcher = make_matcher()
    usable = [i for i in idx if matchable(structures[i]) and (not by_energy or np.isfinite(energy[i]))]
    usable.sort(key=lambda i: energy[i] if by_energy else 0.0)
    groups: list[list[int]] = []
    for i in usable:  # greedy: each candidate joins the first group whose representative matches it
        for g in groups:
            if structures_match(structures[g[0]], structures[i], matcher):
                g.append(i)
                break
        else:
            groups.append([i])
    if not by_energy:
        groups.sort(key=len, reverse=True)
    best = min((energy[g[0]] for g in groups), default=np.nan) if by_energy else np.nan
    rows = []
    for rank, g in enumerate(groups, 1):
        for i in g:
            rows.append(_row(given, i, structures[i], energy[i], status[i], rank, len(g), i == g[0], best))
    for i in sorted(set(idx) - set(usable)):
        rows.append(_row(given, i, structures[i], energy[i], status[i], None, None, False, best))
    return rows


def _row(given, i, s, e, status, rank, size, best_of_group, best) -> dict:
    import numpy as np

    return {"given": given, "formula": s.composition.reduced_formula, "candidate": i, "rank": rank,
            "energy_per_atom": float(e), "above_best_mev": float(1000 * (e - best)) if np.isfinite(e) else float("nan"),
            "spacegroup": _spacegroup(s), "volume_per_atom": float(s.volume / len(s)), "status": status,
            "group_size": size, "best_of_group": best_of_group}


def _spacegroup(s, symprec: float = 0.1) -> int | None:
    from jaxinv.metrics.structure import space_group_number

    return space_group_number(s, symprec)
