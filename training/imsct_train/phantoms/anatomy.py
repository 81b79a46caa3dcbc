"""Spine anatomy in cord coordinates: per-level profiles, vertebral column, canal and cord.

All functions work on flat arrays of points given by cord coordinates ``s, u, v`` (mm, see
:mod:`geometry`) and write tissue labels (:class:`tissues.T`) in place.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .geometry import Centerline, level_index
from .lesions import swelling_profile
from .params import CaseParams
from .reference import IDX, LEVELS, Reference
from .tissues import T

LOG = logging.getLogger(__name__)
NL = len(LEVELS)


def _per_level(cerv: float, thor: float, lumb: float, sacr: float) -> np.ndarray:
    """Per-level value that ramps smoothly between region values (C, T, L, S)."""
    ctrl_i = [0, 6, 10, 18, 21, 23, 24]
    ctrl_v = [cerv, cerv, thor, thor, lumb, lumb, sacr]
    return np.interp(np.arange(NL), ctrl_i, ctrl_v)


@dataclass
class LevelTable:
    """Per-level vertebral dimensions (mm; index = level)."""

    top: np.ndarray  # s of the top of each segment
    height: np.ndarray
    disc_half: np.ndarray  # half height of the disc at the top of each segment (0: none)
    depth: np.ndarray  # vertebral body AP depth
    halfwidth: np.ndarray  # vertebral body RL half width
    spin_len: np.ndarray  # spinous process length
    spin_angle: np.ndarray  # radians, 0 = straight posterior, + = pointing inferiorly
    spin_thick: np.ndarray  # sagittal thickness of the spinous process
    nucleus: np.ndarray  # disc nucleus T2 factor (degeneration < 1)


def level_table(p: CaseParams, ref: Reference, rng: np.random.Generator) -> LevelTable:
    """Vertebral dimensions for this case (scaled by body size, jittered per level)."""
    size = p.anatomy["size"]
    h = ref.height * size
    top = np.concatenate([[0.0], np.cumsum(h)[:-1]])
    j = lambda n, sd: np.exp(rng.normal(0, sd, n))  # noqa: E731
    disc = _per_level(2.3, 2.6, 4.8, 4.6) * size * j(NL, 0.12)
    disc[0] = disc[1] = 0.0  # no disc above C1 nor between C1 and C2
    degen = p.anatomy["disc_degeneration"]
    nucleus = np.clip(1.0 - degen * rng.uniform(0, 1, NL) * _per_level(0.5, 0.3, 0.7, 0.9), 0.25, 1.0)
    for lv, red in ((IDX["L5"], 0.4), (IDX["S"], 0.5), (IDX["C6"], 0.25)):
        if rng.random() < degen:
            disc[lv] *= 1 - red * rng.random()
            nucleus[lv] *= 0.5
    angle = np.deg2rad(_per_level(20, 50, 8, 10) + rng.normal(0, 5, NL))
    angle[IDX["C7"]] = np.deg2rad(12)
    spin_len = _per_level(15, 34, 28, 12) * size * j(NL, 0.1)
    spin_len[IDX["C1"]], spin_len[IDX["C2"]], spin_len[IDX["C7"]] = 6.0, 26 * size, 36 * size
    return LevelTable(top=top, height=h, disc_half=disc, depth=_per_level(16, 24, 33, 30) * size * j(NL, 0.05),
                      halfwidth=_per_level(9, 15, 23, 22) * size, spin_len=spin_len, spin_angle=angle,
                      spin_thick=_per_level(9, 8, 17, 10) * size, nucleus=nucleus)


@dataclass
class Profiles:
    """Quantities sampled along s every ``ds`` mm from ``s0``."""

    s0: float
    ds: float
    level: np.ndarray
    cord_a: np.ndarray  # cord AP semi-axis (swollen), mm
    cord_b: np.ndarray  # cord RL semi-axis
    sac_a: np.ndarray  # thecal sac AP semi-axis
    sac_b: np.ndarray
    sac_off: np.ndarray  # sac centre AP offset from the cord centre (mm)
    epi_post: np.ndarray  # posterior epidural fat thickness
    back: np.ndarray  # cord to posterior skin
    front: np.ndarray  # cord to anterior skin
    fat: np.ndarray  # subcutaneous fat thickness
    s_conus: float

    def idx(self, s: np.ndarray) -> np.ndarray:
        """Profile index of each s."""
        return np.clip(((s - self.s0) / self.ds).astype(np.intp), 0, self.level.size - 1)


def _cord_profiles(p: CaseParams, ref: Reference, lev: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Cord semi-axes (mm) along s from the reference table, with conus taper."""
    centres = np.arange(NL) + 0.5
    sc = p.anatomy["cord_scale"]
    ap = ref.cord_ap.copy()
    rl = ref.cord_rl.copy()
    ap[IDX["L1"]:], rl[IDX["L1"]:] = ap[IDX["T12"]], rl[IDX["T12"]]  # taper handled below
    a = np.interp(lev, centres, ap) * 0.5 * sc
    b = np.interp(lev, centres, rl) * 0.5 * sc
    conus = p.anatomy["conus_level"]
    taper = np.clip((conus - lev) / 0.7, 0, 1) ** 0.6
    a, b = a * taper, b * taper
    # conus medullaris is slightly bulbous just above its tip
    bulb = 1 + 0.2 * np.exp(-(((conus - 0.9) - lev) / 0.4) ** 2)
    return a * bulb, b * bulb, conus


def build_profiles(p: CaseParams, ref: Reference, cl: Centerline, lt: LevelTable) -> Profiles:
    """Cord, sac and body-outline profiles along the centerline's s samples."""
    s = cl.s
    tops = {n: float(t) for n, t in zip(LEVELS, lt.top)}
    lev = level_index(tops, lt.height, s)
    a, b, conus = _cord_profiles(p, ref, lev)
    swell = swelling_profile(s, p.lesions)
    a, b = a * swell, b * swell
    centres = np.arange(NL) + 0.5
    ss = p.anatomy["sac_scale"]
    A = np.interp(lev, centres, ref.sac_ap) * 0.5 * ss
    B = np.interp(lev, centres, ref.sac_rl) * 0.5 * ss
    A = np.maximum(A, a + 1.0)
    B = np.maximum(B, b + 1.2)
    end = IDX["S"] + 0.3  # thecal sac ends at S2
    sac_t = np.clip((end - lev) / 0.15, 0, 1)
    A, B = A * sac_t, B * sac_t
    off = -p.anatomy["cord_offset_ap"] * np.maximum(A - a, 0)
    i_conus = int(conus)
    s_conus = tops[LEVELS[i_conus]] + (conus - i_conus) * lt.height[i_conus]
    off = np.where(lev > conus, -0.25 * A, off)  # cauda equina layers dorsally
    epi = np.interp(lev, [0, 6, 12, 18, 21, 24], [0.6, 1.2, 2.5, 3.5, 5.5, 4.0])
    bk = p.anatomy["back_mm"] / 55.0
    back = np.interp(lev, [-3, 0, 3, 7, 12, 19, 22, 25], [75, 62, 52, 58, 62, 68, 85, 95]) * bk
    front = np.interp(lev, [-3, 1, 2.5, 6.5, 9.5, 19, 21, 25], [130, 120, 80, 80, 170, 200, 210, 170])
    front = front * p.anatomy["size"] ** 0.5
    fat = p.anatomy["fat_mm"] * np.interp(lev, [0, 7, 19, 23, 25], [0.8, 0.8, 1.0, 1.4, 2.0])
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return Profiles(float(s[0]), float(s[1] - s[0]), f32(lev), f32(a), f32(b), f32(A), f32(B), f32(off),
                    f32(epi), f32(back), f32(front), f32(fat), float(s_conus))


def _superellipse(x: np.ndarray, y: np.ndarray, p: float) -> np.ndarray:
    return np.abs(x) ** p + np.abs(y) ** p


def vertebral_bodies(lab: np.ndarray, s: np.ndarray, u: np.ndarray, v: np.ndarray, lv: np.ndarray,
                     lt: LevelTable, front: np.ndarray) -> None:
    """Vertebral bodies (cortex, marrow) and discs (annulus, nucleus); C1 has no body."""
    i = np.clip(lv.astype(np.int32), 0, NL - 1)
    nxt = np.minimum(i + 1, NL - 1)
    D, W = lt.depth[i], lt.halfwidth[i]
    sac_frac = np.clip((s - lt.top[i]) / lt.height[i], 0, 1)
    is_s = i == NL - 1
    D = np.where(is_s, D * (1 - 0.7 * sac_frac), D)
    W = np.where(is_s, W * (1 - 0.5 * sac_frac), W)
    cu = front + D / 2
    # every part below lies within |u - cu| < D / 2 + 1.2 and |v| < W + 1 (margins: float rounding)
    sel = np.flatnonzero((np.abs(u - cu) < D / 2 + 1.3) & (np.abs(v) < W + 1.1))
    if sel.size == 0:
        return
    ls = lab[sel]
    _bodies_in_box(ls, s[sel], u[sel], v[sel], i[sel], nxt[sel], D[sel], W[sel], cu[sel], sac_frac[sel], lt)
    lab[sel] = ls


def _bodies_in_box(lab: np.ndarray, s, u, v, i, nxt, D, W, cu, sac_frac, lt: LevelTable) -> None:
    """:func:`vertebral_bodies` on the points of their bounding box (``D``, ``W``: body depth and
    half width, ``cu``: u of the body centre, mm). The superellipse powers are evaluated only on
    the points that pass the cheaper tests of the same part."""
    du = (u - cu) / (D / 2)
    dv = v / W
    concave = np.clip(1 - du ** 2 - dv ** 2, 0, 1) * 1.2
    d_top = s - lt.top[i]
    d_bot = lt.top[nxt] - s
    h_top = lt.disc_half[i] + concave * (lt.disc_half[i] > 0)
    h_bot = np.where(nxt != i, lt.disc_half[nxt] + concave * (lt.disc_half[nxt] > 0), -100.0)
    b = np.flatnonzero((d_top > h_top) & (d_bot > h_bot) & (i > 0))
    b = b[np.abs(du[b]) ** 2.5 + np.abs(dv[b]) ** 2.2 < 1]
    mid = (lt.top[i[b]] + h_top[b] + lt.top[nxt[b]] - h_bot[b]) / 2
    half = np.maximum((lt.top[nxt[b]] - h_bot[b] - lt.top[i[b]] - h_top[b]) / 2, 0.5)
    keep = _superellipse((s[b] - mid) / half, du[b], 8.0) < 1
    b, mid, half = b[keep], mid[keep], half[keep]
    lab[b] = T.CORTEX
    inset, ub, vb = 1.3, u[b] - cu[b], v[b]
    inner = np.abs(ub / (D[b] / 2 - inset)) ** 2.5 + np.abs(vb / (W[b] - inset)) ** 2.2 < 1
    inner &= _superellipse((s[b] - mid) / np.maximum(half - inset, 0.3), ub / (D[b] / 2 - inset), 8.0) < 1
    lab[b[inner]] = T.MARROW
    # discs: at the top of each segment, slightly bulging
    d = np.flatnonzero(((d_top <= h_top) & (lt.disc_half[i] > 0)) | ((d_bot <= h_bot) & (nxt != i)))
    d = d[np.abs((u[d] - cu[d]) / (D[d] / 2 + 1.2)) ** 2.5 + np.abs(v[d] / (W[d] + 1.0)) ** 2.2 < 1]
    lab[d] = T.ANNULUS
    upper = d_top[d] <= h_top[d]
    hd = np.where(upper, lt.disc_half[i[d]], lt.disc_half[nxt[d]])
    dd = np.where(upper, d_top[d], -d_bot[d])
    nuc = ((dd / (0.75 * hd + 0.3)) ** 2 + ((u[d] - cu[d] + 0.1 * D[d]) / (0.33 * D[d])) ** 2
           + (v[d] / (0.55 * W[d])) ** 2) < 1
    lab[d[nuc & (hd > 1.2)]] = T.NUCLEUS
    # sacrum: rudimentary discs as thin dark lines
    sac = b[i[b] == NL - 1]
    if sac.size:
        rud = np.min(np.abs(sac_frac[sac, None] - np.array([0.22, 0.42, 0.6, 0.76])[None]), axis=1) < 0.012
        lab[sac[rud]] = T.ANNULUS


def atlas_axis(lab: np.ndarray, s: np.ndarray, u: np.ndarray, v: np.ndarray, lt: LevelTable,
               front: np.ndarray, back: np.ndarray) -> None:
    """Dens of C2 and the anterior / posterior arches of C1."""
    c1, c2 = lt.top[IDX["C1"]], lt.top[IDX["C2"]]
    h1 = lt.height[IDX["C1"]]
    lo = c1 + min(3.0, 0.45 * h1 - 5.0, 0.5 * h1 - 4.5) - 0.1  # s range of the parts below
    hi = max(c2 + 2.0, c1 + 0.45 * h1 + 5.0, c1 + 0.5 * h1 + 4.5) + 0.1
    sel = np.flatnonzero((s > lo) & (s < hi))
    if sel.size == 0:
        return
    ls, s, u, v, front, back = lab[sel], s[sel], u[sel], v[sel], front[sel], back[sel]
    D2 = lt.depth[IDX["C2"]]
    dens_cu = front + 0.4 * D2
    dens = (s > c1 + 3.0) & (s < c2 + 2.0) & (((u - dens_cu) / 5.5) ** 2 + (v / 5.0) ** 2 < 1)
    ls[dens] = T.CORTEX
    ls[dens & (((u - dens_cu) / 4.2) ** 2 + (v / 3.8) ** 2 < 1) & (s > c1 + 4.2)] = T.MARROW
    ant = (((s - c1 - 0.45 * h1) / 5.0) ** 2 + ((u - (front + 0.4 * D2 + 8.5)) / 3.6) ** 2 + (v / 14.0) ** 2) < 1
    post = (((s - c1 - 0.5 * h1) / 4.5) ** 2 + ((u - (back - 5.0)) / 4.0) ** 2 + (v / 25.0) ** 2) < 1
    for m in (ant, post):
        ls[m] = T.CORTEX
        ls[m & (np.abs(s - c1 - 0.47 * h1) < 2.5)] = T.MARROW
    lab[sel] = ls


def posterior_elements(lab: np.ndarray, s: np.ndarray, u: np.ndarray, v: np.ndarray, lv: np.ndarray,
                       lt: LevelTable, canal_back: np.ndarray, canal_b: np.ndarray, canal_front: np.ndarray) -> None:
    """Laminae, ligamenta flava, spinous processes, pedicles, articular pillars, foramina.

    Each part is evaluated only on the points that can belong to it (same result, less work).
    """
    i0 = np.clip(lv.astype(np.int32), 0, NL - 1)
    lateral = np.abs(v) - canal_b
    sel = np.flatnonzero((np.abs(v) < 4.0) | ((lateral < 7) & (u < canal_back)))
    if sel.size:
        ls = lab[sel]
        _laminae_spinous(ls, s[sel], u[sel], v[sel], i0[sel], lt, canal_back[sel], lateral[sel])
        lab[sel] = ls
    sel = np.flatnonzero((((lateral > 0.5) & (lateral < 15)) | ((i0 == NL - 1) & (lateral < 25)))
                         & (u > canal_back - 13) & (u < canal_front + 2))  # where any part can be
    if sel.size:
        ls = lab[sel]
        _pillars(ls, s[sel], u[sel], i0[sel], lt, canal_back[sel], canal_front[sel], lateral[sel])
        lab[sel] = ls


def _laminae_spinous(lab: np.ndarray, s, u, v, i0: np.ndarray, lt: LevelTable, canal_back, lateral) -> None:
    """Laminae, ligamenta flava and spinous processes of this level and the two above."""
    lam_t = 5.5
    band = np.flatnonzero((u < canal_back) & (u > canal_back - lam_t) & (lateral < 7))  # lamina + flavum
    mid = np.flatnonzero(np.abs(v) < 4.0)  # spinous processes
    sb, ub, cbb, ib = s[band], u[band], canal_back[band], i0[band]
    sm, um, vm, cbm, im = s[mid], u[mid], v[mid], canal_back[mid], i0[mid]
    sin_cos = np.sin(lt.spin_angle), np.cos(lt.spin_angle)  # per level
    for back in (0, 1, 2):
        i = np.clip(ib - back, 1, NL - 2)
        top, h = lt.top[i], lt.height[i]
        in_lam = (sb > top + 0.3 * h) & (sb < top + 1.02 * h)
        lb = lab[band]
        if back == 0:
            lb[~in_lam & (lb != T.CORTEX) & (lb != T.MARROW)] = T.LIGAMENT
        lb[in_lam] = T.CORTEX
        lb[in_lam & (ub < cbb - 1.2) & (ub > cbb - lam_t + 1.2)] = T.MARROW
        lab[band] = lb
        # spinous process: bar from the lamina, pointing posteriorly and inferiorly
        i = np.clip(im - back, 1, NL - 2)
        top, h = lt.top[i], lt.height[i]
        sin_a, cos_a = sin_cos[0][i], sin_cos[1][i]
        ps = sm - (top + 0.72 * h)
        pu = -(um - (cbm - lam_t / 2))
        along = ps * sin_a + pu * cos_a
        perp = ps * cos_a - pu * sin_a
        L, th = lt.spin_len[i], lt.spin_thick[i] * 0.5
        width = th * (1 - 0.35 * np.clip(along / L, 0, 1))
        sp = (along > 0) & (along < L) & (np.abs(perp) < width)
        lab[mid[sp]] = T.CORTEX
        lab[mid[sp & (np.abs(perp) < width - 1.2) & (along < L - 1.5) & (np.abs(vm) < 2.8)]] = T.MARROW


def _pillars(lab: np.ndarray, s, u, i0: np.ndarray, lt: LevelTable, canal_back, canal_front, lateral) -> None:
    """Pedicles, articular pillars and facet joints, foramina with roots (parasagittal); sacral plate."""
    i = np.clip(i0, 1, NL - 2)
    top, h = lt.top[i], lt.height[i]
    fr = (s - top) / h
    lat = (lateral > 0.5) & (lateral < 15)
    pillar = lat & (u < canal_back + 3) & (u > canal_back - 13) & (lateral > 2)
    joint = pillar & (np.abs(fr - 0.88) < 0.035)
    pedicle = lat & (u >= canal_back + 3) & (u < canal_front + 2) & (fr > 0.12) & (fr < 0.55) & (lateral < 10)
    foramen = lat & (u >= canal_back + 3) & (u < canal_front) & ~pedicle & (lateral < 10)
    lab[foramen] = T.EPIFAT
    root = foramen & (((fr - 0.72) * h / 3.0) ** 2 + ((u - (canal_back + canal_front) / 2) / 2.5) ** 2 < 1)
    lab[root] = T.ROOT
    for m in (pillar & ~joint, pedicle):
        lab[m] = T.MARROW
    lab[joint] = T.JOINT
    edge = (pillar | pedicle) & ((np.abs(lateral - 0.5) < 1.0) | (np.abs(lateral - 15) < 1.0))
    lab[edge & ~joint] = T.CORTEX
    # sacrum: posterior plate
    sac = i0 == NL - 1
    plate = sac & (u < canal_back) & (u > canal_back - 8) & (lateral < 25)
    lab[plate] = T.MARROW
    lab[plate & ((u > canal_back - 1.2) | (u < canal_back - 6.8))] = T.CORTEX


def canal_contents(lab: np.ndarray, s: np.ndarray, u: np.ndarray, v: np.ndarray, lv: np.ndarray,
                   pr: Profiles, k: np.ndarray, roots_phase: float) -> np.ndarray:
    """Epidural space, thecal sac (CSF), cauda equina and cord. Returns the cord mask."""
    a, b, A, B, off = pr.cord_a[k], pr.cord_b[k], pr.sac_a[k], pr.sac_b[k], pr.sac_off[k]
    epi = pr.epi_post[k]
    front = off + A + 1.5
    back = off - A - epi
    cen = (front + back) / 2
    bony = (((u - cen) / ((front - back) / 2)) ** 2 + (v / (B + 2.5)) ** 2 < 1) & (s > -2)
    lab[bony] = T.EPIFAT
    lab[bony & (u > off + A * 0.6)] = T.VEIN
    sac = (((u - off) / np.maximum(A, 1e-3)) ** 2 + (v / np.maximum(B, 1e-3)) ** 2 < 1) & (A > 0.5)
    lab[sac] = T.CSF
    ligament = bony & ~sac & (u > off + A) & (np.abs(v) < B * 0.7)
    lab[ligament] = T.LIGAMENT
    # cauda equina: thin roots in the dorsal sac below the conus
    below = np.flatnonzero(sac & (s > pr.s_conus - 15))
    if below.size:
        _cauda(lab, below, s[below], u[below], v[below], off[below], A[below], B[below], roots_phase)
    un, vn = u / np.maximum(a, 1e-3), v / np.maximum(b, 1e-3)  # the cord's normalised cross-section
    cord = un ** 2 + vn ** 2 < 1
    cord &= (a > 0.3) & (s > -12.0)
    lab[cord] = T.CORD
    lab[cord & gray_matter(un, vn)] = T.GRAY
    return cord


def gray_matter(un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    """The cord's gray matter in its normalised cross-section (``un``: + anterior, ``vn``: R-L; the
    cord surface is un² + vn² = 1): an H of anterior horns, thin posterior horns and the central
    bar, ~24 % of the cross-section (generator 2.2)."""
    av = np.abs(vn)
    anterior = ((un - 0.30) / 0.32) ** 2 + ((av - 0.32) / 0.22) ** 2 < 1
    posterior = ((un + 0.38) / 0.42) ** 2 + ((av - 0.22) / 0.09) ** 2 < 1
    bar = (np.abs(un) < 0.12) & (av < 0.40)
    return anterior | posterior | bar


def _cauda(lab: np.ndarray, idx: np.ndarray, s, u, v, off, A, B, roots_phase: float) -> None:
    """Cauda equina roots and filum at the sac points ``idx`` below the conus (``s, u, v``: theirs)."""
    ang = np.arctan2(v, -(u - off))
    rad = np.sqrt(((u - off) / np.maximum(A, 1e-3)) ** 2 + (v / np.maximum(B, 1e-3)) ** 2)
    strands = (np.sin(ang * 11 + roots_phase + 0.02 * s) > 0.55) & (rad > 0.25) & (rad < 0.8) & (u < off + 0.3 * A)
    lab[idx[strands]] = T.ROOT
    filum = (np.abs(u - off + 0.1 * A) < 0.9) & (np.abs(v) < 0.9)
    lab[idx[filum]] = T.ROOT
