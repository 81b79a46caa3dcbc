"""Coarse-to-fine classification of the points of a plane (one slice or sub-slice of a grid).

A plane holds ``n0 x n1`` points, flat in row-major order. Its cord coordinates are given by a
function of flat indices (``coords(idx) -> (s, u, v)``, mm), so that only the points that are
classified are ever located. Results are written into dense per-plane label arrays; the lesion
points (signal or class changed by a lesion) come back as a :class:`render.LesionPoints` with
flat plane indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .render import LesionPoints, PointClasses, Scene, classify, concat_lesions, no_lesion

COARSE_MM = 1.3  # block size (mm) of the coarse-to-fine classification of a plane
Coords = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def coarse_step(inplane_mm: float) -> int:
    """Voxels per coarse-block side of :func:`classify_plane` (about :data:`COARSE_MM`; 1 = exact)."""
    return max(1, int(COARSE_MM / inplane_mm))


@dataclass
class PlaneGrid:
    """Block lattice of a plane of ``shape`` points for blocks of ``c x c`` (last ones partial)."""

    shape: tuple[int, int]
    c: int
    corners: np.ndarray  # flat plane index of each block corner, (nb0 + 1, nb1 + 1)
    corner_of: np.ndarray  # per plane point: flat index into ``corners`` if it is one, else -1

    @property
    def blocks(self) -> tuple[int, int]:
        return self.corners.shape[0] - 1, self.corners.shape[1] - 1


def plane_grid(shape: tuple[int, int], c: int) -> PlaneGrid:
    """The :class:`PlaneGrid` of a plane; corners at multiples of ``c`` and at the last row / column."""
    n0, n1 = shape
    rows, cols = (np.minimum(np.arange(-(-n // c) + 1) * c, n - 1) for n in shape)
    corners = rows[:, None] * n1 + cols[None, :]
    corner_of = np.full(n0 * n1, -1, np.int64)
    corner_of[corners.ravel()] = np.arange(corners.size)  # a duplicated last row / column: either
    return PlaneGrid(shape, c, corners, corner_of)


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


def _expand(blocks: np.ndarray, c: int, shape2: tuple[int, int]) -> np.ndarray:
    """Per-block values repeated over their ``c x c`` voxels, cropped to ``shape2``, flat."""
    return np.repeat(np.repeat(blocks, c, axis=0)[:shape2[0]], c, axis=1)[:, :shape2[1]].ravel()


def _write(pc: PointClasses, idx: np.ndarray, lab: np.ndarray, cord: np.ndarray) -> LesionPoints:
    """Store classes of the plane points ``idx``; their lesion points, re-indexed to the plane."""
    lab[idx] = pc.lab
    cord[idx] = pc.cord
    return pc.les.take(slice(None), idx[pc.les.idx])


def classify_plane(sc: Scene, coords: Coords, need: np.ndarray, grid: PlaneGrid,
                   lab: np.ndarray, cord: np.ndarray) -> LesionPoints:
    """Classes of the plane points where ``need`` (flat mask) into ``lab`` (uint8) and ``cord``
    (bool), flat plane arrays written in place; returns the lesion points.

    Coarse to fine: the corners of ``c x c`` blocks (``c * voxel`` about :data:`COARSE_MM`) are
    classified; blocks whose four corners share tissue and cord class and hold no lesion class are
    filled with it (table signals), the other blocks are classified voxel by voxel (corner voxels
    reused). Structures thinner than a block that touch none of its corners can be missed there.
    The result of a point depends only on its block, not on ``need`` elsewhere.
    """
    c, shape2 = grid.c, grid.shape
    if c <= 1 or not need.any():
        idx = np.flatnonzero(need)
        return _write(classify(sc, *coords(idx)), idx, lab, cord) if idx.size else no_lesion()
    nb0, nb1 = grid.blocks
    needb = _block_any(need.reshape(shape2), c)
    cneed = np.zeros((nb0 + 1, nb1 + 1), bool)
    for da in (0, 1):
        for db in (0, 1):
            cneed[da:da + nb0, db:db + nb1] |= needb
    pc = classify(sc, *coords(grid.corners[cneed]))
    k = pc.lab.astype(np.int16) * 2 + pc.cord
    k[pc.les.idx[pc.les.classed]] = -2
    key = np.full((nb0 + 1, nb1 + 1), -1, np.int16)
    key[cneed] = k
    k0 = key[:-1, :-1]
    uni = needb & (k0 >= 0) & (k0 == key[1:, :-1]) & (k0 == key[:-1, 1:]) & (k0 == key[1:, 1:])
    unif = _expand(uni, c, shape2)
    fill = need & unif
    np.copyto(lab, _expand((k0 >> 1).astype(np.uint8), c, shape2), where=fill)
    np.copyto(cord, _expand((k0 & 1).astype(bool), c, shape2), where=fill)
    rest = np.flatnonzero(need & ~unif)
    return concat_lesions(_refine(sc, coords, rest, pc, cneed, grid, lab, cord))


def _refine(sc: Scene, coords: Coords, rest: np.ndarray, pc: PointClasses, cneed: np.ndarray,
            grid: PlaneGrid, lab: np.ndarray, cord: np.ndarray) -> list[LesionPoints]:
    """Classes of the points ``rest`` of mixed blocks: corner voxels copied from the corner classes
    ``pc`` (of the corners ``cneed``), the others classified."""
    g = grid.corner_of[rest]
    corner = g >= 0
    cpos = np.full(cneed.size, -1, np.int64)
    cpos[cneed.ravel()] = np.arange(pc.lab.size)
    src, dst = cpos[g[corner]], rest[corner]
    lab[dst] = pc.lab[src]
    cord[dst] = pc.cord[src]
    row = np.full(pc.lab.size, -1, np.int64)
    row[pc.les.idx] = np.arange(pc.les.idx.size)
    lr = row[src]
    out = [pc.les.take(lr[lr >= 0], dst[lr >= 0])]
    other = rest[~corner]
    if other.size:
        out.append(_write(classify(sc, *coords(other)), other, lab, cord))
    return out
