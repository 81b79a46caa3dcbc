"""Post-processing of one class's probability map on the T2w's native grid.

Order (the paper's, section 2.5): binarize (probability >= threshold), fill holes in 3D,
remove connected components smaller than a physical volume in cm³. Volumes are converted to
voxels with the native voxel volume, so results do not depend on the voxel size. A model may ask
for the reference's order (remove small, in native voxels, before filling holes, whose
background is 26-connected): :class:`ClassPost` carries it from the model's semantics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .primitives import MM3_PER_CM3, connected_components


@dataclass(frozen=True)
class ClassPost:
    """Post-processing of one class: ``threshold`` (probability in [0, 1]), ``fill_holes``,
    ``min_volume_cm3`` (components strictly smaller are removed; 0 keeps everything).

    Values are checked where users give them (:func:`params.configure`), not here.
    """

    threshold: float = 0.5
    fill_holes: bool = True
    min_volume_cm3: float = 0.0
    min_voxels: int = 0  # also removed: components of fewer native voxels
    remove_first: bool = False  # remove small components before filling holes
    hole_connectivity: int = 1  # background connectivity of hole filling (1: 6-, 3: 26-connected)


@dataclass(frozen=True)
class PostprocessConfig:
    """Per-class post-processing ({class: :class:`ClassPost`}), plus ``soft``: write
    probabilities instead of masks."""

    classes: Mapping[str, ClassPost]
    soft: bool = False

    def as_dict(self) -> dict:
        return {"soft": self.soft, "classes": {c: vars(p).copy() for c, p in self.classes.items()}}


def binarize(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels with probability >= ``threshold`` (bool)."""
    return prob >= np.float32(threshold)


def fill_holes(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Fill 3D holes: background not connected to the array border becomes foreground
    (``connectivity`` in orthogonal hops: 1 faces, 3 corners, as ``binary_fill_holes`` with a
    3x3x3 structure)."""
    if mask.size == 0:
        return mask.copy()
    labels, n = connected_components(~mask, connectivity=connectivity)
    outside = np.zeros(n + 1, dtype=bool)  # per background component: does it touch the border?
    for axis in range(mask.ndim):
        for end in (0, -1):
            outside[np.take(labels, end, axis=axis)] = True
    outside[0] = False  # label 0 is the mask itself
    return ~outside[labels]


def remove_small(mask: np.ndarray, min_volume_mm3: float, voxel_volume_mm3: float, min_voxels: int = 0) -> np.ndarray:
    """Drop 18-connected components whose volume is strictly below ``min_volume_mm3`` or that
    have fewer than ``min_voxels`` voxels."""
    if (min_volume_mm3 <= 0 and min_voxels <= 0) or not mask.any():
        return mask
    labels, _ = connected_components(mask, connectivity=2)
    counts = np.bincount(labels.ravel())
    keep = (counts * voxel_volume_mm3 >= min_volume_mm3 * (1 - 1e-9)) & (counts >= min_voxels)
    keep[0] = False
    return keep[labels]


def postprocess(prob: np.ndarray, post: ClassPost, voxel_volume_mm3: float) -> np.ndarray:
    """One class: probability map -> uint8 mask (binarize, fill holes, remove small; or binarize,
    remove small, fill holes with ``post.remove_first``)."""
    mask = binarize(prob, post.threshold)
    if post.remove_first:
        mask = remove_small(mask, post.min_volume_cm3 * MM3_PER_CM3, voxel_volume_mm3, post.min_voxels)
    if post.fill_holes:
        mask = fill_holes(mask, post.hole_connectivity)
    if not post.remove_first:
        mask = remove_small(mask, post.min_volume_cm3 * MM3_PER_CM3, voxel_volume_mm3, post.min_voxels)
    return mask.astype(np.uint8)


def postprocess_exclusive(probs: Mapping[str, np.ndarray], config: Mapping[str, ClassPost], union: str,
                          voxel_volume_mm3: float) -> dict[str, np.ndarray]:
    """Masks (uint8) of a model with exclusive classes, whose ``union`` map is 1 - p(background).

    1. The union: binarized at its threshold, holes filled, components below its minimum volume
       removed (as :func:`postprocess`): where the lesion is.
    2. Each of its voxels goes to its most probable other class, if that probability reaches the
       class's threshold.
    3. Per class: holes filled with union voxels no class took (when ``fill_holes``), then
       components below the class's minimum volume removed.
    4. The union is rewritten as the union of the final class masks: exactly their union.
    """
    others = [c for c in probs if c != union]
    region = postprocess(probs[union], config[union], voxel_volume_mm3).astype(bool)
    best = np.argmax(np.stack([probs[c] for c in others]), axis=0)
    masks = {c: region & (best == k) & binarize(probs[c], config[c].threshold) for k, c in enumerate(others)}
    free = region & ~np.logical_or.reduce(list(masks.values()))
    for c in others:
        if config[c].fill_holes:
            masks[c] = masks[c] | (fill_holes(masks[c]) & free)
            free &= ~masks[c]
        masks[c] = remove_small(masks[c], config[c].min_volume_cm3 * MM3_PER_CM3, voxel_volume_mm3)
    out = {c: m.astype(np.uint8) for c, m in masks.items()}
    out[union] = np.logical_or.reduce(list(masks.values())).astype(np.uint8)
    return out
