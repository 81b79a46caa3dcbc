"""Seconds per segmenter training step (forward, deep-supervision loss, backward, optimizer) by patch size.

Usage (from the repository root, after ``pip install -e ".[train]" -e ./training``)::

    python bench/bench_train_step.py                                   # the config's patch and two smaller ones
    python bench/bench_train_step.py --patch 128x64x32 128x32x16 --batch 2 4 --repeat 9

The network, loss and precision are the campaign's (``training/configs/segmenter-2.json`` by
default: :func:`imsct_train.campaign.build_model`, channels-last, fp32 unless ``--bf16``) on random
inputs; data building is not included (the campaign reports it per step). Prints, per patch and
batch size, the median wall and CPU seconds per step over ``--repeat`` steps after two warm-up
steps, and the voxels per CPU-second. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

from imsct_train.campaign import build_model  # noqa: E402
from imsct_train.losses import deep_supervision_loss  # noqa: E402
from imsct_train.train import load_config  # noqa: E402


def step_seconds(model: torch.nn.Module, shape: tuple[int, int, int], batch: int, repeat: int, bf16: bool) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one optimisation step on random data of ``shape`` (S, A, R voxels)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 2, *shape).contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 4, (batch, *shape))
    times = []
    for _ in range(repeat + 2):
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outs = model.logits_ds(x)
        loss = deep_supervision_loss(outs, y, (1.0, 0.5, 0.25))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append((time.perf_counter() - w0, time.process_time() - c0))
    times = times[2:]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "segmenter-2.json")
    p.add_argument("--patch", nargs="+", default=None, help="SxAxR voxels (default: the config's, 128x64x16, 128x32x16)")
    p.add_argument("--batch", nargs="+", type=int, default=[2])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    patches = args.patch or ["x".join(map(str, cfg["geometry"]["patch_size"])), "128x64x32", "128x64x16", "128x32x16"]
    model = build_model(cfg).to(memory_format=torch.channels_last_3d)
    model.train()
    print(f"{'patch':>12} {'batch':>5} {'wall s':>7} {'CPU s':>7} {'Mvoxel/CPU-s':>13}")
    for patch in dict.fromkeys(patches):
        shape = tuple(int(v) for v in patch.split("x"))
        for batch in args.batch:
            wall, cpu = step_seconds(model, shape, batch, args.repeat, args.bf16)
            vox = batch * shape[0] * shape[1] * shape[2]
            print(f"{patch:>12} {batch:>5} {wall:7.2f} {cpu:7.2f} {vox / cpu / 1e6:13.3f}", flush=True)


if __name__ == "__main__":
    main()
