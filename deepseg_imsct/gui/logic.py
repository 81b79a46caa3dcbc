"""What the FSLeyes plugin decides, as plain functions (no wx, no fsleyes): tested everywhere.

- which loaded images are likely the T2w and the gadolinium T1w (:func:`choose_inputs`);
- the form built from the task's :class:`~deepseg_imsct.task.ParamSpec` list (:func:`form_fields`)
  and its values turned into the task's parameters (:func:`parse_values`) and into the
  ``imsct_deepseg`` command line that runs them (:func:`command_args`);
- where the command writes its outputs (:func:`expected_outputs`) and how each output is shown
  as an overlay (:func:`overlay_settings`, :func:`load_order`);
- the run's lesion statistics as text shown after it (:func:`read_stats`, :func:`stats_summary`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import outputs
from ..errors import DeepsegError
from ..params import ParamKind, ParamSpec, Voxels

MENU_LABEL = "Segment spinal cord tumor (T2w + T1w)…"  # the fsleyes_tools entry-point name in setup.cfg
LAYOUT_NAME = "imsct"  # the fsleyes_layouts entry-point name in setup.cfg

T2_TOKENS = {"t2", "t2w", "t2wi", "t2tse", "t2fse", "t2space"}
T1_TOKENS = {"t1", "t1w", "t1wi", "t1c", "t1ce", "t1gd", "t1post", "t1km", "mprage", "spgr"}
GADO_TOKENS = {"gd", "gad", "gado", "gadolinium", "ce", "contrast", "post", "postcontrast", "t1c", "t1ce", "t1gd", "t1post"}
PRE_TOKENS = {"pre", "precontrast", "native", "t1pre"}
MASK_TOKENS = {"seg", "mask", "label", "labels", "dseg", "probseg", "roi", "cropbox", "lesion", "gt", "manual"}
NAME_WEIGHT, HEADER_WEIGHT, NOT_AN_INPUT = 1.0, 0.5, -10.0

HIDDEN = {"seg-whole-tumor"}  # loaded but not shown: it covers the three classes
OUTLINED = set(outputs.QC_KEYS)
MASK_ALPHA = 70.0


@dataclass(frozen=True)
class ImageInfo:
    """What the chooser knows about one loaded image."""

    name: str
    path: Path | None = None
    description: str = ""  # e.g. the NIfTI header's descrip field
    volumes: int = 1
    looks_like_mask: bool = False  # e.g. integer data with values in {0, 1}


def tokens(text: str) -> set[str]:
    """Lower-case alphanumeric words of a name: 'sub-01_ce-gd_T1w' -> {sub, 01, ce, gd, t1w}."""
    return {t for t in re.split(r"[^a-z0-9]+", text.lower()) if t}


def _text_scores(text: str) -> tuple[float, float, bool]:
    words = tokens(text)
    t2 = 3.0 * bool(words & T2_TOKENS)
    t1 = 3.0 * bool(words & T1_TOKENS) + 2.0 * bool(words & GADO_TOKENS) - 1.0 * bool(words & PRE_TOKENS)
    return t2, t1, bool(words & MASK_TOKENS)


def contrast_scores(image: ImageInfo) -> dict[str, float]:
    """{'t2': score, 't1': score}: evidence from the name (and the header, weighted less)."""
    name_t2, name_t1, _ = _text_scores(image.name if image.path is None else f"{image.name} {image.path.name}")
    head_t2, head_t1, _ = _text_scores(image.description)
    return {"t2": NAME_WEIGHT * name_t2 + HEADER_WEIGHT * head_t2, "t1": NAME_WEIGHT * name_t1 + HEADER_WEIGHT * head_t1}


def input_penalty(image: ImageInfo) -> float:
    """Negative for images unlikely to be an input: masks (by name or values) and 4D series."""
    named_mask = _text_scores(image.name if image.path is None else f"{image.name} {image.path.name}")[2]
    return NOT_AN_INPUT if (named_mask or image.looks_like_mask or image.volumes > 1) else 0.0


def choose_inputs(images: Sequence[ImageInfo]) -> tuple[int | None, int | None]:
    """Indices of the likely (T2w, T1w) among ``images``.

    Each ordered pair scores how T2-like the first and how T1-like the second is (relative to the
    other contrast), masks and 4D images being unlikely inputs; ties keep the load order (the
    printed viewer command loads the T2w first). With fewer than two images: (0 or None, None).
    """
    if len(images) < 2:
        return (0 if images else None), None
    scores = [contrast_scores(image) for image in images]
    penalties = [input_penalty(image) for image in images]

    def value(pair: tuple[int, int]) -> tuple[float, bool, int, int]:
        i, j = pair
        fit = (scores[i]["t2"] - scores[i]["t1"]) + (scores[j]["t1"] - scores[j]["t2"]) + penalties[i] + penalties[j]
        return fit, i < j, -i, -j

    pairs = [(i, j) for i in range(len(images)) for j in range(len(images)) if i != j]
    return max(pairs, key=value)


@dataclass(frozen=True)
class Field:
    """One widget of the form: a parameter, or one class's value of a per-class parameter."""

    spec: ParamSpec
    cls: str | None = None

    @property
    def param(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> ParamKind:
        return self.spec.kind

    @property
    def default(self) -> Any:
        return self.spec.default[self.cls] if self.cls is not None else self.spec.default

    @property
    def help(self) -> str:
        return self.spec.help

    @property
    def minimum(self) -> float | None:
        return self.spec.minimum

    @property
    def maximum(self) -> float | None:
        return self.spec.maximum

    @property
    def key(self) -> str:
        return self.param if self.cls is None else f"{self.param}.{self.cls}"

    @property
    def label(self) -> str:
        return f"{self.spec.label} ({self.spec.unit})" if self.spec.unit else self.spec.label


def form_fields(specs: Sequence[ParamSpec], classes: Sequence[str]) -> list[Field]:
    """The task's parameter specs as form fields, per-class ones expanded to one field per class."""
    return [Field(spec, cls) for spec in specs for cls in (classes if spec.per_class else [None])]


def parse_values(fields: Sequence[Field], values: Mapping[str, Any]) -> dict[str, Any]:
    """Form values ({field key: raw value}; missing: default) -> the task's parameters, named as in
    :meth:`~deepseg_imsct.task.Task.run` (per-class ones as {class: value}), each checked by its
    spec (:meth:`~deepseg_imsct.params.ParamSpec.convert`). Raises DeepsegError."""
    params: dict[str, Any] = {}
    for field in fields:
        where = f"{field.label}{' of ' + field.cls if field.cls else ''}"
        value = field.spec.convert(values.get(field.key, field.default), where)
        if field.cls is None:
            params[field.param] = value
        else:
            params.setdefault(field.param, {})[field.cls] = value
    return params


def _text(value: Any, kind: ParamKind | None = None) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Voxels):
        return f"{value.count}vox"
    text = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{text}cm3" if kind is ParamKind.VOLUME else text  # the command wants a volume's unit


def command_args(task: str, t2: Path, t1: Path, params: Mapping[str, Any], specs: Sequence[ParamSpec]) -> list[str]:
    """``imsct_deepseg`` arguments that run ``params`` (only values differing from the specs'
    defaults are spelled out, per class as CLASS=VALUE), e.g. [task, '-i', t2, t1, '-thr', 'edema=0.3']."""
    args = [task, "-i", str(t2), str(t1)]
    by_name = {spec.name: spec for spec in specs}
    for name, value in params.items():
        if name not in by_name:
            raise DeepsegError(f"the task has no parameter '{name}'")
        option, default = by_name[name].option, by_name[name].default
        if isinstance(value, Mapping):
            changed = [f"{c}={_text(v, by_name[name].kind)}" for c, v in value.items() if v != (default or {}).get(c)]
            args += [option, *changed] if changed else []
        elif isinstance(value, bool):
            args += [option] if value else []
        elif value is not None and value != default:
            args += [option, str(value)]
    return args


def expected_outputs(t2: Path, out_dir: Path | None, classes: Sequence[str], qc: Path | None) -> dict[str, Path]:
    """{output key: path} of the images the command writes (:mod:`deepseg_imsct.outputs` names
    them): the classes' masks, and with a QC report folder the cord mask and crop box in it."""
    paths = outputs.output_paths(t2, out_dir, outputs.output_keys(classes, False))
    return {**paths, **(outputs.output_paths(t2, qc, outputs.QC_KEYS) if qc else {})}


def read_stats(path: Path | None) -> dict | None:
    """The ``Statistics`` of a run's ``_stats.json`` (None: no such file, e.g. soft output)."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))["Statistics"] if path else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stats_summary(stats: Mapping[str, Any] | None) -> str:
    """Lesion statistics as a few lines of text: per class volume, components and the largest's
    length along the cord and position."""
    if not stats:
        return "No statistics (soft output: probabilities are not masks)."
    lines = []
    for name, c in stats["Classes"].items():
        if not c["n_components"]:
            lines.append(f"{name}: none")
            continue
        big = c["components"][0]
        lines.append(f"{name}: {c['volume_cm3']:.3f} cm³ ({c['volume_mm3']:.0f} mm³) in {c['n_components']} "
                     f"component{'s' if c['n_components'] > 1 else ''}; largest {big['extent_along_cord_mm']:.1f} mm along the cord, "
                     f"{big['max_axial_area_mm2']:.1f} mm² axial, {big['from_top_mm']:.0f} mm below the cord's top")
    cord = stats["Cord"]
    lines.append(f"cord: {cord['length_mm']:.0f} mm{'' if cord['found'] else ' (not found: positions from the top of the image)'}; "
                 f"vertebral levels: {stats.get('VertebralLevels', 'unknown')}")
    return "\n".join(lines)


def overlay_settings(key: str, soft: bool) -> dict[str, Any]:
    """FSLeyes Display/DisplayOpts property values for one output (passed to OverlayList.append)."""
    settings: dict[str, Any] = {"enabled": key not in HIDDEN}
    if soft and key.startswith("seg-") and key != outputs.CORD:
        return {**settings, "overlayType": "volume", "cmap": outputs.COLOUR_MAPS.get(key, "hot"),
                "displayRange": (0.0, 1.0), "clippingRange": (0.05, 1.01), "alpha": MASK_ALPHA}
    return {**settings, "overlayType": "mask", "colour": outputs.COLOURS.get(key, (1.0, 0.5, 0.0)),
            "outline": key in OUTLINED, "alpha": 100.0 if key in OUTLINED else MASK_ALPHA}


def load_order(keys: Sequence[str]) -> list[str]:
    """Keys in the order to load them (the last one drawn on top): tumor over edema over whole tumor."""
    return sorted(keys, key=outputs.draw_rank)


@dataclass(frozen=True)
class Request:
    """One segmentation the user asked for: inputs and the task's parameters."""

    t2: Path
    t1: Path
    params: Mapping[str, Any]
    specs: Sequence[ParamSpec]
    classes: tuple[str, ...]
    task: str = outputs.DEFAULT_TASK

    def check(self) -> None:
        from ..io import check_distinct

        check_distinct(self.t2, self.t1)

    def args(self) -> list[str]:
        return command_args(self.task, self.t2, self.t1, self.params, self.specs)

    def outputs(self) -> dict[str, Path]:
        return expected_outputs(self.t2, self.params.get("out_dir"), self.classes, self.params.get("qc"))

    def stats_file(self) -> Path | None:
        """The run's ``_stats.json`` (None for soft output, which has none)."""
        if self.soft:
            return None
        return outputs.sidecar_path(outputs.output_paths(self.t2, self.params.get("out_dir"), [outputs.STATS])[outputs.STATS])

    @property
    def soft(self) -> bool:
        """Probabilities are written: -soft, or threshold 0 for every class (sct_deepseg's -thr 0)."""
        thresholds = self.params.get("threshold")
        return bool(self.params.get("soft")) or (isinstance(thresholds, Mapping) and bool(thresholds)
                                                  and all(t == 0 for t in thresholds.values()))
