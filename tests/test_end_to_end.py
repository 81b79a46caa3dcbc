"""The real command with the shipped models on testing_data/, against committed reference outputs.

Regenerate the references after a deliberate model or pipeline change (and say why in the commit):
``python tests/test_end_to_end.py --regenerate``.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deepseg_imsct import cli
from deepseg_imsct.registry import load_registry

HERE = Path(__file__).parent
REPO = HERE.parent
ANAT = REPO / "testing_data" / "sub-test01" / "anat"
T2, T1 = ANAT / "sub-test01_T2w.nii.gz", ANAT / "sub-test01_T1w.nii.gz"
REFERENCE = HERE / "reference"
OUTPUTS = ["seg-tumor", "seg-edema", "seg-cavity", "seg-whole-tumor", "seg-cord", "cropbox"]


def run_command(out: Path) -> None:
    assert cli.main(["tumor_edema_cavity_t1_t2", "-i", str(T2), str(T1), "-o", str(out), "-qc", "-v", "0"]) == 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, monkeypatch_module) -> Path:
    monkeypatch_module.delenv("DEEPSEG_IMSCT_REGISTRY", raising=False)
    monkeypatch_module.setenv("DEEPSEG_IMSCT_HOME", str(tmp_path_factory.mktemp("cache")))
    if not load_registry().models:
        pytest.skip("the registry lists no models yet")
    out = tmp_path_factory.mktemp("e2e")
    run_command(out)
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("name", OUTPUTS)
def test_outputs_match_committed_references(outputs, name):
    got = nib.load(outputs / f"sub-test01_T2w_{name}.nii.gz")
    ref = nib.load(REFERENCE / f"sub-test01_T2w_{name}.nii.gz")
    t2 = nib.load(T2)
    assert got.shape == t2.shape and np.array_equal(got.affine, t2.affine)
    assert got.get_data_dtype() == np.uint8
    assert dice(np.asanyarray(got.dataobj) > 0, np.asanyarray(ref.dataobj) > 0) >= 0.999


def test_inputs_and_outputs_are_where_the_readme_says(outputs):
    assert sorted(p.name for p in outputs.glob("*.json")) == sorted(f"sub-test01_T2w_{n}.json" for n in OUTPUTS)


if __name__ == "__main__" and "--regenerate" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_command(Path(tmp))
        REFERENCE.mkdir(exist_ok=True)
        for name in OUTPUTS:
            shutil.copy(Path(tmp) / f"sub-test01_T2w_{name}.nii.gz", REFERENCE)
    print(f"references written to {REFERENCE}")
