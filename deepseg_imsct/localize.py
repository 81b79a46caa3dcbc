"""Stage 1: the localizer finds the spinal cord on the T2w; its extent becomes stage 2's crop box.

Steps: :func:`localizer_block` (the model's single input block on the working grid) ->
:func:`on_block` (a scan resampled onto it) -> :func:`find_cord` (the model, then
:func:`cord_components`) -> :func:`localize` (with the contrast-order check of
:mod:`contrast_order`) -> :func:`kept_cord` (the :class:`Cord` the crop box is taken from; the box
itself: :func:`cropbox.crop_for`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .contrast_order import SWAP_MARGIN, check_order, csf_evidence
from .grid import Grid, resample, working_grid
from .io import Volume
from .primitives import MM3_PER_CM3, connected_components, zscore, zscore_window
from .registry import ModelSpec
from .semantics import BlockRounding, GridKind, LocalizerKeep, NormScope
from .zoomgrid import unzoom, zoom_grid, zoom_onto

if TYPE_CHECKING:
    from .inference import OnnxModel  # the localizer: any callable (B, 1, *patch) -> (B, 1, *patch) with a .spec

log = logging.getLogger(__name__)


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
