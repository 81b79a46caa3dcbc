"""Model folders of the reference toolbox (an ONNX file + its ivadomed JSON config) as registry entries.

:func:`entry_from_config` maps an ivadomed config onto a registry version entry (contrasts,
patch and stride, resampling, centre crop, instance normalization, post-processing, classes,
safety factor), with the reference semantics. :func:`install_folder` installs every model folder
found under a path: a file whose git blob SHA-1 is a registry entry's is installed as that entry
(verified); any other is a custom model, accepted with a notice and written, with the published
model of the other stage, into a registry of its own in the cache (``<cache>/custom``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from .errors import DeepsegError

log = logging.getLogger(__name__)

CONTRASTS = {"T2w": "t2", "T1w": "t1"}
CLASS_NAMES = {"sc-mask": "cord"}


def find_folders(path: Path) -> list[tuple[Path, Path]]:
    """(onnx, json) pairs of the same name in ``path`` or its subfolders (one level)."""
    pairs = []
    for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())] if path.is_dir() else []:
        for onnx in sorted(folder.glob("*.onnx")):
            if onnx.with_suffix(".json").is_file():
                pairs.append((onnx, onnx.with_suffix(".json")))
    return pairs


def _model_params(config: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("Modified3DUNet", "UNet3D"):
        params = config.get(key) or {}
        if params.get("applied") and "length_3D" in params:
            return params
    for params in (config.get("loader_parameters", {}).get("model_params", {}), config.get("default_model", {})):
        if "length_3D" in params:
            return params
    raise ValueError("no 3D model parameters (length_3D) in the config: only 3D ivadomed models can run here")


def _class_name(suffix: str) -> str:
    name = suffix.lstrip("_")
    name = name[4:] if name.startswith("seg-") else name
    return CLASS_NAMES.get(name, name)


def entry_from_config(config: Mapping[str, Any], file: str, input_name: str = "input") -> tuple[dict, list[str]]:
    """The registry version entry (without hashes and sources) of an ivadomed config, and the
    notices of what the reference does that is not reproduced. Raises ValueError for a config
    this package cannot run."""
    notes: list[str] = []
    loader = config.get("loader_parameters", {})
    params = _model_params(config)
    contrast_params = loader.get("contrast_params", {})
    contrasts = contrast_params.get("testing") or contrast_params.get("contrast_lst") or contrast_params.get("training_validation")
    if not contrasts:
        raise ValueError("no contrasts in loader_parameters.contrast_params")
    if loader.get("slice_axis", "sagittal") != "sagittal":
        raise ValueError(f"slice_axis '{loader.get('slice_axis')}': only sagittal models can run here")
    classes = [_class_name(s) for s in loader.get("target_suffix", [])]
    patch, stride = [int(v) for v in params["length_3D"]], [int(v) for v in params.get("stride_3D", params["length_3D"])]
    transforms = config.get("transformation", {})
    if "NormalizeInstance" not in transforms:
        raise ValueError("no NormalizeInstance transform: only instance-normalized models can run here")
    resample = transforms.get("Resample")
    if not resample:
        raise ValueError("no Resample transform: the model's voxel spacing is unknown")
    crop = transforms.get("CenterCrop")
    if crop and [int(v) for v in crop["size"]] != patch:
        raise ValueError(f"CenterCrop {crop['size']} differs from length_3D {patch}: not a single-window model")
    affine = transforms.get("RandomAffine")
    if affine and affine.get("dataset_type") is None:
        notes.append("the reference applies its RandomAffine at inference too (random each run); here it is the identity")
    post = config.get("postprocessing", {})
    threshold = float(post.get("binarize_prediction", {}).get("thr", 0.5))
    if threshold < 0:
        notes.append("binarize_prediction thr < 0 (soft output) is the command's -soft here; threshold 0.5 by default")
        threshold = 0.5
    small = post.get("remove_small", {})
    thr = small.get("thr", 0)
    per_class = list(thr) if isinstance(thr, list) else [thr] * len(classes)
    if len(per_class) != len(classes):
        raise ValueError(f"remove_small has {len(per_class)} thresholds for {len(classes)} classes")
    unit = small.get("unit", "vox")
    keys = list(post)
    semantics: dict[str, Any] = {"preset": "ivadomed"}
    if "fill_holes" in keys and "remove_small" in keys and keys.index("fill_holes") < keys.index("remove_small"):
        semantics["postprocess_order"] = "fill_then_remove"
    if len(classes) == 1:
        semantics["localizer_keep"] = "largest" if "keep_largest" in keys else "all"
    elif "keep_largest" in keys:
        notes.append("keep_largest of a multi-class model (it keeps one component across all classes) is not applied")
    entry = {
        "file": file,
        "contrasts": [CONTRASTS.get(c, c.lower().rstrip("w")) for c in contrasts],
        "spacing_mm": [float(resample[k]) for k in ("hspace", "wspace", "dspace")],
        "patch_size": patch,
        "stride": stride,
        "classes": classes,
        "normalization": "zscore",
        "postprocessing": {c: {"threshold": threshold, "fill_holes": "fill_holes" in keys,
                               "min_volume_cm3": float(n) / 1000 if unit == "mm3" else 0.0,
                               "min_voxels": int(n) if unit != "mm3" else 0} for c, n in zip(classes, per_class)},
        "safety_factor": [float(v) for v in config.get("object_detection_params", {}).get("safety_factor", [1.0, 1.0, 1.0])],
        "input_name": input_name,
        "semantics": semantics,
        "output": "sigmoid",
    }
    activation = config.get("default_model", {}).get("final_activation", "sigmoid")
    if activation != "sigmoid":
        raise ValueError(f"final_activation '{activation}': only sigmoid models can run here")
    return entry, notes


def _graph_input(onnx: Path) -> str:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    except Exception as exc:  # onnxruntime's own errors
        raise DeepsegError(f"{onnx} cannot be loaded by ONNX Runtime ({exc}): give the model folder's .onnx file") from None


def install_folder(path: Path, registry, task_name: str) -> list[Path]:
    """Install every model folder under ``path`` (see the module docstring); returns the files."""
    from .checksums import git_blob_sha1
    from .cache import cache_dir
    from .download import import_model

    pairs = find_folders(path)
    if not pairs:
        raise DeepsegError(f"{path} holds no model folder (a <name>.onnx with its <name>.json): give the toolbox's "
                           "model folder (e.g. $SCT_DIR/data/deepseg_models/findcord_tumor) or the folder above it")
    known = {registry.model(m).blob_sha1: registry.model(m) for m in registry.models if registry.model(m).blob_sha1}
    installed, custom = [], []
    for onnx, config_path in pairs:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            entry, notes = entry_from_config(config, onnx.name, _graph_input(onnx))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeepsegError(f"{config_path} cannot be mapped onto a model of this package ({exc}): "
                               "give an ivadomed 3D sagittal model folder") from None
        spec = known.get(git_blob_sha1(onnx))
        if spec is not None:
            differ = [k for k in ("contrasts", "spacing_mm", "patch_size", "stride", "classes")
                      if list(getattr(spec, k)) != list(entry[k])]
            if differ:
                log.warning("%s: its config differs from the registry entry %s in %s; the registry's values are used",
                            config_path, spec.key, ", ".join(differ))
            installed.append(import_model(spec, onnx))
            continue
        for note in notes:
            log.warning("%s: %s", onnx.name, note)
        custom.append((onnx, entry))
    if custom:
        installed += _write_custom(custom, registry, task_name, cache_dir() / "custom")
    return installed


def _write_custom(custom: list[tuple[Path, dict]], registry, task_name: str, folder: Path) -> list[Path]:
    """A registry of its own for custom models: each stage a custom model, or else the task's
    published ('sct') model for that stage."""
    task = registry.task(task_name)
    stages = dict(zip(("localizer", "segmenter"), task.models("sct" if "sct" in task.model_sets else None)))
    models, files = {}, []
    folder.mkdir(parents=True, exist_ok=True)
    for onnx, entry in custom:
        stage = "localizer" if len(entry["classes"]) == 1 and len(entry["contrasts"]) == 1 else "segmenter"
        name = f"custom_{onnx.stem}"
        (folder / name).mkdir(exist_ok=True)
        shutil.copyfile(onnx, folder / name / onnx.name)
        data = (folder / name / onnx.name).read_bytes()
        entry |= {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "sources": [f"{name}/{onnx.name}"],
                  "model_set": "custom", "description": f"custom ivadomed model imported from {onnx}"}
        models[name] = {"default_version": "custom", "versions": {"custom": entry}}
        stages[stage] = name
        files.append(folder / name / onnx.name)
    for stage, name in stages.items():
        if name not in models:
            models[name] = registry.models[name]
    task_entry = {"aliases": list(task.aliases), "description": f"{task.description} (custom models)",
                  "contrasts": list(task.contrasts), **stages}
    path = folder / "model_registry.json"
    path.write_text(json.dumps({"schema": 1, "tasks": {task.name: task_entry}, "models": models}, indent=1), encoding="utf-8")
    log.warning("custom model(s) %s: not published models of this task (no known git blob SHA-1), accepted unverified "
                "with their configs mapped as the reference would run them; to run them set DEEPSEG_IMSCT_REGISTRY=%s",
                ", ".join(o.name for o, _ in custom), path)
    return files
