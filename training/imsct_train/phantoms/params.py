"""Case parameters: the cheap, fully random part of a phantom (no image is rendered here).

A case is decided in two steps so that overrides stay consistent: :func:`sample_case_params`
draws the case-level choices (tumor type, presence of cavity / edema, coverage, acquisition,
contrast), applies the overrides, then draws the details (lesion geometry) that depend on them.
Lengths in mm, angles in degrees, intensities relative to CSF on T2w (= 1).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .lesions import Lesion, conus_s, sample_lesions
from .reference import IDX, Reference, load_reference

LOG = logging.getLogger(__name__)

TUMOR_TYPES = ("astrocytoma", "ependymoma", "hemangioblastoma")
TYPE_PROBS = (0.36, 0.39, 0.25)  # roughly the paper's mix
P_HEALTHY = 0.15  # generator 2 (1.x: 0.10): more healthy controls
# presence of cavity / edema given the tumor type (over tumor cases: ~0.66 and ~0.50)
P_CAVITY = {"astrocytoma": 0.55, "ependymoma": 0.70, "hemangioblastoma": 0.80}
P_EDEMA = {"astrocytoma": 0.40, "ependymoma": 0.50, "hemangioblastoma": 0.65}
COVERAGES = ("cervical", "cervical-thoracic", "thoracic", "thoraco-lumbar", "lumbar")
COVERAGE_PROBS = (0.36, 0.22, 0.20, 0.10, 0.12)
ORIENT_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))
MAX_MATRIX = 640
# generator 2.1: acquisitions drawn from their own random stream, so that other cases keep their 2.0 draws
P_ISO_3D = 0.35  # 3D isotropic T2w (SPACE / CUBE / VISTA-like), 0.8-1.2 mm voxels, 40-64 mm across (2.1-2.4: 0.15)
P_SMALL_FOV = 0.15  # small field of view (a targeted or cropped scan): 45-160 mm S-I, 45-120 mm A-P
# generator 2.4: a tight thecal sac (own random stream): 0.68-0.9 x the reference's, down to the 1 mm of CSF
# kept around the cord, as in the toolbox's real t2 (1-2 mm of CSF in front of and behind the cord); with
# roomy sacs only, a cord filling its canal meant a swollen cord, and healthy real cords were called tumor
P_TIGHT_SAC, TIGHT_SAC = 0.35, (0.68, 0.9)


@dataclass
class Grid:
    """Acquisition grid: in-plane (AP, SI) voxel size, slice thickness / spacing, FOV."""

    fov_si_mm: float
    fov_ap_mm: float
    inplane_mm: float
    n_slices: int
    slice_mm: float  # slice thickness (profile width)
    gap_mm: float  # spacing = thickness + gap
    shift_mm: tuple[float, float, float]  # FOV centre offset (RL, AP, SI) from the cord target
    oblique_deg: tuple[float, float, float]  # grid rotation about (RL, AP, SI)
    orientation: str  # stored axis codes, e.g. "RPI"
    n_sub: int = 0  # sub-slices for the slice profile (0: automatic)

    @property
    def spacing_mm(self) -> float:
        return self.slice_mm + self.gap_mm

    def shape(self) -> tuple[int, int, int]:
        """Canonical array shape (RL, AP, SI)."""
        return (self.n_slices, max(int(round(self.fov_ap_mm / self.inplane_mm)), 8),
                max(int(round(self.fov_si_mm / self.inplane_mm)), 8))


@dataclass
class CaseParams:
    """Everything random about one case (JSON-serializable through :meth:`to_dict`)."""

    seed: int
    tumor_type: str  # "none" or one of TUMOR_TYPES
    has_cavity: bool
    has_edema: bool
    n_lesions: int
    coverage: str
    t2: Grid
    t1: Grid
    t1_own_grid: bool
    misreg_mm: tuple[float, float, float]
    misreg_deg: tuple[float, float, float]
    anatomy: dict[str, Any]
    contrast: dict[str, Any]
    artifacts: dict[str, dict[str, Any]]
    lesions: list[Lesion] = field(default_factory=list)
    render_scale: float = 1.0
    reference_source: str = "builtin"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def orientation_codes(rng: np.random.Generator) -> str:
    """Random axis order and directions, e.g. 'RPI', 'PSR', 'LAS'."""
    order = rng.permutation(3)
    return "".join(ORIENT_LETTERS[a][int(rng.integers(2))] for a in order)


def _coverage_window(cov: str, s_top: dict[str, float], rng: np.random.Generator) -> tuple[float, float]:
    """(top s, SI FOV) in mm along the cord for a coverage; s = 0 at the foramen magnum."""
    u = rng.uniform
    if cov == "cervical":
        fov = u(250, 340)
        top = u(-95, -40)
    elif cov == "cervical-thoracic":
        fov = u(340, 450)
        top = u(-80, -25)
    elif cov == "thoracic":
        fov = u(340, 450)
        top = s_top["C6"] + u(-20, 25)
    elif cov == "thoraco-lumbar":
        fov = u(340, 450)
        top = s_top["T5"] + u(-20, 40)
    else:
        fov = u(250, 380)
        top = s_top["T10"] + u(-30, 25)
    return top, fov


def level_tops(heights: np.ndarray) -> dict[str, float]:
    """s of the top of each vertebral segment (mm below the foramen magnum)."""
    from .reference import LEVELS

    tops = np.concatenate([[0.0], np.cumsum(heights)[:-1]])
    return {name: float(t) for name, t in zip(LEVELS, tops)}


def _sample_grid(rng: np.random.Generator, fov_si: float) -> Grid:
    """T2w sagittal acquisition: 10-24 slices of 2-5 mm, 0.3-1.0 mm in-plane."""
    fov_ap = rng.uniform(200, 300)
    inplane = float(np.clip(np.exp(rng.normal(np.log(0.6), 0.28)), 0.3, 1.0))
    inplane = max(inplane, max(fov_si, fov_ap) / MAX_MATRIX)
    thick = float(np.clip(rng.normal(3.6, 0.7), 2.0, 5.0))
    gap = float(rng.choice([0.0, 0.0, 0.1, 0.2, 0.3])) * thick
    n_sl = int(rng.integers(10, 25))
    shift = (float(rng.normal(0, 3)), float(rng.uniform(-0.07, 0.1) * fov_ap), float(rng.normal(0, 12)))
    obl = tuple(float(x) for x in rng.normal(0, [2.5, 2.0, 2.0]))
    return Grid(fov_si, fov_ap, inplane, n_sl, thick, gap, shift, obl, orientation_codes(rng))


def _acquisition_variant(rng: np.random.Generator, g: Grid) -> tuple[Grid, float]:
    """Generator 2.1 variants of the T2w grid: 3D isotropic voxels and / or a small field of view.

    Returns the grid and where the field of view sits in the coverage window (0: at its top, 1: at
    its bottom; 0 when the field of view is the whole window). Always draws the same numbers.
    """
    iso, small = rng.random() < P_ISO_3D, rng.random() < P_SMALL_FOV
    vox, across = rng.uniform(0.8, 1.2), rng.uniform(40.0, 64.0)
    fov_si, fov_ap, where, ap = rng.uniform(45.0, 160.0), rng.uniform(45.0, 120.0), rng.random(), rng.uniform(-0.1, 0.1)
    if iso:
        g = dataclasses.replace(g, inplane_mm=float(vox), slice_mm=float(vox), gap_mm=0.0, n_slices=int(round(across / vox)))
    if not small:
        return g, 0.0
    shift = (g.shift_mm[0], float(ap * fov_ap), g.shift_mm[2] * fov_si / g.fov_si_mm)
    return dataclasses.replace(g, fov_si_mm=float(fov_si), fov_ap_mm=float(fov_ap), shift_mm=shift), float(where)


def _t1_grid(t2: Grid, own: bool, rng: np.random.Generator) -> Grid:
    """T1w grid: the T2w one, or its own (other voxel size, FOV, slices, orientation)."""
    if not own:
        return dataclasses.replace(t2)
    inplane = max(t2.inplane_mm * rng.uniform(0.85, 1.25), max(t2.fov_si_mm, t2.fov_ap_mm) / MAX_MATRIX)
    return Grid(
        fov_si_mm=t2.fov_si_mm * rng.uniform(0.9, 1.05), fov_ap_mm=t2.fov_ap_mm * rng.uniform(0.9, 1.1),
        inplane_mm=float(inplane), n_slices=int(np.clip(t2.n_slices + rng.integers(-2, 3), 10, 24)),
        slice_mm=float(np.clip(t2.slice_mm + rng.uniform(-0.5, 0.5), 2.0, 5.0)), gap_mm=t2.gap_mm,
        shift_mm=tuple(float(a + b) for a, b in zip(t2.shift_mm, rng.normal(0, [1.5, 6, 12]))),
        oblique_deg=tuple(float(a + b) for a, b in zip(t2.oblique_deg, rng.normal(0, 1.0, 3))),
        orientation=orientation_codes(rng) if rng.random() < 0.5 else t2.orientation,
    )


def _sample_anatomy(rng: np.random.Generator, ref: Reference) -> dict[str, Any]:
    """Body size, curvature, scoliosis, soft tissue thicknesses."""
    u = rng.uniform
    subj = ref.subject_scales[int(rng.integers(len(ref.subject_scales)))]
    size = u(0.88, 1.12)
    return {
        "size": size,  # global scale of vertebral heights
        "cord_scale": subj[0] * u(0.93, 1.07),
        "sac_scale": subj[1] * u(0.92, 1.08),
        "conus_level": float(u(IDX["T12"] + 0.6, IDX["L2"] + 0.5)),  # continuous level index
        "lordosis_c_deg": u(-5, 40), "kyphosis_t_deg": u(15, 55), "lordosis_l_deg": u(25, 60),
        "sacral_deg": u(25, 45),
        "pose_deg": tuple(float(x) for x in rng.normal(0, [5.0, 2.5, 2.5])),  # about RL, AP, SI
        "pose_mm": tuple(float(x) for x in rng.normal(0, [8, 20, 60])),
        "scoliosis_mm": float(abs(rng.normal(0, 4)) + (u(4, 12) if rng.random() < 0.15 else 0.0)),
        "scoliosis_period_mm": u(180, 400), "scoliosis_phase": u(0, 2 * np.pi),
        "fat_mm": float(np.exp(rng.normal(np.log(11), 0.45))),  # subcutaneous fat thickness
        "back_mm": u(45, 68),  # cord to posterior skin (neck), scaled by region
        "disc_degeneration": u(0, 1),
        "cord_offset_ap": u(-0.15, 0.25),  # cord position in the sac, fraction of sac radius
        "bowel_phase": int(rng.integers(1 << 30)),
        "airway_mm": u(6, 10),
        "head_tilt_deg": u(-10, 15),
    }


def _sample_contrast(rng: np.random.Generator) -> dict[str, Any]:
    """Per-case intensity jitter (multipliers on the nominal tissue table), fat saturation."""
    return {
        "jitter_seed": int(rng.integers(1 << 30)),
        "jitter_sd": float(rng.uniform(0.05, 0.18)),
        "gamma_t2": float(rng.uniform(0.8, 1.25)), "gamma_t1": float(rng.uniform(0.8, 1.25)),
        "t1_fatsat": bool(rng.random() < 0.2),
        "t2_fatsat": bool(rng.random() < 0.08),
        "flow_void_t1_bright": bool(rng.random() < 0.3),
        "scale_t2": float(rng.uniform(600, 3000)), "scale_t1": float(rng.uniform(600, 3000)),
    }


def _sample_artifacts(rng: np.random.Generator) -> dict[str, Any]:
    """Artifacts applied to one contrast after rendering."""
    u = rng.uniform
    return {
        "noise": float(np.exp(u(np.log(0.008), np.log(0.06)))),  # Rician sigma / CSF T2 level
        "bias_strength": u(0.05, 0.35), "coil_falloff_mm": u(140, 420),
        "blur_vox": u(0.0, 0.8),
        "ringing": u(0.55, 0.95) if rng.random() < 0.35 else 1.0,  # k-space fraction kept
        "ghost": u(0.03, 0.2) if rng.random() < 0.2 else 0.0,  # motion / pulsation ghost
        "ghost_shift": int(rng.integers(4, 40)),
        "fov_cut": u(0.03, 0.18) if rng.random() < 0.2 else 0.0,  # zero band at one edge
        "fov_cut_side": int(rng.integers(4)),
        "sat_band": u(0.1, 0.5) if rng.random() < 0.25 else 0.0,  # anterior saturation band
        "field_seed": int(rng.integers(1 << 30)),
    }


def _apply_overrides(case: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Apply overrides to the case-level dict and its T2w grid fields (in place)."""
    grid_keys = {f.name for f in dataclasses.fields(Grid)}
    for key, val in overrides.items():
        if key in grid_keys:
            setattr(case["t2"], key, type(getattr(case["t2"], key))(val) if not isinstance(val, (tuple, list)) else tuple(val))
        elif key.startswith("t1_") and key[3:] in grid_keys:
            case.setdefault("_t1_overrides", {})[key[3:]] = val
        elif key in case:
            case[key] = val
        elif key in case["anatomy"]:
            case["anatomy"][key] = val
        elif key in case["contrast"]:
            case["contrast"][key] = val
        else:
            raise KeyError(f"unknown phantom override {key!r}")


def sample_case_params(seed: int, data_dir: Optional[str] = None, **overrides: Any) -> CaseParams:
    """Draw all parameters of case ``seed``; ``overrides`` replace case-level choices.

    Recognised overrides: tumor_type ('none' for a healthy cord), has_cavity, has_edema,
    n_lesions, coverage, t1_own_grid, render_scale (<1: coarser voxels, for fast tests), any
    :class:`Grid` field (T2w; prefix ``t1_`` for the T1w own grid), anatomy / contrast keys,
    lesion_overrides (dict applied to every lesion).
    """
    ref = load_reference(data_dir)
    rng = np.random.default_rng([int(seed), 1])
    healthy = rng.random() < P_HEALTHY
    ttype = "none" if healthy else str(rng.choice(TUMOR_TYPES, p=TYPE_PROBS))
    cov = str(rng.choice(COVERAGES, p=COVERAGE_PROBS))
    case: dict[str, Any] = {
        "tumor_type": ttype, "coverage": cov,
        "has_cavity": bool(rng.random() < P_CAVITY.get(ttype, 0.0)),
        "has_edema": bool(rng.random() < P_EDEMA.get(ttype, 0.0)),
        "n_lesions": 0 if healthy else int(rng.choice([1, 2, 3], p=[0.82, 0.13, 0.05])),
        "t1_own_grid": bool(rng.random() < 0.3),
        "render_scale": 1.0, "lesion_overrides": {},
        "anatomy": _sample_anatomy(rng, ref), "contrast": _sample_contrast(rng),
    }
    r6 = np.random.default_rng([int(seed), 6])  # generator 2.4: tight sacs (always the same two draws)
    tight, factor = r6.random() < P_TIGHT_SAC, float(r6.uniform(*TIGHT_SAC))
    if tight:
        case["anatomy"]["sac_scale"] *= factor
    tops = level_tops(ref.height * case["anatomy"]["size"])
    s_top, fov_si = _coverage_window(cov, tops, rng)
    case["t2"], where = _acquisition_variant(np.random.default_rng([int(seed), 4]), _sample_grid(rng, fov_si))
    case["s_center"] = None
    _apply_overrides(case, overrides)
    if case["s_center"] is None:  # FOV top follows the coverage, whatever the (overridden) FOV
        if case["coverage"] != cov:
            s_top = _coverage_window(case["coverage"], tops, np.random.default_rng([int(seed), 5]))[0]
        fov = case["t2"].fov_si_mm
        case["s_center"] = s_top + where * max(fov_si - fov, 0.0) + fov / 2.0
        if where:  # a small field of view images cord: below the foramen magnum, above the conus
            case["s_center"] = float(np.clip(case["s_center"], 0.3 * fov, conus_s(case["anatomy"], ref, tops) - 0.2 * fov))
    if case["tumor_type"] == "none":
        case["n_lesions"], case["has_cavity"], case["has_edema"] = 0, False, False
    elif case["n_lesions"] < 1:
        case["n_lesions"] = 1
    rng2 = np.random.default_rng([int(seed), 2])
    t1 = _t1_grid(case["t2"], bool(case["t1_own_grid"]), rng2)
    for key, val in case.pop("_t1_overrides", {}).items():
        setattr(t1, key, tuple(val) if isinstance(val, (list, tuple)) else type(getattr(t1, key))(val))
    misreg_mm = tuple(float(x) for x in rng2.normal(0, 0.8, 3)) if case["t1_own_grid"] else (0.0, 0.0, 0.0)
    misreg_deg = tuple(float(x) for x in rng2.normal(0, 0.7, 3)) if case["t1_own_grid"] else (0.0, 0.0, 0.0)
    arts = {"t2": _sample_artifacts(rng2), "t1": _sample_artifacts(rng2)}
    rng3 = np.random.default_rng([int(seed), 3])
    lesions = sample_lesions(rng3, case, ref, tops)
    for les in lesions:
        for key, val in case["lesion_overrides"].items():
            setattr(les, key, val)
    return CaseParams(
        seed=int(seed), tumor_type=case["tumor_type"], has_cavity=bool(case["has_cavity"]),
        has_edema=bool(case["has_edema"]), n_lesions=len(lesions), coverage=case["coverage"],
        t2=case["t2"], t1=t1, t1_own_grid=bool(case["t1_own_grid"]), misreg_mm=misreg_mm,
        misreg_deg=misreg_deg, anatomy=case["anatomy"] | {"s_center": float(case["s_center"])},
        contrast=case["contrast"], artifacts=arts, lesions=lesions,
        render_scale=float(case["render_scale"]), reference_source=ref.source,
    )
