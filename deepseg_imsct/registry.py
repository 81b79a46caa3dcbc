"""The model registry: one source of truth for tasks, models and their versions (torch-free).

``model_registry.json`` (shipped inside the package) lists every model version with its
download sources, sha256, size and everything the pipeline needs to run it. Code reads model
facts from here only. Working-grid axes are 'SAR': array axis 0 runs inferior->superior,
axis 1 posterior->anterior, axis 2 left->right; every per-axis list (spacing in mm, sizes in
voxels, safety factors) is in that order.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import DeepsegError
from .semantics import NATIVE, Semantics, parse_semantics

REGISTRY_PATH = Path(__file__).resolve().parent / "model_registry.json"
ENV_REGISTRY = "DEEPSEG_IMSCT_REGISTRY"  # path of another registry (custom models, tests)
WORKING_AXES = "SAR"
SCHEMA = 1  # the registry layout this version reads
DEFAULT_MODEL_SET = "phantom"  # the models trained here on phantoms, shipped with the package
OUTPUTS = ("sigmoid", "exclusive")  # independent per-class sigmoids | softmax classes + their union (last class)
# The model facts: what a graph was trained for, written into each ONNX file's metadata at export
# (key METADATA_KEY, JSON) and checked against the registry entry when the file is loaded.
FACTS = ("contrasts", "classes", "spacing_mm", "patch_size", "stride", "safety_factor", "normalization", "output", "input_name")
METADATA_KEY = "deepseg_imsct.model_facts"


@dataclass(frozen=True)
class ClassDefaults:
    """Default post-processing of one output class."""

    threshold: float = 0.5  # probability, voxels >= threshold are foreground
    fill_holes: bool = True  # 3D hole filling
    min_volume_cm3: float = 0.0  # connected components smaller than this are removed
    min_voxels: int = 0  # connected components of fewer native voxels are removed (the reference's unit)


@dataclass(frozen=True)
class ModelSpec:
    """One version of one model, as the pipeline needs it.

    ``patch_size`` and ``stride`` are in working-grid voxels (SAR order). For a single-window
    model (the localizer) ``stride == patch_size`` and the input is cropped/padded to it.
    """

    name: str
    version: str
    file: str
    sha256: str
    size: int
    sources: tuple[str, ...]
    contrasts: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    classes: tuple[str, ...]
    normalization: str
    postprocessing: Mapping[str, ClassDefaults]
    safety_factor: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_name: str = "input"
    description: str = ""
    output: str = "sigmoid"  # see OUTPUTS; "exclusive": the last class is the union of the others
    semantics: Semantics = NATIVE  # how the stages run this model (semantics.py)
    blob_sha1: str = ""  # git blob SHA-1 of the file (published models: sha256 and size are then learnt at install)
    model_set: str = "phantom"  # the family of models this version belongs to (see -model-set)
    registry_dir: Path = field(default=REGISTRY_PATH.parent, compare=False)

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"

    def provenance(self) -> dict[str, Any]:
        """What every sidecar records of this model (and what a batch compares to resume)."""
        return {"version": self.version, "sha256": self.sha256, "model_set": self.model_set,
                **({"git_blob_sha1": self.blob_sha1} if self.blob_sha1 else {})}

    def facts(self) -> dict[str, Any]:
        """The model facts (:data:`FACTS`) as JSON-ready values."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in FACTS)}

    def check_facts(self, metadata: Mapping[str, str], path: Path | str) -> None:
        """Refuse a graph whose embedded facts differ from this entry (graphs without any pass)."""
        raw = metadata.get(METADATA_KEY)
        if raw is None:
            return
        try:
            embedded = json.loads(raw)
        except ValueError:
            embedded = {}
        mine = self.facts()
        diff = sorted(k for k in FACTS if k in embedded and embedded[k] != mine[k]) or ([] if embedded else ["metadata"])
        if diff:
            raise DeepsegError(f"model file {path} was made for other settings than its registry entry {self.key} "
                               f"({', '.join(diff)} differ): reinstall with -install, or fix the registry")

    def local_sources(self) -> list[Path]:
        """Sources that are files shipped with the registry (relative paths), resolved."""
        return [self.registry_dir / s for s in self.sources if "://" not in s]

    def remote_sources(self) -> list[str]:
        return [s for s in self.sources if "://" in s]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    aliases: tuple[str, ...]
    description: str
    contrasts: tuple[str, ...]
    localizer: str
    segmenter: str
    citation: str = ""
    model_sets: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # set -> (localizer, segmenter)

    def models(self, model_set: str | None = None) -> tuple[str, str]:
        """(localizer, segmenter) of ``model_set`` (default: the task's own, set 'phantom')."""
        sets = {DEFAULT_MODEL_SET: (self.localizer, self.segmenter), **self.model_sets}
        if (model_set or DEFAULT_MODEL_SET) not in sets:
            raise DeepsegError(f"task {self.name} has no model set '{model_set}': model sets are {', '.join(sets)}")
        return sets[model_set or DEFAULT_MODEL_SET]


@dataclass(frozen=True)
class Registry:
    tasks: Mapping[str, TaskSpec]
    models: Mapping[str, Mapping[str, Any]]
    path: Path

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks.values():
            if name == task.name or name in task.aliases:
                return task
        raise DeepsegError(f"unknown task '{name}': known tasks are {', '.join(self.tasks)} (see -list-tasks)")

    def versions(self, model: str) -> list[str]:
        return list(self._entry(model)["versions"])

    def default_version(self, model: str) -> str:
        entry = self._entry(model)
        return str(entry.get("default_version") or list(entry["versions"])[-1])

    def model(self, name: str, version: str | None = None) -> ModelSpec:
        """The spec of ``name`` at ``version`` (default: the registry's default version)."""
        entry = self._entry(name)
        version = version or self.default_version(name)
        if version not in entry["versions"]:
            raise DeepsegError(
                f"model '{name}' has no version '{version}' in {self.path}: available {', '.join(entry['versions'])}"
            )
        return parse_entry(name, version, entry["versions"][version], self.path)

    def _entry(self, model: str) -> Mapping[str, Any]:
        entry = self.models.get(model)
        if not entry or not entry.get("versions"):
            raise DeepsegError(f"model '{model}' has no versions in {self.path}: reinstall deepseg-imsct")
        return entry


def load_registry(path: Path | str | None = None) -> Registry:
    """Read and validate the registry JSON (default: $DEEPSEG_IMSCT_REGISTRY, else the shipped one)."""
    from_env = not path and bool(os.environ.get(ENV_REGISTRY))
    path = Path(path or os.environ.get(ENV_REGISTRY) or REGISTRY_PATH)
    fix = f"fix or unset {ENV_REGISTRY}" if from_env else "reinstall deepseg-imsct"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeepsegError(f"model registry not found: {path}: {fix}") from None
    except (OSError, ValueError) as exc:
        raise DeepsegError(f"model registry {path} is unreadable ({exc}): {fix}") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise DeepsegError(f"model registry {path} has schema {schema!r}, this deepseg-imsct reads schema {SCHEMA}: "
                           f"{'upgrade deepseg-imsct' if isinstance(schema, int) and schema > SCHEMA else fix}")
    try:
        tasks = {
            name: TaskSpec(
                name=name,
                aliases=tuple(t.get("aliases", ())),
                description=t["description"],
                contrasts=tuple(t["contrasts"]),
                localizer=t["localizer"],
                segmenter=t["segmenter"],
                citation=t.get("citation", ""),
                model_sets={k: (str(m["localizer"]), str(m["segmenter"])) for k, m in t.get("model_sets", {}).items()},
            )
            for name, t in data["tasks"].items()
        }
        models = dict(data["models"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise DeepsegError(f"model registry {path} is malformed (missing or bad field {exc}): {fix}") from None
    return Registry(tasks=tasks, models=models, path=path)


def _triple(value: Any, kind: type, what: str) -> tuple:
    values = tuple(kind(v) for v in value)
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be 3 positive numbers, got {value!r}")
    return values


def parse_entry(name: str, version: str, v: Mapping[str, Any], path: Path) -> ModelSpec:
    """The typed spec of one registry version entry (:class:`DeepsegError` if malformed); the
    runtime reads entries with it and training's export checks what it writes with it."""
    where = f"model '{name}' version '{version}' in {path}"
    try:
        classes = tuple(v["classes"])
        post = v.get("postprocessing", {})
        defaults = {c: ClassDefaults(**post.get(c, {})) for c in classes}
        patch = _triple(v["patch_size"], int, "patch_size")
        spec = ModelSpec(
            name=name,
            version=version,
            file=str(v["file"]),
            sha256=str(v.get("sha256", "")).lower(),
            size=int(v.get("size", 0)),
            sources=tuple(v["sources"]),
            contrasts=tuple(v["contrasts"]),
            spacing_mm=_triple(v["spacing_mm"], float, "spacing_mm"),
            patch_size=patch,
            stride=_triple(v.get("stride", patch), int, "stride"),
            classes=classes,
            normalization=str(v["normalization"]),
            postprocessing=defaults,
            safety_factor=_triple(v.get("safety_factor", (1, 1, 1)), float, "safety_factor"),
            input_name=str(v.get("input_name", "input")),
            description=str(v.get("description", "")),
            output=str(v.get("output", "sigmoid")),
            semantics=parse_semantics(v.get("semantics")),
            blob_sha1=str(v.get("blob_sha1", "")).lower(),
            model_set=str(v.get("model_set", "phantom")),
            registry_dir=path.resolve().parent,
        )
    except KeyError as exc:
        raise DeepsegError(f"{where} lacks the field {exc}: fix the registry or reinstall deepseg-imsct") from None
    except (TypeError, ValueError) as exc:
        raise DeepsegError(f"{where} has a malformed field ({exc}): fix the registry or reinstall deepseg-imsct") from None
    hashed = len(spec.sha256) == 64 or (len(spec.blob_sha1) == 40 and not spec.sha256)
    if not hashed or not spec.sources or not spec.classes or not spec.contrasts:
        raise DeepsegError(f"{where} needs a 64-hex sha256 (or a 40-hex blob_sha1), sources, classes and contrasts: fix the registry")
    if spec.output not in OUTPUTS:
        raise DeepsegError(f"{where} has output '{spec.output}', which this version cannot read: upgrade deepseg-imsct")
    if spec.output == "exclusive" and spec.classes[-1] != "whole-tumor":
        raise DeepsegError(f"{where}: an exclusive model's last class must be the union 'whole-tumor': fix the registry")
    if spec.output == "exclusive" and spec.semantics != NATIVE:
        raise DeepsegError(f"{where}: an exclusive model runs with this package's own semantics only: fix the registry")
    if spec.normalization != "zscore":
        raise DeepsegError(f"{where} asks for normalization '{spec.normalization}', which this version cannot do: upgrade deepseg-imsct")
    return spec
