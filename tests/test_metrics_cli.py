"""`jaxinv evaluate`: generation, CSP and stability modes write metrics.json, metrics.md, per_sample.csv."""
import csv
import json

import numpy as np
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry

from jaxinv.cli import main
from jaxinv.io import write_cifs, write_extxyz, write_json


def _run(args, tmp_path, name):
    out = tmp_path / name
    rc = main(["evaluate", *args, f"out_dir={out}", "progress=false", "n_jobs=1",
               f"cache_path={tmp_path / 'fp.sqlite'}"])
    return rc, out


def test_generation_metrics_written(perov, tmp_path):
    test = perov.subset("test")
    structures = test.structures(np.arange(10))
    single = structures[0].copy()
    single.replace_species({sp: "Na" for sp in single.composition.elements})  # one element: comp-valid
    crushed = structures[1].copy()
    crushed.translate_sites([0], crushed[1].coords - crushed[0].coords + 0.1, frac_coords=False)
    write_cifs(structures[2:] + [single, crushed], tmp_path / "cif")
    rc, out = _run([f"samples={tmp_path / 'cif'}", "reference=perov_5:test", "reference_limit=12",
                    "train=perov_5:train", "properties=[heat_ref]"], tmp_path, "gen")
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_samples"] == 10 and m["n_reference"] == 12
    assert m["validity"]["struct_valid"] == 0.9 and m["validity"]["comp_valid"] == 1.0
    assert m["settings"]["oxidation_states"] == "smact14" and m["settings"]["struct_cutoff"] == 0.2
    assert 0 < m["coverage"]["cov_recall"] <= 1 and m["coverage"]["n_generated"] == 10
    assert m["properties"]["density"]["n_gen"] == 9  # valid samples only
    assert np.isnan(m["properties"]["heat_ref"]["wdist"])  # CIFs carry no labels
    assert m["novelty"]["novel_rate"] == 1.0  # test structures are not in the training split
    assert m["coverage_valid_only"]["n_generated"] == 9  # the crushed sample is left out
    report = (out / "metrics.md").read_text()
    assert "| COV-R (%) |" in report and "| all (CDVAE): 10 |" in report and "| valid only: 9 |" in report
    rows = list(csv.DictReader(open(out / "per_sample.csv")))
    assert len(rows) == 10 and rows[-1]["struct_valid"] == "0" and rows[0]["valid"] == "1"


def test_csp_mode_and_stability(perov, tmp_path):
    targets = perov.structures(np.arange(6))
    write_json(targets, tmp_path / "targets.json")
    preds = [s.copy() for s in targets]
    for k, s in enumerate(preds):
        s.properties = {"energy": -5.0 * len(s) + k}  # total energies for the hull
    write_extxyz(preds, tmp_path / "pred.extxyz")
    entries = []
    for s in preds:
        for el in s.composition.elements:
            entries.append(ComputedEntry(Composition(el.symbol), -5.0))
    (tmp_path / "entries.json").write_text(json.dumps([e.as_dict() for e in entries]))
    rc, out = _run([f"samples={tmp_path / 'pred.extxyz'}", f"csp_targets={tmp_path / 'targets.json'}",
                    f"hull_entries={tmp_path / 'entries.json'}", "energy_key=energy"], tmp_path, "csp")
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["csp"]["match_rate"] == 1.0 and m["csp"]["rmse"] < 1e-6 and m["csp"]["k"] == 1
    # e_above_hull = k / n_atoms above the elemental references (5 atoms per perov_5 cell)
    assert m["hull"]["n_with_hull"] == 6 and abs(m["hull"]["mean"] - np.mean(np.arange(6) / 5)) < 1e-9
    assert "CSP" in (out / "metrics.md").read_text()


def test_config_errors_name_the_field(perov, tmp_path, capsys):
    assert main(["evaluate", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "samples" in capsys.readouterr().err
    # coverage against a plain file has no CDVAE cutoff preset: the error names the field to set
    write_json(perov.structures([0, 1]), tmp_path / "ref.json")
    rc = main(["evaluate", f"samples={tmp_path / 'ref.json'}", f"reference={tmp_path / 'ref.json'}",
               "metrics=[coverage]", f"out_dir={tmp_path / 'y'}", "progress=false"])
    assert rc == 2 and "dataset" in capsys.readouterr().err
    rc = main(["evaluate", f"samples={tmp_path / 'ref.json'}", "metrics=[validity,novel]", f"out_dir={tmp_path / 'z'}"])
    assert rc == 2 and "'metrics'" in capsys.readouterr().err
    rc = main(["evaluate", f"samples={tmp_path / 'ref.json'}", "oxidation_states=smact2", f"out_dir={tmp_path / 'w'}"])
    assert rc == 2 and "'oxidation_states'" in capsys.readouterr().err
