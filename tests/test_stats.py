"""Lesion statistics on analytic phantoms of known volume and position (stats.py)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deepseg_imsct.grid import apply_affine
from deepseg_imsct.stats import centreline, lesion_stats, stats_row, tsv_text

# a sagittal-like grid: axis 0 inferior->superior at 0.5 mm, axis 1 posterior->anterior at 0.5 mm,
# axis 2 right->left... at 2 mm (anisotropic), 480 x 60 x 15 voxels
SHAPE = (480, 60, 15)
AFFINE = np.array([[0, 0, 2.0, -14], [0, 0.5, 0, -15], [0.5, 0, 0, -120], [0, 0, 0, 1]])


def rotation_x(degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    r = np.eye(4)
    r[1:3, 1:3] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return r


def phantom():
    """Cord: i in [40, 440) (200 mm), radius 4 mm. Edema: two boxes; cavity: none; tumor: one box
    i in [100, 120) x j [24, 36) x k [6, 9): 10 mm along the cord, 6 x 6 mm, 360 mm³."""
    i, j, k = np.indices(SHAPE)
    cord = (i >= 40) & (i < 440) & (((j - 30) * 0.5) ** 2 + ((k - 7) * 2.0) ** 2 <= 16)
    tumor = (i >= 100) & (i < 120) & (j >= 24) & (j < 36) & (k >= 6) & (k < 9)
    edema = ((i >= 120) & (i < 140) | (i >= 300) & (i < 304)) & (j >= 26) & (j < 34) & (k >= 6) & (k < 9)
    cavity = np.zeros(SHAPE, bool)
    whole = tumor | edema | cavity
    t2 = np.where(cord, 1.0, 0.1) + tumor * 1.0
    t1 = np.where(cord, 1.0, 0.1) + tumor * 2.0
    masks = {"tumor": tumor, "edema": edema, "cavity": cavity, "whole-tumor": whole}
    return masks, cord, t2, t1


def test_tumor_box_exact_on_anisotropic_grid():
    masks, cord, t2, t1 = phantom()
    stats = lesion_stats(masks, cord, AFFINE, t2, t1)
    assert stats["Cord"]["found"] and stats["Cord"]["length_mm"] == pytest.approx(200.0)
    tumor = stats["Classes"]["tumor"]
    assert tumor["volume_mm3"] == pytest.approx(360.0) and tumor["volume_cm3"] == pytest.approx(0.36)
    assert tumor["n_components"] == 1
    (c,) = tumor["components"]
    assert c["extent_along_cord_mm"] == pytest.approx(10.0)
    assert c["max_axial_area_mm2"] == pytest.approx(36.0)
    assert c["from_top_mm"] == pytest.approx((439.5 - 119.5) * 0.5)  # 160 mm from the cord's top edge
    assert c["from_bottom_mm"] == pytest.approx((99.5 - 39.5) * 0.5)  # 30 mm above its caudal edge
    assert c["cord_share"] == pytest.approx(0.05)
    assert c["centroid_mm"] == pytest.approx(apply_affine(AFFINE, np.array([109.5, 29.5, 7.0])).tolist())
    assert c["t2w_relative_to_cord"] == pytest.approx(2.0) and c["t1w_relative_to_cord"] == pytest.approx(3.0)
    assert stats["VertebralLevels"] == "unknown"


def test_components_counted_largest_first_and_absent_class_is_zero():
    masks, cord, t2, t1 = phantom()
    stats = lesion_stats(masks, cord, AFFINE, t2, t1)
    edema = stats["Classes"]["edema"]
    assert edema["n_components"] == 2
    assert [c["volume_mm3"] for c in edema["components"]] == pytest.approx([20 * 8 * 3 * 0.5, 4 * 8 * 3 * 0.5])
    assert stats["Classes"]["whole-tumor"]["n_components"] == 2  # tumor and the first edema box touch
    assert stats["Classes"]["cavity"] == {"volume_mm3": 0.0, "volume_cm3": 0.0, "n_components": 0, "components": []}
    row = stats_row(stats, "sub-01_T2w")
    assert row["cavity_volume_mm3"] == 0.0 and row["cavity_largest_extent_along_cord_mm"] == 0.0
    assert row["tumor_largest_max_axial_area_mm2"] == pytest.approx(36.0)
    header, line = tsv_text([row]).splitlines()
    assert len(header.split("\t")) == len(line.split("\t")) == len(row)


@pytest.mark.parametrize("degrees", [25.0, -40.0])
def test_rotated_affine_gives_the_same_sizes_and_positions(degrees):
    masks, cord, t2, t1 = phantom()
    rotated = rotation_x(degrees) @ AFFINE
    plain = lesion_stats(masks, cord, AFFINE, t2, t1)["Classes"]["tumor"]["components"][0]
    turned = lesion_stats(masks, cord, rotated, t2, t1)["Classes"]["tumor"]["components"][0]
    for key in ("volume_mm3", "extent_along_cord_mm", "max_axial_area_mm2", "from_top_mm", "from_bottom_mm", "cord_share"):
        assert turned[key] == pytest.approx(plain[key], abs=1e-3), key
    assert turned["centroid_mm"] == pytest.approx(apply_affine(rotation_x(degrees), np.array(plain["centroid_mm"])).tolist(), abs=1e-3)


def test_oblique_grid_through_a_world_defined_ball():
    """A ball of radius 5 mm on a cord along the scanner's z axis, sampled on a grid turned 30°
    with 0.5 x 0.5 x 1 mm voxels: volume, extent and cross-section within sampling error."""
    affine = rotation_x(30) @ np.diag([1.0, 0.5, 0.5, 1.0])
    affine[:3, 3] = -apply_affine(affine, np.array([15, 200, 200]))  # the grid's centre at the origin
    shape = (30, 400, 400)
    pts = apply_affine(affine, np.indices(shape).reshape(3, -1).T.astype(float)).reshape(*shape, 3)
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    cord = (x ** 2 + y ** 2 <= 36) & (np.abs(z) <= 80)
    ball = x ** 2 + y ** 2 + (z - 20) ** 2 <= 25
    stats = lesion_stats({"tumor": ball, "whole-tumor": ball}, cord, affine)
    assert stats["Cord"]["length_mm"] == pytest.approx(160, abs=1.5)
    (c,) = stats["Classes"]["tumor"]["components"]
    assert c["volume_mm3"] == pytest.approx(4 / 3 * math.pi * 125, rel=0.03)
    assert c["extent_along_cord_mm"] == pytest.approx(10, abs=1.0)
    assert c["max_axial_area_mm2"] == pytest.approx(math.pi * 25, rel=0.1)
    assert c["centre_from_top_mm"] == pytest.approx(60, abs=0.5)
    assert c["centroid_mm"] == pytest.approx([0, 0, 20], abs=0.1)


def test_curved_cord_positions_follow_the_centreline():
    """A cord bent as a quarter circle (radius 100 mm): distance along it, not along an axis."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    shape = (120, 10, 120)  # x, y, z in mm
    x, y, z = np.indices(shape).astype(float)
    r = np.hypot(x, z)  # centre of curvature at the corner (x=0, z=0)
    cord = (np.abs(r - 100) <= 3) & (np.abs(y - 5) <= 3)
    line = centreline(cord, affine)
    assert line.length_mm == pytest.approx(math.pi / 2 * 100, rel=0.04)
    angle = math.radians(45)
    middle = np.array([[100 * math.sin(angle), 5, 100 * math.cos(angle)]])
    assert line.position(middle)[0] == pytest.approx(line.length_mm / 2, rel=0.04)


def test_no_cord_falls_back_to_the_scanner_axis():
    masks, _, t2, t1 = phantom()
    stats = lesion_stats(masks, np.zeros(SHAPE, bool), AFFINE, t2, t1)
    assert not stats["Cord"]["found"] and stats["Cord"]["length_mm"] == pytest.approx(240.0)
    (c,) = stats["Classes"]["tumor"]["components"]
    assert c["from_top_mm"] == pytest.approx((479.5 - 119.5) * 0.5)
    assert c["extent_along_cord_mm"] == pytest.approx(10.0) and c["max_axial_area_mm2"] == pytest.approx(36.0)
    assert c["t2w_relative_to_cord"] is None  # no healthy cord to compare with


def test_the_statistics_files_are_overwrite_protected(registry, tmp_path):
    from test_pipeline import write_case

    from deepseg_imsct.errors import DeepsegError
    from deepseg_imsct.pipeline import segment_files

    t2, t1 = write_case(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub-01_T2w_stats.tsv").write_text("mine\n")
    with pytest.raises(DeepsegError, match="sub-01_T2w_stats.tsv was not written by imsct_deepseg"):
        segment_files(t2, t1, out)
    assert (out / "sub-01_T2w_stats.tsv").read_text() == "mine\n" and not (out / "sub-01_T2w_stats.json").exists()
    (out / "sub-01_T2w_stats.tsv").unlink()
    first = segment_files(t2, t1, out)
    again = segment_files(t2, t1, out, threshold=0.9)  # our own files, from this T2w: replaced
    assert again.stats["Classes"]["tumor"]["volume_mm3"] < first.stats["Classes"]["tumor"]["volume_mm3"]
    assert json.loads((out / "sub-01_T2w_stats.json").read_text())["Statistics"] == again.stats


def test_statistics_do_not_depend_on_the_voxel_order():
    """The shipped case's ground truth, as stored (LSA) and reoriented to RAS: the same numbers."""
    import nibabel as nib

    from conftest import REPO

    labels = REPO / "testing_data" / "derivatives" / "labels" / "sub-test01" / "anat"
    images = {c: nib.load(labels / f"sub-test01_T2w_seg-{c}.nii.gz") for c in ("tumor", "edema", "cavity", "whole-tumor", "cord")}

    def stats(reorient):
        imgs = {c: nib.as_closest_canonical(i) if reorient else i for c, i in images.items()}
        masks = {c: np.asanyarray(i.dataobj) > 0 for c, i in imgs.items()}
        return lesion_stats({c: m for c, m in masks.items() if c != "cord"}, masks["cord"], imgs["cord"].affine)

    stored, ras = stats(False), stats(True)
    assert nib.aff2axcodes(images["cord"].affine) != ("R", "A", "S")
    assert stored["Cord"]["length_mm"] == pytest.approx(ras["Cord"]["length_mm"], abs=1e-3) and stored["Cord"]["length_mm"] > 100
    for cls in ("tumor", "edema", "cavity", "whole-tumor"):
        a, b = stored["Classes"][cls], ras["Classes"][cls]
        assert a["volume_mm3"] > 0 and a["volume_mm3"] == pytest.approx(b["volume_mm3"]) and a["n_components"] == b["n_components"]
        for key in ("extent_along_cord_mm", "max_axial_area_mm2", "from_top_mm", "centroid_mm"):
            assert a["components"][0][key] == pytest.approx(b["components"][0][key], abs=1e-2), (cls, key)
