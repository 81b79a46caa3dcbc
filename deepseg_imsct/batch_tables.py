"""The batch's tables: one status row per subject, and the cohort's statistics.

The status table (:data:`STATUS_COLUMNS`) gets a row per subject as it finishes, flushed, so a
run that is stopped still says what it did. :func:`collect_statistics` gathers every subject's
statistics file (:data:`STATS_GLOB`, next to its outputs) into one table.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterable

from .bids import Subject
from .errors import DeepsegError
from .outputs import nifti_stem
from .stats import stats_row, tsv_text
from .transaction import write_atomic

log = logging.getLogger(__name__)

STATUS_COLUMNS = ("subject", "session", "status", "seconds", "error")
STATS_GLOB = "*_stats.json"  # a subject's statistics file, next to its outputs
STATS_TABLE = "stats.tsv"


class Status(str, Enum):
    DONE = "done"  # segmented in this run
    SKIPPED = "skipped"  # outputs already there with the same parameters and models
    FAILED = "failed"  # error: the one-line message
    MISSING = "missing"  # a contrast missing (or ambiguous) in the dataset: not run


@dataclass(frozen=True)
class Outcome:
    subject: str
    session: str | None
    status: Status
    seconds: float = 0.0
    error: str = ""

    def row(self) -> list[str]:
        return [self.subject, self.session or "n/a", self.status.value, f"{self.seconds:.2f}", self.error]


class StatusWriter:
    """The status table, one row appended (and flushed) per subject as it finishes."""

    def __init__(self, path: Path):
        self.path, self.outcomes = path, []

    def __enter__(self) -> "StatusWriter":
        try:
            self.file = open(self.path, "w", encoding="utf-8")
        except OSError as exc:
            raise DeepsegError(f"cannot write the status table {self.path} ({exc.strerror or exc}): choose another folder with -o") from None
        self.file.write("\t".join(STATUS_COLUMNS) + "\n")
        return self

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.file.write("\t".join(cell.replace("\t", " ") for cell in outcome.row()) + "\n")
        self.file.flush()
        if outcome.status is Status.FAILED:
            log.warning("%s failed: %s", outcome.subject + (f"/{outcome.session}" if outcome.session else ""), outcome.error)

    def count(self, status: Status) -> int:
        return sum(o.status is status for o in self.outcomes)

    def __exit__(self, *exc) -> None:
        self.file.close()


def collect_statistics(out: Path, subjects: Iterable[Subject]) -> Path | None:
    """The cohort's statistics: every subject's ``*_stats.json`` found next to its outputs, one
    row each (the columns of a run's ``_stats.tsv``: :func:`stats.stats_row`, with the subject,
    session and scan), in ``out/stats.tsv`` (replaced atomically). None when no subject has one."""
    rows = []
    for subject in subjects:
        for path in sorted(subject.anat(out).glob(STATS_GLOB)):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("statistics %s unreadable (%s): left out of %s", path, exc, STATS_TABLE)
                continue
            try:
                row = stats_row(data["Statistics"], nifti_stem(path)[: -len("_stats")])
            except (KeyError, IndexError, TypeError):
                log.warning("statistics %s not in this version's layout: left out of %s", path, STATS_TABLE)
                continue
            scan = row.pop("subject")
            rows.append({"subject": subject.subject, "session": subject.session or "n/a", "scan": scan, **row})
    if not rows:
        return None
    target = out / STATS_TABLE
    write_atomic(target, tsv_text(rows), prefix=f".{STATS_TABLE}.", suffix=".part")
    return target
