"""Evaluation of the periodic diffusion model (issue 26) on the field's protocols.

Subcommands (each writes one JSON under ``benchmarks/results/diffusion/``):

* ``csp``: crystal structure prediction on the test compositions of our split.
  k = 1 on every test composition and k = 20 on the first ``--limit-k20`` of
  them, beside the random baseline: pyxtal random structures of the same
  composition (``jaxinv.search.seeds.random_crystals``: a random compatible space
  group, P1 one time in ten), the same number per composition. Match rate and
  RMSE by ``jaxinv.metrics.score_csp`` (StructureMatcher stol 0.5, angle_tol 10,
  ltol 0.3; a candidate must be CDVAE-valid to match, as in CDVAE and DiffCSP).
* ``guidance``: a de novo model trained with ``diffusion.condition=<label>``:
  ``--n`` samples unconditioned (the null condition) and targeted at a window
  with each classifier-free weight in ``--weights``. Two independent checks of
  where the samples land, neither of which steered them: (1) a property model
  trained separately (``--verifier``: a ``train_property`` model folder) gives
  each valid sample's probability of lying in the window (hurdle model: P(gap >
  0) times the truncated Gaussian) and its point prediction; (2) samples that
  StructureMatcher matches to a structure of the dataset (any split) take that
  structure's DFT label.
* ``denovo``: CDVAE generation metrics of ``--n`` unconditioned samples
  (``jaxinv.generative.evaluation.generation_metrics``: validity, COV-R / COV-P in
  both coverage rules, density and #elements EMD, uniqueness and novelty).
* ``energy``: ``--n`` samples relaxed with SevenNet-0 by the batched relaxer:
  energy per atom (single point) and CDVAE validity before and after, relaxation
  statuses; a histogram PNG.
* ``curve``: the CSP learning curve. One CSP model per training-set size (a random
  subset of our train split, ``data.limit``), each trained for the same number of
  steps in a fresh process, then k = 1 on every test composition; match rate and
  RMSE against size, beside DiffCSP's published number, as JSON and a PNG.

    OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_diffusion.py csp --model <csp run> --k20-limit 100
    python benchmarks/bench_diffusion.py guidance --model <de novo run> --verifier <train_property run>/model
    OPENBLAS_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_diffusion.py curve --sizes 3017 750 188 --root /tmp/lc
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "diffusion"


def _load(run):
    from jaxinv.generative.diffusion import CrystalDiffusion

    return CrystalDiffusion.load(Path(run) / "checkpoint")


def _sample(model, params, seed, **kw):
    import jax

    t0 = time.perf_counter()
    out = model.sample(params, jax.random.PRNGKey(seed), seed=seed, **kw)
    return out, time.perf_counter() - t0


def _formula(numbers) -> str:
    from pymatgen.core import Element

    z, c = np.unique(numbers, return_counts=True)
    return "".join(f"{Element.from_Z(int(a)).symbol}{int(b)}" for a, b in zip(z, c))


def pyxtal_random(targets, k: int, seed: int):
    """k pyxtal random crystals per target composition, run-major like the model's."""
    from jaxinv.crystal import Crystal
    from jaxinv.search.composition import SearchSpace
    from jaxinv.search.seeds import random_crystals

    host = targets.to_host()
    rng = np.random.default_rng(seed)
    per_target = []
    for b in range(len(host)):
        space = SearchSpace.fixed(_formula(host.numbers[b][host.mask[b]]))
        per_target.append(random_crystals(space, k, rng)[0])
    rows = [per_target[i][j:j + 1] for j in range(k) for i in range(len(per_target))]
    return Crystal.concatenate([r.pad(int(host.mask.shape[1])) for r in rows])


def cmd_csp(args):
    from jaxinv.data import load_dataset
    from jaxinv.crystal import Crystal
    from jaxinv.metrics import score_csp

    model, params = _load(args.model)
    ds = load_dataset(model.dataset)
    test = ds.subset("test")
    targets = test.crystal(bucket=False)
    out = {"model": str(args.model), "dataset": model.dataset, "split": "jaxinv's 80/10/10 hash split of val.csv",
           "n_test": len(test), "runs": []}
    for k, n in ((1, len(test)), (args.k, min(args.k20_limit, len(test)))):
        given = targets[np.arange(n)]
        for method in ("jaxinv_diffusion", "pyxtal_random"):
            t0 = time.perf_counter()
            if method == "pyxtal_random":
                preds = pyxtal_random(given, k, args.seed)
            elif k == 1 and _run_samples(args.model, given) is not None:  # train_generative sampled these already
                preds, dt_run = _run_samples(args.model, given)
                t0 -= dt_run
            else:
                preds, _ = _sample(model, params, args.seed, compositions=Crystal.concatenate([given] * k),
                                   batch_size=args.batch_size)
            dt = time.perf_counter() - t0
            m, _ = score_csp(preds, given, k=k, n_jobs=args.n_jobs, progress=False)
            rec = {"method": method, "k": k, "n_targets": n, "generate_s": dt, "crystals_per_s": k * n / dt,
                   **m["csp"], "validity": m["validity"]}
            out["runs"].append(rec)
            print(f"{method} k={k} on {n}: match {100 * rec['match_rate']:.1f} %, RMSE {rec['rmse']:.4f} "
                  f"({dt:.0f} s to generate)", flush=True)
            _save(args, out)
    return out


def _run_samples(run, given):
    """The k = 1 samples ``train_generative`` drew for the test compositions (its
    ``samples/samples.extxyz`` and sampling time), when they are exactly ``given``'s."""
    from jaxinv.crystal import Crystal
    from jaxinv.io import read_structures

    path, res = Path(run) / "samples" / "samples.extxyz", Path(run) / "results.json"
    if not (path.exists() and res.exists()):
        return None
    samples = Crystal.from_structures(read_structures(path))
    if len(samples) != len(given) or samples.formulas() != given.formulas():
        return None
    return samples, json.loads(res.read_text())["sampling"]["seconds"]


def cmd_guidance(args):
    from jaxinv.data import load_dataset
    from jaxinv.metrics import structure_validity
    from jaxinv.metrics.matching import make_matcher, structures_match
    from jaxinv.screening.stages import window_probability
    from jaxinv.screening.train import PropertyModel

    model, params = _load(args.model)
    label = model.config.condition
    lo, hi = args.window
    ds = load_dataset(model.dataset)
    verifier = PropertyModel.load(args.verifier) if args.verifier else None
    known: dict = {}  # reduced formula -> [(structure, label)] over every split
    for s, y in zip(ds.structures(), ds.labels[label]):
        known.setdefault(s.composition.reduced_formula, []).append((s, float(y)))
    matcher = make_matcher()
    base = float(np.mean((ds.subset("train").labels[label] >= lo) & (ds.subset("train").labels[label] <= hi)))
    out = {"model": str(args.model), "label": label, "window": [lo, hi], "n": args.n, "train_rate": base,
           "verifier": str(args.verifier), "runs": []}
    settings = [("unconditioned", None, 0.0)] + [(f"w={w:g}", (lo, hi), w) for w in args.weights]
    for name, target, w in settings:
        samples, dt = _sample(model, params, args.seed, n=args.n, target=target, guidance=w, batch_size=args.batch_size)
        valid = structure_validity(samples).valid
        rec = {"setting": name, "guidance": w, "sample_s": dt, "valid": float(valid.mean())}
        idx = np.flatnonzero(valid)
        if verifier is not None and len(idx):
            j = verifier.targets.index(label)
            mean, std, p = verifier.predict(samples[idx], positive=True)
            pw = window_probability(mean[:, [j]], std[:, [j]], {label: (lo, hi)}, [label], p[:, [j]],
                                    hurdle=[label] if label in verifier.hurdle else [])
            point = np.where(p[:, j] > 0.5, mean[:, j], 0.0) if label in verifier.hurdle else mean[:, j]
            rec.update(p_window_mean=float(pw.sum() / args.n),
                       point_in_window=float(((point >= lo) & (point <= hi)).sum() / args.n))
        structures = samples[idx].to_structures() if len(idx) else []
        matched = []
        for s in structures:
            y = next((y for t, y in known.get(s.composition.reduced_formula, []) if structures_match(s, t, matcher)),
                     None)
            matched.append(y)
        ys = np.array([y for y in matched if y is not None])
        rec.update(matched_known=len(ys), matched_in_window=int(((ys >= lo) & (ys <= hi)).sum()),
                   formulas_in_window=_formula_rate(structures, known, lo, hi) / args.n)
        out["runs"].append(rec)
        print(json.dumps(rec), flush=True)
        _save(args, out)
    return out


def _formula_rate(structures, known, lo, hi) -> float:
    """How many samples have a formula whose dataset structures all lie in the window
    (the label in perov_5 is nearly a function of the formula)."""
    n = 0
    for s in structures:
        ys = [y for _, y in known.get(s.composition.reduced_formula, [])]
        n += bool(ys) and all(lo <= y <= hi for y in ys)
    return float(n)


def cmd_denovo(args):
    from jaxinv.data import load_dataset
    from jaxinv.generative.evaluation import generation_metrics

    model, params = _load(args.model)
    ds = load_dataset(model.dataset)
    if args.samples:  # e.g. those the stability run drew and saved
        from jaxinv.crystal import Crystal
        from jaxinv.io import read_structures

        samples, dt = Crystal.from_structures(read_structures(args.samples)), float("nan")
        args.n = len(samples)
    else:
        samples, dt = _sample(model, params, args.seed, n=args.n, batch_size=args.batch_size)
        from jaxinv.io import write_extxyz

        write_extxyz(samples, Path(args.out).with_suffix(".extxyz"))  # kept: scoring 10,000 can fail or be redone
    relaxation = None
    if args.relax:  # outside CDVAE's protocol, which scores samples as drawn: say so beside the numbers
        from jaxinv.generative.evaluation import relax_crystals

        samples, relaxation = relax_crystals(samples, args.relax, args.relax_pressure, args.relax_steps,
                                             progress=False)
        print(f"relaxed with {args.relax} at {args.relax_pressure:g} GPa: {relaxation['statuses']}", flush=True)
    t0 = time.perf_counter()
    reference = [s for split in args.reference.split("+") for s in ds.subset(split).structures()]
    if args.reference_limit:  # a seeded random subset: how the coverage depends on the reference's size
        keep = np.random.default_rng(args.seed).permutation(len(reference))[:args.reference_limit]
        reference = [reference[i] for i in np.sort(keep)]
    metrics, _ = generation_metrics(samples, model.dataset, reference, ds.subset("train").structures(),
                                    n_jobs=args.n_jobs, progress=False)
    out = {"model": str(args.model), "n": args.n, "sample_s": dt, "crystals_per_s": args.n / dt,
           "reference": args.reference, "n_reference": len(reference), "metrics_s": time.perf_counter() - t0,
           "relaxation": relaxation, "metrics": metrics}
    print(json.dumps(out, indent=1, default=float), flush=True)
    _save(args, out)
    return out


def cmd_energy(args):
    from jaxinv.metrics import structure_validity
    from jaxinv.potentials.registry import load_potential
    from jaxinv.metrics.stability import potential_energy_fn

    model, params = _load(args.model)
    kw = {"n": args.n} if model.config.mode == "de_novo" else {}
    if model.config.mode == "csp":
        from jaxinv.data import load_dataset

        test = load_dataset(model.dataset).subset("test")
        kw = {"compositions": test.crystal(np.arange(min(args.n, len(test))), bucket=False)}
    samples, dt = _sample(model, params, args.seed, batch_size=args.batch_size, **kw)
    pot = load_potential("sevennet0")
    energy = potential_energy_fn(pot)
    v0 = structure_validity(samples).valid
    e0 = np.asarray(energy(samples.to_structures())) / samples.n_atoms
    t0 = time.perf_counter()
    e1, relaxed, statuses = _relaxed_energies(samples, pot, args.max_steps)
    relax_s = time.perf_counter() - t0
    ok = np.isfinite(e1)
    v1 = structure_validity(relaxed).valid & ok
    q = lambda e: {p: float(np.nanpercentile(e, p)) for p in (5, 25, 50, 75, 95)} if np.isfinite(e).any() else {}
    out = {"model": str(args.model), "n": len(samples), "sample_s": dt, "relax_s": relax_s, "statuses": statuses,
           "valid_before": float(v0.mean()), "valid_after": float(v1.mean()),
           "energy_before": q(np.where(v0, e0, np.nan)), "energy_after": q(e1),
           "drop_median": float(np.nanmedian(np.where(ok & v0, e0 - e1, np.nan)))}
    print(json.dumps(out, indent=1), flush=True)
    _save(args, out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    finite = np.concatenate([e0[np.isfinite(e0) & v0], e1[np.isfinite(e1)]])
    bins = np.linspace(np.percentile(finite, 1), np.percentile(finite, 99), 40)
    ax.hist(np.clip(e0[np.isfinite(e0) & v0], bins[0], bins[-1]), bins, alpha=0.6, label="as sampled (valid)")
    ax.hist(np.clip(e1[np.isfinite(e1)], bins[0], bins[-1]), bins, alpha=0.6, label="relaxed (SevenNet-0)")
    ax.set_xlabel("SevenNet-0 energy per atom (eV)")
    ax.set_ylabel("samples")
    ax.set_title(f"{model.dataset} {model.config.mode} samples, {len(samples)}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=120)
    return out


def _relaxed_energies(crystal, pot, max_steps):
    """Relax with the potential; per-atom energies (NaN where the relaxation failed),
    the relaxed crystal and the status counts."""
    from jaxinv.relax import energy_per_atom, failed, relax, status_names

    relaxed = relax(crystal, pot, max_steps=max_steps, progress=False)
    ok = ~failed(relaxed)
    names = status_names(relaxed)
    return np.where(ok, energy_per_atom(relaxed), np.nan), relaxed, {s: names.count(s) for s in set(names)}


def cmd_stability(args):
    """Stability and an S.U.N.-style rate of de novo samples (carbon_24 in issue 26).

    Protocol: the reference is the lowest SevenNet-0 energy per atom of the training
    structures after relaxation (every training structure gets a single point; the
    ``--n-ref`` lowest are relaxed and the minimum is taken). Each sample is relaxed
    with SevenNet-0 (FIRE + Frechet cell filter, fmax 0.05, at most ``--max-steps``);
    a failed relaxation (collapse, NaN) is not stable. Stable: relaxed energy within
    ``--threshold`` eV/atom of the reference. Unique and novel are judged on the
    relaxed structures with StructureMatcher (stol 0.5, angle_tol 10, ltol 0.3)
    against the training split; S.U.N. = stable and unique and novel, over all
    samples. The same protocol is applied to ``--n-anchor`` pyxtal random structures
    with the first samples' atom counts, and to the first ``--n-anchor`` test
    structures, so the rate has two anchors."""
    from jaxinv.crystal import Crystal
    from jaxinv.data import load_dataset
    from jaxinv.metrics import structure_validity
    from jaxinv.metrics.matching import uniqueness_novelty
    from jaxinv.metrics.stability import potential_energy_fn
    from jaxinv.potentials.registry import load_potential
    from jaxinv.search.composition import SearchSpace
    from jaxinv.search.seeds import random_crystals

    model, params = _load(args.model)
    ds = load_dataset(model.dataset)
    train, test = ds.subset("train"), ds.subset("test")
    pot = load_potential("sevennet0")
    t0 = time.perf_counter()
    train_structures = train.structures()
    if args.e_ref is None:
        e_sp = np.asarray(potential_energy_fn(pot)(train_structures)) / np.array([len(s) for s in train_structures])
        lowest = np.argsort(e_sp)[: args.n_ref]
        e_ref_relaxed, _, _ = _relaxed_energies(train.crystal(lowest, bucket=False), pot, args.max_steps)
        reference = {"e_ref": float(np.nanmin(e_ref_relaxed)), "lowest_single_point": float(e_sp[lowest[0]]),
                     "n_relaxed": len(lowest), "seconds": time.perf_counter() - t0,
                     "formula_of_ref": train_structures[int(lowest[int(np.nanargmin(e_ref_relaxed))])]
                     .composition.formula}
    else:  # from an earlier run of this protocol
        reference = {"e_ref": args.e_ref, "given": True}
    e_ref = reference["e_ref"]
    out = {"model": str(args.model), "dataset": model.dataset, "threshold": args.threshold,
           "max_steps": args.max_steps, "reference": reference, "runs": []}
    print(json.dumps(reference), flush=True)
    from jaxinv.io import read_structures, write_extxyz

    if args.samples:  # saved by an earlier run: the first --n of them
        samples = Crystal.from_structures(read_structures(args.samples)[:args.n])
        dt = float("nan")
    else:
        samples, dt = _sample(model, params, args.seed, n=args.n, batch_size=args.batch_size)
        # as sampled, in the model's run folder: `denovo --samples` scores the same ones
        write_extxyz(samples, Path(args.model) / "stability_samples.extxyz")
    out["n"] = len(samples)
    # pyxtal random structures with the samples' atom counts (one-element datasets only)
    elements = {e.symbol for s in train_structures for e in s.composition}
    pyx = None
    if len(elements) == 1:
        rng = np.random.default_rng(args.seed)
        symbol = elements.pop()
        pyx = Crystal.concatenate([random_crystals(SearchSpace.fixed(f"{symbol}{int(c)}"), 1, rng)[0]
                                   .pad(int(samples.n_max)) for c in np.asarray(samples.n_atoms)[:args.n_anchor]])
    sets = [("jaxinv_diffusion", samples, dt),
            ("test_split", test.crystal(np.arange(min(args.n_anchor, len(test))), bucket=False), 0.0)]
    if pyx is not None:
        sets.insert(1, ("pyxtal_random", pyx, 0.0))
    for name, crystal, gen_s in sets:
        t0 = time.perf_counter()
        valid = structure_validity(crystal).valid
        e1, relaxed, statuses = _relaxed_energies(crystal, pot, args.max_steps)
        ok = np.isfinite(e1)
        if name == "jaxinv_diffusion":  # `denovo --samples` scores the relaxed ones too (failed ones left out)
            write_extxyz(relaxed[np.flatnonzero(ok)], Path(args.model) / "stability_relaxed.extxyz")
        stable = ok & (e1 - e_ref <= args.threshold)
        un = uniqueness_novelty(relaxed.to_structures(), train_structures, include=ok, n_jobs=args.n_jobs)
        sun = stable & un["unique_novel"]
        n = len(crystal)
        rec = {"set": name, "n": n, "generate_s": gen_s, "relax_s": time.perf_counter() - t0, "statuses": statuses,
               "valid_as_sampled": float(valid.mean()), "relax_ok": float(ok.mean()),
               "stable": float(stable.sum() / n), "unique_novel": float(un["unique_novel"].sum() / n),
               "sun": float(sun.sum() / n),
               "sun_among_unique_novel": float(sun.sum() / max(1, un["unique_novel"].sum())),
               "e_above_ref": {q: float(np.nanpercentile(e1 - e_ref, q)) for q in (5, 25, 50, 75, 95)}
               if ok.any() else {}}
        out["runs"].append(rec)
        print(json.dumps(rec), flush=True)
        _save(args, out)
    return out


DIFFCSP_K1 = {"perov_5": 0.5202, "carbon_24": 0.1754}  # published, on CDVAE's splits (for orientation)


def cmd_curve(args):
    """Train one CSP model per size (resumable: a size whose run folder has a CSP score
    is read, not rerun) and collect the k = 1 scores."""
    import subprocess
    import sys

    out = {"dataset": args.data, "split": "jaxinv's 80/10/10 hash split of val.csv; sizes are random subsets of "
           "its train split", "steps": args.steps, "runs": []}
    for n in args.sizes:
        run = Path(args.root) / f"{args.data}_n{n}"
        res = run / "results.json"
        if not (res.exists() and "csp" in json.loads(res.read_text())):
            cli = "import sys; from jaxinv.cli import main; sys.exit(main())"
            cmd = [sys.executable, "-c", cli, "run", "train_generative", "model=diffcsp", f"data={args.data}",
                   f"data.limit={n}", f"train.steps={args.steps}", f"train.time_limit_min={args.time_limit_min}",
                   "n_samples=100000",  # more than any test split: one sample per test composition
                   "n_jobs=1", "progress=false", f"seed={args.seed}", f"out_dir={run}"]
            print(" ".join(cmd[3:]), flush=True)
            subprocess.run(cmd, check=True)
        r = json.loads(res.read_text())
        last = r["history"][-5:]
        rec = {"n_train_requested": n, "steps": r["steps"], "train_s": r["train_seconds"],
               "loss_last": {k: float(np.mean([h[k] for h in last])) for k in last[0] if k != "step"},
               "sample_s": r["sampling"]["seconds"], "n_test": r["sampling"]["n"], **r["csp"]["csp"],
               "validity": r["csp"]["validity"]}
        out["runs"].append(rec)
        print(json.dumps(rec), flush=True)
        _save(args, out)
    _plot_curve(out, Path(args.out).with_suffix(".png"))
    return out


def _plot_curve(out, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(out["runs"], key=lambda r: r["n_train_requested"])
    n = np.array([r["n_train_requested"] for r in runs])
    rate = np.array([r["match_rate"] for r in runs])
    half = 1.96 * np.sqrt(rate * (1 - rate) / np.array([r["n_targets"] for r in runs]))  # binomial, 95 %
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.errorbar(n, 100 * rate, yerr=100 * half, fmt="o-", capsize=3, label=f"jaxinv diffusion, {out['steps']} steps")
    if out["dataset"] in DIFFCSP_K1:
        ax.axhline(100 * DIFFCSP_K1[out["dataset"]], ls="--", c="gray", label="DiffCSP published (CDVAE split)")
    ax.set_xscale("log")
    ax.set_xticks(n, [str(x) for x in n])
    ax.minorticks_off()
    ax.set_ylim(0, 100)
    ax.set_xlabel("training crystals (random subsets of our train split)")
    ax.set_ylabel("CSP match rate, k = 1 (%)")
    ax.set_title(f"{out['dataset']}: learning curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _save(args, out):
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("csp", "guidance", "denovo", "energy", "stability"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True, help="a train_generative model=diffcsp run folder")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--n-jobs", type=int, default=1)
        s.add_argument("--out", default=None)
        s.add_argument("--n", type=int, default=1000)
        if name == "csp":
            s.add_argument("--k", type=int, default=20)
            s.add_argument("--k20-limit", type=int, default=100, help="test compositions given k candidates")
        if name == "denovo":
            s.add_argument("--samples", default=None, help="score these saved samples (extxyz) instead of sampling")
            s.add_argument("--reference", default="test", help="the splits scored against, e.g. valid+test")
            s.add_argument("--reference-limit", type=int, default=0, help="a random subset of that many")
            s.add_argument("--relax", default=None, help="a jaxinv potential (e.g. tersoff_c): relax before scoring")
            s.add_argument("--relax-pressure", type=float, default=0.0, help="GPa, cell included")
            s.add_argument("--relax-steps", type=int, default=300, help="FIRE steps at most")
        if name == "guidance":
            s.add_argument("--window", type=float, nargs=2, default=[1.5, 3.0])
            s.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
            s.add_argument("--verifier", default=None, help="a train_property model folder")
        if name in ("energy", "stability"):
            s.add_argument("--max-steps", type=int, default=300)
        if name == "stability":
            s.add_argument("--threshold", type=float, default=0.1, help="eV/atom above the reference")
            s.add_argument("--n-ref", type=int, default=32, help="lowest training structures relaxed")
            s.add_argument("--n-anchor", type=int, default=64, help="pyxtal and test structures given the protocol")
            s.add_argument("--e-ref", type=float, default=None, help="the reference (eV/atom) of an earlier run")
            s.add_argument("--samples", default=None, help="saved samples (extxyz) instead of sampling")
    c = sub.add_parser("curve")
    c.add_argument("--data", default="perov_5")
    c.add_argument("--sizes", type=int, nargs="+", required=True, help="training crystals per model")
    c.add_argument("--steps", type=int, default=12000)
    c.add_argument("--time-limit-min", type=float, default=60)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--root", required=True, help="one run folder per size goes here")
    c.add_argument("--out", default=None)
    args = p.parse_args(argv)
    name = args.data if args.cmd == "curve" else Path(args.model).name
    args.out = args.out or str(OUT / f"{args.cmd}_{name}.json")
    return globals()[f"cmd_{args.cmd}"](args)


if __name__ == "__main__":
    main()
