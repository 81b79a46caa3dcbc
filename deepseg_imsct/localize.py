"""Stage 1: the localizer finds the spinal cord on the T2w; its extent becomes stage 2's crop box.

Steps: :func:`localizer_block` (the model's single input block on the working grid) ->
:func:`on_block` (a scan resampled onto it) -> :func:`find_cord` (the model, then
:func:`cord_components`) -> :func:`localize` (with the contrast-order check) ->
:func:`box_for_mask` (the crop box). All boxes are ``(start, size)`` in voxels of a working grid
(SAR axes, see :mod:`grid`); ``start`` may be negative and ``start + size`` may pass the end: the
crop is zero-padded there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import DeepsegError
from .grid import Grid, apply_affine, resample, working_grid
from .io import Volume
from .primitives import MM3_PER_CM3, connected_components, dilate, zscore, zscore_window
from .registry import ModelSpec
from .semantics import BlockRounding, BoxRule, GridKind, LocalizerKeep, NormScope
from .zoomgrid import unzoom, zoom_grid, zoom_onto

if TYPE_CHECKING:
    from .inference import OnnxModel  # the localizer: any callable (B, 1, *patch) -> (B, 1, *patch) with a .spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    """A box of a working grid: ``start`` and ``size`` in voxels (S-I, A-P, R-L)."""

    start: tuple[int, int, int]
    size: tuple[int, int, int]

    def on(self, grid: Grid) -> Grid:
        return grid.subgrid(self.start, self.size)


@dataclass(frozen=True)
class Cord:
    """The localizer's cord: a boolean ``mask`` on ``grid`` (the localizer's block, or the native
    grid reoriented to SAR for models whose box is taken there)."""

    mask: np.ndarray
    grid: Grid


def centred_block(grid: Grid, size: Sequence[int], rounding: BlockRounding = BlockRounding.FLOOR) -> Grid:
    """The ``size`` block centred on ``grid`` (cropping or zero-padding each axis); its start is
    ``(n - size) / 2`` floored, or rounded half to even (``int(round(...))``, the reference's)."""
    if rounding is BlockRounding.HALF_EVEN:
        start = tuple(int(round((n - s) / 2.0)) for n, s in zip(grid.shape, size))
    else:
        start = tuple(int((n - s) // 2) for n, s in zip(grid.shape, size))
    return grid.subgrid(start, tuple(size))


# A localizer often returns the cord in pieces along its length (a dark segment, a lesion, the
# conus). Pieces of at least this share of the largest one's voxels are kept with it: chosen on 24
# validation phantoms (crop box then holds every lesion; the largest piece alone missed one),
# see docs/results.md.
CORD_PIECE_FRACTION = 0.05


def cord_components(mask: np.ndarray, min_voxels: int = 1, piece_fraction: float = CORD_PIECE_FRACTION) -> np.ndarray | None:
    """The largest 26-connected component of ``mask`` and every other one holding at least
    ``piece_fraction`` of its voxels, or None if the largest has fewer than ``min_voxels``."""
    labels, n = connected_components(mask, connectivity=3)
    if n == 0:
        return None
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    largest = int(counts.max())
    if largest < min_voxels:
        return None
    return (counts >= max(1.0, piece_fraction * largest))[labels]


def model_grid(native: Grid, spec: ModelSpec) -> Grid:
    """The model's working grid for a scan on ``native`` (see ``spec.semantics.grid``)."""
    if spec.semantics.grid is GridKind.ZOOM:
        return zoom_grid(native, spec.spacing_mm).grid
    return working_grid(native, spec.spacing_mm)


def localizer_block(native: Grid, spec: ModelSpec) -> Grid:
    """The localizer's single input block: its patch, centred on the scan's working grid."""
    return centred_block(model_grid(native, spec), spec.patch_size, spec.semantics.block_rounding)


def on_block(volume: Volume, block: Grid, spec: ModelSpec | None = None) -> np.ndarray:
    """``volume`` on ``block``, NaN outside its field of view: trilinear through the affines, or,
    for a ``spec`` whose grid is a zoom of this volume's, zoomed with its image order."""
    if spec is not None and spec.semantics.grid is GridKind.ZOOM:
        return zoom_onto(volume.data, zoom_grid(volume.grid, spec.spacing_mm), block, spec.semantics.image_order, np.nan)
    return resample(volume.data, volume.grid, block, order=1, fill=np.nan)


def localizer_probability(values: np.ndarray, model: OnnxModel) -> np.ndarray:
    """The localizer's probability on its block from a scan on it (:func:`on_block`), normalized
    as its semantics say (window: zero padding included)."""
    if model.spec.semantics.normalization is NormScope.WINDOW:
        return model(zscore_window(np.nan_to_num(values, nan=0.0))[None, None])[0, 0]
    return model(zscore(values)[None, None])[0, 0]  # = model_input([(data, grid)], block)[None]


def find_cord(values: np.ndarray, block: Grid, model: OnnxModel, prob: np.ndarray | None = None) -> np.ndarray | None:
    """The plausible cord on the localizer's ``block`` (:func:`cord_components`), or None.

    ``values``: a scan on ``block`` (:func:`on_block`); ``prob``: the localizer's output on it if
    already computed. Only voxels inside the scan's field of view are plausible: predictions in
    the block's padding (a field of view smaller than the block) are dropped before the
    components are counted.
    """
    spec = model.spec
    prob = (localizer_probability(values, model) if prob is None else prob).copy()
    prob[np.isnan(values)] = 0.0
    post = spec.postprocessing[spec.classes[0]]
    min_voxels = max(1, int(np.ceil(post.min_volume_cm3 * MM3_PER_CM3 / block.voxel_volume_mm3)))
    return cord_components(prob >= post.threshold, min_voxels)


def localize(t2: Volume, t1: Volume, t2_block: np.ndarray, block: Grid, model: OnnxModel) -> Cord | None:
    """Stage 1 on the T2w (``t2_block``: :func:`on_block` of it): the cord (:func:`kept_cord`), or
    None (then: the whole field of view, with a warning). Inputs whose contrasts look swapped
    (:func:`check_order`) are refused."""
    prob = localizer_probability(t2_block, model)
    cord = find_cord(t2_block, block, model, prob)
    t1_block = on_block(t1, block)
    if cord is not None and csf_evidence(cord, t2_block, t1_block)[0] > SWAP_MARGIN:
        return kept_cord(cord, prob, block, t2, model.spec)  # the T2w's own cord confirms the order
    other = find_cord(t1_block, block, model)
    check_order(t2, t1, cord, other, t2_block, t1_block)
    if cord is not None:
        return kept_cord(cord, prob, block, t2, model.spec)
    if other is not None:
        log.warning("no spinal cord found in the T2w %s but one in the T1w %s: the inputs look swapped "
                    "(give the T2w first, or use -c); segmenting the whole field of view", t2.name, t1.name)
    else:
        log.warning("the localizer found no spinal cord in %s: segmenting the whole field of view (slower, less accurate)", t2.name)
    return None


# CSF around the cord is bright on a T2w and dark on a T1w. :func:`csf_evidence` measures it as
# log(median shell / median cord) on each scan; an order is confirmed (or refused as swapped) when
# both scans agree by more than this margin: the shell at least 22 % brighter than the cord on one
# scan and 18 % darker on the other. Measured with the shipped localizer (docs/errors.md): correct
# pairs 0.36 (testing_data) and 0.42 (real sct_testing_data t2/t1w), swapped pairs 0.34 and 0.54,
# cords the localizer finds on a T1w 0.03 and 0.01, phantoms without CSF 0.03 at most.
SWAP_MARGIN = 0.2


def csf_evidence(cord: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """(for the given order, for the swapped order): how far, in log intensity ratio, the shell of
    voxels touching ``cord`` by a face is brighter than the cord on ``first`` and darker on ``second``
    (the smaller of the two), and the reverse. Arrays on the localizer's block, NaN outside the
    fields of view; (0, 0) when there is no shell or no signal."""
    shell = dilate(cord, 1) & ~cord
    logs = []
    for values in (first, second):
        inner, outer = (float(np.nanmedian(v)) if np.isfinite(v).any() else np.nan for v in (values[cord], values[shell]))
        logs.append(np.log(outer / inner) if inner > 0 and outer > 0 else np.nan)
    if not np.all(np.isfinite(logs)):
        return 0.0, 0.0
    return float(min(logs[0], -logs[1])), float(min(-logs[0], logs[1]))


def looks_swapped(cord: np.ndarray, t2_block: np.ndarray, t1_block: np.ndarray) -> bool:
    """True when the CSF around ``cord`` is darker than the cord on the 'T2w' and brighter on the
    'T1w', beyond :data:`SWAP_MARGIN`: the opposite of both contrasts."""
    return csf_evidence(cord, t2_block, t1_block)[1] > SWAP_MARGIN


def check_order(t2: Volume, t1: Volume, cord: np.ndarray | None, other: np.ndarray | None,
                t2_block: np.ndarray, t1_block: np.ndarray) -> None:
    """Refuse inputs whose contrasts look swapped: around the T2w's ``cord``, or around the cord
    found on the T1w (``other``) when the localizer finds more of it there than on the T2w.

    The second condition matters: on the T1w the localizer may pick up a lesion instead of the
    cord, and a cavity (bright on T2w, dark on T1w inside the cord) looks "swapped" by the same
    measure; a cord the localizer finds mostly on the T1w is the sign of a real swap.
    """
    suspects = [cord] if cord is not None else []
    if other is not None and (cord is None or other.sum() > cord.sum()):
        suspects.append(other)
    if any(looks_swapped(mask, t2_block, t1_block) for mask in suspects):
        raise DeepsegError(
            f"the inputs look swapped: the T2w {t2.name} looks like a T1w and the T1w {t1.name} like a T2w "
            "(the CSF around the spinal cord is darker than the cord on the first, brighter on the second): "
            "give the T2w first, or add -c t1 t2 to say that the T1w comes first"
        )


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


def kept_cord(found: np.ndarray, prob: np.ndarray, block: Grid, t2: Volume, spec: ModelSpec) -> Cord | None:
    """The cord the box is taken from. ``found``: :func:`find_cord`'s pieces on ``block``;
    ``prob``: the localizer's output there. With ``localizer_keep`` 'largest' (the reference's),
    ``prob`` goes back to the T2w's native grid (zeros outside the block, the prediction order),
    voxels at or below the noise floor are zeroed, the rest binarized at the class threshold and
    the largest 6-connected component kept ('all': every one), on the native grid reoriented to
    SAR; None when nothing is left."""
    sem = spec.semantics
    if sem.localizer_keep is LocalizerKeep.PIECES:
        return Cord(found, block)
    zoom = zoom_grid(t2.grid, spec.spacing_mm)
    if sem.grid is GridKind.ZOOM:
        values = unzoom(prob, zoom, block, sem.prediction_order, native_order=False)
    else:
        values = resample(prob, block, zoom.reoriented, order=sem.prediction_order, fill=0.0)
    values[values <= sem.noise_floor] = 0.0
    mask = values >= np.float32(spec.postprocessing[spec.classes[0]].threshold)
    if sem.localizer_keep is LocalizerKeep.ALL:
        return Cord(mask, zoom.reoriented) if mask.any() else None
    labels, n = connected_components(mask, connectivity=1)
    if n == 0:
        return None
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return Cord(labels == int(np.argmax(counts)), zoom.reoriented)


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
