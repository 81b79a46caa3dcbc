"""Training samples for the two stages, built exactly as the runtime builds model inputs.

A :class:`Case` holds native arrays and their grids (T2w, T1w, labels on the T2w grid). A
sample is made by choosing a destination grid (the runtime's grid, optionally perturbed by a
random rotation / scaling / translation about its centre), resampling each channel from its
native grid onto it with :func:`deepseg_imsct.grid.resample` (NaN outside the field of view),
applying intensity augmentation to the raw values, and z-scoring with
:func:`deepseg_imsct.primitives.zscore`. With augmentation off this *is*
:func:`deepseg_imsct.segment.model_input`. Labels are resampled trilinearly onto the same
grid (soft targets in [0, 1]). Arrays are (C, S, A, R) float32 in working-grid voxels.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from deepseg_imsct.grid import Grid, crop, resample, working_grid
from deepseg_imsct.primitives import zscore
from deepseg_imsct.registry import ModelSpec, parse_entry
from deepseg_imsct.cropbox import Box, box_for_mask
from deepseg_imsct.localize import centred_block

log = logging.getLogger(__name__)

SEGMENTER_CLASSES = ("tumor", "edema", "cavity", "whole-tumor")
LESION_CLASS = "whole-tumor"


@dataclass
class Case:
    """One subject: native T2w/T1w arrays, their grids, labels (uint8) on the T2w grid."""

    name: str
    t2: np.ndarray
    t2_grid: Grid
    labels: dict[str, np.ndarray]
    t1: np.ndarray | None = None
    t1_grid: Grid | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def label_grid(self) -> Grid:
        return self.t2_grid

    def images(self, contrasts: Sequence[str]) -> list[tuple[np.ndarray, Grid]]:
        """(data, grid) per contrast, in model channel order ('t2', 't1')."""
        table = {"t2": (self.t2, self.t2_grid), "t1": (self.t1, self.t1_grid)}
        out = [table[c] for c in contrasts]
        if any(d is None for d, _ in out):
            raise ValueError(f"case {self.name} lacks one of the contrasts {list(contrasts)}")
        return out


# ----------------------------------------------------------------------------- loading / cache
def case_from_images(name: str, t2: nib.Nifti1Image, t1: nib.Nifti1Image | None,
                     labels: Mapping[str, nib.Nifti1Image], meta: Mapping[str, Any] | None = None) -> Case:
    """A case from nibabel images; labels are resampled onto the T2w grid if they are not on it."""
    t2_grid = Grid.of(t2)
    lab = {}
    for key, img in labels.items():
        arr = np.asanyarray(img.dataobj)
        g = Grid.of(img)
        if g.shape != t2_grid.shape or not np.allclose(g.affine, t2_grid.affine, atol=1e-4):
            arr = resample(arr.astype(np.float32), g, t2_grid) >= 0.5
        lab[key] = (np.asarray(arr) > 0).astype(np.uint8)
    return Case(
        name=name,
        t2=np.asarray(t2.get_fdata(dtype=np.float32)),
        t2_grid=t2_grid,
        t1=None if t1 is None else np.asarray(t1.get_fdata(dtype=np.float32)),
        t1_grid=None if t1 is None else Grid.of(t1),
        labels=lab,
        meta=dict(meta or {}),
    )


def save_case(case: Case, path: Path) -> None:
    """Write a case to an ``.npz`` (compressed) so epochs never regenerate phantoms."""
    arrays: dict[str, np.ndarray] = {"t2": case.t2, "t2_affine": case.t2_grid.affine}
    if case.t1 is not None:
        arrays |= {"t1": case.t1, "t1_affine": case.t1_grid.affine}
    arrays |= {f"label_{k}": v for k, v in case.labels.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def load_case(path: Path) -> Case:
    with np.load(path) as z:
        t2 = z["t2"].astype(np.float32)
        t1 = z["t1"].astype(np.float32) if "t1" in z else None
        return Case(
            name=path.stem,
            t2=t2,
            t2_grid=Grid(tuple(t2.shape[:3]), z["t2_affine"]),
            t1=t1,
            t1_grid=None if t1 is None else Grid(tuple(t1.shape[:3]), z["t1_affine"]),
            labels={k[len("label_"):]: z[k] for k in z.files if k.startswith("label_")},
        )


def phantom_case(seed: int, cache_dir: Path | None = None) -> Case:
    """Phantom ``seed`` from :mod:`imsct_train.phantoms`, through an npz cache when given."""
    path = None if cache_dir is None else Path(cache_dir) / f"phantom-{seed:05d}.npz"
    if path is not None and path.exists():
        return load_case(path)
    from .phantoms import generate_case  # the generator is heavy; import on demand

    c = generate_case(seed)
    case = case_from_images(f"phantom-{seed:05d}", c.t2w, c.t1w, c.labels, getattr(c, "meta", None))
    if path is not None:
        save_case(case, path)
    return case


def bids_cases(root: Path, subjects: Sequence[str] | None = None) -> list[Case]:
    """Cases of a BIDS folder: ``sub-X/anat/sub-X_T2w.nii.gz``, ``_T1w`` and
    ``derivatives/labels/sub-X/anat/sub-X_T2w_seg-<class>.nii.gz``."""
    root = Path(root)
    subs = subjects or sorted(p.name for p in root.glob("sub-*") if p.is_dir())
    cases = []
    for sub in subs:
        anat = root / sub / "anat"
        t2 = nib.load(anat / f"{sub}_T2w.nii.gz")
        t1_path = anat / f"{sub}_T1w.nii.gz"
        t1 = nib.load(t1_path) if t1_path.exists() else None
        lab_dir = root / "derivatives" / "labels" / sub / "anat"
        labels = {
            p.name.split("_seg-")[1].removesuffix(".nii.gz"): nib.load(p)
            for p in sorted(lab_dir.glob(f"{sub}_T2w_seg-*.nii.gz"))
        }
        cases.append(case_from_images(sub, t2, t1, labels))
    return cases


# ----------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class SpatialAug:
    """Random affine about the grid centre (paper: rotation ±5°, scaling ±10%, translation ±3%)."""

    probability: float = 1.0
    rotation_deg: float = 5.0  # per axis, uniform in [-r, r]
    scale: float = 0.10  # per axis, uniform in [1-s, 1+s]
    translation: tuple[float, float, float] = (0.03, 0.03, 0.0)  # fraction of the grid extent, SAR

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> SpatialAug | None:
        return None if not d else cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class IntensityAug:
    """Random intensity changes of raw values (before z-scoring); each with its probability."""

    gamma: tuple[float, float] = (0.7, 1.5)  # exponent range on [0, 1]-rescaled intensities
    p_gamma: float = 0.3
    bias: float = 0.3  # max |coefficient| of a quadratic log-bias field (coordinates in [-1, 1])
    p_bias: float = 0.3
    noise: float = 0.1  # max Gaussian noise sigma, as a fraction of the channel's std
    p_noise: float = 0.3
    blur: float = 1.0  # max Gaussian sigma in voxels, per axis
    p_blur: float = 0.2
    resolution: float = 2.5  # max down-sampling factor along one axis (then linear back)
    p_resolution: float = 0.2

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> IntensityAug | None:
        return None if not d else cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def rotation_matrix(angles_rad: np.ndarray) -> np.ndarray:
    """Rotation by ``angles_rad`` about axes 0, 1 and 2 in turn (3x3)."""
    out = np.eye(3)
    for axis, a in enumerate(angles_rad):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def perturb_grid(grid: Grid, aug: SpatialAug, rng: np.random.Generator) -> Grid:
    """``grid`` moved by a random rotation, scaling and translation about its centre (in mm)."""
    if rng.random() >= aug.probability:
        return grid
    n = np.asarray(grid.shape, dtype=float)
    spacing = grid.zooms
    rot = rotation_matrix(np.deg2rad(rng.uniform(-aug.rotation_deg, aug.rotation_deg, 3)))
    lin_mm = rot @ np.diag(rng.uniform(1 - aug.scale, 1 + aug.scale, 3))
    shift_mm = rng.uniform(-1, 1, 3) * np.asarray(aug.translation) * n * spacing
    centre = (n - 1) / 2
    m = np.eye(4)  # new voxel -> old voxel: c + D^-1 (L D (v - c) + t)
    m[:3, :3] = np.diag(1 / spacing) @ lin_mm @ np.diag(spacing)
    m[:3, 3] = centre - m[:3, :3] @ centre + shift_mm / spacing
    return Grid(grid.shape, grid.affine @ m)


def augment_intensity(raw: np.ndarray, grid: Grid, aug: IntensityAug, rng: np.random.Generator) -> np.ndarray:
    """Randomly changed copy of one raw channel (NaN = outside the field of view, kept NaN)."""
    valid = np.isfinite(raw)
    if not valid.any():
        return raw
    out = np.where(valid, raw, 0).astype(np.float32)
    lo, hi = float(out[valid].min()), float(out[valid].max())
    if rng.random() < aug.p_gamma and hi > lo:
        g = np.exp(rng.uniform(np.log(aug.gamma[0]), np.log(aug.gamma[1])))
        out = (np.clip((out - lo) / (hi - lo), 0, 1) ** g * (hi - lo) + lo).astype(np.float32)
    if rng.random() < aug.p_bias:
        out *= _bias_field(grid.shape, aug.bias, rng)
    if rng.random() < aug.p_resolution:
        out = _lower_resolution(out, rng.uniform(1.0, aug.resolution), int(rng.integers(3)))
    if rng.random() < aug.p_blur:
        out = ndimage.gaussian_filter(out, rng.uniform(0, aug.blur, 3)).astype(np.float32)
    if rng.random() < aug.p_noise:
        sigma = rng.uniform(0, aug.noise) * float(out[valid].std())
        out += rng.normal(0, sigma, out.shape).astype(np.float32)
    out[~valid] = np.nan
    return out


def _bias_field(shape: Sequence[int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a random quadratic polynomial of the coordinates (each in [-1, 1])."""
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    log_field = sum(rng.uniform(-strength, strength) * t for t in terms)
    return np.exp(log_field - np.mean(log_field)).astype(np.float32)


def _lower_resolution(data: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Down-sample ``axis`` by ``factor`` and linearly back (thicker slices)."""
    n = data.shape[axis]
    m = max(2, round(n / factor))
    if m >= n:
        return data
    zoom = [1.0] * 3
    zoom[axis] = m / n
    small = ndimage.zoom(data, zoom, order=1, grid_mode=True, mode="nearest")
    zoom[axis] = n / small.shape[axis]
    back = ndimage.zoom(small, zoom, order=1, grid_mode=True, mode="nearest")
    sl = [slice(None)] * 3
    sl[axis] = slice(0, n)
    return np.ascontiguousarray(back[tuple(sl)], dtype=np.float32)


# ----------------------------------------------------------------------------- sample building
def build_channels(images: Sequence[tuple[np.ndarray, Grid]], dst: Grid,
                   intensity: IntensityAug | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """(C, *dst.shape) float32: resample (NaN outside the FOV), augment raw values, z-score.

    Without ``intensity`` this equals :func:`deepseg_imsct.segment.model_input`.
    """
    out = []
    for data, grid in images:
        raw = resample(data, grid, dst, order=1, fill=np.nan)
        if intensity is not None and rng is not None:
            raw = augment_intensity(raw, dst, intensity, rng)
        out.append(zscore(raw))
    return np.stack(out)


def build_targets(case: Case, classes: Sequence[str], dst: Grid) -> np.ndarray:
    """(K, *dst.shape) float32 soft targets: each label resampled trilinearly onto ``dst``."""
    stacked = np.stack([case.labels[c] for c in classes]).astype(np.float32)
    y = resample(stacked, case.label_grid, dst, order=1, fill=0.0)  # one pass for all classes
    return np.clip(y, 0.0, 1.0, out=y)


TRAINING_ONLY = ("box_jitter_vox", "lesion_fraction")  # geometry keys the registry entry does not carry


def geometry_spec(geometry: Mapping[str, Any]) -> ModelSpec:
    """A config's ``geometry`` read by the runtime's own registry parser (same fields, same checks):
    training, export and the runtime share one typed model spec."""
    fields = {k: v for k, v in geometry.items() if k not in TRAINING_ONLY}
    entry = {"file": "config.onnx", "sha256": "0" * 64, "size": 1, "sources": ["config.onnx"], "normalization": "zscore", **fields}
    return parse_entry("config", "geometry", entry, Path("config.json"))


@dataclass(frozen=True)
class StageConfig:
    """Geometry of one stage: the runtime spec's facts (:func:`geometry_spec`) plus the training-only
    crop jitter and lesion share; per-axis tuples in SAR order."""

    contrasts: tuple[str, ...]
    classes: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    safety_factor: tuple[float, float, float] = (1.0, 1.0, 1.0)
    box_jitter_vox: tuple[int, int, int] = (0, 0, 0)  # segmenter: random shift of the crop box
    lesion_fraction: float = 0.0  # segmenter: share of patches centred on a lesion voxel

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StageConfig:
        spec = geometry_spec(d)
        extras = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in TRAINING_ONLY}
        return cls(spec.contrasts, spec.classes, spec.spacing_mm, spec.patch_size, spec.stride, spec.safety_factor, **extras)


def localizer_grid(case: Case, stage: StageConfig) -> Grid:
    """The runtime localizer block: the patch centred on the T2w working grid."""
    return centred_block(working_grid(case.t2_grid, stage.spacing_mm), stage.patch_size)


def segmenter_crop(case: Case, stage: StageConfig, rng: np.random.Generator | None = None) -> Grid:
    """The runtime segmenter crop around the ground-truth cord (plus random box jitter)."""
    cord = case.labels["cord"] > 0
    box, work = box_for_mask(cord if cord.any() else None, case.label_grid, case.t2_grid, stage.spacing_mm,
                             stage.safety_factor, stage.patch_size, stage.stride)
    if rng is not None and any(stage.box_jitter_vox):
        j = np.asarray(stage.box_jitter_vox)
        box = Box(tuple(int(s) for s in np.asarray(box.start) + rng.integers(-j, j + 1)), box.size)
    return box.on(work)


def localizer_sample(case: Case, stage: StageConfig, rng: np.random.Generator | None = None,
                     spatial: SpatialAug | None = None, intensity: IntensityAug | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): x (1, *patch) z-scored T2w, y (1, *patch) soft cord mask."""
    dst = localizer_grid(case, stage)
    if spatial is not None and rng is not None:
        dst = perturb_grid(dst, spatial, rng)
    x = build_channels(case.images(stage.contrasts), dst, intensity, rng)
    return x, build_targets(case, stage.classes, dst)


def segmenter_sample(case: Case, stage: StageConfig, rng: np.random.Generator | None = None,
                     spatial: SpatialAug | None = None, intensity: IntensityAug | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): one training patch (C, *patch) cut from the z-scored crop and its targets (K, *patch).

    The whole crop is built (the runtime z-scores the crop, not the patch); a patch is then
    taken at a random position, centred on a lesion voxel with probability ``lesion_fraction``.
    """
    dst = segmenter_crop(case, stage, rng)
    if spatial is not None and rng is not None:
        dst = perturb_grid(dst, spatial, rng)
    x = build_channels(case.images(stage.contrasts), dst, intensity, rng)
    y = build_targets(case, stage.classes, dst)
    start = patch_start(y, stage, rng)
    return crop(x, start, stage.patch_size), crop(y, start, stage.patch_size)


def patch_start(y: np.ndarray, stage: StageConfig, rng: np.random.Generator | None) -> tuple[int, int, int]:
    """Start of a training patch in a crop: lesion-centred, uniform, or (no rng) the first window."""
    shape, patch = np.asarray(y.shape[1:]), np.asarray(stage.patch_size)
    hi = np.maximum(shape - patch, 0)
    if rng is None:
        return (0, 0, 0)
    lesion_idx = list(stage.classes).index(LESION_CLASS) if LESION_CLASS in stage.classes else None
    if lesion_idx is not None and rng.random() < stage.lesion_fraction:
        vox = np.argwhere(y[lesion_idx] >= 0.5)
        if len(vox):
            centre = vox[rng.integers(len(vox))] + rng.integers(-patch // 4, patch // 4 + 1)
            return tuple(int(v) for v in np.clip(centre - patch // 2, 0, hi))
    return tuple(int(rng.integers(0, h + 1)) for h in hi)
