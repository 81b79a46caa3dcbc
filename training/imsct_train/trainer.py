"""One stage's training loop: the model, its loss, validation, checkpoints (:class:`Trainer`).

:mod:`imsct_train.train` is the command that reads the config, builds the case stores and runs
the phases; this module holds what a run does on them: :class:`CaseStore` (cases by name,
loaded lazily), losses, sliding-window validation, checkpoints with every RNG.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from deepseg_imsct.cropbox import box_for_mask
from deepseg_imsct.grid import apply_affine
from deepseg_imsct.localize import cord_components
from deepseg_imsct.segment import sliding_window

from . import data as D
from .unet import Modified3DUNet, count_parameters

log = logging.getLogger("imsct_train")


class CaseStore:
    """Cases by name, loaded lazily from the npz cache; at most ``keep`` held in memory."""

    def __init__(self, loaders: dict[str, Callable[[], D.Case]], keep: int = 64):
        self.loaders, self.keep, self._mem = loaders, keep, {}
        self._lock = threading.Lock()  # the batch-building thread and validation share the store

    @property
    def names(self) -> list[str]:
        return list(self.loaders)

    def get(self, name: str) -> D.Case:
        with self._lock:
            case = self._mem.get(name)
            if case is None:
                case = self.loaders[name]()
                if len(self._mem) >= self.keep:
                    self._mem.pop(next(iter(self._mem)))
                self._mem[name] = case
            return case


# ----------------------------------------------------------------------------- losses
def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Multiclass soft Dice loss: 1 - mean over classes of the batch Dice (N, K, ...) inputs."""
    dims = [0] + list(range(2, prob.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def compute_loss(model: Modified3DUNet, x: torch.Tensor, y: torch.Tensor, kind: str, amp: str = "none") -> torch.Tensor:
    """Dice (or Dice + BCE) of the network on (x, y); ``amp`` "bf16" runs the net in bfloat16 autocast."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
        logits = model.logits(x)
    logits = logits.float()
    loss = dice_loss(torch.sigmoid(logits), y)
    if kind == "dice+bce":
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    return loss


# ----------------------------------------------------------------------------- validation
@torch.no_grad()
def predict_volume(model: Modified3DUNet, x: np.ndarray, patch: Sequence[int], stride: Sequence[int],
                   n_out: int, device: torch.device, batch_size: int = 2) -> np.ndarray:
    """Sliding-window probabilities (K, S, A, R) of ``x`` (C, S, A, R), as the runtime does."""
    model.eval()

    def predict(b: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(b).to(device)).float().cpu().numpy()

    return sliding_window(x, predict, patch, stride, n_out, batch_size)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Binary Dice; NaN when both are empty."""
    denom = pred.sum() + target.sum()
    return float(2 * np.logical_and(pred, target).sum() / denom) if denom else float("nan")


def box_inclusion(case: D.Case, prob: np.ndarray, dst, check: dict[str, Any]) -> float:
    """Fraction of ground-truth lesion voxels (cord if no lesion) inside the segmenter crop box
    that the runtime derives from the localizer output ``prob`` (1, *dst.shape) on grid ``dst``;
    0 when the localizer finds nothing."""
    mask = cord_components(prob[0] >= 0.5)
    if mask is None:
        return 0.0
    box, work = box_for_mask(mask, dst, case.t2_grid, check["spacing_mm"], check["safety_factor"],
                             check["patch_size"], check["stride"])
    lesion = case.labels.get(D.LESION_CLASS)
    target = lesion if lesion is not None and lesion.any() else case.labels["cord"]
    if not target.any():
        return float("nan")
    vox = apply_affine(np.linalg.solve(work.affine, case.label_grid.affine), np.argwhere(target > 0).astype(float))
    lo, hi = np.asarray(box.start) - 0.5, np.asarray(box.start) + np.asarray(box.size) - 0.5
    return float(np.all((vox >= lo) & (vox <= hi), axis=1).mean())


def validate(model: Modified3DUNet, store: CaseStore, cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Validation metrics on unaugmented inputs built as at run time; ``score`` drives early stopping."""
    stage = D.StageConfig.from_dict(cfg["geometry"])
    per_class: dict[str, list[float]] = {c: [] for c in stage.classes}
    inclusion = []
    for name in tqdm(store.names, desc="validation", leave=False):
        case = store.get(name)
        dst = D.localizer_grid(case, stage) if cfg["stage"] == "localizer" else D.segmenter_crop(case, stage)
        x = D.build_channels(case.images(stage.contrasts), dst)
        y = D.build_targets(case, stage.classes, dst) >= 0.5
        p = predict_volume(model, x, stage.patch_size, stage.stride, len(stage.classes), device)
        for k, c in enumerate(stage.classes):
            per_class[c].append(dice(p[k] >= 0.5, y[k]))
        if cfg["stage"] == "localizer" and "inclusion_check" in cfg:
            inclusion.append(box_inclusion(case, p, dst, cfg["inclusion_check"]))
    out: dict[str, Any] = {f"dice_{c}": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for c, v in per_class.items()}
    finite = [v for v in out.values() if np.isfinite(v)]
    out["score"] = float(np.mean(finite)) if finite else 0.0
    inclusion = [i for i in inclusion if np.isfinite(i)]
    if inclusion:
        out["box_inclusion_cases"] = float(np.mean([i >= 1.0 for i in inclusion]))
        out["box_inclusion_voxels"] = float(np.mean(inclusion))
    return out


# ----------------------------------------------------------------------------- state
@dataclass
class RunState:
    iteration: int = 0
    best_score: float = -1.0
    best_iteration: int = 0
    bad_validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def build_model(cfg: dict[str, Any]) -> Modified3DUNet:
    g, m = cfg["geometry"], cfg["model"]
    return Modified3DUNet(len(g["contrasts"]), len(g["classes"]), int(m["base_filters"]), float(m.get("dropout", 0.3)))


def save_checkpoint(path: Path, model, opt, sched, state: RunState) -> None:
    """Atomic write of everything needed to resume (sampling is a function of the iteration)."""
    blob = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "state": state.__dict__, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, model, opt, sched) -> RunState:
    """Restore a :func:`save_checkpoint` file into the given objects; returns the run state."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["torch_rng"])
    if blob.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return RunState(**blob["state"])


# ----------------------------------------------------------------------------- training loop
class Trainer:
    """One stage's training run: sampling, optimisation, checkpoints, validation, early stop.

    The batch of iteration ``i`` is drawn from ``np.random.default_rng([seed, i])``, so a
    resumed run sees exactly the batches an uninterrupted run would, and the next batch can be
    built in a background thread while the current step runs.
    """

    def __init__(self, cfg: dict[str, Any], run_dir: Path, device: str = "auto"):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        t = cfg["training"]
        torch.set_num_threads(int(t.get("threads", 2)))
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        self.seed = int(cfg["seed"])
        torch.manual_seed(self.seed)
        self.stage = D.StageConfig.from_dict(cfg["geometry"])
        aug = cfg.get("augmentation", {})
        self.spatial = D.SpatialAug.from_dict(aug.get("spatial"))
        self.intensity = D.IntensityAug.from_dict(aug.get("intensity"))
        self.sample_fn = D.localizer_sample if cfg["stage"] == "localizer" else D.segmenter_sample
        self.model = build_model(cfg).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(t["lr"]), weight_decay=float(t.get("weight_decay", 1e-4)))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=int(t["iterations"]), eta_min=float(t.get("lr_min", 1e-5)))
        self.state = RunState()
        self.real: CaseStore | None = None  # real scans, validated for monitoring only
        log.info("%s: %d parameters on %s", cfg["name"], count_parameters(self.model), self.device)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def resume(self) -> None:
        if self.checkpoint_path.exists():
            self.state = load_checkpoint(self.checkpoint_path, self.model, self.opt, self.sched)
            log.info("resumed from %s at iteration %d", self.checkpoint_path, self.state.iteration)
        else:
            log.info("no checkpoint in %s: starting from scratch", self.run_dir)

    def init_weights(self, path: Path) -> None:
        """Load model weights only (fine-tuning); optimizer, schedule and iteration start afresh."""
        blob = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(blob["model"] if "model" in blob else blob)
        log.info("initialised the weights from %s", path)

    def batch(self, store: CaseStore, iteration: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(x, y, seconds) of ``iteration``'s batch: (B, C, *patch), (B, K, *patch) float32."""
        t0 = time.perf_counter()
        rng = np.random.default_rng([self.seed, iteration])
        names = store.names
        pairs = [self.sample_fn(store.get(names[int(rng.integers(len(names)))]), self.stage, rng, self.spatial, self.intensity)
                 for _ in range(int(self.cfg["training"]["batch_size"]))]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), time.perf_counter() - t0

    def step(self, batch: tuple[np.ndarray, np.ndarray, float]) -> dict[str, float]:
        """One optimisation step on a :meth:`batch`; returns loss and timings."""
        t1 = time.perf_counter()
        x, y = (torch.from_numpy(a).to(self.device) for a in batch[:2])
        t = self.cfg["training"]
        self.model.train()
        loss = compute_loss(self.model, x, y, t.get("loss", "dice"), t.get("amp", "none"))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float("inf"))  # the norm; nothing clipped
        if torch.isfinite(norm):
            self.opt.step()
        else:  # bfloat16 on small blocks overflowed: one bad batch must not turn every weight into NaN
            log.warning("iteration %d: non-finite gradients, step skipped", self.state.iteration + 1)
        self.sched.step()
        self.state.iteration += 1
        return {"loss": float(loss.detach()), "data_s": batch[2], "step_s": time.perf_counter() - t1}

    def run(self, train: CaseStore, val: CaseStore, iterations: int | None = None) -> RunState:
        """Train until ``iterations`` (default: the config's) or early stopping."""
        total = int(iterations or self.cfg["training"]["iterations"])
        patience = int(self.cfg["training"].get("patience", 10))
        bar = tqdm(total=total, initial=self.state.iteration, desc=self.cfg["name"], dynamic_ncols=True)
        with ThreadPoolExecutor(max_workers=1) as pool:  # builds the next batch during this step
            pending = pool.submit(self.batch, train, self.state.iteration)
            while self.state.iteration < total and self.state.bad_validations < patience:
                batch = pending.result()
                if self.state.iteration + 1 < total:
                    pending = pool.submit(self.batch, train, self.state.iteration + 1)
                info = self.step(batch)
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.4f}", data=f"{info['data_s']:.1f}s", step=f"{info['step_s']:.1f}s")
                self._log({"iteration": self.state.iteration, "lr": self.sched.get_last_lr()[0], **info})
                self._after_step(val, total)
        bar.close()
        save_checkpoint(self.checkpoint_path, self.model, self.opt, self.sched, self.state)
        return self.state

    def _after_step(self, val: CaseStore, total: int) -> None:
        """Validation and checkpoint when due."""
        t, it = self.cfg["training"], self.state.iteration
        if it % int(t.get("validate_every", 250)) == 0 or it == total:
            self._validate(val, float(t.get("epsilon", 1e-3)))
        if it % int(t.get("checkpoint_every", 50)) == 0 or it == total:
            save_checkpoint(self.checkpoint_path, self.model, self.opt, self.sched, self.state)

    def _validate(self, val: CaseStore, eps: float) -> None:
        metrics = validate(self.model, val, self.cfg, self.device)
        score = metrics["score"]
        if self.real is not None:
            real = validate(self.model, self.real, self.cfg, self.device)
            metrics |= {f"real_{k}": v for k, v in real.items() if k != "score"}
        log.info("iteration %d validation %s", self.state.iteration, json.dumps(metrics))
        self._log({"iteration": self.state.iteration, "validation": metrics})
        if score > self.state.best_score + eps:
            self.state.best_score, self.state.best_iteration, self.state.bad_validations = score, self.state.iteration, 0
            torch.save(self.model.state_dict(), self.run_dir / "best.pt")
        else:
            self.state.bad_validations += 1

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
