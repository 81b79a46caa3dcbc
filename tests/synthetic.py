"""Tiny analytic test cases defined in scanner space (mm), rendered on any grid.

The cord is a vertical elliptic cylinder (bright on T2w), the tumor a ball inside it (bright on
T1w), in dark noisy tissue. Rendering evaluates the shapes at each voxel centre, so the same
anatomy can be put on grids of any orientation, voxel size and field of view.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

CORD_RADII_MM = (6.0, 4.0)  # R-L, A-P semi-axes
CORD_HALF_LENGTH_MM = 70.0
TUMOR_CENTRE_MM = (0.0, 0.0, 10.0)
TUMOR_RADIUS_MM = 5.0


def rotation(angle: float, axis: int) -> np.ndarray:
    """4x4 affine turning by ``angle`` radians about scanner axis ``axis`` (0 x, 1 y, 2 z) through the origin."""
    i, j = [k for k in range(3) if k != axis]
    rot = np.eye(4)
    rot[i, i] = rot[j, j] = np.cos(angle)
    rot[i, j], rot[j, i] = -np.sin(angle), np.sin(angle)
    return rot


def sagittal_affine(axcodes: str = "PSR", zooms=(0.8, 0.8, 3.0), shape=(160, 200, 14), centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """An affine with voxel axes along ``axcodes``, voxel sizes ``zooms`` and the FOV centred on ``centre``."""
    ornt = nib.orientations.axcodes2ornt(tuple(axcodes))
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (axis, sign) in enumerate(ornt):
        affine[int(axis), i] = sign * zooms[i]
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine


def centres_mm(shape, affine) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def cord_mask(xyz: np.ndarray) -> np.ndarray:
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return ((x / CORD_RADII_MM[0]) ** 2 + (y / CORD_RADII_MM[1]) ** 2 <= 1.0) & (np.abs(z) <= CORD_HALF_LENGTH_MM)


def tumor_mask(xyz: np.ndarray) -> np.ndarray:
    return np.linalg.norm(xyz - np.asarray(TUMOR_CENTRE_MM), axis=-1) <= TUMOR_RADIUS_MM


def render(shape, affine, contrast: str, seed: int = 0, qform_code: int = 1, sform_code: int = 1) -> nib.Nifti1Image:
    """T2w (cord bright) or T1w (tumor bright) with mild noise, int16 with a scale factor."""
    xyz = centres_mm(shape, affine)
    data = 100.0 + np.random.default_rng(seed).normal(0, 3, shape)
    if contrast == "t2":
        data[cord_mask(xyz)] = 400.0
    else:
        data[tumor_mask(xyz)] = 500.0
    img = nib.Nifti1Image(np.round(data / 2).astype(np.int16), affine)
    img.header.set_slope_inter(2.0, 0.0)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    return img


def case(axcodes="PSR", zooms=(0.8, 0.8, 3.0), shape=(160, 200, 14), t1_grid=None, seed=0):
    """(T2w, T1w, ground-truth tumor on the T2w grid); ``t1_grid`` = (shape, affine) or None (same grid)."""
    affine = sagittal_affine(axcodes, zooms, shape)
    t2 = render(shape, affine, "t2", seed)
    t1_shape, t1_affine = t1_grid or (shape, affine)
    t1 = render(t1_shape, t1_affine, "t1", seed + 1)
    truth = tumor_mask(centres_mm(shape, affine))
    return t2, t1, truth
