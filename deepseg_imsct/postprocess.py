"""Post-processing of one class's probability map on the T2w's native grid.

Order (the paper's, section 2.5): binarize (probability >= threshold), fill holes in 3D,
remove connected components smaller than a physical volume in cm³. Volumes are converted to
voxels with the native voxel volume, so results do not depend on the voxel size. A model may ask
for the reference's order (remove small, in native voxels, before filling holes, whose
background is 26-connected): :class:`ClassPost` carries it from the model's semantics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .primitives import MM3_PER_CM3, connected_components


@dataclass(frozen=True)
class ClassPost:
    """Post-processing of one class: ``threshold`` (probability in [0, 1]), ``fill_holes``,
    ``min_volume_cm3`` (components strictly smaller are removed; 0 keeps everything), or
    ``min_voxels`` instead when above 0 (voxels of the native grid, sct_deepseg's ``vox`` unit).

    Values are checked where users give them (:func:`params.configure`), not here.
    """

    threshold: float = 0.5
    fill_holes: bool = True
    min_volume_cm3: float = 0.0
    min_voxels: int = 0  # when set: the smallest component in native voxels (instead of min_volume_cm3)
    remove_first: bool = False  # remove small components before filling holes (the reference's order)
    hole_connectivity: int = 1  # background connectivity of hole filling (1: 6-, 3: 26-connected)

    def min_volume_mm3(self, voxel_volume_mm3: float) -> float:
        """The smallest component kept, in mm³ of a grid with this voxel volume."""
        return self.min_voxels * voxel_volume_mm3 if self.min_voxels else self.min_volume_cm3 * MM3_PER_CM3


@dataclass(frozen=True)
class PostprocessConfig:
    """Per-class post-processing ({class: :class:`ClassPost`}), plus ``soft``: write
    probabilities instead of masks."""

    classes: Mapping[str, ClassPost]
    soft: bool = False

    def as_dict(self) -> dict:
        return {"soft": self.soft, "classes": {c: {k: v for k, v in vars(p).items() if k != "min_voxels" or v}
                                               for c, p in self.classes.items()}}


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


def remove_small(mask: np.ndarray, min_volume_mm3: float, voxel_volume_mm3: float) -> np.ndarray:
    """Drop 18-connected components whose volume is strictly below ``min_volume_mm3``
    (a count of voxels is :meth:`ClassPost.min_volume_mm3`'s concern)."""
    if min_volume_mm3 <= 0 or not mask.any():
        return mask
    labels, _ = connected_components(mask, connectivity=2)
    keep = np.bincount(labels.ravel()) * voxel_volume_mm3 >= min_volume_mm3 * (1 - 1e-9)
    keep[0] = False
    return keep[labels]


def postprocess(prob: np.ndarray, post: ClassPost, voxel_volume_mm3: float) -> np.ndarray:
    """One class: probability map -> uint8 mask (binarize, fill holes, remove small; or binarize,
    remove small, fill holes with ``post.remove_first``)."""
    mask = binarize(prob, post.threshold)
    if post.remove_first:
        mask = remove_small(mask, post.min_volume_mm3(voxel_volume_mm3), voxel_volume_mm3)
    if post.fill_holes:
        mask = fill_holes(mask, post.hole_connectivity)
    if not post.remove_first:
        mask = remove_small(mask, post.min_volume_mm3(voxel_volume_mm3), voxel_volume_mm3)
    return mask.astype(np.uint8)


def assign_exclusive(probs: Sequence[np.ndarray], thresholds: Sequence[float], region: np.ndarray) -> list[np.ndarray]:
    """Split ``region`` (bool) among exclusive classes: each voxel goes to the class whose
    probability, divided by the class's threshold, is highest (with equal thresholds: the most
    probable class). A class's threshold thus weighs it against the others: lower, the class
    takes more of the lesion; it never adds voxels outside ``region``. Returns one bool mask per
    class, disjoint, whose union is ``region``."""
    score = np.stack([p / max(float(t), 1e-6) for p, t in zip(probs, thresholds)])
    best = np.argmax(score, axis=0)
    return [region & (best == k) for k in range(len(probs))]


def postprocess_exclusive(probs: Mapping[str, np.ndarray], config: Mapping[str, ClassPost], union: str,
                          voxel_volume_mm3: float) -> dict[str, np.ndarray]:
    """Masks (uint8) of a model with exclusive classes, whose ``union`` map is 1 - p(background).

    1. The union: binarized at its threshold, holes filled, components below its minimum volume
       removed (as :func:`postprocess`): where the lesion is.
    2. Its voxels split among the other classes (:func:`assign_exclusive`; their thresholds weigh
       them against each other: a softmax spreads an uncertain voxel over several classes, so a
       class probability need not reach 0.5 where the union is sure).
    3. Per class: components below the class's minimum volume removed.
    4. The union is rewritten as the union of the final class masks: exactly their union.
    """
    others = [c for c in probs if c != union]
    region = postprocess(probs[union], config[union], voxel_volume_mm3).astype(bool)
    split = assign_exclusive([probs[c] for c in others], [config[c].threshold for c in others], region)
    masks = {c: remove_small(m, config[c].min_volume_mm3(voxel_volume_mm3), voxel_volume_mm3) for c, m in zip(others, split)}
    out = {c: m.astype(np.uint8) for c, m in masks.items()}
    out[union] = np.logical_or.reduce(list(masks.values())).astype(np.uint8)
    return out
