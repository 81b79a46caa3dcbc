"""Sliding-window stitching, z-scoring, and the ONNX session wrapper."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from deepseg_imsct.errors import DeepsegError
from deepseg_imsct.inference import OnnxModel, RuntimeOptions
from deepseg_imsct.primitives import zscore
from deepseg_imsct.segment import n_windows, sliding_window, window_starts
from deepseg_imsct.registry import load_registry

from onnx_models import pointwise_model, write_registry


@pytest.mark.parametrize(
    "size,patch,stride,expected",
    [
        (128, 128, 64, [0]),
        (100, 128, 64, [0]),
        (256, 128, 64, [0, 64, 128]),
        (200, 128, 64, [0, 64, 72]),
        (64, 32, 32, [0, 32]),
        (70, 32, 32, [0, 32, 38]),
    ],
)
def test_window_starts_cover_and_end_flush(size, patch, stride, expected):
    starts = window_starts(size, patch, stride)
    assert starts == expected
    covered = np.zeros(max(size, patch), bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered[:size].all()


def double(batch: np.ndarray) -> np.ndarray:
    return 2.0 * batch[:, :1]


@pytest.mark.parametrize("shape", [(64, 64, 16), (96, 80, 40), (20, 30, 8), (128, 128, 32)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_stitching_a_pointwise_model_equals_direct_prediction(shape, batch_size):
    volume = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    out = sliding_window(volume, double, (32, 32, 16), (16, 16, 16), 1, batch_size)
    assert out.shape == (1, *shape)
    np.testing.assert_allclose(out, double(volume[None])[0], rtol=1e-6)


def test_overlaps_are_averaged_uniformly():
    """A model answering the patch's index shows each voxel's uniform mean over its windows."""
    calls = []

    def index_model(batch):
        out = np.empty((batch.shape[0], 1, *batch.shape[2:]), np.float32)
        for i in range(batch.shape[0]):
            out[i] = len(calls)
            calls.append(i)
        return out

    out = sliding_window(np.zeros((1, 8, 4, 4), np.float32), index_model, (4, 4, 4), (2, 4, 4), 1)
    # windows start at 0, 2, 4 along axis 0 -> patch ids 0, 1, 2
    np.testing.assert_allclose(out[0, :, 0, 0], [0, 0, 0.5, 0.5, 1.5, 1.5, 2, 2])
    assert n_windows((8, 4, 4), (4, 4, 4), (2, 4, 4)) == 3 == len(calls)


def test_wrong_model_output_shape_is_a_clear_error():
    with pytest.raises(DeepsegError, match="model returned shape"):
        sliding_window(np.zeros((1, 8, 8, 8), np.float32), lambda b: b[:, :, :4], (8, 8, 8), (8, 8, 8), 1)


def test_zscore_uses_field_of_view_only():
    data = np.full((4, 4, 4), np.nan, np.float32)
    data[:2] = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    out = zscore(data)
    inside = out[:2]
    assert abs(inside.mean()) < 1e-6 and abs(inside.std() - 1) < 1e-5
    assert np.all(out[2:] == 0)
    assert np.all(zscore(np.full((3, 3, 3), 7.0, np.float32)) == 0)  # constant: zeros, no NaN


def test_onnx_model_runs_and_checks_its_graph(tmp_path: Path):
    registry = load_registry(write_registry(tmp_path))
    spec = registry.model("seg")
    model = OnnxModel(tmp_path / "seg.onnx", spec, RuntimeOptions(threads=1))
    x = np.random.default_rng(0).normal(size=(2, 2, *spec.patch_size)).astype(np.float32)
    y = model(x)
    w = 8.0 * np.array([[0.0, 1.0], [1.0, 0.0], [1.0, -1.0], [0.5, 0.5]])
    b = -8.0 * np.array([1, 1, 1, 0.5])
    expected = 1 / (1 + np.exp(-(np.einsum("kc,nc...->nk...", w, x) + b[None, :, None, None, None])))
    np.testing.assert_allclose(y, expected, atol=1e-5)

    wrong_classes = dataclasses.replace(spec, classes=("tumor",))
    with pytest.raises(DeepsegError, match="does not match its registry entry"):
        OnnxModel(tmp_path / "seg.onnx", wrong_classes)
    wrong_patch = pointwise_model(np.ones((4, 2)), np.zeros(4), (16, 16, 16), tmp_path / "other.onnx")
    with pytest.raises(DeepsegError, match="output shape|input shape"):
        OnnxModel(wrong_patch, spec)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(DeepsegError, match="cannot be loaded"):
        OnnxModel(tmp_path / "junk.onnx", spec)


def test_a_model_output_of_the_wrong_shape_names_the_file(tmp_path: Path, monkeypatch):
    spec = load_registry(write_registry(tmp_path)).model("seg")
    model = OnnxModel(tmp_path / "seg.onnx", spec, RuntimeOptions(threads=1))
    monkeypatch.setattr(model, "session", type("S", (), {"run": lambda self, *a: [np.zeros((1, 3, 4, 4, 4), np.float32)]})())
    with pytest.raises(DeepsegError, match=r"model file .*seg\.onnx returned shape \[1, 3, 4, 4, 4\].*-install"):
        model(np.zeros((1, 2, *spec.patch_size), np.float32))


def reference_sliding_window(volume, predict, patch, stride, n_out):
    """The plainest stitching: one window at a time, sum and count accumulated per window."""
    shape = volume.shape[1:]
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch))
    padded = np.zeros((volume.shape[0], *padded_shape), np.float32)
    padded[(slice(None),) + tuple(slice(0, s) for s in shape)] = volume
    total = np.zeros((n_out, *padded_shape), np.float32)
    count = np.zeros(padded_shape, np.float32)
    for x in window_starts(padded_shape[0], patch[0], stride[0]):
        for y in window_starts(padded_shape[1], patch[1], stride[1]):
            for z in window_starts(padded_shape[2], patch[2], stride[2]):
                sl = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
                total[(slice(None),) + sl] += predict(padded[(None, slice(None)) + sl])[0]
                count[sl] += 1.0
    return (total / count)[(slice(None),) + tuple(slice(0, s) for s in shape)]


def mixing_model(batch: np.ndarray) -> np.ndarray:
    """Not pointwise: depends on the patch's position in the window, so overlaps disagree."""
    ramp = np.linspace(0.0, 1.0, batch.shape[2], dtype=np.float32)[:, None, None]
    corner = batch[:, :1, :1, :1, :1]
    return np.concatenate([batch[:, :1] * ramp, batch[:, 1:2] + corner, np.sin(batch[:, :1]) - ramp], axis=1)


@pytest.mark.parametrize("shape", [(64, 48, 16), (70, 33, 40), (20, 30, 8), (32, 32, 16), (100, 64, 17)])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_stitching_equals_a_simple_reference(shape, batch_size):
    volume = np.random.default_rng(1).standard_normal((2, *shape), dtype=np.float32)
    patch, stride = (32, 32, 16), (16, 16, 8)
    out = sliding_window(volume, mixing_model, patch, stride, 3, batch_size)
    assert out.dtype == np.float32 and out.shape == (3, *shape)
    np.testing.assert_array_equal(out, reference_sliding_window(volume, mixing_model, patch, stride, 3))


def test_a_predictor_returning_views_of_its_batch_is_stitched_correctly():
    """The batch buffer is reused between calls: a view returned by the predictor must be consumed first."""
    volume = np.random.default_rng(2).standard_normal((2, 80, 40, 24), dtype=np.float32)
    view = lambda batch: batch[:, 1:2]  # noqa: E731
    out = sliding_window(volume, view, (32, 32, 16), (16, 16, 8), 1, 3)
    np.testing.assert_allclose(out, volume[1:2], rtol=1e-6)
