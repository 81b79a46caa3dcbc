"""The whole cascade on every real healthy T2w + T1w pair of one subject: lesion volumes must be ~0.

Usage (from the repository root)::

    python bench/real_healthy_pairs.py                       # shipped models
    DEEPSEG_IMSCT_REGISTRY=/tmp/reg/model_registry.json python bench/real_healthy_pairs.py --segmenter-version 2.0.0

Pairs: under ``--data`` (default ``$IMSCT_SHARED_DATA/real``, else ``../shared/data/real``), each
subject folder's T2w scans with its T1w scans (contrast from the file name, as in
``bench/evaluate_real.py``; none of these scans has a tumor). Each pair goes through
:class:`deepseg_imsct.pipeline.Predictor` with the task's default post-processing (pairs the
package refuses, e.g. for too little overlap, are listed with the reason). Prints per pair the
volume (cm³) of each class and of the whole tumor; the target (issue 13) is whole tumor
< 0.1 cm³ for every pair. Exits 0 whatever the volumes (a measurement, not a test).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_real import contrast_of, find_scans, shared_data  # noqa: E402


def pairs(root: Path) -> list[tuple[Path, Path]]:
    """(T2w, T1w) of the same subject: scans in the same subject folder (first level under ``root``)."""
    scans = [p for p, _ in find_scans(root)]
    subject = {p: p.relative_to(root).parts[0] for p in scans}
    t2 = [p for p in scans if contrast_of(p) == "T2w"]
    t1 = [p for p in scans if contrast_of(p) == "T1w"]
    return [(a, b) for a in t2 for b in t1 if subject[a] == subject[b]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="folder of real scans (default: the shared data's real/)")
    p.add_argument("--segmenter-version", default=None)
    p.add_argument("--localizer-version", default=None)
    args = p.parse_args(argv)
    root = args.data or shared_data() / "real"
    if not root.is_dir():
        print(f"no real scans at {root} (set IMSCT_SHARED_DATA or --data)")
        return 0

    from deepseg_imsct.errors import DeepsegError
    from deepseg_imsct.pipeline import Predictor

    predictor = Predictor()
    versions = {}
    for name, version in ((predictor.segmenter.spec.name, args.segmenter_version), (predictor.localizer.spec.name, args.localizer_version)):
        if version:
            versions[name] = version
    if versions:
        predictor = Predictor(versions=versions)
    classes = predictor.classes
    print(f"segmenter {predictor.segmenter.spec.version}, localizer {predictor.localizer.spec.version}")
    print("| T2w | T1w | " + " | ".join(f"{c} cm³" for c in classes) + " |")
    print("|---|---|" + "---|" * len(classes))
    for t2, t1 in pairs(root):
        name = tuple(str(f.relative_to(root)).removesuffix(".gz").removesuffix(".nii") for f in (t2, t1))
        try:
            result = predictor(t2, t1)
        except DeepsegError as exc:
            print(f"| {name[0]} | {name[1]} | refused: {exc} |")
            continue
        vols = [result.stats["Classes"][c]["volume_cm3"] for c in classes]  # the run's own statistics
        print(f"| {name[0]} | {name[1]} | " + " | ".join(f"{v:.3f}" for v in vols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
