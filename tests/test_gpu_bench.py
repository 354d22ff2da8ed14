"""benchmarks/gpu.sh and bench_gpu.py: the smoke run on a CPU, failure and timeout records,
and where the SevenNet-0 weights come from on a machine without a network."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import bench_gpu  # benchmarks/, on sys.path from conftest
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path, **extra):
    env = dict(os.environ)
    env.pop("OUT", None)
    env.update(JAXINV_GPU_CARRY=str(tmp_path / "no-carry"), JAXINV_XLA_CACHE="off", **extra)
    return env


def test_smoke_run_records_every_section(tmp_path):
    out = tmp_path / "smoke.json"
    # the sections' soft budgets stay the smoke's; the total (hard limits) is generous, because on
    # a shared CI machine a section can take twice its budget and this test checks records, not speed
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--out", str(out),
                           "--total", "480"],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["mode"] == "smoke" and data["meta"]["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    sections = data["sections"]
    assert list(sections) == list(bench_gpu.SECTIONS)
    for name, record in sections.items():
        assert record["status"] == "ok", (name, record.get("error"), record.get("traceback"))
        assert record["device"]["backend"] == "cpu" and record["peak_bytes"] is None  # a CPU reports no memory
        assert 0 < record["wall_s"]

    efs = sections["potential"]["batches"]
    assert [row["batch"] for row in efs] == bench_gpu.SMOKE["efs_batches"]
    assert all(row["structures_per_s"] > 0 and row["edges"] > 0 and row["peak_bytes"] is None for row in efs)
    relax = sections["relax"]
    assert relax["n"] == bench_gpu.SMOKE["relax_n"] and relax["device_memory_rule"] is False
    cold = relax["cold"]
    assert sum(cold["status"].values()) == relax["n"] and cold["oom_retries"] == 0
    assert cold["batch_sizes"] and cold["structures_per_s"] > 0
    gen = sections["generative"]
    assert gen["train"][0]["steps"] == bench_gpu.SMOKE["gen_steps"] and gen["train"][0]["steps_per_s"] > 0
    assert gen["sampling"]["n"] == bench_gpu.SMOKE["gen_samples"] and gen["sampling"]["crystals_per_s"] > 0
    search = sections["search"]["first_generation"]
    assert search["relaxations"] == bench_gpu.SMOKE["search_batch"] and np.isfinite(search["best_fitness"])
    for name in bench_gpu.SECTIONS:  # each section reports its status as it finishes
        assert f"[{name}] ok in " in proc.stdout, proc.stdout[-2000:]


def test_a_failing_and_a_hung_section_are_recorded_and_the_rest_runs(tmp_path):
    """An error is recorded with its message; a section past its hard limit is killed
    and recorded as a timeout; the driver goes on and exits non-zero."""
    out = tmp_path / "fail.json"
    budgets = dict(bench_gpu.SMOKE["budgets"], potential=1000)  # soft budget: repeat for 250 s
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--smoke", "--out", str(out),
           "--sections", "search,potential", "--total", "12", "--set", "search_formula", '"Xx4"',
           "--set", "efs_repeats", "1000000000", "--set", "budgets", json.dumps(budgets)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    sections = json.loads(out.read_text())["sections"]
    assert sections["search"]["status"] == "error" and "Xx" in sections["search"]["error"]
    assert "Traceback" in sections["search"]["traceback"]
    hung = sections["potential"]
    assert hung["status"] == "timeout" and hung["hard_timeout_s"] >= 10 and hung["wall_s"] < 60
    assert hung["device"]["backend"] == "cpu"  # written by the section before it was killed


def _checkpoint():
    from jaxinv.potentials.sevennet import find_checkpoint

    try:
        return find_checkpoint("7net-0", download=False)
    except FileNotFoundError:
        pytest.skip("no SevenNet-0 checkpoint here (sevenn not installed, nothing in the jaxinv cache)")


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
    return out


def test_sevennet_weights_travel_without_a_network(tmp_path, monkeypatch):
    """What ``gpu.sh prepare`` writes is enough: the converted .npz alone, or a sevenn
    wheel alone, gives SevenNet-0 with downloads off and no sevenn installed."""
    import jaxinv.potentials.sevennet as sevennet

    checkpoint = _checkpoint()
    reference = _flat(sevennet.load_sevennet("7net-0", download=False).params)
    monkeypatch.setattr(sevennet, "_installed_sevenn", lambda: [])  # as on the device: no sevenn package

    carry = tmp_path / "carry"
    done = bench_gpu.prepare(carry, wheels=False)
    assert (carry / "data" / "perov_5" / "val.csv").is_file() and len(done["converted"]) == 1
    Path(done["checkpoint"]).unlink()  # the conversion alone must do
    monkeypatch.setenv("JAXINV_CACHE", str(carry / "jaxinv-cache"))
    pot = bench_gpu.load_sevennet0(carry)
    assert bench_gpu.potential_info(pot)["converted"] == [Path(done["converted"][0]).name]
    for k, v in _flat(pot.params).items():
        np.testing.assert_array_equal(v, reference[k], err_msg=k)

    # a sevenn wheel in the carry folder, an empty cache: the checkpoint is taken out and converted
    wheel_carry = tmp_path / "wheel-carry" / "wheels"
    wheel_carry.mkdir(parents=True)
    member = "sevenn/pretrained_potentials/{}/{}".format(*sevennet.MODELS["7net-0"])
    with zipfile.ZipFile(wheel_carry / f"sevenn-{sevennet.SEVENN_VERSION}-py3-none-any.whl", "w") as zf:
        zf.write(checkpoint, member)
    monkeypatch.setenv("JAXINV_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match="gpu.sh prepare"):
        bench_gpu.load_sevennet0(tmp_path / "nothing")
    pot = bench_gpu.load_sevennet0(wheel_carry.parent)
    for k, v in _flat(pot.params).items():
        np.testing.assert_array_equal(v, reference[k], err_msg=k)
