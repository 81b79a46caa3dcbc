"""Cohort throughput: subjects per minute of ``imsct_batch`` with 1 and 2 local workers and on a
Dask LocalCluster, and a projection for N machines.

Usage (from the repository root)::

    python bench/bench_batch.py                       # 12 phantom subjects of the 'small' size
    python bench/bench_batch.py -n 24 --size paper --configs 1 2 dask

A BIDS dataset of phantoms (``bench_pipeline.make_case``: the project's phantom generator when
installed) is written once into ``-o``/bids. Each configuration runs the real command in a fresh
process into a fresh derivatives folder, timed from start-up to exit (imports, model loading,
worker start-up included), with the shipped models. The Dask configuration uses a LocalCluster of
2 worker processes with 1 thread each, started before the command is timed (its start-up is
reported apart), and measures the scheduler's own cost per task with no-op tasks.

Projection: a subject costs ``c`` core-seconds (in-worker seconds with 1 ONNX Runtime thread,
from status.tsv of the 2-worker run) plus ``o`` seconds of scheduler overhead per task; N machines
of K cores then segment about ``N*K*60/(c+o)`` subjects per minute, until the scheduler's ceiling
``60/o_sched`` tasks per minute (it assigns tasks one after the other) or the shared file
system's bandwidth binds.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import make_case  # noqa: E402


def make_dataset(root: Path, n: int, size: str) -> Path:
    """``n`` subjects (phantom seeds 0..n-1) in BIDS layout; kept between runs."""
    for i in range(n):
        anat = root / f"sub-{i:03d}" / "anat"
        t2, t1 = anat / f"sub-{i:03d}_T2w.nii.gz", anat / f"sub-{i:03d}_ce-gadolinium_T1w.nii.gz"
        if t2.exists() and t1.exists():
            continue
        anat.mkdir(parents=True, exist_ok=True)
        made = make_case(anat, size, seed=1000 + i)
        os.replace(made[0], t2)
        os.replace(made[1], t1)
        (anat / "phantom.txt").unlink(missing_ok=True)
    return root


def run_command(root: Path, out: Path, *options: str) -> tuple[float, list[dict]]:
    """Wall seconds of one fresh ``imsct_batch`` process, and its status rows."""
    shutil.rmtree(out, ignore_errors=True)
    code = "import sys; from deepseg_imsct.batch_cli import main; sys.exit(main())"  # what the console script runs
    cmd = [sys.executable, "-c", code, str(root), "-o", str(out), "-v", "0", *options]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    with open(out / "status.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    bad = [r for r in rows if r["status"] != "done"]
    if bad:
        raise SystemExit(f"{' '.join(cmd)}: not done: {bad}")
    return seconds, rows


def scheduler_overhead(client, n: int = 500) -> float:
    """Seconds per no-op task through the scheduler (submit to result)."""
    def noop(i):
        return i
    client.gather(client.map(noop, range(50), pure=False))  # warm
    t0 = time.perf_counter()
    client.gather(client.map(noop, range(n), pure=False))
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=12, help="subjects (default 12)")
    p.add_argument("--size", default="small", choices=["small", "paper", "large"], help="phantom size (bench_pipeline.SIZES)")
    p.add_argument("--configs", nargs="+", default=["1", "2", "dask"], help="local worker counts and/or 'dask'")
    p.add_argument("-o", default="runs/bench-batch", help="scratch folder (default runs/bench-batch)")
    args = p.parse_args()
    base = Path(args.o)
    root = make_dataset(base / f"bids-{args.size}", args.n, args.size)
    print(f"{args.n} subjects ({args.size} phantoms), {os.cpu_count()} CPU cores, load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| configuration | wall s | subjects/min | in-worker s per subject (mean) |\n|---|---|---|---|")
    per_subject, overhead = {}, None
    for config in args.configs:
        if config == "dask":
            from distributed import Client, LocalCluster

            t0 = time.perf_counter()
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
                startup = time.perf_counter() - t0
                overhead = scheduler_overhead(client)
                seconds, rows = run_command(root, base / "deriv-dask", "--dask", cluster.scheduler_address)
            label = f"Dask LocalCluster, 2 workers x 1 thread (cluster start-up {startup:.1f} s, not counted)"
        else:
            seconds, rows = run_command(root, base / f"deriv-{config}", "--workers", config)
            label = f"local, --workers {config}"
        per_subject[config] = statistics.mean(float(r["seconds"]) for r in rows)
        print(f"| {label} | {seconds:.1f} | {len(rows) / seconds * 60:.1f} | {per_subject[config]:.2f} |")
    print(f"\nload average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if overhead is not None and "2" in per_subject:
        c = per_subject["2"]
        print(f"\nscheduler overhead per task: {overhead * 1000:.1f} ms; per-subject cost c = {c:.2f} core-s (1 thread)")
        print("\n| machines x cores | projected subjects/min |\n|---|---|")
        for machines, cores in ((1, 2), (10, 2), (10, 32), (100, 32)):
            rate = min(machines * cores * 60 / (c + overhead), 60 / overhead)
            print(f"| {machines} x {cores} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
