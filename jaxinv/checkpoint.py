"""Orbax checkpoints for long runs: save a pytree of arrays, resume from the latest.

Every long-running loop of jaxinv (relaxation queues, searches, training,
funnels) keeps what it must not lose in one pytree and hands it to a
:class:`Checkpointer` every so often. Orbax writes each step atomically (a
temporary directory renamed when complete), so a run killed mid-write resumes
from the previous complete step.

A ``fingerprint`` string identifies the inputs of a run; resuming with
different inputs raises instead of mixing two runs' results.

A step whose files were damaged afterwards (a full disk, a truncated copy, a
garbled file) is skipped with a warning and moved aside to ``corrupt/``; the
run resumes from the newest step that reads back. When none does,
:class:`CheckpointError` says so in one line naming the folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Checkpointer", "CheckpointError", "fingerprint_arrays", "json_leaf", "from_json_leaf"]

log = logging.getLogger("jaxinv.checkpoint")


class CheckpointError(FileNotFoundError):
    """No step of a checkpoint folder reads back (each is damaged or incomplete).

    A :class:`FileNotFoundError` (no usable checkpoint was found), so the
    command line prints its one-line message instead of a traceback."""


def fingerprint_arrays(*arrays) -> str:
    """A short hash of arrays' bytes, dtypes and shapes (host side)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def json_leaf(obj) -> np.ndarray:
    """``obj`` (a loss history, a model's settings) as JSON in a uint8 array: a leaf orbax
    stores with the arrays, and a fingerprint can hash."""
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


def from_json_leaf(leaf):
    """The object :func:`json_leaf` stored (orbax may hand the array back as another dtype)."""
    return json.loads(bytes(np.asarray(leaf).astype(np.uint8)).decode())


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
            try:
                saved = json.loads(meta.read_text()).get("fingerprint", "")
            except (ValueError, AttributeError, OSError) as e:  # written by a run killed mid-write
                log.warning("unreadable %s (%s); cannot check that the checkpoint belongs to this run",
                            meta, _one_line(e))
                saved = ""
            if fingerprint and saved and saved != fingerprint and self._manager.latest_step() is not None:
                raise ValueError(f"checkpoint in {self.directory} belongs to a different run (inputs or settings "
                                 f"differ: {saved} != {fingerprint}); use a new directory or delete it")
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint}))
        os.replace(tmp, meta)  # atomic: a kill leaves the old file or the new one

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
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        bad: list[tuple[int, str]] = []
        for step in steps:
            if target is None:
                args = self._ocp.args.StandardRestore()
            else:
                args = self._ocp.args.StandardRestore(_to_numpy(target))
            try:
                with _quiet_absl():
                    tree = self._manager.restore(step, args=args)
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore/json raise many kinds
                bad.append((step, _one_line(e)))
                log.warning("checkpoint step %d in %s does not read back (%s); trying the previous step",
                            step, self.directory, bad[-1][1])
                continue
            if bad:
                self._set_aside([b for b, _ in bad])
                log.warning("resuming from step %d of %s; damaged step(s) %s moved to %s", step, self.directory,
                            ", ".join(str(b) for b, _ in bad), self.directory / "corrupt")
            log.info("resumed from %s step %d", self.directory, step)
            return step, tree
        raise CheckpointError(
            f"no readable checkpoint in {self.directory}: step(s) {', '.join(str(b) for b, _ in bad)} are damaged "
            f"or incomplete (step {bad[0][0]}: {bad[0][1]}); delete that folder or choose another out_dir to "
            "start over")

    def _set_aside(self, steps: list[int]) -> None:
        """Move damaged step folders out of orbax's sight (kept for inspection, never deleted),
        so the resumed run can write those step numbers again."""
        dest_root = self.directory / "corrupt"
        dest_root.mkdir(exist_ok=True)
        for step in steps:
            src = self.directory / "orbax" / str(step)
            if not src.exists():
                continue
            dest, k = dest_root / str(step), 1
            while dest.exists():
                dest, k = dest_root / f"{step}.{k}", k + 1
            shutil.move(str(src), str(dest))
        self._manager.reload()

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


def _one_line(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def _quiet_absl():
    """Orbax logs a damaged metadata file at ERROR (with its whole content) before raising; the
    warning above says it in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _to_numpy(tree):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)
