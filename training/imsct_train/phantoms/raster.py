"""Rendering of an acquisition grid: slice-profile integration of sub-slice classes.

Any acquisition grid is rendered by sampling sub-slices across each slice's thickness (slice
profile) near the spine, so the images carry the partial volume of thick slices and the labels
are reduced from the same sub-samples (fractions, thresholded at 0.5); away from the spine the
slice centre is sampled once. Arrays are canonical (RL, AP, SI).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .geometry import Pose, build_lut, grid_affine, grid_corners_anatomy
from .params import Grid
from .planes import Coords, PlaneGrid, classify_plane, coarse_step, plane_grid
from .render import LesionPoints, Scene, concat_lesions, no_lesion
from .timing import stage

LOG = logging.getLogger(__name__)
NEAR_MM = 45.0  # |u| (mm) within which slices are integrated over their thickness (partial volume)
FRACTIONS = ("cord", "tumor", "cavity", "edema")


def slice_profile(g: Grid, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Sub-slice offsets (in slice-index units) and weights across the slice thickness."""
    n = g.n_sub or int(np.clip(np.ceil(g.slice_mm / 1.5), 2, 3))
    if scale < 0.75 and not g.n_sub:
        n = 2
    x = (np.arange(n) + 0.5) / n - 0.5  # fraction of the thickness
    w = np.exp(-0.5 * (x / 0.45) ** 2)
    return (x * g.slice_mm / g.spacing_mm).astype(np.float64), w / w.sum()


@dataclass
class Rendered:
    """Noise-free images of one grid (canonical RL, AP, SI) and label fractions."""

    affine: np.ndarray
    base: dict[str, np.ndarray]  # contrast -> signal
    textured: dict[str, np.ndarray]  # contrast -> texture-weighted signal
    fractions: dict[str, np.ndarray]  # 'cord', 'tumor', 'cavity', 'edema'
    u_centre: np.ndarray  # cord-coordinate u of voxel centres (mm)
    plane: np.ndarray  # anatomy coordinates (mm) of the voxel centres of slice 0, (3, AP, SI)
    step: np.ndarray  # anatomy displacement (mm) from one slice to the next

    def anat_points(self, every: int) -> np.ndarray:
        """Anatomy coordinates (mm, float32) of every ``every``-th in-plane voxel centre, (3, RL, m1, m2)."""
        sub = self.plane[:, ::every, ::every]
        shift = self.step[:, None] * np.arange(self.u_centre.shape[0])
        return (sub[:, None] + shift[:, :, None, None]).astype(np.float32)


def render_grid(sc: Scene, g: Grid, pose: Pose, contrasts: tuple[str, ...], labels: bool,
                scale: float = 1.0) -> Rendered:
    """Render ``contrasts`` (and label fractions) on grid ``g`` seen through ``pose``."""
    aff, shape = grid_affine(g, sc.target, scale)
    with stage("render:lut"):
        lut = build_lut(sc.cl, grid_corners_anatomy(aff, shape, pose))
    M = pose.R.T @ aff[:3, :3]
    b = pose.R.T @ (aff[:3, 3] - pose.t)
    jj, kk = np.meshgrid(np.arange(shape[1], dtype=np.float32), np.arange(shape[2], dtype=np.float32), indexing="ij")
    plane = (M[:, 1:2] * jj.ravel() + M[:, 2:3] * kk.ravel() + b[:, None]).astype(np.float32)
    offs, wts = slice_profile(g, scale)
    shifts = [None if o == 0 else M[:, 0] * o for o in offs]
    acc = _Accumulator(sc.tables, contrasts, labels, wts, shape)
    u_c = np.zeros((shape[0], plane.shape[1]), np.float32)
    pgrid = plane_grid(shape[1:], coarse_step(g.inplane_mm / scale))
    for i in range(shape[0]):
        with stage("render:coords"):
            x, y, z = ((plane[k] + M[k, 0] * i).astype(np.float32) for k in range(3))
            s_c, u_c[i] = lut.query(y, z)
            near = np.abs(u_c[i]) < NEAR_MM
        labs, cords, les = _classify_slice(sc, s_c, u_c[i], x, near, shifts, pgrid)
        with stage("render:accumulate"):
            acc.add(i, labs, cords, les, near)
    rs = lambda a: a.reshape(shape)  # noqa: E731
    return Rendered(aff, {c: rs(a) for c, a in acc.base.items()}, {c: rs(a) for c, a in acc.tex.items()},
                    {c: rs(a) for c, a in acc.frac.items()}, rs(u_c), plane.reshape((3,) + shape[1:]), M[:, 0])


def _centre_coords(sc: Scene, s_c: np.ndarray, u_c: np.ndarray, x_c: np.ndarray) -> Coords:
    """Cord coordinates (s, u, v) of the slice-centre plane at flat indices."""
    def at(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = s_c[idx]
        return s, u_c[idx], x_c[idx] - np.interp(s, sc.cl.s, sc.cl.x).astype(np.float32)
    return at


def _sub_coords(sc: Scene, s_c: np.ndarray, u_c: np.ndarray, x_c: np.ndarray, shift: np.ndarray) -> Coords:
    """Cord coordinates (s, u, v) at flat indices of the plane shifted by ``shift`` (anatomy mm,
    < 3 mm: first order in the centre coordinates)."""
    dx, dy, dz = shift.astype(np.float32)

    def at(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s0 = s_c[idx]
        th = np.interp(s0, sc.cl.s, sc.cl.theta).astype(np.float32)
        sin_t, cos_t = np.sin(th), np.cos(th)
        s = s0 + dy * sin_t - dz * cos_t
        u = u_c[idx] + dy * cos_t + dz * sin_t
        return s, u, x_c[idx] + dx - np.interp(s, sc.cl.s, sc.cl.x).astype(np.float32)
    return at


def _classify_slice(sc: Scene, s_c, u_c, x_c, near: np.ndarray, shifts: list[Optional[np.ndarray]],
                    pgrid: PlaneGrid) -> tuple[np.ndarray, np.ndarray, list[LesionPoints]]:
    """Classes of the sub-slices of one slice: tissue (n_sub, plane) uint8, cord mask, and per
    sub-slice the lesion points; the last list entry holds the lesion points off ``near``.

    Near the spine every sub-slice is classified (with 3, the middle one only where the outer two
    differ or hold a lesion class, elsewhere it copies the first); off it, every row holds the
    classes of the slice centre.
    """
    n, npl = len(shifts), near.size
    centre = _centre_coords(sc, s_c, u_c, x_c)
    labs, cords = np.empty((n + 1, npl), np.uint8), np.zeros((n + 1, npl), bool)  # row n: spare centre
    mid = n == 3 and shifts[1] is None
    les: list[LesionPoints] = []
    with stage("render:classify_sub"):
        for j, sh in enumerate(shifts):
            coords = centre if sh is None else _sub_coords(sc, s_c, u_c, x_c, sh)
            skip = mid and j == 1
            les.append(no_lesion() if skip else classify_plane(sc, coords, near, pgrid, labs[j], cords[j]))
    with stage("render:classify"):
        ref = 1 if mid else n
        if mid:
            a, b = les[0], les[2]
            same = near & (labs[0] == labs[2]) & (cords[0] == cords[2])
            same[a.idx[a.classed]] = False
            same[b.idx[b.classed]] = False
            labs[1], cords[1] = labs[0], cords[0]
            les_c = classify_plane(sc, centre, ~same, pgrid, labs[1], cords[1])
            keep, on = same[a.idx], near[les_c.idx]
            les[1] = concat_lesions([a.take(keep, a.idx[keep]), les_c.take(on, les_c.idx[on])])
            les_c = les_c.take(~on, les_c.idx[~on])
        else:
            les_c = classify_plane(sc, centre, ~near, pgrid, labs[n], cords[n])
        far = ~near
        for j in range(n):
            if j != ref:
                np.copyto(labs[j], labs[ref], where=far)
                np.copyto(cords[j], cords[ref], where=far)
    return labs[:n], cords[:n], les + [les_c]


class _Accumulator:
    """Weighted sums over the sub-slices of the images and label fractions, slice by slice.

    Off the lesions, a point's sums depend only on its sub-slice tissues (cord masks), so they are
    read from tables indexed by the combined key of those (``nt ** n_sub`` entries, summed in the
    same float32 order as point by point); keys from ``self.far`` on hold the slice-centre values
    (weight 1) used off the spine. Lesion points are summed point by point.
    """

    def __init__(self, tables: dict[str, np.ndarray], contrasts: tuple[str, ...], labels: bool,
                 wts: np.ndarray, shape: tuple[int, int, int]) -> None:
        npl, n = shape[1] * shape[2], len(wts)
        self.w = [np.float32(w) for w in wts]
        self.textab = tables["tex"]
        self.tab = {c: tables[c] for c in contrasts}
        nt = self.textab.size
        self.far = nt ** n
        self.sums = {}  # (contrast, textured) -> table over keys
        for c in contrasts:
            for textured in (False, True):
                one = tables[c] * self.textab if textured else tables[c]
                per = [(w * tables[c]) * self.textab if textured else w * tables[c] for w in self.w]
                self.sums[c, textured] = np.concatenate([_key_sums(per), one])
        self.cord_sums = np.concatenate([_key_sums([w * np.arange(2, dtype=np.float32) for w in self.w]),
                                         np.arange(2, dtype=np.float32)])
        self.base = {c: np.empty((shape[0], npl), np.float32) for c in contrasts}
        self.tex = {c: np.empty((shape[0], npl), np.float32) for c in contrasts}
        self.frac = {f: np.zeros((shape[0], npl), np.float32) for f in FRACTIONS} if labels else {}

    def add(self, i: int, labs: np.ndarray, cords: np.ndarray, les: list[LesionPoints], near: np.ndarray) -> None:
        """Row ``i`` from the sub-slice classes of :func:`_classify_slice`: weighted sub-slice sums
        near the spine, the centre classes (weight 1) off it."""
        far = ~near
        key = _combine(labs, self.textab.size, self.far, far)
        for c in self.tab:
            np.take(self.sums[c, False], key, out=self.base[c][i], mode="clip")  # keys are in range
            np.take(self.sums[c, True], key, out=self.tex[c][i], mode="clip")
        if self.frac:
            ckey = _combine(cords.view(np.uint8), 2, 2 ** len(self.w), far)
            np.take(self.cord_sums, ckey, out=self.frac["cord"][i], mode="clip")
        self._lesions(i, labs, les[:-1])
        self._lesions_off(i, labs[0], les[-1])

    def _lesions(self, i: int, labs: np.ndarray, les: list[LesionPoints]) -> None:
        """Sums at the lesion points near the spine, from their own signals and classes."""
        at = np.unique(np.concatenate([q.idx for q in les]))
        if at.size == 0:
            return
        pos = [np.searchsorted(at, q.idx) for q in les]
        for c in self.tab:
            base = tex = None
            for j, (w, q) in enumerate(zip(self.w, les)):
                lab = labs[j][at]
                sig = self.tab[c][lab]
                sig[pos[j]] = q.t2 if c == "t2" else q.t1
                val = w * sig
                base = val if base is None else base + val
                tex = val * self.textab[lab] if tex is None else tex + val * self.textab[lab]
            self.base[c][i][at], self.tex[c][i][at] = base, tex
        for name in FRACTIONS[1:] if self.frac else ():
            tot = np.zeros(at.size, np.float32)
            for w, q, p in zip(self.w, les, pos):
                m = np.zeros(at.size, bool)
                m[p] = getattr(q, name)
                tot += w * m
            self.frac[name][i][at] = tot

    def _lesions_off(self, i: int, lab: np.ndarray, q: LesionPoints) -> None:
        """Lesion points off the spine (slice centre, weight 1)."""
        if q.idx.size == 0:
            return
        for c in self.tab:
            val = q.t2 if c == "t2" else q.t1
            self.base[c][i][q.idx], self.tex[c][i][q.idx] = val, val * self.textab[lab[q.idx]]
        for name in FRACTIONS[1:] if self.frac else ():
            self.frac[name][i][q.idx] = getattr(q, name).astype(np.float32)


def _key_sums(per: list[np.ndarray]) -> np.ndarray:
    """Table of ``per[0][k0] + per[1][k1] + ...`` (float32, summed in that order) over the
    combined keys ``(k0 * n + k1) * n + ...``."""
    out = per[0]
    for t in per[1:]:
        out = (out[:, None] + t[None, :]).ravel()
    return out


def _combine(labs: np.ndarray, n: int, far_key: int, far: np.ndarray) -> np.ndarray:
    """Combined keys of the sub-slice classes ``labs`` (rows, values < ``n``); ``far_key`` + the
    first row's class where ``far``."""
    key = labs[0].astype(np.int16 if far_key + n < 2 ** 15 else np.int32)
    for row in labs[1:]:
        key *= n
        key += row
    np.copyto(key, labs[0] + key.dtype.type(far_key), where=far)
    return key


def labels_from_fractions(frac: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Acquisition-grid labels: whole = lesion fraction >= 0.5, class = largest fraction.

    Guarantees: tumor, edema, cavity disjoint; whole-tumor = their union; all inside the cord.
    """
    ft, fc, fe = frac["tumor"], frac["cavity"], frac["edema"]
    whole = (ft + fc + fe) >= 0.5
    idx = np.flatnonzero(whole)
    arg = np.argmax(np.stack([f.ravel()[idx] for f in (ft, fc, fe)]), axis=0)
    out = {}
    for j, name in enumerate(("tumor", "cavity", "edema")):
        m = np.zeros(whole.shape, np.uint8)
        m.ravel()[idx[arg == j]] = 1
        out[name] = m
    out["whole-tumor"] = whole.astype(np.uint8)
    out["cord"] = ((frac["cord"] >= 0.5) | whole).astype(np.uint8)
    return out
