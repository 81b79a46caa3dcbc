"""The cascade, end to end: T2w + T1w in, one mask per class out on the T2w's native grid.

Data flows one way through :func:`segment`: load -> resample (the T2w onto the localizer's
block) -> localize (stage 1) -> crop box -> segment (stage 2, sliding window) -> back to native
-> post-process. :class:`Predictor` holds the two ONNX Runtime sessions, built once and reused
for every case.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np

from . import __version__
from .errors import DeepsegError
from .grid import Grid, Triple, bounding_box, footprint, inside_fraction, resample, uncrop, working_grid
from .inference import OnnxModel, RuntimeOptions, sliding_window, zscore
from .io import Volume, as_volume, load_volume, mask_image, nifti_stem, write_outputs
from .localize import box_for_mask, centred_block, cord_components, model_input
from .postprocess import MM3_PER_CM3, PostprocessConfig, postprocess
from .registry import ModelSpec, Registry, load_registry

log = logging.getLogger(__name__)

DEFAULT_TASK = "seg_tumor-edema-cavity_t1-t2"
MIN_FOV_OVERLAP = 0.25  # T1w and T2w fields of view must share at least this fraction
REACH_MARGIN = 1e-4  # probability: float32 trilinear interpolation of values in [0, 1] errs by a few 1e-6 at most


@dataclass
class Result:
    """Outputs of one case, all on the T2w's native grid.

    ``masks``: class -> uint8 mask (float32 probabilities when soft); ``cord``: the localizer's
    cord mask (uint8); ``box``: the segmenter's crop box as a uint8 mask; ``box_mm``: the
    box's scanner-space corners; ``timings``: seconds per stage.
    """

    masks: dict[str, nib.Nifti1Image]
    cord: nib.Nifti1Image
    box: nib.Nifti1Image
    box_mm: list[list[float]]
    cord_found: bool
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
    log.debug("%s: %.3f s", stage, timings[stage])


def reach_box(values: np.ndarray, threshold: float) -> tuple[Triple, Triple]:
    """The box ``(start, size)`` of ``values`` voxels outside which trilinear interpolation stays
    below ``threshold``; size (0, 0, 0) when no voxel comes near it.

    An interpolated value is a convex combination of the 2x2x2 source voxels around it, so it is
    below the threshold wherever all of them are: the box is the bounding box of the voxels at or
    above ``threshold - REACH_MARGIN`` (far more than float32 rounding), grown by one voxel.
    """
    return bounding_box(values >= np.float32(threshold - REACH_MARGIN), margin=1)


def native_block(
    values: np.ndarray, src: Grid, native: Grid, order: int = 1, box: tuple[Triple, Triple] | None = None
) -> tuple[np.ndarray, Triple]:
    """Resample (*C, *src.shape) ``values`` onto the part of ``native`` that ``src`` covers, or
    only the part around ``box`` (``(start, size)`` in ``src`` voxels, e.g. :func:`reach_box`).

    Returns the block and its start on ``native``; everything outside it would be 0 (with
    ``box``: below the threshold the box was made for).
    """
    if box is not None and 0 in box[1]:
        return np.zeros(values.shape[:-3] + (0, 0, 0), np.float32 if order == 1 else values.dtype), (0, 0, 0)
    start, size = footprint(src if box is None else src.subgrid(*box), native)
    return resample(values, src, native.subgrid(start, size), order=order, fill=0), start


def localization_masks(cord: np.ndarray | None, block: Grid, crop_grid: Grid, native: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1's cord (on the localizer ``block``; None: no cord) and crop box as boolean masks on
    ``native`` (Fortran order, as NIfTI stores them).

    The cord is resampled trilinearly and kept where it reaches 0.5 (computed only around it,
    see :func:`reach_box`); the box by nearest neighbour.
    """
    cord_native = np.zeros(native.shape, bool, order="F")
    if cord is not None:
        values = cord.astype(np.float32)
        part, start = native_block(values, block, native, box=reach_box(values, 0.5))
        cord_native = uncrop(part >= 0.5, start, native.shape, order="F")
    part, start = native_block(np.ones(crop_grid.shape, bool), crop_grid, native, order=0)
    return cord_native, uncrop(part, start, native.shape, order="F")


def class_images(probs: np.ndarray, crop_grid: Grid, t2: Volume, classes: Sequence[str], post: PostprocessConfig,
                 timings: dict[str, float]) -> dict[str, nib.Nifti1Image]:
    """The segmenter's (K, *crop_grid.shape) probabilities back on the T2w grid, one image per class.

    Masks are resampled only where their class's threshold can be reached (:func:`reach_box`) and
    post-processed on that block, whose border then acts as the image's: the same result as on
    the whole grid, since the mask is empty outside the block. Soft outputs (probabilities) cover
    the crop's whole footprint. Zero elsewhere.
    """
    grid, images = t2.grid, {}
    for i, name in enumerate(classes):
        with _timed(timings, "resample_back"):
            box = None if post.soft else reach_box(probs[i], post.classes[name].threshold)
            block, start = native_block(probs[i], crop_grid, grid, box=box)
        with _timed(timings, "postprocess"):
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


def localizer_block(native: Grid, spec: ModelSpec) -> Grid:
    """The localizer's single input block: its patch, centred on the scan's working grid."""
    return centred_block(working_grid(native, spec.spacing_mm), spec.patch_size)


def find_cord(volume: Volume, model: OnnxModel, raw: np.ndarray | None = None) -> tuple[np.ndarray | None, Grid]:
    """The plausible cord on the localizer's input block (:func:`localize.cord_components`), or None.

    Only voxels inside the scan's field of view are plausible: predictions in the block's zero
    padding (a field of view smaller than the block) are dropped before the components are counted.
    ``raw``: the volume already resampled onto the block (NaN outside its field of view), if at hand.
    """
    spec = model.spec
    block = localizer_block(volume.grid, spec)
    if raw is None:
        raw = resample(volume.data, volume.grid, block, order=1, fill=np.nan)  # NaN outside the field of view
    prob = model(zscore(raw)[None, None])[0, 0]  # = model_input([(volume.data, volume.grid)], block)[None]
    prob[np.isnan(raw)] = 0.0
    post = spec.postprocessing[spec.classes[0]]
    min_voxels = max(1, int(np.ceil(post.min_volume_cm3 * MM3_PER_CM3 / block.voxel_volume_mm3)))
    return cord_components(prob >= post.threshold, min_voxels), block


def localize(t2: Volume, t1: Volume, model: OnnxModel, t2_block: np.ndarray | None = None) -> tuple[np.ndarray | None, Grid]:
    """Stage 1 on the T2w, with a warning when the inputs look swapped or no cord is found.

    ``t2_block``: the T2w already resampled onto :func:`localizer_block` (NaN outside its field of view).
    """
    block = localizer_block(t2.grid, model.spec)
    if t2_block is None:
        t2_block = resample(t2.data, t2.grid, block, order=1, fill=np.nan)
    cord, _ = find_cord(t2, model, t2_block)
    if cord is not None:
        if looks_swapped(t2, t1, cord, block, t2_block):
            log.warning("%s looks like a T1w and %s like a T2w (CSF brighter than the cord on the second): "
                        "check the input order (T2w first, or use -c)", t2.name, t1.name)
        return cord, block
    if find_cord(t1, model)[0] is not None:
        log.warning("no spinal cord found in the T2w %s but one in the T1w %s: the inputs look swapped "
                    "(give the T2w first, or use -c); segmenting the whole field of view", t2.name, t1.name)
    else:
        log.warning("the localizer found no spinal cord in %s: segmenting the whole field of view (slower, less accurate)", t2.name)
    return None, block


def looks_swapped(t2: Volume, t1: Volume, cord: np.ndarray, block: Grid, t2_block: np.ndarray | None = None) -> bool:
    """True when the CSF around the cord is darker than the cord on the 'T2w' and brighter on the
    'T1w': the opposite of both contrasts (CSF is bright on T2w, dark on T1w).

    ``t2_block``: the T2w already resampled onto ``block`` (NaN outside), if at hand.
    """
    shell = _dilate(cord, 2) & ~cord
    if not shell.any():
        return False
    ratios = []
    for vol, values in ((t2, t2_block), (t1, None)):
        if values is None:
            values = resample(vol.data, vol.grid, block, fill=np.nan)
        inner, outer = np.nanmedian(values[cord]), np.nanmedian(values[shell])
        ratios.append(outer / inner if inner > 0 else np.nan)
    return bool(ratios[0] < 1.0 < ratios[1])


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by ``steps`` voxels with the 6-neighbourhood."""
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        for axis in range(out.ndim):
            grown[(slice(None),) * axis + (slice(1, None),)] |= out[(slice(None),) * axis + (slice(None, -1),)]
            grown[(slice(None),) * axis + (slice(None, -1),)] |= out[(slice(None),) * axis + (slice(1, None),)]
        out = grown
    return out


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
    spec: ModelSpec = segmenter.spec
    check_overlap(t2, t1)
    with _timed(timings, "resample"):  # the T2w onto the localizer's block
        t2_block = resample(t2.data, t2.grid, localizer_block(t2.grid, localizer.spec), order=1, fill=np.nan)
    with _timed(timings, "localize"):
        cord, block = localize(t2, t1, localizer, t2_block)
    with _timed(timings, "crop"):
        box, work = box_for_mask(cord, block, t2.grid, spec.spacing_mm, spec.safety_factor, spec.patch_size, spec.stride)
        crop_grid = box.on(work)
        x = model_input([(t2.data, t2.grid), (t1.data, t1.grid)], crop_grid)
    with _timed(timings, "segment"):
        probs = sliding_window(x, segmenter, spec.patch_size, spec.stride, len(spec.classes), segmenter.batch_size, _bar(progress, x.shape[1:], spec))
    masks = class_images(probs, crop_grid, t2, spec.classes, post, timings)
    with _timed(timings, "postprocess"):
        cord_native, box_native = localization_masks(cord, block, crop_grid, t2.grid)
    return Result(
        masks=masks,
        cord=mask_image(cord_native.view(np.uint8), t2.image),
        box=mask_image(box_native.view(np.uint8), t2.image),
        box_mm=crop_grid.corners_mm()[[0, -1]].round(2).tolist(),
        cord_found=cord is not None,
        timings=timings,
    )


def _bar(enabled: bool, shape, spec: ModelSpec):
    if not enabled:
        return None
    from tqdm import tqdm

    from .inference import n_windows

    bar = tqdm(total=n_windows(shape, spec.patch_size, spec.stride), desc="segmenting", unit="patch", leave=False)
    return bar.update


class Predictor:
    """The task's two models, loaded once; call it on as many cases as needed.

    ``versions`` pins model versions ({model name: version}); ``model_files`` bypasses the
    download/cache step with explicit ONNX paths (still checked against the registry spec).
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
    ):
        self.registry = registry or load_registry()
        self.task = self.registry.task(task)
        versions = dict(versions or {})
        unknown = set(versions) - {self.task.localizer, self.task.segmenter}
        if unknown:
            raise DeepsegError(f"no model named {', '.join(sorted(unknown))} in task {self.task.name}: models are {self.task.localizer}, {self.task.segmenter}")
        self.progress = progress
        self.runtime = runtime
        self.last_timings: dict[str, float] = {}  # seconds per stage of the last run_files call
        self.localizer = self._load(self.task.localizer, versions.get(self.task.localizer), offline)
        self.segmenter = self._load(self.task.segmenter, versions.get(self.task.segmenter), offline)

    def _load(self, name: str, version: str | None, offline: bool) -> OnnxModel:
        from .download import ensure_model

        spec = self.registry.model(name, version)
        return OnnxModel(ensure_model(spec, offline=offline, progress=self.progress), spec, self.runtime)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.segmenter.spec.classes

    def default_postprocessing(self) -> PostprocessConfig:
        return PostprocessConfig.from_defaults(self.segmenter.spec.postprocessing)

    def __call__(self, t2, t1, post: PostprocessConfig | None = None) -> Result:
        """Segment one case: ``t2``/``t1`` are paths or nibabel images (any orientation)."""
        t2v, t1v = _volume(t2, "T2w"), _volume(t1, "T1w")
        return segment(t2v, t1v, self.localizer, self.segmenter, post or self.default_postprocessing(), self.progress)

    def provenance(self) -> dict:
        return {
            "Name": "deepseg-imsct",
            "Version": __version__,
            "Task": self.task.name,
            "Models": {m.spec.name: {"version": m.spec.version, "sha256": m.spec.sha256} for m in (self.localizer, self.segmenter)},
        }

    def run_files(
        self,
        t2_path: Path | str,
        t1_path: Path | str,
        out_dir: Path | str | None = None,
        post: PostprocessConfig | None = None,
        qc: bool = False,
        command: str | None = None,
    ) -> dict[str, Path]:
        """Segment files and write ``<t2 name>_seg-<class>.nii.gz`` (+ JSON sidecars) atomically.

        Output folder: ``out_dir`` or the T2w's folder. ``qc`` adds the cord mask (``_seg-cord``)
        and the crop box (``_cropbox``). Returns {output name: path}.
        """
        post = post or self.default_postprocessing()
        timings: dict[str, float] = {}
        with _timed(timings, "load"):
            t2, t1 = load_volume(t2_path, "T2w"), load_volume(t1_path, "T1w")
        if t2.path.resolve() == t1.path.resolve():
            raise DeepsegError(f"the same file {t2.path} was given as T2w and T1w: give the T2w and the gadolinium T1w")
        result = segment(t2, t1, self.localizer, self.segmenter, post, self.progress)
        self.last_timings = {**timings, **result.timings}
        folder = Path(out_dir) if out_dir else t2.path.parent
        stem = nifti_stem(t2.path)
        outputs = {f"seg-{name}": img for name, img in result.masks.items()}
        if qc:
            outputs.update({"seg-cord": result.cord, "cropbox": result.box})
        sidecar = {
            "GeneratedBy": [{**self.provenance(), "CommandLine": command}],
            "Sources": {"T2w": str(t2.path), "T1w": str(t1.path)},
            "Postprocessing": post.as_dict(),
            "Runtime": vars(self.runtime),
            "CropBoxScannerMm": result.box_mm,
            "CordFound": result.cord_found,
        }
        paths = {key: folder / f"{stem}_{key}.nii.gz" for key in outputs}
        with _timed(self.last_timings, "write"):
            write_outputs(
                {paths[k]: outputs[k] for k in outputs},
                {paths[k].with_name(paths[k].name[: -len(".nii.gz")] + ".json"): {**sidecar, "Output": k} for k in outputs},
            )
        return paths


def _volume(source, role: str) -> Volume:
    if isinstance(source, Volume):
        return source
    if isinstance(source, (str, Path)):
        return load_volume(source, role)
    return as_volume(source, role)


def segment_files(t2_path, t1_path, out_dir=None, task: str = DEFAULT_TASK, **kwargs) -> dict[str, Path]:
    """One-call API: build a :class:`Predictor` and segment one pair of files."""
    return Predictor(task).run_files(t2_path, t1_path, out_dir, **kwargs)
