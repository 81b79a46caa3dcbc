"""Time against field of view and against crop-box size, and the cascade against a single stage.

Usage (from the repository root, after ``pip install . ./training``)::

    python bench/bench_scaling.py                       # all three tables, 3 runs after a warm-up
    python bench/bench_scaling.py --only fov --repeat 5
    python bench/bench_scaling.py --only box cascade

Tables (one process, both ONNX Runtime sessions built once; cases stay in memory, so the load
and write stages of bench_pipeline.py are not in these totals):

- ``fov``: the same phantom (seed 0: same cord, lesion and crop box) acquired with a growing
  field of view: (a) in-plane matrix 256² to 1024² over the same 327 mm (finer voxels), and
  (b) the anterior-posterior field of view growing from 150 to 614 mm at 0.6 mm voxels with the
  superior-inferior extent (which the cord spans) fixed at 327 mm.
- ``box``: the paper-average volume (545×545×20 at 0.6×0.6×3.68 mm) with the segmenter's crop box
  grown about the localized cord (the registry's safety factor, per axis S-I, A-P, R-L).
- ``cascade``: paper section 3.3: the cascade (localize + crop) against segmenting the whole
  field of view resampled to 1×1×2 mm with the same sliding window (the pipeline's own
  "no cord found" path), on the paper-average and the large (1024×1024×30 at 0.35 mm) volumes.

Columns: seconds per stage (median of ``--repeat`` runs after one warm-up), the number of
128×128×32 windows the segmenter ran, and the crop box in mm (S-I × A-P × R-L).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Sequence

import numpy as np

STAGES = ["resample", "localize", "crop", "segment", "resample_back", "postprocess"]
PAPER = dict(matrix=545, slices=20, inplane=0.6, thickness=3.68)


class Counting:
    """Wraps an OnnxModel (same ``spec`` and ``batch_size``) and counts the patches it runs."""

    def __init__(self, model, spec=None):
        self.model, self.spec, self.batch_size, self.patches = model, spec or model.spec, model.batch_size, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.patches += len(batch)
        return self.model(batch)


class NoCord(Counting):
    """A localizer that never finds a cord: the pipeline then segments the whole field of view."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.patches += len(batch)
        return np.zeros((len(batch), len(self.spec.classes), *batch.shape[2:]), np.float32)


def make_case(seed: int, fov_si_mm: float, fov_ap_mm: float, inplane_mm: float, slices: int, thickness_mm: float):
    """(T2w, T1w) Volumes of phantom ``seed`` on the requested sagittal grid (same anatomy for a seed)."""
    from imsct_train.phantoms import generate_case

    from deepseg_imsct.io import as_volume

    case = generate_case(seed, fov_si_mm=fov_si_mm, fov_ap_mm=fov_ap_mm, inplane_mm=inplane_mm, n_slices=slices,
                         slice_mm=thickness_mm, gap_mm=0, t1_own_grid=False)
    return as_volume(case.t2w, "T2w"), as_volume(case.t1w, "T1w")


def time_cascade(predictor, t2, t1, repeat: int, safety: Sequence[float] | None = None, single_stage: bool = False,
                 warmup: bool = True) -> dict:
    """Median seconds per stage over ``repeat`` runs (after a warm-up run), windows, box extent (mm)."""
    from deepseg_imsct.pipeline import segment

    seg = predictor.segmenter
    spec = seg.spec if safety is None else dataclasses.replace(seg.spec, safety_factor=tuple(safety))
    segmenter = Counting(seg, spec)
    localizer = NoCord(predictor.localizer) if single_stage else predictor.localizer
    post = predictor.default_postprocessing()
    runs = []
    for i in range(repeat + warmup):
        segmenter.patches = 0
        t0 = time.perf_counter()
        result = segment(t2, t1, localizer, segmenter, post)
        total = time.perf_counter() - t0
        if i or not warmup:
            runs.append({**result.timings, "total": total})
    lo, hi = np.asarray(result.box_mm)
    row = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in STAGES + ["total"]}
    row["windows"] = segmenter.patches
    row["box_mm"] = "×".join(f"{v:.0f}" for v in _box_extent(lo, hi, t2, spec.spacing_mm))
    return row


def _box_extent(lo: np.ndarray, hi: np.ndarray, t2, spacing: Sequence[float]) -> list[float]:
    """Crop-box size in mm along the working axes (S-I, A-P, R-L) from two opposite corners (voxel edges)."""
    from deepseg_imsct.grid import working_grid

    work = working_grid(t2.grid, tuple(spacing))
    inv = np.linalg.inv(work.affine)
    a, b = (inv[:3, :3] @ v + inv[:3, 3] for v in (lo, hi))
    return [abs(bb - aa) * s for aa, bb, s in zip(a, b, spacing)]


def header(first: Sequence[str]) -> list[str]:
    cols = [*first, *STAGES, "total s", "windows", "box mm (S-I×A-P×R-L)"]
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def line(first: Sequence[str], row: dict) -> str:
    cells = [*first, *(f"{row[k]:.2f}" for k in STAGES), f"**{row['total']:.2f}**", str(row["windows"]), row["box_mm"]]
    return "| " + " | ".join(cells) + " |"


def fov_table(predictor, repeat: int) -> None:
    print("### Time against field of view (same phantom, same cord; cascade)\n")
    print("\n".join(header(["matrix (S-I×A-P×slices)", "voxel mm", "FOV mm (S-I×A-P×R-L)"])), flush=True)
    fov_si, slices, thick = PAPER["matrix"] * PAPER["inplane"], PAPER["slices"], PAPER["thickness"]
    configs = [(fov_si, fov_si, fov_si / n) for n in (256, 384, 545, 768, 1024)]  # (a) finer matrix, same FOV
    configs += [(fov_si, ap, PAPER["inplane"]) for ap in (150.0, 460.0, 614.0)]  # (b) wider A-P FOV
    for si, ap, inplane in configs:
        t2, t1 = make_case(0, si, ap, inplane, slices, thick)
        row = time_cascade(predictor, t2, t1, repeat)
        matrix = f"{t2.data.shape[0]}×{t2.data.shape[2]}×{t2.data.shape[1]}" if t2.data.shape[1] == slices else "×".join(map(str, t2.data.shape))
        print(line([matrix, f"{inplane:.2f}", f"{si:.0f}×{ap:.0f}×{slices * thick:.0f}"], row), flush=True)
    print()


def box_table(predictor, repeat: int) -> None:
    print("### Time against crop-box size (paper-average volume, fixed field of view; cascade)\n")
    print("\n".join(header(["safety factor (S-I, A-P, R-L)"])), flush=True)
    fov = PAPER["matrix"] * PAPER["inplane"]
    t2, t1 = make_case(0, fov, fov, PAPER["inplane"], PAPER["slices"], PAPER["thickness"])
    for safety in ((1.0, 1.0, 1.0), (1.2, 1.2, 1.0), (1.2, 4.0, 1.0), (1.2, 6.0, 1.0), (1.2, 4.0, 3.0)):
        row = time_cascade(predictor, t2, t1, repeat, safety=safety)
        label = ", ".join(f"{s:g}" for s in safety) + (" (shipped)" if tuple(safety) == tuple(predictor.segmenter.spec.safety_factor) else "")
        print(line([label], row), flush=True)
    print()


def cascade_table(predictor, repeat: int) -> None:
    print("### Cascade vs single stage on the whole field of view (paper section 3.3)\n")
    print("\n".join(header(["volume", "method"])), flush=True)
    for name, (matrix, slices, inplane, thick) in (("paper 545×545×20 @0.6×0.6×3.68 mm", (545, 20, 0.6, 3.68)),
                                                   ("large 1024×1024×30 @0.35×0.35×3 mm", (1024, 30, 0.35, 3.0))):
        t2, t1 = make_case(0, matrix * inplane, matrix * inplane, inplane, slices, thick)
        for method, single in (("cascade (localize + crop)", False), ("single stage (whole FOV at 1×1×2 mm)", True)):
            # the single stage reuses the sessions the cascade rows warmed up: no extra warm-up run
            row = time_cascade(predictor, t2, t1, repeat if not single else max(1, repeat // 3), single_stage=single, warmup=not single)
            print(line([name, method], row), flush=True)
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=["fov", "box", "cascade"], default=["fov", "box", "cascade"])
    p.add_argument("--repeat", type=int, default=3, help="timed runs per row after a warm-up (single stage: a third, no warm-up)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the single-stage rows warn that no cord was found, by design
    from deepseg_imsct.inference import RuntimeOptions
    from deepseg_imsct.pipeline import Predictor

    predictor = Predictor(runtime=RuntimeOptions(threads=args.threads))
    print(f"{args.repeat} runs per row after a warm-up (median s); threads={args.threads or 'default'}; "
          f"load average at start {os.getloadavg()[0]:.2f}\n")
    for name in args.only:
        {"fov": fov_table, "box": box_table, "cascade": cascade_table}[name](predictor, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
