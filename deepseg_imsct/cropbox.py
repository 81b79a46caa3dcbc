"""Stage 2's crop box: where the segmenter's sliding window runs, from stage 1's cord.

Two rules (``spec.semantics.box``, see :func:`crop_for`): ``cord_pieces``, the cord's extent in
scanner mm enlarged by the safety factor, clipped to the field of view and rounded up to whole
windows (:func:`box_for_mask`, :func:`crop_box`); ``first_component``, the reference's box on a
zoom grid (:func:`reference_box`). All boxes are ``(start, size)`` in voxels of a working grid
(SAR axes, see :mod:`grid`); ``start`` may be negative and ``start + size`` may pass the end: the
crop is zero-padded there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .grid import Grid, apply_affine, resample, working_grid
from .primitives import connected_components
from .registry import ModelSpec
from .semantics import BoxRule
from .zoomgrid import zoom_grid

if TYPE_CHECKING:
    from .localize import Cord


@dataclass(frozen=True)
class Box:
    """A box of a working grid: ``start`` and ``size`` in voxels (S-I, A-P, R-L)."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def on(self, grid: Grid) -> Grid:
        return grid.subgrid(self.start, self.size)


def mask_extent_mm(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """Scanner-space corners (8, 3) of the voxel bounding box of ``mask`` (voxel edges)."""
    idx = np.nonzero(mask)
    lo = np.array([i.min() for i in idx]) - 0.5
    hi = np.array([i.max() for i in idx]) + 0.5
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return apply_affine(grid.affine, corners)


def crop_box(
    corners_mm: np.ndarray,
    grid: Grid,
    safety_factor: Sequence[float],
    patch: Sequence[int],
    stride: Sequence[int],
) -> Box:
    """The crop of ``grid`` around scanner points ``corners_mm`` for the sliding window.

    The points' extent in ``grid`` voxels is enlarged about its centre by ``safety_factor``,
    clipped to the field of view (a cord running off the scan adds no window of zeros), made at
    least one patch, rounded up to ``patch + k * stride`` (whole windows, no partial
    overlap), and shifted back inside the field of view where the field of view is large enough.
    """
    vox = apply_affine(np.linalg.inv(grid.affine), corners_mm)
    lo, hi = vox.min(axis=0), vox.max(axis=0)  # continuous voxel coordinates; voxel i spans [i-0.5, i+0.5]
    centre, half = (lo + hi) / 2, (hi - lo) * np.asarray(safety_factor, dtype=float) / 2
    n = np.asarray(grid.shape)
    first = np.floor(centre - half + 0.5 + 1e-6).astype(int)  # first and last voxel touched,
    last = np.ceil(centre + half - 0.5 - 1e-6).astype(int)  # within the field of view (nothing to see beyond)
    first, last = np.maximum(first, 0), np.minimum(last, n - 1)
    last = np.maximum(last, first)
    needed = np.maximum(last - first + 1, 1)
    patch, stride = np.asarray(patch), np.asarray(stride)
    size = patch + np.ceil(np.maximum(needed - patch, 0) / stride).astype(int) * stride
    start = first - (size - needed) // 2
    fits = size <= n
    start = np.where(fits, np.clip(start, 0, n - size), start)
    return Box(tuple(int(s) for s in start), tuple(int(s) for s in size))


def box_for_mask(
    mask: np.ndarray | None,
    mask_grid: Grid,
    native: Grid,
    spacing_mm: Sequence[float],
    safety_factor: Sequence[float],
    patch: Sequence[int],
    stride: Sequence[int],
) -> tuple[Box, Grid]:
    """The segmenter's crop box around ``mask`` (on ``mask_grid``) and the working grid it is on.

    ``mask`` None (no cord found) gives the whole field of view, rounded up to whole windows.
    """
    work = working_grid(native, tuple(spacing_mm))
    corners = work.corners_mm() if mask is None else mask_extent_mm(mask, mask_grid)
    factor = (1.0, 1.0, 1.0) if mask is None else safety_factor
    return crop_box(corners, work, factor, patch, stride), work


def first_component_bounds(mask: np.ndarray) -> tuple[list[int], list[int]]:
    """Inclusive (min, max) voxel index per axis of the 6-connected component of ``mask`` holding
    its first voxel in C-order scan (the reference's ``get_bounding_boxes(mask)[0]``)."""
    labels, _ = connected_components(mask, connectivity=1)
    first = labels.ravel()[np.flatnonzero(labels.ravel())[0]]
    idx = np.nonzero(labels == first)
    return [int(i.min()) for i in idx], [int(i.max()) for i in idx]


def reference_box(lo: Sequence[int], hi: Sequence[int], factors: Sequence[float], safety_factor: Sequence[float],
                  patch: Sequence[int], stride: Sequence[int]) -> Box:
    """The reference's crop box on a zoom grid from an inclusive native box ``lo..hi`` (SAR voxels).

    Per axis: enlarged by the safety factor about its centre (``//`` floors; a start below 0 is
    shifted to 0, not truncated), scaled by the nominal zoom ``factors``, then at least ``patch``
    and grown to ``patch + k * stride``; anchored at its start, all growth on the far side.
    """
    start, size = [], []
    for a, b, f, s, p, m in zip(lo, hi, factors, safety_factor, patch, stride):
        length = (b - a) * s
        native_first = int(round(max(a - (length - (b - a)) // 2, 0)))
        native_last = int(native_first + length)
        first = int(round(max(native_first * f, 0)))
        last = int(first + (native_last - native_first) * f)
        n = max(last - first, p)
        n += (m - (n - p) % m) % m
        start.append(first)
        size.append(int(n))
    return Box(tuple(start), tuple(size))


def crop_for(cord: Cord | None, native: Grid, spec: ModelSpec) -> tuple[Box, Grid]:
    """The segmenter's crop box and the working grid it is on, by ``spec.semantics.box``.

    No cord: the whole field of view, rounded up to whole windows."""
    if spec.semantics.box is BoxRule.CORD_PIECES:
        return box_for_mask(None if cord is None else cord.mask, native if cord is None else cord.grid, native,
                            spec.spacing_mm, spec.safety_factor, spec.patch_size, spec.stride)
    zoom = zoom_grid(native, spec.spacing_mm)
    if cord is None:
        return reference_box((0, 0, 0), zoom.reoriented.shape, zoom.factors, (1, 1, 1), spec.patch_size, spec.stride), zoom.grid
    same = cord.grid.shape == zoom.reoriented.shape and np.allclose(cord.grid.affine, zoom.reoriented.affine)
    mask = cord.mask if same else resample(
        cord.mask.astype(np.float32), cord.grid, zoom.reoriented, order=1, fill=0.0) >= 0.5
    lo, hi = first_component_bounds(mask)
    return reference_box(lo, hi, zoom.factors, spec.safety_factor, spec.patch_size, spec.stride), zoom.grid
