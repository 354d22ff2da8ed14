"""Where a relaxation queue's time goes: slot-steps evaluated against useful steps.

    OPENBLAS_NUM_THREADS=1 python benchmarks/profile_relax_queue.py [N] ['{"batch_fraction": 0.125}']

Relaxes N (default 64) rattled perov_5 test structures with SevenNet-0 to fmax 0.05
(ASE's stopping test) twice and reports the second (warm) call: wall time, the FIRE
steps the structures needed ("useful"), and the slot-steps the queue's jitted chunks
actually evaluated (every slot of a batch costs a step, finished or not). The second
argument is a dict of extra ``relax()`` keywords.
"""
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import ast

import numpy as np

import jax

from jaxinv.data import load_dataset
from jaxinv.data.perturb import perturb
from jaxinv.potentials.sevennet import load_sevennet
from jaxinv.relax import queue as relax_queue
from jaxinv.relax import converged, relax


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    extra = ast.literal_eval(sys.argv[2]) if len(sys.argv) > 2 else {}
    structures = perturb(load_dataset("perov_5:test").structures(np.arange(n)), rattle=0.05, strain=0.02, seed=0)
    potential = load_sevennet()
    counts = {"chunk_s": 0.0, "slot_steps": 0, "chunks": 0}
    original_init = relax_queue.RelaxQueue.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        chunk = self._chunk

        def counted(params, state, *rest):
            t0 = time.perf_counter()
            out = jax.block_until_ready(chunk(params, state, *rest))
            counts["chunk_s"] += time.perf_counter() - t0
            counts["chunks"] += 1
            counts["slot_steps"] += int(out[2]) * state.status.shape[0]
            return out

        self._chunk = counted

    relax_queue.RelaxQueue.__init__ = counting_init
    settings = dict(fmax=0.05, max_steps=500, criterion="ase", progress=False, **extra)
    relax(structures, potential, **settings)  # compile
    counts.update(chunk_s=0.0, slot_steps=0, chunks=0)
    t0 = time.perf_counter()
    results = relax(structures, potential, **settings)
    wall = time.perf_counter() - t0
    steps = results.labels["steps"]
    print(f"{extra or 'defaults'}: wall {wall:.1f} s, {int(converged(results).sum())}/{n} converged, "
          f"useful steps {steps.sum()} (mean {steps.mean():.1f}), slot-steps evaluated {counts['slot_steps']} "
          f"in {counts['chunks']} chunks, {1e3 * counts['chunk_s'] / max(counts['slot_steps'], 1):.2f} ms per "
          f"slot-step, {1e3 * wall / steps.sum():.2f} ms per useful step")


if __name__ == "__main__":
    main()
