"""Generative models on perov_5 and carbon_24, scored as in CDVAE's tables.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_generative.py \\
        [--datasets perov_5 carbon_24] [--models coord_vae voxel_vae coord_gan] \\
        [--n-samples 10000] [--runs outputs/bench_generative] [--design-n 1000] [--oracle DIR]

For each dataset and model preset: train with ``jaxinv run train_generative``
(default preset settings; a finished run folder under ``--runs`` is reused and
an unfinished one resumed), then

* sample ``--n-samples`` crystals and time it (crystals per second, decoding
  to ``Crystal`` included, compilation excluded);
* score them with :func:`jaxinv.metrics.score_generation` against the test
  split (validity, COV-R/COV-P with CDVAE's cutoffs, density and element-count
  Wasserstein distances on 1,000 valid samples, uniqueness, novelty vs train);
* VAEs: reconstruct the test split (posterior mean), match rate and RMSE with
  StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3), valid reconstructions only.

Then latent-space optimization with the perov_5 coordinate VAE toward
``heat_ref <= 1.0`` eV/cell and ``1.5 <= dir_gap <= 3`` eV (``--design-n``
prior starts), scored by :func:`jaxinv.generative.design.design`.

Results go to ``benchmarks/generative_results.json`` (merged, so runs can be
split over several invocations) and a Markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

RESULTS = Path(__file__).with_name("generative_results.json")


def train_run(dataset: str, model: str, runs: Path, extra: list[str]) -> Path:
    from jaxinv.cli import run_experiment

    out = runs / f"{dataset}_{model}"
    done = out / "results.json"
    if done.exists():
        return out
    run_experiment("train_generative", [f"model={model}", f"data={dataset}", f"out_dir={out}", "evaluate=false",
                                        "n_samples=64", "n_cif=8", "progress=false"] + extra)
    return out


def score(run: Path, dataset: str, n: int, n_jobs: int, metrics=None, relax: dict | None = None,
          symprec: float | None = None) -> dict:
    import jax

    from jaxinv.data import load_dataset
    from jaxinv.generative.evaluation import (generation_metrics, reconstruction_metrics, relax_samples, sample_timed,
                                              symmetrize_samples)
    from jaxinv.generative.model import load_model

    model, params = load_model(run)
    train_info = json.loads((run / "results.json").read_text())
    ds = load_dataset(dataset)
    samples, dt, rate = sample_timed(model, params, jax.random.PRNGKey(7), n)
    relax_info = None
    if relax:
        samples, relax_info = relax_samples(samples, relax["potential"], relax["pressure_gpa"], relax["steps"])
    sym_info = None
    if symprec:
        samples, sym_info = symmetrize_samples(samples, symprec)
        print(f"symmetrized {sym_info['symmetrized']} samples (symprec {symprec}), space groups "
              f"{sym_info['space_groups']}", flush=True)
    t0 = time.perf_counter()
    gen, _ = generation_metrics(samples, dataset, ds.subset("test").structures(), ds.subset("train").structures(),
                                n_jobs=n_jobs, progress=True, metrics=metrics)
    out = {"kind": model.config.kind, "condition": model.config.condition, "n_samples": n,
           "sampling_seconds": dt, "crystals_per_second": rate, "generation": gen,
           "scoring_seconds": time.perf_counter() - t0, "steps": train_info["steps"],
           "n_params": train_info["n_params"], "history_last": train_info["history"][-1] if train_info["history"]
           else {}}
    if relax_info:
        out["relaxation"] = relax_info
    if sym_info:
        out["symmetrization"] = sym_info
    log = run / "run.log"
    if log.exists():  # wall time of training from the run log (first line to the last validation line)
        lines = [ln for ln in log.read_text().splitlines() if ln[:4].isdigit()]
        lines = lines[:1] + [ln for ln in lines if "jaxinv.generative: step" in ln][-1:]
        if len(lines) > 1:
            import datetime

            t = [datetime.datetime.strptime(ln[:23], "%Y-%m-%d %H:%M:%S,%f") for ln in (lines[0], lines[-1])]
            out["run_wall_seconds"] = (t[1] - t[0]).total_seconds()
    if model.is_vae and not relax:  # reconstruction does not depend on relaxing samples
        test = ds.subset("test")
        test = test.subset(np.flatnonzero(model.supported(test)))
        out["reconstruction"] = reconstruction_metrics(model, params, test.crystal(bucket=False), n_jobs=n_jobs,
                                                       progress=True)
    return out


def design_run(run: Path, n: int, oracle: str | None, n_relax: int = 0, relax_steps: int = 200) -> dict:
    from jaxinv.data import load_dataset
    from jaxinv.generative.design import _relax, design
    from jaxinv.generative.latent import parse_objectives
    from jaxinv.generative.model import load_model

    model, params = load_model(run)
    objectives = parse_objectives({"heat_ref": {"max": 1.0}, "dir_gap": [1.5, 3.0]})
    orc = None
    if oracle:
        from jaxinv.screening.train import PropertyModel

        orc = PropertyModel.load(oracle)
    out = {}
    for start in ("prior", "data"):
        res = design(model, params, objectives, n, start=start, dataset=load_dataset(model.dataset), oracle=orc)
        out[start] = {"summary": res["summary"], "baseline": res["baseline"]}
        per = res["per_candidate"]
        hits = np.flatnonzero(per["valid"] & per["reencoded"])
        if n_relax and len(hits):
            # relax the first n_relax valid, re-encoded hits with SevenNet-0
            from jaxinv.potentials.registry import load_potential

            pick = hits[:n_relax]
            mask = np.zeros(len(per["valid"]), bool)
            mask[pick] = True
            summary, relaxed = _relax(res["candidates"], mask, load_potential("sevennet0"), relax_steps)
            from jaxinv.metrics.matching import make_matcher

            cands, matcher = res["candidates"].to_structures(), make_matcher()
            summary["formulas"] = [cands[i].composition.reduced_formula for i, _, _ in relaxed]
            summary["energy_per_atom"] = [e for _, _, e in relaxed]
            # does the relaxed crystal stay the decoded one (StructureMatcher, CDVAE tolerances)?
            summary["same_structure_after_relaxation"] = float(np.mean([matcher.fit(cands[i], s)
                                                                        for i, s, _ in relaxed])) if relaxed else None
            out[start]["sevennet0_relaxation"] = summary
    return out


def pct(x):
    return "–" if x is None or x != x else f"{100 * x:.2f}"


def fmt(x, d=4):
    return "–" if x is None or x != x else f"{x:.{d}f}"


def table(results: dict) -> str:
    rows = ["| dataset | model | steps | train time | valid struct / comp (%) | COV-R / COV-P (%) | density EMD | "
            "#elem EMD | unique / novel (%) | recon match (%) / RMSE | samples/s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(results.get("models", {}).items()):
        g = r["generation"]
        v, c, p = g["validity"], g.get("coverage", {}), g.get("properties", {})
        rec = r.get("reconstruction")
        wall = r.get("run_wall_seconds")
        dset, model = key.split("/")
        rows.append(
            f"| {dset} | {model} | {r['steps']} | {'–' if wall is None else f'{wall / 60:.1f} min'} | "
            f"{pct(v['struct_valid'])} / {pct(v['comp_valid'])} | "
            f"{pct(c.get('cov_recall'))} / {pct(c.get('cov_precision'))} | "
            f"{fmt(p.get('density', {}).get('wdist'))} | {fmt(p.get('n_elements', {}).get('wdist'))} | "
            f"{pct(g.get('uniqueness', {}).get('unique_rate'))} / {pct(g.get('novelty', {}).get('novel_rate'))} | "
            f"{'–' if rec is None else pct(rec['match_rate']) + ' / ' + fmt(rec['rmse'])} | "
            f"{r['crystals_per_second']:.0f} |")
    return "\n".join(rows)


def score_training_split(dataset: str, n: int, n_jobs: int, metrics=None) -> dict:
    """The protocol's ceiling: ``n`` random training structures scored as if they were
    samples (what a model that reproduced the training distribution exactly would get)."""
    from jaxinv.data import load_dataset
    from jaxinv.generative.evaluation import generation_metrics

    ds = load_dataset(dataset)
    train, test = ds.subset("train").structures(), ds.subset("test").structures()
    pick = np.random.default_rng(0).choice(len(train), size=min(n, len(train)), replace=False)
    t0 = time.perf_counter()
    gen, _ = generation_metrics([train[i] for i in pick], dataset, test, train, n_jobs=n_jobs, progress=True,
                                metrics=metrics or ["validity", "coverage", "properties"])
    return {"kind": "training split as samples", "condition": None, "n_samples": len(pick), "generation": gen,
            "scoring_seconds": time.perf_counter() - t0, "steps": 0, "n_params": 0, "crystals_per_second": 0.0,
            "sampling_seconds": 0.0, "n_train": len(train), "n_test": len(test)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["perov_5", "carbon_24"])
    ap.add_argument("--models", nargs="*", default=["coord_vae", "voxel_vae", "coord_gan"])
    ap.add_argument("--n-samples", type=int, default=10000)
    ap.add_argument("--runs", default="outputs/bench_generative")
    ap.add_argument("--train-args", nargs="*", default=[], help="extra train_generative overrides")
    ap.add_argument("--design-n", type=int, default=1000, help="latent optimization starts (0: skip)")
    ap.add_argument("--oracle", default=None, help="train_property model folder for the design check")
    ap.add_argument("--metrics", nargs="+", default=None,
                    help="generation metrics (default all; uniqueness/novelty are slow on carbon_24: one formula)")
    ap.add_argument("--n-relax", type=int, default=0, help="relax this many valid design hits with SevenNet-0")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the result keys (e.g. a preset variant)")
    ap.add_argument("--relax-samples", default=None, metavar="POTENTIAL",
                    help="relax the samples with this jaxinv potential before scoring (a separate row, '+relax')")
    ap.add_argument("--relax-pressure", type=float, default=0.0, help="GPa, for --relax-samples")
    ap.add_argument("--relax-steps", type=int, default=300, help="FIRE steps at most, for --relax-samples")
    ap.add_argument("--symmetrize", type=float, default=None, metavar="SYMPREC",
                    help="snap samples onto their spglib symmetry at this tolerance (Å) before scoring "
                         "(after --relax-samples; a separate row, '+sym')")
    ap.add_argument("--training-split", action="store_true",
                    help="only score --n-samples training structures as samples (the protocol's ceiling)")
    args = ap.parse_args()

    import jax

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("models", {})
    results["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend()}
    runs = Path(args.runs)
    if args.training_split:
        for dataset in args.datasets:
            results["models"][f"{dataset}/training-split-as-samples"] = score_training_split(
                dataset, args.n_samples, args.n_jobs, args.metrics)
            RESULTS.write_text(json.dumps(results, indent=1, default=float))
        print(table(results))
        return
    for dataset in args.datasets:
        for model in args.models:
            print(f"=== {dataset} / {model}", flush=True)
            run = train_run(dataset, model, runs, args.train_args)
            relax = None
            key = f"{dataset}/{model}{args.tag}"
            if args.relax_samples:
                relax = {"potential": args.relax_samples, "pressure_gpa": args.relax_pressure,
                         "steps": args.relax_steps}
                key += f"+relax-{args.relax_samples}@{args.relax_pressure:g}GPa-{args.relax_steps}steps"
            if args.symmetrize:
                key += f"+sym{args.symmetrize:g}"
            results["models"][key] = score(run, dataset, args.n_samples, args.n_jobs, args.metrics, relax,
                                           args.symmetrize)
            RESULTS.write_text(json.dumps(results, indent=1, default=float))
    if args.design_n and "perov_5" in args.datasets:
        run = train_run("perov_5", "coord_vae", runs, args.train_args)
        results["design"] = design_run(run, args.design_n, args.oracle, args.n_relax)
        RESULTS.write_text(json.dumps(results, indent=1, default=float))
    print(table(results))
    if "design" in results:
        for start, d in results["design"].items():
            s, b = d["summary"], d["baseline"]
            print(f"design from {start}: head hit {pct(s['head_hit'])} (start {pct(b['head_hit'])}), valid + re-encoded"
                  f" hit {pct(s['valid_and_reencoded_hit'])} (start {pct(b['valid_and_reencoded_hit'])}), known DFT "
                  f"hit {pct(s.get('known_dft_hit'))} (start {pct(b.get('known_dft_hit'))})")


if __name__ == "__main__":
    main()
