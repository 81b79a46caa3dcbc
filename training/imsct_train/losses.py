"""Losses of the exclusive-class segmenter and the start-up choice of numeric precision."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Cross-entropy + (1 - batch soft Dice over the foreground classes), nnU-Net style.

    ``logits`` (N, K, S, A, R) with class 0 the background, ``target`` (N, S, A, R) int64.
    A class absent from the batch and not predicted scores Dice 1 (no penalty).
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    prob = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(prob.dtype)
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return ce + 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


def deep_supervision_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum of :func:`ce_dice_loss` at each output's resolution (targets sub-sampled by
    taking every 2nd, 4th... voxel, i.e. nearest neighbour); weights are normalised to sum 1."""
    total = 0.0
    wsum = float(sum(weights))
    for out, w in zip(outputs, weights):
        step = target.shape[-1] // out.shape[-1]
        t = target[:, ::step, ::step, ::step] if step > 1 else target
        total = total + (w / wsum) * ce_dice_loss(out, t)
    return total


def choose_precision(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, requested: str = "auto",
                     passes: int = 3, tolerance: float = 0.05) -> str:
    """"fp32" or "bf16": the requested one, or with "auto" the faster of the two over timed
    forward+backward passes (bf16 is fast on CPUs with bf16 units, ~20-50x slower on AVX2-only ones).

    bf16 is kept only if every pass gives a finite loss within ``tolerance`` (relative) of fp32's:
    oneDNN's AMX bf16 kernels of some torch builds return NaN or garbage for a share of
    convolutions (oneDNN issue 5717), which a campaign then also watches for (:func:`bf16_failed`).
    """
    if requested != "auto":
        return requested
    times: dict[str, float] = {}
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for mode in ("fp32", "bf16"):
        best = float("inf")
        for _ in range(passes):
            t0 = time.perf_counter()
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
                outs = model.logits_ds(x)
            loss = deep_supervision_loss(outs, y, (1.0, 0.5, 0.25))
            loss.backward()
            best = min(best, time.perf_counter() - t0)
            losses[mode].append(float(loss.detach()))
            if best > 10 * times.get("fp32", float("inf")):
                break  # clearly slower: do not waste minutes on it
        times[mode] = best
    model.zero_grad(set_to_none=True)
    ref = losses["fp32"][0]
    sound = all(math.isfinite(v) and abs(v - ref) <= tolerance * abs(ref) for v in losses["bf16"])
    choice = "bf16" if sound and times["bf16"] < times["fp32"] else "fp32"
    log.info("precision: %s (seconds per pass %s; bf16 losses %s vs fp32 %.4f)", choice,
             {k: round(v, 2) for k, v in times.items()}, [round(v, 4) for v in losses["bf16"]], ref)
    return choice


def bf16_failed(precision: str | None, loss: float) -> bool:
    """True when a bf16 step gave a non-finite loss: the campaign then trains on in fp32."""
    return precision == "bf16" and not math.isfinite(loss)
