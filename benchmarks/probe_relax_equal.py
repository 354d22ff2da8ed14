"""Issue 23 probe: relax 64 rattled perov_5 test structures with SevenNet-0 (defaults: float64,
criterion stress), save energies, steps, statuses and timings (cold, then warm) to an .npz; it reads
either relax() API (the list of results before issue 23, the Crystal after), to compare the two."""
import os, sys, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
import numpy as np
from jaxinv.data import load_dataset
from jaxinv.data.perturb import perturb
from jaxinv.potentials.sevennet import load_sevennet
from jaxinv.relax import relax

ds = load_dataset("perov_5:test")
structures = perturb(ds.structures(np.arange(64)), rattle=0.05, strain=0.02, seed=0)
pot = load_sevennet()
times = []
for _ in range(2):
    t0 = time.perf_counter()
    res = relax(structures, pot, progress=False)
    times.append(time.perf_counter() - t0)
if isinstance(res, list):
    e = np.array([r.energy for r in res]); steps = np.array([r.steps for r in res]); status = [r.status for r in res]
    frac = np.array([r.structure.frac_coords for r in res])
else:
    from jaxinv.relax import status_names
    e = res.labels["energy"]; steps = res.labels["steps"]; status = status_names(res)
    frac = np.array([s.frac_coords for s in res.to_structures()])
np.savez(sys.argv[1], energy=e, steps=steps, status=np.array(status), frac=frac, times=np.array(times))
print(sys.argv[1], "cold %.1f s, warm %.1f s, steps %d, converged %d" % (times[0], times[1], steps.sum(), status.count("converged")))
