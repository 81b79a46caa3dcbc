"""The command: options, outputs, one-line errors (analytic models through $DEEPSEG_IMSCT_REGISTRY)."""
from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from deepseg_imsct import cli

from onnx_models import CLASSES
from test_pipeline import write_case


def test_segments_and_prints_the_viewer_command(registry, tmp_path, capsys):
    t2, t1 = write_case(tmp_path / "in")
    assert cli.main(["tumor_edema_cavity_t1_t2", "-i", str(t2), str(t1), "-o", str(tmp_path / "out"), "-qc", str(tmp_path / "qc")]) == 0
    names = {p.name for p in (tmp_path / "out").glob("*.nii.gz")}
    assert names == {f"sub-01_T2w_seg-{c}.nii.gz" for c in CLASSES}
    assert {p.name for p in (tmp_path / "qc").glob("*.nii.gz")} == {"sub-01_T2w_seg-cord.nii.gz", "sub-01_T2w_cropbox.nii.gz"}
    err = capsys.readouterr().err
    assert "fsleyes " + str(t2) in err and "seg-tumor.nii.gz -cm red" in err


def test_contrast_order_option_reorders_inputs(registry, tmp_path):
    t2, t1 = write_case(tmp_path)
    assert cli.main(["-i", str(t2), str(t1), "-o", str(tmp_path / "a")]) == 0
    assert cli.main(["-i", str(t1), str(t2), "-c", "t1", "t2", "-o", str(tmp_path / "b")]) == 0
    for c in CLASSES:
        a = nib.load(tmp_path / "a" / f"sub-01_T2w_seg-{c}.nii.gz").get_fdata()
        b = nib.load(tmp_path / "b" / f"sub-01_T2w_seg-{c}.nii.gz").get_fdata()
        np.testing.assert_array_equal(a, b)


def test_per_class_options_reach_the_sidecar(registry, tmp_path):
    import json

    t2, t1 = write_case(tmp_path)
    argv = ["-i", str(t2), str(t1), "-thr", "0.3", "0.4", "0.5", "0.6", "-remove-small", "edema=300mm3", "tumor=0.1cm3",
            "-fill-holes", "0"]
    assert cli.main(argv) == 0
    side = json.loads((tmp_path / "sub-01_T2w_seg-edema.json").read_text())
    assert side["Postprocessing"]["classes"]["edema"] == {"threshold": 0.4, "fill_holes": False, "min_volume_cm3": 0.3,
                                                          "remove_first": False, "hole_connectivity": 1}
    assert side["Postprocessing"]["classes"]["tumor"]["min_volume_cm3"] == 0.1
    assert side["GeneratedBy"][0]["CommandLine"].startswith("imsct_deepseg -i ")


@pytest.mark.parametrize(
    "option,message",
    [(["-remove-small", "1", "2"], r"-remove-small takes 1 value, 4 values \(tumor edema cavity whole-tumor\) or CLASS=VALUE pairs; got 2"),
     (["-remove-small", "0.2vox"], r"-remove-small: '0.2vox' is not a whole number of voxels"),
     (["-remove-small", "200"], r"-remove-small: '200' has no unit: write 200cm3, 200mm3 or 200vox"),
     (["-thr", "edema=0"], r"-thr: threshold 0 \(no binarization: probabilities, as -soft\) applies to every class, not only edema: give 0 alone, or thresholds above 0"),
     (["-thr", "brain=1"], r"-thr: unknown class brain \(classes: tumor edema cavity whole-tumor\)"),
     (["-fill-holes", "2"], "-fill-holes: '2' is not 0 or 1"),
     (["-threads", "-1"], r"-threads must be from 0 to 1024 \(0 lets ONNX Runtime use the physical cores\)")],
)
def test_bad_parameter_values_are_the_documented_one_line_errors(registry, tmp_path, capsys, option, message):
    t2, t1 = write_case(tmp_path)
    assert cli.main(["-i", str(t2), str(t1), *option]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and __import__("re").fullmatch("imsct_deepseg: error: " + message, err[0])
    assert not list(tmp_path.glob("*_seg-*"))


@pytest.mark.parametrize(
    "argv,message",
    [
        (["-i", "missing_T2w.nii.gz", "missing_T1w.nii.gz"], "T2w file not found: missing_T2w.nii.gz"),
        (["-i", "only_one.nii.gz"], "-i needs 2 files"),
        (["-i", "a.nii", "b.nii", "-c", "t2", "t2"], "-c must name each of t2 t1 once"),
        (["-i", "a.nii", "b.nii", "-thr", "1.5"], None),
        (["no_such_task", "-i", "a.nii", "b.nii"], "unknown task 'no_such_task'"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(registry, tmp_path, capsys, argv, message):
    if "-thr" in argv:
        t2, t1 = write_case(tmp_path)
        argv = ["-i", str(t2), str(t1), "-thr", "1.5"]
        message = "not a probability in \\[0, 1\\]"
    assert cli.main(argv) == 2
    captured = capsys.readouterr().err
    assert "verifying" not in captured  # user errors are found before any model is loaded
    err = [line for line in captured.splitlines() if line.startswith("imsct_deepseg:")]
    assert len(err) == 1 and err[0].startswith("imsct_deepseg: error: ")
    assert __import__("re").search(message, err[0])


def test_list_tasks_and_install_from_folder(registry, tmp_path, capsys):
    assert cli.main(["-list-tasks"]) == 0
    listing = capsys.readouterr().out
    assert "tumor_edema_cavity_t1_t2 (alias: seg_tumor-edema-cavity_t1-t2)" in listing
    assert "model loc 1.0" in listing and "model seg 1.0" in listing
    assert cli.main(["-install", "--from", str(registry.parent)]) == 0


def test_command_does_not_import_torch_or_onnxruntime_for_help():
    code = "import sys; from deepseg_imsct import cli; cli.build_parser(); import deepseg_imsct.pipeline; " \
           "print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_ctrl_c_mid_write_leaves_no_partial_output_and_exits_130(registry, tmp_path, capsys, monkeypatch):
    t2, t1 = write_case(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["-i", str(t2), str(t1), "-o", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real = nib.Nifti1Image.to_bytes

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(nib.Nifti1Image, "to_bytes", interrupted)
    assert cli.main(["-i", str(t2), str(t1), "-o", str(out), "-thr", "0.9"]) == 130
    assert "interrupted: no output was written or changed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no .part file, nothing changed


# --- the reference toolbox's flags as its users type them ------------------------------------------

def test_thr_zero_writes_probabilities_as_sct_deepseg_does(registry, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    assert cli.main(["-i", str(t2), str(t1), "-o", str(tmp_path / "zero"), "-thr", "0"]) == 0
    assert cli.main(["-i", str(t2), str(t1), "-o", str(tmp_path / "soft"), "-soft"]) == 0
    for c in CLASSES:
        zero = nib.load(tmp_path / "zero" / f"sub-01_T2w_seg-{c}.nii.gz")
        assert zero.get_data_dtype() == np.float32
        data = np.asanyarray(zero.dataobj)
        assert 0 < np.count_nonzero(data > 0.5) < np.count_nonzero(data > 0)  # probabilities, not a mask of the crop
        np.testing.assert_array_equal(data, np.asanyarray(nib.load(tmp_path / "soft" / f"sub-01_T2w_seg-{c}.nii.gz").dataobj))
    assert not list((tmp_path / "zero").glob("*_stats.*"))  # no statistics of probabilities


def test_remove_small_in_voxels_reaches_the_sidecar(registry, tmp_path):
    import json

    t2, t1 = write_case(tmp_path)
    assert cli.main(["-i", str(t2), str(t1), "-remove-small", "edema=100vox", "tumor=5mm3"]) == 0
    classes = json.loads((tmp_path / "sub-01_T2w_seg-edema.json").read_text())["Postprocessing"]["classes"]
    assert classes["edema"]["min_voxels"] == 100 and classes["edema"]["min_volume_cm3"] == 0
    assert classes["tumor"]["min_volume_cm3"] == 0.005 and "min_voxels" not in classes["tumor"]


def test_o_takes_a_file_name_and_names_the_outputs_from_it(registry, tmp_path):
    t2, t1 = write_case(tmp_path / "in")
    assert cli.main(["-i", str(t2), str(t1), "-o", str(tmp_path / "new" / "lesion.nii.gz")]) == 0
    names = {p.name for p in (tmp_path / "new").iterdir() if not p.name.startswith(".")}
    assert names == {f"lesion_seg-{c}.{e}" for c in CLASSES for e in ("nii.gz", "json")} | {"lesion_stats.tsv", "lesion_stats.json"}
    assert not (tmp_path / "new" / "lesion.nii.gz").exists()


def test_the_older_task_name_is_an_alias(registry, tmp_path):
    t2, t1 = write_case(tmp_path)
    assert cli.main(["seg_tumor-edema-cavity_t1-t2", "-i", str(t2), str(t1)]) == 0
    assert (tmp_path / "sub-01_T2w_seg-tumor.nii.gz").exists()


def test_remove_small_bare_numbers_take_the_last_values_unit_as_in_sct_deepseg(registry, tmp_path):
    import json

    t2, t1 = write_case(tmp_path)
    assert cli.last_unit(["10", "20", "30", "40vox"]) == ["10vox", "20vox", "30vox", "40vox"]
    assert cli.last_unit(["5", "6mm3"]) == ["5mm3", "6mm3"] and cli.last_unit(["7"]) == ["7"]
    assert cli.main(["-i", str(t2), str(t1), "-remove-small", "100", "200", "0.3cm3", "400mm3"]) == 0
    classes = json.loads((tmp_path / "sub-01_T2w_seg-edema.json").read_text())["Postprocessing"]["classes"]
    assert [classes[c]["min_volume_cm3"] for c in CLASSES] == [0.1, 0.2, 0.3, 0.4]
