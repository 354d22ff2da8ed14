"""Issue 4 validation, CI size: jaxinv batched relaxation vs ASE FIRE + FrechetCellFilter, both
with the jaxinv SevenNet-0 potential, on rattled and strained perov_5 and carbon_24 structures.
The full-size run (20 + 10 structures) is benchmarks/validate_relax.py."""
import pytest

from jaxinv.validation import compare, sample


@pytest.fixture(scope="module")
def sevennet():
    from jaxinv.potentials.sevennet import load_sevennet

    return load_sevennet()


@pytest.mark.slow  # 2 minutes; the LJ runs of test_relax.py check the same FIRE against ASE in the default suite
def test_sevennet_relaxation_agrees_with_ase(sevennet):
    # fmax 0.005: at 0.02 the generalized cell force allows ~0.3 GPa of residual stress, and
    # two correct runs can stop 0.03-0.06 Å apart along a soft cell direction
    rows = compare(sample(3, 1, rattle=0.03, strain=0.02, seed=3), sevennet, fmax=0.005)
    for r in rows:
        assert r["status"] == "converged", r
        assert r["match"], r
        assert r["de_mev_atom"] < 2.0 and r["da"] < 0.02, r


# slow (114 s on two workers): batch independence runs in the default suite with cheap potentials
# (test_relax.py: refilled and compacted batches); this is the SevenNet-0 float64 check
@pytest.mark.slow
def test_a_structure_ends_the_same_alone_or_in_any_batch(sevennet):
    """Issue 22: float32 rounding depends on the batch (the flattened graph orders XLA's sums
    differently), and FIRE amplified it: the same perov_5 input converged up to 2.6 eV per cell
    apart in batches of 64 and 8. In float64 (the default) a structure takes the same steps to
    the same energy alone or beside others. These four starts took different step counts alone
    and in a batch in float32."""
    from omegaconf import OmegaConf

    from jaxinv.config import DataConfig
    from jaxinv.data import load_from_config
    from jaxinv.data.perturb import perturb
    from jaxinv.relax import energy_per_atom, relax, status_names

    ds = load_from_config(OmegaConf.structured(DataConfig(name="perov_5", split="test", limit=64)), 0)
    structures = perturb(ds.structures()[:12], rattle=0.05, strain=0.03, seed=2)[6:10]
    together = relax(structures, sevennet, max_batch=4, batch_fraction=1.0, compact=False, progress=False)
    for k, s in enumerate(structures):
        a, b = relax([s], sevennet, progress=False), together[k]
        assert status_names(a) == status_names(b) == ["converged"]
        assert a.labels["steps"][0] == b.labels["steps"][0]
        assert abs(energy_per_atom(a)[0] - energy_per_atom(b)[0]) < 1e-6  # eV/atom; the issue asks for 1e-3
