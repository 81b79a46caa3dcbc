"""ONNX export of a trained U-Net and its entry in the model registry.

The graph maps ``input`` float32 (N, C, S, A, R) to ``output`` float32 (N, K, S, A, R) sigmoid
probabilities; the batch axis is dynamic and the spatial axes are the patch size. This module is
the only writer of ``model_registry.json``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .unet import inference_form

log = logging.getLogger(__name__)

OPSET = 17
PARITY_TOLERANCE = 1e-4


def default_registry_path() -> Path:
    from deepseg_imsct.registry import REGISTRY_PATH

    return REGISTRY_PATH


def export_onnx(model: torch.nn.Module, path: Path, in_channels: int, patch: Sequence[int]) -> Path:
    """Write ``model`` (eval mode, CPU) to ``path`` as ONNX opset 17 with a dynamic batch axis."""
    model = model.cpu().eval()
    dummy = torch.zeros((1, in_channels, *patch), dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation warnings
        torch.onnx.export(
            model, (dummy,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=True,
        )
    tmp.replace(path)
    return path


def parity(model: torch.nn.Module, onnx_path: Path, x: np.ndarray) -> float:
    """Max absolute difference between torch and ONNX Runtime outputs on ``x`` (N, C, ...)."""
    import onnxruntime as ort

    model = model.cpu().eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    return float(np.abs(ref - got).max())


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_size


def embed_facts(path: Path, facts: Mapping[str, Any]) -> None:
    """Write the model facts (``deepseg_imsct.registry.FACTS``) into the ONNX file's metadata, in place."""
    import onnx

    from deepseg_imsct.registry import METADATA_KEY

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(dict(facts), sort_keys=True))
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def registry_entry(cfg: Mapping[str, Any], file_name: str, sha256: str, size: int) -> dict[str, Any]:
    """The ``versions[version]`` entry of a trained stage (geometry and defaults from ``cfg``)."""
    g, e = cfg["geometry"], cfg.get("export", {})
    entry = {
        "file": file_name,
        "sha256": sha256,
        "size": size,
        "sources": [f"models/{file_name}", *e.get("remote_sources", [])],
        "contrasts": list(g["contrasts"]),
        "spacing_mm": [float(v) for v in g["spacing_mm"]],
        "patch_size": [int(v) for v in g["patch_size"]],
        "stride": [int(v) for v in g["stride"]],
        "classes": list(g["classes"]),
        "normalization": "zscore",
        "postprocessing": dict(e["postprocessing"]),
        "input_name": "input",
        "description": e.get("description", ""),
        "output": cfg.get("model", {}).get("output", "sigmoid"),
    }
    if "safety_factor" in g and cfg["stage"] == "segmenter":
        entry["safety_factor"] = [float(v) for v in g["safety_factor"]]
    return entry


def update_registry(registry_path: Path, name: str, version: str, entry: Mapping[str, Any], make_default: bool = True) -> None:
    """Insert or replace ``name``'s ``version`` in the registry JSON (atomic rewrite)."""
    registry_path = Path(registry_path).resolve()  # rewrite the file itself, never replace a symlink to it
    data = json.loads(registry_path.read_text(encoding="utf-8"))
    model = data.setdefault("models", {}).setdefault(name, {"default_version": version, "versions": {}})
    model.setdefault("versions", {})[version] = dict(entry)
    if make_default or not model.get("default_version"):
        model["default_version"] = version
    tmp = registry_path.with_name(registry_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, registry_path)
    log.info("registry %s: %s version %s (default %s)", registry_path, name, version, model["default_version"])


def runtime_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config as the runtime will read it: ``export.stride`` (the sliding window's stride at
    run time, voxels S-I, A-P, R-L), when given, replaces the training geometry's (which also names
    the training crops' folder and so cannot change during a campaign)."""
    stride = cfg.get("export", {}).get("stride")
    if stride is None:
        return dict(cfg)
    return {**cfg, "geometry": {**cfg["geometry"], "stride": list(stride)}}


def export_trained(model: torch.nn.Module, cfg: Mapping[str, Any], registry_path: Path | None = None,
                   check_parity: bool = True) -> Path:
    """Export ``model`` to ``<registry dir>/models/<name>-<version>.onnx`` and register it.

    The graph is the model's :func:`~imsct_train.unet.inference_form`; its parity with the trained
    torch model is checked with ONNX Runtime on a random input (z-score-like values).
    """
    registry_path = Path(registry_path or default_registry_path()).resolve()  # the file, not a symlink to it
    cfg = runtime_config(cfg)
    name, version = cfg["name"], str(cfg["version"])
    g = cfg["geometry"]
    file_name = f"{name}-{version}.onnx"
    path = export_onnx(inference_form(model), registry_path.parent / "models" / file_name, len(g["contrasts"]), g["patch_size"])
    if check_parity:
        x = np.random.default_rng(0).standard_normal((1, len(g["contrasts"]), *g["patch_size"])).astype(np.float32)
        diff = parity(model, path, x)
        log.info("torch vs ONNX Runtime max abs difference %.2e", diff)
        if diff >= PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX export of {name} differs from torch by {diff:.2e} (>= {PARITY_TOLERANCE})")
    from deepseg_imsct.registry import parse_entry

    spec = parse_entry(name, version, registry_entry(cfg, file_name, "0" * 64, 1), registry_path)  # the runtime's reading
    embed_facts(path, spec.facts())
    sha, size = file_digest(path)
    update_registry(registry_path, name, version, registry_entry(cfg, file_name, sha, size))
    return path
