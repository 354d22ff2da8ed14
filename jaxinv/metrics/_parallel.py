"""Process-parallel map with a progress bar, shared by fingerprinting and matching.

With ``timeout`` every task runs in a worker process that is killed and replaced
when the task overruns its wall-clock limit: a Python-level timer cannot stop
compiled code (pymatgen's periodic image search, for one), a killed process can.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Iterable, Iterator

__all__ = ["parallel_map", "can_spawn", "TaskTimeout"]

log = logging.getLogger("jaxinv.metrics")


def can_spawn() -> bool:
    """Whether spawned workers can re-import ``__main__``.

    A script read from stdin (``python - <<EOF``) has ``__main__.__file__ ==
    '<stdin>'``; spawned children would die importing it and ``multiprocessing.Pool``
    would restart them forever, so such callers run serially instead.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(getattr(main, "__spec__", None), "name", None):
        return True
    path = getattr(main, "__file__", None)
    return path is None or os.path.isfile(path)


class TaskTimeout:
    """What :func:`parallel_map` yields for a task that overran ``timeout`` (its
    worker was killed) or whose worker died (``reason`` says which)."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self):
        return f"TaskTimeout({self.reason!r})"


def parallel_map(fn: Callable, tasks: Iterable, n_jobs: int = 1, initializer: Callable | None = None,
                 initargs: tuple = (), progress: bool = False, desc: str = "", min_tasks: int = 2,
                 timeout: float | None = None) -> Iterator:
    """Yield ``fn(task)`` in task order, in ``n_jobs`` spawned processes when there
    are at least ``min_tasks`` tasks (starting a worker costs seconds of imports).

    ``timeout`` (wall seconds per task): a task that runs longer has its worker
    killed and replaced, and yields a :class:`TaskTimeout` instead of a result (so
    does a task whose worker crashes). It applies to the process path only; fewer
    than ``min_tasks`` tasks run in this process, unguarded.

    Spawn, not fork: the parent may hold JAX's thread pools, which a forked child
    would inherit in an undefined state.
    """
    from tqdm.auto import tqdm

    tasks = list(tasks)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, mininterval=2.0)
    parallel = n_jobs > 1 and len(tasks) >= max(2, min_tasks)
    if timeout is not None and len(tasks) >= max(2, min_tasks):
        parallel = True  # killing is what makes the limit work, even with one worker
    if parallel and not can_spawn():
        log.warning("%s: running serially (worker processes cannot re-import a __main__ read from stdin)", desc)
        parallel = False
    try:
        if parallel and timeout is not None:
            for r in _killable_map(fn, tasks, n_jobs, initializer, initargs, timeout, desc):
                bar.update(1)
                yield r
        elif parallel:
            import multiprocessing as mp

            chunksize = max(1, min(32, len(tasks) // (8 * n_jobs)))
            with mp.get_context("spawn").Pool(n_jobs, initializer=initializer, initargs=initargs) as pool:
                for r in pool.imap(fn, tasks, chunksize=chunksize):
                    bar.update(1)
                    yield r
        else:
            if initializer is not None:
                initializer(*initargs)
            for t in tasks:
                r = fn(t)
                bar.update(1)
                yield r
    finally:
        bar.close()


def _worker_loop(conn, fn, initializer, initargs):
    """Body of a killable worker: set up, say so, then run the tasks received on
    ``conn`` until told to stop."""
    if initializer is not None:
        initializer(*initargs)
    conn.send(None)  # ready: the task clock starts after the (seconds of) imports
    while True:
        msg = conn.recv()
        if msg is None:
            return
        index, task = msg
        try:
            conn.send((index, True, fn(task)))
        except Exception as e:  # returned to the parent, which re-raises it
            conn.send((index, False, e))


def _killable_map(fn, tasks, n_jobs, initializer, initargs, timeout, desc):
    """In-order results of ``fn`` over ``tasks`` on ``n_jobs`` workers, one task at a
    time each; a worker whose task overruns ``timeout`` is killed and replaced."""
    import multiprocessing as mp
    import time
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_loop, args=(child, fn, initializer, initargs), daemon=True)
        proc.start()
        child.close()
        return {"proc": proc, "conn": parent, "ready": False, "index": None, "since": 0.0}

    workers = [start() for _ in range(min(n_jobs, len(tasks)))]
    done, next_task, next_out = {}, 0, 0

    def assign(w):
        nonlocal next_task
        w["index"] = None
        if next_task < len(tasks):
            w["index"], w["since"] = next_task, time.monotonic()
            w["conn"].send((next_task, tasks[next_task]))
            next_task += 1

    def restart(w, reason):
        if w["index"] is None:  # died while starting: nothing to report but the crash
            raise RuntimeError(f"{desc}: a worker process died while starting")
        log.warning("%s: task %d %s; its worker was replaced", desc, w["index"], reason)
        done[w["index"]] = TaskTimeout(reason)
        w["proc"].kill()
        w["proc"].join()
        w["conn"].close()
        w.update(start())

    try:
        while next_out < len(tasks):
            now = time.monotonic()
            running = [w for w in workers if w["index"] is not None]
            wait_for = min((w["since"] + timeout - now for w in running), default=None)
            ready = set(wait([w["conn"] for w in workers] + [w["proc"].sentinel for w in workers],
                             timeout=None if wait_for is None else max(0.0, wait_for)))
            for w in workers:
                if w["conn"] in ready:
                    try:
                        msg = w["conn"].recv()
                    except (EOFError, OSError):
                        restart(w, "lost its worker (the process died)")
                        continue
                    if msg is None:  # the worker finished starting
                        w["ready"] = True
                        assign(w)
                        continue
                    index, ok, value = msg
                    if not ok:
                        raise value
                    done[index] = value
                    assign(w)
                elif w["proc"].sentinel in ready:
                    restart(w, "lost its worker (the process died)")
                elif w["index"] is not None and time.monotonic() - w["since"] > timeout:
                    restart(w, f"ran over its {timeout:g} s wall-clock limit")
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    finally:
        for w in workers:
            try:
                w["conn"].send(None)
            except (OSError, ValueError):
                pass
        for w in workers:
            w["proc"].join(timeout=5)
            if w["proc"].is_alive():
                w["proc"].kill()
