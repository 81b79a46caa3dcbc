"""Stage 1 geometry: cord components, crop box sizing, fall-back to the whole field of view."""
from __future__ import annotations

import numpy as np
import pytest

from deepseg_imsct.grid import Grid, apply_affine, working_grid
from deepseg_imsct.cropbox import box_for_mask, crop_box, mask_extent_mm
from deepseg_imsct.localize import centred_block, cord_components

PATCH, STRIDE = (128, 128, 32), (64, 64, 32)


def test_cord_components_keep_the_largest_and_its_pieces_not_specks():
    mask = np.zeros((60, 10, 10), bool)
    mask[1:3, 1:3, 1:3] = True  # first in C order, 8 voxels: 2.2 % of the largest, a speck
    mask[10:20, 2:8, 2:8] = True  # largest, 360 voxels
    mask[30:40, 3:6, 3:6] = True  # a piece further along the cord, 90 voxels (25 %)
    mask[50:52, 4:6, 4:6] = True  # 8 voxels again
    cord = cord_components(mask)
    assert cord.sum() == 450 and cord[15, 5, 5] and cord[35, 4, 4] and not cord[1, 1, 1] and not cord[51, 5, 5]
    assert cord_components(mask, piece_fraction=0.02).sum() == 466  # every piece of >= 7.2 voxels
    assert cord_components(mask, piece_fraction=1.0).sum() == 360  # the largest alone
    assert cord_components(mask, min_voxels=361) is None
    assert cord_components(np.zeros((5, 5, 5), bool)) is None


@pytest.mark.parametrize("extent", [(30, 10, 12), (200, 15, 20), (500, 300, 40), (128, 128, 32)])
def test_crop_box_is_whole_windows_and_contains_the_enlarged_extent(extent):
    grid = Grid((600, 400, 80), np.eye(4))
    lo = np.array([50.0, 40.0, 20.0])
    corners = np.array([[x, y, z] for x in (lo[0], lo[0] + extent[0]) for y in (lo[1], lo[1] + extent[1]) for z in (lo[2], lo[2] + extent[2])])
    box = crop_box(corners, grid, (1.2, 1.2, 1.0), PATCH, STRIDE)
    size = np.asarray(box.size)
    assert np.all(size >= PATCH)
    assert np.all((size - PATCH) % STRIDE == 0)
    enlarged = np.asarray(extent) * [1.2, 1.2, 1.0]
    assert np.all(size >= enlarged - 1e-6)
    assert np.all(size - np.maximum(enlarged, PATCH) < np.asarray(STRIDE) + 1)  # no more than one extra step
    # the enlarged extent lies inside the box, or the box spans the whole field of view on that axis
    start, end = np.asarray(box.start), np.asarray(box.start) + size
    centre = lo + np.asarray(extent) / 2
    lo_fov = np.maximum(centre - enlarged / 2, -0.5)  # the enlarged extent within the field of view
    hi_fov = np.minimum(centre + enlarged / 2, np.asarray(grid.shape) - 0.5)
    inside = (start - 0.5 <= lo_fov + 1e-6) & (hi_fov <= end - 0.5 + 1e-6)
    assert np.all(inside | (size >= grid.shape))


def test_crop_box_is_clipped_to_the_field_of_view_when_the_cord_runs_off_the_scan():
    grid = Grid((327, 400, 37), np.eye(4))  # the cord spans the whole S-I field of view
    corners = np.array([[x, y, z] for x in (-0.5, 326.5) for y in (190.0, 199.0) for z in (15.0, 20.0)])
    box = crop_box(corners, grid, (1.2, 1.2, 1.0), PATCH, STRIDE)
    assert box.size[0] == 384 and box.start[0] == -((384 - 327) // 2)  # 5 windows, not 6 (1.2 x 327 = 392)


def test_crop_box_is_shifted_inside_the_field_of_view_when_it_fits():
    grid = Grid((300, 200, 40), np.eye(4))
    corners = np.array([[x, y, z] for x in (0.0, 10.0) for y in (190.0, 199.0) for z in (0.0, 5.0)])
    box = crop_box(corners, grid, (1.2, 1.2, 1.0), PATCH, STRIDE)
    assert box.start[0] == 0 and box.start[1] + box.size[1] == 200  # pushed back inside
    assert box.start[2] == 0 and box.size[2] == 32  # centred start would be -13: clipped into the 40 slices


@pytest.mark.parametrize("slices,narrow", [(16, True), (60, False)], ids=["R-L-narrower-than-a-patch", "R-L-wide"])
def test_box_follows_the_mask_in_scanner_space_from_another_grid(slices, narrow):
    native_affine = np.diag([3.0, 0.5, 0.5, 1.0])  # R-L slices of 3 mm, A-P and S-I 0.5 mm
    native = Grid((slices, 500, 800), native_affine)
    loc_grid = working_grid(native, (2.0, 2.0, 4.0))
    mask = np.zeros(loc_grid.shape, bool)
    mask[50:120, 40:50, 5:7] = True
    box, work = box_for_mask(mask, loc_grid, native, (1.0, 1.0, 2.0), (1.2, 1.2, 1.0), PATCH, STRIDE)
    assert work.zooms.tolist() == [1.0, 1.0, 2.0]
    vox = apply_affine(np.linalg.inv(work.affine), mask_extent_mm(mask, loc_grid))  # the mask's voxel edges
    start, end = np.asarray(box.start), np.asarray(box.start) + box.size
    np.testing.assert_array_less(start - 0.5 - 1e-6, vox.min(0))  # inside the box on every axis, R-L included
    np.testing.assert_array_less(vox.max(0), end - 0.5 + 1e-6)
    spans_rl = start[2] <= 0 and end[2] >= work.shape[2]
    assert spans_rl == narrow  # the wide scan's box is a strict part of R-L: the containment above means something
    assert np.all(start[:2] > 0) and np.all(end[:2] < work.shape[:2])  # S-I and A-P: a crop, not the field of view


def test_no_cord_falls_back_to_the_whole_field_of_view():
    native = Grid((16, 300, 500), np.diag([3.0, 0.8, 0.8, 1.0]))
    box, work = box_for_mask(None, native, native, (1.0, 1.0, 2.0), (1.2, 1.2, 1.0), PATCH, STRIDE)
    start, end = np.asarray(box.start), np.asarray(box.start) + box.size
    assert np.all(start <= 0) and np.all(end >= work.shape)


def test_centred_block_crops_and_pads_symmetrically():
    grid = Grid((600, 200, 20), np.eye(4))
    block = centred_block(grid, (512, 256, 32))
    np.testing.assert_allclose(block.affine[:3, 3], [44, -28, -6])
