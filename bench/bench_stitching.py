"""Sliding-window stitching: deepseg_imsct.segment.sliding_window vs MONAI's sliding_window_inference.

Usage (from the repository root, in the benchmark environment of bench/README.md)::

    /tmp/bench-venv/bin/python bench/bench_stitching.py              # phantom crop, 5 runs after a warm-up
    /tmp/bench-venv/bin/python bench/bench_stitching.py --crop 400 128 40 --repeat 7

Both stitchers run the same ONNX Runtime session of the shipped segmenter (patch 128x128x32,
stride 64x64x32, i.e. MONAI overlap (0.5, 0.5, 0.0), mode "constant") on the same crop with the
same batch size. The crop is, by default, the segmenter's input for the paper-average phantom
(545x545x20 at 0.6x0.6x3.68 mm): the cascade's own localization and crop on a case from the
project's phantom generator (or bench_pipeline's analytic phantom when imsct_train is not
installed). ``--crop X Y Z`` uses random z-scored data of that shape instead.

Reported: seconds per call with the ONNX model (median of ``--repeat`` after one warm-up), the
stitching overhead alone (the same calls with a free predictor returning a view of a preallocated
block), and the largest absolute difference between the two outputs (must be <= 1e-5).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TOLERANCE = 1e-5


def phantom_crop(size: str = "paper", seed: int = 0) -> np.ndarray:
    """The segmenter's (2, X, Y, Z) float32 input for a bench phantom: localize, then crop."""
    from bench_pipeline import make_case

    from deepseg_imsct.io import load_volume
    from deepseg_imsct.cropbox import crop_for
    from deepseg_imsct.localize import localize, localizer_block, on_block
    from deepseg_imsct.pipeline import Predictor
    from deepseg_imsct.segment import model_input

    predictor = Predictor()
    spec = predictor.segmenter.spec
    with tempfile.TemporaryDirectory() as tmp:
        t2_path, t1_path = make_case(Path(tmp), size, seed)
        t2, t1 = load_volume(t2_path, "T2w"), load_volume(t1_path, "T1w")
    block = localizer_block(t2.grid, predictor.localizer.spec)
    cord = localize(t2, t1, on_block(t2, block), block, predictor.localizer)
    box, work = crop_for(cord, t2.grid, spec)
    return model_input([(t2.data, t2.grid), (t1.data, t1.grid)], box.on(work))


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    """Seconds of one call, and its output."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop", type=int, nargs=3, metavar=("X", "Y", "Z"), help="random crop of this shape instead of the phantom's")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--repeat-overhead", type=int, default=20, help="runs of the free-predictor timing")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    args = p.parse_args(argv)

    import monai
    import torch
    from monai.inferers import sliding_window_inference

    from deepseg_imsct.inference import OnnxModel, RuntimeOptions
    from deepseg_imsct.segment import n_windows, sliding_window
    from deepseg_imsct.pipeline import Predictor

    model: OnnxModel = Predictor(runtime=RuntimeOptions(threads=args.threads)).segmenter
    spec = model.spec
    patch, stride, n_out, batch = tuple(spec.patch_size), tuple(spec.stride), len(spec.classes), model.batch_size
    overlap = tuple(1.0 - s / p_ for s, p_ in zip(stride, patch))
    if args.crop:
        crop = np.random.default_rng(0).standard_normal((len(spec.contrasts), *args.crop), dtype=np.float32)
        source = "random data"
    else:
        crop = phantom_crop()
        source = "paper-average phantom (seed 0), the cascade's own crop"
    if any(s < p_ for s, p_ in zip(crop.shape[1:], patch)):
        sys.exit(f"crop {crop.shape[1:]} is smaller than a patch {patch}: MONAI pads centrally, we pad at the end; not comparable")

    def ours(predict) -> np.ndarray:
        return sliding_window(crop, predict, patch, stride, n_out, batch)

    crop_t = torch.from_numpy(crop[None])

    def theirs(predict) -> np.ndarray:
        with torch.no_grad():
            out = sliding_window_inference(crop_t, patch, batch, predict, overlap=overlap, mode="constant")
        return out.numpy()[0]

    def onnx_torch(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(model(x.numpy()))

    # free predictors: a view of one preallocated (batch, K, *patch) block of random values, so only
    # the stitching is timed (MONAI multiplies it in place by its all-ones weight map: unchanged)
    block = np.random.default_rng(1).random((batch, n_out, *patch), dtype=np.float32)
    block_t = torch.from_numpy(block)

    def free_np(x: np.ndarray) -> np.ndarray:
        return block[: len(x)]

    def free_torch(x: torch.Tensor) -> torch.Tensor:
        return block_t[: len(x)]

    rows = []
    for label, fn_ours, fn_theirs, repeat in (
        ("ONNX segmenter", lambda: ours(model), lambda: theirs(onnx_torch), args.repeat),
        ("stitching only (free predictor)", lambda: ours(free_np), lambda: theirs(free_torch), args.repeat_overhead),
    ):
        # interleave the two so that background load affects both alike
        s_ours, s_theirs = [], []
        out_ours, out_theirs = fn_ours(), fn_theirs()  # warm-up
        for _ in range(repeat):
            s, out_ours = timed(fn_ours)
            s_ours.append(s)
            s, out_theirs = timed(fn_theirs)
            s_theirs.append(s)
        diff = float(np.max(np.abs(out_ours - out_theirs)))
        rows.append((label, statistics.median(s_ours), min(s_ours), statistics.median(s_theirs), min(s_theirs), diff, repeat))

    print(f"crop {crop.shape} from {source}; {n_windows(crop.shape[1:], patch, stride)} windows of {patch}, "
          f"stride {stride} (MONAI overlap {tuple(round(o, 3) for o in overlap)}, mode constant), batch {batch}; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), MONAI {monai.__version__}")
    print()
    print("| predictor | ours median s (min) | MONAI median s (min) | MONAI / ours | max abs diff | runs |")
    print("|---|---|---|---|---|---|")
    ok = True
    for label, med_o, min_o, med_t, min_t, diff, repeat in rows:
        print(f"| {label} | {med_o:.4f} ({min_o:.4f}) | {med_t:.4f} ({min_t:.4f}) | {med_t / med_o:.2f}x | {diff:.1e} | {repeat} |")
        ok &= diff <= TOLERANCE
    if not ok:
        print(f"\nOUTPUTS DIFFER by more than {TOLERANCE}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
