"""Writing one case's files: the outputs planned and checked before any work, then written at once.

:meth:`pipeline.Predictor.run_files` calls :func:`plan_outputs` before the cascade (nothing runs
when an output would replace an input, or a file this tool did not write) and :func:`write_case`
after it: the masks ``<T2w name>_seg-<class>.nii.gz`` with their JSON sidecars (:func:`sidecar`)
and the statistics ``_stats.tsv``/``_stats.json`` in one transaction (:func:`io.write_outputs`),
then the QC report (:mod:`qc_report`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import DeepsegError
from .io import Volume, check_distinct, write_outputs
from .logs import timed
from .outputs import STATS, class_key, nifti_stem, output_keys, output_paths, sidecar_path
from .postprocess import PostprocessConfig
from .qc_report import check_report, write_report
from .stats import stats_row, tsv_text
from .transaction import check_outputs

if TYPE_CHECKING:
    from .pipeline import Result


class Written(dict):
    """{output key: path} of :meth:`pipeline.Predictor.run_files`, with the run's
    :class:`pipeline.Result` (``.result``) and its statistics (``.stats``, as written in
    ``<T2w name>_stats.json``)."""

    def __init__(self, paths: Mapping[str, Path], result: Result):
        super().__init__(paths)
        self.result, self.stats = result, result.stats


@dataclass(frozen=True)
class Plan:
    """One case's outputs: the ``keys`` to write and {key: path}, the inputs by role (never
    replaced), the QC report's folder (None: no report) and whether files this tool wrote from
    another T2w, or files it did not write, may be replaced."""

    keys: list[str]
    paths: dict[str, Path]
    inputs: dict[str, Path]
    qc: Path | None
    overwrite: bool


def plan_outputs(t2: Volume, t1: Volume, classes: Sequence[str], post: PostprocessConfig,
                 out_dir: Path | str | None, qc: Path | str | None, overwrite: bool) -> Plan:
    """The outputs of one case, checked before any work (:func:`transaction.check_outputs`,
    :func:`qc_report.check_report`); folder and names from :func:`outputs.output_paths`."""
    check_distinct(t2.path, t1.path)
    keys = output_keys(classes, False, stats=not post.soft)
    paths = output_paths(t2.path, out_dir, keys)
    inputs = {"T2w": t2.path, "T1w": t1.path}
    check_outputs(paths.values(), inputs, overwrite)
    if qc is not None and not isinstance(qc, (str, os.PathLike)):
        raise DeepsegError(f"qc: {qc!r} is not a folder path: give the QC report's folder (a str or pathlib.Path), or None")
    if qc:
        check_report(Path(qc), t2.path, inputs, overwrite)
    return Plan(keys, paths, inputs, Path(qc) if qc else None, overwrite)


def sidecar(plan: Plan, result: Result, provenance: Mapping[str, Any], command: str | None,
            post: PostprocessConfig, runtime: Mapping[str, Any]) -> dict[str, Any]:
    """What every output's JSON sidecar records: the tool and models (``provenance``, see
    :meth:`pipeline.Predictor.provenance`) with the command line, the inputs, the settings, the
    crop box (scanner mm) and whether a cord was found."""
    return {
        "GeneratedBy": [{**provenance, "CommandLine": command}],
        "Sources": {role: os.path.abspath(path) for role, path in plan.inputs.items()},
        "Postprocessing": post.as_dict(),
        "Runtime": dict(runtime),
        "CropBoxScannerMm": result.box_mm,
        "CordFound": result.cord_found,
    }


def write_case(plan: Plan, t2: Volume, t1: Volume, result: Result, side: Mapping[str, Any],
               timings: dict[str, float]) -> Written:
    """Write the masks, their sidecars (``side`` and the output's key) and the statistics at once
    (checked again under the folder's lock), then the QC report; seconds in ``timings``
    ('write', 'qc')."""
    paths = dict(plan.paths)
    images = {class_key(name): img for name, img in result.masks.items()}
    texts = {} if result.stats is None else {paths[STATS]: tsv_text([stats_row(result.stats, nifti_stem(t2.path))])}
    with timed(timings, "write"):
        sidecars = {sidecar_path(paths[k]): {**side, "Output": k} for k in plan.keys}
        if result.stats is not None:
            sidecars[sidecar_path(paths[STATS])] = {**side, "Output": STATS, "Statistics": result.stats}
        write_outputs({paths[k]: images[k] for k in plan.keys if k in images}, sidecars,
                      check=lambda: check_outputs(paths.values(), plan.inputs, plan.overwrite), files=texts)
    if plan.qc:
        with timed(timings, "qc"):
            provenance = {key: side[key] for key in ("GeneratedBy", "Sources", "Postprocessing", "CropBoxScannerMm")}
            paths.update(write_report(plan.qc, t2, t1, result, provenance, plan.overwrite))
    return Written(paths, result)
