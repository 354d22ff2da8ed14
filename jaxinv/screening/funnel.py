"""A screening funnel: stages composed like optax transformations, run resumably.

A :class:`Stage` is a small immutable object with one function,

    stage.apply(candidates, context) -> Decision(keep, reason, columns, crystal)

which looks at a block of candidates and says which to keep, why each dropped
one was dropped, which columns to add (predictions, energies) and, optionally,
new geometries (relaxation). Stages do not touch files or counts; the runner does.
``chain(*stages)`` gives a :class:`Funnel`, as ``optax.chain`` gives one
transformation; calling it runs every stage in memory and returns the survivors
and one :class:`StageRecord` per stage (counts in and out, drop reasons, seconds).

:meth:`Funnel.run` does the same inside a work directory and can be killed at
any moment: each stage's input is cut into chunks of ``stage.chunk_size`` rows,
every finished chunk is written atomically (``stage_XX_name/chunk_YYYYY.npz``)
and recorded in ``manifest.json`` (itself replaced atomically), and a restarted
run skips finished stages and chunks, so no work is lost beyond the chunk that
was in flight. Stages that need all rows at once (ranking) have
``chunk_size=None``. The manifest holds a fingerprint of the input and of every
stage's ``config``; resuming with different inputs or settings raises.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from jaxinv.crystal import Crystal
from jaxinv.screening.candidates import Candidates

__all__ = ["Decision", "Stage", "StageRecord", "Funnel", "chain", "apply_stage"]

log = logging.getLogger("jaxinv.screening")


@dataclass
class Decision:
    """What a stage decided about a block of N candidates.

    ``keep`` (N,) bool; ``reason`` (N,) str, read only where ``keep`` is False (a
    single string applies to all); ``columns`` name -> (N,) arrays added to the
    table; ``crystal`` replaces the geometry (same N and order) when not None;
    ``order`` (a permutation of N) reorders the survivors (ranking)."""

    keep: np.ndarray
    reason: Any = "dropped"
    columns: dict = field(default_factory=dict)
    crystal: Crystal | None = None
    order: np.ndarray | None = None


class Stage(NamedTuple):
    """``apply(candidates, context) -> Decision``; ``config`` is what identifies the
    stage's settings in the manifest fingerprint; ``chunk_size`` rows per call
    (None: all rows in one call)."""

    name: str
    apply: Callable[[Candidates, dict], Decision]
    config: dict = {}
    chunk_size: int | None = 4096


@dataclass
class StageRecord:
    name: str
    n_in: int = 0
    n_out: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> count
    seconds: float = 0.0
    chunks: int = 0

    def add(self, other: "StageRecord") -> None:
        self.n_in += other.n_in
        self.n_out += other.n_out
        for k, v in other.dropped.items():
            self.dropped[k] = self.dropped.get(k, 0) + v
        self.seconds += other.seconds
        self.chunks += other.chunks


def apply_stage(stage: Stage, cands: Candidates, context: dict | None = None):
    """One call of ``stage.apply`` on a block: (kept candidates, dropped (ids, reasons), record)."""
    t0 = time.perf_counter()
    n = len(cands)
    if n == 0:
        return cands, (np.zeros(0, str), np.zeros(0, str)), StageRecord(stage.name)
    d = stage.apply(cands, context or {})
    keep = np.asarray(d.keep, bool)
    if keep.shape != (n,):
        raise ValueError(f"stage {stage.name!r} returned keep of shape {keep.shape}, expected ({n},)")
    reason = np.broadcast_to(np.asarray(d.reason, dtype=str), (n,))
    out = cands
    if d.crystal is not None:
        out = Candidates(d.crystal, dict(out.table))
    if d.columns:
        out = out.with_columns(**d.columns)
    dropped_ids, dropped_reasons = cands.ids[~keep], reason[~keep]
    reasons, counts = np.unique(dropped_reasons, return_counts=True)
    record = StageRecord(stage.name, n, int(keep.sum()), {str(r): int(c) for r, c in zip(reasons, counts)},
                         time.perf_counter() - t0, 1)
    rows = np.flatnonzero(keep) if d.order is None else np.asarray(d.order)[keep[np.asarray(d.order)]]
    return out.select(rows), (dropped_ids, dropped_reasons), record


class Funnel:
    """An ordered list of stages. ``funnel(candidates)`` runs in memory;
    :meth:`run` runs resumably in a work directory."""

    def __init__(self, stages):
        self.stages = list(stages)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")

    def __call__(self, cands: Candidates, context: dict | None = None):
        records = []
        for stage in self.stages:
            cands, records_one = self._run_in_memory(stage, cands, context or {})
            records.append(records_one)
        return cands, records

    @staticmethod
    def _run_in_memory(stage, cands, context):
        size = stage.chunk_size or max(len(cands), 1)
        parts, record = [], StageRecord(stage.name)
        for start in range(0, max(len(cands), 1), size):
            kept, _, rec = apply_stage(stage, cands.select(np.arange(start, min(start + size, len(cands)))), context)
            parts.append(kept)
            record.add(rec)
        return Candidates.concatenate(parts) if parts else cands, record

    # ------------------------------------------------------------ resumable
    def fingerprint(self, cands: Candidates) -> str:
        from jaxinv.checkpoint import fingerprint_arrays

        c = cands.crystal.to_host()
        h = hashlib.sha1(fingerprint_arrays(c.lattice, c.frac, c.numbers, cands.ids.astype(str)).encode())
        for s in self.stages:
            h.update(json.dumps([s.name, s.config, s.chunk_size], sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    def run(self, cands: Candidates, workdir: str | os.PathLike, context: dict | None = None,
            progress: bool = False) -> tuple[Candidates, list[StageRecord]]:
        """Run every stage, resuming from ``workdir/manifest.json`` when present.

        Returns the survivors and the records (summed over chunks, including the
        chunks of earlier, interrupted runs). Dropped candidates with their
        reasons go to ``stage_XX_name/dropped.csv``."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        manifest_path = workdir / "manifest.json"
        fp = self.fingerprint(cands)
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("fingerprint") != fp:
                raise ValueError(f"{workdir} holds a funnel run with other inputs or stages "
                                 f"({manifest.get('fingerprint')} != {fp}); use a new directory or delete it")
            log.info("resuming funnel in %s", workdir)
        else:
            manifest = {"fingerprint": fp, "stages": [{"name": s.name, "status": "pending", "chunks": {}}
                                                      for s in self.stages]}
            _write_json(manifest_path, manifest)
        context = dict(context or {})
        records = []
        current = cands
        for k, stage in enumerate(self.stages):
            entry = manifest["stages"][k]
            sdir = workdir / f"stage_{k:02d}_{stage.name}"
            out_path = sdir / "output.npz"
            if entry["status"] == "done" and out_path.exists():
                current = Candidates.load(out_path)
                records.append(StageRecord(**entry["record"]))
                continue
            sdir.mkdir(parents=True, exist_ok=True)
            # a chunk killed after writing its dropped rows but before counting as done runs again:
            # its rows (and any other unfinished chunk's) leave dropped.csv first, so none appears twice
            _keep_dropped_of(sdir / "dropped.csv", set(entry["chunks"]))
            size = stage.chunk_size or max(len(current), 1)
            n_chunks = max(1, -(-len(current) // size))
            entry.update(status="running", n_chunks=n_chunks)
            _write_json(manifest_path, manifest)
            record, parts = StageRecord(stage.name), []
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=n_chunks, desc=stage.name, unit="chunk")
            for j in range(n_chunks):
                chunk_path = sdir / f"chunk_{j:05d}.npz"
                done = entry["chunks"].get(str(j))
                if done is not None and chunk_path.exists():
                    parts.append(Candidates.load(chunk_path))
                    record.add(StageRecord(**done))
                else:
                    block = current.select(np.arange(j * size, min((j + 1) * size, len(current))))
                    ctx = dict(context, workdir=sdir, chunk=j)
                    kept, (ids, reasons), rec = apply_stage(stage, block, ctx)
                    kept.save(chunk_path)
                    _append_dropped(sdir / "dropped.csv", ids, reasons, j)
                    entry["chunks"][str(j)] = asdict(rec)
                    _write_json(manifest_path, manifest)  # the chunk counts as done only now
                    parts.append(kept)
                    record.add(rec)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            current = Candidates.concatenate(parts)
            current.save(out_path)
            entry.update(status="done", record=asdict(record))
            _write_json(manifest_path, manifest)
            records.append(record)
            log.info("stage %s: %d -> %d (%.1f s) %s", stage.name, record.n_in, record.n_out, record.seconds,
                     record.dropped)
        return current, records


def chain(*stages: Stage) -> Funnel:
    """Compose stages into a funnel, in order (cf. ``optax.chain``)."""
    return Funnel(stages)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


_DROPPED_HEADER = "id,chunk,reason\n"


def _keep_dropped_of(path: Path, chunks: set) -> None:
    """Rewrite ``dropped.csv`` (atomically) with only the rows of the finished ``chunks``
    (their numbers as strings); nothing to do when every row belongs to one."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [_DROPPED_HEADER]
    for line in lines[1:]:
        try:
            row = next(csv.reader([line]))
        except (csv.Error, StopIteration):  # a line cut short by a kill
            continue
        if len(row) >= 3 and line.endswith("\n") and row[1] in chunks:
            kept.append(line)
    if kept == lines:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)


def _append_dropped(path: Path, ids, reasons, chunk: int) -> None:
    """Dropped rows of one chunk. A run resumed after a kill first removes the rows of
    chunks that had not counted as done (:func:`_keep_dropped_of`), so each dropped
    candidate appears once."""
    new = not path.exists()
    with open(path, "a") as fh:
        if new:
            fh.write(_DROPPED_HEADER)
        for i, r in zip(ids, reasons):
            fh.write(f"{i},{chunk},\"{r}\"\n")
