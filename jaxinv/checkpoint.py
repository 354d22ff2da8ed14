"""Orbax checkpoints for long runs: save a pytree of arrays, resume from the latest.

Every long-running loop of jaxinv (relaxation queues, searches, training,
funnels) keeps what it must not lose in one pytree and hands it to a
:class:`Checkpointer` every so often. Orbax writes each step atomically (a
temporary directory renamed when complete), so a run killed mid-write resumes
from the previous complete step.

A ``fingerprint`` string identifies the inputs of a run; resuming with
different inputs raises instead of mixing two runs' results.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Checkpointer", "fingerprint_arrays"]

log = logging.getLogger("jaxinv.checkpoint")


def fingerprint_arrays(*arrays) -> str:
    """A short hash of arrays' bytes, dtypes and shapes (host side)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class Checkpointer:
    """Save/restore a pytree of NumPy/JAX arrays under ``directory``.

    ``every_seconds`` throttles :meth:`maybe_save`; :meth:`save` always writes.
    """

    def __init__(self, directory: str | Path, fingerprint: str = "", max_to_keep: int = 2,
                 every_seconds: float = 30.0):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.every_seconds = every_seconds
        self._last = time.monotonic()
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory / "orbax", options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))
        meta = self.directory / "fingerprint.json"
        if meta.exists():
            saved = json.loads(meta.read_text()).get("fingerprint", "")
            if fingerprint and saved and saved != fingerprint and self._manager.latest_step() is not None:
                raise ValueError(f"checkpoint in {self.directory} belongs to a different run (inputs or settings "
                                 f"differ: {saved} != {fingerprint}); use a new directory or delete it")
        meta.write_text(json.dumps({"fingerprint": fingerprint}))

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, target: Any = None) -> tuple[int, Any] | None:
        """(step, pytree) of the latest complete checkpoint, or None.

        Without ``target`` the tree comes back as orbax stored it (dicts and
        lists of NumPy arrays). With ``target`` (a pytree of the saved
        structure, e.g. ``(params, opt_state)`` freshly initialized) the leaves
        are restored into that structure, so NamedTuples such as optax states
        keep their types; only the target's structure, shapes and dtypes are used."""
        step = self._manager.latest_step()
        if step is None:
            return None
        if target is None:
            args = self._ocp.args.StandardRestore()
        else:
            args = self._ocp.args.StandardRestore(_to_numpy(target))
        tree = self._manager.restore(step, args=args)
        log.info("resumed from %s step %d", self.directory, step)
        return step, tree

    def save(self, step: int, tree: Any) -> None:
        tree = _to_numpy(tree)
        self._manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
        self._manager.wait_until_finished()
        self._last = time.monotonic()

    def maybe_save(self, step: int, tree_fn) -> bool:
        """Save ``tree_fn()`` if ``every_seconds`` have passed since the last save."""
        if time.monotonic() - self._last < self.every_seconds:
            return False
        self.save(step, tree_fn())
        return True

    def close(self) -> None:
        self._manager.close()


def _to_numpy(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)
