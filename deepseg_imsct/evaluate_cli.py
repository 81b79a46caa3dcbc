"""``imsct_evaluate``: compare predictions with ground truths and report the paper's Table 3.

Layouts (file names, matched by the stem before ``_seg-`` / ``_cropbox``):

- ground truth: a BIDS root (``<gt>/derivatives/labels/**/<stem>_seg-<label>.nii.gz``) or any
  folder (searched recursively);
- predictions: any folder, searched recursively for ``<stem>_seg-<label>.nii[.gz]`` and
  ``<stem>_cropbox.nii[.gz]``; labels are tumor, edema, cavity, whole-tumor and cord.

A folder nested in the other one is skipped by the other's search. Metric definitions:
:mod:`deepseg_imsct.evaluate` and ``docs/evaluation.md``.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from . import evaluate as ev
from .errors import DeepsegError
from .evaluate_files import LABELS, Case, discover_cases, load_pair
from .outputs import CROPBOX

LOG = logging.getLogger("deepseg_imsct.evaluate")
PROG = "imsct_evaluate"
COLUMN_TITLES = {
    "whole-tumor": "Whole tumor", "tumor": "Tumor", "cavity": "Cavity", "edema": "Edema"
}
METRIC_TITLES = {
    "dice": "Dice score [%]",
    "tpr": "True positive detection rate [%]",
    "fdr": "False detection rate [%]",
    "precision": "Precision [%]",
    "recall": "Recall [%]",
    "avd": "Absolute volume difference [%]",
    "rvd": "Relative volume difference [%]",
}
LOCALIZER_TITLES = {
    "dice": "Cord Dice [%]",
    "box_contains_lesion": "Crop box contains every lesion voxel [%]",
    "cord_fraction_in_box": "GT cord voxels inside the crop box [%]",
}


def _nan_row(case: Case, label: str) -> dict[str, object]:
    return {"case": case.stem, "class": label, "voxel_volume_mm3": math.nan}


def evaluate_label(case: Case, label: str, overlap_mm3: float) -> Optional[dict[str, object]]:
    """One CSV row (case, class, every metric) or None when a file of the pair is missing."""
    if label not in case.gt or label not in case.pred:
        if label in case.gt or label in case.pred:
            side = "prediction" if label in case.gt else "ground truth"
            LOG.warning("%s: no %s file for %s; skipped", case.stem, side, label)
        return None
    pred, gt, voxel_mm3 = load_pair(case.pred[label], case.gt[label])
    row = _nan_row(case, label)
    row["voxel_volume_mm3"] = voxel_mm3
    row.update(asdict(ev.segmentation_metrics(pred, gt, voxel_mm3, overlap_mm3)))
    return row


def localizer_columns(case: Case) -> dict[str, float]:
    """Crop-box inclusion of the whole-tumor GT and the fraction of GT cord inside the box."""
    out = {"box_contains_lesion": math.nan, "cord_fraction_in_box": math.nan}
    box_path = case.pred.get(CROPBOX)
    if box_path is None:
        return out
    for column, label, function in (
        ("box_contains_lesion", "whole-tumor", ev.box_contains),
        ("cord_fraction_in_box", ev.CORD, ev.fraction_inside),
    ):
        if label in case.gt:
            box, mask, _ = load_pair(box_path, case.gt[label])
            out[column] = function(box, mask)
    return out


def evaluate_cases(cases: Sequence[Case], overlap_mm3: float) -> list[dict[str, object]]:
    """Rows for every case × label (structures, then the cord row with the box columns)."""
    rows: list[dict[str, object]] = []
    for case in cases:
        LOG.info("evaluating %s", case.stem)
        for label in LABELS:
            row = evaluate_label(case, label, overlap_mm3)
            if label == ev.CORD:
                box = localizer_columns(case)
                if row is None and CROPBOX in case.pred:
                    row = _nan_row(case, label)
                if row is not None:
                    row.update(box)
            if row is not None:
                rows.append(row)
    return rows


def _fmt(summary: ev.Summary, scale: float = 100.0) -> str:
    if summary.n == 0:
        return "n/a (n=0)"
    return f"{summary.mean * scale:.1f} ± {summary.std * scale:.1f} (n={summary.n})"


def render_markdown(
    rows: Sequence[dict[str, object]], overlap_mm3: float, notes: Sequence[str] = ()
) -> str:
    """Table 3 layout (metrics × Whole tumor, Tumor, Cavity, Edema) plus the localizer table."""
    table = ev.summarize_rows(rows, ev.STRUCTURES, ev.TABLE_METRICS)
    n_cases = len({row["case"] for row in rows})
    lines = [
        f"## Segmentation metrics ({n_cases} cases, mean ± std over cases, n = cases used)",
        "",
        "| Metric | " + " | ".join(COLUMN_TITLES[c] for c in ev.STRUCTURES) + " |",
        "|---" * (len(ev.STRUCTURES) + 1) + "|",
    ]
    for metric in ev.TABLE_METRICS:
        cells = [_fmt(table[(c, metric)]) for c in ev.STRUCTURES]
        lines.append(f"| {METRIC_TITLES[metric]} | " + " | ".join(cells) + " |")
    loc = ev.summarize_rows(rows, (ev.CORD,), tuple(LOCALIZER_TITLES))
    lines += ["", "## Localizer", "", "| Metric | Value |", "|---|---|"]
    lines += [f"| {title} | {_fmt(loc[(ev.CORD, k)])} |" for k, title in LOCALIZER_TITLES.items()]
    lines += [
        "",
        f"Detection: 18-connected objects, overlap >= {overlap_mm3:g} mm³. "
        "Std: population (ddof=0). RVD < 0 = over-segmentation. "
        "NaN cases (e.g. Dice with both masks empty) are excluded.",
    ]
    if notes:
        lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _csv_fields(rows: Sequence[dict[str, object]]) -> list[str]:
    fields: list[str] = []
    for row in rows:
        fields += [key for key in row if key not in fields]
    return fields


def write_csv(path: Path, rows: Sequence[dict[str, object]], fields: Sequence[str]) -> None:
    """Write rows to ``path`` (missing keys → empty cells); DeepsegError if not writable."""
    try:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields), restval="")
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise DeepsegError(f"cannot write {path}: {exc}; choose a writable -o prefix") from exc


def summary_rows(rows: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (class, metric) with mean, std (ddof=0) and n, fractions as in the case CSV."""
    metrics = (*ev.TABLE_METRICS, "fdr_ivadomed", "gt_volume_mm3", "pred_volume_mm3")
    table = ev.summarize_rows(rows, LABELS, metrics)
    table.update(ev.summarize_rows(rows, (ev.CORD,), tuple(LOCALIZER_TITLES)[1:]))
    return [
        {"class": cls, "metric": metric, "mean": s.mean, "std": s.std, "n": s.n}
        for (cls, metric), s in table.items()
    ]


def write_report(prefix: Path, rows: Sequence[dict[str, object]], markdown: str) -> list[Path]:
    """Write ``<prefix>.md``, ``<prefix>_cases.csv`` and ``<prefix>_summary.csv``."""
    paths = [Path(f"{prefix}.md"), Path(f"{prefix}_cases.csv"), Path(f"{prefix}_summary.csv")]
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(markdown, encoding="utf-8")
    except OSError as exc:
        raise DeepsegError(f"cannot write {paths[0]}: {exc}; choose a writable -o prefix") from exc
    write_csv(paths[1], rows, _csv_fields(rows))
    write_csv(paths[2], summary_rows(rows), ("class", "metric", "mean", "std", "n"))
    return paths


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare predictions with ground truths and report the paper's Table 3 "
        "metrics (Markdown on stdout, <prefix>.md, <prefix>_cases.csv, <prefix>_summary.csv).",
    )
    parser.add_argument("--gt", required=True, type=Path, help="BIDS root or ground-truth folder")
    parser.add_argument("--pred", required=True, type=Path, help="predictions folder (recursive)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="report prefix (default: <PRED>/evaluation)")
    parser.add_argument("--overlap-mm3", type=float, default=ev.DEFAULT_OVERLAP_MM3,
                        help="minimum overlap for a detection, mm³ (default: 6)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each case")
    return parser


def run(args: argparse.Namespace) -> str:
    """Evaluate, write the three files and return the markdown report."""
    if not math.isfinite(args.overlap_mm3) or args.overlap_mm3 < 0:
        raise DeepsegError(
            f"--overlap-mm3 {args.overlap_mm3} is invalid; pass a number >= 0 (mm³)"
        )
    cases, unmatched = discover_cases(args.gt, args.pred)
    for stem in unmatched:
        LOG.warning("unmatched case %s; skipped", stem)
    rows = evaluate_cases(cases, args.overlap_mm3)
    notes = [f"Unmatched (skipped): {', '.join(unmatched)}"] if unmatched else []
    markdown = render_markdown(rows, args.overlap_mm3, notes)
    prefix = args.output if args.output is not None else args.pred / "evaluation"
    for path in write_report(prefix, rows, markdown):
        LOG.info("wrote %s", path)
    return markdown


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns 0 on success, 2 on a user error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        markdown = run(args)
    except DeepsegError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
