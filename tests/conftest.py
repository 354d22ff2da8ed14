import os
import sys
from pathlib import Path

# tests import the benchmark scripts (benchmarks/bench_*.py) as modules
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# tests must not write to the user's XLA compilation cache (tests/test_xla_cache.py checks it)
os.environ.setdefault("JAXINV_XLA_CACHE", "off")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def perov():
    from jaxinv.data import load_dataset

    return load_dataset("perov_5")


@pytest.fixture(scope="session")
def carbon():
    from jaxinv.data import load_dataset

    return load_dataset("carbon_24")


@pytest.fixture(scope="session")
def batio3():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(4.0), ["Ba", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def float64():
    """Run a test in float64 without leaking x64 mode into other tests."""
    import jax

    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    XLA's CPU backend maps every compiled executable into memory as a few dozen
    anonymous regions, and they live as long as the jit caches hold them. The
    whole suite compiles thousands of programs in one process; without this the
    process passed Linux's limit of 65,530 memory maps (``vm.max_map_count``)
    late in the suite, the next mmap failed inside an XLA compilation, and
    pytest died with SIGSEGV. Clearing after each module keeps the count at a
    few thousand; modules recompile what they use.
    """
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
