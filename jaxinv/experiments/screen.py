"""The screening funnel: substitution candidates -> stages from the config -> ranked outputs.

    jaxinv run screen                                   # perov_5 prototypes, default stages
    jaxinv run screen out_dir=runs/s1                   # kill it, run the same line again: it resumes
    jaxinv run screen model=outputs/train_property/<run>/model candidates.threshold=1e-4
    jaxinv run screen candidates.prototypes=my_cifs/ potential=sevennet0 \\
        'stages=[{type: composition}, {type: relax}, {type: rank, by: energy_per_atom, ascending: true}]'

Candidates: elemental substitutions of the prototypes (a dataset name or a folder
of CIFs) above ``candidates.threshold``, charge-neutral, deduplicated and
volume-scaled (see :mod:`jaxinv.screening.substitution`). Stages: the list
``stages`` (types composition, property, relax, stability, rank; see
:func:`jaxinv.screening.stages.build_stage`). The property stage uses ``model``
(a saved PropertyModel) or, when null, trains a quick composition ensemble on
the prototypes' dataset first. Relax needs ``potential`` (a registry name or 'module:factory');
stability also needs ``reference`` (a folder of CIFs of competing phases,
relaxed and evaluated with the same potential).

Everything lands in the run folder: ``funnel/`` (manifest and per-stage chunks,
what makes it resumable), ``ranked.csv``, ``cif/``, ``report.md``, PNGs.
"""
from __future__ import annotations

import json

import logging
import time
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from jaxinv.experiments.train_property import feature_kinds
from jaxinv.config import (OptionalPotentialConfig, Rule, RunConfig, at_least, checked, dataset_spec, existing_path,
                           fraction, load_configured_potential, non_negative, one_of)

log = logging.getLogger("jaxinv.screening")


STAGE_TYPES = ("composition", "property", "relax", "stability", "rank")
_FROM_CONTEXT = {"property": "model", "relax": "potential", "stability": "reference"}  # may come from the run


def _stages_problem(stages, cfg):
    """Each stage a known type whose other keys are arguments of its stage function."""
    import inspect

    from jaxinv.screening import stages as lib

    functions = {"composition": lib.composition_filter, "property": lib.property_filter, "relax": lib.relax_stage,
                 "stability": lib.stability_stage, "rank": lib.rank_stage}
    for k, spec in enumerate(stages):
        if not isinstance(spec, dict) or spec.get("type") not in STAGE_TYPES:
            got = spec.get("type") if isinstance(spec, dict) else spec
            return f"stage {k}: type {got!r} is not one of {' | '.join(STAGE_TYPES)}"
        params = inspect.signature(functions[spec["type"]]).parameters
        args = set(spec) - {"type"}
        unknown = sorted(args - set(params) - ({"reference"} if spec["type"] == "stability" else set()))
        if unknown:
            return (f"stage {k} ({spec['type']}): no argument {', '.join(map(repr, unknown))}; "
                    f"its arguments: {', '.join(params)}")
        need = [p for p, v in params.items() if v.default is v.empty and p != _FROM_CONTEXT.get(spec["type"])]
        if set(need) - args:
            return f"stage {k} ({spec['type']}) needs {', '.join(sorted(set(need) - args))}"
    return None


def _needs_potential(potential, cfg):
    stages = [s for s in cfg.stages if isinstance(s, Mapping)]
    kinds = [s.get("type") for s in stages]
    own = all(s.get("potential") for s in stages if s.get("type") == "relax")
    if potential["name"] == "none" and ("stability" in kinds or ("relax" in kinds and not own)):
        return "the relax and stability stages need a potential: potential=<name>, e.g. potential=sevennet0"
    return None


def _needs_reference(reference, cfg):
    if reference is None and any(isinstance(s, Mapping) and s.get("type") == "stability" for s in cfg.stages):
        return "the stability stage needs reference=<folder of CIFs of competing phases>"
    return None if reference is None else existing_path().test(reference, cfg)


@dataclass
class CandidateConfig:
    prototypes: str = checked("perov_5", dataset_spec)
    n_prototypes: Optional[int] = checked(100, at_least(1))
    threshold: float = checked(1e-3, fraction)
    method: str = checked("exhaustive", one_of("exhaustive", "top_k"))
    max_per_prototype: Optional[int] = checked(4096, at_least(1))
    budget: int = checked(65536, at_least(1))
    dls_volume: bool = False


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/screen.yaml (``jaxinv run screen --help``)."""

    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    model: Optional[str] = checked(None, existing_path())
    quick_model_epochs: int = checked(100, at_least(1))
    quick_model_features: str = checked("magpie_site_oxi", one_of(feature_kinds))
    quick_model_hurdle: List[str] = field(default_factory=lambda: ["dir_gap", "ind_gap"])
    quick_model_members: int = checked(10, at_least(1))
    potential: OptionalPotentialConfig = checked(OptionalPotentialConfig(), Rule(_needs_potential, "not none with "
                                                                                 "relax or stability stages"))
    reference: Optional[str] = checked(None, Rule(_needs_reference, "an existing path (needed by stability)",
                                                  check_none=True))
    stages: List[Dict[str, Any]] = checked([], Rule(_stages_problem, "stages of known types and arguments"))
    n_cif: int = checked(50, non_negative)


def _prototypes(cfg, seed, skipped=None):
    """Prototype structures and names (file stems or material ids); unreadable files
    of a folder/file are skipped and appended to ``skipped``."""
    from jaxinv.io import read_structures_named

    spec = cfg.candidates.prototypes
    p = Path(spec)
    if p.exists():
        structures, names, unread = read_structures_named(p)
        if skipped is not None:
            skipped.extend(unread)
    else:
        from jaxinv.data import load_dataset

        ds = load_dataset(spec)
        idx = np.arange(len(ds))
        if cfg.candidates.n_prototypes and cfg.candidates.n_prototypes < len(ds):
            idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[: cfg.candidates.n_prototypes])
        structures = ds.structures(idx)
        names = [str(x) for x in ds.ids[idx]]
    return structures, names


def _quick_model(cfg, run, targets):
    """The property model of a run without ``model=``: an ensemble on ``quick_model_features``
    trained on the prototypes' dataset (its train split; best epoch per member and the σ scale
    per target on its valid split), the windowed targets in ``quick_model_hurdle`` (band gaps)
    as zero-inflated targets. Held-out numbers behind the defaults: benchmarks/RESULTS.md,
    "Held-out screening: do the true hits survive the filter?"."""
    from jaxinv.data import load_dataset
    from jaxinv.screening.train import PropertyModel, TrainConfig

    name = cfg.candidates.prototypes.split(":")[0]
    ds = load_dataset(name)
    hurdle = tuple(t for t in targets if t in set(cfg.quick_model_hurdle))
    model = PropertyModel("composition", tuple(targets), {"hidden": [128, 64]}, features=cfg.quick_model_features,
                          hurdle=hurdle)
    tr, va = ds.subset("train"), ds.subset("valid")
    x_va = model.raw_inputs(va.crystal())
    y_va = np.stack([va.labels[t] for t in targets], 1)
    model.fit(model.raw_inputs(tr.crystal()), np.stack([tr.labels[t] for t in targets], 1),
              TrainConfig(n_members=cfg.quick_model_members, epochs=cfg.quick_model_epochs, batch_size=128,
                          seed=cfg.seed), val=(x_va, y_va))
    fitted = model.recalibrate(model.scale_inputs(x_va), y_va)  # σ scales and P(gap > 0), on the valid split
    path = model.save(run.out_dir / "quick_model")
    log.info("trained a quick %s model on %s (hurdle %s, recalibration %s) -> %s", cfg.quick_model_features, name,
             list(hurdle), fitted, path)
    return model


def main(cfg, run):
    from jaxinv.screening.candidates import Candidates
    from jaxinv.screening.funnel import chain
    from jaxinv.screening.report import stage_windows, write_outputs
    from jaxinv.screening.stages import build_stage
    from jaxinv.screening.substitution import enumerate_substitutions, prepare_prototypes

    work = run.out_dir / "funnel"
    cand_path = run.out_dir / "candidates.npz"
    stats = {}
    unread, user_files = [], False  # files of prototypes= / reference= that could not be read
    resumed = cand_path.exists()
    stats_path = run.out_dir / "candidates_stats.json"
    if cand_path.exists():  # a resumed run reuses its candidates exactly, and their enumeration's statistics
        cands = Candidates.load(cand_path)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        print(f"resuming with {len(cands):,} candidates from {cand_path}")
    else:
        structures, names = _prototypes(cfg, cfg.seed, unread)
        user_files = Path(cfg.candidates.prototypes).exists()
        t0 = time.perf_counter()
        protos = prepare_prototypes(structures, names)
        t_proto = time.perf_counter() - t0
        cands, stats = enumerate_substitutions(protos, cfg.candidates.threshold, cfg.candidates.max_per_prototype,
                                               cfg.candidates.budget, method=cfg.candidates.method)
        stats["prototype_seconds"] = t_proto
        stats["prototypes_usable"] = len(protos)
        stats["prototypes_given"] = len(structures)
        stats["prototypes_skipped"] = len(unread)
        stats_path.write_text(json.dumps(stats, default=float))  # before the candidates: they mark the start done
        cands.save(cand_path)
        print(f"{len(protos)} prototypes -> {stats['enumerated']:,} substitutions -> {len(cands):,} unique "
              f"in {stats['seconds']:.1f} s")
    context = {}
    kinds = [s.get("type") for s in cfg.stages]
    if "property" in kinds and not any(s.get("model") for s in cfg.stages if s.get("type") == "property"):
        if cfg.model:
            from jaxinv.screening.train import PropertyModel

            context["model"] = PropertyModel.load(cfg.model)
        elif (run.out_dir / "quick_model" / "model.json").exists():
            from jaxinv.screening.train import PropertyModel

            context["model"] = PropertyModel.load(run.out_dir / "quick_model")
        else:
            targets = sorted({t for s in cfg.stages if s.get("type") == "property" for t in s.get("windows", {})})
            context["model"] = _quick_model(cfg, run, targets)
            if (context["model"].history or {}).get("epoch"):
                from jaxinv.plotting import property_learning_curve

                property_learning_curve(context["model"].history, run.out_dir / "quick_model" / "learning_curve.png",
                                        title="quick composition model")
    if "relax" in kinds or "stability" in kinds:
        context["potential"] = load_configured_potential(cfg.potential)  # None: each relax stage names its own
    if "stability" in kinds:
        from jaxinv.io import read_structures_named
        from jaxinv.metrics import HullReference
        from jaxinv.relax import failed, relax

        if not cfg.reference:
            raise ValueError("the stability stage needs reference=<folder of CIFs of competing phases>")
        ref_set = read_structures_named(cfg.reference)
        unread += ref_set.skipped
        user_files = True
        relaxed = relax(ref_set.structures, context["potential"], progress=False)
        refs = relaxed[np.flatnonzero(~failed(relaxed))]
        context["hull_reference"] = HullReference.from_structures(refs.to_structures(),
                                                                  lambda s: refs.labels["energy"])
    if user_files and not (resumed and run.path("skipped.csv").exists()):
        from jaxinv.io import write_skipped  # (a resumed run keeps the list its first start wrote)

        write_skipped(run.path("skipped.csv"), unread)
    stages = [build_stage(dict(s), context) for s in cfg.stages]
    funnel = chain(*stages)
    survivors, records = funnel.run(cands, work, progress=cfg.progress)
    paths = write_outputs(survivors, records, run.out_dir, n_cif=cfg.n_cif,
                          title=f"Screening of {cfg.candidates.prototypes} substitutions",
                          windows=stage_windows(stages))
    summary = {"candidates": stats, "stages": [r.__dict__ for r in records], "survivors": len(survivors),
               "report": str(paths["report"])}
    run.save_json(summary, "summary.json")
    for r in records:
        print(f"  {r.name:<12s} {r.n_in:>9,} -> {r.n_out:>9,}  ({r.seconds:.1f} s)")
    print(f"report: {paths['report']}")
    return summary
