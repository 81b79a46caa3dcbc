"""Voxel grids in scanner space and resampling between them (numpy only).

A :class:`Grid` is a 3D voxel lattice: ``shape`` in voxels and a 4x4 ``affine`` mapping voxel
indices (i, j, k) to scanner coordinates in mm (RAS+, as in NIfTI). Every resampling in the
package goes through :func:`resample`, which maps destination voxel centres through both
affines into the source array: an image and a mask on different grids (another voxel size,
field of view or orientation) are thereby compared in scanner space, never by array index.

The working grid of a model (:func:`working_grid`) is the native grid reoriented (axes permuted
and flipped only) to the model's axis codes, 'SAR' by default: axis 0 inferior->superior,
axis 1 posterior->anterior, axis 2 left->right, then resampled to the model spacing in mm,
centred on the native field of view.
"""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class Grid:
    """A 3D voxel lattice: ``shape`` (voxels) and ``affine`` (voxel index -> scanner mm)."""

    shape: Triple
    affine: np.ndarray

    @classmethod
    def of(cls, img: nib.spatialimages.SpatialImage) -> "Grid":
        return cls(tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64))

    @property
    def zooms(self) -> np.ndarray:
        """Voxel size along each array axis, in mm."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def corners_mm(self) -> np.ndarray:
        """The 8 corners of the field of view (voxel edges, not centres), scanner mm, (8, 3)."""
        lo, hi = -0.5, np.asarray(self.shape) - 0.5
        idx = np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])
        return apply_affine(self.affine, idx)

    def subgrid(self, start: Triple, size: Triple) -> "Grid":
        """The grid of ``array[start : start + size]`` (start may be negative: padding)."""
        shift = np.eye(4)
        shift[:3, 3] = start
        return Grid(tuple(int(s) for s in size), self.affine @ shift)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to (..., 3) points."""
    return points @ affine[:3, :3].T + affine[:3, 3]


def reoriented_grid(grid: Grid, axcodes: str = "SAR") -> tuple[Grid, np.ndarray]:
    """The same voxels with axes permuted/flipped to ``axcodes``; also the nibabel ornt used.

    Apply the returned ``ornt`` to data with :func:`nibabel.orientations.apply_orientation`.
    """
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(grid.affine), nib.orientations.axcodes2ornt(tuple(axcodes))
    )
    affine = grid.affine @ nib.orientations.inv_ornt_aff(ornt, grid.shape)
    shape = tuple(int(grid.shape[int(a)]) for a in np.argsort(ornt[:, 0]))
    return Grid(shape, affine), ornt


def working_grid(native: Grid, spacing_mm: tuple[float, float, float], axcodes: str = "SAR") -> Grid:
    """The model's grid: ``native`` reoriented to ``axcodes`` at ``spacing_mm``, same centre.

    Shape per axis is ``max(1, round(n * zoom / spacing))``; the spacing is exact and the grid
    is centred on the native field of view (half the rounding error on each side).
    """
    reo, _ = reoriented_grid(native, axcodes)
    zooms = reo.zooms
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    n = np.asarray(reo.shape, dtype=np.float64)
    m = np.maximum(1, np.round(n * zooms / spacing)).astype(int)
    scale = spacing / zooms  # reoriented voxels per working voxel
    to_reo = np.eye(4)
    to_reo[:3, :3] = np.diag(scale)
    to_reo[:3, 3] = (n - 1) / 2 - scale * (m - 1) / 2
    return Grid(tuple(int(v) for v in m), reo.affine @ to_reo)


def crop(data: np.ndarray, start: Triple, size: Triple, fill: float = 0.0) -> np.ndarray:
    """``data[..., start:start+size]`` over the last 3 axes, padded with ``fill`` outside."""
    lead = data.shape[:-3]
    out = np.full(lead + tuple(size), fill, dtype=data.dtype)
    src, dst = _overlap(data.shape[-3:], start, size)
    out[(...,) + dst] = data[(...,) + src]
    return out


def uncrop(block: np.ndarray, start: Triple, shape: Triple, fill: float = 0.0, order: str = "C") -> np.ndarray:
    """Inverse of :func:`crop`: put ``block`` back at ``start`` into a ``shape`` array of ``fill``.

    ``order`` is the memory layout of the result ('F': NIfTI's, the fastest to write). With
    ``fill`` 0 the memory outside the block is never touched (zero pages cost no RAM).
    """
    full = block.shape[:-3] + tuple(shape)
    out = np.zeros(full, block.dtype, order=order) if fill == 0 else np.full(full, fill, block.dtype, order=order)
    src, dst = _overlap(shape, start, block.shape[-3:])
    out[(...,) + src] = block[(...,) + dst]
    return out


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[Triple, Triple]:
    """``(start, size)`` of the True voxels of a 3D ``mask``, grown by ``margin`` voxels and clipped
    to the array; size (0, 0, 0) when there are none."""
    start, size = [], []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return (0, 0, 0), (0, 0, 0)
        lo, hi = max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, mask.shape[axis])
        start.append(lo)
        size.append(hi - lo)
    return tuple(start), tuple(size)


def _overlap(shape, start, size) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (in the big array, in the block) of the overlap of a block with an array."""
    big, small = [], []
    for n, s, l in zip(shape, start, size):
        lo, hi = max(s, 0), min(s + l, n)
        hi = max(hi, lo)
        big.append(slice(lo, hi))
        small.append(slice(lo - s, hi - s))
    return tuple(big), tuple(small)


def resample(data: np.ndarray, src: Grid, dst: Grid, order: int = 1, fill: float = 0.0) -> np.ndarray:
    """Sample ``data`` (on ``src``, optionally with leading channel axes) at ``dst``'s voxel centres.

    ``order`` 1 is trilinear, 0 nearest neighbour. Points outside the source field of view
    (beyond half a voxel from the outer voxel centres) get ``fill``; inside that half voxel the
    edge value is held. Output is float32 (order 1) or the input dtype (order 0).
    """
    dst_to_src = np.linalg.solve(src.affine, dst.affine)
    lin = dst_to_src[:3, :3]
    perm = np.argmax(np.abs(lin), axis=0)  # source axis feeding each destination axis
    is_separable = len(set(perm.tolist())) == 3 and np.allclose(
        lin, np.eye(3)[:, perm] * lin[perm, [0, 1, 2]], atol=1e-6 * np.abs(lin).max()
    )
    if order == 1 and data.dtype != np.float32 and not (data.dtype.kind in "iu" and data.dtype.itemsize <= 2):
        data = data.astype(np.float32)  # small integers are interpolated in float32 as they are read
    if is_separable:
        return _resample_separable(data, dst_to_src, perm, dst.shape, order, fill)
    return _resample_general(data, dst_to_src, dst.shape, order, fill)


def _axis_weights(x: np.ndarray, n: int, order: int):
    """Indices and weights of 1D interpolation at source coordinates ``x`` on ``n`` voxels."""
    inside = (x >= -0.5) & (x <= n - 0.5)
    xc = np.clip(x, 0, n - 1)
    if order == 0:
        i0 = np.floor(xc + 0.5).astype(np.intp)  # halves round up, not to even
        return i0, i0, None, inside
    i0 = np.minimum(np.floor(xc).astype(np.intp), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    w = (xc - i0).astype(np.float32)
    return i0, i1, w, inside


def _resample_separable(data, dst_to_src, perm, shape, order, fill):
    """Axis-aligned case (permutation, flips, scaling, shifts): one 1D pass per axis.

    The passes run on the array's own memory layout (``np.take`` first copies any array that is
    not C-contiguous, e.g. a NIfTI's Fortran-ordered voxels), shrinking axes first; only the
    smaller of input and output is transposed to the destination's axis order.
    """
    lead = data.ndim - 3
    src_shape = data.shape[lead:]
    axes = sorted(range(3), key=lambda a: -data.strides[lead + a])  # spatial axes in memory order
    out = data.transpose(*range(lead), *(lead + a for a in axes))
    where = [axes.index(int(p)) for p in perm]  # position of each destination axis in ``out``
    if np.prod(src_shape) < np.prod(shape):  # upsampling: transpose the (smaller) input
        out, where = np.moveaxis(out, [lead + w for w in where], [lead, lead + 1, lead + 2]), [0, 1, 2]
    out = np.ascontiguousarray(out)
    insides = []
    for axis in np.argsort(np.asarray(shape) / np.asarray(src_shape)[perm]):  # shrink first
        scale, offset = dst_to_src[perm[axis], axis], dst_to_src[perm[axis], 3]
        x = scale * np.arange(shape[axis]) + offset
        i0, i1, w, inside = _axis_weights(x, out.shape[lead + where[axis]], order)
        out = _interpolate_axis(out, lead + where[axis], i0, i1, w)
        insides.append((axis, inside))
    out = np.ascontiguousarray(np.moveaxis(out, [lead + w for w in where], [lead, lead + 1, lead + 2]))
    for axis, inside in insides:
        if not inside.all():
            out[(...,) + (slice(None),) * axis + (~inside,) + (slice(None),) * (2 - axis)] = fill
    return out


def _interpolate_axis(data: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """``data[i0] + (data[i1] - data[i0]) * w`` along ``axis`` (``w`` None: ``data[i0]``), in place
    where possible; ``data`` C-contiguous so that ``np.take`` does not copy it first."""
    low = np.take(data, i0, axis=axis)
    if w is None:
        return low
    high = np.take(data, i1, axis=axis)
    if low.dtype != np.float32:  # small integers: exact in float32
        low, high = low.astype(np.float32), high.astype(np.float32)
    high -= low
    high *= w.reshape((-1,) + (1,) * (data.ndim - 1 - axis))
    high += low
    return high


def _resample_general(data, dst_to_src, shape, order, fill):
    """Any affine (oblique, sheared): trilinear gather, one destination slab at a time."""
    lead = data.shape[:-3]
    n = np.asarray(data.shape[-3:])
    out = np.empty(lead + tuple(shape), dtype=np.float32 if order == 1 else data.dtype)
    jj, kk = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for i in range(shape[0]):
        pts = np.stack([np.full_like(jj, i), jj, kk], axis=-1).reshape(-1, 3).astype(np.float64)
        x = apply_affine(dst_to_src, pts)
        parts = [_axis_weights(x[:, a], int(n[a]), order) for a in range(3)]
        inside = parts[0][3] & parts[1][3] & parts[2][3]
        if order == 0:
            vals = data[(...,) + tuple(p[0] for p in parts)]
        else:
            vals = 0.0
            for corner in np.ndindex(2, 2, 2):
                idx = tuple(p[c] for p, c in zip(parts, corner))
                wgt = np.prod([p[2] if c else 1 - p[2] for p, c in zip(parts, corner)], axis=0)
                vals = vals + data[(...,) + idx] * wgt
        vals = np.where(inside, vals, fill)
        out[..., i, :, :] = vals.reshape(lead + (shape[1], shape[2]))
    return out


def inside_fraction(a: Grid, b: Grid, samples: int = 12) -> float:
    """Fraction of ``a``'s field of view that lies inside ``b``'s (scanner space, sampled)."""
    axes = [(np.arange(samples) + 0.5) / samples * n - 0.5 for n in a.shape]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    in_b = apply_affine(np.linalg.solve(b.affine, a.affine), pts)
    inside = np.all((in_b >= -0.5) & (in_b <= np.asarray(b.shape) - 0.5), axis=1)
    return float(inside.mean())


def footprint(src: Grid, dst: Grid) -> tuple[Triple, Triple]:
    """The box ``(start, size)`` of ``dst`` voxels whose centres may fall in ``src``'s field of view."""
    vox = apply_affine(np.linalg.inv(dst.affine), src.corners_mm())
    lo = np.clip(np.floor(vox.min(axis=0)).astype(int), 0, dst.shape)
    hi = np.clip(np.ceil(vox.max(axis=0)).astype(int) + 1, 0, dst.shape)
    return tuple(int(v) for v in lo), tuple(int(v) for v in np.maximum(hi - lo, 0))
