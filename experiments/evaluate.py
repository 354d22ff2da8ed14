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

from jaxinv.config import RunConfig

log = logging.getLogger("jaxinv.evaluate")


@dataclass
class Config(RunConfig):
    samples: str = MISSING  # folder of CIFs, extxyz, json or csv
    reference: Optional[str] = None  # e.g. perov_5:test (coverage and property distances)
    train: Optional[str] = None  # e.g. perov_5:train (novelty)
    dataset: Optional[str] = None  # coverage cutoffs preset; default: the reference's dataset name
    struct_cutoff: Optional[float] = None
    comp_cutoff: Optional[float] = None
    oxidation_states: str = "smact14"  # smact14 (CDVAE) | icsd24 (smact 4 default) | smact4:<set>
    metrics: List[str] = field(default_factory=lambda: ["validity", "coverage", "properties", "uniqueness",
                                                        "novelty"])
    properties: List[str] = field(default_factory=list)  # extra labels compared by Wasserstein distance
    wdist_samples: Optional[int] = 1000  # CDVAE's random valid subsample; null: all valid samples
    limit: Optional[int] = None  # score only the first N samples
    reference_limit: Optional[int] = None
    n_jobs: int = 2
    fingerprint_cache: bool = True
    cache_path: Optional[str] = None  # default $JAXINV_CACHE/metrics/fingerprints.sqlite
    scaler_path: Optional[str] = None  # CDVAE Magpie scaler; default searched under shared/data/metrics
    csp_targets: Optional[str] = None  # score samples as CSP predictions of these targets
    csp_k: int = 1  # candidates per target, run-major (candidate j of target i at j * n_targets + i)
    hull_entries: Optional[str] = None  # JSON list of pymatgen (Computed)Entry dicts
    energy_key: Optional[str] = None  # per-sample property holding the energy (eV)
    energy_per_atom: bool = False  # energy_key is per atom
    e_hull_true_key: Optional[str] = None  # per-sample true e_above_hull for classification metrics


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


def _check(cfg) -> None:
    """Config values the schema cannot check, named before any work starts."""
    from jaxinv.config import ConfigError
    from jaxinv.metrics.composition import RULE_SETS, get_rules
    from jaxinv.metrics.suite import GENERATION_METRICS

    unknown = sorted(set(cfg.metrics) - set(GENERATION_METRICS))
    if unknown:
        raise ConfigError("metrics", f"unknown {unknown}; choose from {list(GENERATION_METRICS)}")
    try:
        get_rules(cfg.oxidation_states)
    except ValueError:
        raise ConfigError("oxidation_states", f"unknown set {cfg.oxidation_states!r}; known: {', '.join(RULE_SETS)}")
    if cfg.csp_k < 1 or cfg.n_jobs < 1:
        raise ConfigError("csp_k" if cfg.csp_k < 1 else "n_jobs", "must be at least 1")


def main(cfg, run):
    from jaxinv.io import write_skipped
    from jaxinv.metrics import format_report, score_csp, score_generation, score_stability
    from jaxinv.metrics.coverage import cov_cutoffs

    _check(cfg)
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
