"""Segmentation metrics of the paper's Table 3, on numpy masks (numpy and scikit-image only).

Every function takes boolean masks on one grid; volumes are in mm³, counts in voxels.
Per case and per structure (``P`` = predicted mask, ``G`` = ground-truth mask):

- **Dice** = 2|P∩G| / (|P|+|G|). Both empty → NaN (excluded from the mean). G empty and P not
  empty → 0, as in the paper (a false positive on an absent structure scores 0); P empty and G
  not empty → 0.
- **Objects** are connected components with 18-connectivity (face or edge neighbours, not
  corner-only; ``skimage.measure.label(connectivity=2)``), labelled separately in P and G.
- **Overlap threshold**: an object "overlaps" when it shares at least ``overlap_mm3`` (default
  6 mm³) with the other mask. In voxels: ``ceil(overlap_mm3 / voxel_mm3)``, at least 1, so
  ``n_voxels * voxel_mm3 >= overlap_mm3`` exactly ("at least 6 mm³"). The reference framework
  rounds instead (``round(6 / voxel_mm3)``), which accepts 5 mm³ on 5 mm³ voxels.
- **TPR** (true positive detection rate) = GT objects that overlap P / GT objects; NaN without
  GT objects. Two predicted objects on one GT object count once.
- **FDR** (false detection rate) = predicted objects that do not overlap G / predicted objects,
  i.e. FP / (TP + FP) with TP and FP both counted on the predicted side; NaN without predicted
  objects. ``fdr_ivadomed`` is the reference's mixed ratio FP_pred / (TP_gt + FP_pred), kept
  for comparison with the paper (they differ when objects split or merge).
- **Precision** = |P∩G| / |P| (NaN if P empty). **Recall** = |P∩G| / |G| (NaN if G empty).
- **RVD** = (vol_G − vol_P) / vol_G: negative = over-segmentation. **AVD** = |RVD|. Both NaN
  when G is empty.
- **Crop box**: ``box_contains`` is 1 when every lesion voxel is inside the box, else 0; NaN
  when there is no lesion. ``fraction_inside`` = |box∩M| / |M| (NaN if M is empty).
- **Aggregation** (``summarize``): mean and population standard deviation (ddof=0) over the
  finite values only, with n = number of finite values.

Every ratio is a fraction (0-1); the report multiplies by 100.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from .primitives import connected_components

STRUCTURES: tuple[str, ...] = ("whole-tumor", "tumor", "cavity", "edema")
CORD = "cord"
TABLE_METRICS: tuple[str, ...] = ("dice", "tpr", "fdr", "precision", "recall", "avd", "rvd")
DEFAULT_OVERLAP_MM3 = 6.0
_EPS = 1e-6  # relative slack so that 6 mm³ / 0.75 mm³ = 8.000000000000002 gives 8 voxels


@dataclass(frozen=True)
class Detection:
    """Object counts of one structure in one case (objects are 18-connected components)."""

    gt_objects: int
    pred_objects: int
    tp_gt_objects: int  # GT objects overlapping P by >= threshold
    tp_pred_objects: int  # predicted objects overlapping G by >= threshold
    fp_pred_objects: int  # predicted objects overlapping G by < threshold


@dataclass(frozen=True)
class SegMetrics:
    """All metrics of one structure in one case: ratios as fractions, volumes in mm³."""

    dice: float
    tpr: float
    fdr: float
    fdr_ivadomed: float
    precision: float
    recall: float
    avd: float
    rvd: float
    gt_volume_mm3: float
    pred_volume_mm3: float
    gt_objects: int
    pred_objects: int
    tp_gt_objects: int
    tp_pred_objects: int
    fp_pred_objects: int
    overlap_voxels: int


@dataclass(frozen=True)
class Summary:
    """Mean and population std (ddof=0) over the n finite values."""

    mean: float
    std: float
    n: int


def voxel_volume_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm³: |det| of the affine's 3×3 part."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def overlap_voxels(overlap_mm3: float, voxel_mm3: float) -> int:
    """Smallest voxel count whose volume is >= ``overlap_mm3`` (mm³); at least 1 voxel."""
    if voxel_mm3 <= 0:
        raise ValueError(f"voxel volume must be positive, got {voxel_mm3} mm³")
    if overlap_mm3 < 0:
        raise ValueError(f"overlap threshold must be >= 0 mm³, got {overlap_mm3}")
    return max(1, math.ceil(overlap_mm3 / voxel_mm3 * (1 - _EPS)))


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient; NaN when both masks are empty, 0 when only one is."""
    inter = np.count_nonzero(pred & gt)
    return _ratio(2 * inter, np.count_nonzero(pred) + np.count_nonzero(gt))


def precision(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |P|; NaN when P is empty."""
    return _ratio(np.count_nonzero(pred & gt), np.count_nonzero(pred))


def recall(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |G|; NaN when G is empty."""
    return _ratio(np.count_nonzero(pred & gt), np.count_nonzero(gt))


def relative_volume_difference(pred: np.ndarray, gt: np.ndarray) -> float:
    """(vol_G − vol_P) / vol_G (negative = over-segmentation); NaN when G is empty."""
    n_gt = np.count_nonzero(gt)
    return _ratio(n_gt - np.count_nonzero(pred), n_gt)


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 18-connected components (3D; full connectivity-2 in any dimension)."""
    return connected_components(mask, connectivity=min(2, mask.ndim))


def _objects_overlapping(labels: np.ndarray, count: int, other: np.ndarray, min_vox: int) -> int:
    """Number of labelled objects sharing at least ``min_vox`` voxels with ``other``."""
    if count == 0:
        return 0
    per_object = np.bincount(labels[other], minlength=count + 1)[1:]
    return int(np.count_nonzero(per_object >= min_vox))


def detect(pred: np.ndarray, gt: np.ndarray, min_overlap_voxels: int) -> Detection:
    """Count GT and predicted objects and those overlapping the other mask by >= threshold."""
    gt_labels, n_gt = label_objects(gt)
    pred_labels, n_pred = label_objects(pred)
    tp_gt = _objects_overlapping(gt_labels, n_gt, pred, min_overlap_voxels)
    tp_pred = _objects_overlapping(pred_labels, n_pred, gt, min_overlap_voxels)
    return Detection(n_gt, n_pred, tp_gt, tp_pred, n_pred - tp_pred)


def segmentation_metrics(
    pred: np.ndarray, gt: np.ndarray, voxel_mm3: float, overlap_mm3: float = DEFAULT_OVERLAP_MM3
) -> SegMetrics:
    """Every Table 3 metric for one structure; ``voxel_mm3`` is one voxel's volume in mm³."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs ground truth {gt.shape}")
    min_vox = overlap_voxels(overlap_mm3, voxel_mm3)
    det = detect(pred, gt, min_vox)
    rvd = relative_volume_difference(pred, gt)
    return SegMetrics(
        dice=dice(pred, gt),
        tpr=_ratio(det.tp_gt_objects, det.gt_objects),
        fdr=_ratio(det.fp_pred_objects, det.pred_objects),
        fdr_ivadomed=_ratio(det.fp_pred_objects, det.tp_gt_objects + det.fp_pred_objects),
        precision=precision(pred, gt),
        recall=recall(pred, gt),
        avd=abs(rvd),
        rvd=rvd,
        gt_volume_mm3=np.count_nonzero(gt) * voxel_mm3,
        pred_volume_mm3=np.count_nonzero(pred) * voxel_mm3,
        gt_objects=det.gt_objects,
        pred_objects=det.pred_objects,
        tp_gt_objects=det.tp_gt_objects,
        tp_pred_objects=det.tp_pred_objects,
        fp_pred_objects=det.fp_pred_objects,
        overlap_voxels=min_vox,
    )


def box_contains(box: np.ndarray, lesion: np.ndarray) -> float:
    """1.0 if every lesion voxel lies in the box, 0.0 otherwise, NaN without lesion voxels."""
    box = np.asarray(box, dtype=bool)
    lesion = np.asarray(lesion, dtype=bool)
    if not lesion.any():
        return math.nan
    return float(not np.any(lesion & ~box))


def fraction_inside(box: np.ndarray, mask: np.ndarray) -> float:
    """|box∩mask| / |mask| (fraction of the mask's voxels inside the box); NaN if empty."""
    mask = np.asarray(mask, dtype=bool)
    return _ratio(np.count_nonzero(mask & np.asarray(box, dtype=bool)), np.count_nonzero(mask))


def summarize(values: Iterable[float]) -> Summary:
    """Mean ± population std (ddof=0) of the finite values; NaN mean/std when there are none."""
    arr = np.asarray([float(v) for v in values], dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(arr.mean()), float(arr.std(ddof=0)), int(arr.size))


def _as_float(value: object) -> float:
    """A row value as float; None and empty CSV cells become NaN."""
    return math.nan if value is None or value == "" else float(value)  # type: ignore[arg-type]


def summarize_rows(
    rows: Sequence[Mapping[str, object]], classes: Sequence[str], metrics: Sequence[str]
) -> dict[tuple[str, str], Summary]:
    """Summary per (class, metric) over rows carrying ``class`` and the metric keys."""
    table: dict[tuple[str, str], Summary] = {}
    for cls in classes:
        selected = [row for row in rows if row["class"] == cls]
        for metric in metrics:
            values = [row.get(metric, math.nan) for row in selected]
            table[(cls, metric)] = summarize(_as_float(v) for v in values)
    return table
