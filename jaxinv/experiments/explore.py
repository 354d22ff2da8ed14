"""Explore a dataset: load it, build all-image neighbor graphs, summarize, export.

    jaxinv run explore [data=carbon_24] [cutoff=6.0] [n_export=20]
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from jaxinv.config import DataConfig, RunConfig, at_least, checked, non_negative, positive
from jaxinv.data import load_from_config
from jaxinv.graph import neighbor_graph
from jaxinv.io import write_all


@dataclass
class Config(RunConfig):
    """Fields and their meanings: jaxinv/configs/explore.yaml (``jaxinv run explore --help``)."""

    data: DataConfig = field(default_factory=DataConfig)
    cutoff: float = checked(5.0, positive)
    batch_size: int = checked(256, at_least(1))
    n_export: int = checked(20, non_negative)


def main(cfg, run):
    t0 = time.perf_counter()
    ds = load_from_config(cfg.data, cfg.seed)
    t_load = time.perf_counter() - t0
    print(f"loaded {ds.name}: {len(ds)} structures in {t_load:.2f} s ({ds.split_source})")

    degrees, t0 = [], time.perf_counter()
    batches = list(ds.batches(cfg.batch_size))
    for idx, crystal in tqdm(batches, desc="neighbor graphs", disable=not cfg.progress):
        g = neighbor_graph(crystal, cfg.cutoff)
        n_edges = np.asarray(g.n_edges)[: len(idx)]
        degrees.append(n_edges / crystal.n_atoms[: len(idx)])
    t_graph = time.perf_counter() - t0
    degrees = np.concatenate(degrees)
    summary = ds.summary()
    summary["graphs"] = {"cutoff": cfg.cutoff, "seconds": t_graph, "mean_degree": float(degrees.mean()),
                         "max_degree": float(degrees.max())}
    print(f"graphs at {cfg.cutoff} Å: {t_graph:.2f} s, mean {degrees.mean():.1f} neighbors per atom "
          f"(max {degrees.max():.1f})")
    for k, p in summary["properties"].items():
        print(f"  {k:<26s} {p['min']:9.3f} .. {p['max']:9.3f} {p['unit']}")

    n = min(cfg.n_export, len(ds))
    paths = write_all(ds.crystal(np.arange(n)), run.out_dir / "structures", names=[f"{i:05d}_{m}" for i, m in
                                                                                  enumerate(ds.ids[:n])])
    print(f"wrote {n} structures: {run.out_dir / 'structures'} (cif/, structures.extxyz, structures.json)")
    run.save_json(summary, "summary.json")
    return summary
