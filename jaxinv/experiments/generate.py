"""Sample a trained generative model, write the crystals and score them.

    jaxinv run generate model=outputs/train_generative/<run> n=10000
    jaxinv run generate model=<cvae run> n=1000 'targets={heat_ref: 0.3, dir_gap: 2.0}'
    jaxinv run generate model=<gan_comp run> n=100 composition=SrTiO3
    jaxinv run generate model=<run> n=10000 evaluate=false
    jaxinv run generate model=<diffcsp de novo run, condition dir_gap> n=1000 'targets={dir_gap: [1.5, 3]}' guidance=2
    jaxinv run generate model=<carbon run> relax.potential=tersoff_c relax.pressure_gpa=10

``model`` is a ``train_generative`` run folder (its ``checkpoint/`` holds the
model description and parameters). Writes ``samples/samples.extxyz`` (all
samples), ``samples/cif/`` (the first ``n_cif``), ``results.json`` and
``metrics.md``: CDVAE validity, COV-R / COV-P, density and element-count
Wasserstein distances, uniqueness and novelty against the model's dataset
(test split as reference, train split for novelty), and sampling throughput.
With ``relax.potential`` the samples are relaxed with that jaxinv potential first
(cell included, at ``relax.pressure_gpa``), and the relaxed crystals are written and
scored (CDVAE scores the decoder's output unrelaxed; say so when comparing). With
``symmetrize`` (a tolerance in Å) each sample, after any relaxation, is replaced by
the idealised primitive cell of the symmetry spglib finds at that tolerance (also
outside CDVAE's protocol).

A diffusion model trained with ``diffusion.condition=<label>`` takes a target for
that label: a value or a window [lo, hi] (each sample's label drawn uniformly in
it), and ``guidance``, the classifier-free weight w (0: the conditional model as
trained; larger w trades diversity for hitting the target).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from jaxinv.config import (OptionalPotentialConfig, Rule, RunConfig, at_least, checked, dataset_spec, each,
                           existing_path, formula, load_configured_potential, non_negative, one_of, positive)


def _metric_names():
    from jaxinv.metrics.suite import GENERATION_METRICS

    return GENERATION_METRICS


@dataclass
class RelaxSamples:
    potential: OptionalPotentialConfig = field(default_factory=OptionalPotentialConfig)  # none: as decoded
    pressure_gpa: float = 0.0
    max_steps: int = checked(300, at_least(1))


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/generate.yaml (``jaxinv run generate --help``)."""

    model: str = checked(MISSING, existing_path("dir"))
    n: int = checked(1000, at_least(1))
    batch_size: int = checked(1024, at_least(1))
    targets: Dict[str, Any] = checked({}, Rule(lambda v, c: _targets_problem(v), "label -> value, or [lo, hi]"))
    guidance: float = checked(0.0, non_negative)
    composition: Optional[str] = checked(None, formula, Rule(
        lambda v, c: "give either targets (property conditioning) or composition, not both" if c.targets else None,
        "not with targets"))
    n_cif: int = checked(-1, at_least(-1))
    evaluate: bool = True
    reference: Optional[str] = checked(None, dataset_spec)
    train: Optional[str] = checked(None, dataset_spec)
    metrics: List[str] = checked(["validity", "coverage", "properties", "uniqueness", "novelty"],
                                 each(one_of(_metric_names)))
    n_jobs: int = checked(2, at_least(1))
    relax: RelaxSamples = field(default_factory=RelaxSamples)
    symmetrize: Optional[float] = checked(None, positive)


def _targets_problem(targets) -> Optional[str]:
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    for k, v in (targets or {}).items():
        window = list(v) if not (number(v) or isinstance(v, str)) and hasattr(v, "__iter__") else None
        if not (number(v) or (window and len(window) == 2 and all(map(number, window)) and window[0] <= window[1])):
            return f"{k}: {v!r} is neither a number nor a window [lo, hi] with lo <= hi"
    return None


def main(cfg, run):
    import jax
    import numpy as np

    from jaxinv.generative.evaluation import generation_metrics, sample_timed
    from jaxinv.generative.model import load_model
    from jaxinv.io import write_cifs, write_extxyz
    from jaxinv.metrics import format_report

    from pathlib import Path

    from omegaconf import OmegaConf

    targets = None
    if cfg.targets:
        targets = OmegaConf.to_container(cfg.targets) if OmegaConf.is_config(cfg.targets) else dict(cfg.targets)
    if cfg.composition:
        if targets:
            raise ValueError("give either targets (property conditioning) or composition, not both")
        targets = cfg.composition
    if (Path(cfg.model) / "checkpoint" / "diffusion.json").exists():  # a model=diffcsp run
        from jaxinv.generative.diffusion import CrystalDiffusion

        model, params = CrystalDiffusion.load(Path(cfg.model) / "checkpoint")
        kind = f"diffcsp ({model.config.mode})"
        if (model.config.mode == "csp") != bool(cfg.composition):
            raise ValueError("composition: a CSP diffusion model takes composition=<formula>; a de novo one does not")
        label = model.config.condition
        if cfg.targets and set(cfg.targets) != {label}:
            raise ValueError(f"targets: this model is conditioned on {label!r}; give targets={{{label}: <value or "
                             f"[lo, hi]>}}" if label else "targets: this diffusion model is unconditional")
        target = targets.get(label) if cfg.targets else None
        composition = cfg.composition
        print(f"{kind} trained on {model.dataset}; sampling {cfg.n}" + (f" of {composition}" if composition else "")
              + (f", {label} target {target}, guidance {cfg.guidance}" if target is not None else ""))
        samples, dt, rate = _sample_diffusion(model, params, jax.random.PRNGKey(cfg.seed), cfg, composition, target)
    else:
        model, params = load_model(cfg.model)
        kind = model.config.kind
        given = targets.items() if isinstance(targets, dict) else ()  # a str is a composition (GAN)
        windows = [k for k, v in given if not isinstance(v, (int, float))]
        if windows:
            raise ValueError(f"targets: {kind} models take one value per property, not a window ({windows[0]})")
        print(f"{kind} (condition: {model.config.condition}) trained on {model.dataset}; "
              f"sampling {cfg.n}" + (f" with targets {targets}" if targets else ""))
        samples, dt, rate = sample_timed(model, params, jax.random.PRNGKey(cfg.seed), cfg.n, targets, cfg.batch_size)
    print(f"{cfg.n} crystals in {dt:.2f} s ({rate:.0f} / s, decoding included)")
    relaxation = None
    potential = load_configured_potential(cfg.relax.potential)  # None: score the samples as decoded
    if potential is not None:
        from jaxinv.generative.evaluation import relax_crystals

        samples, relaxation = relax_crystals(samples, potential, cfg.relax.pressure_gpa, cfg.relax.max_steps,
                                             progress=cfg.progress)
        print(f"relaxed with {potential.name} at {cfg.relax.pressure_gpa:g} GPa: {relaxation['statuses']}")
    symmetrization = None
    if cfg.symmetrize:
        from jaxinv.generative.evaluation import symmetrize_crystals

        samples, symmetrization = symmetrize_crystals(samples, float(cfg.symmetrize))
        print(f"symmetrized {symmetrization['symmetrized']} of {cfg.n} samples at symprec {cfg.symmetrize} Å")
    extxyz = write_extxyz(samples, run.path("samples", "samples.extxyz"))
    n_cif = cfg.n if cfg.n_cif < 0 else min(cfg.n_cif, cfg.n)
    write_cifs(samples[:n_cif], run.out_dir / "samples" / "cif")
    print(f"wrote {extxyz} and {n_cif} CIFs")
    results = {"model": str(cfg.model), "n": cfg.n, "targets": targets,
               "sampling": {"seconds": dt, "crystals_per_second": rate}, "relaxation": relaxation,
               "symmetrization": symmetrization,
               "atoms_per_cell": {int(k): int(v) for k, v in zip(*np.unique(samples.n_atoms, return_counts=True))}}
    if cfg.evaluate:
        from pathlib import Path

        from jaxinv.data import load_dataset
        from jaxinv.io import read_structures_named, write_skipped

        ds = None if (cfg.reference and cfg.train) else load_dataset(model.dataset)
        unread, user_files = [], False

        def structures_of(spec):  # a dataset spec, or a file/folder of structures (bad files skipped)
            nonlocal user_files
            if not Path(spec).exists():
                return load_dataset(spec).structures()
            got = read_structures_named(spec)
            unread.extend(got.skipped)
            user_files = True
            return got.structures

        ref = structures_of(cfg.reference) if cfg.reference else ds.subset("test").structures()
        train = structures_of(cfg.train) if cfg.train else ds.subset("train").structures()
        if user_files:
            write_skipped(run.path("skipped.csv"), unread)
            results["skipped_references"] = len(unread)
        metrics, per_sample = generation_metrics(samples, model.dataset, ref, train, n_jobs=cfg.n_jobs,
                                                 progress=cfg.progress, metrics=list(cfg.metrics))
        results["metrics"] = metrics
        report = format_report(metrics, f"{kind} samples ({model.dataset})")
        run.path("metrics.md").write_text(report)
        print(report)
    run.save_json(results)
    return results


def _sample_diffusion(model, params, key, cfg, composition, target=None):
    """(crystals, seconds, crystals per second) of a diffusion model; compilation is done
    on one small batch beforehand and not timed, as for the other models."""
    import time

    import jax

    size = min(cfg.n, cfg.batch_size)
    kw = {"compositions": [composition] * cfg.n} if composition else {"n": cfg.n}
    warm = {"compositions": [composition] * size} if composition else {"n": size}
    guide = {"target": target, "guidance": cfg.guidance}
    model.sample(params, jax.random.fold_in(key, 99), batch_size=size, seed=cfg.seed, **warm, **guide)
    t0 = time.perf_counter()
    crystals = model.sample(params, key, batch_size=size, seed=cfg.seed, **kw, **guide)
    dt = time.perf_counter() - t0
    return crystals, dt, cfg.n / dt
