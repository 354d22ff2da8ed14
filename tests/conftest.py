import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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


def pytest_collection_modifyitems(session, config, items):
    """Run the SevenNet cross-check first. Its large XLA compilation (50 carbon_24 cells in one
    batch) crashed natively inside backend_compile when it ran after the rest of the suite in
    the same process, and passes on its own; the cause is not understood yet."""
    items.sort(key=lambda item: 0 if item.path.name == "test_sevennet.py" else 1)
