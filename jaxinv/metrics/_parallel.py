"""Process-parallel map with a progress bar, shared by fingerprinting and matching."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Iterable, Iterator

__all__ = ["parallel_map", "can_spawn"]

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


def parallel_map(fn: Callable, tasks: Iterable, n_jobs: int = 1, initializer: Callable | None = None,
                 initargs: tuple = (), progress: bool = False, desc: str = "", min_tasks: int = 2) -> Iterator:
    """Yield ``fn(task)`` in task order, in ``n_jobs`` spawned processes when there
    are at least ``min_tasks`` tasks (starting a worker costs seconds of imports).

    Spawn, not fork: the parent may hold JAX's thread pools, which a forked child
    would inherit in an undefined state.
    """
    from tqdm.auto import tqdm

    tasks = list(tasks)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, mininterval=2.0)
    parallel = n_jobs > 1 and len(tasks) >= max(2, min_tasks)
    if parallel and not can_spawn():
        log.warning("%s: running serially (worker processes cannot re-import a __main__ read from stdin)", desc)
        parallel = False
    try:
        if parallel:
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
