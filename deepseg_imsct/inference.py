"""Running an ONNX model: one session per model, z-scoring, and sliding-window stitching.

Arrays are channel-first over the working grid: (C, S-I, A-P, R-L) for inputs, (K, ...) for
outputs (sigmoid probabilities). Patch sizes and strides are in working-grid voxels.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import reduce
from itertools import product
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import DeepsegError
from .registry import ModelSpec

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]  # (B, C, *patch) float32 -> (B, K, *patch) float32


@dataclass(frozen=True)
class RuntimeOptions:
    """ONNX Runtime settings shared by every session of a run."""

    threads: int = 0  # intra-op threads; 0 = ONNX Runtime's default (physical cores)
    batch_size: int = 1  # patches per session.run call: 2 is no faster per patch and touches twice the memory (page faults cost a fresh process ~0.3 s)
    memory_arena: bool = False  # the CPU arena trades memory for little speed on these graphs
    spinning: bool = False  # busy-waiting threads burn laptop battery for no gain here


class OnnxModel:
    """An ONNX Runtime session built once per model and reused for every patch and case."""

    def __init__(self, path: Path, spec: ModelSpec, options: RuntimeOptions = RuntimeOptions()):
        import onnxruntime as ort  # deferred: keeps `import deepseg_imsct` and `-h` fast

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(0, int(options.threads))
        so.inter_op_num_threads = 1
        so.enable_cpu_mem_arena = options.memory_arena
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise DeepsegError(f"model file {path} cannot be loaded by ONNX Runtime ({exc}): reinstall it with -install") from None
        self.spec = spec
        self.path = Path(path)
        self.batch_size = max(1, int(options.batch_size))
        self._check_graph(path)

    def _check_graph(self, path: Path) -> None:
        """The graph's input and output must agree with the registry entry."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        spec = self.spec
        problem = None
        if len(inputs) != 1 or inputs[0].name != spec.input_name:
            problem = f"input named {[i.name for i in inputs]}, registry says '{spec.input_name}'"
        else:
            shape_in, shape_out = inputs[0].shape, outputs[0].shape
            expect_in = [None, len(spec.contrasts), *spec.patch_size]
            expect_out = [None, len(spec.classes), *spec.patch_size]
            for got, want, what in ((shape_in, expect_in, "input"), (shape_out, expect_out, "output")):
                if len(got) != 5 or any(isinstance(g, int) and w is not None and g != w for g, w in zip(got, want)):
                    problem = f"{what} shape {got}, registry expects {['N' if w is None else w for w in want]}"
                    break
        if problem:
            raise DeepsegError(f"model file {path} does not match its registry entry {spec.key}: {problem}; reinstall deepseg-imsct")
        fixed_batch = inputs[0].shape[0]
        if isinstance(fixed_batch, int):
            self.batch_size = fixed_batch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.spec.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        want = (batch.shape[0], len(self.spec.classes), *batch.shape[2:])
        if out.shape != want:
            raise DeepsegError(f"model file {self.path} returned shape {list(out.shape)} for input {list(batch.shape)}, "
                               f"registry entry {self.spec.key} expects {list(want)}: reinstall it with -install")
        return np.asarray(out, dtype=np.float32)


def zscore(data: np.ndarray) -> np.ndarray:
    """Z-score one 3D channel over its finite voxels; NaN (outside the field of view) becomes 0.

    NaN marks voxels outside the acquired field of view, so zero padding never biases the
    statistics. A constant channel becomes all zeros (no division by ~0). Returns float32.
    """
    valid = np.isfinite(data)
    values = data[valid]
    mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
    std = float(values.std(dtype=np.float64)) if values.size else 0.0
    out = np.subtract(data, np.float32(mean), dtype=np.float32)
    if std > 1e-6 * max(1.0, abs(mean)):
        out /= np.float32(std)
    else:
        out[valid] = 0.0
    out[~valid] = 0.0
    return out


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
) -> np.ndarray:
    """Predict ``volume`` (C, X, Y, Z) patch by patch and average overlapping outputs.

    Volumes smaller than a patch are zero-padded and cropped back. Output: (n_out, X, Y, Z)
    float32, the uniform mean of every patch prediction covering each voxel.

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
