"""The anatomy of a case (:class:`Scene`) and the classification of points in cord coordinates.

:func:`classify` gives the tissue, cord and lesion classes of any set of points; the grids are
sampled in :mod:`raster` (coarse to fine in :mod:`planes`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import anatomy as an
from . import regions as rg
from .geometry import Centerline, Pose, build_centerline, make_poses
from .lesions import render_lesions
from .params import CaseParams
from .reference import LEVELS, Reference, load_reference
from .tissues import FAT_T1, T, tissue_tables

LOG = logging.getLogger(__name__)


@dataclass
class Scene:
    """The anatomy of one case, ready to be sampled on any grid."""

    p: CaseParams
    ref: Reference
    cl: Centerline
    lt: an.LevelTable
    prof: an.Profiles
    pose_t2: Pose
    pose_t1: Pose
    target: np.ndarray
    tables: dict[str, np.ndarray]
    phase: int
    tops: dict[str, float]  # s (mm) of the top of each level
    half_w: np.ndarray  # body outline half width per profile sample (mm)


def build_scene(p: CaseParams, data_dir: Optional[str] = None) -> Scene:
    """Centerline, level table, profiles, poses and tissue signal tables of a case."""
    ref = load_reference(data_dir)
    rng = np.random.default_rng([p.seed, 4])
    lt = an.level_table(p, ref, rng)
    tops = {n: float(t) for n, t in zip(LEVELS, lt.top)}
    cl = build_centerline(p, tops)
    prof = an.build_profiles(p, ref, cl, lt)
    pose2, pose1, target = make_poses(p, cl)
    tables = tissue_tables(p.contrast, np.random.default_rng(p.contrast["jitter_seed"]))
    return Scene(p, ref, cl, lt, prof, pose2, pose1, target, tables, int(rng.integers(1 << 30)), tops,
                 rg.body_half_width(prof.level))


@dataclass
class LesionPoints:
    """Points whose signal or class a lesion changes: indices and their classes / signals."""

    idx: np.ndarray  # indices of the points (int64)
    tumor: np.ndarray  # bool
    cavity: np.ndarray
    edema: np.ndarray
    t2: np.ndarray  # signal (float32)
    t1: np.ndarray

    def take(self, sel: np.ndarray, idx: np.ndarray) -> "LesionPoints":
        """The entries ``sel`` (indices or mask), re-indexed by ``idx``."""
        return LesionPoints(idx, self.tumor[sel], self.cavity[sel], self.edema[sel], self.t2[sel], self.t1[sel])

    @property
    def classed(self) -> np.ndarray:
        """Mask of the entries in a lesion class (tumor, cavity or edema)."""
        return self.tumor | self.cavity | self.edema


def no_lesion() -> LesionPoints:
    """An empty :class:`LesionPoints`."""
    z = np.zeros(0, bool)
    return LesionPoints(np.zeros(0, np.int64), z, z, z, np.zeros(0, np.float32), np.zeros(0, np.float32))


def concat_lesions(parts: list[LesionPoints]) -> LesionPoints:
    """Concatenation of lesion point sets (same index space)."""
    parts = [q for q in parts if q.idx.size]
    if len(parts) < 2:
        return parts[0] if parts else no_lesion()
    return LesionPoints(*(np.concatenate([getattr(q, f) for q in parts])
                          for f in ("idx", "tumor", "cavity", "edema", "t2", "t1")))


@dataclass
class PointClasses:
    """Classification of a set of points; their signals are the tissue tables' except at ``les``."""

    lab: np.ndarray  # tissue (uint8)
    cord: np.ndarray  # bool
    les: LesionPoints


def _bodies(lab, s, u, v, lv, lt, cf, cb, canal_b) -> None:
    an.vertebral_bodies(lab, s, u, v, lv, lt, cf)


def _posterior(lab, s, u, v, lv, lt, cf, cb, canal_b) -> None:
    an.posterior_elements(lab, s, u, v, lv, lt, cb, canal_b, cf)


def _spine_and_canal(sc: Scene, lab: np.ndarray, s, u, v, lv, k, i, canal_front, canal_back, vb_front) -> np.ndarray:
    """Vertebral column, canal contents and cord on the points near the spine; returns the cord mask.

    ``k``, ``i``: profile and level indices; ``canal_front`` / ``canal_back`` / ``vb_front``: u (mm)
    of the canal's front and back and of the vertebral bodies' front.
    """
    pr, lt = sc.prof, sc.lt
    zone = (u > canal_back - 50) & (u < vb_front + 6) & (np.abs(v) < lt.halfwidth[i] + 22) & (s > -8)
    sub = np.flatnonzero(zone)
    cord = np.zeros(s.size, bool)
    if sub.size == 0:
        return cord
    ls = lab[sub]
    ss, uu, vv, ll, ks = s[sub], u[sub], v[sub], lv[sub], k[sub]
    cf, cb = canal_front[sub], canal_back[sub]
    for part, fn in (((uu > cf - 3), _bodies), ((uu < cf + 3) & (uu > cb - 65), _posterior)):
        idx = np.flatnonzero(part)
        if idx.size:
            lp = ls[idx]
            fn(lp, ss[idx], uu[idx], vv[idx], ll[idx], lt, cf[idx], cb[idx], pr.sac_b[ks[idx]] + 2.5)
            ls[idx] = lp
    an.atlas_axis(ls, ss, uu, vv, lt, cf, cb)
    rg.posterior_ribs(ls, ss, uu, vv, ll, lt.top, lt.height, lt.halfwidth[i[sub]])
    near = np.flatnonzero((np.abs(uu) < 30) & (np.abs(vv) < 30))
    if near.size:
        l2 = ls[near]
        cord[sub[near]] = an.canal_contents(l2, ss[near], uu[near], vv[near], ll[near], pr, ks[near],
                                            float(sc.phase % 7))
        ls[near] = l2
    lab[sub] = ls
    return cord


def classify(sc: Scene, s: np.ndarray, u: np.ndarray, v: np.ndarray) -> PointClasses:
    """Tissue, cord and lesion classes of points given in cord coordinates (mm).

    The result of a point does not depend on the other points (outside the body: air).
    """
    pr = sc.prof
    k = pr.idx(s)
    lab = np.zeros(s.size, np.uint8)
    lv, back, front, fat = pr.level[k], pr.back[k], pr.front[k], pr.fat[k]
    inside = rg.body_outline(lab, s, u, v, sc.half_w[k], back, front, fat) | (s < 30)
    cord = np.zeros(s.size, bool)
    sel = np.flatnonzero(inside)
    les = no_lesion()
    if sel.size:
        ls = lab[sel]
        cs, les = _classify_inside(sc, s[sel], u[sel], v[sel], ls, k[sel], lv[sel], back[sel], front[sel], fat[sel])
        lab[sel], cord[sel] = ls, cs
        les.idx = sel[les.idx]
    return PointClasses(lab, cord, les)


def _classify_inside(sc: Scene, s, u, v, lab: np.ndarray, k, lv, back, front, fat) -> tuple[np.ndarray, LesionPoints]:
    """:func:`classify` on points inside the body outline (``lab``: the outline's classes, updated in
    place; ``k``: profile index, then the profiles there); returns the cord mask and the lesion points."""
    pr, lt, p = sc.prof, sc.lt, sc.p
    i = np.clip(lv.astype(np.int32), 0, an.NL - 1)
    off, sac_a = pr.sac_off[k], pr.sac_a[k]
    canal_front = off + sac_a + 1.5
    vb_front = canal_front + lt.depth[i]
    canal_back = off - sac_a - pr.epi_post[k]
    rg.posterior_muscles(lab, s, u, v, lv, back, fat, canal_back, sc.phase)
    rg.neck_front(lab, s, u, v, lv, vb_front, front, fat, p.anatomy["airway_mm"])
    rg.thorax_front(lab, s, u, v, lv, vb_front, front, fat, sc.tops["T7"], sc.phase)
    rg.abdomen_front(lab, s, u, v, lv, vb_front, front, fat, lt.halfwidth[i], canal_front, sc.tops["S"], sc.phase)
    hz = np.flatnonzero(s < 30)
    if hz.size:
        lh = lab[hz]
        rg.head(lh, s[hz], u[hz], v[hz], sac_a[hz], pr.sac_b[k[hz]], sc.phase, p.anatomy["head_tilt_deg"])
        lab[hz] = lh
    cord = _spine_and_canal(sc, lab, s, u, v, lv, k, i, canal_front, canal_back, vb_front)
    return cord, _lesion_layer(sc, cord, s, u, v, k, lab)


def _lesion_layer(sc: Scene, cord: np.ndarray, s, u, v, k, lab: np.ndarray) -> LesionPoints:
    """Lesions painted inside the cord: the cord points they change."""
    tb = sc.tables
    ci = np.flatnonzero(cord)
    if sc.p.lesions and ci.size:  # only the cord points within a lesion's s extent can change
        sl = s[ci]
        ci = ci[np.any([(sl > lo) & (sl < hi) for lo, hi in (les.extent() for les in sc.p.lesions)], axis=0)]
    if not sc.p.lesions or ci.size == 0:
        return no_lesion()
    un = u[ci] / sc.prof.cord_a[k[ci]]
    vn = v[ci] / sc.prof.cord_b[k[ci]]
    noise = np.clip(rg.wave_noise(s[ci], un * 4.0, vn * 4.0, sc.phase + 9, n=5, period=(6.0, 20.0)) / 1.6, -1, 1)
    tissue = {"cord": (tb["t2"][T.CORD], tb["t1"][T.CORD]), "csf": (tb["t2"][T.CSF], tb["t1"][T.CSF]),
              "fat": (tb["t2"][T.FAT], FAT_T1)}  # T1w: unsaturated fat, enhancement's reference (generator 2.3)
    healthy = (tb["t2"][lab[ci]], tb["t1"][lab[ci]])  # white or gray matter where no lesion changes it
    layer = render_lesions(s[ci], un, vn, sc.p.lesions, tissue, noise, healthy)
    hit = np.flatnonzero(~np.isnan(layer.t2))  # touched (the classes imply it)
    return LesionPoints(ci[hit], layer.tumor[hit], layer.cavity[hit], layer.edema[hit], layer.t2[hit], layer.t1[hit])
