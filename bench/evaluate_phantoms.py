"""Evaluate the shipped models on held-out phantoms (test seeds, never used in training).

Usage (from the repository root, with ``pip install . ./training``)::

    python bench/evaluate_phantoms.py -n 20 -o runs/eval-test      # generate, segment, evaluate
    python bench/evaluate_phantoms.py -n 24 -o runs/eval-1.0.0 --segmenter-version 1.0.0
    python bench/evaluate_phantoms.py -n 24 -o runs/eval-loc-0.1.1 --localizer-version 0.1.1

Writes the phantoms (BIDS), the predictions (with the cord mask and crop box) and the report
(``report.md``, ``report_cases.csv``, ``report_summary.csv``) under the output folder, and prints
the markdown report. Steps already done (phantoms, predictions) are reused on a rerun. A case the
pipeline refuses (DeepsegError, e.g. inputs judged swapped) is listed in ``failures.txt`` with its
message and left out of the metrics (the report names it as unmatched); the others go on.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from tqdm import tqdm


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=20, help="number of test phantoms (seeds from the test split)")
    p.add_argument("-o", type=Path, default=Path("runs/eval-test"), help="output folder")
    p.add_argument("-j", type=int, default=2, help="processes for phantom generation")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads")
    p.add_argument("--segmenter-version", help="segmenter version from the registry (default: its default_version)")
    p.add_argument("--localizer-version", help="localizer version from the registry (default: its default_version)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from imsct_train.phantoms import split_seeds, write_dataset

    from deepseg_imsct.errors import DeepsegError
    from deepseg_imsct.evaluate_cli import main as evaluate
    from deepseg_imsct.inference import RuntimeOptions
    from deepseg_imsct.outputs import DEFAULT_TASK
    from deepseg_imsct.pipeline import Predictor
    from deepseg_imsct.registry import load_registry

    data, preds = args.o / "phantoms", args.o / "predictions"
    seeds = split_seeds("test", args.n)
    missing = [s for s in seeds if not list(data.glob(f"sub-*{s}*/anat/*_T2w.nii.gz"))]
    if missing:
        write_dataset(data, missing, jobs=args.j)
    task = load_registry().task(DEFAULT_TASK)
    pinned = ((task.localizer, args.localizer_version), (task.segmenter, args.segmenter_version))
    versions = {name: version for name, version in pinned if version} or None
    predictor = Predictor(runtime=RuntimeOptions(threads=args.threads), versions=versions)
    seconds, failures = [], []
    for t2 in tqdm(sorted(data.glob("sub-*/anat/*_T2w.nii.gz")), desc="segmenting", unit="case"):
        if (preds / t2.name.replace(".nii.gz", "_seg-tumor.nii.gz")).exists():
            continue
        t0 = time.perf_counter()
        try:
            predictor.run_files(t2, t2.with_name(t2.name.replace("_T2w", "_T1w")), preds, qc=preds / "qc")  # cord and crop box: preds/qc
        except DeepsegError as exc:
            failures.append(f"{t2.name}: {exc}")
            continue
        seconds.append(time.perf_counter() - t0)
    if seconds:
        print(f"inference: {sum(seconds) / len(seconds):.2f} s per case on average ({len(seconds)} cases)")
    if failures:
        args.o.mkdir(parents=True, exist_ok=True)
        (args.o / "failures.txt").write_text("\n".join(failures) + "\n", encoding="utf-8")
        print(f"{len(failures)} case(s) refused by the pipeline (left out of the metrics): see {args.o / 'failures.txt'}")
    return evaluate(["--gt", str(data), "--pred", str(preds), "-o", str(args.o / "report")])


if __name__ == "__main__":
    sys.exit(main())
