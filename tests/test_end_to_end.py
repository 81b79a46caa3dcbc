"""The real command with the shipped models on testing_data/: scored against its ground truth, and
compared voxel for voxel with committed reference outputs.

The ground truth (``testing_data/derivatives/labels``) is what the phantom generator drew, so the
scores cannot drift with the code: a Dice floor per class sits just below what the shipped models
reach (a regression fails), and a class present in the ground truth but empty in the output fails.
The references catch any change at all; regenerate them only after a deliberate model or pipeline
change (and say why in the commit): ``python tests/test_end_to_end.py --regenerate``.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepseg_imsct import cli, outputs
from deepseg_imsct.evaluate import box_contains, dice
from deepseg_imsct.registry import load_registry

HERE = Path(__file__).parent
REPO = HERE.parent
ANAT = REPO / "testing_data" / "sub-test01" / "anat"
LABELS = REPO / "testing_data" / "derivatives" / "labels" / "sub-test01" / "anat"
T2, T1 = ANAT / "sub-test01_T2w.nii.gz", ANAT / "sub-test01_T1w.nii.gz"
REFERENCE = HERE / "reference"
CLASSES = ("tumor", "edema", "cavity", "whole-tumor")
OUTPUTS = outputs.output_keys(CLASSES, qc=True)
# Dice of the shipped models (localizer 0.1.2, segmenter 2.0.0) on sub-test01 (generator 2.5), and the floor just below it
DICE_FLOORS = {"tumor": 0.82, "edema": 0.59, "cavity": 0.55, "whole-tumor": 0.87, "cord": 0.87}  # reached: 0.839, 0.609, 0.573, 0.884, 0.884


def run_command(out: Path) -> None:
    assert cli.main(["tumor_edema_cavity_t1_t2", "-i", str(T2), str(T1), "-o", str(out), "-qc", str(out / "qc"), "-v", "0"]) == 0


def mask(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj) > 0


def truth(label: str) -> np.ndarray:
    return mask(LABELS / f"sub-test01_T2w_seg-{label}.nii.gz")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def out(tmp_path_factory, monkeypatch_module) -> Path:
    monkeypatch_module.delenv("DEEPSEG_IMSCT_REGISTRY", raising=False)
    monkeypatch_module.setenv("DEEPSEG_IMSCT_HOME", str(tmp_path_factory.mktemp("cache")))
    if not load_registry().models:
        pytest.skip("the registry lists no models yet")
    folder = tmp_path_factory.mktemp("e2e")
    run_command(folder)
    return folder


def output(out: Path, key: str) -> Path:
    """Where the README's command writes an output: the QC masks in the report folder (-qc out/qc)."""
    return outputs.output_paths(T2, out / "qc" if key in outputs.QC_KEYS else out, [key])[key]


@pytest.mark.parametrize("label", DICE_FLOORS)
def test_outputs_score_against_the_ground_truth(out, label):
    gt, pred = truth(label), mask(output(out, outputs.CORD if label == "cord" else outputs.class_key(label)))
    assert gt.any(), "the ground truth holds every class"
    assert pred.any(), f"{label}: present in the ground truth ({int(gt.sum())} voxels), empty in the output"
    assert dice(pred, gt) >= DICE_FLOORS.get(label, 0.0) and dice(pred, gt) > 0


def test_the_statistics_measure_the_written_masks(out):
    stats = json.loads(output(out, outputs.STATS).with_suffix(".json").read_text())["Statistics"]
    voxel_mm3 = float(np.prod(nib.load(T2).header.get_zooms()[:3]))
    for label in CLASSES:
        assert stats["Classes"][label]["volume_mm3"] == pytest.approx(mask(output(out, outputs.class_key(label))).sum() * voxel_mm3, abs=1e-2)
    assert stats["Cord"]["found"] and stats["VertebralLevels"] == "unknown"


def test_the_crop_box_holds_every_lesion_voxel(out):
    lesion = truth("whole-tumor") | truth("cavity")
    assert box_contains(mask(output(out, outputs.CROPBOX)), lesion) == 1.0


@pytest.mark.parametrize("key", OUTPUTS)
def test_outputs_equal_the_committed_references_voxel_for_voxel(out, key):
    got, ref, t2 = nib.load(output(out, key)), nib.load(REFERENCE / output(out, key).name), nib.load(T2)
    assert got.shape == t2.shape and np.array_equal(got.affine, t2.affine)
    assert got.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(got.dataobj), np.asanyarray(ref.dataobj))


def test_inputs_and_outputs_are_where_the_readme_says(out):
    written = [*outputs.output_keys(CLASSES, qc=False), outputs.STATS]
    assert sorted(p.name for p in out.glob("*.json")) == sorted(outputs.sidecar_path(output(out, k)).name for k in written)
    assert [p.name for p in out.glob("*.tsv")] == ["sub-test01_T2w_stats.tsv"]
    assert sorted(p.name for p in (out / "qc").glob("*.nii.gz")) == sorted(f"sub-test01_T2w_{k}.nii.gz" for k in outputs.QC_KEYS)
    assert (out / "qc" / "index.html").exists() and len(list((out / "qc").glob("*.png"))) == 3
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"sub-test01_T2w_{k}.nii.gz" for k in written[:-1])


if __name__ == "__main__" and "--regenerate" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_command(Path(tmp))
        REFERENCE.mkdir(exist_ok=True)
        for key in OUTPUTS:
            shutil.copy(output(Path(tmp), key), REFERENCE)
    print(f"references written to {REFERENCE}")
