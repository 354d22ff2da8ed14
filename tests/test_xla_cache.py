"""The persistent XLA compilation cache that ``jaxinv run`` turns on (jaxinv.xla_cache)."""
import json
import os
import subprocess
import sys

# Runs in a fresh interpreter: the cache is global JAX state, set once per process.
PROBE = r"""
import json, sys
import jax, jax.numpy as jnp
from jaxinv.xla_cache import enable_compilation_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
where = enable_compilation_cache(min_compile_time_s=0.0)
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
f(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"dir": None if where is None else str(where), "hits": len(hits)}))
"""


def probe(env):
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "xla"
    first = probe({"JAXINV_XLA_CACHE": str(cache)})
    assert first == {"dir": str(cache), "hits": 0}
    assert any(cache.iterdir()), "nothing was written to the cache"
    second = probe({"JAXINV_XLA_CACHE": str(cache)})
    assert second["hits"] >= 1


def test_off_and_user_setting(tmp_path):
    assert probe({"JAXINV_XLA_CACHE": "off"})["dir"] is None
    theirs = tmp_path / "theirs"
    # a directory the user gave JAX wins over ours
    out = probe({"JAXINV_XLA_CACHE": str(tmp_path / "ours"), "JAX_COMPILATION_CACHE_DIR": str(theirs)})
    assert out["dir"] == str(theirs)
    assert not (tmp_path / "ours").exists()


def test_default_path_under_jaxinv_cache(tmp_path, monkeypatch):
    from jaxinv.xla_cache import default_cache_path

    monkeypatch.delenv("JAXINV_XLA_CACHE", raising=False)
    monkeypatch.setenv("JAXINV_CACHE", str(tmp_path))
    assert default_cache_path() == tmp_path / "xla"
    monkeypatch.setenv("JAXINV_XLA_CACHE", "OFF")
    assert default_cache_path() is None


FILTERED = r"""
import os, subprocess, sys
import jax, jax.numpy as jnp
if sys.argv[1] == "filter":  # importing jaxinv turns the cache on and filters stderr
    from jaxinv.xla_cache import use_compilation_cache
    assert use_compilation_cache() is not None
else:  # the same cache through JAX alone, unfiltered
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXINV_XLA_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
print("python line", file=sys.stderr, flush=True)
os.write(2, b"E0000 00:00:00 other.cc:1] a real C++ error\n")
subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('child line\\n')"])
jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)(jnp.ones((8, 8))).block_until_ready()
sys.stderr.write("progress 50%\r")
sys.stderr.flush()
raise SystemExit(3)
"""


def test_spurious_aot_errors_are_dropped_and_nothing_else(tmp_path):
    env = {**os.environ, "JAXINV_XLA_CACHE": str(tmp_path / "xla")}
    run = lambda mode: subprocess.run([sys.executable, "-c", FILTERED, mode], env=env, capture_output=True,
                                      text=True, timeout=300)
    run("plain")  # fills the cache
    plain, filtered = run("plain"), run("filter")  # both load from it
    # jaxlib 0.10.1 logs the false feature mismatch when it loads a cached CPU executable
    assert "cpu_aot_loader" in plain.stderr and "prefer-no-gather" in plain.stderr
    assert "cpu_aot_loader" not in filtered.stderr, filtered.stderr[-2000:]
    for kept in ("python line", "a real C++ error", "child line", "progress 50%"):
        assert kept in filtered.stderr
    assert filtered.returncode == 3


LIBRARY = r"""
import json, sys
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
jax.jit(lambda x: x + 1.0)(jnp.ones(3)).block_until_ready()  # a compilation before jaxinv is imported
import jaxinv  # turns the shared cache on
from jaxinv.xla_cache import use_compilation_cache
jax.jit(lambda x: jnp.tanh(x) @ x.T - 2.0)(jnp.ones((8, 8))).block_until_ready()
print(json.dumps({"dir": str(use_compilation_cache()), "hits": len(hits)}))
"""


def test_importing_jaxinv_shares_the_cache_even_after_an_earlier_compilation(tmp_path):
    """Library users get the CLI's cache: JAX decides at its first compilation whether a cache
    is used, so jaxinv must make it decide again when something compiled before the import."""
    env = {**os.environ, "JAXINV_XLA_CACHE": str(tmp_path / "xla")}
    run = lambda: subprocess.run([sys.executable, "-c", LIBRARY], env=env, capture_output=True, text=True,
                                 timeout=300)
    first, second = run(), run()
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (first, second))
    assert first == {"dir": str(tmp_path / "xla"), "hits": 0}
    assert second["hits"] >= 1
