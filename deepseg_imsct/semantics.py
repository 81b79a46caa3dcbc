"""How a model expects to be run: the inference semantics of a registry entry, as data.

Every model version in ``model_registry.json`` may carry a ``semantics`` block; the stage modules
read it (never a model's name) to choose how they resample, normalize, crop, stitch, resample back
and post-process. The defaults are this package's own semantics (the phantom models); the
published real-data models of the study ask for the reference framework's (ivadomed 2.6) with
``{"preset": "ivadomed"}``, documented in docs/published-models.md.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any, Mapping


class GridKind(str, Enum):
    """How a scan is put on the model's grid (axes 'SAR' either way)."""

    SCANNER = "scanner"  # exact model spacing, centred on the field of view, resampled through the affines
    ZOOM = "zoom"  # scipy.ndimage.zoom of the reoriented array: shape round(n * zoom / spacing), corner-aligned


class NormScope(str, Enum):
    """Where the z-score statistics of an input channel come from."""

    FIELD_OF_VIEW = "field_of_view"  # the crop/block's voxels inside the scan's field of view (padding excluded)
    WINDOW = "window"  # each input window separately, zero padding included; std < 1e-5: mean removed only


class BlockRounding(str, Enum):
    """Start of a single-window model's centred block: ``(n - size) / 2`` rounded."""

    FLOOR = "floor"
    HALF_EVEN = "half_even"  # Python's round(): ties to even


class BoxRule(str, Enum):
    """Which localizer voxels define the segmenter's crop box, and how the box is sized."""

    CORD_PIECES = "cord_pieces"  # largest 26-connected piece + pieces >= 5 % of it, box centred, in scanner mm
    FIRST_COMPONENT = "first_component"  # first 6-connected component in S-A-R scan order, native voxels, box anchored at its minimum


class LocalizerKeep(str, Enum):
    """What is kept of the localizer's binarized mask before the box is taken."""

    PIECES = "pieces"  # see BoxRule.CORD_PIECES
    LARGEST = "largest"  # the largest 6-connected component (on the native grid)
    ALL = "all"  # every voxel at or above the threshold (on the native grid)


class PostOrder(str, Enum):
    """Order of the post-processing steps after binarization."""

    FILL_THEN_REMOVE = "fill_then_remove"
    REMOVE_THEN_FILL = "remove_then_fill"


@dataclass(frozen=True)
class Semantics:
    """The inference semantics of one model version (registry field ``semantics``).

    ``image_order``/``prediction_order``: spline order of resampling images onto the model grid
    and predictions back (2 needs ``grid`` ZOOM). ``noise_floor``: probabilities at or below it
    become 0 on the native grid. ``hole_connectivity``: background connectivity of hole filling
    in orthogonal hops (1: 6-connected, 3: 26-connected).
    """

    grid: GridKind = GridKind.SCANNER
    image_order: int = 1
    prediction_order: int = 1
    normalization: NormScope = NormScope.FIELD_OF_VIEW
    block_rounding: BlockRounding = BlockRounding.FLOOR
    box: BoxRule = BoxRule.CORD_PIECES
    localizer_keep: LocalizerKeep = LocalizerKeep.PIECES
    stitching: str = "uniform"  # the mean of overlapping windows, the only one implemented
    noise_floor: float = 0.0
    postprocess_order: PostOrder = PostOrder.FILL_THEN_REMOVE
    hole_connectivity: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name).value if isinstance(getattr(self, f.name), Enum) else getattr(self, f.name)
                for f in fields(self)}


NATIVE = Semantics()
IVADOMED = Semantics(
    grid=GridKind.ZOOM,
    image_order=2,
    prediction_order=1,
    normalization=NormScope.WINDOW,
    block_rounding=BlockRounding.HALF_EVEN,
    box=BoxRule.FIRST_COMPONENT,
    localizer_keep=LocalizerKeep.LARGEST,
    noise_floor=1e-2,
    postprocess_order=PostOrder.REMOVE_THEN_FILL,
    hole_connectivity=3,
)
PRESETS = {"native": NATIVE, "ivadomed": IVADOMED}


def parse_semantics(raw: Mapping[str, Any] | None) -> Semantics:
    """A registry ``semantics`` block: an optional ``preset`` then fields overriding it.

    Raises ValueError (the registry parser turns it into a DeepsegError naming the entry)."""
    if raw is None:
        return NATIVE
    if not isinstance(raw, Mapping):
        raise ValueError(f"semantics must be an object, got {raw!r}")
    values = dict(raw)
    preset = values.pop("preset", "native")
    if preset not in PRESETS:
        raise ValueError(f"semantics preset {preset!r} is not one of {', '.join(PRESETS)}")
    types = {f.name: f.type for f in fields(Semantics)}
    unknown = set(values) - set(types)
    if unknown:
        raise ValueError(f"unknown semantics field {', '.join(sorted(unknown))}")
    enums = {"grid": GridKind, "normalization": NormScope, "block_rounding": BlockRounding, "box": BoxRule,
             "localizer_keep": LocalizerKeep, "postprocess_order": PostOrder}
    typed = {k: enums[k](v) if k in enums else v for k, v in values.items()}
    sem = replace(PRESETS[preset], **typed)
    if sem.image_order not in (0, 1, 2, 3) or sem.prediction_order not in (0, 1):
        raise ValueError("semantics image_order must be 0-3 and prediction_order 0 or 1")
    if sem.image_order > 1 and sem.grid is not GridKind.ZOOM:
        raise ValueError("semantics image_order above 1 needs grid 'zoom'")
    if sem.stitching != "uniform" or sem.hole_connectivity not in (1, 2, 3) or not 0 <= float(sem.noise_floor) < 1:
        raise ValueError("semantics stitching must be 'uniform', hole_connectivity 1-3 and noise_floor in [0, 1)")
    if (sem.box is BoxRule.FIRST_COMPONENT) != (sem.grid is GridKind.ZOOM):
        raise ValueError("semantics box 'first_component' goes with grid 'zoom' (and 'cord_pieces' with 'scanner')")
    return sem
