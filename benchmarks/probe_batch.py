"""Issue 22 probe 3: relax 12 rattled perov_5 structures with SevenNet-0 in one batch of 16 slots and in
batches of 3, and print per structure the statuses, step counts and the energy difference (meV/atom).

    OPENBLAS_NUM_THREADS=1 python benchmarks/probe_batch.py 32    # float32
    OPENBLAS_NUM_THREADS=1 python benchmarks/probe_batch.py 64    # float64 (the default)
"""
import sys
import time

import jax
from omegaconf import OmegaConf
from jaxinv.config import DataConfig
from jaxinv.data import load_from_config
from jaxinv.potentials.registry import load_potential
from jaxinv.relax import energy_per_atom, relax, status_names
from jaxinv.data.perturb import perturb
ds = load_from_config(OmegaConf.structured(DataConfig(name="perov_5", split="test", limit=64)), 0)
ss = perturb(ds.structures()[:12], rattle=0.05, strain=0.03, seed=2)
pot = load_potential("sevennet0")
x64 = sys.argv[1] == "64"
precision = "float64" if x64 else "float32"
with jax.enable_x64(x64):
    t = time.time()
    big = relax(ss, pot, progress=False, max_batch=16, batch_fraction=1.0, precision=precision)
    small = relax(ss, pot, progress=False, max_batch=3, batch_fraction=1.0, precision=precision)
    print("time", time.time() - t)
de = 1000 * (energy_per_atom(big) - energy_per_atom(small))
for k, formula in enumerate(big.formulas()):
    print(formula, status_names(big)[k], status_names(small)[k], big.labels["steps"][k], small.labels["steps"][k],
          round(float(de[k]), 4))
