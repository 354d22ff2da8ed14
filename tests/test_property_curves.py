"""benchmarks/bench_property_curves.py: the learning-curve loop on a tiny subset."""
import importlib.util
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_property_curves", ROOT / "benchmarks" / "bench_property_curves.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_subsets_nested_and_seeded():
    b = _bench()
    a, c = b.subset_indices(3017, "500"), b.subset_indices(3017, "1000")
    assert len(a) == 500 and len(np.unique(a)) == 500 and set(a) <= set(c)
    assert np.array_equal(a, b.subset_indices(3017, "500"))
    assert np.array_equal(b.subset_indices(3017, "all"), np.arange(3017))


def test_rows_and_resume(tmp_path):
    b = _bench()
    out = tmp_path / "curves.json"
    kw = dict(datasets=["perov_5"], models=["median", "magpie_site"], sizes=["32"], out=out,
              overrides={"magpie_site": {"epochs": 2, "n_members": 2, "batch_size": 16}},
              feature_cache=tmp_path, log=lambda *a: None)
    ran = b.run_curves(**kw)
    assert [r["model"] for r in ran] == ["median", "magpie_site"]
    rows = b.load_rows(out)
    assert len(rows) == 2
    for r in rows:
        assert r["dataset"] == "perov_5" and r["target"] == "heat_ref" and r["size"] == "32" and r["n_train"] == 32
        assert r["n_valid"] > 0 and r["n_test"] > 0
        for part in ("test", "test_recalibrated"):
            assert math.isfinite(r[part]["mae"]) and r[part]["mae"] > 0
            for k in ("within_1sigma", "within_2sigma"):
                assert 0.0 <= r[part][k] <= 1.0
        assert r["sigma_scale"] > 0 and r["seconds"]["train"] >= 0
    assert rows[1]["train"]["epochs"] == 2 and rows[1]["train"]["n_members"] == 2
    # resume: the finished runs are skipped, a new size runs
    assert b.run_curves(**kw) == []
    assert len(b.load_rows(out)) == 2
    ran = b.run_curves(**{**kw, "models": ["median"], "sizes": ["32", "48"]})
    assert [(r["model"], r["n_train"]) for r in ran] == [("median", 48)]
    assert len(b.load_rows(out)) == 3
    assert "| perov_5 | magpie_site | 32 |" in b.table(b.load_rows(out))
