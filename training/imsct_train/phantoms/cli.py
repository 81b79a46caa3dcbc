"""Command lines: ``imsct_phantoms`` (write a dataset) and ``imsct_montage`` (render a montage)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

LOG = logging.getLogger("imsct_train.phantoms")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when possible (true, 3.5, [1,2])."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, val = item.split("=", 1)
        try:
            out[key] = json.loads(val)
        except json.JSONDecodeError:
            out[key] = val
    return out


def phantoms_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="imsct_phantoms", description="Write a BIDS dataset of synthetic IMSCT phantoms "
                                 "(sagittal T2w + Gd T1w, tumor / edema / cavity / cord labels).")
    ap.add_argument("-o", "--output", required=True, help="output BIDS root")
    ap.add_argument("--split", choices=("train", "val", "test", "custom"), default="train",
                    help="seed range: train 0-99999, val 100000-109999, test 200000-209999, custom >= 1000000")
    ap.add_argument("-n", type=int, default=10, help="number of cases")
    ap.add_argument("--first-seed", type=int, default=None, help="first seed (default: start of the split)")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="parallel processes")
    ap.add_argument("--subject", action="append", default=None,
                    help="subject name(s) instead of sub-<seed> (one per case)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a case parameter for all cases, e.g. tumor_type=ependymoma, n_slices=14")
    ap.add_argument("--data-dir", default=None, help="shared data folder (default $IMSCT_SHARED_DATA or ../shared/data)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def main_phantoms(argv: Optional[Sequence[str]] = None) -> int:
    args = phantoms_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from .dataset import retain_freed_memory, split_seeds, write_dataset

    retain_freed_memory()  # a generator process: keep freed memory for the next arrays
    seeds = split_seeds(args.split, args.n, args.first_seed)
    t0 = time.perf_counter()
    rows = write_dataset(args.output, seeds, jobs=args.jobs, subjects=args.subject,
                         overrides=_parse_set(args.set), data_dir=args.data_dir)
    dt = time.perf_counter() - t0
    per = sum(float(r["seconds"]) for r in rows) / max(len(rows), 1)
    print(f"wrote {len(rows)} cases to {args.output} in {dt:.1f} s ({per:.1f} s per case on one core)")
    return 0


def main_montage(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="imsct_montage", description="Mid-sagittal T2w / T1w / label montage of "
                                 "phantoms, beside real scans at the same scale.")
    ap.add_argument("-i", "--input", required=True, help="BIDS root written by imsct_phantoms")
    ap.add_argument("-o", "--output", required=True, help="PNG file")
    ap.add_argument("-s", "--subjects", nargs="*", default=None, help="subjects (default: first 6)")
    ap.add_argument("--real", nargs="*", default=None,
                    help="real scans to show beside (default: sct_tutorial_data/t2_lumbar.nii.gz if present)")
    ap.add_argument("--window", nargs=2, type=float, default=(300.0, 460.0), metavar=("AP_MM", "SI_MM"))
    ap.add_argument("--panel", type=float, default=1.9, help="panel width in inches")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from .montage import render_montage
    from .reference import shared_data_dir

    root = Path(args.input)
    subs = args.subjects or sorted(p.name for p in root.glob("sub-*") if p.is_dir())[:6]
    if args.real is None:
        default = shared_data_dir() / "real" / "sct_tutorial_data" / "t2_lumbar.nii.gz"
        real = [default] if default.exists() else []
    else:
        real = [Path(r) for r in args.real]
    out = render_montage(root, subs, args.output, real=real, window_mm=tuple(args.window), panel_in=args.panel)
    print(f"montage: {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_phantoms())
