"""Rendering: tissue classification of points and slice-profile integration on a grid.

A :class:`Scene` holds the anatomy of one case in anatomy / cord coordinates. Any acquisition
grid is rendered by sampling sub-slices across each slice's thickness (slice profile), so the
images carry the partial volume of thick slices and the labels are reduced from the same
sub-samples (fractions, thresholded at 0.5). Arrays are canonical (RL, AP, SI).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import anatomy as an
from . import regions as rg
from .geometry import (Centerline, Pose, build_centerline, build_lut, grid_affine,
                       grid_corners_anatomy, make_poses)
from .lesions import render_lesions
from .params import CaseParams, Grid
from .reference import LEVELS, Reference, load_reference
from .timing import stage
from .tissues import T, tissue_tables

LOG = logging.getLogger(__name__)
COARSE_MM = 1.3  # block size (mm) of the coarse-to-fine classification of a plane
NEAR_MM = 45.0  # |u| (mm) within which slices are integrated over their thickness (partial volume)


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

    @property
    def tops(self) -> dict[str, float]:
        return {n: float(t) for n, t in zip(LEVELS, self.lt.top)}


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
    return Scene(p, ref, cl, lt, prof, pose2, pose1, target, tables, int(rng.integers(1 << 30)))


@dataclass
class PointClasses:
    """Classification of a set of points."""

    lab: np.ndarray  # tissue (uint8)
    cord: np.ndarray  # bool
    tumor: np.ndarray
    cavity: np.ndarray
    edema: np.ndarray
    t2: np.ndarray  # signal (float32)
    t1: np.ndarray


def _bodies(lab, s, u, v, lv, lt, cf, cb, canal_b) -> None:
    an.vertebral_bodies(lab, s, u, v, lv, lt, cf)


def _posterior(lab, s, u, v, lv, lt, cf, cb, canal_b) -> None:
    an.posterior_elements(lab, s, u, v, lv, lt, cb, canal_b, cf)


def _spine_and_canal(sc: Scene, lab: np.ndarray, s, u, v, lv, k) -> np.ndarray:
    """Vertebral column, canal contents and cord on the points near the spine."""
    pr, lt = sc.prof, sc.lt
    A, B, off, epi = pr.sac_a[k], pr.sac_b[k], pr.sac_off[k], pr.epi_post[k]
    canal_front = off + A + 1.5
    canal_back = off - A - epi
    i = np.clip(lv.astype(np.int32), 0, an.NL - 1)
    zone = (u > canal_back - 50) & (u < canal_front + lt.depth[i] + 6) & (np.abs(v) < lt.halfwidth[i] + 22) & (s > -8)
    sub = np.flatnonzero(zone)
    cord = np.zeros(s.size, bool)
    if sub.size == 0:
        return cord
    ls = lab[sub]
    ss, uu, vv, ll = s[sub], u[sub], v[sub], lv[sub]
    cf, cb = canal_front[sub], canal_back[sub]
    for part, fn in (((uu > cf - 3), _bodies), ((uu < cf + 3) & (uu > cb - 65), _posterior)):
        idx = np.flatnonzero(part)
        if idx.size:
            lp = ls[idx]
            fn(lp, ss[idx], uu[idx], vv[idx], ll[idx], lt, cf[idx], cb[idx], B[sub][idx] + 2.5)
            ls[idx] = lp
    an.atlas_axis(ls, ss, uu, vv, lt, cf, cb)
    rg.posterior_ribs(ls, ss, uu, vv, ll, lt.top, lt.height, lt.halfwidth[i[sub]])
    near = np.flatnonzero((np.abs(uu) < 30) & (np.abs(vv) < 30))
    if near.size:
        l2 = ls[near]
        cord[sub[near]] = an.canal_contents(l2, ss[near], uu[near], vv[near], ll[near], pr, k[sub[near]],
                                            float(sc.phase % 7))
        ls[near] = l2
    lab[sub] = ls
    return cord


def classify(sc: Scene, s: np.ndarray, u: np.ndarray, v: np.ndarray) -> PointClasses:
    """Tissue, cord and lesion classes and signals at points given in cord coordinates (mm).

    The result of a point does not depend on the other points (outside the body: air).
    """
    pr = sc.prof
    k = pr.idx(s)
    lab = np.zeros(s.size, np.uint8)
    inside = rg.body_outline(lab, s, u, v, pr.level[k], pr.back[k], pr.front[k], pr.fat[k]) | (s < 30)
    out = _empty(s.size)
    out.lab[:] = lab
    sel = np.flatnonzero(inside)
    if sel.size:
        _scatter(out, sel, _classify_inside(sc, s[sel], u[sel], v[sel], lab[sel], k[sel]))
    return out


def _classify_inside(sc: Scene, s, u, v, lab: np.ndarray, k: np.ndarray) -> PointClasses:
    """:func:`classify` on points inside the body outline (``lab`` holds the outline's classes)."""
    pr, lt, p = sc.prof, sc.lt, sc.p
    lv, back, front, fat = pr.level[k], pr.back[k], pr.front[k], pr.fat[k]
    i = np.clip(lv.astype(np.int32), 0, an.NL - 1)
    canal_front = pr.sac_off[k] + pr.sac_a[k] + 1.5
    vb_front = canal_front + lt.depth[i]
    canal_back = pr.sac_off[k] - pr.sac_a[k] - pr.epi_post[k]
    rg.posterior_muscles(lab, s, u, v, lv, back, fat, canal_back, sc.phase)
    rg.neck_front(lab, s, u, v, lv, vb_front, front, fat, p.anatomy["airway_mm"])
    rg.thorax_front(lab, s, u, v, lv, vb_front, front, fat, sc.tops["T7"], sc.phase)
    rg.abdomen_front(lab, s, u, v, lv, vb_front, front, fat, lt.halfwidth[i], canal_front, sc.tops["S"], sc.phase)
    hz = np.flatnonzero(s < 30)
    if hz.size:
        lh = lab[hz]
        rg.head(lh, s[hz], u[hz], v[hz], pr.sac_a[k[hz]], pr.sac_b[k[hz]], sc.phase, p.anatomy["head_tilt_deg"])
        lab[hz] = lh
    cord = _spine_and_canal(sc, lab, s, u, v, lv, k)
    return _lesion_layer(sc, lab, cord, s, u, v, k)


_FIELDS = ("lab", "cord", "tumor", "cavity", "edema", "t2", "t1")


def _empty(n: int) -> PointClasses:
    """Classes of ``n`` points of air, no label, zero signal."""
    z = lambda: np.zeros(n, bool)  # noqa: E731
    return PointClasses(np.zeros(n, np.uint8), z(), z(), z(), z(), np.zeros(n, np.float32), np.zeros(n, np.float32))


def _scatter(out: PointClasses, idx: np.ndarray, pc: PointClasses) -> None:
    """``out[idx] = pc`` for every field."""
    for name in _FIELDS:
        getattr(out, name)[idx] = getattr(pc, name)


def coarse_step(inplane_mm: float) -> int:
    """Voxels per coarse-block side of :func:`classify_plane` (about :data:`COARSE_MM`; 1 = exact)."""
    return max(1, int(COARSE_MM / inplane_mm))


def _block_any(mask: np.ndarray, c: int) -> np.ndarray:
    """Any-reduction of a 2-D mask over ``c x c`` blocks (last blocks partial)."""
    n0, n1 = mask.shape
    pad = np.zeros((-(-n0 // c) * c, -(-n1 // c) * c), bool)
    pad[:n0, :n1] = mask
    out = pad[::c, ::c].copy()
    for a in range(c):
        for b in range(c):
            if a or b:
                out |= pad[a::c, b::c]
    return out


def _corner_keys(sc: Scene, s, u, v, needb: np.ndarray, shape2: tuple[int, int], c: int) -> np.ndarray:
    """Class key (2 x tissue + cord; < 0: lesion or not computed) at the corners of the blocks."""
    n0, n1 = shape2
    nb0, nb1 = needb.shape
    ci = np.minimum(np.arange(nb0 + 1) * c, n0 - 1)
    cj = np.minimum(np.arange(nb1 + 1) * c, n1 - 1)
    cneed = np.zeros((nb0 + 1, nb1 + 1), bool)
    for da in (0, 1):
        for db in (0, 1):
            cneed[da:da + nb0, db:db + nb1] |= needb
    flat = (ci[:, None] * n1 + cj[None, :])[cneed]
    pc = classify(sc, s[flat], u[flat], v[flat])
    k = pc.lab.astype(np.int32) * 2 + pc.cord
    k[pc.tumor | pc.cavity | pc.edema] = -2
    key = np.full((nb0 + 1, nb1 + 1), -1, np.int32)
    key[cneed] = k
    return key


def classify_plane(sc: Scene, s: np.ndarray, u: np.ndarray, v: np.ndarray, need: np.ndarray,
                   shape2: tuple[int, int], c: int) -> PointClasses:
    """:func:`classify` on the points ``np.flatnonzero(need)`` of a plane (flat arrays, row-major
    ``shape2``); the result holds those points only, in that order.

    Coarse to fine: the corners of ``c x c`` blocks (``c * voxel`` about :data:`COARSE_MM`) are
    classified; blocks whose four corners share tissue and cord class and hold no lesion are
    filled with it, the others classified voxel by voxel. Structures thinner than a block that
    touch none of its corners can be missed there.
    """
    idx = np.flatnonzero(need)
    out = _empty(idx.size)
    rest = idx
    if c > 1 and idx.size:
        needb = _block_any(need.reshape(shape2), c)
        key = _corner_keys(sc, s, u, v, needb, shape2, c)
        k0 = key[:-1, :-1]
        uni = needb & (k0 >= 0) & (k0 == key[1:, :-1]) & (k0 == key[:-1, 1:]) & (k0 == key[1:, 1:])
        row, col = np.divmod(idx, shape2[1])
        kf = np.where(uni, k0, -1)[row // c, col // c]
        pos = np.flatnonzero(kf >= 0)
        kk = kf[pos]
        out.lab[pos] = kk >> 1
        out.cord[pos] = (kk & 1).astype(bool)
        out.t2[pos], out.t1[pos] = sc.tables["t2"][out.lab[pos]], sc.tables["t1"][out.lab[pos]]
        pos = np.flatnonzero(kf < 0)
        rest = idx[pos]
    else:
        pos = slice(None)
    if rest.size:
        _scatter(out, pos, classify(sc, s[rest], u[rest], v[rest]))
    return out


def _lesion_layer(sc: Scene, lab, cord, s, u, v, k) -> PointClasses:
    """Signals from the tissue tables, then lesions painted inside the cord."""
    tb = sc.tables
    t2 = tb["t2"][lab]
    t1 = tb["t1"][lab]
    n = s.size
    tumor, cavity, edema = (np.zeros(n, bool) for _ in range(3))
    ci = np.flatnonzero(cord)
    if sc.p.lesions and ci.size:
        un = u[ci] / sc.prof.cord_a[k[ci]]
        vn = v[ci] / sc.prof.cord_b[k[ci]]
        noise = np.clip(rg.wave_noise(s[ci], un * 4.0, vn * 4.0, sc.phase + 9, n=5, period=(6.0, 20.0)) / 1.6, -1, 1)
        tissue = {"cord": (tb["t2"][T.CORD], tb["t1"][T.CORD]), "csf": (tb["t2"][T.CSF], tb["t1"][T.CSF]),
                  "fat": (tb["t2"][T.FAT], tb["t1"][T.FAT])}
        layer = render_lesions(s[ci], un, vn, sc.p.lesions, tissue, noise)
        tumor[ci], cavity[ci], edema[ci] = layer.tumor, layer.cavity, layer.edema
        t2[ci] = np.where(np.isnan(layer.t2), t2[ci], layer.t2)
        t1[ci] = np.where(np.isnan(layer.t1), t1[ci], layer.t1)
    return PointClasses(lab, cord, tumor, cavity, edema, t2, t1)


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
    anat_centre: np.ndarray  # anatomy coordinates of voxel centres, (3, RL, AP, SI)
    u_centre: np.ndarray  # cord-coordinate u of voxel centres (mm)


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
    npl = shape[1] * shape[2]
    base = {c: np.zeros((shape[0], npl), np.float32) for c in contrasts}
    tex = {c: np.zeros((shape[0], npl), np.float32) for c in contrasts}
    frac = {c: np.zeros((shape[0], npl), np.float32) for c in ("cord", "tumor", "cavity", "edema")} if labels else {}
    centre = np.zeros((3, shape[0], npl), np.float32)
    u_c = np.zeros((shape[0], npl), np.float32)
    tex_tab, pshape, cstep = sc.tables["tex"], shape[1:], coarse_step(g.inplane_mm / scale)
    for i in range(shape[0]):
        centre[:, i] = plane + M[:, 0:1] * i
        s_c, u_c[i] = lut.query(centre[1, i], centre[2, i])
        near = np.abs(u_c[i]) < NEAR_MM
        with stage("render:classify"):
            v_c = centre[0, i] - np.interp(s_c, sc.cl.s, sc.cl.x).astype(np.float32)
            centre_pc = classify_plane(sc, s_c, u_c[i], v_c, ~near, pshape, cstep)
        th = np.interp(s_c, sc.cl.s, sc.cl.theta).astype(np.float32)
        sin_t, cos_t = np.sin(th), np.cos(th)
        with stage("render:classify_sub"):
            suv = [(s_c, u_c[i], v_c) if o == 0 else _sub_slice(sc, s_c, u_c[i], centre[0, i], sin_t, cos_t, M[:, 0] * o)
                   for o in offs]
            subs = list(zip(wts, _classify_sub_slices(sc, suv, near, pshape, cstep)))
        with stage("render:accumulate"):
            _accumulate(centre_pc, subs, near, tex_tab, contrasts, i, base, tex, frac)
    rs = lambda a: a.reshape(shape)  # noqa: E731
    return Rendered(aff, {c: rs(a) for c, a in base.items()}, {c: rs(a) for c, a in tex.items()},
                    {c: rs(a) for c, a in frac.items()}, centre.reshape((3,) + shape), rs(u_c))


def _sub_slice(sc: Scene, s_c, u_c, x_c, sin_t, cos_t, shift: np.ndarray) -> tuple[np.ndarray, ...]:
    """Cord coordinates (s, u, v) of a plane shifted by ``shift`` (anatomy mm, < 3 mm: first order)."""
    dx, dy, dz = shift.astype(np.float32)
    s = s_c + dy * sin_t - dz * cos_t
    u = u_c + dy * cos_t + dz * sin_t
    return s, u, x_c + dx - np.interp(s, sc.cl.s, sc.cl.x).astype(np.float32)


def _key(pc: PointClasses) -> np.ndarray:
    """Class key of points: 2 x tissue + cord; -1 in lesions."""
    k = pc.lab.astype(np.int16) * 2 + pc.cord
    k[pc.tumor | pc.cavity | pc.edema] = -1
    return k


def _classify_sub_slices(sc: Scene, suv: list, near: np.ndarray, pshape: tuple[int, int], cstep: int) -> list:
    """Classes of the sub-slice planes at ``np.flatnonzero(near)``; with 3 sub-slices, the middle
    one is only classified where the outer two differ (or hold a lesion), elsewhere it copies them."""
    if len(suv) != 3:
        return [classify_plane(sc, *x, near, pshape, cstep) for x in suv]
    a, b = (classify_plane(sc, *suv[j], near, pshape, cstep) for j in (0, 2))
    ka = _key(a)
    same = (ka == _key(b)) & (ka >= 0)
    diff = np.flatnonzero(~same)
    need = np.zeros(near.size, bool)
    need[np.flatnonzero(near)[diff]] = True
    mid = _empty(a.lab.size)
    _scatter(mid, diff, classify_plane(sc, *suv[1], need, pshape, cstep))
    _scatter(mid, np.flatnonzero(same), _take(a, same))
    return [a, mid, b]


def _take(pc: PointClasses, mask: np.ndarray) -> PointClasses:
    """The points of ``pc`` where ``mask``."""
    return PointClasses(*(getattr(pc, name)[mask] for name in _FIELDS))


def _accumulate(centre: PointClasses, subs: list[tuple[float, PointClasses]], near: np.ndarray,
                tex_tab: np.ndarray, contrasts: tuple[str, ...], i: int, base: dict[str, np.ndarray],
                tex: dict[str, np.ndarray], frac: dict[str, np.ndarray]) -> None:
    """Row ``i`` of the outputs: the centre classes off ``near``, weighted sub-slice sums on it
    (the classes hold the points of ``np.flatnonzero(~near)`` and ``np.flatnonzero(near)``)."""
    for idx, pcs in ((np.flatnonzero(~near), [(1.0, centre)]), (np.flatnonzero(near), subs)):
        sums: dict[str, np.ndarray] = {}
        for w, pc in pcs:
            w = np.float32(w)
            t = tex_tab[pc.lab]
            for c in contrasts:
                val = w * (pc.t2 if c == "t2" else pc.t1)
                _add(sums, "tex_" + c, val * t)
                _add(sums, c, val)
            for name in frac:
                m = getattr(pc, name)
                if name == "cord" or m.any():
                    _add(sums, name, w * m)
        for c in contrasts:  # row views first: 1-D fancy assignment is the fast path
            base[c][i][idx] = sums[c]
            tex[c][i][idx] = sums["tex_" + c]
        for name in frac:
            frac[name][i][idx] = sums.get(name, 0.0)


def _add(sums: dict[str, np.ndarray], key: str, val: np.ndarray) -> None:
    """``sums[key] += val`` (``val`` is stored as is the first time)."""
    if key in sums:
        sums[key] += val
    else:
        sums[key] = val


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
