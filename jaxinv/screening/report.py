"""Funnel outputs: a ranked CSV, CIFs of the top candidates, PNG plots and a Markdown report."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

__all__ = ["write_outputs", "stage_windows"]


def _plot_funnel(records, path: Path) -> None:
    from jaxinv.plotting import save

    save(_funnel_figure(records), path)


def _funnel_figure(records):
    """Candidates left after each stage, bars on a log axis from 1 (ticks 1, 10, 100, 1k, ...)."""
    from jaxinv.plotting import count_axis, pyplot

    plt = pyplot()
    names = ["input"] + [r.name for r in records]
    counts = [records[0].n_in if records else 0] + [r.n_out for r in records]
    ys = np.arange(len(names))[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.3))
    ax.barh(ys, [c - 0.8 if c > 0 else 0 for c in counts], left=0.8, color="tab:blue")
    ax.set_yticks(ys, names)
    count_axis(ax, counts, "x")
    hi = max(max(counts, default=1), 1) * 2.5
    ax.set_xlim(0.8, hi)
    for y, c in zip(ys, counts):  # the count at the end of its bar: inside a long bar, after a short one
        inside = c > 0 and math.log(c / 0.8) > 0.6 * math.log(hi / 0.8)
        ax.text(max(c, 0.8), y, f"{c:,} " if inside else f" {c:,}", va="center", ha="right" if inside else "left",
                color="white" if inside else "black", fontsize=8)
    ax.set_xlabel("candidates (log scale)")
    fig.tight_layout()
    return fig


def stage_windows(stages) -> dict:
    """Target windows of a funnel's stages, ``{property: (lo, hi)}``: the property
    stages' windows and the rank stages' windows on ``pred_<property>`` columns."""
    out = {}
    for st in stages:
        cfg = getattr(st, "config", None) or {}
        for col, bounds in (cfg.get("windows") or {}).items():
            name = col[5:] if col.startswith("pred_") else col
            lo, hi = (list(bounds) + [None, None])[:2]
            lo = -np.inf if lo is None else float(lo)
            hi = np.inf if hi is None else float(hi)
            if name in out:  # several stages on one property: the intersection
                lo, hi = max(lo, out[name][0]), min(hi, out[name][1])
            out[name] = (lo, hi)
    return out


def _plot_predictions(table, x: str, y: str | None, path: Path, windows: dict | None = None) -> bool:
    fig = _predictions_figure(table, x, y, windows)
    if fig is None:
        return False
    from jaxinv.plotting import save

    save(fig, path)
    return True


def _predictions_figure(table, x: str, y: str | None, windows: dict | None = None):
    """Predicted ``y`` against predicted ``x`` (±1σ), or σ against the prediction when
    ``y`` is None, with the screen's target windows shaded (None: no such columns)."""
    if f"pred_{x}" not in table or (y is not None and f"pred_{y}" not in table):
        return None
    from jaxinv.plotting import pyplot, shade_windows, value_axis

    plt = pyplot()
    windows = windows or {}
    mx, sx = np.asarray(table[f"pred_{x}"], float), table.get(f"sigma_{x}")
    sx = None if sx is None else np.asarray(sx, float)
    if y is None:
        my, sy = (sx if sx is not None else np.zeros_like(mx)), None
        ylabel = f"σ of {x}"
    else:
        my, sy = np.asarray(table[f"pred_{y}"], float), table.get(f"sigma_{y}")
        sy = None if sy is None else np.asarray(sy, float)
        ylabel = f"predicted {y} (±1σ)"
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    ax.errorbar(mx, my, xerr=sx, yerr=sy, fmt="o", ms=3, alpha=0.6, elinewidth=0.6, label=f"candidates ({len(mx)})",
                zorder=2)
    spread = lambda m, s: np.concatenate([m, m] if s is None else [m - s, m + s])
    shade_windows(ax, windows.get(x), windows.get(y) if y is not None else None, x, y or "", spread(mx, sx),
                  spread(my, sy) if y is not None else my)
    value_axis(ax, [ax.get_xlim()], "x", log=False)
    value_axis(ax, [ax.get_ylim()], "y", log=False)
    ax.set_xlabel(f"predicted {x} (±1σ)")
    ax.set_ylabel(ylabel)
    # above the axes: a legend inside would hide candidates
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, frameon=False, borderaxespad=0.0)
    fig.tight_layout()
    return fig


def write_outputs(cands, records, out_dir, n_cif: int = 50, title: str = "Screening report",
                  windows: dict | None = None) -> dict:
    """``ranked.csv`` (all columns, in order), ``cif/`` (first ``n_cif``),
    ``funnel.png``, ``predictions.png`` (when a predicted column exists) and ``report.md``.

    ``windows``: the screen's target windows, ``{property: [lo, hi]}`` (None for an
    open side; see :func:`stage_windows`), shaded on ``predictions.png``, whose axes
    are the windowed properties first."""
    from jaxinv.io import write_cifs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = dict(cands.table)
    if "formula" not in table:
        table["formula"] = cands.formulas()
    cols = ["id", "formula"] + [k for k in table if k not in ("id", "formula")]
    with open(out / "ranked.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for i in range(len(cands)):
            w.writerow([_fmt(table[k][i]) for k in cols])
    n = min(n_cif, len(cands))
    cifs = write_cifs(cands.select(np.arange(n)).crystal, out / "cif",
                      names=[f"{i + 1:04d}_{table['id'][i]}_{table['formula'][i]}" for i in range(n)]) if n else []
    _plot_funnel(records, out / "funnel.png")
    windows = dict(windows or {})
    preds = [k[5:] for k in table if k.startswith("pred_")]
    preds = [p for p in windows if p in preds] + [p for p in preds if p not in windows]
    has_scatter = bool(preds) and _plot_predictions(table, preds[0], preds[1] if len(preds) > 1 else None,
                                                    out / "predictions.png", windows)
    lines = [f"# {title}", "", "| stage | in | out | seconds | dropped (reason: count) |", "|---|---|---|---|---|"]
    for r in records:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(r.dropped.items(), key=lambda kv: -kv[1])) or "-"
        lines.append(f"| {r.name} | {r.n_in:,} | {r.n_out:,} | {r.seconds:.1f} | {why} |")
    if windows:
        from jaxinv.plotting import window_text

        lines += ["", "Target windows: " + "; ".join(f"{k} {window_text(v)}" for k, v in windows.items()) + "."]
    lines += ["", "![funnel](funnel.png)", ""]
    if has_scatter:
        lines += ["![predictions](predictions.png)", ""]
    show = [c for c in cols if c not in ("dedup_key", "canonical", "species")][:10]
    lines += [f"## Top {min(20, len(cands))} of {len(cands)}", "", "| " + " | ".join(show) + " |",
              "|" + "---|" * len(show)]
    for i in range(min(20, len(cands))):
        lines.append("| " + " | ".join(_fmt(table[k][i]) for k in show) + " |")
    lines += ["", f"Full table: `ranked.csv`; CIFs of the first {n}: `cif/`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {"csv": out / "ranked.csv", "report": out / "report.md", "cifs": cifs}


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)
