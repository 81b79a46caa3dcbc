"""The user's parameters: one description of each, and one translator into the pipeline's settings.

:func:`parameters` describes every parameter a user sets (name, type, unit, default from the
model's registry entry, range, help, the command's option, the form's label). The command's
options (:mod:`cli`), the FSLeyes form (:mod:`gui.logic`) and :meth:`task.Task.parameters` are
generated from it; :meth:`ParamSpec.convert` is the one check of a value, and :func:`configure`
the one translator of values into :class:`Settings`, used by the command, the Python API,
:meth:`task.Task.run` and (through the command) the GUI.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .errors import DeepsegError

if TYPE_CHECKING:  # imported where used: describing parameters (the command's -h) needs no numpy
    from .inference import RuntimeOptions
    from .postprocess import ClassPost, PostprocessConfig
    from .registry import ClassDefaults, ModelSpec

MODEL_SETS = ("phantom", "sct")  # the registry's model sets of the task (registry.TaskSpec.models), the default first
MAX_THREADS = 1024  # ONNX Runtime's thread count is a C int; no CPU has more cores than this
MAX_VOLUME_CM3 = 1000  # a litre: larger than any spinal cord, so removing smaller components removes all
VOLUME = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(cm3|mm3|vox)?\s*$")
VOLUME_EXAMPLES = "0.2cm3, 200mm3 or 100vox"


class ParamKind(str, Enum):
    FLOAT = "float"
    BOOL = "bool"
    INT = "int"
    PATH = "path"
    VOLUME = "volume"  # a number: cm³; text needs a unit, as sct_deepseg's: '0.2cm3', '200mm3', '100vox'
    CHOICE = "choice"  # one of ``ParamSpec.choices``


@dataclass(frozen=True)
class Voxels:
    """A volume given in voxels of the T2w's native grid (``-remove-small 100vox``)."""

    count: int


@dataclass(frozen=True)
class ParamSpec:
    """One user-settable parameter. ``per_class``: one value per output class (``default`` is then
    {class: value}). ``invalid``: the message for a value outside [minimum, maximum], with
    ``{where}`` (the option, label or name the user gave it by) and ``{value}`` (as given)."""

    name: str
    kind: ParamKind
    default: Any
    help: str
    per_class: bool = False
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""
    option: str = ""  # the command's option
    metavar: str = ""
    label: str = ""  # the form's label
    invalid: str = "{where}: {value} is outside [{minimum}, {maximum}]"
    choices: tuple[str, ...] = ()  # the values of a CHOICE

    def convert(self, raw: Any, where: str) -> Any:
        """A value as the user gave it (command text, a form widget's value, a Python value),
        typed and checked; raises DeepsegError naming ``where``."""
        if self.kind is ParamKind.PATH:
            if raw is not None and (not isinstance(raw, (str, os.PathLike)) or "\0" in str(raw)):
                what = repr(str(raw)) if isinstance(raw, (str, os.PathLike)) else f"a value of type {type(raw).__name__}"
                raise DeepsegError(f"{where}: {what} is not a folder path (give a str or pathlib.Path, without NUL characters)")
            text = str(raw).strip() if raw is not None else ""
            return Path(text).expanduser() if text else None
        if self.kind is ParamKind.CHOICE:
            if raw not in self.choices:
                raise DeepsegError(f"{where}: {raw!r} is not one of {', '.join(self.choices)}")
            return str(raw)
        if self.kind is ParamKind.BOOL:
            if isinstance(raw, str) and raw not in ("0", "1"):
                raise DeepsegError(f"{where}: '{raw}' is not 0 or 1")
            return raw == "1" if isinstance(raw, str) else bool(raw)
        value = self._number(raw, where)
        if isinstance(value, Voxels):
            return value
        low = -math.inf if self.minimum is None else self.minimum
        high = math.inf if self.maximum is None else self.maximum
        if not low <= value <= high:  # NaN included
            raise DeepsegError(self.invalid.format(where=where, value=raw, minimum=self.minimum,
                                                   maximum="∞" if self.maximum is None else self.maximum))
        return value

    def _number(self, raw: Any, where: str) -> float | int | Voxels:
        if self.kind is ParamKind.VOLUME and isinstance(raw, str):
            match = VOLUME.match(raw)
            if not match:
                raise DeepsegError(f"{where}: '{raw}' is not a volume (write it with a unit: {VOLUME_EXAMPLES})")
            number, unit = match.group(1), match.group(2)
            if unit is None:
                raise DeepsegError(f"{where}: '{raw}' has no unit: write {number}cm3, {number}mm3 or {number}vox")
            if unit == "vox":
                if not float(number).is_integer():
                    raise DeepsegError(f"{where}: '{raw}' is not a whole number of voxels")
                return Voxels(int(float(number)))
            return float(number) / (1000.0 if unit == "mm3" else 1.0)
        try:
            if self.kind is ParamKind.INT and not (isinstance(raw, str) or float(raw).is_integer()):
                raise ValueError(raw)  # 2.5 threads
            return int(raw) if self.kind is ParamKind.INT else float(raw)
        except (TypeError, ValueError, OverflowError):
            if self.kind is ParamKind.FLOAT and isinstance(raw, str):
                return math.nan  # refused by the range check, with its message
            raise DeepsegError(f"{where}: '{raw}' is not a {'whole ' if self.kind is ParamKind.INT else ''}number") from None

    def default_text(self) -> str:
        """The default as help text: 'tumor 0.7, edema 0.3' per class, one value when all agree."""
        if not self.per_class:
            return str(self.default)
        values = {_text(v) for v in self.default.values()}
        if len(values) == 1:
            return values.pop()
        return ", ".join(f"{c} {_text(v)}" for c, v in self.default.items())


def _text(value: Any) -> str:
    return str(int(value)) if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def parameters(defaults: Mapping[str, ClassDefaults]) -> list[ParamSpec]:
    """Every parameter of a run; per-class defaults from the segmenter's registry entry
    (``ModelSpec.postprocessing``: {class: defaults}, whose keys are the classes)."""
    return [
        ParamSpec("threshold", ParamKind.FLOAT, {c: d.threshold for c, d in defaults.items()},
                  "Binarization threshold on the probability (voxels >= threshold are kept); 0 for every class: "
                  "no binarization, probabilities are written (as -soft, and as sct_deepseg's -thr 0)", True, 0.0, 1.0,
                  option="-thr", metavar="P", label="Threshold",
                  invalid="{where}: threshold {value} is not a probability in [0, 1] (use -soft for probabilities)"),
        ParamSpec("fill_holes", ParamKind.BOOL, {c: d.fill_holes for c, d in defaults.items()},
                  "Fill 3D holes in each mask", True, option="-fill-holes", metavar="0|1", label="Fill holes"),
        ParamSpec("min_volume_cm3", ParamKind.VOLUME, {c: d.min_volume_cm3 for c, d in defaults.items()},
                  "Remove connected components smaller than this volume, given with its unit: 0.2cm3, 200mm3 or 100vox "
                  "(voxels of the T2w)",
                  True, 0.0, MAX_VOLUME_CM3, "cm³", option="-remove-small", metavar="VOL", label="Remove smaller than",
                  invalid="{where}: {value} is not a volume from 0 to {maximum} cm³"),
        ParamSpec("soft", ParamKind.BOOL, False, "Write probabilities (float32) instead of binary masks; thresholds are then ignored",
                  option="-soft", label="Soft output (probabilities)"),
        ParamSpec("qc", ParamKind.PATH, None, "Quality-control report folder: pictures, statistics and flags of every run "
                  "written there (index.html), with the localizer's cord mask (_seg-cord) and the crop box (_cropbox)",
                  option="-qc", metavar="FOLDER", label="QC report folder"),
        ParamSpec("out_dir", ParamKind.PATH, None, "Output folder (default: the T2w's folder; created if missing), or a file "
                  "name as sct_deepseg takes it: -o out/sub.nii.gz writes out/sub_seg-tumor.nii.gz, ...",
                  option="-o", metavar="FOLDER|FILE", label="Output folder"),
        ParamSpec("overwrite", ParamKind.BOOL, False, "Replace existing output files that this tool did not write, "
                  "that were changed since, or that another T2w of the same name produced (inputs are never replaced)",
                  option="-overwrite", label="Replace files not written by this tool"),
        ParamSpec("model_set", ParamKind.CHOICE, MODEL_SETS[0], "Models: 'phantom' (trained on phantoms, shipped with the "
                  "package, offline) or 'sct' (the study's published real-data models, downloaded once; see "
                  "docs/published-models.md)", option="-model-set", metavar="SET", label="Models", choices=MODEL_SETS),
        ParamSpec("threads", ParamKind.INT, 0, "CPU threads for ONNX Runtime (0: physical cores)", False, 0, MAX_THREADS,
                  option="-threads", metavar="N", label="CPU threads",
                  invalid="{where} must be from 0 to {maximum} (0 lets ONNX Runtime use the physical cores)"),
    ]


@dataclass(frozen=True)
class Settings:
    """What a run needs from the user's parameters."""

    post: PostprocessConfig
    runtime: RuntimeOptions
    out_dir: Path | None = None
    qc: Path | None = None
    overwrite: bool = False
    model_set: str = MODEL_SETS[0]


Naming = Callable[[ParamSpec, "str | None"], str]


def by_name(spec: ParamSpec, cls: str | None) -> str:
    """How a value is named in messages of the Python API: 'threshold' or 'threshold of edema'."""
    return spec.name if cls is None else f"{spec.name} of {cls}"


def convert_all(specs: Sequence[ParamSpec], classes: Sequence[str], values: Mapping[str, Any],
                naming: Naming = by_name) -> dict[str, Any]:
    """Every parameter, typed and checked: a given value (per class: one for all classes or a
    {class: value} mapping) or else the default; per-class ones as {class: value}."""
    known = {spec.name: spec for spec in specs}
    unknown = set(values) - set(known)
    if unknown:
        raise DeepsegError(f"unknown parameter {', '.join(sorted(unknown))} (parameters: {', '.join(known)})")
    out: dict[str, Any] = {}
    for spec in specs:
        given = values.get(spec.name)
        if not spec.per_class:
            out[spec.name] = spec.default if given is None else spec.convert(given, naming(spec, None))
            continue
        given = {} if given is None else given if isinstance(given, Mapping) else {c: given for c in classes}
        stray = set(given) - set(classes)
        if stray:
            raise DeepsegError(f"{naming(spec, None)}: unknown class {', '.join(sorted(stray))} (classes: {' '.join(classes)})")
        out[spec.name] = {c: spec.convert(given[c], naming(spec, c)) if c in given else spec.default[c] for c in classes}
    return out


def configure(model: ModelSpec, values: Mapping[str, Any], naming: Naming = by_name) -> Settings:
    """The one translator: user values ({parameter name: value}, missing: default) -> :class:`Settings`."""
    from .inference import RuntimeOptions
    from .postprocess import PostprocessConfig

    specs = parameters(model.postprocessing)
    v = convert_all(specs, model.classes, values, naming)
    given = values.get("min_volume_cm3")  # a user's minimum volume replaces the registry's minimum voxel count
    replaced = set() if given is None else set(given) if isinstance(given, Mapping) else set(model.classes)
    soft = bool(v["soft"]) or _soft_threshold(v["threshold"], next(p for p in specs if p.name == "threshold"), naming)
    post = PostprocessConfig({c: _class_post(v, model, c, c in replaced) for c in model.classes}, soft=soft)
    return Settings(post, RuntimeOptions(threads=int(v["threads"])), v["out_dir"], v["qc"], bool(v["overwrite"]),
                    v["model_set"])


def _class_post(v: Mapping[str, Any], model: ModelSpec, cls: str, replaced: bool) -> ClassPost:
    """One class's post-processing: the user's values, the registry's voxel count unless the user
    gave a volume, and the order and hole connectivity of the model's semantics."""
    from .postprocess import ClassPost

    sem = model.semantics
    order = {"remove_first": sem.postprocess_order.value == "remove_then_fill", "hole_connectivity": sem.hole_connectivity}
    volume = v["min_volume_cm3"][cls]
    if isinstance(volume, Voxels):
        return ClassPost(v["threshold"][cls], v["fill_holes"][cls], 0.0, volume.count, **order)
    voxels = 0 if replaced else model.postprocessing[cls].min_voxels
    return ClassPost(v["threshold"][cls], v["fill_holes"][cls], volume, voxels, **order)


def _soft_threshold(thresholds: Mapping[str, float], spec: ParamSpec, naming: Naming) -> bool:
    """Threshold 0 means no binarization (sct_deepseg's -thr 0): for every class, or refused."""
    zero = [c for c, t in thresholds.items() if t == 0]
    if zero and len(zero) < len(thresholds):
        raise DeepsegError(f"{naming(spec, None)}: threshold 0 (no binarization: probabilities, as -soft) applies to every class, "
                           f"not only {' '.join(zero)}: give 0 alone, or thresholds above 0")
    return bool(zero)
