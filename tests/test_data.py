import csv
import logging
import shutil
import time

import numpy as np
import pytest

from jaxinv.data import DatasetNotFoundError, load_dataset


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXINV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write_bad_copy(src, dst_dir, n=40):
    """A copy of the first n rows of a real CSV with four broken rows."""
    csv.field_size_limit(2**31 - 1)
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = reader.fieldnames, [r for _, r in zip(range(n), reader)]
    rows[3]["cif"] = "data_broken\n_cell_length_a 4.0\nthis is not a CIF"
    rows[10]["heat_ref"] = ""
    rows[17]["dir_gap"] = "nan"
    rows[25]["cif"] = rows[25]["cif"].replace("_cell_length_a", "_cell_length_q")
    dst_dir.mkdir(parents=True)
    with open(dst_dir / "val.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return rows


def test_bad_rows_are_skipped_with_row_and_reason(tmp_path, isolated_cache, monkeypatch, caplog):
    src = load_dataset.__globals__["find_dataset_dir"]("perov_5")[0] / "val.csv"
    rows = _write_bad_copy(src, tmp_path / "data" / "perov_5")
    monkeypatch.setenv("JAXINV_DATA", str(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="jaxinv.data"):
        ds = load_dataset("perov_5")
    assert len(ds) == 36
    assert [s.row for s in ds.skipped] == [4, 11, 18, 26]
    reasons = {s.row: s.reason for s in ds.skipped}
    assert "bad CIF" in reasons[4] and "heat_ref" in reasons[11] and "dir_gap" in reasons[18]
    assert "bad CIF" in reasons[26]
    text = caplog.text
    for r in (4, 11, 18, 26):
        assert f"row {r} " in text
    assert "skipped 4 malformed rows" in text
    assert rows[4]["material_id"] in set(ds.ids) and rows[3]["material_id"] not in set(ds.ids)
    # the cached reload reports the same skipped rows and the same data
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxinv.data"):
        again = load_dataset("perov_5")
    assert [s.row for s in again.skipped] == [4, 11, 18, 26] and "row 18" in caplog.text
    np.testing.assert_array_equal(again.frac, ds.frac)


def test_second_load_is_fast_and_identical(isolated_cache):
    t0 = time.perf_counter()
    first = load_dataset("perov_5")
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_dataset("perov_5")
    t_second = time.perf_counter() - t0
    assert len(first) == 3787
    assert t_second < 0.5 * t_first  # the parsed cache, not CIF parsing
    np.testing.assert_array_equal(first.lattice, second.lattice)
    np.testing.assert_array_equal(first.numbers, second.numbers)
    np.testing.assert_array_equal(first.labels["heat_ref"], second.labels["heat_ref"])
    assert list(first.ids) == list(second.ids)


def test_splits_are_deterministic_disjoint_and_complete(perov, carbon):
    for ds in (perov, carbon):
        parts = [ds.subset(s) for s in ("train", "valid", "test")]
        ids = [set(p.ids) for p in parts]
        assert sum(len(p) for p in parts) == len(ds)
        assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
        assert 0.75 < len(parts[0]) / len(ds) < 0.85
        assert "hash split" in ds.split_source
    again = load_dataset("perov_5:test")
    assert list(again.ids) == list(perov.subset("test").ids)


def test_upstream_split_files_are_used_when_all_present(tmp_path, monkeypatch, isolated_cache):
    src = load_dataset.__globals__["find_dataset_dir"]("carbon_24")[0] / "val.csv"
    d = tmp_path / "carbon_24"
    d.mkdir()
    for name in ("train.csv", "val.csv", "test.csv"):
        shutil.copy(src, d / name)
    ds = load_dataset(str(d))
    assert ds.split_source == "upstream train/val/test files"
    assert (ds.split == "train").sum() == (ds.split == "test").sum() == 2032


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXINV_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("JAXINV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("jaxinv.data.loader._shared_candidates", lambda: [tmp_path / "also_nowhere"])
    monkeypatch.setattr("jaxinv.data.loader._download", lambda info, dest, timeout=20.0: False)
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mp_20")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "mp_20") in msg and "JAXINV_DATA" in msg
    assert "https://raw.githubusercontent.com/txie-93/cdvae/main/data/mp_20/train.csv" in msg
    with pytest.raises(DatasetNotFoundError, match="unknown dataset"):
        load_dataset("perov_6")


def test_summary_and_batches(carbon):
    s = carbon.summary()
    assert s["structures"] == 2032 and s["elements"] == {"C": int(carbon.n_atoms.sum())}
    assert s["atoms_per_cell"]["min"] == 6 and s["atoms_per_cell"]["max"] == 24
    seen = []
    for idx, batch in carbon.batches(100, shuffle=True, seed=1):
        assert batch.batch_size == 100
        np.testing.assert_array_equal(batch.n_atoms[: len(idx)], carbon.n_atoms[idx])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(carbon)))


def test_data_info_cli(capsys):
    from jaxinv.cli import main

    assert main(["data", "info", "perov_5"]) == 0
    out = capsys.readouterr().out
    assert "3787 structures" in out and "heat_ref" in out and "atoms per cell: min 5, max 5" in out


def _perov_rows(n):
    src = load_dataset.__globals__["find_dataset_dir"]("perov_5")[0] / "val.csv"
    csv.field_size_limit(2**31 - 1)
    with open(src, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, [r for _, r in zip(range(n), reader)]


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def test_upstream_test_file_is_the_test_split_never_pooled(tmp_path, monkeypatch, isolated_cache, capsys):
    header, rows = _perov_rows(60)
    _write_csv(tmp_path / "data" / "perov_5" / "val.csv", header, rows[:45])
    _write_csv(tmp_path / "data" / "perov_5" / "test.csv", header, rows[45:])
    monkeypatch.setenv("JAXINV_DATA", str(tmp_path / "data"))
    ds = load_dataset("perov_5")
    test_ids = {r["material_id"] for r in rows[45:]}
    assert set(ds.subset("test").ids) == test_ids  # exactly the upstream test file
    learn = set(ds.subset("train").ids) | set(ds.subset("valid").ids)
    assert learn == {r["material_id"] for r in rows[:45]} and not (learn & test_ids)
    assert len(ds.subset("valid")) > 0 and len(ds.subset("train")) > len(ds.subset("valid"))
    assert "test.csv" in ds.split_source and "never pooled" in ds.split_source
    assert list(load_dataset("perov_5:test").ids) == list(ds.subset("test").ids)

    from jaxinv.cli import main

    assert main(["data", "info", "perov_5"]) == 0
    out = capsys.readouterr().out
    assert "60 structures" in out and "test 15)" in out and "upstream test.csv" in out


def test_without_upstream_test_file_the_test_split_is_said_to_be_ours(tmp_path, monkeypatch, isolated_cache,
                                                                     caplog):
    header, rows = _perov_rows(40)
    _write_csv(tmp_path / "data" / "perov_5" / "val.csv", header, rows)
    monkeypatch.setenv("JAXINV_DATA", str(tmp_path / "data"))
    with caplog.at_level(logging.WARNING, logger="jaxinv.data"):
        ds = load_dataset("perov_5")
    assert "jaxinv's own split" in ds.split_source and "no upstream test.csv" in ds.split_source
    assert ds.summary()["split_source"] == ds.split_source
    assert "jaxinv's own split" in caplog.text


def test_one_non_numeric_value_skips_its_row_not_the_column(tmp_path, isolated_cache, caplog):
    header, rows = _perov_rows(12)
    rows[2]["heat_ref"] = "abc"
    path = tmp_path / "mine" / "some.csv"  # not a registered dataset: columns are inferred
    _write_csv(path, header, rows)
    with caplog.at_level(logging.WARNING, logger="jaxinv.data"):
        ds = load_dataset(str(path))
    assert {"heat_ref", "heat_all", "dir_gap", "ind_gap"} <= set(ds.labels)
    assert len(ds) == 11 and rows[2]["material_id"] not in set(ds.ids)
    (skip,) = ds.skipped
    assert skip.row == 3 and "heat_ref" in skip.reason and "abc" in skip.reason
    assert "row 3" in caplog.text
    np.testing.assert_allclose(ds.labels["heat_ref"], [float(r["heat_ref"]) for k, r in enumerate(rows) if k != 2])
