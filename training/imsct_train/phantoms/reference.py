"""Reference anatomy: vertebral heights and cord / thecal-sac sizes per vertebral level.

Values come from the PAM50 template label maps and the spine-generic manual masks when the
shared data folder is present (read at generation time, never copied), otherwise from a
built-in table derived once from the same sources. All lengths in mm.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

LOG = logging.getLogger(__name__)

#: Vertebra names, top to bottom; "S" is the whole sacrum (S1-S5 fused).
LEVELS: tuple[str, ...] = (
    tuple(f"C{i}" for i in range(1, 8))
    + tuple(f"T{i}" for i in range(1, 13))
    + tuple(f"L{i}" for i in range(1, 6))
    + ("S",)
)
IDX = {name: i for i, name in enumerate(LEVELS)}

# Segment height (vertebral body + one disc, along the cord, mm). C1..L1 derived from PAM50
# disc labels (C1/C2 split 1:2), L2..S from textbook adult values.
_BUILTIN_HEIGHT = np.array(
    [13.0, 25.5, 18.5, 18.5, 16.5, 15.5, 17.0,  # C1-C7
     21.5, 23.0, 23.0, 24.5, 25.5, 25.5, 26.5, 27.0, 26.5, 29.0, 31.5, 31.5,  # T1-T12
     33.5, 35.0, 36.0, 37.0, 36.0,  # L1-L5
     95.0],  # sacrum
    dtype=np.float64,
)
# Cord full diameters (AP, RL) per level in mm (PAM50 medians); 0 below the conus.
_BUILTIN_CORD_AP = np.array([7.0, 7.0, 7.5, 7.5, 7.5, 7.0, 6.5] + [6.0] * 11 + [6.5, 6.0] + [0.0] * 5)
_BUILTIN_CORD_RL = np.array([10.5, 11.0, 12.0, 12.5, 12.5, 12.5, 11.0, 9.5, 9.0, 8.5, 8.5,
                             8.5, 8.5, 8.5, 8.5, 8.5, 9.0, 9.0, 8.5, 6.0] + [0.0] * 5)
# Thecal sac full diameters (AP, RL) per level in mm (PAM50 CSF outer extent, lumbar textbook).
_BUILTIN_SAC_AP = np.array([17.0, 14.5, 13.5, 13.5, 12.5, 13.5, 13.0, 12.5, 12.5, 12.5, 12.5,
                            12.0, 12.5, 12.5, 13.0, 13.0, 14.0, 14.5, 15.5, 16.0, 16.0, 15.5,
                            15.0, 14.5, 10.0])
_BUILTIN_SAC_RL = np.array([23.5, 19.5, 19.0, 18.5, 18.5, 17.5, 15.5, 14.5, 13.5, 13.5, 13.5,
                            13.0, 13.5, 13.5, 13.5, 14.0, 15.5, 16.5, 17.5, 18.0, 19.0, 19.0,
                            18.0, 17.0, 12.0])
# (cord scale, sac scale) relative to PAM50, spread like spine-generic subjects.
_BUILTIN_SUBJECT_SCALES = ((1.00, 1.00), (1.01, 0.94), (0.95, 0.98), (0.94, 0.90),
                           (1.05, 1.10), (1.00, 0.99), (0.95, 1.00), (0.94, 1.01), (0.95, 0.89))


@dataclass(frozen=True)
class Reference:
    """Per-level anatomy table (index = position in :data:`LEVELS`), lengths in mm."""

    height: np.ndarray
    cord_ap: np.ndarray
    cord_rl: np.ndarray
    sac_ap: np.ndarray
    sac_rl: np.ndarray
    subject_scales: tuple[tuple[float, float], ...]
    source: str = "builtin"
    notes: dict = field(default_factory=dict)


def shared_data_dir() -> Path:
    """Shared data folder: ``$IMSCT_SHARED_DATA`` or ``<repo root>/../shared/data``."""
    env = os.environ.get("IMSCT_SHARED_DATA")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[3]
    return (repo_root / ".." / "shared" / "data").resolve()


def builtin_reference() -> Reference:
    """Reference table that needs no external data."""
    return Reference(_BUILTIN_HEIGHT.copy(), _BUILTIN_CORD_AP.copy(), _BUILTIN_CORD_RL.copy(),
                     _BUILTIN_SAC_AP.copy(), _BUILTIN_SAC_RL.copy(), _BUILTIN_SUBJECT_SCALES)


def _extent_mm(mask2d: np.ndarray, axis: int, vox: float) -> float:
    """Extent of a 2D mask along ``axis`` in mm (0 when empty)."""
    idx = np.flatnonzero(mask2d.any(axis=1 - axis))
    return float((idx[-1] - idx[0] + 1) * vox) if idx.size else 0.0


def _pam50_profiles(pam: Path) -> dict[str, np.ndarray]:
    """Per-level heights and cord / CSF diameters from the PAM50 label maps (LAS, 0.5 mm)."""
    import nibabel as nib

    vox = 0.5
    levels = np.asarray(nib.load(pam / "PAM50_levels.nii.gz").dataobj)
    cord = np.asarray(nib.load(pam / "PAM50_cord.nii.gz").dataobj) > 0
    csf = np.asarray(nib.load(pam / "PAM50_csf.nii.gz").dataobj) > 0
    disc = np.asarray(nib.load(pam / "PAM50_label_disc.nii.gz").dataobj)
    disc_z = {int(disc[tuple(i)]): int(i[2]) for i in np.argwhere((disc > 0) & (disc < 30))}
    out = {k: builtin_reference().__dict__[k].copy() for k in ("height", "cord_ap", "cord_rl", "sac_ap", "sac_rl")}
    # level n (1 = C1) spans disc label n (top) to n + 1 (bottom); z increases superiorly
    for n in range(1, 21):
        if n in disc_z and n + 1 in disc_z:
            out["height"][n - 1] = (disc_z[n] - disc_z[n + 1]) * vox
        zs = np.flatnonzero((levels == n).any(axis=(0, 1)))
        if zs.size == 0:
            continue
        zmid = zs[zs.size // 4: max(zs.size // 4 + 1, 3 * zs.size // 4)]
        dims = np.array([[_extent_mm(cord[:, :, z], 1, vox), _extent_mm(cord[:, :, z], 0, vox),
                          _extent_mm(csf[:, :, z], 1, vox), _extent_mm(csf[:, :, z], 0, vox)] for z in zmid])
        med = np.median(dims, axis=0)
        out["cord_ap"][n - 1], out["cord_rl"][n - 1] = med[0], med[1]
        if med[2] > med[0] + 2:
            out["sac_ap"][n - 1], out["sac_rl"][n - 1] = med[2], med[3]
    # PAM50 levels 1-2 put the C1/C2 boundary high: re-split C1+C2 1:2 (atlas ring, axis + dens)
    c12 = out["height"][0] + out["height"][1]
    out["height"][0], out["height"][1] = c12 / 3.0, 2.0 * c12 / 3.0
    return out


def _spine_generic_scales(sg: Path, cord_csa_ref: float, sac_csa_ref: float) -> tuple[tuple[float, float], ...]:
    """(cord, sac) linear scale factors of the spine-generic subjects relative to the reference."""
    import nibabel as nib

    scales = []
    for cord_f in sorted(sg.glob("sub-*/anat/*_T2w_seg-manual.nii.gz")):
        csf_f = Path(str(cord_f).replace("_seg-manual", "_csfseg-manual"))
        if not csf_f.exists():
            continue
        out = []
        for f in (cord_f, csf_f):
            img = nib.load(str(f))
            m = np.asarray(img.dataobj) > 0.5
            zooms = img.header.get_zooms()[:3]
            nz = max(int(m.any(axis=(0, 1)).sum()), 1)
            out.append(m.sum() * zooms[0] * zooms[1] / nz)  # mean cross-section, mm^2
        cord_csa, csf_csa = out
        scales.append((float(np.sqrt(cord_csa / cord_csa_ref)),
                       float(np.sqrt((cord_csa + csf_csa) / sac_csa_ref))))
    return tuple(scales)


@functools.lru_cache(maxsize=4)
def load_reference(data_dir: Optional[str] = None) -> Reference:
    """Reference anatomy from ``data_dir`` (default :func:`shared_data_dir`), else built-in."""
    root = Path(data_dir) if data_dir else shared_data_dir()
    pam = root / "labels" / "pam50"
    if not (pam / "PAM50_levels.nii.gz").exists():
        LOG.debug("no PAM50 under %s: built-in anatomy table", root)
        return builtin_reference()
    try:
        prof = _pam50_profiles(pam)
        cerv = slice(2, 7)  # C3-C7, where spine-generic masks lie
        cord_csa = float(np.mean(np.pi / 4 * prof["cord_ap"][cerv] * prof["cord_rl"][cerv]))
        sac_csa = float(np.mean(np.pi / 4 * prof["sac_ap"][cerv] * prof["sac_rl"][cerv]))
        scales = _spine_generic_scales(root / "labels" / "spine-generic", cord_csa, sac_csa)
        return Reference(prof["height"], prof["cord_ap"], prof["cord_rl"], prof["sac_ap"],
                         prof["sac_rl"], scales or _BUILTIN_SUBJECT_SCALES, source="pam50+spine-generic")
    except Exception as exc:  # corrupt / partial shared data: stay usable
        LOG.warning("could not read reference anatomy from %s (%s): built-in table", root, exc)
        return builtin_reference()
