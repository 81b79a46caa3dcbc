"""Analytic ONNX models and registries for tests: outputs known in closed form.

- localizer: sigmoid(gain * (x - level)) of its single z-scored channel ("bright = cord");
- segmenter: a 1x1x1 convolution of its channels plus sigmoid, so each class is
  sigmoid(gain * (w . x - level)): a voxel-wise threshold of the inputs, with no spatial context,
  hence a patch-wise prediction equals a whole-volume one exactly.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

onnx = __import__("pytest").importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CLASSES = ["tumor", "edema", "cavity", "whole-tumor"]


def pointwise_model(weights: np.ndarray, bias: np.ndarray, patch: Sequence[int] | None, path: Path) -> Path:
    """ONNX graph: output = sigmoid(conv1x1x1(input, weights) + bias); spatial axes fixed to
    ``patch`` or dynamic when None. ``weights`` is (K, C)."""
    k, c = weights.shape
    spatial = list(patch) if patch else ["S", "A", "R"]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, *spatial])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", k, *spatial])
    w = numpy_helper.from_array(weights.reshape(k, c, 1, 1, 1).astype(np.float32), "w")
    b = numpy_helper.from_array(bias.astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["z"]), helper.make_node("Sigmoid", ["z"], ["output"])]
    graph = helper.make_graph(nodes, "pointwise", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def exclusive_model(weights: np.ndarray, bias: np.ndarray, patch: Sequence[int] | None, path: Path) -> Path:
    """ONNX graph of an exclusive-class model: p = softmax(conv1x1x1(input, weights) + bias) over
    (background, tumor, edema, cavity); output = (p_tumor, p_edema, p_cavity, 1 - p_background)."""
    k, c = weights.shape
    spatial = list(patch) if patch else ["S", "A", "R"]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, *spatial])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", k, *spatial])
    inits = [numpy_helper.from_array(weights.reshape(k, c, 1, 1, 1).astype(np.float32), "w"),
             numpy_helper.from_array(bias.astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one")]
    for name, v in (("s0", 0), ("s1", 1), ("sk", k), ("ax", 1)):
        inits.append(numpy_helper.from_array(np.array([v], np.int64), name))
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["z"]), helper.make_node("Softmax", ["z"], ["p"], axis=1),
             helper.make_node("Slice", ["p", "s1", "sk", "ax"], ["lesions"]),
             helper.make_node("Slice", ["p", "s0", "s1", "ax"], ["bg"]), helper.make_node("Sub", ["one", "bg"], ["union"]),
             helper.make_node("Concat", ["lesions", "union"], ["output"], axis=1)]
    model = helper.make_model(helper.make_graph(nodes, "exclusive", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def entry(path: Path, **fields) -> dict:
    data = path.read_bytes()
    return {
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "sources": [path.name],
        "normalization": "zscore",
        "input_name": "input",
        **fields,
    }


def write_registry(
    folder: Path,
    loc_patch=(64, 64, 16),
    loc_spacing=(2.0, 2.0, 2.0),
    seg_patch=(32, 32, 16),
    seg_stride=(16, 16, 16),
    seg_spacing=(1.0, 1.0, 2.0),
    seg_weights: np.ndarray | None = None,
    seg_bias: np.ndarray | None = None,
    gain: float = 8.0,
    level: float = 1.0,
    safety=(1.2, 1.2, 1.0),
    seg_post: dict | None = None,
    exclusive: bool = False,
    loc_min_volume_cm3: float = 0.0,
    semantics: dict | None = None,
) -> Path:
    """A complete registry in ``folder`` with analytic localizer and segmenter files.

    Default segmenter: tumor = bright T1w, edema = bright T2w, cavity = bright T2w and dark
    T1w, whole = bright T1w or T2w (all as sigmoids of z-scored inputs); ``exclusive``: the same
    classes as softmax logits against a background logit of 0 (:func:`exclusive_model`).
    ``semantics``: the registry's semantics block of both models (default: none, the package's)."""
    folder.mkdir(parents=True, exist_ok=True)
    loc = pointwise_model(np.array([[gain]]), np.array([-gain * level]), loc_patch, folder / "loc.onnx")
    if exclusive:  # logits: background 0, tumor = bright T1w, edema = bright T2w, cavity = bright T2w and dark T1w
        if seg_weights is None:
            seg_weights = gain * np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, -1.0]])
            seg_bias = -gain * np.array([0.0, level, level, level])
        seg = exclusive_model(seg_weights, seg_bias, seg_patch, folder / "seg.onnx")
    else:
        if seg_weights is None:
            seg_weights = gain * np.array([[0.0, 1.0], [1.0, 0.0], [1.0, -1.0], [0.5, 0.5]])
            seg_bias = -gain * np.array([level, level, level, level / 2])
        seg = pointwise_model(seg_weights, seg_bias, seg_patch, folder / "seg.onnx")
    registry = {
        "schema": 1,
        "tasks": {
            "tumor_edema_cavity_t1_t2": {
                "aliases": ["seg_tumor-edema-cavity_t1-t2"],
                "description": "test task",
                "contrasts": ["t2", "t1"],
                "localizer": "loc",
                "segmenter": "seg",
            }
        },
        "models": {
            "loc": {"default_version": "1.0", "versions": {"1.0": entry(
                loc, contrasts=["t2"], spacing_mm=list(loc_spacing), patch_size=list(loc_patch), classes=["cord"],
                postprocessing={"cord": {"threshold": 0.5, "fill_holes": False, "min_volume_cm3": loc_min_volume_cm3}},
                **({"semantics": semantics} if semantics else {}))}},
            "seg": {"default_version": "1.0", "versions": {"1.0": entry(
                seg, contrasts=["t2", "t1"], spacing_mm=list(seg_spacing), patch_size=list(seg_patch),
                stride=list(seg_stride), classes=CLASSES, safety_factor=list(safety), output="exclusive" if exclusive else "sigmoid",
                postprocessing=seg_post or {c: {"threshold": 0.5, "fill_holes": False, "min_volume_cm3": 0.0} for c in CLASSES},
                **({"semantics": semantics} if semantics else {}))}},
        },
    }
    path = folder / "model_registry.json"
    path.write_text(json.dumps(registry, indent=1))
    return path
