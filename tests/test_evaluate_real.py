"""bench/evaluate_real.py on a tiny synthetic scan folder with the analytic test models."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO
from onnx_models import write_registry
from synthetic import centres_mm, cord_mask, render, sagittal_affine


def _command():
    spec = importlib.util.spec_from_file_location("evaluate_real", REPO / "bench" / "evaluate_real.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _scans(folder: Path) -> None:
    """A sagittal T2w with a manual cord mask, an axial T2w without one, in two subfolders."""
    sag = sagittal_affine("PSR", (1.0, 1.0, 3.0), (50, 80, 10))
    (folder / "a").mkdir(parents=True)
    nib.save(render((50, 80, 10), sag, "t2"), folder / "a" / "t2.nii.gz")
    truth = cord_mask(centres_mm((50, 80, 10), sag)).astype(np.uint8)
    nib.save(nib.Nifti1Image(truth, sag), folder / "a" / "t2_seg-manual.nii.gz")
    ax = sagittal_affine("LAS", (0.8, 0.8, 5.0), (60, 60, 12))
    (folder / "b").mkdir()
    nib.save(render((60, 60, 12), ax, "t2", seed=3), folder / "b" / "t2_ax.nii.gz")


def test_evaluate_real_table_and_pictures(tmp_path, monkeypatch):
    _scans(tmp_path / "data")
    registry = write_registry(tmp_path / "models")
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(tmp_path / "nowhere.json"))  # --registry wins over the env
    out = tmp_path / "out"
    assert _command().main(["--data", str(tmp_path / "data"), "-o", str(out), "--registry", str(registry)]) == 0

    rows = {r["scan"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"a/t2", "b/t2_ax"}  # the mask is no scan
    sag, axial = rows["a/t2"], rows["b/t2_ax"]
    assert sag["manual_mask"] == "t2_seg-manual.nii.gz" and sag["cord_found"] == "True"
    assert float(sag["dice"]) > 0.8 and float(sag["cord_in_box"]) == 1.0
    assert (sag["orientation"], sag["shape"]) == ("PSR", "50×80×10")
    assert axial["plane"] == "axial" and axial["dice"] == "nan" and axial["manual_mask"] == ""
    assert "| a/t2 | T2w | PSR |" in (out / "results.md").read_text()
    assert (out / "masks" / "a_t2_seg-cord.nii.gz").is_file()

    pytest.importorskip("matplotlib")
    for r in rows.values():
        assert (out / r["qc_png"]).stat().st_size > 1000


def test_evaluate_real_without_data(tmp_path, capsys):
    assert _command().main(["--data", str(tmp_path / "absent"), "-o", str(tmp_path / "out")]) == 0
    assert "no real data" in capsys.readouterr().err
