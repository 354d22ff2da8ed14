"""Inverse design by latent-space optimization of a trained VAE.

    jaxinv run optimize_latent model=outputs/train_generative/<coord_vae run>
    jaxinv run optimize_latent model=<run> n=1024 steps=500 prior_weight=0.05 start=data
    jaxinv run optimize_latent model=<run> oracle=outputs/train_property/<run>/model
    jaxinv run optimize_latent model=<carbon run> 'objectives={energy_per_atom: min}' potential=tersoff_c

Default target (perov_5, the screening target of issue 8): ``heat_ref <= 1.0``
eV per 5-atom cell (Castelli's 0.2 eV/atom stability criterion) and
``1.5 <= dir_gap <= 3`` eV. ``n`` starting codes (prior draws, or encoded
training crystals with ``start=data``) take ``steps`` Adam steps on
``objectives + prior_weight |z|^2 / 2`` through the property head; the decoded
candidates are checked for validity, for self-consistency (re-encoded, the head
still meets the target), against an optional independent property model
(``oracle``, a ``train_property`` model folder), against DFT labels where a
candidate is a known dataset crystal, and optionally relaxed with a jaxinv
potential (``potential=sevennet0``). The unoptimized starts are scored the
same way as a baseline. Writes ``results.json``, ``candidates/`` (CIF of valid
candidates meeting the target, extxyz of all).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
from omegaconf import MISSING

from jaxinv.config import (OptionalPotentialConfig, Rule, RunConfig, at_least, checked, existing_path,
                           load_configured_potential, non_negative, one_of, positive)


def _objectives_problem(spec, cfg):
    from jaxinv.generative.latent import parse_objectives

    if not spec:
        return "give at least one objective, e.g. 'objectives={heat_ref: {max: 1.0}}'"
    try:
        parse_objectives(spec)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/optimize_latent.yaml (``jaxinv run optimize_latent --help``)."""

    model: str = checked(MISSING, existing_path("dir"))
    objectives: Dict[str, Any] = checked({"heat_ref": {"max": 1.0}, "dir_gap": [1.5, 3.0]},
                                         Rule(_objectives_problem, "property -> min | max | [low, high] | {...}"))
    n: int = checked(512, at_least(1))
    start: str = checked("prior", one_of("prior", "data"))
    steps: int = checked(300, non_negative)
    learning_rate: float = checked(0.05, positive)
    prior_weight: float = checked(0.1, non_negative)
    oracle: Optional[str] = checked(None, existing_path("dir"))
    potential: OptionalPotentialConfig = field(default_factory=OptionalPotentialConfig)
    relax_steps: int = checked(300, at_least(1))


def main(cfg, run):
    from omegaconf import OmegaConf

    from jaxinv.data import load_dataset
    from jaxinv.generative.design import design
    from jaxinv.generative.latent import parse_objectives
    from jaxinv.generative.model import load_model
    from jaxinv.io import write_cifs, write_extxyz

    model, params = load_model(cfg.model)
    objectives = parse_objectives(OmegaConf.to_container(cfg.objectives, resolve=True)
                                  if not isinstance(cfg.objectives, dict) else cfg.objectives)
    print(f"{model.config.kind} on {model.dataset}; objectives: " + "; ".join(o.describe() for o in objectives))
    oracle = None
    if cfg.oracle:
        from jaxinv.screening.train import PropertyModel

        oracle = PropertyModel.load(cfg.oracle)
    potential = load_configured_potential(cfg.potential)  # None: no relaxation
    dataset = load_dataset(model.dataset)
    out = design(model, params, objectives, cfg.n, cfg.start, cfg.steps, cfg.learning_rate, cfg.prior_weight,
                 dataset=dataset, oracle=oracle, seed=cfg.seed, potential=potential, relax_steps=cfg.relax_steps)
    s, b = out["summary"], out["baseline"]
    rows = [("head meets target", "head_hit"), ("valid", "valid"), ("valid + head", "valid_and_head_hit"),
            ("valid + re-encoded head", "valid_and_reencoded_hit"), ("valid + oracle", "valid_and_oracle_hit"),
            ("known crystal", "known"), ("known crystal, DFT meets target", "known_dft_hit")]
    print(f"\n{'':34s} {'optimized':>10s} {'start':>10s}")
    for label, key in rows:
        if key in s:
            print(f"{label:34s} {100 * s[key]:9.1f}% {100 * b[key]:9.1f}%")
    print(f"distinct formulas among valid re-encoded hits: {s['distinct_formulas_valid_reencoded_hit']} "
          f"(new: {s.get('distinct_new_formulas_valid_reencoded_hit', 'n/a')})")
    per, cands = out["per_candidate"], out["candidates"]
    hits = np.flatnonzero(per["valid"] & per["reencoded"])
    write_extxyz(cands, run.path("candidates", "candidates.extxyz"),
                 extra_info={f"pred_{p}": out["result"].predictions[:, k].tolist()
                             for k, p in enumerate(model.properties)})
    if len(hits):
        write_cifs(cands[hits], run.out_dir / "candidates" / "cif_hits")
    results = {"summary": s, "baseline": b,
               "per_candidate": {k: np.asarray(v).tolist() for k, v in per.items() if k != "relaxed"}}
    run.save_json(results)
    return results
