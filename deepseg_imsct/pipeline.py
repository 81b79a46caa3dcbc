"""The cascade, end to end: T2w + T1w in, one mask per class out on the T2w's native grid.

:func:`segment` reads top to bottom, one stage after the other, each intermediate computed once:
read (:mod:`io`) -> the T2w on the localizer's block (:mod:`grid`) -> stage 1, cord and crop box
(:mod:`localize`) -> stage 2, crop input and sliding window (:mod:`segment`) -> back to the
native grid (:mod:`resample_back`) -> post-processing (:mod:`postprocess`). :class:`Predictor`
holds the two ONNX Runtime sessions, built once and reused for every case; its
:meth:`~Predictor.run_files` reads files and writes the outputs (:mod:`written`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np

from . import __version__
from .cropbox import crop_for
from .errors import DeepsegError
from .grid import Grid, inside_fraction, uncrop
from .inference import OnnxModel, RuntimeOptions
from .io import Volume, as_volume, load_volume, mask_image
from .limits import check_work
from .logs import collect_warnings, timed
from .localize import localize, localizer_block, on_block
from .outputs import DEFAULT_TASK, TOOL_NAME
from .params import configure
from .postprocess import PostprocessConfig, postprocess, postprocess_exclusive
from .registry import DEFAULT_MODEL_SET, ModelSpec, Registry, load_registry
from .resample_back import localization_masks, native_block, native_values, reach_box
from .segment import model_input, n_windows, sliding_window
from .stats import case_stats
from .written import Written, plan_outputs, sidecar, write_case

log = logging.getLogger(__name__)

MIN_FOV_OVERLAP = 0.25  # T1w and T2w fields of view must share at least this fraction


@dataclass
class Result:
    """Outputs of one case, all on the T2w's native grid.

    ``masks``: class -> uint8 mask (float32 probabilities when soft); ``cord``: the localizer's
    cord mask (uint8); ``box``: the segmenter's crop box as a uint8 mask; ``box_mm``: the
    box's scanner-space corners; ``stats``: lesion statistics (:func:`stats.case_stats`; None
    for soft outputs); ``warnings``: what the run warned about; ``timings``: seconds per stage.
    """

    masks: dict[str, nib.Nifti1Image]
    cord: nib.Nifti1Image
    box: nib.Nifti1Image
    box_mm: list[list[float]]
    cord_found: bool
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict | None = None
    warnings: list[str] = field(default_factory=list)


def class_images(probs: np.ndarray, crop_grid: Grid, t2: Volume, classes: Sequence[str], post: PostprocessConfig,
                 timings: dict[str, float], exclusive: bool = False, spec: ModelSpec | None = None) -> dict[str, nib.Nifti1Image]:
    """The segmenter's (K, *crop_grid.shape) probabilities back on the T2w grid, one image per class.

    Masks are resampled only where their class's threshold can be reached (:func:`reach_box`) and
    post-processed on that block, whose border then acts as the image's: the same result as on
    the whole grid, since the mask is empty outside the block. Soft outputs (probabilities) cover
    the crop's whole footprint. Zero elsewhere. ``spec``: the segmenter, whose semantics say how
    to go back (:func:`native_values`). ``exclusive`` (a softmax model, the last class
    the union): every class on the union's block, post-processed together
    (:func:`postprocess_exclusive`).
    """
    grid, images = t2.grid, {}
    if exclusive and not post.soft:
        with timed(timings, "resample_back"):
            box = reach_box(probs[-1], post.classes[classes[-1]].threshold)
            blocks = {}
            for i, name in enumerate(classes):
                blocks[name], start = native_block(probs[i], crop_grid, grid, box=box)
        with timed(timings, "postprocess"):
            masks = postprocess_exclusive(blocks, post.classes, classes[-1], grid.voxel_volume_mm3)
            return {name: mask_image(uncrop(masks[name], start, grid.shape, order="F"), t2.image) for name in classes}
    for i, name in enumerate(classes):
        with timed(timings, "resample_back"):
            threshold = None if post.soft else post.classes[name].threshold
            block, start = native_values(probs[i], crop_grid, grid, spec, threshold)
        with timed(timings, "postprocess"):
            values = block if post.soft else postprocess(block, post.classes[name], grid.voxel_volume_mm3)
            images[name] = mask_image(uncrop(values, start, grid.shape, order="F"), t2.image)
    return images


def check_overlap(t2: Volume, t1: Volume) -> None:
    """Refuse T1w/T2w pairs whose fields of view do not overlap in scanner space."""
    shared = max(inside_fraction(t1.grid, t2.grid), inside_fraction(t2.grid, t1.grid))
    if shared < MIN_FOV_OVERLAP:
        raise DeepsegError(
            f"T1w {t1.name} and T2w {t2.name} overlap on only {shared:.0%} of their fields of view in scanner space: "
            "give two scans of the same subject and session (check the affines/headers)"
        )


def check_inputs(t2: Volume, t1: Volume) -> None:
    """Checks before stage 1: the fields of view overlap and the two scans differ."""
    check_overlap(t2, t1)
    if t2.data.shape == t1.data.shape and np.array_equal(t2.data, t1.data):
        raise DeepsegError(f"T2w {t2.name} and T1w {t1.name} hold the same voxel data (a copy of one scan?): "
                           "give the T2w and the gadolinium T1w")


def segment(
    t2: Volume,
    t1: Volume,
    localizer: OnnxModel,
    segmenter: OnnxModel,
    post: PostprocessConfig,
    progress: bool = False,
) -> Result:
    """Run the cascade on one case (see the module docstring for the stages)."""
    timings: dict[str, float] = {}
    warned: list[str] = []
    with collect_warnings(warned):
        result = _cascade(t2, t1, localizer, segmenter, post, progress, timings)
    result.warnings = warned
    return result


def _cascade(t2: Volume, t1: Volume, localizer: OnnxModel, segmenter: OnnxModel, post: PostprocessConfig, progress: bool,
             timings: dict[str, float]) -> Result:
    spec: ModelSpec = segmenter.spec
    check_inputs(t2, t1)
    with timed(timings, "resample"):  # the T2w onto the localizer's block
        block = localizer_block(t2.grid, localizer.spec)
        check_work(block.shape, 2, 1, f"the localizer's block for T2w {t2.name}")
        t2_block = on_block(t2, block, localizer.spec)
    with timed(timings, "localize"):
        cord = localize(t2, t1, t2_block, block, localizer)
    with timed(timings, "crop"):
        box, work = crop_for(cord, t2.grid, spec)
        crop_grid = box.on(work)
        check_work(crop_grid.shape, len(spec.contrasts), len(spec.classes), _crop_name(t2, spec, cord is None))
        x = model_input([(t2.data, t2.grid), (t1.data, t1.grid)], crop_grid, spec.semantics, spec.spacing_mm)
    with timed(timings, "segment"):
        probs = sliding_window(x, segmenter, spec.patch_size, spec.stride, len(spec.classes), segmenter.batch_size,
                               _bar(progress, x.shape[1:], spec), normalize_windows=spec.semantics.normalization.value == "window")
    masks = class_images(probs, crop_grid, t2, spec.classes, post, timings, exclusive=spec.output == "exclusive", spec=spec)
    with timed(timings, "postprocess"):
        cord_native, box_native = localization_masks(cord, crop_grid, t2.grid)
    with timed(timings, "stats"):
        stats = None if post.soft else case_stats({c: np.asarray(m.dataobj) for c, m in masks.items()}, cord_native, t2, t1)
    return Result(
        masks=masks,
        cord=mask_image(cord_native.view(np.uint8), t2.image),
        box=mask_image(box_native.view(np.uint8), t2.image),
        box_mm=crop_grid.corners_mm()[[0, -1]].round(2).tolist(),
        cord_found=cord is not None,
        timings=timings,
        stats=stats,
    )


def _crop_name(t2: Volume, spec: ModelSpec, whole: bool) -> str:
    """Stage 2's crop as memory refusals name it."""
    where = "the whole field of view: no spinal cord was found" if whole else "around the spinal cord"
    return f"the segmenter's crop of T2w {t2.name} ({where}) on its {'x'.join(f'{s:g}' for s in spec.spacing_mm)} mm grid"


def _bar(enabled: bool, shape, spec: ModelSpec):
    if not enabled:
        return None
    from tqdm import tqdm

    bar = tqdm(total=n_windows(shape, spec.patch_size, spec.stride), desc="segmenting", unit="patch", leave=False)
    return bar.update


class Predictor:
    """The task's two models, loaded once; call it on as many cases as needed.

    ``versions`` pins model versions ({model name: version}); ``runtime``: ONNX Runtime settings
    (:func:`params.configure` makes them from user values).
    """

    def __init__(
        self,
        task: str = DEFAULT_TASK,
        *,
        versions: Mapping[str, str] | None = None,
        runtime: RuntimeOptions = RuntimeOptions(),
        registry: Registry | None = None,
        offline: bool = False,
        progress: bool = False,
        model_set: str | None = None,
    ):
        self.registry = registry or load_registry()
        self.task = self.registry.task(task)
        self.model_set = model_set or DEFAULT_MODEL_SET  # 'phantom' (shipped) or 'sct' (published, see -model-set)
        localizer, segmenter = self.task.models(self.model_set)
        versions = dict(versions or {})
        unknown = set(versions) - {localizer, segmenter}
        if unknown:
            raise DeepsegError(f"no model named {', '.join(sorted(unknown))} in task {self.task.name}: models are {localizer}, {segmenter}")
        self.progress = progress
        self.runtime = runtime
        self.last_timings: dict[str, float] = {}  # seconds per stage of the last run_files call
        self.localizer = self._load(localizer, versions.get(localizer), offline)
        self.segmenter = self._load(segmenter, versions.get(segmenter), offline)

    def _load(self, name: str, version: str | None, offline: bool) -> OnnxModel:
        from .download import ensure_model, verified_spec

        spec = self.registry.model(name, version)
        path = ensure_model(spec, offline=offline, progress=self.progress)
        return OnnxModel(path, verified_spec(spec), self.runtime)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.segmenter.spec.classes

    def postprocessing(self, **values: Any) -> PostprocessConfig:
        """Post-processing from user values named as in :func:`params.parameters` (e.g.
        ``threshold={"edema": 0.4}``, ``soft=True``), checked; missing ones: the registry's defaults."""
        return configure(self.segmenter.spec, values).post

    def default_postprocessing(self) -> PostprocessConfig:
        return self.postprocessing()

    def __call__(self, t2, t1, post: PostprocessConfig | None = None) -> Result:
        """Segment one case: ``t2``/``t1`` are paths or nibabel images (any orientation)."""
        t2v, t1v = _volume(t2, "T2w"), _volume(t1, "T1w")
        return segment(t2v, t1v, self.localizer, self.segmenter, post or self.default_postprocessing(), self.progress)

    def provenance(self) -> dict:
        return {
            "Name": TOOL_NAME,
            "Version": __version__,
            "Task": self.task.name,
            "ModelSet": self.model_set,
            "Models": {m.spec.name: m.spec.provenance() for m in (self.localizer, self.segmenter)},
        }

    def run_files(
        self,
        t2_path: Path | str,
        t1_path: Path | str,
        out_dir: Path | str | None = None,
        post: PostprocessConfig | None = None,
        qc: Path | str | None = None,
        command: str | None = None,
        overwrite: bool = False,
    ) -> Written:
        """Segment files and write ``<t2 name>_seg-<class>.nii.gz`` (+ JSON sidecars) and the
        statistics ``<t2 name>_stats.tsv`` (one row) and ``_stats.json`` (all) atomically.

        Output folder: ``out_dir`` or the T2w's folder (or ``out_dir`` as a file name:
        :func:`outputs.output_base`). ``qc``: a report folder (:mod:`qc_report`) that receives the
        cord mask (``_seg-cord``), the crop box (``_cropbox``), pictures and the report's index. Returns {output name: path} with the statistics and the
        :class:`Result` (:class:`written.Written`). The outputs are checked before any work
        (:func:`written.plan_outputs`): an input is never replaced, nor, unless ``overwrite``, a
        file this tool did not write or wrote from another T2w.
        """
        post = post or self.default_postprocessing()
        timings: dict[str, float] = {}
        with timed(timings, "load"):
            t2, t1 = load_volume(t2_path, "T2w"), load_volume(t1_path, "T1w")
        plan = plan_outputs(t2, t1, self.classes, post, out_dir, qc, overwrite)
        result = segment(t2, t1, self.localizer, self.segmenter, post, self.progress)
        self.last_timings = {**timings, **result.timings}
        side = sidecar(plan, result, self.provenance(), command, post, vars(self.runtime))
        return write_case(plan, t2, t1, result, side, self.last_timings)


def _volume(source, role: str) -> Volume:
    if isinstance(source, Volume):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_volume(source, role)
    return as_volume(source, role)


def segment_files(t2_path, t1_path, out_dir=None, task: str = DEFAULT_TASK, *, registry: Registry | None = None,
                  **values: Any) -> Written:
    """One-call API: segment one pair of files with parameters named as in :func:`params.parameters`
    (e.g. ``qc="qc"``, ``threshold=0.6``); returns {output key: path} with ``.stats``."""
    registry = registry or load_registry()
    segmenter = registry.task(task).models(values.get("model_set"))[1]
    settings = configure(registry.model(segmenter), {"out_dir": out_dir, **values})
    predictor = Predictor(task, runtime=settings.runtime, registry=registry, model_set=settings.model_set)
    return predictor.run_files(t2_path, t1_path, settings.out_dir, settings.post, settings.qc, overwrite=settings.overwrite)
