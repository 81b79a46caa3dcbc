"""Run the cord localizer (stage 1) on every real scan and report it against the manual cord masks.

Usage (from the repository root)::

    python bench/evaluate_real.py -o runs/eval-real
    python bench/evaluate_real.py --registry /path/to/model_registry.json --localizer-version 1.0.0

Scans: every NIfTI under ``--data`` (default ``$IMSCT_SHARED_DATA/real``, else
``../shared/data/real`` beside the repository) whose name is not a mask; a scan's manual cord
mask is ``<stem>_seg-manual`` or ``<stem>_seg`` in the same folder. The localizer runs on each
scan whatever its contrast (the model is trained on T2w: T1w, T2*w and MT rows say so).

Per scan, exactly as the pipeline does (:func:`deepseg_imsct.localize.find_cord`, then
:func:`deepseg_imsct.cropbox.box_for_mask` with the segmenter's spacing, safety factor, patch
and stride, then :func:`deepseg_imsct.resample_back.localization_masks`): the cord mask and the crop box on
the scan's native grid, the cord Dice against the manual mask on that grid, the fraction of the
manual cord inside the crop box, and the box size in mm (S-I x A-P x R-L).

Writes under ``-o``: ``results.md`` and ``results.csv`` (the table), ``masks/`` (predicted cord
and crop box as NIfTI) and ``qc/<scan>.png`` (a sagittal and an axial slice through the cord with
the predicted cord, the manual cord and the crop box; needs matplotlib). Prints the table.
The registry is ``--registry``, else ``$DEEPSEG_IMSCT_REGISTRY``, else the shipped one.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from deepseg_imsct.grid import Grid
    from deepseg_imsct.inference import OnnxModel
    from deepseg_imsct.registry import ModelSpec

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("evaluate_real")

MASK_RE = re.compile(r"_(?:seg|csfseg|label|labels)(?:-[A-Za-z0-9]+)?$")  # stems of label files, not scans
MASK_SUFFIXES = ("_seg-manual", "_seg")  # manual cord mask of <stem>, first found wins
CONTRASTS = (("t2s", "T2*w"), ("t2", "T2w"), ("t1", "T1w"), ("mt", "MT"))  # file-name prefix -> contrast
PLANES = {"L": "sagittal", "R": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


def shared_data() -> Path:
    """The shared real data folder ($IMSCT_SHARED_DATA, else ../shared/data beside the repo),
    the same convention as ``tests/conftest.py``."""
    return Path(os.environ.get("IMSCT_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Row:
    """One scan's line of the table (lengths in mm, volumes in cm³, times in s, fractions 0-1)."""

    scan: str
    contrast: str
    orientation: str
    plane: str
    shape: str
    voxel_mm: str
    manual_mask: str = ""
    cord_found: bool = False
    pred_cord_cm3: float = math.nan
    manual_cord_cm3: float = math.nan
    dice: float = math.nan
    cord_in_box: float = math.nan
    box_mm: str = ""
    localize_s: float = math.nan
    qc_png: str = ""
    error: str = ""


# ------------------------------------------------------------------------------------ discovery


def nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem


def find_scans(root: Path) -> list[tuple[Path, Optional[Path]]]:
    """(scan, manual cord mask or None) for every non-mask NIfTI under ``root``, sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    out = []
    for path in files:
        stem = nifti_stem(path)
        if MASK_RE.search(stem):
            continue
        masks = [path.with_name(stem + s + ext) for s in MASK_SUFFIXES for ext in (".nii.gz", ".nii")]
        out.append((path, next((m for m in masks if m.is_file()), None)))
    return out


def contrast_of(path: Path) -> str:
    """Contrast guessed from the file name (the README of the shared data names them so)."""
    stem = nifti_stem(path).lower()
    return next((c for prefix, c in CONTRASTS if stem.startswith(prefix)), "?")


def plane_of(grid: Grid) -> str:
    """Acquisition plane from the thickest voxel axis ('3D' when isotropic within 10%)."""
    zooms = grid.zooms
    if zooms.max() < 1.1 * zooms.min():
        return "3D"
    return PLANES[nib.aff2axcodes(grid.affine)[int(np.argmax(zooms))]]


# ------------------------------------------------------------------------------------ one scan


@dataclass
class ScanResult:
    """Native-grid arrays of one scan for the QC picture."""

    data: np.ndarray
    grid: Grid
    cord: np.ndarray  # bool, predicted
    box: np.ndarray  # bool, crop box
    manual: Optional[np.ndarray]  # bool or None
    crop_grid: Grid  # the crop box as a Grid (working-grid voxels)


def load_mask(path: Path, grid: Grid) -> np.ndarray:
    """Manual mask as bool on ``grid`` (resampled, nearest neighbour, when on another grid)."""
    from deepseg_imsct.grid import Grid, resample

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    src = Grid(tuple(int(n) for n in data.shape[:3]), np.asarray(img.affine, dtype=float))
    if src.shape == grid.shape and np.allclose(src.affine, grid.affine, atol=1e-3):
        return data > 0
    log.warning("%s is not on its scan's grid: resampled onto it (nearest neighbour)", path)
    return resample((data > 0).astype(np.float32)[None], src, grid, order=0)[0] > 0.5


def evaluate_scan(path: Path, mask_path: Optional[Path], localizer: OnnxModel, seg_spec: ModelSpec) -> tuple[Row, ScanResult]:
    """Localize the cord in one scan, as :func:`deepseg_imsct.pipeline.segment` does, and score it."""
    from deepseg_imsct.evaluate import dice, fraction_inside
    from deepseg_imsct.io import load_volume
    from deepseg_imsct.cropbox import box_for_mask
    from deepseg_imsct.localize import Cord, find_cord, localizer_block, on_block
    from deepseg_imsct.resample_back import localization_masks

    contrast = contrast_of(path)
    vol = load_volume(path, contrast)
    grid = vol.grid
    row = Row(
        scan="", contrast=contrast, orientation="".join(nib.aff2axcodes(grid.affine)), plane=plane_of(grid),
        shape="×".join(map(str, grid.shape)), voxel_mm="×".join(f"{z:.2f}" for z in grid.zooms),
    )
    t0 = time.perf_counter()
    block = localizer_block(grid, localizer.spec)
    cord = find_cord(on_block(vol, block), block, localizer)
    box, work = box_for_mask(cord, block, grid, seg_spec.spacing_mm, seg_spec.safety_factor, seg_spec.patch_size, seg_spec.stride)
    row.localize_s = time.perf_counter() - t0
    crop_grid = box.on(work)
    # back to the native grid, as in pipeline.segment
    cord_native, box_native = localization_masks(None if cord is None else Cord(cord, block), crop_grid, grid)
    row.cord_found = cord is not None
    row.pred_cord_cm3 = float(cord_native.sum() * grid.voxel_volume_mm3 / 1000)
    row.box_mm = "×".join(f"{n * s:.0f}" for n, s in zip(crop_grid.shape, seg_spec.spacing_mm))
    manual = None
    if mask_path is not None:
        manual = load_mask(mask_path, grid)
        row.manual_mask = mask_path.name
        row.manual_cord_cm3 = float(manual.sum() * grid.voxel_volume_mm3 / 1000)
        row.dice = dice(cord_native, manual)
        row.cord_in_box = fraction_inside(box_native, manual)
    return row, ScanResult(vol.data, grid, cord_native, box_native, manual, crop_grid)


# ------------------------------------------------------------------------------------ QC picture


def _slices(res: ScanResult):
    """Scan, masks and box rectangle reoriented to SAR voxels (axis 0 I->S, 1 P->A, 2 L->R)."""
    from deepseg_imsct.grid import apply_affine, reoriented_grid

    reo, ornt = reoriented_grid(res.grid, "SAR")
    turn = lambda a: None if a is None else nib.orientations.apply_orientation(a, ornt)  # noqa: E731
    vox = apply_affine(np.linalg.inv(reo.affine), res.crop_grid.corners_mm())
    return reo, turn(res.data), turn(res.cord), turn(res.manual), vox.min(axis=0), vox.max(axis=0)


def qc_picture(res: ScanResult, row: Row, png: Path, margin_mm: float = 20.0) -> None:
    """Sagittal and axial slices through the cord centre: predicted cord (red), manual cord
    (green), crop box (dashed yellow). Axes in mm from the field of view's first voxel; the view
    shows the field of view plus up to ``margin_mm`` of the box beyond it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    reo, img, cord, manual, lo, hi = _slices(res)
    ref = cord if cord.any() else (manual if manual is not None and manual.any() else None)
    centre = np.round(np.argwhere(ref).mean(axis=0)).astype(int) if ref is not None else np.asarray(img.shape) // 2
    zooms = reo.zooms
    vmin, vmax = np.percentile(img, [1, 99.5])
    views = [  # (title, 2D slicer, vertical axis, horizontal axis)
        (f"sagittal (slice {centre[2]} of {img.shape[2]})", lambda a: a[:, :, centre[2]], 0, 1),
        (f"axial (slice {centre[0]} of {img.shape[0]})", lambda a: a[centre[0]], 1, 2),
    ]
    names = ("I → S [mm]", "P → A [mm]", "L → R [mm]")
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), dpi=80)
    for ax, (title, cut, v, h) in zip(axes, views):
        zv, zh = zooms[v], zooms[h]
        n_v, n_h = cut(img).shape
        edges = lambda n, z: (-0.5 * z, (n - 0.5) * z)  # noqa: E731 - field of view, mm
        (h0, h1), (v0, v1) = edges(n_h, zh), edges(n_v, zv)
        ax.imshow(cut(img), cmap="gray", origin="lower", vmin=vmin, vmax=vmax, extent=(h0, h1, v0, v1), interpolation="nearest")
        for mask, colour in ((manual, "lime"), (cord, "red")):
            if mask is not None and cut(mask).any():
                ax.contour(np.arange(n_h) * zh, np.arange(n_v) * zv, cut(mask).astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        bh, bv = (lo[h] * zh, hi[h] * zh), (lo[v] * zv, hi[v] * zv)
        ax.add_patch(Rectangle((bh[0], bv[0]), bh[1] - bh[0], bv[1] - bv[0], fill=False, edgecolor="yellow", linewidth=1.5, linestyle="--"))
        ax.set_xlim(max(min(h0, bh[0]), h0 - margin_mm) - 1, min(max(h1, bh[1]), h1 + margin_mm) + 1)
        ax.set_ylim(max(min(v0, bv[0]), v0 - margin_mm) - 1, min(max(v1, bv[1]), v1 + margin_mm) + 1)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(names[h], fontsize=8)
        ax.set_ylabel(names[v], fontsize=8)
        ax.tick_params(labelsize=7)
    dice = "" if math.isnan(row.dice) else f", cord Dice {row.dice:.2f}"
    fig.suptitle(f"{row.scan} ({row.contrast}, {row.orientation}){dice}\n"
                 "red: predicted cord, green: manual cord, yellow: crop box", fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


# ------------------------------------------------------------------------------------ report

COLUMNS = (  # (Row field, Markdown title, format)
    ("scan", "scan", "{}"),
    ("contrast", "contrast", "{}"),
    ("orientation", "orient.", "{}"),
    ("plane", "plane", "{}"),
    ("shape", "shape", "{}"),
    ("voxel_mm", "voxel [mm]", "{}"),
    ("cord_found", "cord found", "{}"),
    ("pred_cord_cm3", "pred. cord [cm³]", "{:.2f}"),
    ("manual_cord_cm3", "manual cord [cm³]", "{:.2f}"),
    ("dice", "cord Dice", "{:.3f}"),
    ("cord_in_box", "manual cord in box [%]", "{:.1%}"),
    ("box_mm", "box S×A×R [mm]", "{}"),
    ("localize_s", "localize [s]", "{:.2f}"),
)


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    return fmt.format(value).replace("%", "") if fmt == "{:.1%}" else fmt.format(value)


def markdown(rows: Sequence[Row], header: str) -> str:
    lines = [header, "", "| " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r.error:
            lines.append(f"| {r.scan} | error: {r.error} |" + " |" * (len(COLUMNS) - 2))
        else:
            lines.append("| " + " | ".join(_cell(getattr(r, k), f) for k, _, f in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Row], path: Path) -> None:
    names = list(asdict(rows[0])) if rows else []
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            w.writerow({k: (f"{d[k]:.6g}" if isinstance(d[k], float) else d[k]) for k in names})


# ------------------------------------------------------------------------------------ command


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="folder of real scans (searched recursively); a folder with a real/ subfolder is searched there "
                        "(default: $IMSCT_SHARED_DATA or ../shared/data beside the repository)")
    p.add_argument("-o", type=Path, default=Path("runs/eval-real"), help="output folder (default runs/eval-real)")
    p.add_argument("--registry", type=Path, default=None, help="model registry JSON (default: $DEEPSEG_IMSCT_REGISTRY, else the shipped one)")
    p.add_argument("--task", default=None, help="task name (default: the pipeline's default task)")
    p.add_argument("--localizer-version", default=None, help="localizer version (default: the registry's default)")
    p.add_argument("--segmenter-version", default=None, help="segmenter version whose crop-box settings are used (default: the registry's default)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = its default)")
    p.add_argument("--no-png", action="store_true", help="skip the QC pictures")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("deepseg_imsct").setLevel(logging.WARNING)

    root = args.data if args.data is not None else shared_data()
    if (root / "real").is_dir():
        root = root / "real"
    if not root.is_dir():
        print(f"no real data at {root}: give --data or set IMSCT_SHARED_DATA; nothing to do", file=sys.stderr)
        return 0
    scans = find_scans(root)
    if not scans:
        print(f"no NIfTI scans under {root}; nothing to do", file=sys.stderr)
        return 0

    from deepseg_imsct.download import ensure_model
    from deepseg_imsct.errors import DeepsegError
    from deepseg_imsct.inference import OnnxModel, RuntimeOptions
    from deepseg_imsct.io import mask_image
    from deepseg_imsct.outputs import DEFAULT_TASK
    from deepseg_imsct.registry import load_registry

    try:
        registry = load_registry(args.registry)
        task = registry.task(args.task or DEFAULT_TASK)
        loc_spec = registry.model(task.localizer, args.localizer_version)
        seg_spec = registry.model(task.segmenter, args.segmenter_version)  # spec only: its crop-box settings
        localizer = OnnxModel(ensure_model(loc_spec, progress=False), loc_spec, RuntimeOptions(threads=args.threads))
    except DeepsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    localizer(np.zeros((1, len(loc_spec.contrasts), *loc_spec.patch_size), np.float32))  # warm-up, not timed

    png = not args.no_png
    if png and importlib.util.find_spec("matplotlib") is None:
        log.info("matplotlib is not installed (pip install matplotlib): no QC pictures")
        png = False

    out = args.o
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for path, mask_path in scans:
        name = str(path.relative_to(root))
        name = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
        slug = name.replace(os.sep, "_")
        try:
            row, res = evaluate_scan(path, mask_path, localizer, seg_spec)
        except DeepsegError as exc:
            log.warning("%s: %s", name, exc)
            rows.append(Row(scan=name, contrast=contrast_of(path), orientation="", plane="", shape="", voxel_mm="", error=str(exc)))
            continue
        row.scan = name
        ref = nib.load(str(path))
        nib.save(mask_image(res.cord.astype(np.uint8), ref), str(out / "masks" / f"{slug}_seg-cord.nii.gz"))
        nib.save(mask_image(res.box.astype(np.uint8), ref), str(out / "masks" / f"{slug}_cropbox.nii.gz"))
        if png:
            target = out / "qc" / f"{slug}.png"
            qc_picture(res, row, target)
            row.qc_png = str(target.relative_to(out))
        log.info("%s: Dice %s, localize %.2f s", name, "–" if math.isnan(row.dice) else f"{row.dice:.3f}", row.localize_s)
        rows.append(row)

    header = (f"Localizer {loc_spec.key} (registry {registry.path}); crop box from {seg_spec.key} "
              f"(spacing {list(seg_spec.spacing_mm)} mm, safety factor {list(seg_spec.safety_factor)}); scans under {root}.")
    table = markdown(rows, header)
    (out / "results.md").write_text(table, encoding="utf-8")
    write_csv(rows, out / "results.csv")
    print(table)
    print(f"written: {out / 'results.md'}, {out / 'results.csv'}" + (f", {out / 'qc'}/*.png" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
