"""Score generated (or optimized, or screened) structures as CDVAE / DiffCSP /
Matbench Discovery do, and write ``metrics.json``, ``metrics.md`` and
``per_sample.csv`` to the run folder.

    jaxinv evaluate samples=out/cif reference=perov_5:test train=perov_5:train
    jaxinv evaluate samples=gen.extxyz reference=mp_20:test n_jobs=4 wdist_samples=null
    jaxinv evaluate samples=pred.extxyz csp_targets=perov_5:test csp_k=20    # CSP top-20
    jaxinv evaluate samples=relaxed.extxyz hull_entries=mp_entries.json energy_key=energy

``samples`` is anything :func:`jaxinv.io.read_structures_named` reads (a folder of
CIFs/POSCARs, extxyz, a JSON list of structures, a CDVAE CSV); ``reference``,
``train`` and ``csp_targets`` are dataset specs (``perov_5:test``) or such files.
Unreadable files (or entries) are skipped and listed in ``skipped.csv``;
``per_sample.csv`` names each sample by its file stem (``<stem>_<index>`` in a
multi-structure file) or material id.
"""
from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
from omegaconf import MISSING

from jaxinv.config import Rule, RunConfig, at_least, checked, dataset_spec, each, existing_path, one_of, positive

log = logging.getLogger("jaxinv.evaluate")


def _metric_names():
    from jaxinv.metrics.suite import GENERATION_METRICS

    return GENERATION_METRICS


def _rule_sets():
    from jaxinv.metrics.composition import RULE_SETS

    return RULE_SETS


def _cutoffs_problem(name, cfg):
    from jaxinv.metrics.coverage import cov_cutoffs

    try:
        cov_cutoffs(name)
    except KeyError as e:
        return str(e.args[0])
    return None


def _stability_pair(value, cfg):
    if bool(cfg.hull_entries) != bool(cfg.energy_key):
        return "stability needs both hull_entries and energy_key"
    return None


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/evaluate.yaml (``jaxinv evaluate --help``)."""

    samples: str = checked(MISSING, existing_path())
    reference: Optional[str] = checked(None, dataset_spec)
    train: Optional[str] = checked(None, dataset_spec)
    dataset: Optional[str] = checked(None, Rule(_cutoffs_problem, "perov_5 | carbon_24 | mp_20"))
    struct_cutoff: Optional[float] = checked(None, positive)
    comp_cutoff: Optional[float] = checked(None, positive)
    oxidation_states: str = checked("smact14", one_of(_rule_sets))
    metrics: List[str] = checked(["validity", "coverage", "properties", "uniqueness", "novelty"],
                                 each(one_of(_metric_names)))
    properties: List[str] = field(default_factory=list)
    wdist_samples: Optional[int] = checked(1000, at_least(1))
    limit: Optional[int] = checked(None, at_least(1))
    reference_limit: Optional[int] = checked(None, at_least(1))
    n_jobs: int = checked(2, at_least(1))
    fingerprint_cache: bool = True
    cache_path: Optional[str] = None
    scaler_path: Optional[str] = checked(None, existing_path("file"))
    csp_targets: Optional[str] = checked(None, dataset_spec)
    csp_k: int = checked(1, at_least(1))
    hull_entries: Optional[str] = checked(None, existing_path("file"))
    energy_key: Optional[str] = checked(None, Rule(_stability_pair, "given with hull_entries", check_none=True))
    energy_per_atom: bool = False
    e_hull_true_key: Optional[str] = None


def load_named(spec: str, limit: Optional[int] = None) -> tuple[list, list, list]:
    """Structures, names and skipped files (:class:`jaxinv.io.Skipped`) from a
    file/folder, or from a dataset spec such as ``perov_5:test`` (material ids, nothing skipped)."""
    from jaxinv.data import load_dataset
    from jaxinv.io import read_structures_named

    if Path(spec).exists():
        structures, names, skipped = read_structures_named(spec)
    else:
        ds = load_dataset(spec)
        structures, names, skipped = ds.structures(), [str(i) for i in ds.ids], []
    if limit is not None:
        structures, names = structures[:limit], names[:limit]
    return structures, names, skipped


def load_structures(spec: str, limit: Optional[int] = None) -> list:
    """Structures from a file/folder, or a dataset spec such as ``perov_5:test``."""
    return load_named(spec, limit)[0]


def _dataset_name(cfg) -> Optional[str]:
    if cfg.dataset:
        return cfg.dataset
    if cfg.reference and not Path(cfg.reference).exists():
        from jaxinv.data import parse_spec

        return parse_spec(cfg.reference)[0]
    return None


def _label(structures, key) -> np.ndarray:
    return np.array([float((s.properties or {}).get(key, np.nan)) for s in structures])


def _sample_energies(cfg, samples) -> np.ndarray:
    """Per-sample ``energy_key`` values. ASE moves ``energy`` (and ``free_energy``)
    of an extxyz file from ``info`` into a calculator; the reader puts scalar
    calculator results back into ``properties``, frame by frame, so skipped frames
    cannot shift the energies onto the wrong samples."""
    return _label(samples, cfg.energy_key)


def _load_entries(path: str) -> list:
    import json

    from monty.json import MontyDecoder

    data = json.loads(Path(path).read_text(), cls=MontyDecoder)
    return list(data if isinstance(data, list) else data.get("entries", []))


def _write_per_sample(path: Path, samples, per_sample: dict, names=None) -> None:
    cols = [k for k, v in per_sample.items() if np.ndim(v) == 1 and len(v) == len(samples)]
    names = names if names is not None else [str(i) for i in range(len(samples))]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "name", "formula"] + cols)
        for i, s in enumerate(samples):
            w.writerow([i, names[i], s.composition.reduced_formula] + [_cell(per_sample[c][i]) for c in cols])


def _cell(x):
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return f"{x:.6g}"
    return x


def main(cfg, run):
    from jaxinv.io import write_skipped
    from jaxinv.metrics import format_report, score_csp, score_generation, score_stability
    from jaxinv.metrics.coverage import cov_cutoffs

    t0 = time.perf_counter()
    samples, names, unread = load_named(cfg.samples, cfg.limit)
    log.info("read %d samples from %s (%d skipped)", len(samples), cfg.samples, len(unread))
    metrics: dict = {"samples": cfg.samples}
    per_sample: dict = {}
    cache = (cfg.cache_path or True) if cfg.fingerprint_cache else False

    if cfg.csp_targets:
        targets, _, unread_targets = load_named(cfg.csp_targets)
        if unread or unread_targets:
            from jaxinv.config import ConfigError

            bad = unread or unread_targets
            write_skipped(run.path("skipped.csv"), unread + unread_targets)
            raise ConfigError("samples" if unread else "csp_targets",
                              f"{len(bad)} unreadable file(s)/entries (first: {bad[0].file}: {bad[0].reason}; all in "
                              f"{run.path('skipped.csv')}); CSP scoring pairs predictions with targets by position, "
                              "so every one must be readable")
        m, ps = score_csp(samples, targets, k=cfg.csp_k, oxidation_states=cfg.oxidation_states, n_jobs=cfg.n_jobs,
                          progress=cfg.progress)
        metrics.update(m)
        metrics["csp_targets"] = cfg.csp_targets
        per_sample["valid"] = ps["valid"]
    else:
        reference, train = None, None
        if cfg.reference:
            reference, _, more = load_named(cfg.reference, cfg.reference_limit)
            unread = unread + more
        if cfg.train:
            train, _, more = load_named(cfg.train)
            unread = unread + more
        wanted = list(cfg.metrics)
        skipped = []
        if reference is None:
            skipped += [m for m in wanted if m in ("coverage", "properties")]
        if train is None:
            skipped += [m for m in wanted if m == "novelty"]
        if skipped:
            log.warning("skipping %s (set reference=... / train=...)", ", ".join(skipped))
        wanted = [m for m in wanted if m not in skipped]
        dataset = _dataset_name(cfg)
        if "coverage" in wanted and (cfg.struct_cutoff is None or cfg.comp_cutoff is None):
            try:
                cov_cutoffs(str(dataset))
            except KeyError:
                from jaxinv.config import ConfigError

                raise ConfigError("dataset", f"no CDVAE coverage cutoffs for {dataset!r}: set "
                                             "dataset=perov_5|carbon_24|mp_20 or struct_cutoff=... comp_cutoff=...")
        props = {name: (_label(samples, name), _label(reference, name)) for name in cfg.properties} \
            if reference is not None else {}
        m, ps = score_generation(
            samples, reference, train, dataset=dataset, struct_cutoff=cfg.struct_cutoff, comp_cutoff=cfg.comp_cutoff,
            oxidation_states=cfg.oxidation_states, metrics=wanted, properties=props, wdist_samples=cfg.wdist_samples,
            seed=cfg.seed, n_jobs=cfg.n_jobs, fingerprint_cache=cache, scaler_path=cfg.scaler_path,
            progress=cfg.progress)
        metrics.update(m)
        metrics.update({"reference": cfg.reference, "train": cfg.train})
        per_sample.update(ps)

    if cfg.hull_entries and cfg.energy_key:
        energies = _sample_energies(cfg, samples)
        true = _label(samples, cfg.e_hull_true_key) if cfg.e_hull_true_key else None
        m, res = score_stability(samples, energies, _load_entries(cfg.hull_entries), per_atom=cfg.energy_per_atom,
                                 e_hull_true=true)
        metrics.update(m)
        per_sample.update(res)
    elif cfg.hull_entries or cfg.energy_key:
        log.warning("stability needs both hull_entries and energy_key; skipped")

    metrics["total_seconds"] = time.perf_counter() - t0
    metrics["skipped_inputs"] = len(unread)  # unreadable files/entries, listed in skipped.csv
    run.save_json(metrics, "metrics.json")
    report = format_report(metrics, title=f"metrics of {cfg.samples}")
    if unread:
        report += f"\n{len(unread)} input file(s)/entries skipped as unreadable: see skipped.csv\n"
    run.path("metrics.md").write_text(report)
    _write_per_sample(run.path("per_sample.csv"), samples, per_sample, names)
    if any(Path(x).exists() for x in (cfg.samples, cfg.reference, cfg.train) if x):
        write_skipped(run.path("skipped.csv"), unread)
    print(report)
    return metrics
