"""Body regions around the spine: outline, head and posterior fossa, neck, thorax, abdomen.

Functions take flat point arrays in cord coordinates (``s, u, v`` mm; see :mod:`geometry`),
the vertebral level ``lv`` and per-point profile values, and write tissue labels in place.
"""
from __future__ import annotations

import numpy as np

from .tissues import T


def wave_noise(s: np.ndarray, u: np.ndarray, v: np.ndarray, phase: int, n: int = 5,
               period: tuple[float, float] = (18.0, 45.0)) -> np.ndarray:
    """Cheap smooth pseudo-random field in about [-1, 1] (sum of random plane waves)."""
    rng = np.random.default_rng(phase)
    out = np.zeros_like(s)
    for _ in range(n):
        d = rng.normal(size=3)
        d *= 2 * np.pi / (np.linalg.norm(d) * rng.uniform(*period))
        d = d.astype(s.dtype)
        out += np.sin(d[0] * s + d[1] * u + d[2] * v + s.dtype.type(rng.uniform(0, 2 * np.pi)))
    return out / np.sqrt(n / 2.0)


def body_half_width(lv: np.ndarray) -> np.ndarray:
    """Right-left half width (mm) of the neck / trunk outline at vertebral level ``lv``."""
    return np.interp(lv, [-1, 6.5, 8.0, 25], [60.0, 62.0, 160.0, 160.0])


def body_outline(lab: np.ndarray, s, u, v, half_w, back, front, fat) -> np.ndarray:
    """Neck / trunk outline with skin and subcutaneous fat (``half_w``: from :func:`body_half_width`);
    returns the inside mask."""
    inside = (u > -back) & (u < front) & (np.abs(v) < half_w) & (s > -25)
    lab[inside] = T.SOFT
    post = inside & (u < -back + 2 + fat)
    ant = inside & (u > front - 2 - 0.7 * fat)
    lab[post | ant] = T.FAT
    lab[inside & ((u < -back + 2) | (u > front - 2))] = T.SKIN
    side = inside & (np.abs(v) > half_w - 2 - 0.6 * fat)
    lab[side] = T.FAT
    return inside


def posterior_muscles(lab: np.ndarray, s, u, v, lv, back, fat, canal_back, phase: int) -> None:
    """Paraspinal (and suboccipital) muscles with fatty septa, behind the posterior elements."""
    m = (u > -back + 2 + fat) & (u < canal_back - 2) & (np.abs(v) < 70) & (s > -25)
    lab[m] = T.MUSCLE
    sub = np.flatnonzero(m)
    if sub.size:
        n = wave_noise(s[sub] * 0.15, u[sub], v[sub], phase, n=4, period=(6.0, 14.0))
        lab[sub[np.abs(n) < 0.08]] = T.FATSOFT
        # midline: interspinous fat / ligament
        mid = sub[(np.abs(v[sub]) < 1.5) & (u[sub] > -back[sub] + 2 + fat[sub] + 4)]
        lab[mid] = T.FATSOFT


def head(lab: np.ndarray, s, u, v, sac_a, sac_b, phase: int, tilt: float) -> None:
    """Skull, scalp, cerebrum, cerebellum with folia, brainstem, cisterns, clivus, sinus."""
    sh, uh = -72.0, -8.0 + 0.3 * tilt
    q = np.sqrt(((s - sh) / 92.0) ** 2 + ((u - uh) / 95.0) ** 2 + (v / 72.0) ** 2)
    sel = np.flatnonzero(q < 1)
    if sel.size == 0:
        return
    ls = lab[sel]
    _in_head(ls, s[sel], u[sel], v[sel], q[sel], sac_a[sel], sac_b[sel], phase)
    lab[sel] = ls


def _in_head(lab: np.ndarray, s, u, v, q, sac_a, sac_b, phase: int) -> None:
    """:func:`head` on the points inside the head ellipsoid (``q`` < 1)."""
    base = np.where(u < -18, 0.55 * (u + 18), np.where(u > 22, -1.1 * (u - 22), 0.0)) + 1.0
    face = (s >= base) & (u > 0)
    lab[face & (lab == T.AIR)] = T.SOFT
    cranial = s < base
    scalp = cranial & (q > 1 - 6.5 / 95)
    lab[scalp] = T.FAT
    lab[scalp & (q > 1 - 2 / 95)] = T.SKIN
    bone = cranial & ~scalp & (q > 1 - 14 / 95)
    plate = (s < base) & (s > base - 8) & (q < 1 - 6.5 / 95)
    fm = (np.abs(u) < sac_a + 3) & (np.abs(v) < sac_b + 4)  # foramen magnum
    bone = (bone | plate) & ~fm
    lab[bone] = T.MARROW
    lab[bone & ((q > 1 - 8.5 / 95) | (q < 1 - 12 / 95) | (s > base - 1.5) | (s < base - 6.5) & plate)] = T.CORTEX
    intra = cranial & ~bone & ~scalp & (s < base - 8 + 8 * fm)
    lab[intra] = T.CSF
    brain = intra & (q < 1 - 16.5 / 95)
    lab[brain] = T.BRAIN
    sub = np.flatnonzero(brain)
    if sub.size:
        n = wave_noise(s[sub], u[sub], v[sub], phase + 1, n=6, period=(7.0, 16.0))
        lab[sub[n > 1.35]] = T.CSF  # sulci
        lab[sub[(q[sub] < 0.62) & (n < 0.9)]] = T.WHITE
    _posterior_fossa(lab, s, u, v, intra, phase)
    _clivus_sinus(lab, s, u, v, s < base + 20)


def _posterior_fossa(lab: np.ndarray, s, u, v, intra: np.ndarray, phase: int) -> None:
    """Cerebellum (folia, arbor vitae), brainstem, fourth ventricle and cisterns (inside ``intra``)."""
    # every part lies in the cerebellum's box or below s = 2 near the brainstem (1 mm margins)
    cereb = (s > -57) & (s < -7) & (u > -74) & (u < -6) & (np.abs(v) < 53)
    stem = (s < 3) & (u > -33) & (u < 25.5) & (np.abs(v) < 23)
    sel = np.flatnonzero(intra & (cereb | stem))
    if sel.size == 0:
        return
    ls = lab[sel]
    _fossa(ls, s[sel], u[sel], v[sel], phase)
    lab[sel] = ls


def _fossa(lab: np.ndarray, s, u, v, phase: int) -> None:
    """:func:`_posterior_fossa` on the intracranial points."""
    qc = np.sqrt(((s + 32) / 24.0) ** 2 + ((u + 40) / 33.0) ** 2 + (v / 52.0) ** 2)
    cb = qc < 1
    lab[cb] = T.CEREBELLUM
    sub = np.flatnonzero(cb)
    if sub.size:
        r = qc[sub] * 30.0 + 0.8 * wave_noise(s[sub], u[sub], v[sub], phase + 2, n=3, period=(15.0, 30.0))
        fis = np.sin(2 * np.pi * r / 3.2) > 0.86
        lab[sub[fis & (qc[sub] > 0.55)]] = T.CSF
        lab[sub[(qc[sub] < 0.45) & (np.abs(v[sub]) < 25) & (np.sin(2 * np.pi * r / 3.2) < -0.2)]] = T.WHITE
    a_bs = np.interp(s, [-90, -60, -45, -30, -15, 0], [10.0, 12.5, 12.5, 9.0, 6.5, 5.8])
    b_bs = np.interp(s, [-90, -60, -45, -30, -15, 0], [14.0, 16.0, 15.0, 11.0, 8.5, 7.5])
    c_bs = np.interp(s, [-90, -60, -45, -30, -15, 0], [4.0, 6.0, 6.0, 2.0, 0.5, 0.0])
    around = (s < 2) & (((u - c_bs) / (a_bs + 6)) ** 2 + (v / (b_bs + 6)) ** 2 < 1)
    lab[around] = T.CSF
    v4 = (s > -50) & (s < -22) & (u > c_bs - a_bs - 8) & (u < c_bs - a_bs + 1) & (np.abs(v) < 6)
    lab[v4] = T.CSF
    magna = (s > -24) & (s < 2) & (u > -32) & (u < -5) & (np.abs(v) < 18) & (lab == T.CEREBELLUM)
    lab[magna & (s > -12)] = T.CSF
    bs = (s < -10) & (s > -95) & (((u - c_bs) / a_bs) ** 2 + (v / b_bs) ** 2 < 1)
    lab[bs] = T.BRAINSTEM


def _clivus_sinus(lab: np.ndarray, s, u, v, zone: np.ndarray) -> None:
    """Clivus (sloping bone in front of the brainstem) and the sphenoid sinus above it (in ``zone``)."""
    sel = np.flatnonzero(zone & (np.abs(v) < 14))  # every part has |v| < 14
    if sel.size == 0:
        return
    ls, s, u, v = lab[sel], s[sel], u[sel], v[sel]
    phi = np.deg2rad(62.0)
    s0, u0 = -4.0, 15.0
    along = -(s - s0) * np.sin(phi) + (u - u0) * np.cos(phi)
    perp = (s - s0) * np.cos(phi) + (u - u0) * np.sin(phi)
    cl = (along > 0) & (along < 45) & (perp > 0) & (perp < 10) & (np.abs(v) < 13)
    ls[cl] = T.MARROW
    ls[cl & ((perp < 1.2) | (perp > 8.8))] = T.CORTEX
    sinus = (along > 28) & (along < 52) & (perp > 10) & (perp < 30) & (np.abs(v) < 12)
    ls[sinus] = T.AIR
    pharynx = (along > -5) & (along < 25) & (perp > 14) & (perp < 26) & (np.abs(v) < 14) & (s > -20)
    ls[pharynx] = T.AIR
    lab[sel] = ls


def neck_front(lab: np.ndarray, s, u, v, lv, vb_front, front, fat, airway: float) -> None:
    """Prevertebral muscle, pharynx / trachea, esophagus, anterior neck soft tissue, tongue."""
    sel = np.flatnonzero((lv > -0.5) & (lv < 11.5) & (u > vb_front) & (u < front - 2 - 0.7 * fat))
    if sel.size == 0:
        return
    ls = lab[sel]
    _neck(ls, s[sel], u[sel], v[sel], lv[sel], vb_front[sel], front[sel], fat[sel], airway)
    lab[sel] = ls


def _neck(lab: np.ndarray, s, u, v, lv, vb_front, front, fat, airway: float) -> None:
    """:func:`neck_front` on the points of its zone."""
    pv = np.interp(lv, [0, 3, 4.5, 7, 11], [4.0, 4.0, 11.0, 12.0, 14.0])
    lab[(u < vb_front + min(4.0, 1.0) + 3)] = T.MUSCLE
    eso = (u >= vb_front + 4) & (u < vb_front + pv) & (np.abs(v) < 10)
    lab[eso] = T.SOFT
    r_ap = airway * np.interp(lv, [0, 3, 5, 11], [1.5, 1.3, 1.0, 1.0])
    r_rl = np.interp(lv, [0, 3, 5, 11], [16.0, 14.0, 9.0, 9.0])
    cu = vb_front + pv + r_ap
    tube = (((u - cu) / r_ap) ** 2 + (v / r_rl) ** 2 < 1) & (lv < 10.5)
    wall = (((u - cu) / (r_ap + 2)) ** 2 + (v / (r_rl + 2)) ** 2 < 1) & (lv < 10.5)
    lab[wall] = T.SOFT
    lab[tube] = T.AIR
    tongue = (lv < 2.2) & (u > cu + r_ap + 2)
    lab[tongue] = T.MUSCLE
    strap = (lv > 2.5) & (lv < 7.5) & (u > front - 2 - 0.7 * fat - 6)
    lab[strap] = T.MUSCLE


def thorax_front(lab: np.ndarray, s, u, v, lv, vb_front, front, fat, tops_t7: float, phase: int) -> None:
    """Descending aorta, mediastinum, heart, lungs, posterior ribs, sternum."""
    sel = np.flatnonzero((lv >= 7.0) & (lv < 19.5) & (u < front - 2 - 0.7 * fat) & (u > -40))
    if sel.size == 0:
        return
    ls = lab[sel]
    _thorax(ls, s[sel], u[sel], v[sel], lv[sel], vb_front[sel], front[sel], fat[sel], tops_t7, phase)
    lab[sel] = ls


def _thorax(lab: np.ndarray, s, u, v, lv, vb_front, front, fat, tops_t7: float, phase: int) -> None:
    """:func:`thorax_front` on the points of its zone."""
    med = np.flatnonzero(u > vb_front)
    lab[med] = T.SOFT
    if med.size:
        lab[med[wave_noise(s[med], u[med], v[med], phase + 5, n=4, period=(20, 50)) > 0.2]] = T.FATSOFT
    lungs = (np.abs(v) > 22 + 0.15 * np.maximum(u - vb_front, 0)) & (u > -30) & (lv > 7.5)
    lab[lungs & (lab != T.CORTEX)] = T.LUNG
    heart = ((((s - tops_t7) / 58.0) ** 2 + ((u - vb_front - 78) / 52.0) ** 2 + ((v + 8) / 62.0) ** 2) < 1)
    lab[heart] = T.HEART
    hs = np.flatnonzero(heart)
    cham = (((s[hs] - tops_t7) / 40.0) ** 2 + ((u[hs] - vb_front[hs] - 82) / 34.0) ** 2 + ((v[hs] + 8) / 44.0) ** 2) < 1
    sub = hs[cham]
    if sub.size:
        lab[sub[wave_noise(s[sub], u[sub], v[sub], phase + 3, n=3, period=(30, 60)) > -0.3]] = T.VESSEL
    aorta = (((u - vb_front - 13) / 12.5) ** 2 + ((v + 15) / 12.5) ** 2 < 1)
    lab[aorta] = T.VESSEL
    sternum = (u > front - 0.7 * fat - 26) & (u < front - 0.7 * fat - 12) & (np.abs(v) < 16) & (lv > 7.4)
    lab[sternum] = T.MARROW
    lab[sternum & ((u < front - 0.7 * fat - 24.8) | (u > front - 0.7 * fat - 13.2))] = T.CORTEX
    pect = (u > front - 0.7 * fat - 12) & (u < front - 2 - 0.7 * fat) & (np.abs(v) > 16)
    lab[pect] = T.MUSCLE


def posterior_ribs(lab: np.ndarray, s, u, v, lv, tops: np.ndarray, heights: np.ndarray, halfwidth) -> None:
    """Rib cross-sections beside the thoracic vertebrae (parasagittal slices)."""
    sel = np.flatnonzero((lv >= 7) & (lv < 19) & (np.abs(v) > halfwidth + 8))
    if sel.size == 0:
        return
    s, u, v, ls = s[sel], u[sel], v[sel], lab[sel]
    i = np.clip(lv[sel].astype(np.int32), 0, tops.size - 1)
    ds = s - (tops[i] + 0.35 * heights[i])
    rib = ((ds / 5.5) ** 2 + ((u + 8 + 0.12 * (np.abs(v) - 30)) / 6.0) ** 2) < 1
    ls[rib] = T.MARROW
    ls[rib & (((ds / 4.2) ** 2 + ((u + 8 + 0.12 * (np.abs(v) - 30)) / 4.7) ** 2) > 1)] = T.CORTEX
    lab[sel] = ls


def abdomen_front(lab: np.ndarray, s, u, v, lv, vb_front, front, fat, halfwidth, canal_front,
                  s_sacrum: float, phase: int) -> None:
    """Aorta / IVC, psoas, bowel loops (fluid, gas, mesenteric fat), abdominal wall, bladder."""
    sel = np.flatnonzero((lv >= 18.5) & (u > canal_front - 8) & (u < front - 2 - 0.7 * fat))
    if sel.size == 0:
        return
    ls = lab[sel]
    _abdomen(ls, s[sel], u[sel], v[sel], lv[sel], vb_front[sel], front[sel], fat[sel], halfwidth[sel], s_sacrum, phase)
    lab[sel] = ls


def _abdomen(lab: np.ndarray, s, u, v, lv, vb_front, front, fat, halfwidth, s_sacrum: float, phase: int) -> None:
    """:func:`abdomen_front` on the points of its zone."""
    wall = (u > front - 2 - 0.7 * fat - 11)
    visc = ~wall & (u > vb_front + 18)
    sub = np.flatnonzero(visc)
    if sub.size:
        n = wave_noise(s[sub], u[sub], v[sub], phase + 4, n=6, period=(14.0, 40.0))
        lab[sub] = T.SOFT
        lab[sub[n > 0.75]] = T.BOWEL
        lab[sub[n < -1.15]] = T.AIR
        lab[sub[(n > -0.35) & (n < 0.05)]] = T.FATSOFT
    lab[~wall & (u <= vb_front + 18) & (u > vb_front)] = T.FATSOFT
    lab[wall] = T.MUSCLE
    psoas = (lv > 19.6) & (lv < 24) & (np.abs(v) > halfwidth - 6) & (np.abs(v) < halfwidth + 30) \
        & (u < vb_front + 12)
    lab[psoas] = T.MUSCLE
    big = lv < 23.0
    lab[big & (((u - vb_front - 12) / 11.0) ** 2 + ((v + 12) / 11.0) ** 2 < 1)] = T.VESSEL
    lab[big & (((u - vb_front - 14) / 10.0) ** 2 + ((v - 16) / 13.0) ** 2 < 1)] = T.VESSEL
    bladder = ((((s - s_sacrum - 85) / 32.0) ** 2 + ((u - vb_front - 70) / 35.0) ** 2 + (v / 45.0) ** 2) < 1)
    lab[bladder] = T.BOWEL
