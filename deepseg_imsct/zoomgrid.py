"""Model grids made by zooming the reoriented array (the reference framework's resampling).

A zoom grid is the native grid reoriented to 'SAR' (axes permuted and flipped only) and zoomed
by the nominal factors ``zoom / spacing`` with :func:`scipy.ndimage.zoom`: ``round(n * f)``
voxels per axis (Python rounding, ties to even), corner-aligned (output voxel ``i`` samples input
voxel ``i * (n - 1) / (m - 1)``), so the effective spacing is close to, not exactly, the
model's. Resampling onto it is a spline of the given order (2: quadratic, with prefilter, as the
reference does for images; 1: linear, as for predictions). :func:`zoom_grid` describes it as a
:class:`Grid` (an affine like any other), so crops, boxes and QC outputs go through the usual
code; only the voxel values come from scipy.
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .grid import Grid, crop, reoriented_grid

AXES = "SAR"


@dataclass(frozen=True)
class Zoom:
    """A zoom of ``native``: its reoriented grid, the nominal factors and the zoomed grid."""

    native: Grid
    reoriented: Grid
    ornt: np.ndarray  # nibabel orientation from the native array to the reoriented one
    factors: tuple[float, float, float]  # nominal: reoriented zooms (mm) / model spacing (mm)
    grid: Grid


def zoom_grid(native: Grid, spacing_mm: tuple[float, float, float]) -> Zoom:
    """The zoom of ``native`` to ``spacing_mm`` (S-I, A-P, R-L), as :func:`scipy.ndimage.zoom`
    lays it out."""
    reo, ornt = reoriented_grid(native, AXES)
    factors = tuple(float(z) / float(s) for z, s in zip(reo.zooms, spacing_mm))
    shape = tuple(int(round(n * f)) for n, f in zip(reo.shape, factors))
    step = [(n - 1) / (m - 1) if m > 1 else 1.0 for n, m in zip(reo.shape, shape)]
    return Zoom(native, reo, ornt, factors, Grid(shape, reo.affine @ np.diag([*step, 1.0])))


def reorient(data: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``data`` (3D) with the axes permuted/flipped by ``ornt`` (a view where possible)."""
    return nib.orientations.apply_orientation(data, ornt)


def zoom_values(data: np.ndarray, zoom: Zoom, order: int) -> np.ndarray:
    """Native-order 3D ``data`` on ``zoom.grid``: reoriented, cast to float32 as the reference
    reads images (``get_fdata(dtype=float32)``), zoomed by the nominal factors, float32."""
    from scipy import ndimage

    values = np.ascontiguousarray(reorient(data, zoom.ornt), dtype=np.float32)
    out = ndimage.zoom(values, zoom.factors, order=order)
    assert out.shape == zoom.grid.shape, (out.shape, zoom.grid.shape)
    return out.astype(np.float32, copy=False)


def zoom_onto(data: np.ndarray, zoom: Zoom, block: Grid, order: int, fill: float = 0.0) -> np.ndarray:
    """``data`` zoomed (:func:`zoom_values`) then cropped to ``block``, a subgrid of
    ``zoom.grid`` (``fill`` outside the zoomed volume)."""
    return crop(zoom_values(data, zoom, order), offset(block, zoom.grid), block.shape, fill)


def offset(block: Grid, grid: Grid) -> tuple[int, int, int]:
    """Start of ``block`` in ``grid`` voxels (``block`` must be an integer subgrid of ``grid``)."""
    start = np.linalg.solve(grid.affine, block.affine[:, 3])[:3]
    rounded = np.round(start)
    if not np.allclose(start, rounded, atol=1e-3):
        raise ValueError(f"block at {start} is not a subgrid of the zoom grid")
    return tuple(int(v) for v in rounded)


def unzoom(values: np.ndarray, zoom: Zoom, block: Grid, order: int = 1, native_order: bool = True) -> np.ndarray:
    """Inverse of :func:`zoom_onto` for predictions: ``values`` (``block.shape``) put back into the
    zoomed volume (zeros elsewhere), zoomed by ``original / current`` shape to the reoriented
    native shape exactly, and reoriented to the native voxel order (``native_order``; else left
    on ``zoom.reoriented``). float32."""
    from scipy import ndimage

    from .grid import uncrop

    full = uncrop(np.asarray(values, np.float32), offset(block, zoom.grid), zoom.grid.shape)
    back = np.asarray(zoom.reoriented.shape, float) / np.asarray(zoom.grid.shape, float)
    out = ndimage.zoom(full, tuple(back), order=order).astype(np.float32, copy=False)
    if out.shape != zoom.reoriented.shape:  # round(m * n / m) is n for any grid this package accepts
        out = crop(out, (0, 0, 0), zoom.reoriented.shape)
    if not native_order:
        return out
    inverse = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(tuple(AXES)),
                                              nib.orientations.io_orientation(zoom.native.affine))
    return np.asarray(reorient(out, inverse))
