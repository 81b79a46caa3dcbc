"""Montage of phantoms: mid-sagittal T2w, T1w (resampled onto the T2w plane) and label overlay,
beside real scans at the same scale (mm)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np
from scipy.ndimage import map_coordinates

from .dataset import LABEL_KEYS, case_paths

LOG = logging.getLogger(__name__)
COLORS = {"edema": (1.0, 0.85, 0.0), "cavity": (0.0, 0.8, 1.0), "tumor": (1.0, 0.1, 0.1)}


def _canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    c = nib.as_closest_canonical(img)
    return np.asarray(c.dataobj, dtype=np.float32), c.affine


def _resample_plane(src: nib.Nifti1Image, aff_ref: np.ndarray, x: int, shape: tuple[int, int]) -> np.ndarray:
    """Sample ``src`` (linear) on sagittal plane ``x`` of a reference grid (affine, (AP, SI) shape)."""
    data = np.asarray(src.dataobj, dtype=np.float32)
    jj, kk = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    vox = np.stack([np.full(jj.size, x), jj.ravel(), kk.ravel(), np.ones(jj.size)])
    ijk = np.linalg.inv(src.affine) @ aff_ref @ vox
    return map_coordinates(data, ijk[:3], order=1, cval=0.0).reshape(shape)


def case_planes(root: Path, sub: str) -> dict[str, np.ndarray]:
    """Mid-sagittal (through the cord) T2w, T1w and labels of a written case, (AP, SI) arrays."""
    paths = case_paths(root, sub)
    t2, aff = _canonical(nib.load(str(paths["t2w"])))
    labs = {k: _canonical(nib.load(str(paths[k])))[0] for k in LABEL_KEYS}
    lesion = labs["whole-tumor"].sum(axis=(1, 2))
    x = int(np.argmax(lesion)) if lesion.any() else int(np.argmax(labs["cord"].sum(axis=(1, 2))))
    t1 = _resample_plane(nib.load(str(paths["t1w"])), aff, x, t2.shape[1:])
    out = {"t2": t2[x], "t1": t1, "vox": np.abs(np.diag(aff)[1:3])}
    out.update({k: labs[k][x] for k in LABEL_KEYS})
    return out


def real_plane(path: Path) -> dict[str, np.ndarray]:
    """Middle sagittal plane of a real scan (any orientation), (AP, SI) array."""
    data, aff = _canonical(nib.load(str(path)))
    return {"t2": data[data.shape[0] // 2], "vox": np.abs(np.diag(aff)[1:3])}


def _show(ax, img: np.ndarray, vox: np.ndarray, window: tuple[float, float], overlay: Optional[dict] = None) -> None:
    """Show an (AP, SI) plane with S up, A right, in mm, cropped to ``window`` (AP, SI) mm."""
    ext = (0, img.shape[0] * vox[0], 0, img.shape[1] * vox[1])
    hi = np.percentile(img, 99.5) or 1.0
    ax.imshow(img.T, origin="lower", cmap="gray", vmin=0, vmax=hi, extent=ext, interpolation="bilinear")
    if overlay:
        rgba = np.zeros(img.T.shape + (4,), np.float32)
        for k, col in COLORS.items():
            m = overlay[k].T > 0
            rgba[m, :3], rgba[m, 3] = col, 0.55
        ax.imshow(rgba, origin="lower", extent=ext, interpolation="nearest")
        ax.contour(overlay["cord"].T, levels=[0.5], colors=["lime"], linewidths=0.5, extent=ext)
    cx, cy = ext[1] / 2, ext[3] / 2
    ax.set_xlim(cx - window[0] / 2, cx + window[0] / 2)
    ax.set_ylim(cy - window[1] / 2, cy + window[1] / 2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")


def render_montage(root: str | Path, subjects: Sequence[str], out_png: str | Path,
                   real: Sequence[str | Path] = (), window_mm: tuple[float, float] = (300.0, 460.0),
                   panel_in: float = 1.9, dpi: int = 80, titles: Optional[Sequence[str]] = None) -> Path:
    """Columns = cases (rows T2w, T1w, overlay) then real scans (T2w only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(root)
    ncol = len(subjects) + len(real)
    ratio = window_mm[1] / window_mm[0]
    fig, axes = plt.subplots(3, ncol, figsize=(panel_in * ncol, panel_in * ratio * 3), squeeze=False,
                             gridspec_kw={"wspace": 0.02, "hspace": 0.02})
    for c, sub in enumerate(subjects):
        pl = case_planes(root, sub)
        _show(axes[0, c], pl["t2"], pl["vox"], window_mm)
        _show(axes[1, c], pl["t1"], pl["vox"], window_mm)
        _show(axes[2, c], pl["t2"], pl["vox"], window_mm, overlay=pl)
        axes[0, c].set_title(titles[c] if titles else sub, fontsize=7)
    for c, path in enumerate(real, start=len(subjects)):
        pl = real_plane(Path(path))
        _show(axes[0, c], pl["t2"], pl["vox"], window_mm)
        axes[0, c].set_title("REAL " + Path(path).name, fontsize=7)
        axes[1, c].axis("off")
        axes[2, c].axis("off")
    for r, name in enumerate(("T2w", "T1w-Gd", "labels")):
        axes[r, 0].set_ylabel(name, fontsize=8)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    _shrink_png(out)
    return out


def _shrink_png(path: Path) -> None:
    """Re-save with a 256-colour palette (keeps the PNG small enough to commit)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL ships with matplotlib
        return
    im = Image.open(path).convert("RGB")
    im.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
