"""Funnel outputs: a ranked CSV, CIFs of the top candidates, PNG plots and a Markdown report."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["write_outputs"]


def _plot_funnel(records, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input"] + [r.name for r in records]
    counts = [records[0].n_in if records else 0] + [r.n_out for r in records]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.barh(range(len(names))[::-1], counts, color="tab:blue")
    ax.set_yticks(range(len(names))[::-1], names)
    ax.set_xscale("log")
    for y, c in zip(range(len(names))[::-1], counts):
        ax.text(max(c, 1), y, f" {c:,}", va="center", fontsize=8)
    ax.set_xlabel("candidates (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_predictions(table, x: str, y: str, path: Path) -> bool:
    if f"pred_{x}" not in table or f"pred_{y}" not in table:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.errorbar(table[f"pred_{x}"], table[f"pred_{y}"], xerr=table.get(f"sigma_{x}"), yerr=table.get(f"sigma_{y}"),
                fmt="o", ms=3, alpha=0.6, elinewidth=0.6)
    ax.set_xlabel(f"predicted {x} (±1σ)")
    ax.set_ylabel(f"predicted {y} (±1σ)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(cands, records, out_dir, n_cif: int = 50, title: str = "Screening report") -> dict:
    """``ranked.csv`` (all columns, in order), ``cif/`` (first ``n_cif``),
    ``funnel.png``, ``predictions.png`` (when two predicted columns exist) and ``report.md``."""
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
    preds = [k[5:] for k in table if k.startswith("pred_")]
    has_scatter = len(preds) >= 2 and _plot_predictions(table, preds[0], preds[1], out / "predictions.png")
    lines = [f"# {title}", "", "| stage | in | out | seconds | dropped (reason: count) |", "|---|---|---|---|---|"]
    for r in records:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(r.dropped.items(), key=lambda kv: -kv[1])) or "-"
        lines.append(f"| {r.name} | {r.n_in:,} | {r.n_out:,} | {r.seconds:.1f} | {why} |")
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
