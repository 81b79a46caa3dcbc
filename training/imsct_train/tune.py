"""Tune a segmenter's default post-processing on validation phantoms: thresholds or minimum volumes.

``python -m imsct_train.tune --config configs/segmenter-1.1.json [-n 24] [--field min_volume_cm3] [--write]``

Runs the exported model (the registry entry named by the config's name and version, through
the package's own cascade) on validation phantoms, keeps the probability maps, and for each
class sweeps one post-processing field (the binarization threshold, or the minimum component
volume in cm³) with the entry's other settings fixed, post-processing exactly as the runtime
does (:func:`deepseg_imsct.postprocess.postprocess_exclusive` for a model with exclusive
classes). The chosen value maximises the mean Dice over cases (paper convention: a false
positive on an absent structure scores 0; cases where both are empty are left out); ties go to
the value closest to the current default. ``--write`` stores the choice in the config's
``export.postprocessing``, from which export writes the registry entry.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

log = logging.getLogger("imsct_train")

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.10, 0.951, 0.05))
MIN_VOLUMES_CM3 = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
VALUES = {"threshold": THRESHOLDS, "min_volume_cm3": MIN_VOLUMES_CM3}
UNION = "whole-tumor"


@dataclass(frozen=True)
class ValCase:
    """Probabilities and ground truth of one case, cut to the box where either is non-zero."""

    probs: dict[str, np.ndarray]  # class -> float32 (S, A, R) of the T2w grid's sub-block
    truth: dict[str, np.ndarray]  # class -> bool, same block
    voxel_mm3: float


def _support_box(arrays: Sequence[np.ndarray]) -> tuple[slice, ...]:
    """Bounding box (one voxel margin) of the voxels non-zero in any array; one voxel if none."""
    from deepseg_imsct.grid import bounding_box

    start, size = bounding_box(np.logical_or.reduce([a > 0 for a in arrays]), margin=1)
    return tuple(slice(a, a + max(n, 1)) for a, n in zip(start, size))


def collect(predictor, seeds: Sequence[int]) -> list[ValCase]:
    """Generate each phantom in memory and keep the cascade's probabilities next to its labels."""
    from tqdm import tqdm

    from deepseg_imsct.evaluate import voxel_volume_mm3
    from deepseg_imsct.postprocess import PostprocessConfig

    from .phantoms import generate_case

    soft = PostprocessConfig(predictor.default_postprocessing().classes, soft=True)
    cases = []
    for seed in tqdm(seeds, desc="validation cases", unit="case"):
        case = generate_case(seed)
        result = predictor(case.t2w, case.t1w, soft)
        probs = {c: np.asarray(result.masks[c].dataobj, dtype=np.float32) for c in predictor.classes}
        truth = {c: np.asarray(case.labels[c].dataobj) > 0 for c in predictor.classes}
        box = _support_box([*probs.values(), *truth.values()])
        voxel = voxel_volume_mm3(case.t2w.affine)
        cases.append(ValCase({c: p[box] for c, p in probs.items()}, {c: t[box] for c, t in truth.items()}, voxel))
    return cases


def class_mask(case: ValCase, name: str, config, exclusive: bool) -> np.ndarray:
    """Class ``name``'s mask of ``case`` under ``config`` ({class: ClassPost}), as the runtime makes it."""
    from deepseg_imsct.postprocess import postprocess, postprocess_exclusive

    if exclusive:
        return postprocess_exclusive(case.probs, config, UNION, case.voxel_mm3)[name] > 0
    return postprocess(case.probs[name], config[name], case.voxel_mm3) > 0


def sweep(cases: Sequence[ValCase], name: str, config, field: str = "threshold", values: Sequence[float] | None = None,
          exclusive: bool = False) -> list[dict]:
    """One row per value of ``field`` for class ``name``: mean Dice, detection and false detection rates."""
    from deepseg_imsct.evaluate import segmentation_metrics, summarize

    rows = []
    for v in values or VALUES[field]:
        trial = {**config, name: replace(config[name], **{field: v})}
        metrics = [segmentation_metrics(class_mask(c, name, trial, exclusive), c.truth[name], c.voxel_mm3) for c in cases]
        rows.append({"value": v, **{f: summarize(getattr(m, f) for m in metrics).mean for f in ("dice", "tpr", "fdr")}})
    return rows


def best_value(rows: Sequence[dict], default: float) -> float:
    """The value of highest mean Dice; ties (within 1e-9) go to the one closest to ``default``."""
    top = max(r["dice"] for r in rows)
    return min((r for r in rows if r["dice"] >= top - 1e-9), key=lambda r: abs(r["value"] - default))["value"]


def _cell(row: dict, mark: bool) -> str:
    return f"{100 * row['dice']:.1f} / {100 * row['tpr']:.0f} / {100 * row['fdr']:.0f}{' *' if mark else ''}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imsct_train.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="segmenter config (training/configs/*.json)")
    p.add_argument("-n", type=int, default=24, help="validation phantoms (first n seeds of the val split)")
    p.add_argument("--registry", type=Path, help="registry holding the exported model (default: the package's)")
    p.add_argument("--field", choices=sorted(VALUES), default="threshold", help="what to sweep (default threshold)")
    p.add_argument("--write", action="store_true", help="store the chosen values in the config")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from deepseg_imsct.pipeline import Predictor
    from deepseg_imsct.registry import load_registry

    from .phantoms import split_seeds

    cfg = json.loads(args.config.read_text(encoding="utf-8"))
    registry = load_registry(args.registry) if args.registry else None
    predictor = Predictor(versions={cfg["name"]: str(cfg["version"])}, registry=registry)
    cases = collect(predictor, split_seeds("val", args.n))
    defaults = dict(predictor.default_postprocessing().classes)
    exclusive = predictor.segmenter.spec.output == "exclusive"
    sweeps = {name: sweep(cases, name, defaults, args.field, exclusive=exclusive) for name in predictor.classes}
    chosen = {name: best_value(rows, getattr(defaults[name], args.field)) for name, rows in sweeps.items()}
    print(f"{cfg['name']} {cfg['version']}, {len(cases)} validation phantoms: mean Dice / detection rate / "
          f"false detection rate (%) per {args.field}; * = chosen\n")
    print(f"| {args.field} | " + " | ".join(sweeps) + " |\n|---|" + "---|" * len(sweeps))
    for i, v in enumerate(VALUES[args.field]):
        cells = [_cell(rows[i], chosen[name] == v) for name, rows in sweeps.items()]
        print(f"| {v:g} | " + " | ".join(cells) + " |")
    if args.write:
        for name, v in chosen.items():
            cfg["export"]["postprocessing"][name][args.field] = v
        args.config.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        log.info("wrote the chosen %s into %s (export the model again to update the registry)", args.field, args.config)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
