"""Geometry: working grids, resampling through affines, crop/un-crop."""
from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepseg_imsct.grid import (
    Grid,
    apply_affine,
    bounding_box,
    crop,
    footprint,
    inside_fraction,
    reoriented_grid,
    resample,
    uncrop,
    working_grid,
)

import synthetic

AXCODES = ["RAS", "LPI", "PSR", "ASL", "SAR", "IRP"]


def rotated(grid: Grid, angle: float, axis: int) -> Grid:
    """``grid`` turned by ``angle`` radians about scanner axis ``axis`` (through the origin)."""
    return Grid(grid.shape, synthetic.rotation(angle, axis) @ grid.affine)


def grid_with(axcodes: str, zooms=(0.6, 0.7, 3.5), shape=(40, 30, 12), origin=(-10.0, 5.0, 20.0)) -> Grid:
    """A grid whose voxel axes point along ``axcodes`` with the given voxel sizes."""
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for i, (axis, sign) in enumerate(ornt):
        affine[int(axis), i] = sign * zooms[i]
    affine[:3, 3] = origin
    return Grid(shape, affine)


def voxel_centres_mm(grid: Grid) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1)
    return apply_affine(grid.affine, idx.astype(float))


def linear_field(points: np.ndarray) -> np.ndarray:
    return (3.0 * points[..., 0] - 2.0 * points[..., 1] + 0.5 * points[..., 2] + 7.0).astype(np.float32)


@pytest.mark.parametrize("axcodes", AXCODES)
def test_working_grid_orientation_spacing_and_centre(axcodes):
    native = grid_with(axcodes)
    work = working_grid(native, (1.0, 1.0, 2.0))
    assert nib.aff2axcodes(work.affine) == ("S", "A", "R")
    np.testing.assert_allclose(work.zooms, [1.0, 1.0, 2.0])
    centre = lambda g: apply_affine(g.affine, (np.asarray(g.shape) - 1) / 2)  # noqa: E731
    np.testing.assert_allclose(centre(work), centre(native), atol=1e-9)
    # extent per scanner axis is the native one, rounded to whole working voxels
    reo, _ = reoriented_grid(native, "SAR")
    expected = np.maximum(1, np.round(np.asarray(reo.shape) * reo.zooms / [1, 1, 2]))
    assert work.shape == tuple(expected.astype(int))


@pytest.mark.parametrize("axcodes", AXCODES)
def test_resample_to_reoriented_grid_is_exact_permutation(axcodes):
    native = grid_with(axcodes)
    data = np.random.default_rng(0).random(native.shape, dtype=np.float32)
    reo, ornt = reoriented_grid(native, "SAR")
    expected = nib.orientations.apply_orientation(data, ornt)
    np.testing.assert_array_equal(resample(data, native, reo), expected)
    np.testing.assert_array_equal(resample(expected, reo, native), data)


@pytest.mark.parametrize("oblique", [False, True], ids=["separable", "general"])
def test_trilinear_reproduces_linear_fields(oblique):
    """Trilinear interpolation is exact on fields linear in scanner coordinates."""
    src = grid_with("PSR", zooms=(0.8, 0.9, 3.0), shape=(50, 40, 10))
    dst = working_grid(src, (1.0, 1.0, 2.0))
    if oblique:
        dst = rotated(dst, 0.2, axis=2)
    values = resample(linear_field(voxel_centres_mm(src)), src, dst, fill=np.nan)
    expected = linear_field(voxel_centres_mm(dst))
    inside = np.isfinite(values)
    assert inside.mean() > 0.5
    # a voxel is interpolated exactly when its centre lies within the source voxel centres
    src_vox = apply_affine(np.linalg.solve(src.affine, dst.affine), np.argwhere(np.ones(dst.shape)).astype(float))
    strictly = np.all((src_vox >= 0) & (src_vox <= np.asarray(src.shape) - 1), axis=1).reshape(dst.shape)
    np.testing.assert_allclose(values[strictly], expected[strictly], atol=2e-3)


def test_outside_field_of_view_gets_fill_and_edge_half_voxel_is_held():
    src = Grid((4, 4, 4), np.eye(4))
    data = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    dst_affine = np.eye(4)
    dst_affine[0, 3] = -0.4  # 0.4 voxel before the first centre: inside the half voxel
    held = resample(data, src, Grid((4, 4, 4), dst_affine), fill=-1)
    np.testing.assert_array_equal(held[0], data[0])
    dst_affine[0, 3] = -0.6  # beyond the edge of the first voxel: outside
    out = resample(data, src, Grid((4, 4, 4), dst_affine), fill=-1)
    assert np.all(out[0] == -1) and np.all(out[1:] >= 0)


def test_nearest_neighbour_keeps_dtype_and_labels():
    src = grid_with("RAS", zooms=(1, 1, 1), shape=(10, 10, 10))
    labels = np.zeros(src.shape, np.uint8)
    labels[2:5, 3:7, 4:9] = 3
    half = np.diag([0.5, 0.5, 0.5, 1.0])
    half[:3, 3] = -0.25  # centred 2x upsampling: each source voxel becomes exactly 2x2x2 voxels
    out = resample(labels, src, Grid((20, 20, 20), src.affine @ half), order=0)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 3}
    np.testing.assert_array_equal(out, labels.repeat(2, 0).repeat(2, 1).repeat(2, 2))


@settings(max_examples=25, deadline=None)
@given(
    axcodes=st.sampled_from(["".join(p) for p in itertools.permutations("RAS")] + ["LPI", "PIL", "ILA"]),
    zooms=st.tuples(*[st.floats(0.3, 5.0)] * 3),
    shape=st.tuples(*[st.integers(2, 24)] * 3),
)
def test_roundtrip_native_working_native_identity_at_native_spacing(axcodes, zooms, shape):
    """Reorienting to SAR at the native voxel size and back returns the data exactly."""
    native = grid_with(axcodes, zooms=zooms, shape=shape)
    reo, _ = reoriented_grid(native, "SAR")
    work = working_grid(native, tuple(reo.zooms))
    assert work.shape == reo.shape
    np.testing.assert_allclose(work.affine, reo.affine, atol=1e-9)
    data = np.random.default_rng(1).random(shape, dtype=np.float32)
    back = resample(resample(data, native, work), work, native)
    np.testing.assert_allclose(back, data, atol=1e-6)


@pytest.mark.parametrize(
    "start,size",
    [((0, 0, 0), (5, 6, 7)), ((-3, 2, 1), (8, 4, 4)), ((3, -2, 5), (10, 10, 10)), ((-20, 0, 0), (5, 5, 5))],
)
def test_crop_uncrop_identity_inside_and_padding_outside(start, size):
    data = np.random.default_rng(2).random((2, 6, 7, 8), dtype=np.float32)
    block = crop(data, start, size, fill=-5)
    assert block.shape == (2, *size)
    back = uncrop(block, start, data.shape[1:], fill=0)
    covered = uncrop(np.ones(size, bool), start, data.shape[1:], fill=False)
    np.testing.assert_array_equal(back[:, covered], data[:, covered])
    assert np.all(back[:, ~covered] == 0)
    outside = ~crop(np.ones(data.shape[1:], bool), start, size, fill=False)
    assert np.all(block[:, outside] == -5)


def test_subgrid_matches_crop_geometry():
    grid = grid_with("LPI")
    data = np.random.default_rng(3).random(grid.shape, dtype=np.float32)
    start, size = (-2, 3, 1), (10, 8, 6)
    np.testing.assert_allclose(resample(data, grid, grid.subgrid(start, size), fill=0), crop(data, start, size), atol=1e-7)


def test_inside_fraction_and_footprint():
    a = Grid((10, 10, 10), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 5
    b = Grid((10, 10, 10), shifted)
    far = np.eye(4)
    far[:3, 3] = 100
    assert inside_fraction(a, a) == 1.0
    assert inside_fraction(a, b) == pytest.approx(0.5, abs=0.09)
    assert inside_fraction(a, Grid((10, 10, 10), far)) == 0.0
    start, size = footprint(b, a)
    assert start[0] == 4 and start[0] + size[0] == 10 and size[1:] == (10, 10)


@pytest.mark.parametrize("direction", ["down", "up"])
def test_separable_resample_is_the_same_whatever_the_memory_layout_and_integer_type(direction):
    """Fortran-ordered (NIfTI) data, transposed views, channel axes and 16-bit integers give the
    bitwise result of a C-contiguous float32 array: the passes follow the memory layout."""
    native = grid_with("PSR", zooms=(0.4, 0.5, 3.0), shape=(90, 70, 9))
    work = working_grid(native, (1.0, 1.0, 2.0) if direction == "down" else (0.2, 0.25, 1.0))
    values = np.random.default_rng(4).integers(-300, 3000, native.shape).astype(np.int16)
    expected = resample(np.ascontiguousarray(values, dtype=np.float32), native, work, fill=np.nan)
    for data in (np.asfortranarray(values), values.astype(np.float32, order="F"), values.T.copy().T):
        got = resample(data, native, work, fill=np.nan)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)
    stacked = np.stack([values, values[::-1]]).astype(np.float32)
    got = resample(np.moveaxis(np.moveaxis(stacked, 0, -1).copy(), -1, 0), native, work, fill=np.nan)
    np.testing.assert_array_equal(got[0], expected)
    np.testing.assert_array_equal(got[1], resample(np.ascontiguousarray(stacked[1]), native, work, fill=np.nan))


@pytest.mark.parametrize("oblique", [False, True], ids=["separable", "general"])
def test_int16_data_is_interpolated_as_float32(oblique):
    src = grid_with("LPI", zooms=(0.7, 0.7, 2.5), shape=(30, 40, 8))
    dst = working_grid(src, (1.0, 1.0, 2.0))
    if oblique:
        dst = rotated(dst, 0.3, axis=0)
    values = np.random.default_rng(5).integers(-2000, 2000, src.shape).astype(np.int16)
    got = resample(values, src, dst, fill=np.nan)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, resample(values.astype(np.float32), src, dst, fill=np.nan))
    nearest = resample(values, src, dst, order=0, fill=-1)
    assert nearest.dtype == np.int16 and set(np.unique(nearest)) <= set(np.unique(values)) | {-1}


def test_resample_onto_an_empty_grid():
    src = grid_with("RAS", shape=(10, 10, 10))
    for size in [(0, 0, 0), (0, 5, 5), (5, 5, 0)]:
        assert resample(np.ones(src.shape, np.float32), src, src.subgrid((0, 0, 0), size)).shape == size


def test_bounding_box_with_margin_is_clipped_to_the_array():
    mask = np.zeros((10, 12, 14), bool)
    mask[3:5, 0:2, 9:14] = True
    assert bounding_box(mask) == ((3, 0, 9), (2, 2, 5))
    assert bounding_box(mask, margin=1) == ((2, 0, 8), (4, 3, 6))
    assert bounding_box(np.zeros((4, 4, 4), bool), margin=2) == ((0, 0, 0), (0, 0, 0))


def test_uncrop_in_fortran_order_with_zeros_untouched():
    block = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = uncrop(block, (1, -1, 2), (5, 5, 5), order="F")
    assert out.flags.f_contiguous and out.dtype == np.uint8
    np.testing.assert_array_equal(out, uncrop(block, (1, -1, 2), (5, 5, 5)))
    assert out.sum() == block[:, 1:, :3].sum()
