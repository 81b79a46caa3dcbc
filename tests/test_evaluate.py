"""Known-answer tests of the evaluation metrics, report and ``imsct_evaluate`` command."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays

from deepseg_imsct import evaluate as ev
from deepseg_imsct import evaluate_cli as cli
from deepseg_imsct import evaluate_files as files
from deepseg_imsct.errors import DeepsegError

SHAPE = (10, 10, 10)


def box(lo: tuple[int, int, int], hi: tuple[int, int, int], shape=SHAPE) -> np.ndarray:
    """Boolean mask, True on [lo, hi) per axis."""
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return mask


def empty(shape=SHAPE) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


# --------------------------------------------------------------------------- voxel-wise metrics


@pytest.mark.parametrize("shift, expected", [(0, 1.0), (1, 0.75), (2, 0.5), (3, 0.25), (4, 0.0)])
def test_dice_of_offset_cubes(shift: int, expected: float) -> None:
    # 4x4x4 cubes shifted by `shift` along x: |P∩G| = (4 - shift) * 16, |P| = |G| = 64.
    gt = box((0, 0, 0), (4, 4, 4))
    pred = box((shift, 0, 0), (shift + 4, 4, 4))
    assert ev.dice(pred, gt) == pytest.approx(expected)
    assert ev.segmentation_metrics(pred, gt, voxel_mm3=0.3).dice == pytest.approx(expected)


def test_precision_recall_of_nested_cubes() -> None:
    gt = box((0, 0, 0), (4, 4, 4))  # 64 voxels
    pred = box((0, 0, 0), (2, 2, 2))  # 8 voxels, inside gt
    m = ev.segmentation_metrics(pred, gt, voxel_mm3=1.0)
    assert (m.precision, m.recall) == (pytest.approx(1.0), pytest.approx(8 / 64))
    assert m.rvd == pytest.approx((64 - 8) / 64)  # under-segmentation: positive


@pytest.mark.parametrize(
    "pred_hi, rvd", [(8, -1.0), (6, -0.5), (4, 0.0), (2, 0.5)]  # gt is 4 voxels long in x
)
def test_rvd_sign_negative_for_over_segmentation(pred_hi: int, rvd: float) -> None:
    gt = box((0, 0, 0), (4, 2, 2))
    pred = box((0, 0, 0), (pred_hi, 2, 2))
    m = ev.segmentation_metrics(pred, gt, voxel_mm3=2.5)
    assert m.rvd == pytest.approx(rvd)
    assert m.avd == pytest.approx(abs(rvd))
    assert m.gt_volume_mm3 == pytest.approx(16 * 2.5)
    assert m.pred_volume_mm3 == pytest.approx(pred_hi * 4 * 2.5)


def test_false_positive_on_absent_structure_scores_dice_zero() -> None:
    m = ev.segmentation_metrics(box((1, 1, 1), (3, 3, 3)), empty(), voxel_mm3=1.0)
    assert m.dice == 0.0
    assert m.precision == 0.0
    assert m.fdr == 1.0 and m.fdr_ivadomed == 1.0
    for value in (m.recall, m.tpr, m.rvd, m.avd):
        assert math.isnan(value)


def test_missed_structure_scores_zero_and_undefined_precision() -> None:
    m = ev.segmentation_metrics(empty(), box((1, 1, 1), (3, 3, 3)), voxel_mm3=1.0)
    assert (m.dice, m.recall, m.tpr, m.rvd) == (0.0, 0.0, 0.0, 1.0)
    assert math.isnan(m.precision) and math.isnan(m.fdr)


def test_both_empty_is_nan_and_excluded_from_the_mean() -> None:
    m = ev.segmentation_metrics(empty(), empty(), voxel_mm3=1.0)
    for name in ("dice", "tpr", "fdr", "fdr_ivadomed", "precision", "recall", "avd", "rvd"):
        assert math.isnan(getattr(m, name)), name
    s = ev.summarize([m.dice, 1.0, 0.5])
    assert (s.mean, s.n) == (pytest.approx(0.75), 2)


@pytest.mark.parametrize(
    "affine, expected",
    [
        (np.diag([0.5, 0.5, 3.0, 1.0]), 0.75),
        (np.diag([-1.0, 2.0, 1.25, 1.0]), 2.5),  # a flipped axis: |det|
        (np.array([[0, 0, 2.0, 0], [1.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]]), 6.0),
    ],
)
def test_voxel_volume_from_affine(affine: np.ndarray, expected: float) -> None:
    assert ev.voxel_volume_mm3(affine) == pytest.approx(expected)


# --------------------------------------------------------------------------- objects, detection


@pytest.mark.parametrize(
    "second, n_objects",
    [((0, 0, 1), 1), ((0, 1, 1), 1), ((1, 1, 1), 2), ((0, 0, 2), 2)],
    ids=["face", "edge", "corner", "gap"],
)
def test_18_connectivity(second: tuple[int, int, int], n_objects: int) -> None:
    mask = empty((4, 4, 4))
    mask[0, 0, 0] = mask[second] = True
    assert ev.label_objects(mask)[1] == n_objects


@pytest.mark.parametrize(
    "overlap_mm3, voxel_mm3, expected",
    [(6, 1.0, 6), (6, 0.75, 8), (6, 5.0, 2), (6, 4.0, 2), (6, 6.0, 1), (6, 7.0, 1), (0, 1.0, 1),
     (10, 1.0, 10)],
)
def test_overlap_threshold_is_ceiled(overlap_mm3: float, voxel_mm3: float, expected: int) -> None:
    assert ev.overlap_voxels(overlap_mm3, voxel_mm3) == expected


@pytest.mark.parametrize(
    "zooms, n_overlap, detected",
    [
        ((1.0, 1.0, 1.0), 5, False),  # 5 mm³ < 6
        ((1.0, 1.0, 1.0), 6, True),  # 6 mm³
        ((0.5, 0.5, 3.0), 7, False),  # 5.25 mm³
        ((0.5, 0.5, 3.0), 8, True),  # 6.00 mm³
        ((2.0, 2.0, 1.25), 1, False),  # 5 mm³ (the reference's round() would accept it)
        ((2.0, 2.0, 1.25), 2, True),  # 10 mm³
        ((0.25, 0.25, 1.5), 63, False),  # 5.90625 mm³
        ((0.25, 0.25, 1.5), 64, True),  # 6 mm³, although 6 / det(affine) = 64.00000000000001
    ],
)
def test_detection_at_the_6mm3_threshold(zooms, n_overlap: int, detected: bool) -> None:
    shape = (100, 1, 1)
    gt = box((0, 0, 0), (100, 1, 1), shape)  # one 100-voxel object
    pred = box((0, 0, 0), (n_overlap, 1, 1), shape)  # one object overlapping n_overlap voxels
    voxel_mm3 = ev.voxel_volume_mm3(np.diag([*zooms, 1.0]))
    m = ev.segmentation_metrics(pred, gt, voxel_mm3=voxel_mm3)
    assert m.tpr == (1.0 if detected else 0.0)
    assert m.fdr == (0.0 if detected else 1.0)
    assert (m.gt_objects, m.pred_objects) == (1, 1)


def test_overlap_threshold_is_a_parameter() -> None:
    gt, pred = box((0, 0, 0), (10, 1, 1)), box((0, 0, 0), (3, 1, 1))
    assert ev.segmentation_metrics(pred, gt, 1.0, overlap_mm3=6.0).tpr == 0.0
    assert ev.segmentation_metrics(pred, gt, 1.0, overlap_mm3=3.0).tpr == 1.0


def test_fdr_counts_predicted_objects_and_differs_from_reference() -> None:
    gt = box((0, 0, 0), (10, 2, 2))  # one GT object
    pred = box((0, 0, 0), (3, 2, 2)) | box((5, 0, 0), (8, 2, 2))  # two hits on it (12 vox each)
    pred |= box((0, 6, 6), (2, 8, 8))  # one false detection
    m = ev.segmentation_metrics(pred, gt, voxel_mm3=1.0)
    assert (m.gt_objects, m.pred_objects, m.tp_gt_objects) == (1, 3, 1)
    assert (m.tp_pred_objects, m.fp_pred_objects) == (2, 1)
    assert m.tpr == 1.0
    assert m.fdr == pytest.approx(1 / 3)  # FP_pred / (TP_pred + FP_pred)
    assert m.fdr_ivadomed == pytest.approx(1 / 2)  # FP_pred / (TP_gt + FP_pred)


def test_two_gt_objects_one_missed() -> None:
    gt = box((0, 0, 0), (3, 3, 3)) | box((6, 6, 6), (9, 9, 9))
    pred = box((0, 0, 0), (3, 3, 3))
    m = ev.segmentation_metrics(pred, gt, voxel_mm3=1.0)
    assert (m.tpr, m.fdr, m.dice) == (0.5, 0.0, pytest.approx(2 * 27 / 81))


def test_shape_mismatch_and_bad_threshold_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        ev.segmentation_metrics(empty((2, 2, 2)), empty((2, 2, 3)), 1.0)
    with pytest.raises(ValueError):
        ev.overlap_voxels(-1.0, 1.0)
    with pytest.raises(ValueError):
        ev.overlap_voxels(6.0, 0.0)


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.bool_, (4, 4, 3)),
    arrays(np.bool_, (4, 4, 3)),
)
def test_dice_is_harmonic_mean_of_precision_and_recall(pred: np.ndarray, gt: np.ndarray) -> None:
    m = ev.segmentation_metrics(pred, gt, voxel_mm3=1.0)
    if pred.any() and gt.any() and (pred & gt).any():
        harmonic = 2 * m.precision * m.recall / (m.precision + m.recall)
        assert m.dice == pytest.approx(harmonic)
    assert ev.dice(pred, gt) == ev.dice(gt, pred) or math.isnan(ev.dice(pred, gt))
    assert m.tp_pred_objects + m.fp_pred_objects == m.pred_objects


# --------------------------------------------------------------------------- crop box, summary


@pytest.mark.parametrize("z_hi, contains, cord_fraction", [(10, 1.0, 1.0), (6, 1.0, 0.6),
                                                             (5, 0.0, 0.5)])
def test_crop_box_inclusion(z_hi: int, contains: float, cord_fraction: float) -> None:
    crop = box((0, 0, 0), (10, 10, z_hi))
    lesion = box((3, 3, 2), (5, 5, 6))
    cord = box((4, 4, 0), (6, 6, 10))
    assert ev.box_contains(crop, lesion) == contains
    assert ev.fraction_inside(crop, cord) == pytest.approx(cord_fraction)


def test_crop_box_without_lesion_is_nan() -> None:
    assert math.isnan(ev.box_contains(box((0, 0, 0), (2, 2, 2)), empty()))
    assert math.isnan(ev.fraction_inside(box((0, 0, 0), (2, 2, 2)), empty()))


@pytest.mark.parametrize(
    "values, mean, std, n",
    [([0.0, 1.0], 0.5, 0.5, 2), ([0.2, math.nan, 0.2, 0.8], 0.4, math.sqrt(0.08), 3),
     ([1.0], 1.0, 0.0, 1)],
)
def test_summarize_population_std(values, mean: float, std: float, n: int) -> None:
    s = ev.summarize(values)
    assert (s.mean, s.std, s.n) == (pytest.approx(mean), pytest.approx(std), n)


def test_summarize_all_nan() -> None:
    s = ev.summarize([math.nan, math.nan])
    assert s.n == 0 and math.isnan(s.mean) and math.isnan(s.std)


def test_summarize_rows_ignores_empty_cells_and_other_classes() -> None:
    rows = [
        {"case": "a", "class": "tumor", "dice": 1.0},
        {"case": "b", "class": "tumor", "dice": ""},
        {"case": "c", "class": "tumor", "dice": 0.5},
        {"case": "c", "class": "edema", "dice": 0.0},
    ]
    table = ev.summarize_rows(rows, ("tumor", "edema"), ("dice",))
    assert table[("tumor", "dice")] == ev.Summary(0.75, 0.25, 2)
    assert table[("edema", "dice")] == ev.Summary(0.0, 0.0, 1)


def test_markdown_table_layout() -> None:
    rows = [
        {"case": "a", "class": "tumor", "dice": 1.0, "rvd": -0.2},
        {"case": "b", "class": "tumor", "dice": 0.5, "rvd": math.nan},
    ]
    md = cli.render_markdown(rows, overlap_mm3=6.0, notes=["hello"])
    header = next(line for line in md.splitlines() if line.startswith("| Metric | Whole"))
    assert header == "| Metric | Whole tumor | Tumor | Cavity | Edema |"
    dice_row = next(line for line in md.splitlines() if line.startswith("| Dice score"))
    assert dice_row.split(" | ")[1:] == ["n/a (n=0)", "75.0 ± 25.0 (n=2)", "n/a (n=0)",
                                         "n/a (n=0) |"]
    assert "-20.0 ± 0.0 (n=1)" in md
    assert "overlap >= 6 mm³" in md and "- hello" in md


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("sub-01_T2w_seg-tumor.nii.gz", ("sub-01_T2w", "tumor")),
        ("sub-01_T2w_seg-whole-tumor.nii.gz", ("sub-01_T2w", "whole-tumor")),
        ("sub-01_ses-1_T2w_seg-cord.nii", ("sub-01_ses-1_T2w", "cord")),
        ("sub-01_T2w_cropbox.nii.gz", ("sub-01_T2w", "cropbox")),
        ("sub-01_T2w.nii.gz", None),
        ("sub-01_T2w_seg-manual.nii.gz", None),
        ("sub-01_T2w_seg-tumor.json", None),
    ],
)
def test_parse_name(name: str, parsed) -> None:
    assert files.parse_name(name) == parsed


# --------------------------------------------------------------------------- command line


def write_nii(path: Path, mask: np.ndarray, zooms=(1.0, 1.0, 1.0), dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(dtype), np.diag([*zooms, 1.0])), str(path))
    return path


CORD_MASK = box((4, 4, 0), (6, 6, 10))


def dataset(zooms=(1.0, 1.0, 1.0)) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Two cases: {stem: {"gt"|"pred": {label: mask}}}, answers worked out in the tests."""
    t1 = box((2, 2, 2), (6, 6, 6))
    cav2 = box((7, 7, 7), (9, 9, 9))
    return {
        "sub-01_T2w": {
            "gt": {"tumor": t1, "edema": empty(), "cavity": empty(), "whole-tumor": t1,
                   "cord": CORD_MASK},
            "pred": {"tumor": box((4, 2, 2), (8, 6, 6)), "edema": box((0, 0, 0), (2, 2, 2)),
                     "cavity": empty(), "whole-tumor": box((4, 2, 2), (8, 6, 6)),
                     "cord": CORD_MASK, "cropbox": box((0, 0, 0), (10, 10, 8))},
        },
        "sub-02_T2w": {
            "gt": {"tumor": t1, "edema": empty(), "cavity": cav2, "whole-tumor": t1 | cav2,
                   "cord": CORD_MASK},
            "pred": {"tumor": t1, "edema": empty(), "cavity": empty(), "whole-tumor": t1,
                     "cord": CORD_MASK, "cropbox": box((0, 0, 0), (10, 10, 5))},
        },
    }


def mask_name(stem: str, label: str) -> str:
    return f"{stem}_cropbox.nii.gz" if label == "cropbox" else f"{stem}_seg-{label}.nii.gz"


def write_dataset(tmp_path: Path, layout: str) -> tuple[Path, Path]:
    """Write the dataset as a BIDS tree + nested predictions, or as two flat folders."""
    gt_root, pred_root = tmp_path / "gt", tmp_path / "pred"
    for stem, sides in dataset().items():
        sub = stem.split("_")[0]
        if layout == "bids":
            write_nii(gt_root / sub / "anat" / f"{stem}.nii.gz", np.ones(SHAPE), dtype=np.float32)
            gt_dir = gt_root / "derivatives" / "labels" / sub / "anat"
            pred_dir = pred_root / sub / "anat"
        else:
            gt_dir, pred_dir = gt_root, pred_root
        for label, mask in sides["gt"].items():
            write_nii(gt_dir / mask_name(stem, label), mask)
        for label, mask in sides["pred"].items():
            write_nii(pred_dir / mask_name(stem, label), mask, dtype=np.float32)
    return gt_root, pred_root


@pytest.mark.parametrize("value, inside", [(0.49, False), (0.5, True), (1.0, True), (3.0, True),
                                           (0.0, False), (np.nan, False)])
def test_load_mask_binarises_at_one_half(tmp_path: Path, value: float, inside: bool) -> None:
    data = np.full((2, 2, 2, 1), value, dtype=np.float32)  # trailing singleton axis is dropped
    path = write_nii(tmp_path / "m_seg-tumor.nii.gz", data, dtype=np.float32)
    mask, affine = files.load_mask(path)
    assert mask.shape == (2, 2, 2) and bool(mask.all()) is inside
    assert affine.shape == (4, 4)


def test_load_mask_rejects_4d(tmp_path: Path) -> None:
    path = write_nii(tmp_path / "m_seg-tumor.nii.gz", np.zeros((2, 2, 2, 2)))
    with pytest.raises(DeepsegError, match="expected a 3D mask"):
        files.load_mask(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("layout", ["bids", "folders"])
def test_cli_end_to_end(tmp_path: Path, layout: str, capsys) -> None:
    gt_root, pred_root = write_dataset(tmp_path, layout)
    prefix = tmp_path / "out" / "report"
    assert cli.main(["--gt", str(gt_root), "--pred", str(pred_root), "-o", str(prefix)]) == 0
    stdout = capsys.readouterr().out
    assert (prefix.parent / "report.md").read_text(encoding="utf-8") == stdout

    cases = read_csv(prefix.parent / "report_cases.csv")
    assert len(cases) == 2 * 5  # 2 cases x (4 structures + cord)
    by_key = {(r["case"], r["class"]): r for r in cases}
    assert float(by_key[("sub-01_T2w", "tumor")]["dice"]) == pytest.approx(0.5)
    assert float(by_key[("sub-01_T2w", "edema")]["dice"]) == 0.0  # FP on absent edema
    assert by_key[("sub-01_T2w", "cavity")]["dice"] == "nan"  # both empty
    assert float(by_key[("sub-02_T2w", "whole-tumor")]["dice"]) == pytest.approx(128 / 136)
    assert float(by_key[("sub-01_T2w", "cord")]["cord_fraction_in_box"]) == pytest.approx(0.8)
    assert float(by_key[("sub-02_T2w", "cord")]["box_contains_lesion"]) == 0.0

    summary_csv = read_csv(prefix.parent / "report_summary.csv")
    summary = {(r["class"], r["metric"]): r for r in summary_csv}
    tumor_dice = summary[("tumor", "dice")]
    assert (float(tumor_dice["mean"]), float(tumor_dice["std"]), tumor_dice["n"]) == (
        pytest.approx(0.75), pytest.approx(0.25), "2")
    assert summary[("cavity", "dice")]["n"] == "1"  # sub-01 cavity excluded (both empty)
    assert float(summary[("cord", "box_contains_lesion")]["mean"]) == pytest.approx(0.5)
    assert float(summary[("cord", "cord_fraction_in_box")]["mean"]) == pytest.approx(0.65)
    assert float(summary[("cord", "dice")]["mean"]) == pytest.approx(1.0)

    dice_cells = "72.1 ± 22.1 (n=2) | 75.0 ± 25.0 (n=2) | 0.0 ± 0.0 (n=1) | 0.0 ± 0.0 (n=1)"
    assert f"| Dice score [%] | {dice_cells} |" in stdout
    assert "| Crop box contains every lesion voxel [%] | 50.0 ± 50.0 (n=2) |" in stdout


def test_cli_default_prefix_and_overlap_option(tmp_path: Path, capsys) -> None:
    gt = write_nii(tmp_path / "gt" / "a_seg-tumor.nii.gz", box((0, 0, 0), (10, 1, 1)))
    write_nii(tmp_path / "pred" / "a_seg-tumor.nii.gz", box((0, 0, 0), (5, 1, 1)))
    assert cli.main(["--gt", str(gt.parent), "--pred", str(tmp_path / "pred")]) == 0
    rows = read_csv(tmp_path / "pred" / "evaluation_cases.csv")
    assert float(rows[0]["tpr"]) == 0.0  # 5 mm³ < 6 mm³
    assert cli.main(["--gt", str(gt.parent), "--pred", str(tmp_path / "pred"),
                     "--overlap-mm3", "5"]) == 0
    rows = read_csv(tmp_path / "pred" / "evaluation_cases.csv")
    assert float(rows[0]["tpr"]) == 1.0
    capsys.readouterr()


def test_cli_predictions_nested_in_bids_root(tmp_path: Path, capsys) -> None:
    gt_root, _ = write_dataset(tmp_path, "bids")
    for path in (tmp_path / "pred").rglob("*.nii.gz"):
        path.rename(gt_root / "derivatives" / path.name)  # predictions inside the BIDS root
    assert cli.main(["--gt", str(gt_root), "--pred", str(gt_root), "-o", str(tmp_path / "r")]) == 0
    assert len(read_csv(tmp_path / "r_cases.csv")) == 10
    capsys.readouterr()


def test_cli_skips_missing_files_with_warning(tmp_path: Path, caplog, capsys) -> None:
    gt_root, pred_root = write_dataset(tmp_path, "folders")
    (pred_root / "sub-02_T2w_seg-edema.nii.gz").unlink()
    write_nii(pred_root / "sub-03_T2w_seg-tumor.nii.gz", empty())
    with caplog.at_level(logging.WARNING, logger="deepseg_imsct.evaluate"):
        assert cli.main(["--gt", str(gt_root), "--pred", str(pred_root),
                         "-o", str(tmp_path / "r")]) == 0
    assert "no prediction file for edema" in caplog.text
    assert "sub-03_T2w (prediction only)" in caplog.text
    rows = read_csv(tmp_path / "r_cases.csv")
    assert len(rows) == 9
    assert "Unmatched (skipped): sub-03_T2w (prediction only)" in capsys.readouterr().out


def _shape_mismatch(pred_root: Path) -> Path:
    return write_nii(pred_root / "sub-01_T2w_seg-tumor.nii.gz", empty((10, 10, 9)))


def _affine_mismatch(pred_root: Path) -> Path:
    return write_nii(pred_root / "sub-01_T2w_seg-tumor.nii.gz", empty(), zooms=(1.0, 1.0, 2.0))


@pytest.mark.parametrize("corrupt", [_shape_mismatch, _affine_mismatch])
def test_cli_grid_mismatch_names_both_files(tmp_path: Path, corrupt, capsys) -> None:
    gt_root, pred_root = write_dataset(tmp_path, "folders")
    bad = corrupt(pred_root)
    assert cli.main(["--gt", str(gt_root), "--pred", str(pred_root),
                     "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imsct_evaluate: error: ") and err.count("\n") == 1
    assert str(bad) in err and str(gt_root / "sub-01_T2w_seg-tumor.nii.gz") in err
    assert not (tmp_path / "r.md").exists()


def test_cli_no_cases_names_both_folders(tmp_path: Path, capsys) -> None:
    write_nii(tmp_path / "gt" / "a_seg-tumor.nii.gz", empty())
    write_nii(tmp_path / "pred" / "b_seg-tumor.nii.gz", empty())
    assert cli.main(["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imsct_evaluate: error: no case found")
    assert str(tmp_path / "gt") in err and str(tmp_path / "pred") in err


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        ("duplicate", [], "appears twice"),
        ("same", [], "same folder"),
        ("missing", [], "is not a folder"),
        ("none", ["--overlap-mm3", "-1"], "--overlap-mm3 -1.0 is invalid"),
        ("unreadable", [], "cannot read"),
    ],
)
def test_cli_user_errors(tmp_path: Path, capsys, setup: str, extra: list, message: str) -> None:
    gt_root, pred_root = write_dataset(tmp_path, "folders")
    if setup == "duplicate":
        write_nii(pred_root / "again" / "sub-01_T2w_seg-tumor.nii.gz", empty())
    elif setup == "same":
        pred_root = gt_root
    elif setup == "missing":
        pred_root = tmp_path / "nowhere"
    elif setup == "unreadable":
        (pred_root / "sub-01_T2w_seg-tumor.nii.gz").write_bytes(b"not a nifti")
    assert cli.main(["--gt", str(gt_root), "--pred", str(pred_root), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imsct_evaluate: error: ") and message in err


def test_cli_requires_arguments(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "imsct_evaluate: error:" in capsys.readouterr().err
