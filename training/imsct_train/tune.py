"""Tune a segmenter's default binarization thresholds on validation phantoms.

``python -m imsct_train.tune --config configs/segmenter-1.1.json [-n 24] [--write]``

Runs the exported model (the registry entry named by the config's name and version, through
the package's own cascade) on validation phantoms, keeps the probability maps, and for each
class sweeps the binarization threshold with the entry's other post-processing settings (fill
holes, minimum volume in cm³: the paper's) fixed. The chosen threshold maximises the mean Dice
over cases (paper convention: a false positive on an absent structure scores 0; cases where
both are empty are left out); ties go to the threshold closest to 0.5. ``--write`` stores the
choice in the config's ``export.postprocessing``, from which export writes the registry entry.
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


def sweep(cases: Sequence[ValCase], name: str, post, thresholds: Sequence[float] = THRESHOLDS) -> list[dict]:
    """One row per threshold: mean Dice, detection rate and false detection rate of class ``name``."""
    from deepseg_imsct.evaluate import segmentation_metrics, summarize
    from deepseg_imsct.postprocess import postprocess

    rows = []
    for t in thresholds:
        metrics = [segmentation_metrics(postprocess(c.probs[name], replace(post, threshold=t), c.voxel_mm3) > 0,
                                        c.truth[name], c.voxel_mm3) for c in cases]
        rows.append({"threshold": t, **{f: summarize(getattr(m, f) for m in metrics).mean for f in ("dice", "tpr", "fdr")}})
    return rows


def best_threshold(rows: Sequence[dict]) -> float:
    """The threshold of highest mean Dice; ties (within 1e-9) go to the one closest to 0.5."""
    top = max(r["dice"] for r in rows)
    return min((r for r in rows if r["dice"] >= top - 1e-9), key=lambda r: abs(r["threshold"] - 0.5))["threshold"]


def _cell(row: dict, mark: bool) -> str:
    return f"{100 * row['dice']:.1f} / {100 * row['tpr']:.0f} / {100 * row['fdr']:.0f}{' *' if mark else ''}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imsct_train.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="segmenter config (training/configs/*.json)")
    p.add_argument("-n", type=int, default=24, help="validation phantoms (first n seeds of the val split)")
    p.add_argument("--registry", type=Path, help="registry holding the exported model (default: the package's)")
    p.add_argument("--write", action="store_true", help="store the chosen thresholds in the config")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from deepseg_imsct.pipeline import Predictor
    from deepseg_imsct.registry import load_registry

    from .phantoms import split_seeds

    cfg = json.loads(args.config.read_text(encoding="utf-8"))
    registry = load_registry(args.registry) if args.registry else None
    predictor = Predictor(versions={cfg["name"]: str(cfg["version"])}, registry=registry)
    cases = collect(predictor, split_seeds("val", args.n))
    defaults = predictor.default_postprocessing().classes
    sweeps = {name: sweep(cases, name, defaults[name]) for name in predictor.classes}
    chosen = {name: best_threshold(rows) for name, rows in sweeps.items()}
    print(f"{cfg['name']} {cfg['version']}, {len(cases)} validation phantoms: mean Dice / detection rate / "
          "false detection rate (%) per binarization threshold; * = chosen\n")
    print("| threshold | " + " | ".join(sweeps) + " |\n|---|" + "---|" * len(sweeps))
    for i, t in enumerate(THRESHOLDS):
        cells = [_cell(rows[i], chosen[name] == t) for name, rows in sweeps.items()]
        print(f"| {t:.2f} | " + " | ".join(cells) + " |")
    if args.write:
        for name, t in chosen.items():
            cfg["export"]["postprocessing"][name]["threshold"] = t
        args.config.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        log.info("wrote the thresholds into %s (export the model again to update the registry)", args.config)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
