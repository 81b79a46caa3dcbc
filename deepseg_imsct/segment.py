"""Stage 2: the segmenter's input on its crop grid, and sliding-window inference over it.

Arrays are channel-first over the working grid: (C, S-I, A-P, R-L) for inputs, (K, ...) for
outputs (sigmoid probabilities). Patch sizes and strides are in working-grid voxels; the crop
grid comes from stage 1 (:func:`cropbox.box_for_mask`).
"""
from __future__ import annotations

import math
from functools import reduce
from itertools import product
from typing import Callable, Sequence

import numpy as np

from .errors import DeepsegError
from .grid import Grid, resample
from .primitives import zscore, zscore_window
from .semantics import NATIVE, GridKind, NormScope, Semantics

Predict = Callable[[np.ndarray], np.ndarray]  # (B, C, *patch) float32 -> (B, K, *patch) float32


def model_input(images: Sequence[tuple[np.ndarray, Grid]], dst: Grid, semantics: Semantics = NATIVE,
                spacing_mm: Sequence[float] = ()) -> np.ndarray:
    """Channels (C, *dst.shape) float32: each image resampled onto ``dst`` and z-scored.

    Statistics are taken inside each image's own field of view; outside it the input is 0.
    With ``semantics.grid`` 'zoom', ``dst`` is a crop of the first image's zoom grid to
    ``spacing_mm``: every image is zoomed with the image order (one on another grid is first
    resampled trilinearly onto the first's), zero-padded; with ``normalization`` 'window' the
    channels are left as they are, for :func:`sliding_window` to normalize each window.
    """
    if semantics.grid is GridKind.ZOOM:
        from .zoomgrid import zoom_grid, zoom_onto

        first = images[0][1]
        zoom = zoom_grid(first, tuple(spacing_mm))
        chans = [zoom_onto(data if _same(grid, first) else resample(data, grid, first, order=1, fill=0.0),
                           zoom, dst, semantics.image_order) for data, grid in images]
    else:
        chans = [resample(data, grid, dst, order=1, fill=np.nan) for data, grid in images]
    if semantics.normalization is NormScope.WINDOW:
        return np.stack([np.nan_to_num(c, nan=0.0) for c in chans])
    return np.stack([zscore(c) for c in chans])


def _same(a: Grid, b: Grid) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-6)


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start indices of windows of ``patch`` voxels every ``stride`` covering ``size`` voxels.

    The last window is flush with the end (when ``size >= patch``); with ``size < patch`` the
    single window starts at 0 and the volume is padded by the caller.
    """
    if size <= patch:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def sliding_window(
    volume: np.ndarray,
    predict: Predict,
    patch: Sequence[int],
    stride: Sequence[int],
    n_out: int,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
    normalize_windows: bool = False,
) -> np.ndarray:
    """Predict ``volume`` (C, X, Y, Z) patch by patch and average overlapping outputs.

    Volumes smaller than a patch are zero-padded and cropped back. Output: (n_out, X, Y, Z)
    float32, the uniform mean of every patch prediction covering each voxel.
    ``normalize_windows``: each window's channels are z-scored on their own
    (:func:`primitives.zscore_window`) before the model sees them.

    Windows form a grid (the product of each axis's :func:`window_starts`), visited in
    row-major order, so for each window the voxels no earlier window wrote, and those no later
    window will touch, are boxes. The first are assigned (no zero-filled sum), the rest added in
    place; the second are divided by their window count (per-axis counts multiplied) while still
    in cache. Same arithmetic, in the same order, as summing every window then dividing.
    """
    patch = tuple(int(p) for p in patch)
    shape = volume.shape[1:]
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch))
    if padded_shape != shape:
        padded = np.zeros((volume.shape[0],) + padded_shape, dtype=np.float32)
        padded[(slice(None),) + tuple(slice(0, s) for s in shape)] = volume
        volume = padded
    axis_starts = [window_starts(s, p, st) for s, p, st in zip(padded_shape, patch, stride)]
    counts = []  # windows covering each index, per axis
    for n, p, starts_ in zip(padded_shape, patch, axis_starts):
        c = np.zeros(n, dtype=np.float32)
        for s in starts_:
            c[s : s + p] += 1.0
        counts.append(c)
    # per axis and window index: (start, first index not written by earlier windows, end, first index a later window writes)
    spans = [
        [(s, max(s, starts_[i - 1] + p) if i else s, s + p, min(starts_[i + 1], s + p) if i + 1 < len(starts_) else s + p)
         for i, s in enumerate(starts_)]
        for starts_, p in zip(axis_starts, patch)
    ]
    windows = list(product(*spans))
    batch_size = max(1, min(int(batch_size), len(windows)))
    total = np.empty((n_out,) + padded_shape, dtype=np.float32)
    buffer = np.empty((batch_size, volume.shape[0]) + patch, dtype=np.float32)
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        batch = buffer[: len(chunk)]
        for i, window in enumerate(chunk):
            batch[i] = volume[(slice(None),) + tuple(slice(lo, hi) for lo, _, hi, _ in window)]
            if normalize_windows:
                batch[i] = np.stack([zscore_window(c) for c in batch[i]])
        pred = predict(batch)
        if pred.shape != (len(chunk), n_out, *patch):
            raise DeepsegError(f"model returned shape {pred.shape} for a batch of {batch.shape}: the model file is not the one the registry describes")
        for window, p in zip(chunk, pred):
            _accumulate(total, p, window, counts)
        if progress:
            progress(len(chunk))
    return total[(slice(None),) + tuple(slice(0, s) for s in shape)]


def _accumulate(total: np.ndarray, pred: np.ndarray, window: Sequence[tuple[int, int, int, int]], counts: Sequence[np.ndarray]) -> None:
    """Add one window's (K, *patch) prediction to ``total`` and finish the voxels no later window covers.

    ``window``: per axis (start, first new index, end, first index of the next window).
    """
    d = len(window)
    for k in range(d):  # the part earlier windows wrote, as d disjoint boxes: add
        if window[k][1] > window[k][0]:
            box = [(a, hi) for _, a, hi, _ in window[:k]] + [window[k][:2]] + [(lo, hi) for lo, _, hi, _ in window[k + 1 :]]
            total[(slice(None),) + tuple(slice(lo, hi) for lo, hi in box)] += pred[(slice(None),) + tuple(slice(lo - w[0], hi - w[0]) for (lo, hi), w in zip(box, window))]
    new = tuple(slice(a, hi) for _, a, hi, _ in window)  # never written: assign
    total[(slice(None),) + new] = pred[(slice(None),) + tuple(slice(a - lo, hi - lo) for lo, a, hi, _ in window)]
    # no later window: divide by the count, one scalar per box of constant count (the per-axis
    # counts are piecewise constant; the product is the same float32 the full outer product has)
    for box in product(*(_runs(c, lo, f) for c, (lo, _, _, f) in zip(counts, window))):
        n = reduce(np.multiply, [np.float32(v) for _, _, v in box])
        if n == 1.0:
            continue
        region = total[(slice(None),) + tuple(slice(lo, hi) for lo, hi, _ in box)]
        if math.frexp(n)[0] == 0.5:  # a power of two: multiplying by 1/n is exact and cheaper
            region *= np.float32(1.0 / n)
        else:
            region /= n


def _runs(count: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, float]]:
    """Maximal runs of equal values in ``count[lo:hi]`` as (start, end, value)."""
    edges = [lo, *(lo + 1 + np.flatnonzero(np.diff(count[lo:hi]))), hi]
    return [(int(a), int(b), float(count[a])) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def n_windows(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> int:
    """Number of windows :func:`sliding_window` runs on a volume of ``shape``."""
    return int(np.prod([len(window_starts(max(s, p), p, st)) for s, p, st in zip(shape, patch, stride)]))
