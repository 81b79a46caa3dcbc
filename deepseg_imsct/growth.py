"""Growth between two visits of one patient, from their lesion statistics (:mod:`stats`).

Per class and per matched lesion: volume change (mm³), percent change, annualized growth
(absolute in mm³/year, and relative in %/year, compounded) and doubling time (years). Lesions
are matched by their position along the cord (mm from the top of the predicted cord), never by
scanner coordinates, which two sessions do not share. A warning says when the two visits
cover cord lengths that differ, as positions from the cord's top then may not correspond.
"""
from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

DAYS_PER_YEAR = 365.25
MATCH_GAP_MM = 20.0  # lesions whose spans along the cord are further apart than this are not matched
LENGTH_TOLERANCE_MM = 20.0  # visits whose cord lengths differ by more than this get a warning


@dataclass(frozen=True)
class Change:
    """A volume at two visits (mm³) and what follows; None where undefined (from or to 0)."""

    volume1_mm3: float
    volume2_mm3: float
    change_mm3: float
    percent_change: float | None
    growth_mm3_per_year: float
    growth_percent_per_year: float | None
    doubling_time_years: float | None  # negative: halving time (shrinking)


@dataclass(frozen=True)
class LesionChange:
    """One lesion of a class at either visit: ``status`` 'matched', 'new' (visit 2 only) or
    'gone' (visit 1 only); its position along the cord (mm from the top) at each visit."""

    cls: str
    status: str
    position1_mm: float | None
    position2_mm: float | None
    change: Change


@dataclass
class GrowthReport:
    """Per class changes, per lesion changes, the interval (days) and warnings."""

    days: int
    classes: dict[str, Change]
    lesions: list[LesionChange]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def volume_change(v1: float, v2: float, years: float) -> Change:
    """:class:`Change` from volumes in mm³ ``years`` apart (> 0)."""
    growing = v1 > 0 and v2 > 0
    ratio = v2 / v1 if growing else None
    doubling = None
    if ratio is not None and ratio != 1:
        doubling = years * math.log(2) / math.log(ratio)
    return Change(
        volume1_mm3=v1, volume2_mm3=v2, change_mm3=v2 - v1,
        percent_change=(v2 - v1) / v1 * 100 if v1 > 0 else None,
        growth_mm3_per_year=(v2 - v1) / years,
        growth_percent_per_year=(ratio ** (1 / years) - 1) * 100 if ratio is not None else None,
        doubling_time_years=doubling,
    )


def _span(component: Mapping) -> tuple[float, float]:
    top = component["from_top_mm"]
    return top, top + component["extent_along_cord_mm"]


def match_lesions(first: Sequence[Mapping], second: Sequence[Mapping], gap_mm: float = MATCH_GAP_MM) -> list[tuple[int | None, int | None]]:
    """Pairs (index in ``first``, index in ``second``) of components (as in :func:`stats.class_stats`)
    matched by their spans along the cord: the pair with the largest overlap (or the smallest gap,
    up to ``gap_mm``) first, each lesion at most once; the rest paired with None."""
    scored = []
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            (a0, a1), (b0, b1) = _span(a), _span(b)
            overlap = min(a1, b1) - max(a0, b0)  # negative: the gap between them
            if overlap >= -gap_mm:
                scored.append((-overlap, abs(a["centre_from_top_mm"] - b["centre_from_top_mm"]), i, j))
    pairs, used1, used2 = [], set(), set()
    for _, _, i, j in sorted(scored):
        if i not in used1 and j not in used2:
            pairs.append((i, j))
            used1.add(i)
            used2.add(j)
    pairs += [(i, None) for i in range(len(first)) if i not in used1]
    pairs += [(None, j) for j in range(len(second)) if j not in used2]
    return pairs


def growth(stats1: Mapping, stats2: Mapping, date1: datetime.date, date2: datetime.date,
           tolerance_mm: float = LENGTH_TOLERANCE_MM) -> GrowthReport:
    """Compare two visits' statistics (``Statistics`` of ``<T2w name>_stats.json``) taken on
    ``date1`` < ``date2``."""
    from .errors import DeepsegError

    days = (date2 - date1).days
    if days <= 0:
        raise DeepsegError(f"the second visit ({date2}) must come after the first ({date1}): give the dates in the visits' order")
    years = days / DAYS_PER_YEAR
    warnings = _coverage_warnings(stats1, stats2, tolerance_mm)
    classes, lesions = {}, []
    for cls in [c for c in stats1["Classes"] if c in stats2["Classes"]]:
        c1, c2 = stats1["Classes"][cls], stats2["Classes"][cls]
        classes[cls] = volume_change(c1["volume_mm3"], c2["volume_mm3"], years)
        for i, j in match_lesions(c1["components"], c2["components"]):
            a = c1["components"][i] if i is not None else None
            b = c2["components"][j] if j is not None else None
            status = "matched" if a and b else "gone" if a else "new"
            lesions.append(LesionChange(cls, status, a["centre_from_top_mm"] if a else None, b["centre_from_top_mm"] if b else None,
                                        volume_change(a["volume_mm3"] if a else 0.0, b["volume_mm3"] if b else 0.0, years)))
    return GrowthReport(days, classes, lesions, warnings)


def _coverage_warnings(stats1: Mapping, stats2: Mapping, tolerance_mm: float) -> list[str]:
    warnings = []
    cord1, cord2 = stats1["Cord"], stats2["Cord"]
    if not (cord1["found"] and cord2["found"]):
        warnings.append("no cord was found at one visit: positions there are measured from the top of the field of view, "
                        "so lesion matches may be wrong")
    if abs(cord1["length_mm"] - cord2["length_mm"]) > tolerance_mm:
        warnings.append(f"the visits cover different lengths of cord ({cord1['length_mm']:.0f} mm and {cord2['length_mm']:.0f} mm): "
                        "positions measured from the top of the cord may not correspond; check the matches")
    return warnings


def _number(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(report: GrowthReport) -> str:
    """The report as a plain-text table (classes, then lesions), for the command's output."""
    head = f"{'':<32}{'visit 1 mm3':>12}{'visit 2 mm3':>12}{'change mm3':>12}{'change %':>10}{'mm3/year':>10}{'%/year':>9}{'doubling y':>11}"
    lines = [f"interval: {report.days} days ({report.days / DAYS_PER_YEAR:.2f} years)", head]

    def row(name: str, c: Change) -> str:
        return (f"{name:<32}{c.volume1_mm3:>12.1f}{c.volume2_mm3:>12.1f}{c.change_mm3:>12.1f}{_number(c.percent_change):>10}"
                f"{c.growth_mm3_per_year:>10.1f}{_number(c.growth_percent_per_year):>9}{_number(c.doubling_time_years, 2):>11}")

    lines += [row(cls, c) for cls, c in report.classes.items()]
    lines.append("lesions (position: mm from the top of the cord, visit 1 -> visit 2)")
    for lesion in report.lesions:
        where = f"{_number(lesion.position1_mm, 0)}->{_number(lesion.position2_mm, 0)}"
        lines.append(row(f"{lesion.cls} {lesion.status} {where}", lesion.change))
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
