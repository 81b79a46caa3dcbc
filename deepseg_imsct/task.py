"""The task object a toolbox discovers through the ``deepseg_imsct.tasks`` entry point.

It describes itself (name, aliases, contrasts in order, models, output suffixes, parameter specs
a GUI can turn into a form) without loading any model or importing onnxruntime; :meth:`Task.run`
runs the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from . import outputs
from .params import ParamSpec, parameters


@dataclass(frozen=True)
class Task:
    name: str
    registry_path: Path | None = None  # None: the registry shipped with the package

    def _registry(self):
        from .registry import load_registry

        return load_registry(self.registry_path)

    def _spec(self):
        return self._registry().task(self.name)

    def _segmenter(self):
        return self._registry().model(self._spec().segmenter)

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
        return self._segmenter().classes

    def output_suffixes(self) -> dict[str, str]:
        """{class: file-name suffix}, e.g. {'tumor': '_seg-tumor'}; QC outputs included."""
        return outputs.output_suffixes(self.classes())

    def parameters(self) -> list[ParamSpec]:
        """Every user parameter (the form a GUI shows); defaults from the segmenter's registry entry."""
        return parameters(self._segmenter().postprocessing)

    def run(self, inputs: Mapping[str, Path | str], params: Mapping[str, Any] | None = None) -> dict[str, Path]:
        """Run on ``inputs`` ({'t2': path, 't1': path}) with ``params`` named as in :meth:`parameters`."""
        from .errors import DeepsegError
        from .io import described
        from .pipeline import segment_files

        if not isinstance(inputs, Mapping) or any(c not in inputs for c in self.contrasts):
            what = f"keys {sorted(map(str, inputs))}" if isinstance(inputs, Mapping) else described(inputs)
            raise DeepsegError(f"Task.run: inputs must map each of {' '.join(self.contrasts)} to a file path; got {what}")
        if params is not None and not isinstance(params, Mapping):
            raise DeepsegError(f"Task.run: params must map parameter names to values; got {described(params)}")
        return segment_files(inputs["t2"], inputs["t1"], task=self.name, registry=self._registry(), **dict(params or {}))


TUMOR_EDEMA_CAVITY = Task(outputs.DEFAULT_TASK)


def discover_tasks() -> dict[str, Task]:
    """Every task registered under the ``deepseg_imsct.tasks`` entry-point group, by name and alias."""
    from importlib.metadata import entry_points

    found: dict[str, Task] = {}
    for ep in entry_points(group="deepseg_imsct.tasks"):
        task = ep.load()
        found[task.name] = task
        for alias in task.aliases:
            found.setdefault(alias, task)
    return found
