"""Quality-control pictures: RGB arrays (uint8) drawn with numpy only, written as PNG.

Volumes are shown in the RAS orientation nearest to their grid (axes permuted and flipped only,
:func:`nibabel.orientations.io_orientation`): sagittal views with superior up and anterior on the
left, axial views in the radiological convention (the subject's right on the left, anterior up).
Pixels are square, :data:`SAGITTAL_PX_MM` / :data:`AXIAL_PX_MM` mm wide (nearest neighbour), so
anisotropic voxels keep their physical shape; smaller where a view would otherwise be less than
:data:`MIN_TILE_PX` pixels high (a small field of view). Masks are drawn as one-pixel outlines in their
colour (:data:`outputs.COLOURS`), later keys of :data:`outputs.DRAW_ORDER` on top.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np

from .outputs import COLOURS, CORD, CROPBOX, draw_rank

SAGITTAL_PX_MM, AXIAL_PX_MM = 0.8, 0.25
MIN_TILE_PX = 200  # pixels: the height of a view at least
MARGIN_MM, AXIAL_MARGIN_MM = 5.0, 10.0  # around the crop box in sagittal views, around the lesion in axial ones
SAGITTAL_SLICES, AXIAL_CUTS = 5, 3
GAP = 2  # pixels between tiles
GAP_VALUE = 40


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` with its axes permuted/flipped to the nearest RAS orientation, and its voxel size (mm)."""
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_zooms = np.empty(3)
    ras_zooms[ornt[:, 0].astype(int)] = zooms
    return nib.orientations.apply_orientation(data, ornt), ras_zooms


def grey(image: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """Float image -> uint8 grey, window from the 1st to the 99th percentile (of ``region``)."""
    values = image[region] if region is not None and region.any() else image
    low, high = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image, dtype=float)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def pixel_mm(height_mm: float, px_mm: float) -> float:
    """The pixel size of a view ``height_mm`` high: ``px_mm``, or less to make it :data:`MIN_TILE_PX` high."""
    return min(px_mm, height_mm / MIN_TILE_PX)


def resize_nearest(plane: np.ndarray, spacing: tuple[float, float], px_mm: float) -> np.ndarray:
    """A 2D plane (rows, cols) with ``spacing`` mm resampled to square pixels of ``px_mm`` (nearest)."""
    rows = np.minimum((np.arange(max(1, round(plane.shape[0] * spacing[0] / px_mm))) + 0.5) * px_mm / spacing[0], plane.shape[0] - 1)
    cols = np.minimum((np.arange(max(1, round(plane.shape[1] * spacing[1] / px_mm))) + 0.5) * px_mm / spacing[1], plane.shape[1] - 1)
    return plane[rows.astype(int)][:, cols.astype(int)]


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D mask with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay(base: np.ndarray, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Grey uint8 (H, W) + {output key: 2D mask} -> RGB uint8 (H, W, 3), outlines in draw order."""
    rgb = np.repeat(base[..., None], 3, axis=2)
    for key in sorted(masks, key=draw_rank):
        rgb[outline(masks[key])] = (np.array(COLOURS[key]) * 255).astype(np.uint8)
    return rgb


def sagittal_plane(volume: np.ndarray, x: int) -> np.ndarray:
    """RAS volume -> sagittal plane (rows: superior to inferior, cols: anterior to posterior)."""
    return volume[x].T[::-1, ::-1]


def axial_plane(volume: np.ndarray, z: int) -> np.ndarray:
    """RAS volume -> axial plane (rows: anterior to posterior, cols: the subject's right to left)."""
    return volume[::-1, :, z].T[::-1]


def tile(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """RGB tiles (one list per row, same sizes within the mosaic) -> one RGB mosaic with gaps."""
    height, width = rows[0][0].shape[:2]
    out = np.full((len(rows) * (height + GAP) - GAP, len(rows[0]) * (width + GAP) - GAP, 3), GAP_VALUE, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            out[r * (height + GAP): r * (height + GAP) + height, c * (width + GAP): c * (width + GAP) + width] = img
    return out


def _span(mask: np.ndarray, axis: int, margin: int, n: int) -> slice:
    """Indices along ``axis`` where ``mask`` has voxels, widened by ``margin``; all if empty."""
    hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
    return slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, n)) if hits.size else slice(0, n)


def _centre(mask: np.ndarray, axis: int, default: int) -> int:
    hits = np.argwhere(mask)
    return int(round(hits[:, axis].mean())) if hits.size else default


def sagittal_mosaic(images: Sequence[np.ndarray], masks: Mapping[str, np.ndarray], zooms: np.ndarray, focus: np.ndarray,
                    region: np.ndarray) -> np.ndarray:
    """One row per image (RAS), :data:`SAGITTAL_SLICES` sagittal slices around ``focus``'s centre,
    cropped to ``region`` (e.g. the crop box) plus :data:`MARGIN_MM`, masks outlined."""
    shape = images[0].shape
    x0 = _centre(focus, 0, shape[0] // 2)
    xs = sorted({min(max(x0 + d, 0), shape[0] - 1) for d in range(-(SAGITTAL_SLICES // 2), SAGITTAL_SLICES // 2 + 1)})
    ys = _span(region, 1, int(MARGIN_MM / zooms[1]), shape[1])
    zs = _span(region, 2, int(MARGIN_MM / zooms[2]), shape[2])
    spacing = (zooms[2], zooms[1])
    px = pixel_mm((zs.stop - zs.start) * zooms[2], SAGITTAL_PX_MM)
    rows = []
    for image in images:
        window = image[:, ys, zs]
        base = grey(window, region[:, ys, zs] if region.any() else None)
        rows.append([overlay(resize_nearest(sagittal_plane(base, x), spacing, px),
                             {k: resize_nearest(sagittal_plane(m[:, ys, zs], x), spacing, px) for k, m in masks.items()})
                     for x in xs])
    return tile(rows)


def axial_cuts(images: Sequence[np.ndarray], masks: Mapping[str, np.ndarray], zooms: np.ndarray, lesion: np.ndarray) -> np.ndarray | None:
    """One row per image (RAS): :data:`AXIAL_CUTS` axial cuts through ``lesion`` (at a quarter,
    half and three quarters of its S-I span), around it plus :data:`AXIAL_MARGIN_MM`; None without a lesion."""
    hits = np.flatnonzero(lesion.any(axis=(0, 1)))
    if not hits.size:
        return None
    zs = sorted({int(round(hits[0] + f * (hits[-1] - hits[0]))) for f in np.linspace(0.25, 0.75, AXIAL_CUTS)})
    xs = _span(lesion, 0, int(AXIAL_MARGIN_MM / zooms[0]), lesion.shape[0])
    ys = _span(lesion, 1, int(AXIAL_MARGIN_MM / zooms[1]), lesion.shape[1])
    spacing = (zooms[1], zooms[0])
    px = pixel_mm((ys.stop - ys.start) * zooms[1], AXIAL_PX_MM)
    rows = []
    for image in images:
        base = grey(image[xs, ys], None)
        rows.append([overlay(resize_nearest(axial_plane(base, z), spacing, px),
                             {k: resize_nearest(axial_plane(m[xs, ys], z), spacing, px) for k, m in masks.items()})
                     for z in zs])
    return tile(rows)


def cord_view(t2: np.ndarray, cord: np.ndarray, box: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """The whole field of view's sagittal slice through the cord's centre: the localizer's cord
    and the crop box outlined."""
    x = _centre(cord, 0, t2.shape[0] // 2)
    spacing = (zooms[2], zooms[1])
    px = pixel_mm(t2.shape[2] * zooms[2], SAGITTAL_PX_MM)
    return overlay(resize_nearest(sagittal_plane(grey(t2), x), spacing, px),
                   {CORD: resize_nearest(sagittal_plane(cord, x), spacing, px),
                    CROPBOX: resize_nearest(sagittal_plane(box, x), spacing, px)})


def png_bytes(rgb: np.ndarray) -> bytes:
    """An RGB uint8 array as PNG file content (imageio, installed with scikit-image)."""
    import imageio.v3 as iio

    buffer = io.BytesIO()
    iio.imwrite(buffer, rgb, extension=".png")
    return buffer.getvalue()
