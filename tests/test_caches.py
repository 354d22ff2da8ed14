"""On-disk caches are keyed by what produced them: an entry written by another jaxinv
version or under other settings is never reused (issue 22, item 9).

The caches: CrystalNN fingerprints (SQLite), parsed dataset CSVs (.npz) and SevenNet
conversions (.npz). The XLA compilation cache is keyed by JAX on the compiled
program itself (see jaxinv/xla_cache.py); screening features are cached in memory only.
"""
import csv

import numpy as np
import pytest

import jaxinv


# ------------------------------------------------------------------ fingerprints
def _structures():
    lat = np.eye(3) * 4.0
    return ([lat, lat * 1.1], [np.array([[0.0, 0, 0], [0.5, 0.5, 0.5]])] * 2, [np.array([11, 17])] * 2)


class FakeCrystalNN:
    """Stands in for the CrystalNN worker pool: returns ``value`` (a constant vector, or a
    TaskTimeout) for every structure and counts the structures it was asked for."""

    def __init__(self, monkeypatch):
        import jaxinv.metrics._parallel as par

        self.value, self.calls = 1.0, 0

        def fake_map(fn, tasks, n_jobs, **kw):
            tasks = list(tasks)
            self.calls += len(tasks)
            for _ in tasks:
                if isinstance(self.value, par.TaskTimeout):
                    yield self.value
                else:
                    yield np.full(61, self.value), 0.0

        monkeypatch.setattr(par, "parallel_map", fake_map)


def _fps(db, **kw):
    from jaxinv.metrics.fingerprints import structure_fingerprints

    return structure_fingerprints(_structures(), n_jobs=1, cache=db, progress=False, **kw)


def test_fingerprints_of_another_jaxinv_version_are_not_reused(tmp_path, monkeypatch):
    fake, db = FakeCrystalNN(monkeypatch), tmp_path / "fp.sqlite"
    with monkeypatch.context() as m:
        m.setattr(jaxinv, "__version__", "0.0.1-older")
        fake.value = 1.0
        np.testing.assert_array_equal(_fps(db), 1.0)
    assert fake.calls == 2
    fake.value = 2.0
    np.testing.assert_array_equal(_fps(db), 2.0)  # computed again, not the older code's values
    assert fake.calls == 4
    fake.value = 3.0
    np.testing.assert_array_equal(_fps(db), 2.0)  # ... and this version's entries are reused
    assert fake.calls == 4


def test_fingerprints_under_other_settings_are_not_reused(tmp_path, monkeypatch):
    import jaxinv.metrics.fingerprints as fpm

    fake, db = FakeCrystalNN(monkeypatch), tmp_path / "fp.sqlite"
    fake.value = 1.0
    _fps(db)
    monkeypatch.setattr(fpm, "MAX_IMAGE_CELLS", 1000)  # another guard: failures may differ
    fake.value = 2.0
    np.testing.assert_array_equal(_fps(db), 2.0)
    monkeypatch.setattr(fpm, "FINGERPRINT_CODE_VERSION", fpm.FINGERPRINT_CODE_VERSION + 1)
    fake.value = 3.0
    np.testing.assert_array_equal(_fps(db), 3.0)
    assert fake.calls == 6


def test_a_timed_out_fingerprint_is_a_failure_only_under_its_time_limit(tmp_path, monkeypatch):
    from jaxinv.metrics._parallel import TaskTimeout

    fake, db = FakeCrystalNN(monkeypatch), tmp_path / "fp.sqlite"
    fake.value = TaskTimeout("timeout")
    assert np.isnan(_fps(db, timeout=5.0)).all()
    assert np.isnan(_fps(db, timeout=5.0)).all() and fake.calls == 2  # the same limit: the failure is reused
    fake.value = 4.0
    np.testing.assert_array_equal(_fps(db, timeout=120.0), 4.0)  # a longer limit tries again
    np.testing.assert_array_equal(_fps(db, timeout=5.0), 4.0)  # a success holds under any limit
    assert fake.calls == 4


# ------------------------------------------------------------------ parsed CSVs
@pytest.fixture
def small_csv(tmp_path, monkeypatch):
    from jaxinv.data.loader import find_dataset_dir

    monkeypatch.setenv("JAXINV_CACHE", str(tmp_path / "cache"))
    csv.field_size_limit(2**31 - 1)
    with open(find_dataset_dir("perov_5")[0] / "val.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, [r for _, r in zip(range(6), reader)]
    path = tmp_path / "d" / "val.csv"
    path.parent.mkdir()
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def _parsed(tmp_path):
    return sorted((tmp_path / "cache" / "parsed").glob("*.npz"))


def test_parsed_csv_of_another_jaxinv_version_is_not_reused(tmp_path, small_csv, monkeypatch):
    from jaxinv.data.loader import read_cdvae_csv

    with monkeypatch.context() as m:
        m.setattr(jaxinv, "__version__", "0.0.1-older")
        read_cdvae_csv(small_csv)
    assert len(_parsed(tmp_path)) == 1
    read_cdvae_csv(small_csv)
    assert len(_parsed(tmp_path)) == 2  # parsed again into an entry of its own
    read_cdvae_csv(small_csv)
    assert len(_parsed(tmp_path)) == 2  # which the next load reuses


def test_parsed_csv_under_other_property_columns_is_not_reused(tmp_path, small_csv):
    from jaxinv.data.loader import read_cdvae_csv
    from jaxinv.data.registry import DatasetInfo

    one = read_cdvae_csv(small_csv, DatasetInfo("x", properties=("heat_ref",)))
    assert set(one["labels"]) == {"heat_ref"}
    two = read_cdvae_csv(small_csv, DatasetInfo("x", properties=("heat_ref", "dir_gap")))
    assert set(two["labels"]) == {"heat_ref", "dir_gap"}
    auto = read_cdvae_csv(small_csv)
    assert {"heat_all", "heat_ref", "dir_gap", "ind_gap"} <= set(auto["labels"])


# ------------------------------------------------------------------ SevenNet conversion
def test_sevennet_conversion_of_another_jaxinv_version_is_not_reused(tmp_path, monkeypatch):
    """The cache logic alone: checkpoint reading, conversion and model building are stubs."""
    from jaxinv.potentials import sevennet as sn
    from jaxinv.potentials.nequip import NequIPConfig

    ckpt = tmp_path / "fake.pth"
    ckpt.write_bytes(b"not a real checkpoint")
    conversions = []

    def convert(_):
        conversions.append(jaxinv.__version__)
        return NequIPConfig.simple((1, 8)), {"params": {"w": np.full(3, float(len(conversions)))}}

    monkeypatch.setattr(sn, "find_checkpoint", lambda name, cache, download: ckpt)
    monkeypatch.setattr(sn, "load_pth", lambda path: None)
    monkeypatch.setattr(sn, "convert_checkpoint", convert)
    monkeypatch.setattr(sn, "nequip_potential", lambda config, params, **kw: params)

    with monkeypatch.context() as m:
        m.setattr(jaxinv, "__version__", "0.0.1-older")
        np.testing.assert_array_equal(sn.load_sevennet("7net-0", cache=tmp_path)["params"]["w"], 1.0)
    params = sn.load_sevennet("7net-0", cache=tmp_path)
    np.testing.assert_array_equal(params["params"]["w"], 2.0)  # converted again by this version
    params = sn.load_sevennet("7net-0", cache=tmp_path)
    np.testing.assert_array_equal(params["params"]["w"], 2.0)  # and reused from then on
    assert conversions == ["0.0.1-older", jaxinv.__version__]
