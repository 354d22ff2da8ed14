"""Screening over several devices and hosts: sharded inference and shard files.

The general pieces (meshes, ``jax.distributed``, shares of N items, gathering)
live in :mod:`jaxinv.distributed`; this module applies them to screening, in two
ways.

One program over all devices: :func:`sharded_predict` lays the candidate rows
over :func:`~jaxinv.distributed.batch_mesh` (every device of every process,
``NamedSharding(mesh, P('batch'))``) with the ensemble parameters replicated, and
every process gets all predictions back. Each process passes the same inputs
(e.g. all read the same candidates file). On one host with several GPUs this
is the same call; results equal a one-device run (tests/test_distributed.py,
with 4 simulated CPU devices and with two processes on 127.0.0.1).

Shard files, no collectives: each process (a SLURM task, an array job, a
laptop looping over indices) predicts its static share of the candidates on its
own devices and writes it; one merge step concatenates the shares. Each share is
a file, so a failed task is rerun alone::

    # on each of N processes (e.g. one per SLURM task)
    shard = shard_for_process(n_candidates)          # uses jax.process_index/count
    ...predict / run the funnel on candidates.select(shard.indices)...
    save_shard(out_dir, shard, candidates_out)       # out_dir/shard_00003_of_00008.npz
    # once, after all tasks finished
    merged = merge_shards(out_dir)                   # checks that every shard is present

SLURM (one GPU per task, 8 tasks on 2 nodes)::

    #SBATCH --nodes=2 --ntasks-per-node=4 --gpus-per-node=4
    srun python -m jaxinv.screening.sharding predict --model runs/model --candidates cands.npz --out shards/
    python -m jaxinv.screening.sharding merge --out shards/ --to predictions.npz

The command calls :func:`jaxinv.distributed.initialize`, which starts
``jax.distributed`` only under a SLURM step of several tasks, so the same command
runs unchanged on a laptop. With ``jax.distributed`` initialized,
``jax.process_index()`` and ``jax.process_count()`` define the shard; without it,
``--process-index`` and ``--process-count`` (or ``SLURM_PROCID`` / ``SLURM_NTASKS``)
do. See docs/scale.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import jax
from jax.sharding import Mesh

from jaxinv.distributed import batch_mesh, initialize, process_rows

__all__ = ["sharded_predict", "Shard", "shard_for_process", "save_shard", "merge_shards"]

log = logging.getLogger("jaxinv.screening")


def sharded_predict(model, x, mesh: Mesh | None = None, batch_size: int = 8192):
    """``model.predict_inputs`` with the rows laid over ``mesh`` (default: every device of every process).

    ``model`` is a :class:`~jaxinv.screening.train.PropertyModel`; ``x`` its
    scaled inputs (an array or pytree with N rows), the same on every process.
    Returns (mean, std) in target units, all N rows, on every process."""
    return model.predict_inputs(x, batch_size=batch_size, mesh=batch_mesh() if mesh is None else mesh)


# ------------------------------------------------------------------ multi-host
@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    n_total: int

    @property
    def indices(self) -> np.ndarray:
        """Contiguous, near-equal slices: shard i holds rows [i*N/k, (i+1)*N/k)
        (:func:`jaxinv.distributed.process_rows`)."""
        rows = process_rows(self.n_total, self.index, self.count)
        return np.arange(rows.start, rows.stop)

    @property
    def name(self) -> str:
        return f"shard_{self.index:05d}_of_{self.count:05d}"


def shard_for_process(n_total: int, process_index: int | None = None, process_count: int | None = None) -> Shard:
    """This process's static shard: explicit arguments, else ``jax.process_index/count``
    when distributed is initialized, else SLURM's task id and count, else (0, 1)."""
    if process_index is None or process_count is None:
        if jax.process_count() > 1:
            process_index, process_count = jax.process_index(), jax.process_count()
        else:
            process_index = int(os.environ.get("SLURM_PROCID", 0))
            process_count = int(os.environ.get("SLURM_NTASKS", 1))
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} outside [0, {process_count})")
    return Shard(int(process_index), int(process_count), int(n_total))


def save_shard(out_dir, shard: Shard, cands) -> Path:
    """Write one shard's output and a small JSON record of what it covers."""
    out_dir = Path(out_dir)
    path = cands.save(out_dir / f"{shard.name}.npz")
    (out_dir / f"{shard.name}.json").write_text(json.dumps({"index": shard.index, "count": shard.count,
                                                            "n_total": shard.n_total, "rows": len(cands)}))
    return path


def merge_shards(out_dir):
    """Concatenate every shard in order; raises naming the missing ones."""
    from jaxinv.screening.candidates import Candidates

    out_dir = Path(out_dir)
    metas = sorted(out_dir.glob("shard_*_of_*.json"))
    if not metas:
        raise FileNotFoundError(f"no shards in {out_dir}")
    count = json.loads(metas[0].read_text())["count"]
    missing = [i for i in range(count) if not (out_dir / f"{Shard(i, count, 0).name}.npz").exists()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {count} shards missing in {out_dir}: {missing[:10]}")
    return Candidates.concatenate([Candidates.load(out_dir / f"{Shard(i, count, 0).name}.npz")
                                   for i in range(count)])


def _cli(argv=None) -> int:
    from jaxinv.screening.candidates import Candidates
    from jaxinv.screening.train import PropertyModel

    ap = argparse.ArgumentParser(prog="python -m jaxinv.screening.sharding")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("predict", help="predict this process's shard of a candidates file")
    p.add_argument("--model", required=True)
    p.add_argument("--candidates", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--process-index", type=int)
    p.add_argument("--process-count", type=int)
    m = sub.add_parser("merge", help="merge shard outputs")
    m.add_argument("--out", required=True)
    m.add_argument("--to", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "predict":
        initialize()
        cands = Candidates.load(args.candidates)
        shard = shard_for_process(len(cands), args.process_index, args.process_count)
        mine = cands.select(shard.indices)
        model = PropertyModel.load(args.model)
        mean, std = model.predict_inputs(model.inputs(mine.crystal))  # over this process's devices
        cols = {f"pred_{t}": mean[:, j] for j, t in enumerate(model.targets)}
        cols.update({f"sigma_{t}": std[:, j] for j, t in enumerate(model.targets)})
        save_shard(args.out, shard, mine.with_columns(**cols))
        return 0
    merge_shards(args.out).save(args.to)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
