"""Benchmark of the phantom generator on one core: per-case seconds and per-stage breakdown.

``python -m imsct_train.phantoms.bench [-n N | --seeds S ...] [--set KEY=VALUE]``. Sets the
OMP / MKL / OpenBLAS thread counts to 1 before numpy loads; pin the process to one core with
``taskset -c 0`` for fair figures. Nothing is written to disk.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

# default seeds: all coverages, own T1w grids, the largest train grids (seed 39: 0.44 mm, 24 slices)
DEFAULT_SEEDS = (39, 56, 128, 198, 164, 9, 3, 0, 21, 25, 10, 17)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imsct_train.phantoms.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help=f"seeds (default {DEFAULT_SEEDS})")
    ap.add_argument("-n", type=int, default=None, help="use the first N train seeds instead")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (as imsct_phantoms)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per seed (the minimum is reported)")
    args = ap.parse_args(argv)
    from . import timing
    from .cli import _parse_set
    from .dataset import generate_case, retain_freed_memory

    retain_freed_memory()  # as the dataset workers
    seeds = list(range(args.n)) if args.n else list(args.seeds or DEFAULT_SEEDS)
    over = _parse_set(args.set)
    generate_case(seeds[0], **{**over, "render_scale": 0.3, "n_slices": 10})  # warm-up: imports, reference
    timing.reset()
    totals: dict[str, float] = {}
    per_case: list[float] = []
    per_cpu: list[float] = []
    for seed in seeds:
        best, best_st, cpu = float("inf"), {}, 0.0
        for _ in range(max(args.repeat, 1)):
            t0, c0 = time.perf_counter(), time.process_time()
            case = generate_case(seed, **over)
            dt = time.perf_counter() - t0
            st = timing.reset()
            if dt < best:
                best, best_st, cpu = dt, st, time.process_time() - c0
        per_case.append(best)
        per_cpu.append(cpu)
        for k, v in best_st.items():
            totals[k] = totals.get(k, 0.0) + v
        shape = "x".join(str(x) for x in case.t2w.shape)
        stages = " ".join(f"{k}={v:.2f}" for k, v in best_st.items())
        print(f"seed {seed:>7} {case.meta['coverage']:<17} {shape:<12} {best:6.2f} s (cpu {cpu:5.2f})  {stages}", flush=True)
    n = len(per_case)
    print(f"{n} cases: wall mean {sum(per_case) / n:.2f} s, max {max(per_case):.2f} s, min {min(per_case):.2f} s; "
          f"cpu mean {sum(per_cpu) / n:.2f} s, max {max(per_cpu):.2f} s")
    print("mean per stage: " + " ".join(f"{k}={v / n:.2f}" for k, v in totals.items()))
    print(f"load average {os.getloadavg()[0]:.2f} (other processes), affinity {sorted(os.sched_getaffinity(0))}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
