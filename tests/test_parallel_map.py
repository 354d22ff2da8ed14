"""The killable worker pool behind fingerprinting: a task that overruns its wall-clock
limit, or whose worker dies, yields a TaskTimeout in its place and the rest finish."""
import os
import time

from jaxinv.metrics._parallel import TaskTimeout, parallel_map


def test_overrunning_task_is_killed_and_the_others_finish():
    t0 = time.perf_counter()
    out = list(parallel_map(time.sleep, [0.0, 600.0, 0.0, 0.0], n_jobs=2, timeout=3.0))
    assert out[0] is None and out[2] is None and out[3] is None  # time.sleep returns None
    assert isinstance(out[1], TaskTimeout) and "limit" in out[1].reason
    assert time.perf_counter() - t0 < 300  # the 600 s sleep was cut short, not waited out


def test_results_keep_task_order_with_one_worker():
    out = list(parallel_map(abs, [-3, 2, -1, 0], n_jobs=1, timeout=60.0))
    assert out == [3, 2, 1, 0]


def test_a_crashing_worker_is_replaced():
    out = list(parallel_map(os._exit, [3, 4], n_jobs=1, timeout=60.0))
    assert all(isinstance(r, TaskTimeout) and "died" in r.reason for r in out)


def test_exceptions_reach_the_caller():
    import pytest

    with pytest.raises(TypeError):
        list(parallel_map(abs, [1, "x"], n_jobs=1, timeout=60.0))
