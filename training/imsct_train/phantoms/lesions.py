"""Intramedullary lesions: tumor core, cavity (syrinx / polar cyst) and edema.

Lesions live in cord coordinates: ``s`` (mm along the cord, increasing inferiorly), and the
normalised cross-section ``un`` (AP, + anterior) and ``vn`` (RL), both in units of the local
(swollen) cord semi-axis, so the cord surface is ``un**2 + vn**2 = 1``. Classes are disjoint by
construction with priority tumor > cavity > edema, and every class lies inside the cord.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)
EDEMA_MAX, TUMOR_MAX = 0.95, 1.05  # caps on lesion T2w relative to CSF (lesion signals follow the cord)
P_EDEMA_LIKE = 0.5  # share of non-enhancing tumors whose T2w ratio is drawn from the edema range
# Edema T2w relative to the cord: drawn on 1.1-2.0 as in 2.0, faint draws reflected above EDEMA_T2_MIN
# (generator 2.1). Raters label the hyperintensity they see: at the label's edge the signal is ~60 %
# of the way up, so 1.3 is ~18 % above the cord there, while 1.1 (6 %) drowned in the cord's own
# texture. Reflecting (rather than redrawing on 1.3-2.0) keeps every other case's 2.0 image, so its
# training crop is reused. Absolute edema signal still overlaps healthy cords (0.25 x 1.3 < 0.6).
EDEMA_T2_RANGE, EDEMA_T2_MIN = (1.1, 2.0), 1.3
# generator 2.3: enhancement relative to unsaturated fat (2.2 took fat-saturated fat's signal: enhancing tumors
# darker than the cord in fat-saturated T1w) and at least 1.25 x the cord's T1w (bright-cord T1w scans)
ENH_OVER_CORD = 1.25
FLUID_T1_MAX = 0.95  # cysts and cavities stay below the cord on T1w (generator 2.3: CSF up to the cord's)


def visible_edema_ratio(draw: float) -> float:
    """Edema T2w / cord T2w from a draw on EDEMA_T2_RANGE: draws under EDEMA_T2_MIN are reflected above it."""
    return draw if draw >= EDEMA_T2_MIN else 2 * EDEMA_T2_MIN - draw


@dataclass
class Lesion:
    """One tumor with its own cavity and edema (lengths mm, radii as fraction of cord radius)."""

    kind: str
    s_center: float
    length: float
    radius: float
    off_u: float
    off_v: float
    end_power: float
    margin: float  # width of the intensity ramp at the border (fraction of radius): ill-definition
    irregular: float
    wobble: list[tuple[float, float, float, float]] = field(default_factory=list)  # (amp, f_s, k_phi, phase)
    t2_ratio: float = 1.5  # tumor T2 / cord T2
    t1_ratio: float = 0.9  # non-enhancing tumor T1 / cord T1
    enhancement: str = "avid"  # none | partial | avid | rim
    enh_level: float = 1.0  # enhancing T1 relative to fat T1
    enh_fraction: float = 1.0
    cyst_fraction: float = 0.0  # intratumoral cysts (labelled tumor)
    hemosiderin: bool = False
    swelling: float = 0.3  # cord radius increase at the tumor (fraction)
    cavity_above: float = 0.0
    cavity_below: float = 0.0
    cavity_radius: float = 0.5
    cavity_low_signal: bool = False
    cavity_t2: float = 0.95  # relative to CSF T2
    haustra: float = 0.0
    edema_above: float = 0.0
    edema_below: float = 0.0
    edema_radius: float = 0.85
    edema_t2: float = 1.5  # relative to the cord's T2 (generator 2; 1.x: relative to CSF)

    @property
    def s_top(self) -> float:
        return self.s_center - self.length / 2.0

    @property
    def s_bottom(self) -> float:
        return self.s_center + self.length / 2.0

    def extent(self) -> tuple[float, float]:
        """s range touched by this lesion (tumor, cavity and edema), mm."""
        return (self.s_top - max(self.cavity_above, self.edema_above) - 2.0,
                self.s_bottom + max(self.cavity_below, self.edema_below) + 2.0)


def _tumor_shape(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    """Type-specific size, position and signal of the tumor core."""
    u = rng.uniform
    if kind == "astrocytoma":
        enh = str(rng.choice(["none", "partial", "avid", "rim"], p=[0.35, 0.4, 0.15, 0.1]))
        return dict(length=float(np.clip(np.exp(rng.normal(np.log(40), 0.6)), 8, 220)),
                    radius=u(0.55, 1.0), off_u=u(-0.35, 0.35), off_v=u(-0.4, 0.4),
                    end_power=u(2.0, 4.0), margin=u(0.2, 0.5), irregular=u(0.08, 0.22),
                    t2_ratio=u(1.05, 1.8), t1_ratio=u(0.75, 1.0), enhancement=enh,
                    enh_level=u(0.55, 1.0), enh_fraction=u(0.15, 0.6), cyst_fraction=u(0, 0.25),
                    swelling=u(0.1, 0.6))
    if kind == "ependymoma":
        enh = str(rng.choice(["avid", "partial", "rim", "none"], p=[0.6, 0.2, 0.12, 0.08]))
        return dict(length=float(np.clip(np.exp(rng.normal(np.log(35), 0.55)), 8, 160)),
                    radius=u(0.55, 0.9), off_u=u(-0.1, 0.1), off_v=u(-0.1, 0.1),
                    end_power=u(2.0, 3.5), margin=u(0.04, 0.12), irregular=u(0.03, 0.1),
                    t2_ratio=u(1.4, 2.2), t1_ratio=u(0.75, 1.0), enhancement=enh,
                    enh_level=u(0.8, 1.3), enh_fraction=u(0.4, 0.8), cyst_fraction=u(0, 0.3),
                    swelling=u(0.2, 0.7), hemosiderin=bool(rng.random() < 0.25))
    enh = "avid" if rng.random() < 0.92 else "partial"
    return dict(length=u(4.0, 16.0), radius=u(0.3, 0.6), off_u=-u(0.35, 0.7), off_v=u(-0.25, 0.25),
                end_power=2.0, margin=u(0.03, 0.1), irregular=u(0.02, 0.08), t2_ratio=u(1.4, 2.4),
                t1_ratio=u(0.8, 1.0), enhancement=enh, enh_level=u(0.95, 1.5), enh_fraction=u(0.6, 0.9),
                cyst_fraction=0.0, swelling=u(0.05, 0.35))


def _edema_like(shape: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Non-enhancing tumor that looks like edema (generator 2): T2w ratio and T1w of edema."""
    if shape["enhancement"] == "none" and rng.random() < P_EDEMA_LIKE:
        shape["t2_ratio"], shape["t1_ratio"] = visible_edema_ratio(rng.uniform(*EDEMA_T2_RANGE)), rng.uniform(0.9, 1.0)
    return shape


def _cavity_and_edema(les: Lesion, want_cavity: bool, want_edema: bool, rng: np.random.Generator) -> None:
    """Attach a cavity (polar cysts / syrinx) and edema to a lesion (in place)."""
    u = rng.uniform
    if want_cavity:
        long_syrinx = les.kind == "hemangioblastoma" or rng.random() < 0.3
        lo, hi = (25.0, 160.0) if long_syrinx else (6.0, 45.0)
        side = rng.random()
        if side < 0.45:  # both poles
            les.cavity_above, les.cavity_below = u(lo, hi), u(lo, hi)
        elif side < 0.75:
            les.cavity_above = u(lo, hi)
        else:
            les.cavity_below = u(lo, hi)
        les.cavity_radius = u(0.45, 0.85) if long_syrinx else u(0.35, 0.75)
        if not long_syrinx and rng.random() < 0.35:  # small polar cyst (< 0.5 cm3)
            les.cavity_above, les.cavity_below = (min(v, u(3.0, 12.0)) if v else 0.0 for v in (les.cavity_above, les.cavity_below))
            les.cavity_radius = u(0.3, 0.6)
        les.haustra = u(0.0, 0.4)
        les.cavity_low_signal = bool(rng.random() < 0.18)
        les.cavity_t2 = u(0.35, 0.6) if les.cavity_low_signal else u(0.85, 1.0)
    if want_edema:
        les.edema_above = u(4.0, 60.0) if rng.random() < 0.85 else 0.0
        les.edema_below = u(4.0, 60.0) if (rng.random() < 0.85 or les.edema_above == 0) else 0.0
        les.edema_radius = u(0.6, 1.0)
        les.edema_t2 = visible_edema_ratio(u(*EDEMA_T2_RANGE))  # x cord T2


def conus_s(anatomy: dict[str, Any], ref: Any, tops: dict[str, float]) -> float:
    """s (mm below the foramen magnum) of the conus medullaris, where the cord ends."""
    from .reference import LEVELS

    level = anatomy["conus_level"]
    i = int(level)
    return tops[LEVELS[i]] + (level - i) * (ref.height * anatomy["size"])[i]


def sample_lesions(rng: np.random.Generator, case: dict[str, Any], ref: Any, tops: dict[str, float]) -> list[Lesion]:
    """Place ``case['n_lesions']`` lesions of ``case['tumor_type']`` in the imaged cord."""
    if case["tumor_type"] == "none" or case["n_lesions"] <= 0:
        return []
    s_conus = conus_s(case["anatomy"], ref, tops)
    fov = case["t2"].fov_si_mm
    lo = max(6.0, case["s_center"] - 0.42 * fov)
    hi = min(s_conus - 8.0, case["s_center"] + 0.42 * fov)
    if hi <= lo:  # FOV holds hardly any cord: lesion just above the conus
        lo, hi = s_conus - 40.0, s_conus - 8.0
    lesions: list[Lesion] = []
    for k in range(case["n_lesions"]):
        shape = _edema_like(_tumor_shape(case["tumor_type"], rng), rng)
        shape["length"] = float(min(shape["length"], 0.8 * (hi - lo) + 4.0))
        for _ in range(30):
            sc = rng.uniform(lo + shape["length"] / 2, max(hi - shape["length"] / 2, lo + shape["length"] / 2 + 1))
            if all(abs(sc - o.s_center) > (shape["length"] + o.length) / 2 + 12 for o in lesions):
                break
        else:
            LOG.debug("could not place lesion %d without overlap", k)
            break
        wob = [(float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.03, 0.25)), float(rng.integers(1, 4)),
                float(rng.uniform(0, 2 * np.pi))) for _ in range(3)]
        les = Lesion(kind=case["tumor_type"], s_center=float(sc), wobble=wob, **shape)
        first = k == 0
        _cavity_and_edema(les, case["has_cavity"] and (first or rng.random() < 0.4),
                          case["has_edema"] and (first or rng.random() < 0.5), rng)
        lesions.append(les)
    return lesions


def hard_case_flags(lesions: list[Lesion]) -> dict[str, bool]:
    """Flags of the hard cases: non-enhancing tumor that looks like edema, low-signal cavity."""
    return {
        "hard_nonenhancing": any(l.enhancement == "none" and l.t2_ratio < 1.9 for l in lesions),
        "low_signal_cavity": any(l.cavity_low_signal and (l.cavity_above + l.cavity_below) > 0 for l in lesions),
    }


def swelling_profile(s_grid: np.ndarray, lesions: list[Lesion]) -> np.ndarray:
    """Multiplicative cord-radius factor (>= 1) along ``s_grid`` (mm) due to the lesions."""
    fac = np.ones_like(s_grid)
    for les in lesions:
        d = np.maximum(np.maximum(les.s_top - s_grid, s_grid - les.s_bottom), 0.0)
        fac = np.maximum(fac, 1.0 + les.swelling * np.exp(-(d / (4.0 + 0.15 * les.length)) ** 2))
        for top, length in ((les.s_top, -les.cavity_above), (les.s_bottom, les.cavity_below)):
            if length == 0:
                continue
            a, b = sorted((top, top + length))
            inside = (s_grid > a) & (s_grid < b)
            fac = np.where(inside, np.maximum(fac, 0.85 + 0.55 * les.cavity_radius), fac)
        if les.edema_above + les.edema_below > 0:
            inside = (s_grid > les.s_top - les.edema_above) & (s_grid < les.s_bottom + les.edema_below)
            fac = np.where(inside, np.maximum(fac, 1.08), fac)
    from scipy.ndimage import gaussian_filter1d

    step = float(s_grid[1] - s_grid[0]) if s_grid.size > 1 else 1.0
    return np.maximum(gaussian_filter1d(fac, 4.0 / step), 1.0)


def _wobble(les: Lesion, s: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Smooth boundary perturbation in [-1, 1] (sum of sinusoids in s and angle)."""
    out = np.zeros_like(s)
    for amp, fs, kphi, ph in les.wobble:
        out += amp * np.sin(fs * s + kphi * phi + ph)
    return out / max(sum(w[0] for w in les.wobble), 1e-6)


@dataclass
class LesionLayer:
    """Per-point lesion classes (bool) and signal modifiers for a set of cord points."""

    tumor: np.ndarray
    cavity: np.ndarray
    edema: np.ndarray
    t2: np.ndarray  # signal, relative to CSF T2, NaN where unchanged
    t1: np.ndarray  # signal, relative to the case's T1 table, NaN where unchanged


def _tumor_level(les: Lesion, s: np.ndarray, un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    """Implicit tumor function (< 1 inside)."""
    du, dv = un - les.off_u, vn - les.off_v
    ds = np.abs(s - les.s_center) / (les.length / 2.0)
    rr = np.sqrt(du ** 2 + dv ** 2) / les.radius
    q = (ds ** les.end_power + rr ** 2) ** 0.5
    return q * (1.0 + les.irregular * _wobble(les, s, np.arctan2(dv, du)))


def _cavity_level(les: Lesion, s: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Implicit cavity function (< 1 inside): centred tube adjacent to the tumor poles."""
    q = np.full_like(s, 9.0)
    for pole, length in ((les.s_top, -les.cavity_above), (les.s_bottom, les.cavity_below)):
        if length == 0:
            continue
        start = pole - np.sign(length) * min(3.0, les.length / 3)
        t = (s - start) / (pole + length - start)
        inside = (t > 0) & (t < 1)
        taper = np.clip(np.sin(np.pi * np.clip(t, 0, 1)), 1e-3, 1) ** 0.35
        haus = 1.0 - les.haustra * 0.5 * (1 + np.sin(2 * np.pi * s / 9.0 + les.s_center))
        rc = les.cavity_radius * taper * haus
        q = np.where(inside, np.minimum(q, r / np.maximum(rc, 1e-3)), q)
    return q


def _edema_weight(les: Lesion, s: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Edema strength in [0, 1] (ill-defined: ramps along s and radially)."""
    top, bot = les.s_top - les.edema_above, les.s_bottom + les.edema_below
    ramp_len_top = max(0.35 * les.edema_above, 2.0)
    ramp_len_bot = max(0.35 * les.edema_below, 2.0)
    ws = np.minimum(np.clip((s - top) / ramp_len_top, 0, 1), np.clip((bot - s) / ramp_len_bot, 0, 1))
    wr = np.clip((les.edema_radius - r) / 0.25 + 0.5, 0, 1)
    return ws * wr


def render_lesions(s: np.ndarray, un: np.ndarray, vn: np.ndarray, lesions: list[Lesion],
                   tissue: dict[str, tuple[float, float]], noise: np.ndarray,
                   healthy: tuple[np.ndarray, np.ndarray] | None = None) -> LesionLayer:
    """Lesion classes and T2 / T1 signal at cord points.

    ``tissue`` maps 'cord', 'csf', 'fat' to (T2, T1) signals (lesion signals are set relative to
    the cord's white matter; fat's T1 is unsaturated fat's, the reference of enhancement);
    ``noise`` is a smooth per-point field in [-1, 1] used for partial enhancement and intratumoral
    cysts; ``healthy``: per-point (T2, T1) of the unchanged cord (white or gray matter; default: the
    cord's signal everywhere).
    """
    n = s.size
    tumor, cavity, edema = (np.zeros(n, bool) for _ in range(3))
    t2 = np.full(n, np.nan, np.float32)
    t1 = np.full(n, np.nan, np.float32)
    r = np.sqrt(un ** 2 + vn ** 2)
    cord2, cord1 = tissue["cord"]
    csf2, csf1 = tissue["csf"]
    fat1 = tissue["fat"][1]
    for les in lesions:
        lo, hi = les.extent()
        sel = np.flatnonzero((s > lo) & (s < hi))
        if sel.size == 0:
            continue
        ss, rr, nz = s[sel], r[sel], noise[sel]
        w_e = _edema_weight(les, ss, rr) if les.edema_above + les.edema_below > 0 else np.zeros(sel.size)
        e2 = cord2 + (min(les.edema_t2 * cord2, EDEMA_MAX * csf2) - cord2) * np.clip(w_e * 1.2 + 0.15 * nz, 0, 1)
        q_c = _cavity_level(les, ss, rr)
        q_t = _tumor_level(les, ss, un[sel], vn[sel])
        in_t, in_c = q_t < 1.0, (q_c < 1.0) & ~(q_t < 1.0)
        in_e = (w_e > 0.5) & ~in_t & ~in_c
        edema[sel] |= in_e
        cavity[sel] |= in_c
        tumor[sel] |= in_t
        # image: tumor signal blends over a margin beyond the label boundary (ill-defined types)
        wt = np.clip((1.0 + les.margin - q_t) / (2 * les.margin), 0, 1)
        tum2 = np.minimum(cord2 * les.t2_ratio, TUMOR_MAX * csf2) * (1 + 0.12 * nz)
        tum1 = _tumor_t1(les, q_t, nz, cord1, fat1)
        cyst = (les.cyst_fraction > 0) & (nz > 1 - 2 * les.cyst_fraction) & (q_t < 0.7)
        tum2 = np.where(cyst, csf2 * 0.9, tum2)
        tum1 = np.where(cyst, min(csf1 * 1.3, cord1 * FLUID_T1_MAX), tum1)
        if les.hemosiderin:
            cap = (q_t < 1.0) & (q_t > 0.8) & (np.abs(ss - les.s_center) > 0.4 * les.length)
            tum2 = np.where(cap, cord2 * 0.35, tum2)
        cav2 = les.cavity_t2 * csf2
        cav1 = min(csf1 * (1.0 if not les.cavity_low_signal else 1.8), cord1 * FLUID_T1_MAX)
        touched = (w_e > 0) | (q_c < 1.15) | (wt > 0)
        h2, h1 = (cord2, cord1) if healthy is None else (healthy[0][sel], healthy[1][sel])
        base2 = np.where(np.isnan(t2[sel]), h2, t2[sel])
        base1 = np.where(np.isnan(t1[sel]), h1, t1[sel])
        v2 = np.where(w_e > 0, np.maximum(base2, e2), base2)
        v1 = base1
        wc = np.clip((1.15 - q_c) / 0.3, 0, 1)
        v2, v1 = v2 + (cav2 - v2) * wc, v1 + (cav1 - v1) * wc
        v2, v1 = v2 + (tum2 - v2) * wt, v1 + (tum1 - v1) * wt
        t2[sel] = np.where(touched, v2, t2[sel])
        t1[sel] = np.where(touched, v1, t1[sel])
    return LesionLayer(tumor, cavity & ~tumor, edema & ~tumor & ~cavity, t2, t1)


def _tumor_t1(les: Lesion, q_t: np.ndarray, nz: np.ndarray, cord1: float, fat1: float) -> np.ndarray:
    """Post-gadolinium T1 signal of the tumor core following its enhancement pattern."""
    plain = cord1 * les.t1_ratio * (1 + 0.05 * nz)
    enh = max(fat1 * les.enh_level, cord1 * ENH_OVER_CORD) * (1 + 0.08 * nz)
    if les.enhancement == "none":
        return plain
    if les.enhancement == "avid":
        return enh
    if les.enhancement == "rim":
        return np.where(q_t > 0.65, enh, plain)
    return np.where(nz > 1 - 2 * les.enh_fraction, enh, plain)
