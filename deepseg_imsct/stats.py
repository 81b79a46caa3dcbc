"""Lesion statistics: volumes, components, size and position along the cord, relative intensity.

Pure functions on numpy masks on one voxel grid (the T2w's) and its 4x4 affine (voxel index ->
scanner mm, RAS+). Units: mm, mm², mm³ and cm³; positions along the cord are arc lengths in mm
from the top (superior end) of the predicted cord, measured along its centreline
(:func:`centreline`). Components are 18-connected, as in post-processing.

Vertebral levels are not estimated (no vertebra is segmented): they are reported as
``"unknown"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .grid import Grid, apply_affine, resample
from .io import Volume
from .primitives import MM3_PER_CM3, connected_components

SLAB_MM = 10.0  # the centreline is the cord's centroid in slabs this thick along its main axis
VERTEBRAL_LEVELS = "unknown"  # no honest estimate: the pipeline segments no vertebra
ROUND = 3  # decimals written


@dataclass(frozen=True)
class Centreline:
    """The cord's centreline: ``nodes`` (K, 3) scanner mm ordered along ``axis`` (unit vector
    pointing superior), their projections ``t`` on it (mm, increasing), arc lengths ``s`` (mm)
    from the cord's top edge, ``length_mm`` (top edge to caudal edge) and ``found`` (False: no
    cord mask, the scanner's S-I axis over the field of view stands in)."""

    nodes: np.ndarray
    t: np.ndarray
    s: np.ndarray
    axis: np.ndarray
    origin: np.ndarray
    length_mm: float
    found: bool

    def position(self, points: np.ndarray) -> np.ndarray:
        """Arc length (mm) from the cord's top edge of (N, 3) scanner points."""
        t = (points - self.origin) @ self.axis
        if len(self.t) == 1:  # s falls as t rises, 1 mm per mm beyond the ends
            return self.s[0] + self.t[0] - t
        inside = np.interp(t, self.t, self.s)
        return np.where(t > self.t[-1], self.s[-1] - (t - self.t[-1]), np.where(t < self.t[0], self.s[0] + (self.t[0] - t), inside))

    def direction(self, point: np.ndarray) -> np.ndarray:
        """Unit tangent of the centreline (pointing superior) nearest ``point`` (scanner mm)."""
        if len(self.t) < 2:
            return self.axis
        t = float((point - self.origin) @ self.axis)
        h = max(SLAB_MM, 1e-6)
        ahead = np.array([np.interp(t + h, self.t, self.nodes[:, i]) for i in range(3)])
        behind = np.array([np.interp(t - h, self.t, self.nodes[:, i]) for i in range(3)])
        d = ahead - behind
        n = np.linalg.norm(d)
        return d / n if n > 0 else self.axis


def thickness_along(affine: np.ndarray, direction: np.ndarray) -> float:
    """A voxel's extent (mm) along a unit direction: sum over the voxel's edges of |edge · d|."""
    return float(np.abs(affine[:3, :3].T @ direction).sum())


def centreline(cord: np.ndarray, affine: np.ndarray) -> Centreline:
    """The centreline of a cord mask (scanner mm): its main axis from the principal component of
    its voxel centres, oriented superior; nodes are the centroids of slabs :data:`SLAB_MM` thick
    along it. Without cord voxels: the scanner's S-I axis through the field of view's centre."""
    idx = np.argwhere(cord)
    if len(idx) < 2:
        return _scanner_axis(cord.shape, affine)
    pts = apply_affine(affine, idx.astype(np.float64))
    origin = pts.mean(axis=0)
    axis = np.linalg.svd(pts - origin, full_matrices=False)[2][0]
    axis = axis if axis[2] >= 0 else -axis
    t = (pts - origin) @ axis
    half = thickness_along(affine, axis) / 2
    slab = max(SLAB_MM, 2 * half)
    bins = np.floor((t - t.min() + half) / slab).astype(int)  # slab edges between voxel centres
    counts = np.bincount(bins)
    keep = counts > 0
    nodes = np.stack([np.bincount(bins, weights=pts[:, i])[keep] / counts[keep] for i in range(3)], axis=1)
    node_t = np.bincount(bins, weights=t)[keep] / counts[keep]
    top, bottom = t.max() + half, t.min() - half
    gaps = np.linalg.norm(np.diff(nodes, axis=0), axis=1)
    from_top = (top - node_t[-1]) + np.concatenate([[0.0], np.cumsum(gaps[::-1])])[::-1]
    length = float(from_top[0] + (node_t[0] - bottom))
    return Centreline(nodes, node_t, from_top, axis, origin, length, True)


def _scanner_axis(shape: tuple[int, ...], affine: np.ndarray) -> Centreline:
    corners = np.array([[x, y, z] for x in (-0.5, shape[0] - 0.5) for y in (-0.5, shape[1] - 0.5) for z in (-0.5, shape[2] - 0.5)])
    mm = apply_affine(affine, corners)
    axis = np.array([0.0, 0.0, 1.0])
    origin = mm.mean(axis=0)
    top, bottom = mm[:, 2].max() - origin[2], mm[:, 2].min() - origin[2]
    return Centreline(origin[None, :], np.array([top]), np.array([0.0]), axis, origin, float(top - bottom), False)


def relative_intensity(image: np.ndarray | None, region: np.ndarray, healthy: np.ndarray) -> float | None:
    """Mean of ``image`` in ``region`` over its mean in ``healthy`` cord; None when undefined."""
    if image is None or not region.any() or not healthy.any():
        return None
    reference = float(np.mean(image[healthy], dtype=np.float64))
    return None if reference == 0 else float(np.mean(image[region], dtype=np.float64)) / reference


def component_stats(region: np.ndarray, affine: np.ndarray, line: Centreline, images: Mapping[str, np.ndarray | None],
                    healthy: np.ndarray) -> dict:
    """One connected component (bool mask): volume (mm³), extent along the cord (mm), largest
    cross-section perpendicular to the cord (mm²), centroid (scanner mm), position along the cord
    (mm from its top and from its caudal end, share of its length) and relative intensities."""
    idx = np.argwhere(region)
    pts = apply_affine(affine, idx.astype(np.float64))
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    centroid = pts.mean(axis=0)
    d = line.direction(centroid)
    thick = thickness_along(affine, d)
    s = line.position(pts)
    top, bottom = float(s.min()) - thick / 2, float(s.max()) + thick / 2
    p = pts @ d
    counts = np.histogram(p, bins=np.arange(p.min() - thick / 2, p.max() + thick, thick))[0]
    out = {
        "volume_mm3": len(idx) * voxel,
        "extent_along_cord_mm": bottom - top,
        "max_axial_area_mm2": float(counts.max()) * voxel / thick,
        "centroid_mm": centroid.tolist(),
        "centre_from_top_mm": float(line.position(centroid[None])[0]),
        "from_top_mm": max(top, 0.0),
        "from_bottom_mm": max(line.length_mm - bottom, 0.0),
        "cord_share": min(max((bottom - top) / line.length_mm, 0.0), 1.0) if line.length_mm > 0 else 0.0,
    }
    for name, image in images.items():
        out[f"{name}_relative_to_cord"] = relative_intensity(image, region, healthy)
    return out


def class_stats(mask: np.ndarray, affine: np.ndarray, line: Centreline, images: Mapping[str, np.ndarray | None],
                healthy: np.ndarray) -> dict:
    """One class: total volume (mm³, cm³), component count, components (largest first); zeros when empty."""
    labels, n = connected_components(mask.astype(bool), connectivity=2)
    voxel = abs(float(np.linalg.det(affine[:3, :3])))
    volume = float(np.count_nonzero(labels)) * voxel
    components = [component_stats(labels == k, affine, line, images, healthy) for k in range(1, n + 1)]
    components.sort(key=lambda c: -c["volume_mm3"])
    return {"volume_mm3": volume, "volume_cm3": volume / MM3_PER_CM3, "n_components": n, "components": components}


def lesion_stats(masks: Mapping[str, np.ndarray], cord: np.ndarray, affine: np.ndarray, t2: np.ndarray | None = None,
                 t1: np.ndarray | None = None, union: str = "whole-tumor") -> dict:
    """Statistics of every class (``masks``: {class: mask}, all on one grid with ``affine``).

    ``cord``: the predicted cord mask (its centreline gives the direction and positions; empty:
    the scanner's S-I axis over the field of view). ``t2``/``t1``: images on the same grid, for
    intensities relative to the healthy cord (cord minus ``union``, or minus every class).
    """
    cord = np.asarray(cord).astype(bool)
    line = centreline(cord, affine)
    lesion = masks[union].astype(bool) if union in masks else np.logical_or.reduce([m.astype(bool) for m in masks.values()])
    healthy = cord & ~lesion
    images = {"t2w": t2, "t1w": t1}
    classes = {name: class_stats(mask, affine, line, images, healthy) for name, mask in masks.items()}
    return _rounded({
        "Cord": {"found": line.found, "length_mm": line.length_mm,
                 "direction": "centreline of the predicted cord" if line.found else "scanner superior-inferior axis (no cord found)"},
        "VertebralLevels": VERTEBRAL_LEVELS,
        "Classes": classes,
    })


def _rounded(value):
    if isinstance(value, float):
        return round(value, ROUND)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def stats_row(stats: Mapping, subject: str) -> dict[str, object]:
    """One flat row: per class the totals and the largest component's size and position."""
    row: dict[str, object] = {"subject": subject, "cord_found": int(stats["Cord"]["found"]),
                              "cord_length_mm": stats["Cord"]["length_mm"], "vertebral_levels": stats["VertebralLevels"]}
    for name, c in stats["Classes"].items():
        largest = c["components"][0] if c["components"] else {}
        row[f"{name}_volume_mm3"] = c["volume_mm3"]
        row[f"{name}_volume_cm3"] = c["volume_cm3"]
        row[f"{name}_n_components"] = c["n_components"]
        for key in ("extent_along_cord_mm", "max_axial_area_mm2", "from_top_mm", "from_bottom_mm", "cord_share"):
            row[f"{name}_largest_{key}"] = largest.get(key, 0.0)
    return row


def tsv_text(rows: list[Mapping[str, object]]) -> str:
    """Rows as tab-separated text with a header line (every row's keys, in first-seen order); None
    and missing values as 'n/a'."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["\t".join(keys)] + ["\t".join("n/a" if r.get(k) is None else str(r[k]) for k in keys) for r in rows]
    return "\n".join(lines) + "\n"


def same_grid(a: Grid, b: Grid) -> bool:
    """Whether two grids have the same shape and (to 1e-4 mm) the same affine."""
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-4)


def case_stats(masks: Mapping[str, np.ndarray], cord: np.ndarray, t2: Volume, t1: Volume) -> dict:
    """:func:`lesion_stats` of one case on the T2w's grid; the T1w is resampled onto it (trilinear)
    when it has its own grid (``T1wResampled`` says so)."""
    resampled = not same_grid(t1.grid, t2.grid)
    t1_data = resample(t1.data, t1.grid, t2.grid, order=1) if resampled else t1.data
    stats = lesion_stats(masks, cord, t2.grid.affine, t2.data, t1_data)
    return {**stats, "T1wResampled": resampled}
