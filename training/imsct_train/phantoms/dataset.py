"""Public API: generate one case in memory, write a BIDS-style dataset, seed splits.

Seed split convention (disjoint by construction):
  train 0-99,999; val 100,000-109,999; test 200,000-209,999; custom: any seed (by default
  from 1,000,000, outside the reserved ranges).
"""
from __future__ import annotations

import csv
import ctypes
import hashlib
import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import nibabel as nib
import numpy as np

from .acquisition import finish_image, fov_cut_mask, texture_field, to_nifti
from .lesions import hard_case_flags
from .params import CaseParams, sample_case_params
from .raster import Rendered, labels_from_fractions, render_grid
from .render import build_scene
from .timing import stage

LOG = logging.getLogger(__name__)
GENERATOR_VERSION = "2.5"  # 2.5: 3D isotropic T2w in 35 % of cases (same draw, higher threshold); 2.4: a tight thecal sac in 35 % of cases (0.68-0.9 x); 2.3: bright-cord T1w scans (35 %: cord 0.6-0.95 of fat, CSF 0.2-1.0 of cord),
# enhancement at least 1.25 x the cord's T1w; 2.2: the cord's gray matter (T2w-bright, T1w-dark H); 2.1: 3D isotropic and small-FOV T2w acquisitions (own random stream: other
# cases keep their 2.0 draws), edema 1.3-2.0 x cord (2.0: 1.1-2.0); 2.0: cord T2w 0.25-0.6 of CSF, lesion
# T2w relative to the cord, edema-like non-enhancing tumors, small polar cysts, 15 % healthy; 1.1: faster
# rendering (same labels as 1.0)
RENDERER_VERSION = "2.3"  # bumped whenever the same parameters would render different images (2.3: T1w tables, 2.2: gray matter)
LABEL_KEYS = ("tumor", "edema", "cavity", "whole-tumor", "cord")
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 100_000),
    "val": (100_000, 110_000),
    "test": (200_000, 210_000),
    "custom": (1_000_000, 2**31 - 1),
}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
TSV_COLUMNS = ("participant_id", "seed", "split", "tumor_type", "coverage", "n_lesions", "has_cavity",
               "has_edema", "hard_nonenhancing", "low_signal_cavity", "t1_own_grid", "orientation_t2",
               "orientation_t1", "voxel_t2_mm", "shape_t2", "tumor_cm3", "edema_cm3", "cavity_cm3",
               "cord_in_fov", "generator_version")


@dataclass
class Case:
    """One phantom: images, labels on the T2w grid and metadata."""

    t2w: nib.Nifti1Image
    t1w: nib.Nifti1Image
    labels: dict[str, nib.Nifti1Image]
    meta: dict[str, Any] = field(default_factory=dict)
    params: Optional[CaseParams] = None


def split_of(seed: int) -> str:
    """Name of the split a seed belongs to ('custom' outside the reserved ranges)."""
    for name in ("train", "val", "test"):
        lo, hi = SPLITS[name]
        if lo <= seed < hi:
            return name
    return "custom"


def split_seeds(split: str, n: int, first: Optional[int] = None) -> list[int]:
    """``n`` consecutive seeds of ``split`` starting at ``first`` (default: the split's start)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLITS)}")
    lo, hi = SPLITS[split]
    start = lo if first is None else int(first)
    if split != "custom" and not (lo <= start and start + n <= hi):
        raise ValueError(f"seeds {start}..{start + n - 1} leave the {split} range [{lo}, {hi})")
    if split == "custom" and any(SPLITS[s][0] <= x < SPLITS[s][1] for x in (start, start + n - 1)
                                 for s in ("val", "test")):
        LOG.warning("custom seeds %d..%d overlap the val/test ranges", start, start + n - 1)
    return list(range(start, start + n))


def _texture(rendered: Rendered, p: CaseParams, grid, scale: float) -> np.ndarray:
    """Texture field of a rendered grid (sampled about every 1.5 mm in-plane, then resized)."""
    step = max(1, int(round(1.5 / (grid.inplane_mm / scale))))
    with stage("texture"):
        return texture_field(rendered.anat_points(step), rendered.u_centre.shape[1:], p.contrast["jitter_seed"] + 17)


def _finish(rendered: Rendered, contrast: str, p: CaseParams, tex: np.ndarray) -> np.ndarray:
    """Acquisition effects for one contrast of a rendered grid with texture ``tex``."""
    with stage("acquisition"):
        return finish_image(rendered.base[contrast], rendered.textured[contrast], tex, rendered.u_centre,
                            p.artifacts[contrast], p.contrast[f"gamma_{contrast}"], p.contrast[f"scale_{contrast}"])


def generate_case(seed: int, data_dir: Optional[str] = None, **overrides: Any) -> Case:
    """Generate case ``seed`` in memory (deterministic). See :func:`sample_case_params` for overrides."""
    t0 = time.perf_counter()
    with stage("params"):
        p = sample_case_params(seed, data_dir=data_dir, **overrides)
    with stage("scene"):
        scene = build_scene(p, data_dir)
    scale = p.render_scale
    contrasts = ("t2",) if p.t1_own_grid else ("t2", "t1")
    with stage("render"):
        r2 = render_grid(scene, p.t2, scene.pose_t2, contrasts, labels=True, scale=scale)
    tex2 = _texture(r2, p, p.t2, scale)
    t2 = _finish(r2, "t2", p, tex2)
    if p.t1_own_grid:
        with stage("render"):
            r1 = render_grid(scene, p.t1, scene.pose_t1, ("t1",), labels=False, scale=scale)
        t1, aff1 = _finish(r1, "t1", p, _texture(r1, p, p.t1, scale)), r1.affine
    else:  # same grid: same texture
        t1, aff1 = _finish(r2, "t1", p, tex2), r2.affine
    with stage("labels+nifti"):
        labs = labels_from_fractions(r2.fractions)
        cut = fov_cut_mask(t2.shape, p.artifacts["t2"])
        if cut is not None:  # no T2w signal there: no label either
            for arr in labs.values():
                arr[cut] = 0
        t2_img = to_nifti(t2, r2.affine, p.t2.orientation, np.int16)
        t1_img = to_nifti(t1, aff1, p.t1.orientation if p.t1_own_grid else p.t2.orientation, np.int16)
        lab_imgs = {k: to_nifti(v, r2.affine, p.t2.orientation, np.uint8) for k, v in labs.items()}
        meta = _metadata(p, scene, labs, r2.affine, t2_img, t1_img)
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    LOG.debug("case %d: %s in %.1f s", seed, p.tumor_type, meta["seconds"])
    return Case(t2_img, t1_img, lab_imgs, meta, p)


def _metadata(p: CaseParams, scene, labs: dict[str, np.ndarray], aff: np.ndarray, t2_img, t1_img) -> dict[str, Any]:
    """Summary of a case for participants.tsv and the JSON sidecar."""
    vox_cm3 = abs(np.linalg.det(aff[:3, :3])) / 1000.0
    flags = hard_case_flags(p.lesions)
    zooms = t2_img.header.get_zooms()[:3]
    return {
        "seed": p.seed, "split": split_of(p.seed), "tumor_type": p.tumor_type, "coverage": p.coverage,
        "n_lesions": p.n_lesions, "has_cavity": bool(labs["cavity"].any()), "has_edema": bool(labs["edema"].any()),
        "hard_nonenhancing": flags["hard_nonenhancing"], "low_signal_cavity": flags["low_signal_cavity"],
        "t1_own_grid": p.t1_own_grid, "orientation_t2": "".join(nib.aff2axcodes(t2_img.affine)),
        "orientation_t1": "".join(nib.aff2axcodes(t1_img.affine)),
        "voxel_t2_mm": "x".join(f"{z:.2f}" for z in zooms), "shape_t2": "x".join(str(s) for s in t2_img.shape),
        "tumor_cm3": round(float(labs["tumor"].sum() * vox_cm3), 3),
        "edema_cm3": round(float(labs["edema"].sum() * vox_cm3), 3),
        "cavity_cm3": round(float(labs["cavity"].sum() * vox_cm3), 3),
        "cord_in_fov": bool(labs["cord"].any()), "generator_version": GENERATOR_VERSION,
        "params_sha256": params_digest(p),
        "reference_source": p.reference_source,
        "lesions": [{"kind": l.kind, "s_center_mm": round(l.s_center, 1), "length_mm": round(l.length, 1),
                     "enhancement": l.enhancement, "cavity_mm": round(l.cavity_above + l.cavity_below, 1),
                     "edema_mm": round(l.edema_above + l.edema_below, 1), "cavity_low_signal": l.cavity_low_signal}
                    for l in p.lesions],
    }


def params_digest(p: CaseParams) -> str:
    """sha256 of a case's parameters and the renderer version: equal digests render identical cases
    (what lets a new generator version reuse the cases it did not change)."""
    text = json.dumps({"renderer": RENDERER_VERSION, "params": p.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def case_paths(root: Path, sub: str) -> dict[str, Path]:
    """BIDS paths of a subject's images and labels."""
    anat = root / sub / "anat"
    der = root / "derivatives" / "labels" / sub / "anat"
    out = {"t2w": anat / f"{sub}_T2w.nii.gz", "t1w": anat / f"{sub}_T1w.nii.gz",
           "json": anat / f"{sub}_T2w.json"}
    out.update({k: der / f"{sub}_T2w_seg-{k}.nii.gz" for k in LABEL_KEYS})
    return out


def write_case(case: Case, root: Path, sub: str) -> None:
    """Write a case in BIDS layout under ``root``."""
    paths = case_paths(root, sub)
    for pth in paths.values():
        pth.parent.mkdir(parents=True, exist_ok=True)
    nib.save(case.t2w, str(paths["t2w"]))
    nib.save(case.t1w, str(paths["t1w"]))
    for k in LABEL_KEYS:
        nib.save(case.labels[k], str(paths[k]))
    side = {"GeneratedBy": "imsct_train.phantoms", "GeneratorVersion": GENERATOR_VERSION, **case.meta}
    paths["json"].write_text(json.dumps(side, indent=1, default=str))


def retain_freed_memory() -> bool:
    """Make glibc serve large arrays from the heap and keep freed memory for reuse (process-wide).

    A case allocates and frees many arrays of tens of MB; by default each one is a fresh ``mmap``
    whose pages fault in again: about 10 % of a case's CPU time on the dev VM. Meant for processes
    that generate many cases (CLI, dataset workers, bench); such a process keeps its peak memory
    (about 0.7 GB for the largest cases). Returns False where unavailable (no glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False


def _worker(job: tuple[int, str, dict[str, Any], str, Optional[str]]) -> dict[str, Any]:
    seed, sub, overrides, root, data_dir = job
    retain_freed_memory()
    case = generate_case(seed, data_dir=data_dir, **overrides)
    write_case(case, Path(root), sub)
    row = {k: case.meta.get(k, "") for k in TSV_COLUMNS}
    row["participant_id"] = sub
    row["seconds"] = case.meta["seconds"]
    return row


def write_participants(root: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write (merge into) ``participants.tsv``, one row per subject, sorted by id."""
    path = root / "participants.tsv"
    old: dict[str, dict[str, Any]] = {}
    if path.exists():
        with path.open() as fh:
            old = {r["participant_id"]: r for r in csv.DictReader(fh, delimiter="\t")}
    for r in rows:
        old[r["participant_id"]] = r
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=TSV_COLUMNS, delimiter="\t", extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for key in sorted(old):
            w.writerow({k: str(old[key].get(k, "n/a")) for k in TSV_COLUMNS})
    desc = root / "dataset_description.json"
    if not desc.exists():
        desc.write_text(json.dumps({"Name": "deepseg-imsct synthetic IMSCT phantoms", "BIDSVersion": "1.8.0",
                                    "DatasetType": "raw", "GeneratedBy": [{"Name": "imsct_train.phantoms",
                                                                           "Version": GENERATOR_VERSION}]}, indent=1))


def write_dataset(out_dir: str | Path, seeds: Iterable[int], jobs: int = 1, subjects: Optional[Sequence[str]] = None,
                  overrides: Optional[dict[str, Any]] = None, data_dir: Optional[str] = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Generate and write ``seeds`` as ``sub-<seed>`` (or ``subjects``) in parallel; returns the rows."""
    from tqdm import tqdm

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    subs = list(subjects) if subjects else [f"sub-{s:07d}" for s in seeds]
    if len(subs) != len(seeds):
        raise ValueError("one subject name per seed")
    jobs_list = [(s, n, dict(overrides or {}), str(root), data_dir) for s, n in zip(seeds, subs)]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(jobs_list), desc="phantoms", unit="case", disable=not progress)
    if jobs > 1 and len(jobs_list) > 1:
        with mp.get_context("spawn").Pool(jobs) as pool:
            for row in pool.imap_unordered(_worker, jobs_list):
                rows.append(row)
                bar.update()
    else:
        for job in jobs_list:
            rows.append(_worker(job))
            bar.update()
    bar.close()
    write_participants(root, rows)
    return sorted(rows, key=lambda r: r["participant_id"])
