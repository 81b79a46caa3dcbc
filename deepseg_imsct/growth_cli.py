"""``imsct_growth``: lesion growth between two visits of one patient.

Example: ``imsct_growth v1/sub_T2w_stats.json v2/sub_T2w_stats.json -dates 2024-01-10 2025-01-12``.
A visit is the statistics JSON a run wrote (``<T2w name>_stats.json``) or the T2w image itself,
whose masks ``<T2w name>_seg-<class>.nii.gz`` (and, if present, the cord mask ``_seg-cord``) are
looked up in its folder, in ``-masks`` folders, and in their ``qc/`` subfolder. Prints a table;
``-o`` writes it as JSON or TSV. Errors print one line ``imsct_growth: error: ...`` (status 2).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .console import safe_streams
from .errors import DeepsegError
from .growth import GrowthReport, growth, table

PROG = "imsct_growth"
log = logging.getLogger("deepseg_imsct")


def parse_date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise DeepsegError(f"-dates: '{text}' is not a date: write it as YYYY-MM-DD (e.g. 2024-01-31)") from None


def load_stats_json(path: Path) -> dict:
    """The statistics of a ``_stats.json`` (its ``Statistics``, or the dictionary itself)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        stats = data.get("Statistics", data)
        stats["Classes"], stats["Cord"]  # noqa: B018 (the keys a visit needs)
        return stats
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        raise DeepsegError(f"{path} is not a statistics file of imsct_deepseg (<T2w name>_stats.json): give that file, "
                           "or the T2w image next to its masks") from None


def stats_from_masks(t2_path: Path, folders: Sequence[Path]) -> dict:
    """Statistics of a T2w's masks (``<stem>_seg-<class>.nii.gz``) found in ``folders`` (and their ``qc/``)."""
    import nibabel as nib
    import numpy as np

    from .io import load_volume
    from .outputs import CORD, IMAGE_SUFFIX, nifti_stem
    from .stats import lesion_stats

    t2 = load_volume(t2_path, "T2w")
    stem = nifti_stem(t2_path)
    places = [f for folder in folders for f in (folder, folder / "qc")]
    found: dict[str, Path] = {}
    for folder in places:
        for path in sorted(folder.glob(f"{glob.escape(stem)}_seg-*{IMAGE_SUFFIX}")):
            found.setdefault(path.name[len(stem) + 5: -len(IMAGE_SUFFIX)], path)
    cord_path = found.pop(CORD[len("seg-"):], None)
    if not found:
        raise DeepsegError(f"no masks {stem}_seg-<class>.nii.gz of T2w {t2_path} in {', '.join(map(str, places))}: "
                           "give their folder with -masks, or the run's _stats.json")

    def voxels(path: Path) -> np.ndarray:
        image = nib.load(path)
        if image.shape[:3] != t2.data.shape or not np.allclose(image.affine, t2.grid.affine, atol=1e-3):
            raise DeepsegError(f"mask {path} is not on the grid of T2w {t2_path}: give the T2w the masks were made from")
        return np.asanyarray(image.dataobj) > 0.5

    masks = {cls: voxels(path) for cls, path in found.items()}
    cord = voxels(cord_path) if cord_path else np.zeros(t2.data.shape, bool)
    if cord_path is None:
        log.warning("no cord mask %s_seg-cord.nii.gz for %s (run with -qc to keep it): positions from the top of the field of view",
                    stem, t2_path)
    return lesion_stats(masks, cord, t2.grid.affine, t2.data, None)


def load_visit(path: str, masks: str | None) -> dict:
    visit = Path(path)
    if not visit.is_file():
        raise DeepsegError(f"visit {visit} does not exist: give a run's <T2w name>_stats.json or its T2w image")
    if visit.name.endswith(".json"):
        return load_stats_json(visit)
    return stats_from_masks(visit, [Path(masks)] if masks else [visit.parent])


def check_target(out: Path, overwrite: bool) -> None:
    """Before any work: ``-o`` is a .json or .tsv name, not an existing file (unless ``overwrite``)."""
    if out.suffix not in (".json", ".tsv"):
        raise DeepsegError(f"-o {out}: give a .json or .tsv file name")
    if out.exists() and not overwrite:
        raise DeepsegError(f"-o {out} exists: choose another name, or add -overwrite to replace it")


def write_report(report: GrowthReport, out: Path) -> None:
    """``.json``: the whole report; ``.tsv``: one row per class and per lesion (written whole, then renamed)."""
    if out.suffix == ".json":
        text = json.dumps(report.as_dict(), indent=2) + "\n"
    elif out.suffix == ".tsv":
        keys = ["volume1_mm3", "volume2_mm3", "change_mm3", "percent_change", "growth_mm3_per_year", "growth_percent_per_year",
                "doubling_time_years"]
        lines = ["\t".join(["class", "lesion", "position1_mm", "position2_mm", *keys])]
        rows = [(c, "all", None, None, ch) for c, ch in report.classes.items()]
        rows += [(les.cls, les.status, les.position1_mm, les.position2_mm, les.change) for les in report.lesions]
        for cls, what, p1, p2, change in rows:
            values = [cls, what, p1, p2, *(getattr(change, k) for k in keys)]
            lines.append("\t".join("n/a" if v is None else str(round(v, 3) if isinstance(v, float) else v) for v in values))
        text = "\n".join(lines) + "\n"
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Lesion growth between two visits of one patient: per class and per "
                                "lesion (matched by position along the cord) volume change, percent change, annualized "
                                "growth and doubling time.")
    p.add_argument("visits", nargs=2, metavar="VISIT", help="each visit: a run's <T2w name>_stats.json, or its T2w image "
                   "(masks <T2w name>_seg-<class>.nii.gz next to it, or in -masks)")
    p.add_argument("-dates", nargs=2, required=True, metavar="YYYY-MM-DD", help="the two visits' dates, in order")
    p.add_argument("-masks", nargs=2, metavar="FOLDER", help="with T2w images: the folders holding each visit's masks")
    p.add_argument("-o", metavar="FILE", help="also write the report as JSON (.json) or a table (.tsv)")
    p.add_argument("-overwrite", action="store_true", help="replace the -o file if it exists")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    with safe_streams():
        args = build_parser().parse_args(argv)
        handler = logging.StreamHandler(sys.stderr)
        log.addHandler(handler)
        try:
            if args.o:
                check_target(Path(args.o), args.overwrite)
            d1, d2 = (parse_date(d) for d in args.dates)
            masks = args.masks or [None, None]
            report = growth(load_visit(args.visits[0], masks[0]), load_visit(args.visits[1], masks[1]), d1, d2)
            print(table(report))
            if args.o:
                write_report(report, Path(args.o))
            return 0
        except DeepsegError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        finally:
            log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
