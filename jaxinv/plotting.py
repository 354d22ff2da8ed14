"""Shared plotting helpers for the PNGs the experiments write (matplotlib, Agg).

The aim is plots a person can read: few, distinct tick labels written as plain
numbers, a log axis only when the data span at least a decade, and target
windows drawn where a screen has them.

* :func:`value_axis`: pick linear or log scale for an axis from its data and give
  it readable ticks (the one place the tick rules live).
* :func:`learning_curve`: panels of curves against epoch or step, one PNG.
* :func:`shade_windows`: target windows as shaded bands on a scatter/parity plot,
  with the bounds in the legend.
* :func:`count_axis`: a log axis for counts (funnels) with labels 1, 10, 100, 1k, ...
* :func:`property_learning_curve`, :func:`generative_learning_curve`: the
  ``learning_curve.png`` of ``train_property`` and ``train_generative``.
* :func:`parity_plot`: predicted against true values with ±1σ bars, one panel per
  target (``parity.png`` of ``train_property``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from matplotlib.ticker import Formatter  # (pyplot, which needs the backend set, is imported in pyplot())

__all__ = ["pyplot", "save", "Curve", "Panel", "PlainFormatter", "value_axis", "count_axis", "learning_curve",
           "learning_curve_figure", "shade_windows", "window_label", "window_text", "tick_labels_overlap",
           "visible_tick_labels", "property_panels", "property_learning_curve", "generative_panels",
           "generative_learning_curve", "parity_plot", "parity_figure"]

MAX_TICKS = 6


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- tick labels
def _plain(x: float, decimals: int) -> str:
    s = f"{x:.{max(decimals, 0)}f}"
    if s.startswith("-") and float(s) == 0.0:
        s = s[1:]
    return s


def _sci(x: float, digits: int) -> str:
    if x == 0:
        return "0"
    e = int(math.floor(math.log10(abs(x))))
    m = x / 10 ** e
    ms = f"{m:.{max(digits, 0)}f}"
    if float(ms) in (1.0, -1.0):
        return f"$10^{{{e}}}$" if float(ms) > 0 else f"$-10^{{{e}}}$"
    return f"${ms}\\times10^{{{e}}}$"


class PlainFormatter(Formatter):
    """Tick labels as plain numbers with just enough decimals to tell neighbours
    apart (0.1010, 0.1015, ...) and no offset or multiplier text; scientific
    notation only for very small or very large magnitudes."""

    def __init__(self):
        self.locs: Sequence[float] = []

    def set_locs(self, locs):
        self.locs = [float(v) for v in locs]

    def _layout(self):
        locs = np.asarray(self.locs, float)
        locs = locs[np.isfinite(locs)]
        if len(locs) == 0:
            return "plain", 2
        big = float(np.max(np.abs(locs)))
        steps = np.diff(np.sort(locs))
        steps = steps[steps > 0]
        step = float(steps.min()) if len(steps) else (big or 1.0)
        if big and (big >= 1e6 or big < 1e-3):
            return "sci", max(0, int(math.ceil(math.log10(big / step) - 1e-9)))
        return "plain", max(0, -int(math.floor(math.log10(step) + 1e-9)))

    def __call__(self, x, pos=None):
        kind, n = self._layout()
        return _sci(x, n) if kind == "sci" else _plain(x, n)

    def format_data_short(self, value):
        return f"{value:.6g}"

    def get_offset(self):
        return ""


def _log_label(x: float, pos=None) -> str:
    if x <= 0 or not np.isfinite(x):
        return ""
    if 1e-3 <= x < 1e5:
        return f"{x:g}"
    m = x / 10 ** math.floor(math.log10(x))
    return _sci(x, 0 if abs(m - round(m)) < 1e-6 else 1)


def _finite(values: Iterable) -> np.ndarray:
    parts = [np.ravel(np.asarray(v, float)) for v in values]
    a = np.concatenate(parts) if parts else np.zeros(0)
    return a[np.isfinite(a)]


def value_axis(ax, values, which: str = "y", log: bool | None = None, max_ticks: int = MAX_TICKS) -> str:
    """Scale and ticks of axis ``which`` ('x' or 'y') of ``ax`` for ``values``
    (an array or a list of arrays). ``log=None`` decides: log when every value is
    positive and they span at least a decade (max/min >= 10), else linear.
    Linear axes get at most ``max_ticks`` ticks with :class:`PlainFormatter`; log
    axes get decade ticks (with 2 and 5, or 3, between them over less than three
    decades) with plain labels, and unlabelled minor ticks. Returns 'log' or 'linear'."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    v = _finite(values if isinstance(values, (list, tuple)) else [values])
    if log is None:
        log = bool(len(v) and v.min() > 0 and v.max() / v.min() >= 10.0)
    axis = ax.yaxis if which == "y" else ax.xaxis
    if log:
        (ax.set_yscale if which == "y" else ax.set_xscale)("log")
        decades = math.log10(v.max() / v.min()) if len(v) and v.min() > 0 else 3.0
        subs = (1.0, 2.0, 5.0) if decades < 1.7 else (1.0, 3.0) if decades < 3 else (1.0,)
        axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=max_ticks + 1))
        axis.set_major_formatter(FuncFormatter(_log_label))
        axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(2, 10)), numticks=12))
        axis.set_minor_formatter(NullFormatter())
        return "log"
    (ax.set_yscale if which == "y" else ax.set_xscale)("linear")
    axis.set_major_locator(MaxNLocator(nbins=max_ticks - 1, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
    axis.set_major_formatter(PlainFormatter())
    axis.set_minor_formatter(NullFormatter())
    return "linear"


def count_axis(ax, counts, which: str = "x") -> None:
    """A log axis for counts spanning orders of magnitude: ticks at 1, 10, 100, 1k, ...
    (every other decade past six), labels never crowded, no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    c = np.asarray([x for x in counts if x > 0], float)
    hi = max(float(c.max()) if len(c) else 1.0, 1.0)
    top = int(math.ceil(math.log10(hi * 1.0001))) if hi > 1 else 1
    step = 1 if top <= 6 else 2
    ticks = [10.0 ** e for e in range(0, top + 1, step)]
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda x, pos=None: _count_label(x)))
    axis.set_minor_locator(LogLocator(base=10.0, subs=tuple(range(2, 10)), numticks=12))
    axis.set_minor_formatter(NullFormatter())


def _count_label(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            q = x / div
            return f"{q:g}{suffix}"
    return f"{x:g}"


def tick_labels_overlap(ax, which: str = "both") -> list[tuple[str, str]]:
    """Pairs of non-empty tick labels inside the view of ``ax`` whose drawn boxes
    overlap (draws the figure first). Empty when every label can be read."""
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    out = []
    for axis in {"x": [ax.xaxis], "y": [ax.yaxis], "both": [ax.xaxis, ax.yaxis]}[which]:
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in visible_tick_labels(axis)]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if boxes[i][1].overlaps(boxes[j][1]):
                    out.append((boxes[i][0], boxes[j][0]))
    return out


def visible_tick_labels(axis) -> list:
    """The drawn, non-empty major and minor tick labels of an axis inside its view
    limits (after a draw), as matplotlib Text objects."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    out = []
    for locs, labels in ((axis.get_majorticklocs(), axis.get_majorticklabels()),
                         (axis.get_minorticklocs(), axis.get_minorticklabels())):
        for loc, t in zip(locs, labels):
            if lo - tol <= loc <= hi + tol and t.get_visible() and t.get_text():
                out.append(t)
    return out


# ----------------------------------------------------------- learning curves
@dataclass
class Curve:
    """One line of a panel: ``label=None`` keeps it out of the legend (ensemble members)."""

    x: Sequence[float]
    y: Sequence[float]
    label: str | None = None
    color: str | None = None
    lw: float = 1.5
    alpha: float = 1.0
    ls: str = "-"
    marker: str | None = None


@dataclass
class Panel:
    title: str
    curves: list
    ylabel: str = ""
    log: bool | None = None  # None: decided from the data (see value_axis)
    vlines: tuple = ()  # (x, label) pairs, e.g. the end of a warm-up


def learning_curve(panels: Sequence[Panel], path: str | Path, xlabel: str = "epoch", title: str | None = None,
                   ncols: int | None = None, dpi: int = 120) -> Path:
    """Write ``path``: one subplot per :class:`Panel`, curves against ``xlabel``,
    each value axis scaled and ticked by :func:`value_axis` (linear over less than
    a decade, readable log ticks over more). Returns the path."""
    fig = learning_curve_figure(panels, xlabel, title, ncols)
    return save(fig, path, dpi)


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as ``path`` (creating its folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def learning_curve_figure(panels: Sequence[Panel], xlabel: str = "epoch", title: str | None = None,
                          ncols: int | None = None):
    """The figure of :func:`learning_curve` (not saved)."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    panels = [p for p in panels if any(len(np.asarray(c.y)) for c in p.curves)] or list(panels[:1])
    n = max(len(panels), 1)
    ncols = ncols or (2 if n == 4 else min(n, 3))
    nrows = int(math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
    flat = axes.ravel()
    for ax, p in zip(flat, panels):
        ys = []
        for c in p.curves:
            x, y = np.asarray(c.x, float), np.asarray(c.y, float)
            if not len(y):
                continue
            ys.append(y)
            marker = c.marker or ("o" if len(y) <= 3 else None)
            ax.plot(x, y, color=c.color, lw=c.lw, alpha=c.alpha, ls=c.ls, marker=marker, ms=3, label=c.label)
        for xv, lab in p.vlines:
            ax.axvline(xv, color="0.4", ls=":", lw=1.0, label=lab)
        value_axis(ax, ys, "y", log=p.log)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=MAX_TICKS - 1, steps=[1, 2, 5, 10], integer=True, min_n_ticks=2))
        ax.set_xlabel(xlabel)
        if p.ylabel:
            ax.set_ylabel(p.ylabel)
        ax.set_title(p.title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=8, loc="best")
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ target windows
def _bounds(bounds) -> tuple[float, float]:
    lo, hi = (list(bounds) + [None, None])[:2]
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    return lo, hi


def _num(x: float) -> str:
    return f"{x:g}"


def window_text(bounds) -> str:
    """``'1.5 to 3'``, ``'≤ 1'``, ``'≥ 0.5'`` or ``'any'``."""
    lo, hi = _bounds(bounds)
    if math.isinf(lo) and math.isinf(hi):
        return "any"
    if math.isinf(lo):
        return f"≤ {_num(hi)}"
    if math.isinf(hi):
        return f"≥ {_num(lo)}"
    return f"{_num(lo)} to {_num(hi)}"


def window_label(name: str, bounds) -> str:
    """``'dir_gap window: 1.5 to 3'``, ``'heat_ref window: ≤ 1'``, ..."""
    return f"{name} window: {window_text(bounds)}"


def _extent(data: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    pts = list(data[np.isfinite(data)]) + [b for b in (lo, hi) if np.isfinite(b)]
    if not pts:
        return 0.0, 1.0
    a, b = float(min(pts)), float(max(pts))
    pad = 0.06 * (b - a) if b > a else max(abs(a) * 0.1, 0.5)
    return a - pad, b + pad


def shade_windows(ax, x_window=None, y_window=None, x_name: str = "x", y_name: str = "y", x_data=None,
                  y_data=None, colors: tuple = ("tab:green", "tab:orange"), alpha: float = 0.15) -> list:
    """Shade target windows on ``ax``: ``x_window`` as a vertical band, ``y_window``
    as a horizontal band (each ``[lo, hi]``, None for an open side), labelled with
    their bounds for the legend. Half-open windows run to the axis edge, so the
    limits are fixed to cover the data (``x_data``/``y_data``, e.g. mean ± σ) and
    the windows' finite bounds. Returns the patches."""
    patches = []
    for which, window, name, data, color in (("x", x_window, x_name, x_data, colors[0]),
                                             ("y", y_window, y_name, y_data, colors[1 % len(colors)])):
        if window is None:
            continue
        lo, hi = _bounds(window)
        cur = ax.get_xlim() if which == "x" else ax.get_ylim()
        d = np.asarray(cur if data is None else data, float).ravel()
        a, b = _extent(d, lo, hi)
        (ax.set_xlim if which == "x" else ax.set_ylim)(a, b)
        s, e = max(lo, a), min(hi, b)
        span = ax.axvspan if which == "x" else ax.axhspan
        patches.append(span(s, e, color=color, alpha=alpha, lw=0, zorder=0, label=window_label(name, (lo, hi))))
        line = ax.axvline if which == "x" else ax.axhline
        for bound in (lo, hi):
            if np.isfinite(bound):
                line(bound, color=color, lw=1.0, ls="--", zorder=1)
    return patches


# ------------------------------------------------- the experiments' histories
TRAIN, VALID = "tab:blue", "tab:orange"


def _member_curves(x, values, color: str, name: str) -> list:
    """Curves of an (E, M) array: thin lines per member, a bold member mean; one
    legend entry. Members that are all NaN are skipped."""
    v = np.asarray(values, float)
    if v.ndim == 1:
        v = v[:, None]
    keep = [m for m in range(v.shape[1]) if np.isfinite(v[:, m]).any()]
    if not keep:
        return []
    v = v[:, keep]
    if v.shape[1] == 1:
        return [Curve(x, v[:, 0], name, color)]
    curves = [Curve(x, v[:, m], None, color, lw=0.8, alpha=0.35) for m in range(v.shape[1])]
    curves.append(Curve(x, np.nanmean(v, 1), f"{name} (mean of {v.shape[1]} members)", color, lw=1.8))
    return curves


def property_learning_curve(history: dict, path: str | Path, units: dict | None = None,
                            title: str | None = None) -> Path:
    """``learning_curve.png`` of a property ensemble from the history of
    :meth:`jaxinv.screening.train.PropertyModel.fit` (see :func:`property_panels`)."""
    return learning_curve(property_panels(history, units), path, "epoch", title)


def property_panels(history: dict, units: dict | None = None) -> list[Panel]:
    """Gaussian NLL (train minibatches and validation, standardized targets) and
    the MAE of every target (in its units), each member thin and the member mean
    bold; a dotted line marks the end of the MSE warm-up."""
    units = units or {}
    x = np.asarray(history.get("epoch") or np.arange(1, len(history["train_loss"]) + 1))
    warm = history.get("warmup_epochs") or 0
    vlines = ((warm, "end of warm-up"),) if warm and x[0] <= warm < x[-1] else ()
    if "train_nll" in history:
        nll = _member_curves(x, history["train_nll"], TRAIN, "train") \
            + _member_curves(x, history["val_nll"], VALID, "valid")
        panels = [Panel("Gaussian NLL (standardized targets)", nll, "NLL", vlines=vlines)]
    else:  # an old-style history: the training objective only
        panels = [Panel("training loss", [Curve(x, history["train_loss"], "train", TRAIN)], "loss")]
    if "train_mae" in history:
        tr, va = np.asarray(history["train_mae"], float), np.asarray(history["val_mae"], float)  # (E, M, T)
        targets = history.get("targets") or [f"target {j + 1}" for j in range(tr.shape[-1])]
        for j, t in enumerate(targets):
            unit = f" ({units[t]})" if units.get(t) else ""
            panels.append(Panel(f"{t} MAE{unit}", _member_curves(x, tr[..., j], TRAIN, "train")
                                + _member_curves(x, va[..., j], VALID, "valid"), f"MAE{unit}", vlines=vlines))
    return panels


def parity_plot(panels: Sequence[dict], path: str | Path, title: str | None = None, max_bars: int = 400) -> Path:
    """Write ``path``: the figure of :func:`parity_figure`."""
    return save(parity_figure(panels, title, max_bars), path)


def parity_figure(panels: Sequence[dict], title: str | None = None, max_bars: int = 400, seed: int = 0):
    """Per panel (a dict with ``y``, ``mean``, ``std``, ``name`` and optionally ``unit``
    and ``note``): predictions against true values with ±1σ error bars on a seeded
    sample of at most ``max_bars`` points (all points are drawn; non-finite ones are
    left out), the y = x line, and n, MAE and ±1σ / ±2σ coverage in the corner."""
    plt = pyplot()
    n = max(len(panels), 1)
    # at least 6 inches wide: one panel's title line must fit
    fig, axes = plt.subplots(1, n, figsize=(max(4.2 * n, 6.0), 4.2), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, p in zip(axes[0], panels):
        y, mu, sd = (np.asarray(p[k], float).ravel() for k in ("y", "mean", "std"))
        ok = np.isfinite(y) & np.isfinite(mu) & np.isfinite(sd)
        y, mu, sd = y[ok], mu[ok], sd[ok]
        unit = f" ({p['unit']})" if p.get("unit") else ""
        ax.scatter(y, mu, s=5, color=VALID, alpha=0.5, lw=0)
        pick = rng.permutation(len(y))[:max_bars]
        ax.errorbar(y[pick], mu[pick], yerr=sd[pick], fmt="none", ecolor=VALID, alpha=0.25, lw=0.7)
        if len(y):
            lo, hi = float(min(y.min(), mu.min())), float(max(y.max(), mu.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1.0, ls="--", label="y = x")
            err = np.abs(mu - y)
            stats = (f"n = {len(y)}\nMAE = {err.mean():.3g}{unit}\n"
                     f"within ±1σ: {np.mean(err <= sd):.2f} (0.68)\nwithin ±2σ: {np.mean(err <= 2 * sd):.2f} (0.95)")
            ax.text(0.03, 0.97, stats, transform=ax.transAxes, va="top", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
            value_axis(ax, [y, mu], "x", log=False)
            value_axis(ax, [y, mu], "y", log=False)
        ax.set_xlabel(f"true {p['name']}{unit}")
        ax.set_ylabel(f"predicted {p['name']}{unit}")
        ax.set_title(p["name"] + (f" ({p['note']})" if p.get("note") else ""), fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        import textwrap

        fig.suptitle(textwrap.fill(title, 80), fontsize=10)
    fig.tight_layout()
    return fig


def _loss_keys(keys: Iterable[str]) -> list[str]:
    """The losses worth a panel, in a fixed order: the total first."""
    order = ["loss", "critic_loss", "gen_loss", "wasserstein", "gp", "frac", "species", "count", "image",
             "composition", "lattice", "kl", "property"]
    keys = set(keys)
    return [k for k in order if k in keys]


def generative_learning_curve(train_records: Sequence[dict], eval_records: Sequence[dict], path: str | Path,
                              title: str | None = None, max_panels: int = 6) -> Path:
    """``learning_curve.png`` of a generative model (see :func:`generative_panels`)."""
    return learning_curve(generative_panels(train_records, eval_records, max_panels), path, "training step", title)


def generative_panels(train_records: Sequence[dict], eval_records: Sequence[dict], max_panels: int = 6) -> list:
    """Training losses (records ``{"step": s, "<loss>": v}``, e.g. block means of
    steps) and the validation losses of the evaluations (``{"step": s,
    "valid/<loss>": v}``), one panel per loss (the total first)."""
    train_records = [r for r in train_records if "step" in r]
    eval_records = [r for r in eval_records if "step" in r]
    names = _loss_keys({k for r in train_records for k in r}
                       | {k[6:] for r in eval_records for k in r if k.startswith("valid/")})[:max_panels]
    panels = []
    for k in names:
        curves = []
        tr = [(r["step"], r[k]) for r in train_records if k in r]
        va = [(r["step"], r[f"valid/{k}"]) for r in eval_records if f"valid/{k}" in r]
        if tr:
            curves.append(Curve([s for s, _ in tr], [v for _, v in tr], "train", TRAIN))
        if va:
            curves.append(Curve([s for s, _ in va], [v for _, v in va], "valid", VALID, marker="o"))
        panels.append(Panel(k.replace("_", " "), curves, k))
    return panels or [Panel("no losses recorded", [])]
