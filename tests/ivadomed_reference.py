"""A direct transcription of the reference framework's cascade (ivadomed 2.6 inference, as
../shared/reference/ivadomed-cascade.md section 11 condenses it), written independently of the
package with scipy and nibabel only, the random affine of the localizer left out (identity).

Tests compare the package's stages, run with the 'ivadomed' semantics, against it; the bench
(bench/compare_ivadomed.py) compares both with ivadomed itself.
"""
from __future__ import annotations

from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

Predict = Callable[[np.ndarray], np.ndarray]  # (1, C, *patch) -> (1, K, *patch)


def hwd(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (RAS) data transposed to H (I->S), W (P->A), D (L->R), and its zooms."""
    can = nib.as_closest_canonical(img)
    return can.get_fdata(dtype=np.float32).transpose(2, 1, 0), np.array(can.header.get_zooms()[:3])[[2, 1, 0]]


def to_native(arr_hwd: np.ndarray, ref: nib.Nifti1Image) -> np.ndarray:
    """Back from HWD to the reference image's voxel order."""
    ras = arr_hwd.transpose(2, 1, 0)
    can = nib.as_closest_canonical(ref)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(can.affine), nib.orientations.io_orientation(ref.affine))
    return nib.orientations.apply_orientation(ras, ornt)


def normalize(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) if x.std() < 1e-5 else (x - x.mean()) / x.std()


def crop_pad(a: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    out = np.zeros(tuple(size), a.dtype)
    src = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, a.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    out[dst] = a[src]
    return out


def uncrop(a: np.ndarray, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    out = np.zeros(tuple(shape), a.dtype)
    dst = tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, a.shape, shape))
    src = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(dst, start))
    out[dst] = a[src]
    return out


def localizer(t2: nib.Nifti1Image, predict: Predict, patch: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Stage 1: the binary cord mask (float 0/1) on the T2w's native grid (binarize, keep largest)."""
    a, zooms = hwd(t2)
    z = ndimage.zoom(a, zooms / np.asarray(spacing), order=2).astype(np.float32)
    start = [int(round((n - p) / 2.0)) for n, p in zip(z.shape, patch)]
    block = normalize(crop_pad(z, start, patch))
    p = predict(block[None, None].astype(np.float32))[0, 0]
    full = uncrop(p, start, z.shape)
    back = ndimage.zoom(full, np.asarray(a.shape) / np.asarray(z.shape), order=1)
    native = to_native(back, t2).copy()
    native[native <= 1e-2] = 0
    mask = native >= 0.5
    labels, n = ndimage.label(mask)
    if n == 0:
        raise IndexError("the localizer found nothing (the reference crashes here)")
    return (labels == np.bincount(labels.ravel())[1:].argmax() + 1).astype(np.float32)


def crop_box(prior: nib.Nifti1Image, zooms: np.ndarray, spacing, safety, patch, stride) -> tuple[list[int], list[int]]:
    """Stage 2's crop (start, size) on its zoomed grid from the stage-1 mask image."""
    m, _ = hwd(prior)
    labels, _ = ndimage.label(m)
    sl = ndimage.find_objects(labels)[0]
    bb = [v for s in sl for v in (s.start, s.stop - 1)]
    out = []
    for i, f in enumerate(safety):  # adjust_bb_size
        lo, hi = bb[2 * i], bb[2 * i + 1]
        length = (hi - lo) * f
        new_min = int(round(max(lo - (length - (hi - lo)) // 2, 0)))
        out += [new_min, int(new_min + length)]
    factors = zooms / np.asarray(spacing)
    res = []
    for i, f in enumerate(factors):  # adjust_bb_size(resample=True)
        lo, hi = out[2 * i], out[2 * i + 1]
        new_min = int(round(max(lo * f, 0)))
        res += [new_min, int(new_min + (hi - lo) * f)]
    size = [max(res[2 * i + 1] - res[2 * i], p) for i, p in enumerate(patch)]
    size = [s + ((m - (s - p) % m) if (s - p) % m else 0) for s, m, p in zip(size, stride, patch)]
    return [res[0], res[2], res[4]], size


def segmenter(t2: nib.Nifti1Image, t1: nib.Nifti1Image, prior: nib.Nifti1Image, predict: Predict, patch, stride,
              spacing, safety, n_classes: int) -> np.ndarray:
    """Stage 2: probabilities (X, Y, Z, K) on the T2w's native grid, noise floor applied."""
    chans, zs = [], []
    for img in (t2, t1):
        a, zooms = hwd(img)
        zs.append(zooms)
        chans.append(ndimage.zoom(a, zooms / np.asarray(spacing), order=2).astype(np.float32))
    start, size = crop_box(prior, zs[0], spacing, safety, patch, stride)
    x = np.stack([crop_pad(c, start, size) for c in chans])
    total = np.zeros((n_classes, *size), np.float32)
    weight = np.zeros(size, np.float32)
    for i in range(0, size[0] - patch[0] + 1, stride[0]):
        for j in range(0, size[1] - patch[1] + 1, stride[1]):
            for k in range(0, size[2] - patch[2] + 1, stride[2]):
                sl = (slice(i, i + patch[0]), slice(j, j + patch[1]), slice(k, k + patch[2]))
                win = np.stack([normalize(c[sl]) for c in x])
                total[(slice(None),) + sl] += predict(win[None].astype(np.float32))[0]
                weight[sl] += 1
    total /= weight
    a_shape = hwd(t2)[0].shape
    out = []
    for c in range(n_classes):
        full = uncrop(total[c], start, chans[0].shape)
        back = ndimage.zoom(full, np.asarray(a_shape) / np.asarray(full.shape), order=1)
        out.append(to_native(back, t2))
    probs = np.stack(out, axis=-1).copy()
    probs[probs <= 1e-2] = 0
    return probs


def postprocess(probs: np.ndarray, thr: float = 0.5, min_voxels: int = 100) -> np.ndarray:
    """binarize -> remove small (18-connected, < min_voxels) -> fill holes (3x3x3), per class."""
    out = np.zeros(probs.shape, np.uint8)
    for c in range(probs.shape[-1]):
        m = probs[..., c] >= thr
        labels, n = ndimage.label(m, structure=ndimage.generate_binary_structure(3, 2))
        counts = np.bincount(labels.ravel())
        keep = counts >= min_voxels
        keep[0] = False
        m = keep[labels]
        out[..., c] = ndimage.binary_fill_holes(m, structure=np.ones((3, 3, 3)))
    return out
