"""Reading user structures: every file either loads into a usable structure or is
skipped with its name and a reason, and the workflows carry the names through.

Property-based part (hypothesis): CIF, POSCAR, JSON and extxyz text made from real
perov_5 / carbon_24 structures, then damaged (bytes or lines deleted, truncated,
garbage inserted, occupancies below 1, zero-volume cells, NaN coordinates); and
random or degenerate cells through ``check_cell``, ``Crystal`` and the graph
builder. End-to-end part: ``jaxinv run relax`` and ``jaxinv evaluate`` on a folder
holding good and bad files.
"""
import csv
import io
import json
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from jaxinv.crystal import Crystal
from jaxinv.io import (MIN_VOLUME_PER_ATOM, NoStructuresError, check_cell, check_structure,
                       read_structures_named)

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # degenerate lattices

SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _quiet_reader():
    """The reader logs one warning per skipped file; hundreds of examples need not print them."""
    logger = logging.getLogger("jaxinv.io")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def real(perov, carbon):
    """A few real structures: 6 perov_5 (5 atoms) and 3 carbon_24 (6 to 10 atoms)."""
    small = [i for i, n in enumerate(carbon.crystal().n_atoms) if n <= 10][:3]
    out = perov.structures(np.arange(6)) + carbon.structures(small)
    for s in out:  # names then come from the file names, not the dataset's ids
        s.properties.pop("material_id", None)
    return out


# ------------------------------------------------------------ text makers
def _cif(s):
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(s))


def _poscar(s):
    from pymatgen.io.vasp import Poscar

    return Poscar(s).get_str()


def _json(s, copies=1):
    d = [s.as_dict()] * copies
    return json.dumps(d if copies > 1 else d[0])


def _extxyz(s, copies=1):
    from ase.io import write

    atoms = Crystal.from_structures([s] * copies).to_atoms()
    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    return buf.getvalue()


FORMATS = {"cif": ("x.cif", _cif), "poscar": ("POSCAR_x", _poscar), "vasp": ("x.vasp", _poscar),
           "json": ("x.json", _json), "json2": ("x.json", lambda s: _json(s, 2)),
           "extxyz": ("x.extxyz", _extxyz), "extxyz3": ("x.extxyz", lambda s: _extxyz(s, 3))}


def _disordered(s):
    d = s.copy()
    d.replace(0, {d[0].specie: 0.5})
    return d


def _lattice_set(s, matrix):
    return Structure(Lattice(matrix), s.species, s.frac_coords)


def _semantic(kind, s):
    """A structure the reader must reject, and why (None: ``s`` unchanged)."""
    m = s.lattice.matrix
    if kind == "disordered":
        return _disordered(s)
    if kind == "zero_volume":
        return _lattice_set(s, np.array([m[0], m[1], np.zeros(3)]))
    if kind == "collinear":
        return _lattice_set(s, np.array([m[0], 2.0 * m[0], m[2]]))
    return s


def _nan_coordinate(fmt, text):
    """Replace one atomic coordinate in the text by NaN."""
    if fmt.startswith("json"):
        d = json.loads(text)
        first = d[0] if isinstance(d, list) else d
        first["sites"][0]["abc"][0] = float("nan")
        return json.dumps(d)
    lines = text.splitlines()
    if fmt == "cif":
        k = next(i for i, l in enumerate(lines) if l.strip().endswith(" 1") and len(l.split()) >= 7)
        parts = lines[k].split()
        parts[3] = "nan"
    elif fmt in ("poscar", "vasp"):
        k = 8  # comment, scale, 3 lattice lines, species, counts, "direct", first atom
        parts = lines[k].split()
        parts[0] = "nan"
    else:  # extxyz: the first atom line of the first frame
        k = 2
        parts = lines[k].split()
        parts[1] = "nan"
    lines[k] = " ".join(parts)
    return "\n".join(lines) + "\n"


@st.composite
def damaged_text(draw, structures):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    s = draw(st.sampled_from(structures))
    semantic = draw(st.sampled_from(["none", "none", "disordered", "zero_volume", "collinear", "nan"]))
    if semantic == "disordered" and not fmt.startswith(("cif", "json")):
        semantic = "none"  # POSCAR and extxyz cannot say "half an atom"
    text = FORMATS[fmt][1](_semantic(semantic, s))
    if semantic == "nan":
        text = _nan_coordinate(fmt, text)
    data = text.encode()
    damage = draw(st.sampled_from(["none", "truncate", "delete_bytes", "delete_lines", "garbage", "empty"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif damage == "delete_bytes":
        for _ in range(draw(st.integers(1, 8))):
            if data:
                k = draw(st.integers(0, len(data) - 1))
                data = data[:k] + data[k + 1:]
    elif damage == "delete_lines":
        lines = data.split(b"\n")
        for _ in range(draw(st.integers(1, 3))):
            if lines:
                del lines[draw(st.integers(0, len(lines) - 1))]
        data = b"\n".join(lines)
    elif damage == "garbage":
        k = draw(st.integers(0, len(data)))
        junk = draw(st.one_of(st.binary(min_size=1, max_size=40),
                              st.sampled_from([b"nan", b"-1e308", b"\x00\xff", b"loop_\n", b"\n\n12\n", b"1e400",
                                               b'{"a": [', b"X 0 0 0"])))
        data = data[:k] + junk + data[k:]
    elif damage == "empty":
        data = b""
    return fmt, semantic, damage, data


def _assert_usable(s, name):
    """A structure the reader returned: finite, ordered, with volume, and a Crystal."""
    assert check_structure(s) is None, name
    assert np.isfinite(s.lattice.matrix).all() and np.isfinite(s.frac_coords).all(), name
    assert s.is_ordered and len(s) > 0, name
    assert s.volume >= MIN_VOLUME_PER_ATOM * len(s), name
    c = Crystal.from_structures([s])
    assert np.isfinite(c.lattice).all() and np.isfinite(c.frac).all() and c.n_atoms[0] == len(s)


@settings(max_examples=80, **SETTINGS)
@given(data=st.data())
def test_damaged_files_load_or_are_skipped_with_a_reason(real, data):
    """Every file loads into usable structures or is skipped with a one-line reason;
    reading a folder of such files accounts for each file and agrees with reading
    each file alone; a structure made invalid on purpose never loads."""
    files = data.draw(st.lists(damaged_text(real), min_size=1, max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = []
        for k, (fmt, semantic, damage, blob) in enumerate(files):
            name = FORMATS[fmt][0].replace("x", f"f{k}", 1)
            (folder / name).write_bytes(blob)
            paths.append((folder / name, fmt, semantic, damage))

        alone = {}
        for path, fmt, semantic, damage in paths:
            try:
                got = read_structures_named(path)
            except NoStructuresError as e:  # nothing readable: the message names the file and why
                assert path.name in str(e) and len(str(e)) > len(str(path)) + 25
                alone[path.name] = 0
                if semantic != "none" and damage == "none" and fmt in ("json2", "extxyz3"):
                    assert semantic != "nan", "a NaN in the first entry must not lose the others"
                continue
            for s, n in zip(got.structures, got.names):
                _assert_usable(s, n)
                assert n.startswith(path.name if fmt == "poscar" else path.stem)
            for sk in got.skipped:
                assert sk.file == str(path) and sk.reason.strip() and "\n" not in sk.reason
            alone[path.name] = len(got.structures)
            if semantic != "none" and damage == "none":
                # disordered, zero-volume or collinear copies, or a NaN in the first: those must not load
                copies = {"json2": 2, "extxyz3": 3}.get(fmt, 1)
                assert len(got.structures) == (copies - 1 if semantic == "nan" else 0), (fmt, semantic)

        if not any(alone.values()):
            with pytest.raises(NoStructuresError, match=re.escape(str(folder))):
                read_structures_named(folder)
            return
        got = read_structures_named(folder)
        assert len(set(got.names)) == len(got.names)
        skipped_files = {Path(sk.file).name for sk in got.skipped}
        for path, fmt, semantic, damage in paths:
            stem = path.name if fmt == "poscar" else path.stem
            loaded = [n for n in got.names if n.startswith(stem)]
            assert len(loaded) == alone[path.name]
            assert loaded or path.name in skipped_files
        for s, n in zip(got.structures, got.names):
            _assert_usable(s, n)


def test_each_kind_of_bad_file_is_named_with_its_reason(real, tmp_path):
    s = real[0]
    text = _cif(s)
    (tmp_path / "good.cif").write_text(text)
    (tmp_path / "empty.cif").write_text("")
    (tmp_path / "cut.cif").write_text(text[: text.rindex("\n", 0, len(text) - 2) - 5])
    (tmp_path / "junk.cif").write_bytes(b"\x00\xffnot a cif at all\n")
    (tmp_path / "half.cif").write_text(_cif(_disordered(s)))
    (tmp_path / "POSCAR_flat").write_text(_poscar(_semantic("zero_volume", s)))
    (tmp_path / "POSCAR_nan").write_text(_nan_coordinate("poscar", _poscar(s)))
    (tmp_path / "CONTCAR").write_text(_poscar(s))
    (tmp_path / "notes.txt").write_text("hello")
    frames = _extxyz(s, 3).splitlines()
    frames[2 + len(s) + 2] = frames[2 + len(s) + 2].replace(frames[2 + len(s) + 2].split()[1], "nan", 1)
    (tmp_path / "three.extxyz").write_text("\n".join(frames) + "\n")
    entries = [s.as_dict(), {"not": "a structure"}, _disordered(s).as_dict()]
    (tmp_path / "list.json").write_text(json.dumps(entries))
    got = read_structures_named(tmp_path)
    assert got.names == ["CONTCAR", "good", "list_0", "three_0", "three_2"]
    reasons = {(Path(sk.file).name, sk.reason.split(":")[0]) for sk in got.skipped}
    why = {Path(sk.file).name + (f" {sk.reason.split(':')[0]}" if "entry" in sk.reason else ""): sk.reason
           for sk in got.skipped}
    assert why["empty.cif"] == "empty file"
    assert "formula" in why["cut.cif"] or "Error" in why["cut.cif"]
    assert "CIF" in why["junk.cif"]
    assert "disordered" in why["half.cif"] and "disordered" in why["list.json entry 2"]
    assert "volume" in why["POSCAR_flat"]
    assert "non-finite" in why["POSCAR_nan"] and "non-finite" in why["three.extxyz entry 1"]
    assert "not a pymatgen Structure" in why["list.json entry 1"]
    assert "not a structure file" in why["notes.txt"]
    assert len(reasons) == len(got.skipped) == 10


def test_names_are_unique_and_follow_ids(real, tmp_path):
    s = real[0].copy()
    s.properties["material_id"] = "mp-1"
    (tmp_path / "a.cif").write_text(_cif(s))
    (tmp_path / "a.vasp").write_text(_poscar(s))
    (tmp_path / "ids.json").write_text(json.dumps([s.as_dict(), s.as_dict()]))
    got = read_structures_named(tmp_path)
    assert got.names == ["a", "a-2", "mp-1", "mp-1-2"]
    structures, names, skipped = got  # unpacks as a triple
    assert names == got.names and skipped == []


def test_extxyz_frames_keep_their_names_and_energies_past_a_bad_frame(real, tmp_path):
    """Names written by the workflows (``name`` in the comment line, numeric-looking
    ones included) come back, and each frame keeps its own energy when one is skipped."""
    from jaxinv.io import write_extxyz

    path = write_extxyz(real[:3], tmp_path / "relaxed.extxyz",
                        extra_info={"name": ["a", "17", "c"], "energy": [-1.0, -2.0, -3.0]})
    lines = path.read_text().splitlines()
    k = 2 + len(real[0]) + 2  # the first atom of frame 1
    lines[k] = " ".join([lines[k].split()[0], "nan"] + lines[k].split()[2:])
    path.write_text("\n".join(lines) + "\n")
    got = read_structures_named(path)
    assert got.names == ["a", "c"]
    assert [s.properties["energy"] for s in got.structures] == [-1.0, -3.0]
    assert len(got.skipped) == 1 and got.skipped[0].reason.startswith("entry 1: non-finite")
    path.write_text("\n".join(lines[:k]) + "\n")  # cut inside frame 1: frame 0 still loads
    got = read_structures_named(path)
    assert got.names == ["a"] and "truncated" in got.skipped[0].reason


# ------------------------------------------------------ cells and graphs
CUTOFF = 4.0
IMAGE_BOX = (6, 6, 6)  # one compiled graph program for every example (static image slots)


@st.composite
def cells(draw):
    n = draw(st.integers(1, 6))
    kind = draw(st.sampled_from(["plain", "plain", "negative", "zero", "collinear", "coplanar", "huge", "tiny",
                                 "flat", "nonfinite"]))
    r = np.array(draw(st.lists(st.floats(-0.4, 0.4), min_size=9, max_size=9))).reshape(3, 3)
    scale = draw(st.floats(2.0, 12.0))
    lat = scale * (np.eye(3) + r)
    if kind == "negative":
        lat = lat[[1, 0, 2]]
    elif kind == "zero":
        lat[draw(st.integers(0, 2))] = 0.0
    elif kind == "collinear":
        lat[1] = draw(st.floats(-3, 3)) * lat[0]
    elif kind == "coplanar":
        lat[2] = draw(st.floats(-2, 2)) * lat[0] + draw(st.floats(-2, 2)) * lat[1]
    elif kind == "huge":
        lat = lat * draw(st.floats(1e2, 1e5))
    elif kind == "tiny":
        lat = lat * draw(st.floats(1e-3, 0.4))
    elif kind == "flat":
        lat[2] = lat[2] * draw(st.floats(1e-9, 1e-2))
    elif kind == "nonfinite":
        lat[draw(st.integers(0, 2)), draw(st.integers(0, 2))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    frac = np.array(draw(st.lists(st.floats(-1.5, 2.5), min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    if n > 1 and draw(st.booleans()):
        frac[1] = frac[0] + draw(st.sampled_from([0.0, 1.0, 1e-9]))  # overlapping atoms (also across a face)
    rarely = st.sampled_from([False] * 9 + [True])  # (integers(0, 9) == 0 would be drawn far more often)
    if draw(rarely):
        frac[draw(st.integers(0, n - 1)), 0] = np.nan
    numbers = np.array(draw(st.lists(st.integers(1, 94), min_size=n, max_size=n)))
    if draw(rarely):
        numbers[0] = draw(st.sampled_from([0, -3, 119]))
    return kind, lat, frac, numbers


def _brute_force_edges(lat, frac, cutoff, need):
    """Pairs (i, j, image) within ``cutoff``, by looping over the image box ``need``."""
    cart = (frac - np.floor(frac)) @ lat
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in need], indexing="ij"), -1).reshape(-1, 3)
    vec = cart[None, :, None] - cart[:, None, None] + (grid @ lat)[None, None]
    d = np.linalg.norm(vec, axis=-1)
    self_pair = np.eye(len(frac), dtype=bool)[:, :, None] & (np.abs(grid).sum(-1) == 0)[None, None]
    return np.where(self_pair, np.inf, d)


@settings(max_examples=60, **SETTINGS)
@given(batch=st.lists(cells(), min_size=1, max_size=4))
def test_degenerate_cells_are_rejected_or_give_a_crystal_and_a_graph(batch):
    """``check_cell`` names what is wrong with a cell, or the cell builds a Crystal
    whose all-image graph has exactly the pairs within the cutoff (or, for a cell
    too thin for the image search, no edges and its overflow flag set)."""
    from jaxinv.graph import MAX_IMAGES, image_slots, images_needed, neighbor_graph

    accepted = []
    for kind, lat, frac, numbers in batch:
        reason = check_cell(lat, frac, numbers)
        must_reject = (kind in ("zero", "collinear", "coplanar", "nonfinite") or not np.isfinite(frac).all()
                       or not ((numbers >= 1) & (numbers <= 118)).all())
        if must_reject:
            assert isinstance(reason, str) and reason, (kind, lat)
        if reason is not None:
            assert isinstance(reason, str) and reason and "\n" not in reason
            continue
        assert abs(np.linalg.det(lat)) >= MIN_VOLUME_PER_ATOM * len(numbers)
        s = Structure(Lattice(lat), numbers.tolist(), frac)
        assert check_structure(s) is None
        c = Crystal.from_structures([s])
        np.testing.assert_allclose(c.lattice[0], lat)
        need = images_needed(lat[None], CUTOFF)[0]
        # the graph of a cell needing more than IMAGE_BOX's slots (but not so many that it
        # fails cheaply) is valid and just expensive; it is left out to keep this test fast
        if (need <= MAX_IMAGES).all() and image_slots(tuple(need)) > image_slots(IMAGE_BOX):
            continue
        accepted.append((lat, frac, numbers, need))
    if not accepted:
        return
    c = Crystal.from_arrays([a[0] for a in accepted], [a[1] for a in accepted], [a[2] for a in accepted], n_max=6)
    c = c.pad(batch_size=4)  # with n_max, cutoff and images fixed: one compiled program for all examples
    g = neighbor_graph(c, CUTOFF, images=IMAGE_BOX)
    mask, n_edges, overflow = np.asarray(g.mask), np.asarray(g.n_edges), np.asarray(g.image_overflow)
    senders, receivers, shifts = np.asarray(g.senders), np.asarray(g.receivers), np.asarray(g.shifts)
    for b, (lat, frac, numbers, need) in enumerate(accepted):
        if not (need <= MAX_IMAGES).all():
            assert overflow[b] and n_edges[b] == 0 and not mask[b].any()
            continue
        assert not overflow[b]
        m = mask[b]  # edge lengths on the host (edge_lengths would compile once per edge capacity)
        dfrac = frac[senders[b][m]] - frac[receivers[b][m]] + shifts[b][m]
        e = np.linalg.norm(dfrac @ lat, axis=-1)
        tol = 1e-3 + 1e-6 * np.abs(lat).max()  # the graph runs in float32
        assert np.isfinite(e).all() and (e <= CUTOFF + tol).all()
        d = _brute_force_edges(lat, frac, CUTOFF, need)
        assert (d <= CUTOFF - tol).sum() <= n_edges[b] <= (d <= CUTOFF + tol).sum()


# ---------------------------------------------------------------- CLI
def _lj_cells():
    """Argon-like fcc and bcc cells in LJ reduced units (sigma 1: the default 'lj' potential)."""
    fcc = Structure(Lattice.cubic(1.6), ["Ar"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    bcc = Structure(Lattice.cubic(1.3), ["Ar"] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])
    return fcc, bcc


def _bad_and_good_folder(folder: Path) -> None:
    fcc, bcc = _lj_cells()
    folder.mkdir()
    fcc.to(filename=str(folder / "fcc.cif"))
    bcc.to(filename=str(folder / "bcc.cif"))
    (folder / "POSCAR_good").write_text(_poscar(Structure(Lattice.cubic(1.58), fcc.species, fcc.frac_coords)))
    text = (folder / "fcc.cif").read_text()
    (folder / "empty.cif").write_text("")
    (folder / "truncated.cif").write_text(text[: len(text) - 40])
    (folder / "garbage.cif").write_bytes(b"\x89PNG\r\n\x1a\n not a crystal \x00\x01")
    (folder / "disordered.cif").write_text(_cif(_disordered(fcc)))
    (folder / "POSCAR_zero").write_text(_poscar(_semantic("zero_volume", bcc)))


BAD = {"empty.cif", "truncated.cif", "garbage.cif", "disordered.cif", "POSCAR_zero"}


def test_relax_skips_bad_files_by_name_and_keeps_the_names(tmp_path, capsys):
    from jaxinv.cli import main

    folder = tmp_path / "in"
    _bad_and_good_folder(folder)
    out = tmp_path / "run"
    rc = main(["run", "relax", f"structures={folder}", "potential=lj", f"out_dir={out}", "max_steps=5",
               "progress=false", "write_cifs=true", "checkpoint=false"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "relaxed.csv")))
    assert sorted(r["id"] for r in rows) == ["POSCAR_good", "bcc", "fcc"]
    assert {r["id"]: r["formula"] for r in rows} == {"POSCAR_good": "Ar", "bcc": "Ar", "fcc": "Ar"}
    assert sorted(p.name for p in (out / "cif").glob("*.cif")) == ["POSCAR_good.cif", "bcc.cif", "fcc.cif"]
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert {Path(r["file"]).name for r in skipped} == BAD and len(skipped) == len(BAD)
    assert all(r["reason"].strip() for r in skipped)
    why = {Path(r["file"]).name: r["reason"] for r in skipped}
    assert why["empty.cif"] == "empty file" and "disordered" in why["disordered.cif"]
    assert "volume" in why["POSCAR_zero"]

    empty = tmp_path / "nothing"
    empty.mkdir()
    rc = main(["run", "relax", f"structures={empty}", "potential=lj", f"out_dir={tmp_path / 'run2'}",
               "progress=false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and str(empty) in err[-1] and "no readable structure" in err[-1]


def test_evaluate_names_samples_and_lists_skipped_files(tmp_path):
    from jaxinv.cli import main

    folder = tmp_path / "in"
    _bad_and_good_folder(folder)
    out = tmp_path / "eval"
    rc = main(["evaluate", f"samples={folder}", "metrics=[validity]", f"out_dir={out}", "progress=false",
               "n_jobs=1", f"cache_path={tmp_path / 'fp.sqlite'}"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "per_sample.csv")))
    assert [r["name"] for r in rows] == ["POSCAR_good", "bcc", "fcc"]
    assert all(r["formula"] == "Ar" for r in rows)
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert {Path(r["file"]).name for r in skipped} == BAD
    assert json.loads((out / "metrics.json").read_text())["skipped_inputs"] == len(BAD)
