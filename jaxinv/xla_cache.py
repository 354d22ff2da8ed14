"""One persistent XLA compilation cache for the library, the ASE calculator and the CLI.

Every new Python process compiles its programs again, and on a CPU compiling
SevenNet-0 takes 13-20 s per batch shape, so a relaxation or search that needs
five shapes spends about a minute compiling before it does any work. JAX can keep
compiled executables on disk and load them in a later process; ``import jaxinv``
switches that on (:func:`use_compilation_cache`), in ``$JAXINV_XLA_CACHE`` or else
``<jaxinv cache>/xla`` (``$JAXINV_CACHE``, default ``~/.cache/jaxinv``), so a
script, a notebook, ``JaxinvCalculator`` and ``jaxinv run`` all share it.

``JAXINV_XLA_CACHE=off`` turns it off. A cache directory the user already gave
JAX (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left as it is. Tracing
and lowering still run in every process; only XLA's compilation is skipped.
Entries are keyed by the program, the jax/jaxlib version and the device, so a
cache written by another version is ignored rather than misused. The program
(the lowered HLO, with the compile options and XLA flags) is everything a
compiled executable depends on: a jaxinv upgrade or setting that changes what is
computed changes the program and so the key, which is why jaxinv's own version
need not (and, to keep unchanged programs warm across upgrades, does not) join it.

jaxlib 0.10.1 logs two C++ errors for every executable it loads from the cache
("Target machine feature +prefer-no-gather is not supported on the host
machine ... could lead to execution errors such as SIGILL"). They are false:
``prefer-no-gather``/``-scatter`` are LLVM tuning hints, not instruction-set
features (openxla/xla#44565), and the executable loads and runs correctly.
:func:`drop_spurious_aot_errors` filters exactly those lines out of the
process's stderr whenever jaxinv turns the cache on.
"""
from __future__ import annotations

import atexit
import logging
import os
import select
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["use_compilation_cache", "enable_compilation_cache", "default_cache_path", "drop_spurious_aot_errors"]

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


def enable_compilation_cache(path: str | Path | None = None, min_compile_time_s: float = 0.0,
                             max_size_bytes: int = 4 << 30) -> Path | None:
    """Turn on JAX's persistent compilation cache; return its directory (None: off).

    ``path`` defaults to :func:`default_cache_path`. Only programs that took at
    least ``min_compile_time_s`` to compile are stored (by default all: a workflow
    compiles 100-270 programs under 1 s, and with JAX's 1 s threshold a warm-cache
    quickstart still spent 10.4 of its 24.1 s compiling them; storing every program
    brought it to 14.1 s, benchmarks/RESULTS.md), and the least recently used
    entries are evicted above ``max_size_bytes``. Call it before the first
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
    _recheck_after_earlier_compilations()
    return target


def _recheck_after_earlier_compilations() -> None:
    """JAX decides once per process, at its first compilation, whether a cache is in use;
    if something compiled before the directory was set, make it decide again."""
    try:
        from jax._src import compilation_cache as cc
    except ImportError:  # pragma: no cover - a JAX without that module: nothing to reset
        return
    if getattr(cc, "_cache_checked", False) and not getattr(cc, "_cache_used", True):
        cc.reset_cache()


_STATE: dict = {}


def use_compilation_cache() -> Path | None:
    """The cache every jaxinv entry point shares: :func:`enable_compilation_cache` once per
    process, with XLA's false CPU-AOT errors filtered from stderr when it is on
    (:func:`drop_spurious_aot_errors`). ``import jaxinv`` calls it; ``JAXINV_XLA_CACHE=off``
    turns it off, and a cache directory the user gave JAX is used as it is."""
    if "path" not in _STATE:
        _STATE["path"] = path = enable_compilation_cache()
        if path is not None:
            drop_spurious_aot_errors()
    return _STATE["path"]


def _spurious(line: bytes) -> bool:
    return b"cpu_aot_loader" in line and b"prefer-no-" in line


def drop_spurious_aot_errors() -> bool:
    """Route file descriptor 2 through a filter that drops XLA's false CPU-AOT feature errors.

    Everything else written to stderr (Python, C++, child processes) passes
    through unchanged; text without a line end (progress bars) is passed on
    after 0.1 s of quiet. The filter is undone at exit, after the last output
    has been forwarded. Returns False where stderr cannot be redirected.
    """
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except (OSError, ValueError):  # no real fd 2 (some notebooks, embedded interpreters)
        return False

    def forward(data: bytes):
        lines = data.splitlines(keepends=True)
        kept = b"".join(line for line in lines if not _spurious(line))
        if kept:
            os.write(original, kept)

    def pump():
        held = b""
        while True:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if not ready:  # quiet: pass on a partial line unless it may be the start of a spurious one
                if held and not held.startswith(b"E"):
                    forward(held)
                    held = b""
                continue
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            held += chunk
            cut = max(held.rfind(b"\n"), held.rfind(b"\r")) + 1
            if cut:
                forward(held[:cut])
                held = held[cut:]
        if held:
            forward(held)
        os.close(read_end)

    thread = threading.Thread(target=pump, name="jaxinv-stderr-filter", daemon=True)
    thread.start()

    def restore():
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes our end of the pipe, so the pump sees EOF once children let go
        thread.join(timeout=5.0)

    atexit.register(restore)
    return True
