"""A persistent XLA compilation cache for command-line runs.

Every ``jaxinv run ...`` is a fresh process, and on a CPU compiling SevenNet-0
takes 13-20 s per batch shape, so a relaxation or search that needs five
shapes spends about a minute compiling before it does any work. JAX can keep
compiled executables on disk and load them in a later process; this module
switches that on, in ``$JAXINV_XLA_CACHE`` or else ``<jaxinv cache>/xla``
(``$JAXINV_CACHE``, default ``~/.cache/jaxinv``).

``JAXINV_XLA_CACHE=off`` turns it off. A cache directory the user already gave
JAX (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is. Tracing
and lowering still run in every process; only XLA's compilation is skipped.
Entries are keyed by the program, the jax/jaxlib version and the device, so a
cache written by another version is ignored rather than misused.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["enable_compilation_cache", "default_cache_path"]

OFF = {"0", "off", "false", "no", "none"}


def default_cache_path() -> Path | None:
    """Where the cache goes, or None if ``JAXINV_XLA_CACHE`` turns it off."""
    value = os.environ.get("JAXINV_XLA_CACHE", "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value).expanduser()
    from jaxinv.data.loader import cache_dir

    return cache_dir() / "xla"


def enable_compilation_cache(path: str | Path | None = None, min_compile_time_s: float = 1.0,
                             max_size_bytes: int = 4 << 30) -> Path | None:
    """Turn on JAX's persistent compilation cache; return its directory (None: off).

    ``path`` defaults to :func:`default_cache_path`. Only programs that took at
    least ``min_compile_time_s`` to compile are stored, and the least recently
    used entries are evicted above ``max_size_bytes``. Call it before the first
    compilation: JAX reads these settings when it first uses the cache.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    target = Path(path).expanduser() if path is not None else default_cache_path()
    if target is None:
        return None
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # read-only home, full disk: compile as usual
        log.warning("no XLA compilation cache (%s): %s", target, err)
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    jax.config.update("jax_compilation_cache_max_size", int(max_size_bytes))
    return target
