"""The files of an evaluation: mask names, cases matched between ground truth and predictions,
and masks read onto one grid (for :mod:`evaluate_cli`).

File names are the outputs' (:func:`outputs.name_pattern`): ``<stem>_seg-<label>.nii[.gz]`` with
the labels of :data:`LABELS`, and ``<stem>_cropbox.nii[.gz]``. Masks are boolean 3D arrays in
file voxel order; affines map voxels to scanner mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from . import evaluate as ev
from .errors import DeepsegError
from .outputs import CROPBOX, name_pattern

LABELS: tuple[str, ...] = (*ev.STRUCTURES, ev.CORD)
_NAME_RE = name_pattern(LABELS)
_AFFINE_ATOL_MM = 1e-3


@dataclass
class Case:
    """The files of one case, keyed by label (``tumor`` … ``cord``, ``cropbox``)."""

    stem: str
    gt: dict[str, Path] = field(default_factory=dict)
    pred: dict[str, Path] = field(default_factory=dict)


def parse_name(name: str) -> Optional[tuple[str, str]]:
    """(stem, label) of a mask file name, or None when the name is not one of ours."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    return match["stem"], match["label"] or CROPBOX


def _is_within(path: Path, folder: Optional[Path]) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def _nested(folder: Path, root: Path) -> Optional[Path]:
    """``folder`` when it lies strictly inside ``root`` (so the search of root skips it)."""
    return folder if root in folder.parents else None


def index_masks(root: Path, skip: Optional[Path] = None) -> dict[str, dict[str, Path]]:
    """{stem: {label: path}} for every mask under ``root`` (recursive), ignoring ``skip``."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(root.rglob("*.nii*")):
        parsed = parse_name(path.name)
        if parsed is None or not path.is_file() or _is_within(path.resolve(), skip):
            continue
        stem, lab = parsed
        previous = found.setdefault(stem, {}).get(lab)
        if previous is not None:
            raise DeepsegError(
                f"{path.name} appears twice: {previous} and {path}; keep one of them (or point "
                "--gt/--pred at a folder holding one copy)"
            )
        found[stem][lab] = path
    return found


def gt_search_root(gt: Path) -> Path:
    """The BIDS labels folder when ``gt`` is a BIDS root, else ``gt`` itself."""
    labels = gt / "derivatives" / "labels"
    return labels if labels.is_dir() else gt


def discover_cases(gt: Path, pred: Path) -> tuple[list[Case], list[str]]:
    """Cases present on both sides (sorted by stem) and the unmatched stems (with side)."""
    for option, folder in (("--gt", gt), ("--pred", pred)):
        if not folder.is_dir():
            raise DeepsegError(f"{option} {folder} is not a folder; pass an existing folder")
    gt_root, pred_root = gt_search_root(gt).resolve(), pred.resolve()
    if gt_root == pred_root:
        raise DeepsegError(f"--gt and --pred are the same folder ({pred}); pass two folders")
    gt_index = index_masks(gt_root, skip=_nested(pred_root, gt_root))
    pred_index = index_masks(pred_root, skip=_nested(gt_root, pred_root))
    stems = sorted(set(gt_index) & set(pred_index))
    if not stems:
        raise DeepsegError(
            f"no case found in both {gt} (ground truth) and {pred} (predictions): expected files "
            "named <stem>_seg-{tumor,edema,cavity,whole-tumor,cord}.nii.gz with the same stem "
            "on both sides"
        )
    unmatched = [f"{s} (ground truth only)" for s in sorted(set(gt_index) - set(pred_index))]
    unmatched += [f"{s} (prediction only)" for s in sorted(set(pred_index) - set(gt_index))]
    return [Case(s, gt_index[s], pred_index[s]) for s in stems], unmatched


def load_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(boolean mask ≥ 0.5, affine) of a 3D NIfTI (a trailing singleton 4th axis is dropped)."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise DeepsegError(f"cannot read {path}: {exc}; check that it is a valid NIfTI") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DeepsegError(f"{path} has shape {data.shape}; expected a 3D mask")
    return data >= 0.5, np.asarray(img.affine, dtype=float)


def load_pair(first: Path, second: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Two masks on the same grid and the voxel volume (mm³); DeepsegError otherwise."""
    a, affine_a = load_mask(first)
    b, affine_b = load_mask(second)
    if a.shape != b.shape or not np.allclose(affine_a, affine_b, atol=_AFFINE_ATOL_MM):
        raise DeepsegError(
            f"{first} (shape {a.shape}) and {second} (shape {b.shape}) are not on the same "
            "voxel grid (shape and affine must match); resample the prediction onto the ground "
            "truth grid"
        )
    return a, b, ev.voxel_volume_mm3(affine_a)
