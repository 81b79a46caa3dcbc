"""Geometry: spine centerline, patient pose, acquisition grids and cord coordinates.

Frames
- scanner: NIfTI RAS+ world, mm.
- anatomy: patient frame (x right, y anterior, z superior, mm); ``scanner = R @ anatomy + t``.
- cord coordinates: ``s`` arclength along the centerline (mm, 0 at the foramen magnum,
  increasing inferiorly), ``u`` signed distance along the sagittal normal (mm, + anterior),
  ``v`` right-left offset from the (scoliotic) centerline (mm, + right).
Canonical arrays are indexed (RL, AP, SI); slices are the first axis.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .params import CaseParams, Grid
from .reference import LEVELS

LOG = logging.getLogger(__name__)
DS = 0.5  # s sampling step of the centerline and profiles, mm
LUT_MM = 1.0  # resolution of the (y, z) -> (s, u) lookup table, mm


def rotation(deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, y, z (applied x, then y, then z)."""
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Centerline:
    """Sagittal centerline sampled every :data:`DS` mm of s, with scoliosis."""

    s: np.ndarray
    y: np.ndarray
    z: np.ndarray
    theta: np.ndarray  # tangent angle (rad); tangent (sin, -cos), normal (cos, sin) in (y, z)
    x: np.ndarray  # right-left offset of the cord (scoliosis), mm

    def at(self, s: float) -> np.ndarray:
        """Anatomy point (x, y, z) of the centerline at ``s``."""
        return np.array([np.interp(s, self.s, a) for a in (self.x, self.y, self.z)])


def _bump(s: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    g = np.exp(-0.5 * ((s - centre) / sigma) ** 2)
    return g / (g.sum() * DS)


def build_centerline(p: CaseParams, tops: dict[str, float]) -> Centerline:
    """Centerline with cervical lordosis, thoracic kyphosis, lumbar lordosis, sacral kyphosis."""
    an = p.anatomy
    s_c = an["s_center"]
    s = np.arange(min(-320.0, s_c - 450.0), max(tops["S"] + 200.0, s_c + 450.0), DS)
    kappa = (-np.deg2rad(an["lordosis_c_deg"]) * _bump(s, tops["C4"] + 5, 30.0)
             + np.deg2rad(an["kyphosis_t_deg"]) * _bump(s, tops["T7"], 65.0)
             - np.deg2rad(an["lordosis_l_deg"]) * _bump(s, tops["L3"] + 10, 45.0)
             + np.deg2rad(an["sacral_deg"]) * _bump(s, tops["S"] + 45, 25.0)
             + np.deg2rad(an["head_tilt_deg"]) * _bump(s, -25.0, 15.0))
    theta = np.cumsum(kappa) * DS
    win = np.abs(s - s_c) < 150
    theta -= theta[win].mean()  # imaged segment upright on average (pose adds the tilt)
    i0 = int(np.argmin(np.abs(s)))
    y = np.cumsum(np.sin(theta)) * DS
    z = -np.cumsum(np.cos(theta)) * DS
    y, z = y - y[i0], z - z[i0]
    x = an["scoliosis_mm"] * np.sin(2 * np.pi * s / an["scoliosis_period_mm"] + an["scoliosis_phase"])
    x = x * np.clip((s + 20.0) / 80.0, 0, 1)  # no scoliosis in the head
    return Centerline(s, y, z, theta, x - np.interp(s_c, s, x) * 0.7)


@dataclass
class Pose:
    """Rigid anatomy-to-scanner transform ``X = R @ P + t`` (mm)."""

    R: np.ndarray
    t: np.ndarray

    def to_anatomy(self, pts: np.ndarray) -> np.ndarray:
        """Scanner points (..., 3) to anatomy points."""
        return (pts - self.t) @ self.R


def make_poses(p: CaseParams, cl: Centerline) -> tuple[Pose, Pose, np.ndarray]:
    """T2w pose, T1w pose (with misregistration) and the FOV target in scanner space."""
    R = rotation(p.anatomy["pose_deg"])
    t = np.asarray(p.anatomy["pose_mm"], float)
    pose2 = Pose(R, t)
    target = R @ cl.at(p.anatomy["s_center"]) + t
    Rm = rotation(p.misreg_deg)
    pose1 = Pose(Rm @ R, Rm @ (t - target) + target + np.asarray(p.misreg_mm))
    return pose2, pose1, target


def grid_affine(g: Grid, target: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Canonical (RL, AP, SI) voxel-to-scanner affine and shape of an acquisition grid.

    The anterior direction of the canonical AP axis is +y; the FOV centre is ``target`` plus
    ``g.shift_mm``; the back of the patient sits in the posterior part of the AP FOV.
    """
    inplane = g.inplane_mm / scale
    shape = (g.n_slices, max(int(round(g.fov_ap_mm / inplane)), 8), max(int(round(g.fov_si_mm / inplane)), 8))
    rot = rotation(g.oblique_deg)
    lin = rot @ np.diag([g.spacing_mm, inplane, inplane])
    centre = target + rot @ (np.asarray(g.shift_mm) + np.array([0.0, 0.12 * g.fov_ap_mm, 0.0]))
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = centre - lin @ ((np.asarray(shape) - 1) / 2.0)
    return aff, shape


@dataclass
class CordLUT:
    """Lookup table (y, z) anatomy plane -> (s, u), 1 mm cells."""

    y0: float
    z0: float
    s: np.ndarray
    u: np.ndarray

    def __post_init__(self) -> None:
        self._cells = [_cell_terms(self.s), _cell_terms(self.u)]

    def query(self, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear (s, u) at anatomy points (mm); clamped at the table's edges (float32)."""
        n0, n1 = self.s.shape
        fy = np.clip((y - np.float32(self.y0)) * np.float32(1 / LUT_MM), 0, n0 - 1, dtype=np.float32)
        fz = np.clip((z - np.float32(self.z0)) * np.float32(1 / LUT_MM), 0, n1 - 1, dtype=np.float32)
        iy = np.minimum(fy.astype(np.int32), n0 - 2)
        iz = np.minimum(fz.astype(np.int32), n1 - 2)
        fy -= iy.astype(np.float32)  # exact: same as the float64 difference
        fz -= iz.astype(np.float32)
        flat = iy.astype(np.intp) * n1 + iz
        return tuple(_bilinear(c, flat, fy, fz) for c in self._cells)


def _cell_terms(a: np.ndarray) -> list[np.ndarray]:
    """Per cell (flat index of its first node): a00, a01 - a00, a10, a11 - a10 (float32)."""
    p = np.pad(a, ((0, 1), (0, 1)), mode="edge")
    a00, a01, a10, a11 = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]
    return [x.ravel() for x in (a00.copy(), a01 - a00, a10.copy(), a11 - a10)]


def _bilinear(cell: list[np.ndarray], flat: np.ndarray, fy: np.ndarray, fz: np.ndarray) -> np.ndarray:
    """Bilinear interpolation in cells ``flat`` at fractions (fy, fz) from :func:`_cell_terms`."""
    a00, d01, a10, d11 = (t[flat] for t in cell)
    d01 *= fz
    a00 += d01
    d11 *= fz
    a10 += d11
    a10 -= a00
    a10 *= fy
    a00 += a10
    return a00


def grid_corners_anatomy(aff: np.ndarray, shape: tuple[int, int, int], pose: Pose) -> np.ndarray:
    """The 8 grid corners (with half a slice margin) in anatomy coordinates."""
    c = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    return pose.to_anatomy(c @ aff[:3, :3].T + aff[:3, 3])


def build_lut(cl: Centerline, corners: np.ndarray) -> CordLUT:
    """Nearest-centerline lookup over the bounding box of ``corners`` (anatomy mm)."""
    lo = corners[:, 1:].min(axis=0) - 5.0
    hi = corners[:, 1:].max(axis=0) + 5.0
    ys = np.arange(lo[0], hi[0] + LUT_MM, LUT_MM)
    zs = np.arange(lo[1], hi[1] + LUT_MM, LUT_MM)
    yy, zz = np.meshgrid(ys, zs, indexing="ij")
    pts = np.stack([yy.ravel(), zz.ravel()], axis=1)
    # exact nearest neighbour either way; unbalanced, non-compact nodes query about 2x faster here
    tree = cKDTree(np.stack([cl.y, cl.z], axis=1), leafsize=32, balanced_tree=False, compact_nodes=False)
    _, idx = tree.query(pts, k=1)
    dy, dz = pts[:, 0] - cl.y[idx], pts[:, 1] - cl.z[idx]
    th = cl.theta[idx]
    s = cl.s[idx] + dy * np.sin(th) - dz * np.cos(th)
    u = dy * np.cos(th) + dz * np.sin(th)
    return CordLUT(float(lo[0]), float(lo[1]), s.reshape(yy.shape).astype(np.float32),
                   u.reshape(yy.shape).astype(np.float32))


def level_index(tops: dict[str, float], heights: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Continuous vertebral level (0 = top of C1, 1 = top of C2, ...) at ``s`` (mm)."""
    edges = np.array([tops[n] for n in LEVELS] + [tops["S"] + heights[-1]])
    return np.interp(s, edges, np.arange(edges.size), left=-1.0, right=float(edges.size))
