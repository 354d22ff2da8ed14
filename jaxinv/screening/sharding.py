"""Batched inference sharded over devices and hosts.

Single host: :func:`sharded_predict` lays the batch axis of the inputs over a 1-D
``Mesh`` of all local devices (``NamedSharding(mesh, P('batch'))``) with the
ensemble parameters replicated, and runs the jitted ensemble on it; XLA splits
the work so that each device evaluates its slice. Rows are padded to a multiple
of the device count, and results are identical to a one-device run (tested with
4 simulated CPU devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``).

Multi-host: no collective is needed (inference is embarrassingly parallel), so
each process takes a static slice of the candidates from a shard manifest,
writes its own output, and one merge step concatenates the shards.

    # on each of N processes (e.g. one per SLURM task)
    shard = shard_for_process(n_candidates)          # uses jax.process_index/count
    ...predict / run the funnel on candidates.select(shard.indices)...
    save_shard(out_dir, shard, candidates_out)       # out_dir/shard_00003_of_00008.npz
    # once, after all tasks finished
    merged = merge_shards(out_dir)                   # checks that every shard is present

SLURM (one GPU per task, 8 tasks on 2 nodes)::

    #SBATCH --nodes=2 --ntasks-per-node=4 --gpus-per-task=1
    srun python -m jaxinv.screening.sharding predict --model runs/model --candidates cands.npz --out shards/
    python -m jaxinv.screening.sharding merge --out shards/ --to predictions.npz

``jax.distributed.initialize()`` picks up SLURM's environment (coordinator,
process id and count) when called with no arguments; :func:`init_distributed`
calls it only when ``SLURM_NTASKS`` > 1, so the same script runs unchanged on a
laptop. With ``jax.distributed`` initialized, ``jax.process_index()`` and
``jax.process_count()`` define the shard; without it, ``--process-index`` and
``--process-count`` (or ``SLURM_PROCID`` / ``SLURM_NTASKS``) do.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["batch_mesh", "sharded_predict", "Shard", "shard_for_process", "save_shard", "merge_shards",
           "init_distributed"]

log = logging.getLogger("jaxinv.screening")


def batch_mesh(devices=None) -> Mesh:
    """A 1-D mesh named 'batch' over the given (default: all local) devices."""
    devices = list(devices if devices is not None else jax.local_devices())
    return Mesh(np.array(devices), ("batch",))


def sharded_predict(model, x, mesh: Mesh | None = None, batch_size: int = 8192):
    """``model.predict_inputs`` with the batch axis sharded over ``mesh``.

    ``model`` is a :class:`~jaxinv.screening.train.PropertyModel`; ``x`` its
    scaled inputs (an array or pytree with N rows). Returns (mean, std) in target units."""
    from jaxinv.screening.train import _pad_rows, _predict_fn

    mesh = mesh or batch_mesh()
    n_dev = mesh.devices.size
    rows = NamedSharding(mesh, P("batch"))
    replicated = NamedSharding(mesh, P())
    params = jax.device_put(model.params, replicated)
    fn = _predict_fn(model.module)
    n = int(jax.tree_util.tree_leaves(x)[0].shape[0])
    step = max(n_dev, (batch_size // n_dev) * n_dev)
    means, stds = [], []
    for start in range(0, n, step):
        part = jax.tree_util.tree_map(lambda a: np.asarray(a[start:start + step]), x)
        k = int(jax.tree_util.tree_leaves(part)[0].shape[0])
        padded = _pad_rows(part, -(-k // n_dev) * n_dev)
        placed = jax.tree_util.tree_map(lambda a: jax.device_put(a, rows), padded)
        mu, sd, _ = fn(params, placed)
        means.append(np.asarray(mu)[:k])
        stds.append(np.asarray(sd)[:k])
    mu = np.concatenate(means) * model.y_std + model.y_mean
    sd = np.concatenate(stds) * model.y_std * model.sigma_scale
    return mu, sd


# ------------------------------------------------------------------ multi-host
@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    n_total: int

    @property
    def indices(self) -> np.ndarray:
        """Contiguous, near-equal slices: shard i holds rows [i*N/k, (i+1)*N/k)."""
        bounds = np.linspace(0, self.n_total, self.count + 1).round().astype(int)
        return np.arange(bounds[self.index], bounds[self.index + 1])

    @property
    def name(self) -> str:
        return f"shard_{self.index:05d}_of_{self.count:05d}"


def init_distributed() -> None:
    """``jax.distributed.initialize()`` under a multi-task SLURM job, else nothing."""
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and not getattr(init_distributed, "_done", False):
        jax.distributed.initialize()
        init_distributed._done = True


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
        init_distributed()
        cands = Candidates.load(args.candidates)
        shard = shard_for_process(len(cands), args.process_index, args.process_count)
        mine = cands.select(shard.indices)
        model = PropertyModel.load(args.model)
        mean, std = sharded_predict(model, model.inputs(mine.crystal))
        cols = {f"pred_{t}": mean[:, j] for j, t in enumerate(model.targets)}
        cols.update({f"sigma_{t}": std[:, j] for j, t in enumerate(model.targets)})
        save_shard(args.out, shard, mine.with_columns(**cols))
        return 0
    merge_shards(args.out).save(args.to)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
