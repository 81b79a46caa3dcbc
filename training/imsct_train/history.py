"""The campaign's learning curve from ``run_dir/history.jsonl``: one markdown row per validation.

    python -m imsct_train.campaign report --config training/configs/segmenter-2.json

Steps logged twice (a stretch resumed from an earlier checkpoint redoes them) count once, the
last record winning. CPU seconds are the training process's compute plus the worker's batches.
A campaign restarted from a snapshot begins its history with the snapshot's rows (``restored``
records), which are kept as they were.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

CLASSES = ("tumor", "edema", "cavity", "whole-tumor")


def read(path: Path) -> tuple[dict[int, dict[str, Any]], dict[tuple[int, str], dict[str, Any]], list[dict[str, Any]]]:
    """(steps keyed by iteration, validations keyed by (iteration, validation set), restored rows)."""
    steps: dict[int, dict[str, Any]] = {}
    vals: dict[tuple[int, str], dict[str, Any]] = {}
    restored: list[dict[str, Any]] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "restored" in rec:
            restored.append(rec["restored"])
        elif "validation" in rec:
            vals[(int(rec["iteration"]), rec.get("validation_set", ""))] = rec["validation"]
        elif "loss" in rec:
            steps[int(rec["iteration"])] = rec
    return steps, vals, restored


def rows(path: Path) -> list[dict[str, Any]]:
    """Per validation: step, cumulative CPU-hours, mean (finite) loss, number of non-finite steps
    (skipped by the optimizer) and median step seconds since the previous one, metrics."""
    steps, vals, restored = read(path)
    out = list(restored)
    previous, cpu = (out[-1]["iteration"], out[-1]["cpu_hours"] * 3600) if out else (0, 0.0)
    for it, vset in sorted(vals):
        span = [steps[i] for i in range(previous + 1, it + 1) if i in steps]
        cpu += sum(s.get("compute_cpu_s", 0.0) + s.get("data_cpu_s", 0.0) for s in span)
        med = (lambda key: statistics.median(s.get(key, 0.0) for s in span) if span else float("nan"))
        finite = [s["loss"] for s in span if math.isfinite(s["loss"])]
        out.append({"iteration": it, "set": vset, "cpu_hours": cpu / 3600, "validation": vals[(it, vset)],
                    "loss": statistics.mean(finite) if finite else float("nan"), "skipped": len(span) - len(finite),
                    "step_s": med("compute_s"), "compute_cpu_s": med("compute_cpu_s"), "data_cpu_s": med("data_cpu_s")})
        previous = it
    return out


def markdown(path: Path) -> str:
    """The learning curve as a markdown table."""
    head = ("| step | CPU-hours | mean loss | median step (s) | CPU-s per step: compute / data | validation set | validation mean | "
            "tumor | edema | cavity | whole | healthy cases < 0.1 cm³ |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows(path):
        v = r["validation"]
        per = " | ".join(f"{v.get(f'dice_{c}', float('nan')):.3f}" for c in CLASSES)
        healthy = v.get("healthy_under_0.1cm3")
        cpu = f"{r['compute_cpu_s']:.2f} / {r['data_cpu_s']:.2f}"
        loss = f"{r['loss']:.3f}" + (f" ({r['skipped']} steps non-finite)" if r.get("skipped") else "")
        lines.append(f"| {r['iteration']} | {r['cpu_hours']:.2f} | {loss} | {r['step_s']:.1f} | {cpu} | {r['set'].split('-')[0] or '-'} | {v['score']:.3f} | {per} | "
                     f"{'' if healthy is None else f'{healthy:.0%}'} |")
    return "\n".join(lines)
