"""Back to native: the stages' outputs (on working grids) resampled onto the T2w's own grid.

Only the part of the native grid that can hold a result is computed: the footprint of the source
grid, or of the box around the voxels that can reach a threshold (:func:`reach_box`). Arrays are
(*C, X, Y, Z) in each grid's voxel order; boxes are ``(start, size)`` in voxels.
"""
from __future__ import annotations

import numpy as np

from .grid import Grid, Triple, bounding_box, footprint, resample, uncrop
from .registry import ModelSpec
from .semantics import NATIVE, GridKind

REACH_MARGIN = 1e-4  # probability: float32 trilinear interpolation of values in [0, 1] errs by a few 1e-6 at most


def reach_box(values: np.ndarray, threshold: float) -> tuple[Triple, Triple]:
    """The box ``(start, size)`` of ``values`` voxels outside which trilinear interpolation stays
    below ``threshold``; size (0, 0, 0) when no voxel comes near it.

    An interpolated value is a convex combination of the 2x2x2 source voxels around it, so it is
    below the threshold wherever all of them are: the box is the bounding box of the voxels at or
    above ``threshold - REACH_MARGIN`` (far more than float32 rounding), grown by one voxel.
    """
    return bounding_box(values >= np.float32(threshold - REACH_MARGIN), margin=1)


def native_block(
    values: np.ndarray, src: Grid, native: Grid, order: int = 1, box: tuple[Triple, Triple] | None = None
) -> tuple[np.ndarray, Triple]:
    """Resample (*C, *src.shape) ``values`` onto the part of ``native`` that ``src`` covers, or
    only the part around ``box`` (``(start, size)`` in ``src`` voxels, e.g. :func:`reach_box`).

    Returns the block and its start on ``native``; everything outside it would be 0 (with
    ``box``: below the threshold the box was made for).
    """
    if box is not None and 0 in box[1]:
        return np.zeros(values.shape[:-3] + (0, 0, 0), np.float32 if order == 1 else values.dtype), (0, 0, 0)
    start, size = footprint(src if box is None else src.subgrid(*box), native)
    return resample(values, src, native.subgrid(start, size), order=order, fill=0), start


def native_values(values: np.ndarray, crop_grid: Grid, native: Grid, spec: ModelSpec | None = None,
                  threshold: float | None = None) -> tuple[np.ndarray, Triple]:
    """One class's probabilities on ``crop_grid`` back on ``native``: the block that can hold a
    result and its start (:func:`native_block`; with ``threshold``, only around the voxels that
    can reach it). For a ``spec`` whose semantics' grid is 'zoom' (``crop_grid`` a crop of its
    zoom grid), the whole native grid: the crop put back into the zoom grid with zeros and zoomed
    back with the prediction order. Values at or below the noise floor become 0.
    """
    semantics = NATIVE if spec is None else spec.semantics
    if semantics.grid is GridKind.ZOOM:
        from .zoomgrid import unzoom, zoom_grid

        block, start = unzoom(values, zoom_grid(native, spec.spacing_mm), crop_grid, semantics.prediction_order), (0, 0, 0)
    else:
        box = None if threshold is None else reach_box(values, threshold)
        block, start = native_block(values, crop_grid, native, order=semantics.prediction_order, box=box)
    if semantics.noise_floor > 0:
        block[block <= np.float32(semantics.noise_floor)] = 0.0
    return block, start


def localization_masks(cord, crop_grid: Grid, native: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1's cord (a :class:`localize.Cord`; None: no cord) and crop box as boolean masks on
    ``native`` (Fortran order, as NIfTI stores them).

    The cord is resampled trilinearly and kept where it reaches 0.5 (computed only around it,
    see :func:`reach_box`); the box by nearest neighbour.
    """
    cord_native = np.zeros(native.shape, bool, order="F")
    if cord is not None:
        values = cord.mask.astype(np.float32)
        part, start = native_block(values, cord.grid, native, box=reach_box(values, 0.5))
        cord_native = uncrop(part >= 0.5, start, native.shape, order="F")
    part, start = native_block(np.ones(crop_grid.shape, bool), crop_grid, native, order=0)
    return cord_native, uncrop(part, start, native.shape, order="F")
