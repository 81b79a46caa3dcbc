"""The quality-control report (``-qc FOLDER``): per subject pictures, statistics and flags, and one
static ``index.html`` gathering every run written into the folder.

Per subject (named after the T2w) the folder holds the localizer's cord mask and the crop box
(``<T2w name>_seg-cord.nii.gz``, ``_cropbox.nii.gz``, with sidecars), three PNG pictures
(:mod:`qc_pictures`) and a record ``<T2w name>_qc.json`` (provenance, statistics, flags, pictures),
written together as one atomic, overwrite-protected set (:func:`io.write_outputs`). The index is
then rebuilt from every record in the folder under the folder's lock and replaced atomically, so
runs adding subjects to one report, even at the same time, never lose one another's rows.
"""
from __future__ import annotations

import contextlib
import datetime
import html
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import qc_pictures as pics
from . import transaction
from .errors import DeepsegError
from .io import Volume, write_outputs
from .outputs import CROPBOX, CORD, PROG, QC_KEYS, TEMP_SUFFIX, TOOL_NAME, class_key, nifti_stem, output_paths, sidecar_path, temp_prefix
from .primitives import connected_components
from .stats import same_grid

INDEX = "index.html"
RECORD_SUFFIX = "_qc.json"
GENERATOR = f'<meta name="generator" content="{TOOL_NAME}">'  # marks an index this tool wrote
PICTURES = {"sagittal": "sagittal T2w (top) and T1w (bottom), classes outlined, crop box in cyan",
            "axial": "axial cuts through the largest lesion component (T2w top, T1w bottom; radiological: right on the left)",
            "cord": "the localizer's cord (copper) and the crop box (cyan) on the T2w"}
FLAGS = {"empty": "empty output: no lesion voxel in any class",
         "box_edge": "a lesion touches the crop box's edge: it may extend beyond the segmented region",
         "no_cord": "the localizer found no cord: the whole field of view was segmented",
         "t1_resampled": "the T1w was resampled from its own grid onto the T2w's",
         "warnings": "the run warned (see below)"}


def targets(folder: Path, t2: Path | str) -> dict[str, Path]:
    """{key: path} of one subject's files in the report folder (the QC masks and the record)."""
    paths = output_paths(t2, folder, QC_KEYS)
    return {**paths, "record": Path(folder) / f"{nifti_stem(Path(t2))}{RECORD_SUFFIX}"}


def check_report(folder: Path, t2: Path | str, inputs: Mapping[str, Path | str], overwrite: bool) -> None:
    """Before any work: the subject's files may be written, and an ``index.html`` already in the
    folder is one this tool wrote (or ``overwrite``)."""
    transaction.check_outputs(targets(folder, t2).values(), inputs, overwrite)
    index = Path(folder) / INDEX
    if not overwrite and index.exists() and GENERATOR not in index.read_text(encoding="utf-8", errors="replace"):
        raise DeepsegError(f"{index} was not written by {PROG}: choose another -qc folder, or add -overwrite to replace it")


def flags(masks: Mapping[str, np.ndarray], box: np.ndarray, cord_found: bool, t1_resampled: bool, warnings: list[str]) -> list[str]:
    """The keys of :data:`FLAGS` that apply (``masks``: {output key: bool mask})."""
    lesion = np.logical_or.reduce([m for k, m in masks.items()])
    edge = box & ~_eroded(box)
    found = {"empty": not lesion.any(), "box_edge": bool((lesion & edge).any()), "no_cord": not cord_found,
             "t1_resampled": t1_resampled, "warnings": bool(warnings)}
    return [k for k in FLAGS if found[k]]


def _eroded(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    out = mask.copy()
    for axis in range(3):
        for shift in (-1, 1):
            out &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = connected_components(mask, connectivity=2)
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1) if n else np.zeros_like(mask, dtype=bool)


def pictures(t2: Volume, t1_data: np.ndarray, masks: Mapping[str, np.ndarray], cord: np.ndarray, box: np.ndarray) -> dict[str, np.ndarray]:
    """{picture name: RGB array}: the sagittal mosaic, the axial cuts (when there is a lesion), the cord."""
    affine = t2.grid.affine
    ras = {k: pics.to_ras(m, affine)[0] for k, m in {**masks, CROPBOX: box}.items()}
    t2r, zooms = pics.to_ras(np.asarray(t2.data, dtype=np.float32), affine)
    t1r = pics.to_ras(t1_data, affine)[0]
    cord_r = pics.to_ras(cord, affine)[0]
    lesion = np.logical_or.reduce([m for k, m in ras.items() if k != CROPBOX])
    out = {"sagittal": pics.sagittal_mosaic([t2r, t1r], ras, zooms, lesion if lesion.any() else cord_r, ras[CROPBOX])}
    axial = pics.axial_cuts([t2r, t1r], {k: m for k, m in ras.items() if k != CROPBOX}, zooms, largest_component(lesion))
    if axial is not None:
        out["axial"] = axial
    out["cord"] = pics.cord_view(t2r, cord_r, ras[CROPBOX], zooms)
    return out


def write_report(folder: Path, t2: Volume, t1: Volume, result: Any, provenance: Mapping[str, Any], overwrite: bool) -> dict[str, Path]:
    """Write one subject's QC files (a :class:`pipeline.Result`), then rebuild the index; returns
    {key: path} of what was written, ``index`` included."""
    from .grid import resample

    folder = Path(folder)
    paths = targets(folder, t2.path)
    resampled = not same_grid(t1.grid, t2.grid)
    t1_data = resample(t1.data, t1.grid, t2.grid, order=1) if resampled else t1.data
    masks = {class_key(c): np.asarray(img.dataobj) >= 0.5 for c, img in result.masks.items()}
    cord, box = np.asarray(result.cord.dataobj) > 0, np.asarray(result.box.dataobj) > 0
    stem = nifti_stem(t2.path)
    files = {folder / f"{stem}_qc-{name}.png": pics.png_bytes(rgb) for name, rgb in pictures(t2, t1_data, masks, cord, box).items()}
    record = {**provenance, "Subject": stem, "Written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "Statistics": result.stats, "CordFound": result.cord_found, "T1wResampled": resampled, "Warnings": list(result.warnings),
              "Flags": flags({k: m for k, m in masks.items()}, box, result.cord_found, resampled, result.warnings),
              "Pictures": [{"file": p.name, "name": p.name[len(stem) + 4:-4], "width": w, "height": h}
                           for p, (h, w) in ((p, _png_size(b)) for p, b in files.items())]}
    images = {paths[CORD]: result.cord, paths[CROPBOX]: result.box}
    sidecars = {sidecar_path(paths[k]): {**provenance, "Output": k} for k in QC_KEYS}
    sidecars[paths["record"]] = record
    write_outputs(images, sidecars, check=lambda: check_report(folder, t2.path, provenance["Sources"], overwrite), files=files)
    return {**paths, **{p.name: p for p in files}, "index": rebuild_index(folder)}


def _png_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk."""
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def records(folder: Path) -> list[dict]:
    """Every subject record this tool wrote in ``folder``, by subject name."""
    found = []
    for path in sorted(Path(folder).glob(f"*{RECORD_SUFFIX}")):
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError, TypeError):
            data = json.loads(path.read_text(encoding="utf-8"))
            if data["GeneratedBy"][0]["Name"] == TOOL_NAME:
                found.append(data)
    return sorted(found, key=lambda r: str(r.get("Subject")))


def rebuild_index(folder: Path) -> Path:
    """``index.html`` from every record in ``folder``, under its lock, replaced atomically."""
    index = Path(folder) / INDEX
    with transaction.locked(Path(folder)):
        text = index_html(records(folder))
        transaction.write_atomic(index, text, temp_prefix(index), TEMP_SUFFIX, mode=None)  # as every output, not 0600
    return index


STYLE = """body{font-family:sans-serif;background:#1e1e1e;color:#ddd;margin:1em}table{border-collapse:collapse}
td,th{border:1px solid #555;padding:6px;vertical-align:top}th{background:#333}img{display:block;margin-bottom:4px;max-width:640px;height:auto}
.flag{background:#a33;color:#fff;border-radius:3px;padding:1px 5px;margin:2px;display:inline-block}.ok{color:#7c7}
.stats td,.stats th{border:none;padding:1px 6px;text-align:right}small{color:#aaa}"""


def index_html(rows: list[Mapping[str, Any]]) -> str:
    """The report page: one table row per subject record."""
    body = "".join(_row(r) for r in rows) or '<tr><td colspan="4">no run yet</td></tr>'
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{GENERATOR}<title>{TOOL_NAME} QC</title>"
            f"<style>{STYLE}</style></head><body><h1>{TOOL_NAME} quality control</h1>"
            f"<p>{len(rows)} subject(s). Colours: tumor red, edema green, cavity blue, whole tumor yellow, "
            "cord copper, crop box cyan.</p><table><tr><th>subject</th><th>pictures</th><th>statistics</th><th>flags</th></tr>"
            f"{body}</table></body></html>\n")


def _row(r: Mapping[str, Any]) -> str:
    e = html.escape
    pictures = "".join(f'<a href="{e(p["file"])}"><img src="{e(p["file"])}" width="{int(p["width"])}" height="{int(p["height"])}" '
                       f'alt="{e(p["name"])}"></a><small>{e(PICTURES.get(p["name"], p["name"]))}</small>' for p in r.get("Pictures", []))
    flags = "".join(f'<div class="flag">{e(FLAGS.get(f, f))}</div>' for f in r.get("Flags", [])) or '<span class="ok">none</span>'
    flags += "".join(f"<div><small>{e(w)}</small></div>" for w in r.get("Warnings", []))
    sources = r.get("Sources", {})
    head = (f'<td id="{e(str(r.get("Subject")))}"><b>{e(str(r.get("Subject")))}</b><br><small>{e(str(r.get("Written", "")))}<br>'
            f'{"<br>".join(e(f"{k}: {v}") for k, v in sources.items())}</small></td>')
    return f"<tr>{head}<td>{pictures}</td><td>{_stats_table(r.get('Statistics'))}</td><td>{flags}</td></tr>"


def _stats_table(stats: Mapping[str, Any] | None) -> str:
    if not stats:
        return "<small>no statistics (soft output)</small>"
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{c['volume_cm3']:.3f}</td><td>{c['n_components']}</td>"
        f"<td>{(c['components'][0]['extent_along_cord_mm'] if c['components'] else 0):.1f}</td></tr>"
        for name, c in stats["Classes"].items())
    cord = stats["Cord"]
    return (f'<table class="stats"><tr><th></th><th>cm³</th><th>parts</th><th>length mm</th></tr>{rows}</table>'
            f"<small>cord {cord['length_mm']:.0f} mm{'' if cord['found'] else ' (not found)'}; vertebral levels: "
            f"{html.escape(str(stats.get('VertebralLevels', 'unknown')))}</small>")
