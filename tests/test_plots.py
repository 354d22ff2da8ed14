"""The PNGs people read: tick labels that can be told apart and do not overlap,
target windows on the screen's predictions, and a learning curve from every
training run (property ensembles and generative models)."""
import json
import math

import numpy as np
import pytest

from jaxinv.plotting import (Curve, Panel, learning_curve_figure, pyplot, tick_labels_overlap, value_axis,
                             visible_tick_labels)

plt = pyplot()


def _labels(axis):
    return [t.get_text() for t in visible_tick_labels(axis)]


def _readable(ax, which="y", at_most=8):
    """Distinct, few, non-overlapping tick labels on ``ax``'s axis ``which``."""
    labels = _labels(ax.yaxis if which == "y" else ax.xaxis)
    assert 2 <= len(labels) <= at_most, labels
    assert len(set(labels)) == len(labels), labels
    assert tick_labels_overlap(ax, which) == []
    assert (ax.yaxis if which == "y" else ax.xaxis).get_offset_text().get_text() == ""  # no "+1.01e-1" corner text
    return labels


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_learning_curve_over_a_tiny_range_is_linear_with_plain_distinct_labels():
    e = np.arange(1, 41)
    y = 0.101 + 0.003 * np.exp(-e / 8)  # 0.101 ... 0.104: less than a decade
    fig = learning_curve_figure([Panel("valid MAE", [Curve(e, y, "train"), Curve(e, y + 0.0002, "valid")])])
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    labels = _readable(ax, "y")
    values = [float(s) for s in labels]  # plain numbers, no 10^x mathtext
    assert min(values) >= 0.1005 and max(values) <= 0.1045
    assert len({f"{v:.4f}" for v in values}) == len(values)
    _readable(ax, "x")


def test_learning_curve_over_decades_is_log_with_readable_major_ticks():
    e = np.arange(1, 41)
    y = 10.0 * np.exp(-e / 4) + 1e-3  # 1e-3 ... 8: almost four decades
    fig = learning_curve_figure([Panel("loss", [Curve(e, y, "train")])])
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = _readable(ax, "y")
    assert {"0.01", "0.1", "1"} <= set(labels)
    assert not any(t.get_text() for t in ax.yaxis.get_minorticklabels())  # minor ticks unlabelled


@pytest.mark.parametrize("lo,ratio", [(0.101, 1.0001), (0.5, 1.5), (3.0, 9.9), (0.101, 50.0), (7.0, 999.0),
                                      (1e-7, 1e4), (-3.0, 2.0), (1234.0, 1e6)])
def test_value_axis_labels_stay_readable_over_any_range(lo, ratio):
    fig, ax = plt.subplots(figsize=(4.4, 3.4))
    y = lo * ratio ** np.linspace(1, 0, 50)
    ax.plot(np.arange(50), y)
    scale = value_axis(ax, y)
    assert scale == ("log" if lo > 0 and ratio >= 10 else "linear")
    _readable(ax, "y")


def test_overlap_check_catches_crowded_labels():
    fig, ax = plt.subplots(figsize=(1.5, 1.5))
    ax.plot([0, 1000], [0, 1])
    ax.set_xticks(np.arange(0, 1001, 50))  # 21 labels on 1.5 inches
    assert tick_labels_overlap(ax, "x")


def test_funnel_ticks_do_not_overlap():
    from jaxinv.screening.funnel import StageRecord
    from jaxinv.screening.report import _funnel_figure

    # counts on which matplotlib's default log labels (3x10^3, 4x10^3, ...) collided
    for counts in [(9000, 4000, 1100), (300, 120, 60), (241, 241, 11), (2_000_000, 30_000, 0)]:
        a, b, c = counts
        fig = _funnel_figure([StageRecord("composition", a, b), StageRecord("property", b, c)])
        ax = fig.axes[0]
        labels = _readable(ax, "x")
        assert set(labels) <= {"1", "10", "100", "1k", "10k", "100k", "1M", "10M"}, labels
        assert ax.get_xlim()[0] < 1.0  # bars start below 1, so a stage keeping 11 is not drawn as nothing
        # every printed count fits inside the axes
        fig.canvas.draw()
        box = ax.get_window_extent()
        for t in ax.texts:
            assert t.get_window_extent().x1 <= box.x1


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return {"pred_heat_ref": rng.normal(0.5, 0.6, n), "sigma_heat_ref": rng.uniform(0.05, 0.3, n),
            "pred_dir_gap": rng.normal(2.3, 0.9, n), "sigma_dir_gap": rng.uniform(0.1, 0.5, n)}


def test_predictions_plot_shades_the_target_windows():
    from matplotlib.patches import Rectangle

    from jaxinv.screening.report import _predictions_figure

    windows = {"heat_ref": (-math.inf, 1.0), "dir_gap": (1.5, 3.0)}
    fig = _predictions_figure(_table(), "heat_ref", "dir_gap", windows)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "heat_ref window: ≤ 1" in legend and "dir_gap window: 1.5 to 3" in legend
    bands = [p for p in ax.patches if isinstance(p, Rectangle) and "window" in p.get_label()]
    assert len(bands) == 2
    vband = next(p for p in bands if p.get_label().startswith("heat_ref"))  # x: from the left edge to 1
    hband = next(p for p in bands if p.get_label().startswith("dir_gap"))  # y: 1.5 to 3
    assert vband.get_x() == pytest.approx(ax.get_xlim()[0]) and vband.get_x() + vband.get_width() == pytest.approx(1.0)
    assert hband.get_y() == pytest.approx(1.5) and hband.get_y() + hband.get_height() == pytest.approx(3.0)
    _readable(ax, "x")
    _readable(ax, "y")
    # a single predicted property: σ against the prediction, with its window
    fig = _predictions_figure({"pred_dir_gap": _table()["pred_dir_gap"], "sigma_dir_gap": _table()["sigma_dir_gap"]},
                              "dir_gap", None, {"dir_gap": (1.5, 3.0)})
    assert "dir_gap window: 1.5 to 3" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_windows_come_from_the_stages_and_reach_the_report(tmp_path):
    from jaxinv.screening.funnel import Stage
    from jaxinv.screening.report import _plot_predictions, stage_windows

    stages = [Stage("composition", None, {}),
              Stage("property", None, {"windows": {"heat_ref": [-math.inf, 1.0], "dir_gap": [1.5, 3.0]}, "k": 2}),
              Stage("rank", None, {"windows": {"pred_dir_gap": [None, 2.5]}})]
    w = stage_windows(stages)
    assert w == {"heat_ref": (-math.inf, 1.0), "dir_gap": (1.5, 2.5)}  # two stages on dir_gap: both apply
    assert _plot_predictions(_table(), "heat_ref", "dir_gap", tmp_path / "p.png", w)
    assert (tmp_path / "p.png").stat().st_size > 5000


def _fake_property_history(epochs=12, members=3, targets=("heat_ref", "dir_gap")):
    rng = np.random.default_rng(1)
    e = np.arange(1, epochs + 1)
    decay = np.exp(-e / 4)[:, None]
    t = len(targets)
    return {"epoch": e.tolist(), "warmup_epochs": 4, "targets": list(targets),
            "train_loss": (1 + decay[:, 0]).tolist(),
            "train_nll": (decay - 0.5 + 0.05 * rng.random((epochs, members))).tolist(),
            "val_nll": (decay - 0.3 + 0.05 * rng.random((epochs, members))).tolist(),
            "train_mae": (0.101 + 0.002 * decay[..., None] + 1e-4 * rng.random((epochs, members, t))).tolist(),
            "val_mae": (0.102 + 0.002 * decay[..., None] + 1e-4 * rng.random((epochs, members, t))).tolist()}


def test_property_learning_curve_panels_from_a_history(tmp_path):
    from jaxinv.plotting import property_learning_curve, property_panels

    hist = _fake_property_history()
    panels = property_panels(hist, {"heat_ref": "eV/cell", "dir_gap": "eV"})
    assert [p.title for p in panels] == ["Gaussian NLL (standardized targets)", "heat_ref MAE (eV/cell)",
                                         "dir_gap MAE (eV)"]
    # per member (thin, unlabelled) and the member mean, for train and valid
    assert len(panels[1].curves) == 2 * (3 + 1)
    fig = learning_curve_figure(panels)
    for ax in fig.axes:
        if ax.get_visible():
            _readable(ax, "y")
            _readable(ax, "x")
    out = property_learning_curve(hist, tmp_path / "lc.png")
    assert out.stat().st_size > 10_000


class _FakeModel:
    """Enough of a GenerativeModel for make_train_step: a cached step function."""

    def __init__(self):
        def step(state, batch, key):
            s = int(state.step)
            return state.replace(step=state.step + 1), {"loss": np.float32(100.0 / (s + 1)), "kl": np.float32(s),
                                                        "beta": np.float32(0.1)}

        self.jit_cache = {"train_step": step}


def test_loss_log_records_block_means_of_every_step(tmp_path):
    from jaxinv.generative.steps import TrainState, make_train_step, read_loss_log, record_losses

    model = _FakeModel()
    assert make_train_step(model) is model.jit_cache["train_step"]  # nothing recorded outside the block
    with record_losses(model, every=4, path=tmp_path / "losses.jsonl") as log:
        step_fn = make_train_step(model)
        state = TrainState(np.int32(0), None, None)
        for _ in range(10):
            state, _ = step_fn(state, None, None)
    assert make_train_step(model) is model.jit_cache["train_step"]
    assert [r["step"] for r in log.records] == [4, 8, 10] and [r["n"] for r in log.records] == [4, 4, 2]
    assert log.records[0]["kl"] == pytest.approx(1.5)  # mean of steps 0..3
    assert log.records[2]["loss"] == pytest.approx((100 / 9 + 100 / 10) / 2)
    assert read_loss_log(tmp_path / "losses.jsonl") == log.records
    # a killed run resumed from its checkpoint at step 4 writes steps 5.. again: the new records win
    with open(tmp_path / "losses.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 8, "n": 4, "loss": -1.0}) + "\n" + '{"step": 1')  # and a line cut short
    merged = read_loss_log(tmp_path / "losses.jsonl")
    assert [r["step"] for r in merged] == [4, 8] and merged[-1]["loss"] == -1.0


def test_generative_learning_curve_has_train_and_valid_losses(tmp_path):
    from jaxinv.plotting import generative_learning_curve, generative_panels

    train = [{"step": s, "n": 1, "loss": 100.0 / s, "kl": 1 + 0.05 * s, "beta": 0.5, "species_acc": 0.2}
             for s in range(1, 41)]
    valid = [{"step": s, "valid/loss": 90.0 / s, "valid/kl": 1 + 0.05 * s, "sample/valid": 0.5}
             for s in (10, 20, 30, 40)]
    panels = generative_panels(train, valid)
    assert [p.title for p in panels] == ["loss", "kl"]  # losses only: no beta, accuracies or sample metrics
    assert [c.label for c in panels[0].curves] == ["train", "valid"]
    fig = learning_curve_figure(panels, "training step")
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"
    for ax in fig.axes:
        _readable(ax, "y")
        _readable(ax, "x")
    # a GAN: losses that change sign get a linear axis
    gan = [{"step": s, "critic_loss": 5.0 / s, "gen_loss": 0.05 * math.sin(s / 5), "wasserstein": 0.3} for s in
           range(1, 41)]
    fig = learning_curve_figure(generative_panels(gan, []), "training step")
    assert [ax.get_yscale() for ax in fig.axes if ax.get_visible()] == ["log", "linear", "linear"]
    assert generative_learning_curve(train, valid, tmp_path / "lc.png").stat().st_size > 10_000


def test_train_property_records_history_and_writes_a_learning_curve(tmp_path, monkeypatch):
    import jaxinv.plotting
    from jaxinv.cli import run_experiment

    seen = []
    plot = jaxinv.plotting.property_learning_curve
    monkeypatch.setattr(jaxinv.plotting, "property_learning_curve", lambda hist, *a, **k: seen.append(hist) or
                        plot(hist, *a, **k))
    out = tmp_path / "tp"
    run_experiment("train_property", [f"out_dir={out}", "progress=false", "data.limit=64", "train.epochs=4",
                                      "train.n_members=2", "model.hidden=[8]", "model.features=magpie",
                                      "checkpoint=false", "train.chunk_epochs=2", "train.batch_size=32",
                                      "targets=[heat_ref,dir_gap]"])
    assert (out / "learning_curve.png").stat().st_size > 10_000
    (hist,) = seen
    # dir_gap is mostly 0: modelled as a hurdle, whose classifier has its own MAE panel
    assert hist["epoch"] == [1, 2, 3, 4] and hist["targets"] == ["heat_ref", "dir_gap", "P(dir_gap > 0)"]
    for k, shape in [("train_nll", (4, 2)), ("val_nll", (4, 2)), ("train_mae", (4, 2, 3)), ("val_mae", (4, 2, 3))]:
        a = np.asarray(hist[k])
        assert a.shape == shape and np.isfinite(a).all(), k
    assert (np.asarray(hist["val_mae"]) > 0).all()
    # each member keeps its best validation NLL after the warm-up (the last warm-up epoch counts as seen)
    w = hist["warmup_epochs"]
    val = np.asarray(hist["val_nll"])
    np.testing.assert_allclose(hist["best_val_nll"], val[max(w - 1, 0):].min(0), rtol=1e-5)


def test_parity_plot_reports_mae_and_coverage(tmp_path):
    from jaxinv.plotting import parity_figure, parity_plot

    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    sd = rng.uniform(0.2, 0.8, size=300)
    mu = y + rng.normal(scale=0.5, size=300)
    mu[0] = np.nan  # a failed prediction is left out, not plotted at NaN
    panels = [{"y": y, "mean": mu, "std": sd, "name": "heat_ref", "unit": "eV"},
              {"y": np.abs(y), "mean": np.abs(mu), "std": sd, "name": "gap", "note": "given > 0"}]
    assert parity_plot(panels, tmp_path / "parity.png", "test").stat().st_size > 10_000
    fig = parity_figure(panels)
    text = fig.axes[0].texts[0].get_text()
    err = np.abs(mu[1:] - y[1:])
    assert "n = 299" in text and f"MAE = {err.mean():.3g} (eV)" in text
    assert f"within ±1σ: {np.mean(err <= sd[1:]):.2f}" in text and f"within ±2σ: {np.mean(err <= 2 * sd[1:]):.2f}" in text
    assert fig.axes[1].get_title() == "gap (given > 0)"
    _readable(fig.axes[0], "x")
    _readable(fig.axes[0], "y")


@pytest.mark.slow
def test_train_generative_writes_a_learning_curve(tmp_path):
    from jaxinv.cli import run_experiment

    out = tmp_path / "tg"
    tiny = ["model.latent=8", "model.hidden=32", "model.enc_hidden=16", "model.encoder=mlp", "data.limit=64",
            "train.batch_size=16", "train.eval_every=2", "train.eval_size=16", "check_samples=0", "n_samples=4",
            "n_cif=1", "progress=false", "train.steps=4", "evaluate=false", f"out_dir={out}"]
    run_experiment("train_generative", tiny)
    records = [json.loads(line) for line in (out / "train_losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all("loss" in r for r in records)
    assert (out / "learning_curve.png").stat().st_size > 10_000


def test_train_potential_learning_curve_is_readable_over_tiny_ranges(tmp_path, monkeypatch):
    """The NequIP trainer's curve used semilogy on every panel: MAEs that move by 3% got
    labels like 1.015x10^-1."""
    from jaxinv.cli import load_experiment
    from jaxinv import plotting

    figures = []
    monkeypatch.setattr(plotting, "save", lambda fig, path, dpi=120: figures.append(fig) or path)
    e = np.arange(1, 31)
    history = [{"epoch": int(k), "loss": 10.0 * np.exp(-k / 4), "valid_energy_mae": 0.101 + 0.003 * np.exp(-k / 8),
                "valid_force_mae": 0.2 + 0.01 * np.exp(-k / 8)} for k in e]
    load_experiment("train_potential")._plot(history, tmp_path / "learning_curve.png")
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_yscale() for ax in axes] == ["log", "linear", "linear"]
    for ax in axes:
        _readable(ax, "y")
