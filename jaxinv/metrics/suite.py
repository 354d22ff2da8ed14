"""One call that scores a set of structures the way CDVAE/DiffCSP tables do.

:func:`score_generation` (validity, coverage, property distances, uniqueness and
novelty), :func:`score_csp` (match rate and RMSE, top-k) and
:func:`score_stability` (hull) return plain dicts ready for ``metrics.json``;
:func:`format_report` renders them as Markdown tables.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from jaxinv.metrics.composition import composition_validity, compositions_of, get_rules
from jaxinv.metrics.coverage import coverage, cov_cutoffs
from jaxinv.metrics.fingerprints import composition_fingerprints, load_magpie_scaler, scale_composition, \
    structure_fingerprints
from jaxinv.metrics.matching import reconstruction_metrics, uniqueness_novelty
from jaxinv.metrics.properties import BUILTIN_PROPERTIES, property_statistics, subsample_valid
from jaxinv.metrics.stability import HullReference, hull_metrics
from jaxinv.metrics.structure import MIN_VOLUME, as_structures, structure_validity, take

__all__ = ["score_generation", "score_csp", "score_stability", "validity", "format_report", "GENERATION_METRICS"]

log = logging.getLogger("jaxinv.metrics")

GENERATION_METRICS = ("validity", "coverage", "properties", "uniqueness", "novelty")


def validity(structures: Sequence, oxidation_states: str = "smact14") -> dict:
    """Per-sample CDVAE validity arrays (``comp_valid``, ``struct_valid``, ``valid``,
    ``min_distance``, ``volume``) and their rates, of structures or a Crystal."""
    sv = structure_validity(structures)
    comp = composition_validity(structures, oxidation_states)
    valid = comp & sv.valid
    rate = lambda x: float(np.mean(x)) if len(x) else float("nan")
    return {"comp_valid": comp, "struct_valid": sv.valid, "valid": valid, "min_distance": sv.min_distance,
            "volume": sv.volume, "rates": {"comp_valid": rate(comp), "struct_valid": rate(sv.valid),
                                           "valid": rate(valid)}}


def _fingerprints(structures, n_jobs, cache, progress, desc, stats=None):
    """Structure and (standardized) composition fingerprints of structures; cells
    that are non-finite or under 0.1 Å^3 are not fingerprinted (they count as failed)."""
    from jaxinv.metrics.structure import as_arrays

    lattices, fracs, numbers = as_arrays(structures)
    bad = np.array([not (np.all(np.isfinite(l)) and np.all(np.isfinite(f))) or abs(np.linalg.det(l)) < MIN_VOLUME
                    or len(z) == 0 for l, f, z in zip(lattices, fracs, numbers)], bool)
    struct_fp = structure_fingerprints(structures, n_jobs=n_jobs, cache=cache, progress=progress, skip=bad, desc=desc,
                                       stats=stats)
    comp_fp = composition_fingerprints(structures)
    return struct_fp, comp_fp


def score_generation(samples: Sequence, reference: Sequence | None = None, train: Sequence | None = None, *,
                     dataset: str | None = None, struct_cutoff: float | None = None, comp_cutoff: float | None = None,
                     oxidation_states: str = "smact14", metrics: Sequence[str] = GENERATION_METRICS,
                     properties: Mapping[str, Callable | tuple] | None = None, wdist_samples: int | None = 1000,
                     seed: int = 0, n_jobs: int = 2, fingerprint_cache=True, scaler_path=None,
                     progress: bool = True) -> tuple[dict, dict]:
    """Score generated structures against a reference set (and a training set).

    ``samples``, ``reference`` and ``train`` are pymatgen structures or Crystals;
    a Crystal becomes pymatgen structures only where a metric needs them
    (property distances over the chosen samples, StructureMatcher).

    Returns ``(metrics, per_sample)``. ``metrics`` holds the summary numbers and the
    settings that produced them; ``per_sample`` holds arrays of length
    ``len(samples)`` (validity flags, minimum distances, uniqueness, novelty).

    * ``dataset`` picks CDVAE's coverage cutoffs (perov_5, carbon_24, mp_20) unless
      ``struct_cutoff``/``comp_cutoff`` are given.
    * ``properties`` adds Wasserstein distances: name -> callable
      (``structures -> values``) or ``(sample_values, reference_values)``; density
      and number of elements are always included.
    * ``wdist_samples``: CDVAE compares 1,000 random valid samples with the
      reference; None uses every valid sample.
    * uniqueness and novelty are over valid samples.
    * coverage is reported under both rules in use: ``coverage`` is CDVAE's (every
      sample counts: an invalid one may cover a reference, and COV-P divides by all
      samples); ``coverage_valid_only`` keeps the valid samples only.
    """
    samples = _batch(samples)
    metrics = tuple(metrics)
    unknown = set(metrics) - set(GENERATION_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {GENERATION_METRICS}")
    need_ref = {"coverage", "properties"} & set(metrics)
    if need_ref and reference is None:
        raise ValueError(f"{sorted(need_ref)} need a reference set")
    if "novelty" in metrics and train is None:
        raise ValueError("novelty needs a training set")
    timings = {}
    out: dict = {"n_samples": len(samples),
                 "settings": {"oxidation_states": oxidation_states, "oxidation_states_source":
                              get_rules(oxidation_states).source, "metrics": list(metrics), "seed": seed}}
    t0 = time.perf_counter()
    v = validity(samples, oxidation_states)
    timings["validity"] = time.perf_counter() - t0
    per_sample = {k: v[k] for k in ("comp_valid", "struct_valid", "valid", "min_distance", "volume")}
    valid = v["valid"].copy()
    out["validity"] = dict(v["rates"])

    if "coverage" in metrics:
        if struct_cutoff is None or comp_cutoff is None:
            if dataset is None:
                raise ValueError("coverage needs dataset= (for CDVAE's cutoffs) or struct_cutoff and comp_cutoff")
            sc, cc = cov_cutoffs(dataset)
            struct_cutoff = sc if struct_cutoff is None else struct_cutoff
            comp_cutoff = cc if comp_cutoff is None else comp_cutoff
        scaler = load_magpie_scaler(scaler_path)
        t0 = time.perf_counter()
        fp_stats: dict = {}
        g_s, g_c = _fingerprints(samples, n_jobs, fingerprint_cache, progress, "CrystalNN samples", fp_stats)
        r_s, r_c = _fingerprints(_batch(reference), n_jobs, fingerprint_cache, progress, "CrystalNN reference",
                                 fp_stats)
        timings["fingerprints"] = time.perf_counter() - t0
        timings["fingerprints_cpu"] = fp_stats.get("cpu_s", 0.0)  # summed over workers
        out["fingerprints"] = {"computed": fp_stats.get("computed", 0), "from_cache": fp_stats.get("cached", 0),
                               "timed_out": fp_stats.get("timed_out", 0), "n_jobs": n_jobs}
        t0 = time.perf_counter()
        g_c, r_c = scale_composition(g_c, scaler), scale_composition(r_c, scaler)
        cov = coverage(g_s, g_c, r_s, r_c, struct_cutoff, comp_cutoff, n_generated=len(samples))
        out["coverage"] = cov.as_dict()
        fp_failed = np.isnan(g_s).any(1)
        per_sample["fingerprint_failed"] = fp_failed
        # CDVAE's Crystal.get_fingerprints sets valid = False when CrystalNN fails
        valid &= ~fp_failed
        out["validity"]["valid"] = float(valid.mean()) if len(valid) else float("nan")
        out["validity"]["n_fingerprint_failed"] = int(fp_failed.sum())
        per_sample["valid"] = valid
        # the other rule in use: only valid samples are generated crystals (COV-P's denominator
        # is the valid count, and an invalid sample covers no reference)
        out["coverage_valid_only"] = coverage(g_s[valid], g_c[valid], r_s, r_c, struct_cutoff, comp_cutoff).as_dict()
        timings["coverage"] = time.perf_counter() - t0

    if "properties" in metrics:
        t0 = time.perf_counter()
        idx = subsample_valid(valid, wdist_samples, seed)
        chosen = as_structures(take(samples, idx))
        props: dict = dict(BUILTIN_PROPERTIES)
        for name, spec in (properties or {}).items():
            if callable(spec):
                props[name] = spec
            else:  # (sample values, reference values): take the same subsample
                props[name] = (np.asarray(spec[0], np.float64)[idx], spec[1])
        out["properties"] = property_statistics(chosen, as_structures(reference), props)
        out["settings"]["wdist_samples"] = wdist_samples
        out["settings"]["wdist_n_used"] = int(len(idx))
        if wdist_samples is not None and len(idx) < wdist_samples:
            log.warning("only %d valid samples for property distances (CDVAE uses %d)", len(idx), wdist_samples)
        timings["properties"] = time.perf_counter() - t0

    if "uniqueness" in metrics or "novelty" in metrics:
        t0 = time.perf_counter()
        un = uniqueness_novelty(samples, train=_batch(train) if "novelty" in metrics else None, include=valid,
                                n_jobs=n_jobs, progress=progress, unique="uniqueness" in metrics)
        timings["uniqueness_novelty"] = time.perf_counter() - t0
        if "uniqueness" in metrics:
            out["uniqueness"] = {"unique_rate": un["unique_rate"], "n_considered": un["n_considered"],
                                 "n_unique": int(un["unique"].sum()), "n_formula_buckets": un["n_buckets"]}
            per_sample["unique"] = un["unique"]
            per_sample["group"] = un["group"]
        if "novelty" in metrics:
            out["novelty"] = {"novel_rate": un["novel_rate"], "n_considered": un["n_considered"],
                              "n_novel": int(un["novel"].sum()), "n_train": un["n_train"]}
            if "uniqueness" in metrics:
                out["novelty"]["unique_novel_rate"] = un["unique_novel_rate"]
            per_sample["novel"] = un["novel"]
    out["n_reference"] = None if reference is None else len(reference)
    out["n_train"] = None if train is None else len(train)
    out["settings"].update({"struct_cutoff": struct_cutoff, "comp_cutoff": comp_cutoff, "dataset": dataset})
    out["timings_s"] = timings
    return out, per_sample


def score_csp(predictions: Sequence, targets: Sequence, k: int = 1, oxidation_states: str = "smact14",
              require_valid: bool = True, n_jobs: int = 2, progress: bool = True) -> tuple[dict, dict]:
    """Match rate and RMSE of CSP / reconstruction predictions.

    ``predictions`` is flat, ``k * len(targets)`` long, run-major (DiffCSP's layout:
    candidate j of target i at ``j * len(targets) + i``). With ``require_valid`` a
    candidate must be CDVAE-valid (structure and SMACT) to match, as in
    CDVAE and DiffCSP. Both may be pymatgen structures or Crystals (converted for
    StructureMatcher: the targets, and the predictions allowed to match).
    """
    predictions, targets = _batch(predictions), _batch(targets)
    n = len(targets)
    if len(predictions) != k * n:
        raise ValueError(f"{len(predictions)} predictions for {n} targets and k={k}: need k * targets")
    t0 = time.perf_counter()
    v = validity(predictions, oxidation_states)
    ok = v["valid"] if require_valid else np.ones(len(predictions), bool)
    matchable = as_structures(predictions, np.flatnonzero(ok))
    runs = [matchable[j * n:(j + 1) * n] for j in range(k)]
    rec = reconstruction_metrics(runs, as_structures(targets), valid=ok.reshape(k, n), n_jobs=n_jobs, progress=progress)
    out = {"csp": {key: rec[key] for key in ("match_rate", "rmse", "n_targets", "n_matched", "k", "matcher")},
           "validity": v["rates"], "settings": {"require_valid": require_valid, "oxidation_states": oxidation_states},
           "timings_s": {"csp": time.perf_counter() - t0}}
    return out, {"rms_per_target": rec["rms_per_target"], "valid": v["valid"]}


def score_stability(samples: Sequence, energies: Sequence[float], hull: HullReference | Sequence,
                    per_atom: bool = False, e_hull_true: Sequence[float] | None = None,
                    threshold: float = 0.0) -> tuple[dict, dict]:
    """Energies above hull and formation energies of samples with given energies
    (eV, total unless ``per_atom``) against reference entries; with true
    ``e_hull_true`` also Matbench Discovery's classification metrics."""
    from jaxinv.metrics.stability import stable_metrics

    hull = hull if isinstance(hull, HullReference) else HullReference(hull)
    res = hull.evaluate(compositions_of(samples), energies, per_atom=per_atom)
    out = {"hull": hull_metrics(res["e_above_hull"], thresholds=(threshold, 0.1))}
    fe = res["formation_energy_per_atom"]
    out["hull"]["formation_energy_mean"] = float(np.nanmean(fe)) if np.isfinite(fe).any() else float("nan")
    if e_hull_true is not None:
        out["classification"] = stable_metrics(e_hull_true, res["e_above_hull"], threshold=threshold)
    return out, res


def _batch(samples):
    """A Crystal on the host, or a list of the structures given."""
    from jaxinv.crystal import Crystal

    return samples.to_host() if isinstance(samples, Crystal) else list(samples)


# ------------------------------------------------------------------ report
def _fmt(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "nan" if x != x else f"{x:.4g}"
    return str(x)


def format_report(metrics: dict, title: str = "jaxinv metrics") -> str:
    """Markdown tables of a metrics dict (percentages where the field reports them)."""
    lines = [f"# {title}", ""]
    pct = lambda x: "nan" if x is None or x != x else f"{100 * x:.2f}"
    if "validity" in metrics:
        v = metrics["validity"]
        lines += ["## Validity (%)", "", "| struct | comp | overall |", "|---|---|---|",
                  f"| {pct(v.get('struct_valid'))} | {pct(v.get('comp_valid'))} | {pct(v.get('valid'))} |", ""]
    if "coverage" in metrics:
        lines += ["## Coverage", "", "| samples | COV-R (%) | COV-P (%) | AMSD-R | AMSD-P | AMCD-R | AMCD-P | "
                  "cutoffs (struct/comp) |", "|---|---|---|---|---|---|---|---|"]
        rules = (("all (CDVAE)", "coverage"), ("valid only", "coverage_valid_only"))
        for rule, key in rules:
            if key in metrics:
                c = metrics[key]
                lines.append(f"| {rule}: {c['n_generated']} | {pct(c['cov_recall'])} | {pct(c['cov_precision'])} | "
                             f"{_fmt(c['amsd_recall'])} | {_fmt(c['amsd_precision'])} | {_fmt(c['amcd_recall'])} | "
                             f"{_fmt(c['amcd_precision'])} | {c['struct_cutoff']:g} / {c['comp_cutoff']:g} |")
        lines.append("")
    if "properties" in metrics:
        lines += ["## Property distributions (Wasserstein distance)", "",
                  "| property | W-dist | sample mean | reference mean | n sample | n reference |", "|---|---|---|---|---|---|"]
        for name, p in metrics["properties"].items():
            lines.append(f"| {name} | {_fmt(p['wdist'])} | {_fmt(p['gen_mean'])} | {_fmt(p['ref_mean'])} | "
                         f"{p['n_gen']} | {p['n_ref']} |")
        lines.append("")
    if "uniqueness" in metrics or "novelty" in metrics:
        u, nv = metrics.get("uniqueness", {}), metrics.get("novelty", {})
        lines += ["## Uniqueness and novelty (% of valid samples)", "", "| unique | novel | unique and novel |",
                  "|---|---|---|", f"| {pct(u.get('unique_rate'))} | {pct(nv.get('novel_rate'))} | "
                  f"{pct(nv.get('unique_novel_rate'))} |", ""]
    if "csp" in metrics:
        c = metrics["csp"]
        lines += ["## CSP / reconstruction", "", "| k | match rate (%) | RMSE | matched / targets |", "|---|---|---|---|",
                  f"| {c['k']} | {pct(c['match_rate'])} | {_fmt(c['rmse'])} | {c['n_matched']} / {c['n_targets']} |",
                  ""]
    if "hull" in metrics:
        h = metrics["hull"]
        lines += ["## Stability", "", "| " + " | ".join(h) + " |", "|" + "---|" * len(h),
                  "| " + " | ".join(_fmt(x) for x in h.values()) + " |", ""]
    if "classification" in metrics:
        c = metrics["classification"]
        keys = ["F1", "DAF", "precision", "recall", "accuracy", "MAE", "RMSE", "TP", "FP", "TN", "FN"]
        lines += ["## Stability classification", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                  "| " + " | ".join(_fmt(c[k]) for k in keys) + " |", ""]
    if "settings" in metrics:
        lines += ["## Settings", ""] + [f"- {k}: {_fmt(v)}" for k, v in metrics["settings"].items()] + [""]
    if "timings_s" in metrics:
        lines += ["## Timings (s)", ""] + [f"- {k}: {v:.1f}" for k, v in metrics["timings_s"].items()] + [""]
    return "\n".join(lines)
