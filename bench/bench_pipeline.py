"""Time each stage of the cascade and report peak memory, on volumes of clinical size.

Usage (from the repository root)::

    python bench/bench_pipeline.py                 # paper-average volume, 5 runs after a warm-up
    python bench/bench_pipeline.py --size large    # 1024x1024x30 at 0.35x0.35x3 mm
    python bench/bench_pipeline.py --threads 2 --repeat 10
    python bench/bench_pipeline.py --cold 5        # also the whole command, a fresh process per run

Each configuration runs in a fresh subprocess so that its peak resident memory (ru_maxrss)
is its own. The test volumes are made in another subprocess: Linux carries a process's peak
RSS over fork and exec, so a measuring child started by a parent that had generated the
phantom would report the parent's peak (2.3 GB on the large size), not its own. Test volumes
come from the project's phantom generator (imsct_train.phantoms) when it is installed, else
from a simple built-in analytic phantom of the same size.

``--cold N`` also times the command as a user runs it: N fresh ``imsct_deepseg`` processes
(after one untimed run that warms the file cache), each from interpreter start-up to the masks
written (imports, model load, one case), with each process's own peak RSS (``os.wait4``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # name: (in-plane matrix, slices, in-plane mm, slice mm) of a sagittal acquisition
    "paper": (545, 20, 0.6, 3.68),
    "large": (1024, 30, 0.35, 3.0),
    "small": (256, 14, 0.8, 3.5),
}
STAGES = ["load", "resample", "localize", "crop", "segment", "resample_back", "postprocess", "write"]


def make_case(folder: Path, size: str, seed: int = 0) -> tuple[Path, Path]:
    """Write a T2w/T1w pair of the requested size into ``folder``, and in ``phantom.txt`` which
    generator made it."""
    import nibabel as nib

    matrix, slices, inplane, thickness = SIZES[size]
    try:
        from imsct_train.phantoms import generate_case

        fov = matrix * inplane
        case = generate_case(seed, fov_si_mm=fov, fov_ap_mm=fov, inplane_mm=inplane, n_slices=slices,
                             slice_mm=thickness, gap_mm=0, t1_own_grid=False)
        t2, t1 = case.t2w, case.t1w
        source = "imsct_train.phantoms"
    except ImportError as exc:
        t2, t1 = _analytic_case((matrix, matrix, slices), (inplane, inplane, thickness), seed)
        source = f"built-in analytic phantom (imsct_train.phantoms: {exc})"
    paths = case_paths(folder)
    nib.save(t2, paths[0])
    nib.save(t1, paths[1])
    (folder / "phantom.txt").write_text(source)
    return paths


def case_paths(folder: Path) -> tuple[Path, Path]:
    """Where :func:`make_case` writes the T2w and the T1w."""
    return folder / "bench_T2w.nii.gz", folder / "bench_T1w.nii.gz"


def _analytic_case(shape, zooms, seed):
    """A bright cord tube (T2w) with an enhancing ball (T1w) in noisy tissue, PSR axes, int16."""
    import nibabel as nib
    import numpy as np

    affine = np.zeros((4, 4))
    affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = -zooms[0], zooms[1], zooms[2], 1
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    rng = np.random.default_rng(seed)
    ap = (np.arange(shape[0]) - shape[0] / 2) * zooms[0]
    rl = (np.arange(shape[2]) - shape[2] / 2) * zooms[2]
    si = (np.arange(shape[1]) - shape[1] / 2) * zooms[1]
    cord = (ap[:, None, None] / 4) ** 2 + (rl[None, None, :] / 6) ** 2 <= 1
    cord = np.broadcast_to(cord, shape)
    ball = ap[:, None, None] ** 2 + (si[None, :, None] - 20) ** 2 + rl[None, None, :] ** 2 <= 36
    t2 = rng.normal(300, 20, shape).astype(np.float32)
    t2[cord] = 700
    t1 = rng.normal(300, 20, shape).astype(np.float32)
    t1[ball] = 900
    return (nib.Nifti1Image(t2.astype(np.int16), affine), nib.Nifti1Image(t1.astype(np.int16), affine))


def run_once(t2: Path, t1: Path, out: Path, threads: int, repeat: int) -> dict:
    """In this process: build the predictor, warm up, then ``repeat`` timed runs."""
    t0 = time.perf_counter()
    import deepseg_imsct.cli  # noqa: F401  (import cost of the command)

    from deepseg_imsct.inference import RuntimeOptions
    from deepseg_imsct.pipeline import Predictor

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    predictor = Predictor(runtime=RuntimeOptions(threads=threads))
    t_models = time.perf_counter() - t0
    ready_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    predictor.run_files(t2, t1, out)  # warm-up
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        predictor.run_files(t2, t1, out)
        runs.append({**predictor.last_timings, "total": time.perf_counter() - t0})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"import_s": t_import, "model_load_s": t_models, "runs": runs, "peak_rss_mb": peak_mb, "ready_rss_mb": ready_mb}


def run_command(t2: Path, t1: Path, out: Path, threads: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one fresh ``imsct_deepseg`` process on the case."""
    code = "import sys; from deepseg_imsct.cli import main; sys.exit(main())"  # what the console script runs
    cmd = [sys.executable, "-c", code, "-i", str(t2), str(t1), "-o", str(out), "-threads", str(threads), "-v", "0"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024


def cold_table(t2: Path, t1: Path, out: Path, threads: int, repeat: int) -> str:
    run_command(t2, t1, out, threads)  # file cache, .pyc files
    runs = [run_command(t2, t1, out, threads) for _ in range(repeat)]
    seconds = [r[0] for r in runs]
    return "\n".join([
        f"### whole command, a fresh process per run ({repeat} runs after one untimed run)", "",
        "| median s | min s | max s | peak RSS MB (max over runs) |", "|---|---|---|---|",
        f"| {statistics.median(seconds):.3f} | {min(seconds):.3f} | {max(seconds):.3f} | {max(r[1] for r in runs):.0f} |",
    ])


def table(report: dict, label: str) -> str:
    runs = report["runs"]
    lines = [f"### {label}", "", "| stage | median s | min s |", "|---|---|---|"]
    for stage in STAGES + ["total"]:
        values = [r.get(stage, 0.0) for r in runs]
        lines.append(f"| {stage} | {statistics.median(values):.3f} | {min(values):.3f} |")
    lines += [
        f"| import (once) | {report['import_s']:.3f} | |",
        f"| model load (once) | {report['model_load_s']:.3f} | |",
        "",
        f"peak resident memory: {report['peak_rss_mb']:.0f} MB "
        f"({report['ready_rss_mb']:.0f} MB after import and model load); "
        f"first-run estimate (import + load + median total): "
        f"{report['import_s'] + report['model_load_s'] + statistics.median(r['total'] for r in runs):.2f} s",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="paper")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cold", type=int, default=0, metavar="N", help="also time N fresh imsct_deepseg processes (whole command)")
    p.add_argument("--child", nargs=3, metavar=("T2", "T1", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--make", metavar="FOLDER", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.make:
        make_case(Path(args.make), args.size)
        return 0
    if args.child:
        report = run_once(Path(args.child[0]), Path(args.child[1]), Path(args.child[2]), args.threads, args.repeat)
        print(json.dumps(report))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, __file__, "--make", tmp, "--size", args.size], check=True)
        t2, t1 = case_paths(Path(tmp))
        cmd = [sys.executable, __file__, "--child", str(t2), str(t1), str(Path(tmp) / "out"),
               "--repeat", str(args.repeat), "--threads", str(args.threads)]
        report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        source = (Path(tmp) / "phantom.txt").read_text()
        cold = cold_table(t2, t1, Path(tmp) / "out-cold", args.threads, args.cold) if args.cold else ""
    matrix, slices, inplane, thickness = SIZES[args.size]
    print(table(report, f"{args.size}: {matrix}x{matrix}x{slices} voxels at {inplane}x{inplane}x{thickness} mm, "
                        f"threads={args.threads or 'default'}, {args.repeat} runs after a warm-up"))
    if cold:
        print("\n" + cold)
    print(f"phantom: {source}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
