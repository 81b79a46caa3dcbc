"""The task object a toolbox discovers through the ``deepseg_imsct.tasks`` entry point.

It describes itself (name, aliases, contrasts in order, models, output suffixes, parameter specs
a GUI can turn into a form) without loading any model or importing onnxruntime; :meth:`Task.run`
runs the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping


class ParamKind(str, Enum):
    FLOAT = "float"
    BOOL = "bool"
    INT = "int"
    PATH = "path"


@dataclass(frozen=True)
class ParamSpec:
    """One user-settable parameter. ``per_class``: one value per output class."""

    name: str
    kind: ParamKind
    default: Any
    help: str
    per_class: bool = False
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""


@dataclass(frozen=True)
class Task:
    name: str
    registry_path: Path | None = None  # None: the registry shipped with the package

    def _registry(self):
        from .registry import load_registry

        return load_registry(self.registry_path)

    def _spec(self):
        return self._registry().task(self.name)

    @property
    def aliases(self) -> tuple[str, ...]:
        return self._spec().aliases

    @property
    def description(self) -> str:
        return self._spec().description

    @property
    def contrasts(self) -> tuple[str, ...]:
        """Required inputs, in the order the command takes them (T2w first)."""
        return self._spec().contrasts

    @property
    def models(self) -> tuple[str, str]:
        spec = self._spec()
        return spec.localizer, spec.segmenter

    def classes(self) -> tuple[str, ...]:
        return self._registry().model(self._spec().segmenter).classes

    def output_suffixes(self) -> dict[str, str]:
        """{class: file-name suffix}, e.g. {'tumor': '_seg-tumor'}; QC outputs included."""
        return {**{c: f"_seg-{c}" for c in self.classes()}, "cord": "_seg-cord", "cropbox": "_cropbox"}

    def parameters(self) -> list[ParamSpec]:
        """The form a GUI shows; defaults come from the segmenter's registry entry."""
        defaults = self._registry().model(self._spec().segmenter).postprocessing
        return [
            ParamSpec("threshold", ParamKind.FLOAT, {c: d.threshold for c, d in defaults.items()},
                      "Binarization threshold on the probability (voxels >= threshold are kept)", True, 0.0, 1.0),
            ParamSpec("fill_holes", ParamKind.BOOL, {c: d.fill_holes for c, d in defaults.items()},
                      "Fill 3D holes in each mask", True),
            ParamSpec("min_volume_cm3", ParamKind.FLOAT, {c: d.min_volume_cm3 for c, d in defaults.items()},
                      "Remove connected components smaller than this volume", True, 0.0, None, "cm³"),
            ParamSpec("soft", ParamKind.BOOL, False, "Write probabilities (float32) instead of binary masks"),
            ParamSpec("qc", ParamKind.BOOL, False, "Also write the localizer's cord mask and the crop box"),
            ParamSpec("out_dir", ParamKind.PATH, None, "Output folder (default: the T2w's folder)"),
            ParamSpec("threads", ParamKind.INT, 0, "CPU threads for ONNX Runtime (0: physical cores)", False, 0),
        ]

    def run(self, inputs: Mapping[str, Path | str], params: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Run on ``inputs`` ({'t2': path, 't1': path}) with ``params`` named as in :meth:`parameters`."""
        from .inference import RuntimeOptions
        from .pipeline import Predictor

        params = dict(params or {})
        predictor = Predictor(
            self.name, runtime=RuntimeOptions(threads=int(params.get("threads", 0))), registry=self._registry()
        )
        post = predictor.default_postprocessing().with_overrides(
            params.get("threshold"), params.get("fill_holes"), params.get("min_volume_cm3"), params.get("soft")
        )
        return predictor.run_files(inputs["t2"], inputs["t1"], params.get("out_dir"), post, bool(params.get("qc")))


TUMOR_EDEMA_CAVITY = Task("seg_tumor-edema-cavity_t1-t2")


def discover_tasks() -> dict[str, Task]:
    """Every task registered under the ``deepseg_imsct.tasks`` entry-point group, by name and alias."""
    from importlib.metadata import entry_points

    found: dict[str, Task] = {}
    for ep in entry_points(group="deepseg_imsct.tasks"):
        task = ep.load()
        found[task.name] = task
    return found
