"""Learning curves of the property models (issue 25 item 4): test MAE and calibration
against the number of training structures.

    export OPENBLAS_NUM_THREADS=1
    nice -n 5 python benchmarks/bench_property_curves.py --models median magpie_site sevennet0
    nice -n 5 python benchmarks/bench_property_curves.py --models cgcnn --datasets perov_5 --sizes 500 1000
    python benchmarks/bench_property_curves.py --plot-only

For each dataset (perov_5 target ``heat_ref``, eV per 5-atom cell; carbon_24 target
``energy_per_atom``, eV/atom), each model and each training size (500, 1000, 2000
and ``all``), one deep ensemble is trained through
:class:`jaxinv.screening.train.PropertyModel` on a seeded random subset of the
train split and scored as ``jaxinv run train_property`` scores: each member keeps
its best epoch on the whole valid split, a σ scale is fitted on the valid split
(:func:`~jaxinv.screening.uncertainty.fit_sigma_scale`) and the test split is
scored by :func:`~jaxinv.screening.uncertainty.calibration` with the raw and the
rescaled σ. Splits: jaxinv's own 80/10/10 hash split of CDVAE's ``val.csv`` (no
upstream test.csv is used). The subsets are nested: ``sort(permutation[:n])`` of
``default_rng(seed)`` over the train split, the same for every model.

Models (``--models``):

* ``median``: predict the training median, σ = the training standard deviation
  (then rescaled on valid like the others): the floor every model must beat;
* ``magpie_site`` / ``magpie_site_oxi``: composition MLP on Magpie + site features
  (+ oxidation-state features; perov_5 only). On carbon_24 the composition is
  constant, so only the coordination-weighted site part varies;
* ``sevennet0``: the same MLP on frozen SevenNet-0 features, computed once per
  dataset and cached in ``--feature-cache`` (an .npz per dataset);
* ``cgcnn``: the crystal-graph network with ``configs/train_property.yaml``'s sizes;
* ``finetune``: SevenNet-0 fine-tuned end to end under a head first trained on the
  frozen features (``head_epochs``).

Results go to ``--out`` (a JSON list of rows) after every run; a row already there
(same dataset, model, size, seed) is skipped, so an interrupted call resumes. The
plot (``--plot``) is redrawn at the end from every row in the file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = HERE / "results" / "property_curves.json"
PLOT = HERE / "property_curves.png"
FEATURE_CACHE = Path("/tmp/jaxinv_curves")

TARGETS = {"perov_5": "heat_ref", "carbon_24": "energy_per_atom"}
SIZES = ("500", "1000", "2000", "all")
MODELS = ("median", "magpie_site", "magpie_site_oxi", "sevennet0", "cgcnn", "finetune")

# the train section of configs/train_property.yaml (epochs 200, batch 128) over TrainConfig's defaults
BASE_TRAIN = {"epochs": 200, "batch_size": 128}
TRAIN = {
    "magpie_site": {},
    "magpie_site_oxi": {},
    "sevennet0": {},
    "cgcnn": {},
    # the brief's fine-tuning recipe: a frozen head first, then a few end-to-end epochs
    "finetune": {"head_epochs": 200, "epochs": 3, "batch_size": 32, "lr": 1e-3, "n_members": 3, "chunk_epochs": 1},
}

# Matbench v0.1 matbench_perovskites (e_form, eV/unit cell; 18,928 structures, 5-fold: ~15,142 training per fold)
MATBENCH_PEROVSKITES = {"train_size": 15142, "mae": {"CGCNN": 0.045, "ALIGNN": 0.029, "coGN": 0.027}}
GOALS = {"perov_5": 0.08, "carbon_24": 0.03}  # issue 25: test MAE goals (eV/cell, eV/atom)


# ------------------------------------------------------------------ data
def subset_indices(n_train: int, size: str, seed: int = 0) -> np.ndarray:
    """Rows of the train split for ``size`` ('all' or a count): the first ``size`` of one
    seeded permutation, sorted; nested across sizes and the same for every model."""
    if size == "all" or int(size) >= n_train:
        return np.arange(n_train)
    perm = np.random.default_rng(seed).permutation(n_train)
    return np.sort(perm[: int(size)])


class Data:
    """A dataset's splits, labels and model inputs, computed once per process."""

    def __init__(self, name: str, feature_cache: Path = FEATURE_CACHE):
        from jaxinv.data import load_dataset

        self.name, self.target = name, TARGETS[name]
        self.ds = load_dataset(name)
        self.splits = {s: self.ds.subset(s) for s in ("train", "valid", "test")}
        self.y = {s: np.asarray(d.labels[self.target], np.float64)[:, None] for s, d in self.splits.items()}
        self.unit = self.ds.units.get(self.target, "")
        self.feature_cache = Path(feature_cache)
        self._inputs: dict = {}
        self.input_seconds: dict = {}

    def features(self, kind: str) -> dict:
        """Feature matrices of the three splits (sevennet0: cached in an .npz)."""
        from jaxinv.screening.features import featurize

        if kind in self._inputs:
            return self._inputs[kind]
        t0 = time.perf_counter()
        path = self.feature_cache / f"{kind}_{self.name}.npz"
        out = None
        if kind == "sevennet0" and path.exists():
            z = np.load(path)
            if all(np.array_equal(z[f"{s}_ids"], np.asarray(d.ids).astype(str)) for s, d in self.splits.items()):
                out = {s: z[s] for s in self.splits}
                self.input_seconds[kind] = float(z["seconds"]) if "seconds" in z else float("nan")
        if out is None:
            out = {s: np.asarray(featurize(d.crystal(), kind)) for s, d in self.splits.items()}
            self.input_seconds[kind] = time.perf_counter() - t0
            if kind == "sevennet0":
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, seconds=self.input_seconds[kind], **out,
                         **{f"{s}_ids": np.asarray(d.ids).astype(str) for s, d in self.splits.items()})
        self._inputs[kind] = out
        return out

    def graphs(self, model) -> dict:
        """CGCNN graph inputs of the three splits (rows are structures)."""
        key = f"graphs_{model.cutoff:g}"
        if key not in self._inputs:
            t0 = time.perf_counter()
            self._inputs[key] = {s: model.raw_inputs(d.crystal()) for s, d in self.splits.items()}
            self.input_seconds["cgcnn"] = time.perf_counter() - t0
        return self._inputs[key]


# ---------------------------------------------------------------- models
def build(model: str, target: str, module: dict | None = None):
    """The PropertyModel of ``model``; ``module``: overrides of its module's arguments
    (``cutoff`` also sets the graph cutoff of a CGCNN)."""
    from jaxinv.screening.train import PropertyModel

    module = dict(module or {})
    if model == "cgcnn":  # configs/train_property.yaml's model section, unless overridden
        kw = {"features": 64, "n_conv": 3, "n_rbf": 40, "cutoff": 5.0, **module}
        return PropertyModel("cgcnn", (target,), kw, cutoff=kw["cutoff"])
    if module:
        raise ValueError(f"--model-arg is implemented for cgcnn only, not {model!r}")
    if model in ("magpie_site", "magpie_site_oxi", "sevennet0"):
        return PropertyModel("composition", (target,), {"hidden": [128, 64]}, features=model)
    if model == "finetune":
        return PropertyModel("finetune", (target,), {"hidden": [128, 64], "backbone_lr": 0.1}, features="sevennet0")
    raise ValueError(f"unknown model {model!r}; use one of {MODELS}")


def train_config(model: str, seed: int, overrides: dict | None = None):
    from jaxinv.screening.train import TrainConfig

    kw = {**BASE_TRAIN, **TRAIN.get(model, {}), **((overrides or {}).get(model, {})), "seed": seed}
    return TrainConfig(**kw)


def _take(tree, idx):
    import jax

    return jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], tree)


def run_one(data: Data, model: str, size: str, seed: int = 0, overrides: dict | None = None,
            module: dict | None = None) -> dict:
    """Train one ensemble on the ``size`` subset of the train split and score it on test."""
    from jaxinv.screening.uncertainty import calibration, fit_sigma_scale

    idx = subset_indices(len(data.splits["train"]), size, seed)
    y_tr, y_v, y_t = data.y["train"][idx], data.y["valid"], data.y["test"]
    load0 = os.getloadavg()
    row = {"dataset": data.name, "target": data.target, "unit": data.unit, "model": model, "size": str(size),
           "seed": seed, "n_train": int(len(idx)), "n_valid": int(len(y_v)), "n_test": int(len(y_t)),
           "split_source": data.ds.split_source}
    t_inputs = 0.0
    if model == "median":
        t0 = time.perf_counter()
        med, sd = float(np.median(y_tr)), float(np.std(y_tr))
        mean_v, std_v = np.full(len(y_v), med), np.full(len(y_v), sd)
        mean_t, std_t = np.full(len(y_t), med), np.full(len(y_t), sd)
        row.update(kind="median", features=None, train=None)
        t_train = time.perf_counter() - t0
        extra = {}
    else:
        m = build(model, data.target, (module or {}).get(model))
        t0 = time.perf_counter()
        if model == "cgcnn":
            g = data.graphs(m)
            x_tr, x_v, x_t = _take(g["train"], idx), g["valid"], g["test"]
        elif model == "finetune":
            x_tr = m.raw_inputs(data.splits["train"].subset(idx).crystal())
            x_v, x_t = (m.raw_inputs(data.splits[s].crystal()) for s in ("valid", "test"))
        else:
            f = data.features(model)
            x_tr, x_v, x_t = f["train"][idx], f["valid"], f["test"]
        t_inputs = time.perf_counter() - t0
        tc = train_config(model, seed, overrides)
        t0 = time.perf_counter()
        hist = m.fit(x_tr, y_tr, tc, val=(x_v, y_v))
        t_train = time.perf_counter() - t0
        mv, sv = m.predict_inputs(m.scale_inputs(x_v))
        mt, st = m.predict_inputs(m.scale_inputs(x_t))
        mean_v, std_v, mean_t, std_t = mv[:, 0], sv[:, 0], mt[:, 0], st[:, 0]
        row.update(kind=m.kind, features=m.features, train=dataclasses.asdict(tc),
                   module={k: v for k, v in m.module_kwargs.items() if k not in ("feature_mean", "feature_std")})
        extra = {"stopped_epoch": hist.get("stopped_epoch"),
                 "best_val_nll": np.asarray(hist.get("best_val_nll"), float).tolist(),
                 "graph_edge_capacity": hist.get("graph_edge_capacity")}
    scale = fit_sigma_scale(y_v[:, 0], mean_v, std_v)
    row.update({
        "test": calibration(y_t[:, 0], mean_t, std_t),
        "test_recalibrated": calibration(y_t[:, 0], mean_t, std_t * scale),
        "valid_mae": float(np.mean(np.abs(mean_v - y_v[:, 0]))),
        "sigma_scale": float(scale),
        "seconds": {"train": t_train, "inputs": t_inputs,
                    "features_once": data.input_seconds.get(model)},
        "loadavg": {"start": load0[0], "end": os.getloadavg()[0]},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    })
    return row


# ------------------------------------------------------------ the loop
def _key(r) -> tuple:
    return r["dataset"], r["model"], str(r["size"]), int(r["seed"])


def load_rows(path: Path) -> list:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else []


def save_rows(rows: list, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(path)


def run_curves(datasets=tuple(TARGETS), models=MODELS, sizes=SIZES, out: Path = OUT, seed: int = 0,
               overrides: dict | None = None, feature_cache: Path = FEATURE_CACHE, log=print,
               module: dict | None = None) -> list:
    """Every (dataset, model, size) not yet in ``out``, in the order model, dataset, size;
    ``out`` is rewritten after every run. Returns the rows run by this call."""
    rows = load_rows(out)
    done = {_key(r) for r in rows}
    data: dict = {}
    ran = []
    for model in models:
        for name in datasets:
            if model == "magpie_site_oxi" and name != "perov_5":
                continue  # oxidation-state features are for ionic compounds; carbon_24 is pure carbon
            for size in map(str, sizes):
                if (name, model, size, seed) in done:
                    log(f"skip {name} {model} {size} (done)")
                    continue
                if name not in data:
                    data[name] = Data(name, feature_cache)
                n_train = len(data[name].splits["train"])
                if size != "all" and int(size) >= n_train:
                    log(f"skip {name} {model} {size}: the train split has only {n_train} ('all')")
                    continue
                row = run_one(data[name], model, size, seed, overrides, module)
                rows = load_rows(out)  # another process may have added rows meanwhile
                rows = [r for r in rows if _key(r) != _key(row)] + [row]
                save_rows(rows, out)
                done.add(_key(row))
                ran.append(row)
                t, c = row["test"], row["test_recalibrated"]
                log(f"{name:9s} {model:15s} n={row['n_train']:5d}  MAE {t['mae']:.4f} RMSE {t['rmse']:.4f}  "
                    f"±1σ/±2σ raw {t['within_1sigma']:.3f}/{t['within_2sigma']:.3f}  recal x{row['sigma_scale']:.2f} "
                    f"{c['within_1sigma']:.3f}/{c['within_2sigma']:.3f}  train {row['seconds']['train']:.1f} s  "
                    f"load {row['loadavg']['start']:.1f}-{row['loadavg']['end']:.1f}")
    return ran


# ---------------------------------------------------------------- plot
LABELS = {"median": "train median", "magpie_site": "Magpie + site MLP", "magpie_site_oxi": "Magpie + site + oxi MLP",
          "sevennet0": "frozen SevenNet-0 + MLP", "cgcnn": "CGCNN", "finetune": "fine-tuned SevenNet-0"}


def distinct(rows: list, seed: int = 0) -> list:
    """The rows of ``seed``, one per (dataset, model, training size): a count at or
    above the train split's size is the same run as 'all' (carbon_24 has 1,627)."""
    out = {}
    for r in rows:
        if int(r["seed"]) == seed:
            k = (r["dataset"], r["model"], r["n_train"])
            if k not in out or r["size"] == "all":
                out[k] = r
    return list(out.values())


def plot(rows: list, path: Path = PLOT, seed: int = 0) -> Path:
    from jaxinv.plotting import pyplot, save, value_axis

    rows = distinct(rows, seed)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 6.2))
    colors = dict(zip(MODELS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, name in zip(axes, TARGETS):
        rs = [r for r in rows if r["dataset"] == name and int(r["seed"]) == seed]
        xs, ys = [], []
        for model in MODELS:
            pts = sorted((r["n_train"], r["test"]["mae"]) for r in rs if r["model"] == model)
            if not pts:
                continue
            x, y = map(np.asarray, zip(*pts))
            style = {"ls": "--", "color": "k", "marker": None} if model == "median" else \
                {"ls": "-", "color": colors[model], "marker": "o"}
            if model == "finetune":  # one or few points, often on top of the frozen head's
                style.update(marker="*", ms=11, mfc="none")
            ax.plot(x, y, label=LABELS[model], lw=1.5, **{"ms": 4, **style})
            xs.append(x)
            ys.append(y)
        unit = rs[0]["unit"] if rs else ""
        if name == "perov_5":
            mb = MATBENCH_PEROVSKITES
            for (label, mae), marker in zip(mb["mae"].items(), ("s", "^", "D")):
                ax.plot([mb["train_size"]], [mae], marker, color="0.3", mfc="none", ms=8,
                        label=f"Matbench {label} ({mae} eV/cell, ~{mb['train_size']:,} train)")
                ys.append(np.asarray([mae]))
            xs.append(np.asarray([mb["train_size"]]))
            unit = "eV/cell"
        ax.axhline(GOALS[name], color="tab:red", lw=0.8, ls=":", label=f"issue 25 goal ({GOALS[name]})")
        ys.append(np.asarray([GOALS[name]]))
        if xs:
            value_axis(ax, xs, "x", log=True)
            value_axis(ax, ys, "y", log=True)
        ax.set_xlabel("training structures")
        ax.set_ylabel(f"test MAE of {TARGETS[name]} ({unit})")
        ax.set_title(f"{name}: {TARGETS[name]}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle("Property models: test MAE against training-set size (jaxinv's 80/10/10 split of CDVAE val.csv)",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def table(rows: list, seed: int = 0) -> str:
    """Markdown table: model x size with MAE, recalibrated ±1σ / ±2σ and train seconds."""
    lines = ["| dataset | model | n train | test MAE | RMSE | ±1σ raw / recal. | ±2σ raw / recal. | σ scale | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(MODELS)}
    for r in sorted(distinct(rows, seed),
                    key=lambda r: (list(TARGETS).index(r["dataset"]), order.get(r["model"], 99), r["n_train"])):
        t, c = r["test"], r["test_recalibrated"]
        lines.append(f"| {r['dataset']} | {r['model']} | {r['n_train']:,} | {t['mae']:.4f} | {t['rmse']:.4f} | "
                     f"{t['within_1sigma']:.3f} / {c['within_1sigma']:.3f} | {t['within_2sigma']:.3f} / "
                     f"{c['within_2sigma']:.3f} | {r['sigma_scale']:.2f} | {r['seconds']['train']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), help="training structures, or 'all'")
    ap.add_argument("--seed", type=int, default=0, help="seeds the subsets and the training")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plot", type=Path, default=PLOT)
    ap.add_argument("--feature-cache", type=Path, default=FEATURE_CACHE)
    ap.add_argument("--train", action="append", default=[], metavar="MODEL.FIELD=VALUE",
                    help="override a TrainConfig field for one model, e.g. cgcnn.epochs=60 (recorded in each row)")
    ap.add_argument("--model-arg", action="append", default=[], metavar="MODEL.ARG=VALUE",
                    help="override a module argument, e.g. cgcnn.cutoff=4.0 (cgcnn only; recorded in each row)")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args(argv)
    overrides: dict = {}
    for item in args.train:
        lhs, value = item.split("=", 1)
        model, fld = lhs.split(".", 1)
        overrides.setdefault(model, {})[fld] = json.loads(value)
    module: dict = {}
    for item in args.model_arg:
        lhs, value = item.split("=", 1)
        model, fld = lhs.split(".", 1)
        module.setdefault(model, {})[fld] = json.loads(value)
    if not args.plot_only:
        run_curves(args.datasets, args.models, args.sizes, args.out, args.seed, overrides, args.feature_cache,
                   module=module)
    rows = load_rows(args.out)
    if rows:
        print(table(rows, args.seed))
        print(f"plot: {plot(rows, args.plot, args.seed)}")


if __name__ == "__main__":
    main()
