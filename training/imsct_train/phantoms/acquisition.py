"""Acquisition effects on rendered images and NIfTI output.

Texture, gamma, coil sensitivity / bias field, blur, Gibbs ringing, motion ghosts, Rician
noise, FOV cut-offs and saturation bands, int16 scaling, re-orientation to the stored axis
codes. Arrays are canonical (RL, AP, SI) until :func:`to_nifti`.
"""
from __future__ import annotations

import logging
from typing import Any

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

LOG = logging.getLogger(__name__)


def texture_field(sub: np.ndarray, shape2: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth zero-mean texture (about unit SD) on a grid, (RL, ``shape2``), float32.

    ``sub``: anatomy points (mm, (3, RL, m1, m2)) of every k-th in-plane voxel centre; the field is
    sampled there and resized linearly to ``shape2`` if smaller. The field lives in anatomy space,
    so T1w and T2w share it even on different grids. It is the sum of a 2 mm and an 8 mm random
    field, both interpolated trilinearly; the 8 mm one is first resampled onto the 2 mm nodes
    (same origin, so this is exact) and the sum is sampled once.
    """
    rng = np.random.default_rng(seed)
    lo = sub.reshape(3, -1).min(axis=1) - 4
    hi = sub.reshape(3, -1).max(axis=1) + 4
    fields = []
    for cell, sigma in ((2.0, 0.8), (8.0, 1.0)):
        shape = tuple(int(x) for x in np.ceil((hi - lo) / cell) + 1)
        field = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma)
        field /= field.std() + 1e-6
        fields.append(field)
    fine, coarse = fields
    for axis, n in enumerate(fine.shape):
        coarse = _lerp_axis(coarse, np.arange(n) / 4.0, axis)
    both = np.float32(0.55) * fine + np.float32(0.2) * coarse
    coords = (sub.reshape(3, -1) - lo[:, None]) / 2.0
    vals = map_coordinates(both, coords, order=1, mode="nearest").reshape(sub.shape[1:])
    if vals.shape[1:] != tuple(shape2):
        vals = upsample_linear(vals, *shape2)
    return vals.astype(np.float32)


def _lerp_axis(a: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at positions ``x`` (index units, within
    [0, m - 1]), float32."""
    m = a.shape[axis]
    if m == 1:
        return np.repeat(a, x.size, axis=axis)
    i0 = np.minimum(x.astype(np.int64), m - 2)
    shape = [1] * a.ndim
    shape[axis] = x.size
    f = (x - i0).astype(np.float32).reshape(shape)
    lo, hi = np.take(a, i0, axis=axis), np.take(a, i0 + 1, axis=axis)
    lo *= 1 - f
    hi *= f
    lo += hi
    return lo


def upsample_linear(vals: np.ndarray, n1: int, n2: int) -> np.ndarray:
    """Linear resize of the last two axes of (S, m1, m2) to (S, n1, n2), end points aligned."""
    out = vals.astype(np.float32)
    for axis, n in ((2, n2), (1, n1)):
        m = out.shape[axis]
        out = _lerp_axis(out, np.arange(n) * ((m - 1) / max(n - 1, 1)), axis)
    return out


def bias_field(shape: tuple[int, int, int], u_mm: np.ndarray, art: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Coil sensitivity (decays anteriorly from the posterior spine coil) x smooth polynomial.

    ``u_mm``: cord-coordinate u of the voxels (mm); the polynomial is separable into an RL
    factor and an (AP, SI) plane, so only the falloff is evaluated per voxel.
    """
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    c = rng.normal(0, art["bias_strength"], 7).astype(np.float32)
    y, z = y[:, None], z[None, :]
    poly = c[0] * y + c[1] * z + c[2] * y * z + c[3] * z ** 2 + c[4] * y ** 2 + 0.5 * c[6] * np.sin(2 * z)
    plane, rl = np.exp(poly), np.exp(0.3 * c[5] * x)
    out = u_mm + np.float32(60.0)
    np.maximum(out, 0, out=out)
    out *= np.float32(-1.0 / art["coil_falloff_mm"])
    np.exp(out, out=out)
    for i in range(shape[0]):  # x the polynomial, slice by slice (no full-size temporary)
        out[i] *= plane * rl[i]
    return out.astype(np.float32, copy=False)


def _kspace_filter(n: int, art: dict[str, Any], rng: np.random.Generator) -> "np.ndarray | None":
    """Per phase-encoding line factor (unshifted FFT order): truncation mask x ghost modulation."""
    f = np.fft.fftfreq(n) * n  # signed line index, -n/2 .. n/2 - 1
    filt = np.ones(n, np.complex64)
    if art["ringing"] < 1.0:
        keep = int(n * art["ringing"] / 2)
        filt[(f < -keep) | (f >= keep)] = 0
    if art["ghost"] > 0:
        lines = np.fft.ifftshift(rng.random(n) < 0.3)
        phase = np.exp(2j * np.pi * art["ghost_shift"] * f / n)
        filt *= np.where(lines, 1 + art["ghost"] * 3 * (phase - 1), 1.0).astype(np.complex64)
    return filt


def _kspace_artifacts(img: np.ndarray, art: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Gibbs ringing (k-space truncation) and motion / pulsation ghosts, per slice.

    The edits depend on the phase-encoding line only: one 1-D transform along it is enough.
    """
    if art["ringing"] >= 1.0 and art["ghost"] <= 0:
        return img
    from scipy import fft as sfft

    pe_axis = 1 + int(rng.integers(2))
    n = img.shape[pe_axis]
    shp = [1, 1, 1]
    shp[pe_axis] = n
    filt = _kspace_filter(n, art, rng).reshape(shp)
    k = sfft.fft(img, axis=pe_axis)
    k *= filt
    k = sfft.ifft(k, axis=pe_axis, overwrite_x=True)
    return np.abs(k).astype(np.float32, copy=False)


def fov_cut_mask(shape: tuple[int, int, int], art: dict[str, Any]) -> "np.ndarray | None":
    """Voxels outside the reconstructed FOV (zero band at one in-plane edge), or None."""
    band = _fov_cut_band(shape, art)
    if band is None:
        return None
    ax, sl = band
    m = np.zeros(shape[ax], bool)
    m[sl] = True
    return np.broadcast_to(m.reshape([1, -1, 1] if ax == 1 else [1, 1, -1]), shape)


def _fov_cut_band(shape: tuple[int, int, int], art: dict[str, Any]) -> "tuple[int, slice] | None":
    """(axis, index range) of the zero band of :func:`fov_cut_mask`, or None."""
    if art["fov_cut"] <= 0:
        return None
    side = art["fov_cut_side"]
    ax = 1 if side < 2 else 2
    m = int(shape[ax] * art["fov_cut"])
    return ax, (slice(0, m) if side % 2 == 0 else slice(shape[ax] - m, shape[ax]))


def _fov_effects(img: np.ndarray, art: dict[str, Any]) -> np.ndarray:
    """Anterior saturation band and a zero band at one in-plane edge (FOV cut-off), in place."""
    if art["sat_band"] > 0:
        img[:, int(img.shape[1] * (1 - art["sat_band"])):, :] *= np.float32(0.15)
    band = _fov_cut_band(img.shape, art)
    if band is not None:
        idx: list = [slice(None)] * 3
        idx[band[0]] = band[1]
        img[tuple(idx)] = 0
    return img


def _percentile(img: np.ndarray, q: float, n: int = 1_000_000) -> float:
    """Percentile ``q`` of ``img`` estimated on an evenly strided subsample of about ``n`` voxels."""
    flat = img.ravel()
    return float(np.percentile(flat[::max(1, flat.size // n)], q))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """White noise blurred in-plane (``sigma`` voxels), scaled to unit SD (float32)."""
    fine = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, sigma, sigma))
    r = np.arange(-int(4 * sigma + 0.5), int(4 * sigma + 0.5) + 1)
    k = np.exp(-0.5 * (r / sigma) ** 2)
    k /= k.sum()
    fine *= np.float32(1.0 / np.sum(k ** 2))  # SD of unit noise filtered along two axes: sum(k^2)
    return fine


def finish_image(base: np.ndarray, textured: np.ndarray, tex: np.ndarray, u_mm: np.ndarray,
                 art: dict[str, Any], gamma: float, scale: float) -> np.ndarray:
    """Noise-free rendering -> int16 magnitude image with all acquisition effects."""
    rng = np.random.default_rng(art["field_seed"])
    img = _smooth_noise(rng, base.shape, 0.6)
    img *= np.float32(0.3)
    img += tex
    img *= textured
    img += base
    np.maximum(img, 0, out=img)
    np.power(img, np.float32(gamma), out=img)
    work = bias_field(base.shape, u_mm, art, rng)
    img *= work
    if art["blur_vox"] > 0.05:
        gaussian_filter(img, (0, art["blur_vox"], art["blur_vox"]), output=work)
        img, work = work, img
    img = _kspace_artifacts(img, art, rng)
    sigma = np.float32(art["noise"] * (_percentile(img, 99.5) + 1e-6) * 0.8)
    for last in (False, True):  # Rician noise: two Gaussian channels (``work`` reused as buffer)
        rng.standard_normal(dtype=np.float32, out=work)
        work *= sigma
        if last:
            np.hypot(img, work, out=img)
        else:
            img += work
    del work
    img = _fov_effects(img, art)
    img *= np.float32(scale / (_percentile(img, 99.7) + 1e-6))
    np.rint(img, out=img)
    np.clip(img, 0, 32767, out=img)
    return img.astype(np.int16)


def to_nifti(arr: np.ndarray, affine: np.ndarray, codes: str, dtype: type) -> nib.Nifti1Image:
    """Canonical (RL, AP, SI) array + affine -> NIfTI in orientation ``codes`` (q/sform code 1)."""
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    data = np.ascontiguousarray(nib.orientations.apply_orientation(arr.astype(dtype, copy=False), ornt))
    out_aff = affine @ nib.orientations.inv_ornt_aff(ornt, arr.shape)
    res = nib.Nifti1Image(data, out_aff)
    res.header.set_data_dtype(dtype)
    res.set_qform(out_aff, code=1)
    res.set_sform(out_aff, code=1)
    res.header.set_xyzt_units("mm", "sec")
    return res
