"""Pre-built segmenter crops: each case resampled and z-scored once, patches cut and augmented cheaply.

A case's crop is the runtime's stage-2 box around its ground-truth cord (the registry geometry:
:func:`deepseg_imsct.cropbox.box_for_mask`), widened by ``margin`` voxels on each side so that
box jitter and patch rotations stay inside real data. Channels are resampled from the native
grids and z-scored with the statistics of the runtime box itself (as
:func:`deepseg_imsct.segment.model_input` does at run time), then stored as float16; labels
are one exclusive class per voxel (0 background, 1 tumor, 2 edema, 3 cavity: the largest
trilinear fraction) plus the cord bit (4). Each case is two ``.npy`` files read as memory maps:
a sample costs a slice (or a small ``map_coordinates`` when rotated), not a resampling of the
whole case. Arrays are (C, S, A, R) / (S, A, R), working-grid voxels.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from deepseg_imsct.grid import Grid, resample
from deepseg_imsct.cropbox import Box, box_for_mask, crop_box
from deepseg_imsct.primitives import zscore

from .data import Case, StageConfig, rotation_matrix

log = logging.getLogger(__name__)

LESIONS = ("tumor", "edema", "cavity")  # exclusive classes 1, 2, 3 (0 = background)
CORD_BIT = 4
MARGIN = (16, 16, 4)  # voxels added on each side of the runtime box (S, A, R)
MAX_INDEX_SAMPLES = 4000  # voxel indices kept per class and case for centred sampling


def runtime_box(case: Case, stage: StageConfig):
    """(box, working grid) of the runtime's stage-2 crop around the case's ground-truth cord."""
    cord = case.labels["cord"] > 0
    return box_for_mask(cord if cord.any() else None, case.label_grid, case.t2_grid, stage.spacing_mm,
                        stage.safety_factor, stage.patch_size, stage.stride)


def build_crop(case: Case, stage: StageConfig, margin: Sequence[int] = MARGIN) -> tuple[np.ndarray, np.ndarray, dict]:
    """(x float16 (C, S, A, R), y uint8 (S, A, R), meta) of one case; see the module docstring."""
    box, work = runtime_box(case, stage)
    m = np.asarray(margin)
    outer = Box(tuple(int(v) for v in np.asarray(box.start) - m), tuple(int(v) for v in np.asarray(box.size) + 2 * m))
    grid = outer.on(work)
    inner = tuple(slice(int(a), int(a + n)) for a, n in zip(m, box.size))
    x = np.stack([zscore(resample(d, g, grid, order=1, fill=np.nan), inner) for d, g in case.images(stage.contrasts)])
    frac = resample(np.stack([case.labels[c] for c in (*LESIONS, "cord")]).astype(np.float32), case.label_grid, grid, order=1, fill=0.0)
    lesion = np.concatenate([1.0 - frac[:3].sum(0, keepdims=True), frac[:3]])
    y = np.argmax(lesion, axis=0).astype(np.uint8) | (CORD_BIT * (frac[3] >= 0.5)).astype(np.uint8)
    meta = {"name": case.name, "inner_start": [int(v) for v in m], "inner_size": [int(v) for v in box.size],
            "patch_size": list(stage.patch_size), "stride": list(stage.stride),
            "healthy": bool(not (y & 3).any()), "voxels": {c: int(((y & 3) == k + 1).sum()) for k, c in enumerate(LESIONS)}}
    return x.astype(np.float16), y, meta


def save_crop(folder: Path, x: np.ndarray, y: np.ndarray, meta: dict) -> None:
    """Write ``<name>.x.npy``, ``.y.npy`` and ``.json`` (json last: its presence marks a complete case)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = meta["name"]
    for suffix, arr in ((".x.npy", x), (".y.npy", y)):
        tmp = folder / f"{name}{suffix}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, arr)
        tmp.replace(folder / f"{name}{suffix}")
    _write_meta(folder, name, meta)


def _write_meta(folder: Path, name: str, meta: dict) -> None:
    """``<name>.json`` written atomically, after the arrays: its presence marks a complete case."""
    tmp = folder / f"{name}.json.tmp"
    tmp.write_text(json.dumps(meta), encoding="utf-8")
    tmp.replace(folder / f"{name}.json")


def _link_arrays(src: Path, dst: Path, name: str) -> None:
    """Hard-link case ``name``'s ``.x.npy`` and ``.y.npy`` from folder ``src`` into ``dst`` (a copy
    across file systems), replacing what is there."""
    dst.mkdir(parents=True, exist_ok=True)
    for suffix in (".x.npy", ".y.npy"):
        target = dst / f"{name}{suffix}"
        target.unlink(missing_ok=True)
        try:
            os.link(src / f"{name}{suffix}", target)
        except OSError:  # another file system
            shutil.copyfile(src / f"{name}{suffix}", target)


def reuse_crop(folder: Path, name: str, digest: str, others: Sequence[Path]) -> Path | None:
    """Link case ``name`` into ``folder`` from the first of ``others`` (crop folders of the same
    geometry) that holds it with the same ``params_sha256``: same parameters and renderer, same
    images, so a new generator version rebuilds only the cases it changed. Returns the source."""
    for other in others:
        src = Path(other) / f"{name}.json"
        if not src.exists() or Path(other).resolve() == Path(folder).resolve():
            continue
        meta = json.loads(src.read_text(encoding="utf-8"))
        if meta.get("params_sha256") != digest:
            continue
        _link_arrays(Path(other), Path(folder), name)
        _write_meta(Path(folder), name, meta)
        return Path(other)
    return None


def derive_crop(src: Path, dst: Path, name: str, stage: StageConfig,
                source: tuple[Sequence[int], Sequence[int]]) -> dict:
    """Case ``name`` of crop folder ``src`` (built for ``source`` = (patch, stride)) for another
    geometry ``stage`` (a smaller patch), without
    regenerating it: the arrays are linked, the json gets the new runtime box and ``renorm``, the
    per-channel (mean, std) that re-z-scores the stored channels over that box.

    The new box is :func:`deepseg_imsct.cropbox.crop_box` of the cord voxels (label bit 4) on the
    crop's grid; along an axis whose patch and stride are unchanged it is the stored box itself.
    A stored 0 is a voxel outside the field of view (z-scoring maps NaN there; a real voxel is never
    exactly 0 in float16): it is left out of the statistics and stays 0. Approximations, against a
    crop built anew: the cord's extent is read on the working grid (within a voxel of the native
    one), the box is clipped to the crop rather than to the field of view.
    """
    meta = json.loads((src / f"{name}.json").read_text(encoding="utf-8"))
    if meta.get("renorm") is not None:
        raise ValueError(f"{src / name}: derive from a built crop, not from a derived one")
    x = np.load(src / f"{name}.x.npy", mmap_mode="r")
    y = np.load(src / f"{name}.y.npy", mmap_mode="r")
    start0, size0 = np.asarray(meta["inner_start"]), np.asarray(meta["inner_size"])
    cord = (np.asarray(y) & CORD_BIT) > 0
    grid = Grid(tuple(int(n) for n in y.shape), np.eye(4))
    if cord.any():
        idx = np.nonzero(cord)
        lo = np.array([i.min() for i in idx]) - 0.5
        hi = np.array([i.max() for i in idx]) + 0.5
        factor = stage.safety_factor
    else:  # no cord: the runtime takes the whole field of view; the stored box stands for it
        lo, hi, factor = start0 - 0.5, start0 + size0 - 0.5, (1.0, 1.0, 1.0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    box = crop_box(corners, grid, factor, stage.patch_size, stage.stride)
    old_patch, old_stride = source
    keep = [old_patch[k] == stage.patch_size[k] and old_stride[k] == stage.stride[k] for k in range(3)]
    start = np.where(keep, start0, box.start)
    size = np.where(keep, size0, box.size)
    region = _slice_padded(x, start, size).astype(np.float32)
    renorm = []
    for c in region:  # stored 0 = outside the field of view (z-scored NaN): not counted, stays 0
        v = c[c != 0]
        renorm.append([float(v.mean(dtype=np.float64)), max(float(v.std(dtype=np.float64)), 1e-6)] if v.size else [0.0, 1.0])
    _link_arrays(src, dst, name)
    new = meta | {"inner_start": [int(v) for v in start], "inner_size": [int(v) for v in size], "renorm": renorm,
                  "patch_size": list(stage.patch_size), "stride": list(stage.stride), "derived_from": str(src)}
    _write_meta(dst, name, new)
    return new


@dataclass
class CropCase:
    """One pre-built case: memory-mapped arrays and sampled voxel indices per category."""

    name: str
    x: np.ndarray  # (C, S, A, R) float16, memory map
    y: np.ndarray  # (S, A, R) uint8, memory map
    inner_start: tuple[int, int, int]
    inner_size: tuple[int, int, int]
    healthy: bool
    centres: dict[str, np.ndarray]  # category -> (n, 3) int voxel indices
    renorm: tuple[tuple[float, float], ...] | None = None  # per channel (mean, std) of a derived crop

    def read_x(self, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """Channels (C, *size) float32 of the crop from voxel ``start``, 0 outside the crop (the
        runtime's zero padding), re-z-scored first when the crop is derived."""
        out = _slice_padded(self.x, np.asarray(start), size).astype(np.float32)
        if self.renorm is None:
            return out
        for c, (mean, std) in enumerate(self.renorm):  # 0 (padding, outside the field of view) stays 0
            out[c] = np.where(out[c] != 0, (out[c] - mean) / std, 0.0)
        return out

    @classmethod
    def load(cls, folder: Path, name: str, rng: np.random.Generator) -> CropCase:
        meta = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        x = np.load(folder / f"{name}.x.npy", mmap_mode="r")
        y = np.load(folder / f"{name}.y.npy", mmap_mode="r")
        yy = np.asarray(y)
        cls_ = yy & 3
        cats = {c: cls_ == k + 1 for k, c in enumerate(LESIONS)}
        cats["cord"] = ((yy & CORD_BIT) > 0) & (cls_ == 0)
        centres = {}
        for c, mask in cats.items():
            idx = np.flatnonzero(mask)
            if idx.size > MAX_INDEX_SAMPLES:
                idx = rng.choice(idx, MAX_INDEX_SAMPLES, replace=False)
            centres[c] = np.stack(np.unravel_index(idx, yy.shape), axis=1).astype(np.int32)
        renorm = meta.get("renorm")
        return cls(name, x, y, tuple(meta["inner_start"]), tuple(meta["inner_size"]), bool(meta["healthy"]), centres,
                   None if renorm is None else tuple((float(m), float(s)) for m, s in renorm))


def complete_cases(folder: Path) -> list[str]:
    """Names of the complete cases in a crop folder, sorted."""
    return sorted(p.name.removesuffix(".json") for p in Path(folder).glob("*.json") if not p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- patch augmentation
@dataclass(frozen=True)
class PatchAug:
    """Per-patch augmentation (nnU-Net-like), applied to z-scored channels and class labels."""

    p_spatial: float = 0.3
    rotation_deg: tuple[float, float, float] = (5.0, 5.0, 15.0)  # about the S, A, R axes (R: in the sagittal plane)
    scale: tuple[float, float] = (0.85, 1.2)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_contrast: float = 0.3
    contrast: tuple[float, float] = (0.7, 1.3)
    p_brightness: float = 0.3
    brightness: float = 0.25  # additive, in channel standard deviations
    p_noise: float = 0.2
    noise: float = 0.15
    p_blur: float = 0.15
    blur: tuple[float, float] = (0.5, 1.2)  # Gaussian sigma, voxels
    p_lowres: float = 0.15
    p_mirror: tuple[float, float, float] = (0.5, 0.0, 0.5)  # S-I, A-P, R-L
    p_slab: float = 0.0  # an axial thick-slab acquisition of the channels below (e.g. an axial T1w)
    slab_vox: tuple[float, float] = (4.0, 17.0)  # slab thickness along S-I, patch voxels (1 mm in the segmenter's grid)
    slab_channels: tuple[int, ...] = (1,)
    p_ring: float = 0.0  # Gibbs ringing of a channel along A-P or S-I (k-space truncated on the patch's grid)
    ring_keep: tuple[float, float] = (0.5, 0.9)  # fraction of the patch grid's k-space kept
    p_rim: float = 0.0  # truncation undershoot at the cord's A-P surface (the dark rim of real T2w cords)
    rim_depth: tuple[float, float] = (0.05, 0.3)  # undershoot, fraction of the step from the cord to its outer neighbour
    rim_channels: tuple[int, ...] = (0,)


def gibbs_ringing(ch: np.ndarray, axis: int, keep: float) -> np.ndarray:
    """``ch`` with its spatial frequencies along ``axis`` above ``keep`` x Nyquist removed (the
    truncation ringing of an acquisition at 1 / ``keep`` x the grid's voxel size along it)."""
    k = np.fft.fft(ch, axis=axis)
    shape = [1] * ch.ndim
    shape[axis] = ch.shape[axis]
    k *= (np.abs(np.fft.fftfreq(ch.shape[axis])) <= 0.5 * keep).reshape(shape)
    return np.real(np.fft.ifft(k, axis=axis)).astype(ch.dtype)


def cord_rim(ch: np.ndarray, cord: np.ndarray, axis: int, depth: float) -> np.ndarray:
    """``ch`` with the truncation undershoot of a sharp cord surface along ``axis``: a cord voxel
    whose outer neighbour along ``axis`` is not cord (and whose inner one is) falls to at most its
    inner neighbour's value, less ``depth`` x the step up from there to the outer neighbour; other
    voxels are unchanged.

    Real sagittal T2w cords show this dark rim against thin bright CSF (the Gibbs undershoot of a
    step is ~9 % of its height, more with sharpening filters); the phantoms' cord surface is a
    partial-volume voxel brighter than the cord, and healthy phantoms given the rim were called
    tumor (docs/training.md, session 11)."""
    pad = [(0, 0)] * ch.ndim
    pad[axis] = (1, 1)
    c, v = np.pad(cord, pad), np.pad(ch, pad, mode="edge")
    n = ch.shape[axis]
    at = lambda a, k: a[(slice(None),) * axis + (slice(1 + k, 1 + k + n),)]  # noqa: E731  neighbour k along axis
    out = ch.copy()
    for k in (1, -1):
        edge = cord & ~at(c, k) & at(c, -k)
        inner, outer = at(v, -k), at(v, k)
        new = np.minimum(ch, inner) - depth * np.maximum(outer - inner, 0)
        out[edge] = np.minimum(out[edge], new[edge])
    return out


def thick_slabs(ch: np.ndarray, thickness: float, phase: float) -> np.ndarray:
    """``ch`` (S, ...) as an axial acquisition of slabs ``thickness`` voxels thick along S (the first
    slab boundary at ``phase``) resampled back linearly: each slab's mean sits at its centre and
    voxels in between interpolate (what the runtime's trilinear resampling makes of thick axial
    slices, e.g. the toolbox's 5-slice ``mt/t1w``)."""
    n = ch.shape[0]
    edges = phase + thickness * np.arange(int(np.ceil((n - phase) / thickness)) + 1)
    cut = np.unique(np.clip(np.round(np.r_[0.0, edges, n]).astype(int), 0, n))  # voxel slabs [cut[k], cut[k + 1])
    csum = np.concatenate([np.zeros((1, *ch.shape[1:]), np.float64), np.cumsum(ch, axis=0, dtype=np.float64)])
    col = (slice(None),) + (None,) * (ch.ndim - 1)
    means = (csum[cut[1:]] - csum[cut[:-1]]) / (cut[1:] - cut[:-1])[col]
    if len(means) == 1:
        return np.broadcast_to(means[0], ch.shape).astype(ch.dtype)
    centres = (cut[1:] + cut[:-1] - 1) / 2.0  # mean voxel index of each slab
    pos = np.clip(np.searchsorted(centres, np.arange(n), side="right") - 1, 0, len(centres) - 2)
    w = np.clip((np.arange(n) - centres[pos]) / (centres[pos + 1] - centres[pos]), 0.0, 1.0)[col]
    return ((1 - w) * means[pos] + w * means[pos + 1]).astype(ch.dtype)


def _slice_padded(arr: np.ndarray, start: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``arr[..., start:start+size]`` over the last three axes, zero outside ``arr``."""
    shape = np.asarray(arr.shape[-3:])
    lo, hi = np.maximum(start, 0), np.minimum(start + np.asarray(size), shape)
    out = np.zeros((*arr.shape[:-3], *size), dtype=arr.dtype)
    if np.all(hi > lo):
        dst = tuple(slice(int(a - s), int(b - s)) for a, b, s in zip(lo, hi, start))
        out[(Ellipsis, *dst)] = arr[(Ellipsis, *(slice(int(a), int(b)) for a, b in zip(lo, hi)))]
    return out


def cut_patch(case: CropCase, centre: np.ndarray, patch: Sequence[int], spacing: Sequence[float],
              aug: PatchAug | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (C, *patch), y uint8 (*patch)) centred on voxel ``centre`` of the crop; ``y`` holds
    the crop's label bytes (class | :data:`CORD_BIT`)."""
    patch_a = np.asarray(patch)
    start = np.round(centre - patch_a / 2).astype(int)
    if aug is None or rng.random() >= aug.p_spatial:
        return case.read_x(start, patch), _slice_padded(case.y, start, patch)
    d = np.asarray(spacing, dtype=float)
    rot = rotation_matrix(np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(aug.rotation_deg)))
    m = np.diag(1 / d) @ rot @ np.diag(rng.uniform(*aug.scale, 3)) @ np.diag(d)  # patch voxel -> crop voxel
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in patch], indexing="ij")).reshape(3, -1)
    coords = m @ grid + (start + patch_a / 2)[:, None]  # identity = the plain slice
    lo = np.floor(coords.min(1)).astype(int) - 1
    hi = np.ceil(coords.max(1)).astype(int) + 2
    xs = case.read_x(lo, hi - lo)
    ys = _slice_padded(case.y, lo, hi - lo)
    local = coords - lo[:, None]
    x = np.stack([ndimage.map_coordinates(c, local, order=1, mode="constant", cval=0.0).reshape(patch) for c in xs])
    y = ndimage.map_coordinates(ys, local, order=0, mode="constant", cval=0).reshape(patch)
    return x, y


def augment_patch(x: np.ndarray, y: np.ndarray, aug: PatchAug, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Intensity changes per channel, then mirroring; ``x`` (C, S, A, R) z-scored, ``y`` (S, A, R)
    the crop's label bytes (class | :data:`CORD_BIT`), returned with the same bits."""
    for c in range(x.shape[0]):
        ch = x[c]
        if rng.random() < aug.p_gamma:
            lo, hi = float(ch.min()), float(ch.max())
            if hi > lo:
                mean, std = float(ch.mean()), float(ch.std())
                g = np.exp(rng.uniform(np.log(aug.gamma[0]), np.log(aug.gamma[1])))
                ch = ((ch - lo) / (hi - lo)) ** g
                ch = (ch - ch.mean()) / max(float(ch.std()), 1e-6) * std + mean
        if rng.random() < aug.p_contrast:
            mean = float(ch.mean())
            ch = (ch - mean) * rng.uniform(*aug.contrast) + mean
        if rng.random() < aug.p_brightness:
            ch = ch + rng.uniform(-aug.brightness, aug.brightness)
        if rng.random() < aug.p_blur:
            ch = ndimage.gaussian_filter(ch, rng.uniform(*aug.blur))
        if rng.random() < aug.p_lowres:
            f = rng.uniform(1.3, 2.0)
            small = ndimage.zoom(ch, 1 / f, order=1)
            ch = ndimage.zoom(small, np.asarray(ch.shape) / np.asarray(small.shape), order=1)[tuple(slice(0, n) for n in ch.shape)]
        if c in aug.rim_channels and aug.p_rim and rng.random() < aug.p_rim:
            ch = cord_rim(ch, (y & CORD_BIT) > 0, 1, rng.uniform(*aug.rim_depth))
        if rng.random() < aug.p_noise:
            ch = ch + rng.normal(0, rng.uniform(0, aug.noise), ch.shape)
        if rng.random() < aug.p_ring:
            ch = gibbs_ringing(ch, int(rng.integers(2)), rng.uniform(*aug.ring_keep))
        if c in aug.slab_channels and rng.random() < aug.p_slab:
            t = rng.uniform(*aug.slab_vox)
            ch = thick_slabs(ch, t, rng.uniform(0, t))
        x[c] = ch
    for axis, p in enumerate(aug.p_mirror):
        if p and rng.random() < p:
            x, y = np.flip(x, axis + 1), np.flip(y, axis)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)
