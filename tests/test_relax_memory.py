"""Relaxation batches sized by device memory, and out-of-memory batches that shrink and retry.

No test machine has an accelerator, so the device's memory statistics are faked
(``jaxinv.relax.queue.device_memory``) and out-of-memory errors are injected into
the queue's compiled chunk; XLA's memory analysis of the compiled programs is real.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinv.relax.queue as queue_module
from jaxinv.crystal import Crystal
from jaxinv.relax import FireConfig, RelaxQueue, converged
from jaxinv.relax.fire import RUNNING
from jaxinv.relax.queue import (MAX_BATCH, device_memory, is_out_of_memory, probe_bytes_per_edge, program_bytes)
from test_relax import rattled
from toy_potentials import LJ

CONFIG = FireConfig(fmax=1e-3)
OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456 bytes."


def _rounded_down(b: int, limit: int) -> bool:
    """``b`` is ``limit``, or ``limit`` rounded down to a size on a ladder whose steps are
    at most 1.5x apart (what a queue may do to compile fewer distinct batch shapes)."""
    return 2 * limit <= 3 * b and b <= limit


def _same_results(a: Crystal, b: Crystal, tol=1e-9):
    np.testing.assert_array_equal(a.labels["status"], b.labels["status"])
    np.testing.assert_array_equal(a.labels["steps"], b.labels["steps"])
    np.testing.assert_allclose(a.labels["energy"], b.labels["energy"], rtol=0, atol=tol)
    np.testing.assert_allclose(a.lattice, b.lattice, rtol=0, atol=tol)
    np.testing.assert_allclose(a.frac, b.frac, rtol=0, atol=tol)
    np.testing.assert_allclose(a.atom_labels["forces"], b.atom_labels["forces"], rtol=0, atol=tol)
    np.testing.assert_allclose(a.labels["stress"], b.labels["stress"], rtol=0, atol=tol)


def _failing_chunk(queue, k: int, after: int = 0, message: str = OOM):
    """Wrap ``queue._chunk`` so that it raises XLA's error ``message`` for batches of more
    than ``k`` slots, from its ``after``-th call on; records what each failing call saw."""
    chunk, calls, failures = queue._chunk, [0], []

    def wrapped(params, state, min_running):
        calls[0] += 1
        b = state.status.shape[0]
        if b > k and calls[0] > after:
            failures.append({"slots": b, "finished": int(np.sum(np.asarray(state.status) != RUNNING))})
            raise jax.errors.JaxRuntimeError(message)
        return chunk(params, state, min_running)

    queue._chunk = wrapped
    return failures


def test_out_of_memory_halves_the_batch_and_keeps_finished_results():
    structures = rattled(8, seed=21, sigma=0.15)  # they finish at different steps
    settings = dict(batch_fraction=1.0, chunk_steps=5, progress=False)  # precision float64, the default
    reference = RelaxQueue(LJ, CONFIG, **settings).run(structures)
    assert converged(reference).all() and len(set(reference.labels["steps"].tolist())) > 1

    queue = RelaxQueue(LJ, CONFIG, **settings)
    # out of memory for batches of more than 3 slots, once the first structures have finished
    # (chunks of 5 steps; a fresh slot's first step only evaluates it)
    steps = np.sort(reference.labels["steps"])
    after = (int(steps[0]) + 5) // 5  # calls that take the first structure past its last step
    assert 5 * after < steps[-3]  # while three still run (so the batch has not been compacted)
    failures = _failing_chunk(queue, k=3, after=after)
    shrinks = []
    shrink = queue._shrink
    queue._shrink = lambda n_slot, b, in_flight, pending: (shrinks.append(list(in_flight)),
                                                           shrink(n_slot, b, in_flight, pending))
    result = queue.run(structures)

    _same_results(result, reference)
    assert failures[0]["slots"] == 8 and failures[0]["finished"] > 0  # some had finished before the failure
    assert len(shrinks[0]) == 8 - failures[0]["finished"]  # only those in flight were relaxed again
    assert queue.stats["oom_retries"] == len(failures) >= 2
    sizes = list(queue.stats["batch_sizes"])
    assert sizes[0] == 8 and sizes[-1] <= 3  # halved until a batch fits
    assert all(later <= earlier // 2 for earlier, later in zip(sizes, sizes[1:]))
    assert queue.oom_limit[4] <= 3

    # the limit is remembered: the next run of this padded size starts no larger
    again = queue.run(structures[:6])
    assert queue.stats["batch_sizes"][len(sizes)] <= 3
    _same_results(again, reference[np.arange(6)])


def test_out_of_memory_in_a_fixed_batch_and_other_errors():
    structures = rattled(4, seed=22)
    reference = RelaxQueue(LJ, CONFIG, batch=4, progress=False).run(structures)

    fixed = RelaxQueue(LJ, CONFIG, batch=4, progress=False)  # a search's fixed slots shrink too
    _failing_chunk(fixed, k=2)
    _same_results(fixed.run(structures), reference)
    assert fixed.stats["batch_sizes"] == [4, 2] and fixed.oom_limit == {4: 2}

    other = RelaxQueue(LJ, CONFIG, batch=4, progress=False)  # not memory: raised as it is
    _failing_chunk(other, k=0, message="INTERNAL: something else broke")
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        other.run(structures)
    assert other.stats["oom_retries"] == 0

    hopeless = RelaxQueue(LJ, CONFIG, batch=4, progress=False)  # one structure alone does not fit
    _failing_chunk(hopeless, k=0)
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED") as info:
        hopeless.run(structures)
    assert "alone does not fit" in "".join(getattr(info.value, "__notes__", []))
    assert hopeless.stats["batch_sizes"] == [4, 2, 1]


def test_device_memory_and_out_of_memory_detection():
    assert jax.default_backend() == "cpu" and device_memory() is None  # a CPU reports no memory limit

    class Device:
        def __init__(self, stats=None, error=None):
            self.stats, self.error = stats, error

        def memory_stats(self):
            if self.error:
                raise self.error
            return self.stats

    gpu = {"bytes_limit": 80 * 2**30, "bytes_in_use": 2**20, "peak_bytes_in_use": 2**21}
    assert device_memory(Device(gpu)) == gpu
    assert device_memory(Device({"bytes_in_use": 5})) is None
    assert device_memory(Device(error=NotImplementedError())) is None
    assert is_out_of_memory(jax.errors.JaxRuntimeError(OOM))
    assert not is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: no"))
    assert not is_out_of_memory(MemoryError(OOM))
    with pytest.raises(ValueError, match="memory_fraction"):
        RelaxQueue(LJ, memory_fraction=0.0)
    with pytest.raises(ValueError, match="max_batch"):
        RelaxQueue(LJ, max_batch=0)


def _fake_device(monkeypatch, free: float, in_use: float = 2**20):
    stats = {"bytes_limit": int(free + in_use), "bytes_in_use": int(in_use)}
    monkeypatch.setattr(queue_module, "device_memory", lambda device=None: stats)
    return stats


def test_batch_fills_a_fraction_of_the_device_memory(monkeypatch, float64):
    crystal = Crystal.from_structures(rattled(600, seed=23)).pad()
    members = np.arange(crystal.batch_size)
    queue = RelaxQueue(LJ, CONFIG, batch_fraction=1.0, progress=False)
    cpu = queue._batch_size(crystal, members, len(members), 4)  # the edge budget
    sizes = queue._sizes(4)
    sizes(crystal)

    per_edge = probe_bytes_per_edge(queue, crystal, members, 4, cpu)
    assert per_edge > 0
    budget = 64 * 2**20
    _fake_device(monkeypatch, free=budget)
    b = queue._batch_size(crystal, members, len(members), 4)
    expected = int(0.7 * budget // (per_edge * sizes.capacity))
    assert _rounded_down(b, expected) and b > cpu  # the memory rule, not the edge budget
    assert b > MAX_BATCH  # no fixed count caps it on a device with memory

    # the compiled program at that size fits the budget, and fills a good part of it
    probe = queue._slot_crystal(crystal, list(members[:b]), 4)
    state = jax.eval_shape(queue._start, probe, sizes(probe), queue._criteria(b, jnp.float64))
    used = program_bytes(queue._chunk.lower(LJ.params, state, jnp.int32(0)).compile())
    assert 0.35 * budget < used <= 0.7 * budget

    # a quarter of the memory: about a quarter of the slots; little memory: one slot
    _fake_device(monkeypatch, free=budget / 4)
    assert _rounded_down(queue._batch_size(crystal, members, len(members), 4), expected // 4)
    _fake_device(monkeypatch, free=1.0)
    assert queue._batch_size(crystal, members, len(members), 4) == 1
    # explicit caps still hold: max_batch, the list, and the limit an out-of-memory error set
    _fake_device(monkeypatch, free=budget)
    assert _rounded_down(RelaxQueue(LJ, CONFIG, max_batch=50, batch_fraction=1.0,
                                    progress=False)._batch_size(crystal, members, len(members), 4), 50)
    assert _rounded_down(queue._batch_size(crystal, members[:30], 30, 4), 30)
    queue.oom_limit[4] = 17
    assert _rounded_down(queue._batch_size(crystal, members, len(members), 4), 17)


def test_memory_sized_run_gives_the_same_results(monkeypatch):
    structures = rattled(12, seed=24, sigma=0.15)
    reference = RelaxQueue(LJ, CONFIG, progress=False).run(structures)  # CPU rule: batches of 3, refilled
    _fake_device(monkeypatch, free=2**30)
    queue = RelaxQueue(LJ, CONFIG, batch_fraction=1.0, progress=False)
    result = queue.run(structures)
    assert queue.stats["batch_sizes"] == [12]  # memory for all of them
    _same_results(result, reference)
