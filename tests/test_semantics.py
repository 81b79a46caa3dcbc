"""The reference semantics as registry data: each one on a constructed input with a known answer,
and the whole cascade against an independent transcription of the reference (ivadomed_reference)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import synthetic
from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.grid import Grid, apply_affine
from deepseg_imsct.cropbox import first_component_bounds, reference_box
from deepseg_imsct.localize import centred_block
from deepseg_imsct.postprocess import ClassPost, fill_holes, postprocess
from deepseg_imsct.primitives import zscore, zscore_window
from deepseg_imsct.registry import load_registry
from deepseg_imsct.segment import sliding_window
from deepseg_imsct.semantics import IVADOMED, NATIVE, BlockRounding, parse_semantics
from deepseg_imsct.zoomgrid import unzoom, zoom_grid, zoom_values

PSR = synthetic.sagittal_affine("PSR", (0.8, 0.8, 3.0), (20, 30, 7))


def test_presets_and_overrides_parse_and_nonsense_is_refused():
    assert parse_semantics(None) == NATIVE
    assert parse_semantics({"preset": "ivadomed"}) == IVADOMED
    assert parse_semantics({"preset": "ivadomed", "noise_floor": 0}).noise_floor == 0
    assert IVADOMED.as_dict()["grid"] == "zoom" and IVADOMED.as_dict()["image_order"] == 2
    for bad in ({"preset": "monai"}, {"grid": "polar"}, {"image_order": 2}, {"stitching": "gaussian"},
                {"colour": 1}, {"box": "first_component"}):
        with pytest.raises(ValueError):
            parse_semantics(bad)


def test_a_registry_entry_carries_its_semantics(registry, tmp_path):
    data = json.loads(registry.read_text())
    data["models"]["seg"]["versions"]["1.0"]["semantics"] = {"preset": "ivadomed"}
    data["models"]["loc"]["versions"]["1.0"]["semantics"] = {"grid": "warp"}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    reg = load_registry(path)
    assert reg.model("seg").semantics == IVADOMED
    with pytest.raises(DeepsegError, match=r"model 'loc' version '1.0' .* has a malformed field \(.*'warp' is not a valid GridKind"):
        reg.model("loc")


def test_window_zscore_includes_the_padding_and_only_centres_a_constant_window():
    x = np.array([0, 0, 2, 2], np.float32).reshape(1, 1, 4)
    np.testing.assert_array_equal(zscore_window(x).ravel(), [-1, -1, 1, 1])
    np.testing.assert_array_equal(zscore_window(np.full((2, 2, 2), 5.0)), np.zeros((2, 2, 2)))
    padded = np.array([np.nan, np.nan, 2, 4], np.float32).reshape(1, 1, 4)  # the package's own: padding excluded
    np.testing.assert_array_equal(zscore(padded).ravel(), [0, 0, -1, 1])
    np.testing.assert_allclose(zscore_window(np.nan_to_num(padded)).ravel(), (np.array([0, 0, 2, 4]) - 1.5) / np.sqrt(2.75), rtol=1e-6)


def test_each_window_is_normalized_on_its_own_then_windows_are_averaged_uniformly():
    """Identity 'model' on a ramp 0..5 with windows of 4 every 2: windows [0,4) and [2,6) each
    become (-1.342, -0.447, 0.447, 1.342); voxels 2-3 are the mean of the two windows' values."""
    ramp = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    out = sliding_window(ramp, lambda b: b.copy(), (4, 1, 1), (2, 1, 1), 1, normalize_windows=True)[0, :, 0, 0]
    z = (np.arange(4) - 1.5) / np.sqrt(1.25)
    np.testing.assert_allclose(out, [z[0], z[1], (z[2] + z[0]) / 2, (z[3] + z[1]) / 2, z[2], z[3]], rtol=1e-6)
    plain = sliding_window(ramp, lambda b: b.copy(), (4, 1, 1), (2, 1, 1), 1)[0, :, 0, 0]
    np.testing.assert_array_equal(plain, np.arange(6))


def test_zoom_grid_shape_rounds_half_to_even_and_is_corner_aligned():
    # PSR: S axis = array axis 1 (30 x 0.8 mm = 24 -> 24), A = axis 0 reversed (20 x 0.8 = 16), R = 7 x 3 / 2 = 10.5 -> 10
    zoom = zoom_grid(Grid((20, 30, 7), PSR), (1.0, 1.0, 2.0))
    assert zoom.grid.shape == (24, 16, 10) and zoom.factors == pytest.approx((0.8, 0.8, 1.5))
    # corner-aligned: the zoom grid's first and last voxel centres are the reoriented grid's
    for corner in ((0, 0, 0), (23, 15, 9)):
        reo_corner = np.where(np.array(corner) > 0, np.array(zoom.reoriented.shape) - 1, 0)
        np.testing.assert_allclose(apply_affine(zoom.grid.affine, np.array(corner, float)),
                                   apply_affine(zoom.reoriented.affine, reo_corner.astype(float)), atol=1e-9)


@pytest.mark.parametrize("order", [1, 2])
def test_images_zoom_with_their_order_and_a_ramp_lands_where_the_grid_affine_says(order):
    """A linear ramp in scanner mm is reproduced by linear and quadratic splines (away from the
    edges, where the quadratic spline's boundary condition bends it): its zoomed values equal the
    ramp at the zoom grid's voxel centres (the grid describes scipy's layout)."""
    from scipy import ndimage

    native = Grid((20, 30, 7), PSR)
    xyz = synthetic.centres_mm(native.shape, native.affine)
    ramp = (0.3 * xyz[..., 0] - 0.7 * xyz[..., 1] + 0.2 * xyz[..., 2]).astype(np.float32)
    zoom = zoom_grid(native, (1.0, 1.0, 2.0))
    got = zoom_values(ramp, zoom, order)
    at = synthetic.centres_mm(zoom.grid.shape, zoom.grid.affine)
    inner = (slice(3, -3),) * 3 if order == 2 else (slice(None),) * 3  # half a voxel off would be 0.3 off
    np.testing.assert_allclose(got[inner], (0.3 * at[..., 0] - 0.7 * at[..., 1] + 0.2 * at[..., 2])[inner],
                               atol=1e-2 if order == 2 else 1e-4)
    reo = nib.orientations.apply_orientation(ramp, zoom.ornt)
    np.testing.assert_array_equal(got, ndimage.zoom(reo, zoom.factors, order=order).astype(np.float32))


def test_predictions_go_back_linearly_to_the_exact_native_shape_and_order():
    native = Grid((20, 30, 7), PSR)
    zoom = zoom_grid(native, (1.0, 1.0, 2.0))
    at = synthetic.centres_mm(zoom.grid.shape, zoom.grid.affine)
    values = (0.01 * at[..., 1] + 0.5).astype(np.float32)
    back = unzoom(values, zoom, zoom.grid, order=1)
    xyz = synthetic.centres_mm(native.shape, native.affine)
    assert back.shape == native.shape
    np.testing.assert_allclose(back, 0.01 * xyz[..., 1] + 0.5, atol=1e-5)


@pytest.mark.parametrize("shape,start_even,start_floor", [
    ((515, 259, 35), (2, 2, 2), (1, 1, 1)),  # 1.5 -> 2 either way of rounding half to even; floor 1
    ((517, 257, 33), (2, 0, 0), (2, 0, 0)),  # 2.5 -> 2, 0.5 -> 0
    ((519, 256, 32), (4, 0, 0), (3, 0, 0)),  # 3.5 -> 4
    ((301, 100, 20), (-106, -78, -6), (-106, -78, -6)),  # -105.5 -> -106, smaller than the block: padded
])
def test_the_localizer_block_is_the_512x256x32_centre_crop_with_bankers_rounding(shape, start_even, start_floor):
    grid = Grid(shape, np.eye(4))
    for rounding, want in ((BlockRounding.HALF_EVEN, start_even), (BlockRounding.FLOOR, start_floor)):
        block = centred_block(grid, (512, 256, 32), rounding)
        assert block.shape == (512, 256, 32)
        np.testing.assert_array_equal(block.affine[:3, 3], want)


def test_the_box_comes_from_the_first_component_in_scan_order_not_the_largest():
    mask = np.zeros((40, 20, 10), bool)
    mask[30:39, 2:12, 1:8] = True  # the largest, superior
    mask[3:6, 14:17, 4:6] = True  # small, inferior: first in S-A-R scan order
    mask[3, 1, 9] = False
    assert first_component_bounds(mask) == ([3, 14, 4], [5, 16, 5])
    mask[2, 18, 0] = True  # a single voxel further inferior takes over, whatever its size
    assert first_component_bounds(mask) == ([2, 18, 0], [2, 18, 0])


def test_the_reference_box_arithmetic_on_the_documented_worked_example():
    """Native box [100..160, 120..151, 10..22] at zooms (0.5, 0.6, 3.0) mm, safety (1.2, 1.2, 1.0),
    spacing (1, 1, 2): enlarged [84, 276, 117, 154, 10, 22], resampled [42, 138, 70, 92, 15, 33],
    a single 128x128x32 window anchored at (42, 70, 15)."""
    box = reference_box((100, 120, 10), (260, 151, 22), (0.5, 0.6, 1.5), (1.2, 1.2, 1.0), (128, 128, 32), (64, 64, 32))
    assert box.start == (42, 70, 15) and box.size == (128, 128, 32)
    long = reference_box((0, 0, 0), (300, 10, 10), (1.0, 1.0, 1.0), (1.2, 1.0, 1.0), (128, 128, 32), (64, 64, 32))
    assert long.start == (0, 0, 0) and long.size == (384, 128, 32)  # 360 -> 128 + 4 x 64; shifted to 0, not cut


def test_reference_post_processing_removes_small_in_voxels_before_filling_holes():
    shell = np.zeros((7, 7, 7), np.float32)
    shell[2:5, 2:5, 2:5] = 1
    shell[3, 3, 3] = 0  # 26 voxels around a hole
    reference = ClassPost(0.5, True, 0.0, min_voxels=27, remove_first=True, hole_connectivity=3)
    assert not postprocess(shell, reference, 1.0).any()  # 26 < 27 removed before the hole is filled
    package = ClassPost(0.5, True, 0.0, min_voxels=27)
    assert postprocess(shell, package, 1.0).sum() == 27  # filled first: 27 voxels stay


def test_holes_touching_the_outside_only_by_a_corner_stay_open_with_26_connected_background():
    cube = np.ones((5, 5, 5), bool)
    cube[2, 2, 2] = False  # a closed hole
    cube[1:3, 1:3, 1:3] = False  # a cavity ...
    cube[0, 0, 0] = False  # ... reaching the outside corner diagonally through (1, 1, 1)
    cube[1:4, 1:4, 1:4] &= True
    six, twenty_six = fill_holes(cube, 1), fill_holes(cube, 3)
    assert six[1, 1, 1] and six[2, 2, 2]  # 6-connected background: the cavity is a hole
    assert not twenty_six[1, 1, 1] and not twenty_six[2, 2, 2]  # 26-connected: it is outside


def test_the_noise_floor_zeroes_low_probabilities_on_the_native_grid(registry):
    from deepseg_imsct.resample_back import native_values

    spec = load_registry(registry).model("seg")
    native = Grid((20, 30, 7), PSR)
    zoom = zoom_grid(native, spec.spacing_mm)
    ivadomed = type(spec)(**{**vars(spec), "semantics": IVADOMED})
    values = np.full(zoom.grid.shape, 0.01, np.float32)
    values[5:10] = 0.3
    floor, start = native_values(values, zoom.grid, native, ivadomed)
    assert start == (0, 0, 0) and floor.shape == native.shape
    without = type(spec)(**{**vars(spec), "semantics": parse_semantics({"preset": "ivadomed", "noise_floor": 0})})
    plain, _ = native_values(values, zoom.grid, native, without)
    low = plain <= np.float32(0.01)
    assert low.sum() > 1000 and np.all(floor[low] == 0) and np.array_equal(floor[~low], plain[~low])


REFERENCE = {"preset": "ivadomed"}


def test_the_cascade_with_reference_semantics_equals_the_transcription(tmp_path, monkeypatch):
    """Analytic models, the 'ivadomed' preset: the package's probabilities and masks equal an
    independent transcription of the reference pipeline (scipy/nibabel only)."""
    import ivadomed_reference as ref
    from onnx_models import write_registry

    from deepseg_imsct.pipeline import Predictor

    path = write_registry(tmp_path / "m", loc_patch=(128, 128, 32), loc_spacing=(1.0, 1.0, 2.0), seg_patch=(32, 32, 16),
                          seg_stride=(16, 16, 16), semantics=REFERENCE, level=0.5,
                          seg_post={c: {"threshold": 0.5, "fill_holes": True, "min_volume_cm3": 0.0, "min_voxels": 20}
                                    for c in ("tumor", "edema", "cavity", "whole-tumor")})
    monkeypatch.setenv("DEEPSEG_IMSCT_REGISTRY", str(path))
    predictor = Predictor(offline=True)
    t2, t1, _ = synthetic.case()
    soft = predictor(t2, t1, predictor.postprocessing(soft=True))
    hard = predictor(t2, t1)
    loc = predictor.localizer.spec
    seg = predictor.segmenter.spec
    prior = ref.localizer(t2, predictor.localizer, loc.patch_size, loc.spacing_mm)
    prior_img = nib.Nifti1Image(prior, t2.affine, t2.header)
    probs = ref.segmenter(t2, t1, prior_img, predictor.segmenter, seg.patch_size, seg.stride, seg.spacing_mm,
                          seg.safety_factor, 4)
    masks = ref.postprocess(probs, 0.5, 20)
    assert masks[..., 0].sum() > 100  # the tumor is found
    for k, name in enumerate(seg.classes):
        np.testing.assert_allclose(np.asanyarray(soft.masks[name].dataobj), probs[..., k], atol=2e-5)
        np.testing.assert_array_equal(np.asanyarray(hard.masks[name].dataobj), masks[..., k])
