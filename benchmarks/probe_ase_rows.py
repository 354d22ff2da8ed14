"""Issue 22 probe 2: relax 12 rattled perov_5 structures with SevenNet-0 at the defaults and check each
result with a FrechetCellFilter started at it (ASE's own test at the same fmax, 0.05 eV/Å).

    OPENBLAS_NUM_THREADS=1 python benchmarks/probe_ase_rows.py
"""
import numpy as np
from omegaconf import OmegaConf
from ase.filters import FrechetCellFilter
from jaxinv.config import DataConfig
from jaxinv.data import load_from_config
from jaxinv.data.perturb import perturb
from jaxinv.potentials.registry import load_potential
from jaxinv.potentials import JaxinvCalculator
from jaxinv.relax import relax, status_names
ds = load_from_config(OmegaConf.structured(DataConfig(name="perov_5", split="test", limit=64)), 0)
ss = perturb(ds.structures()[:12], rattle=0.05, strain=0.03, seed=2)
pot = load_potential("sevennet0")
for crit in ("stress",):
    rs = relax(ss, pot, progress=False, criterion=crit)
    rows = []
    calc = JaxinvCalculator(pot)
    for a in rs.without_labels().to_atoms():
        a.calc = calc
        rows.append(float(np.sqrt((FrechetCellFilter(a).get_forces()**2).sum(1).max())))
    print(crit, status_names(rs).count("converged"), "converged; ASE rows at result: max %.4f, fail %d/12" % (max(rows), sum(x >= 0.05 for x in rows)))
    print([round(x, 4) for x in rows])
