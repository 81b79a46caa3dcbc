"""Segmenter 2: a long, resumable training campaign on pre-built crops with exclusive classes.

    python -m imsct_train.campaign prepare --config training/configs/segmenter-2.json --split train --jobs 1
    python -m imsct_train.campaign derive  --config CONFIG --split train --source g2.1-p128x64x32-s64x32x32  # smaller patch
    python -m imsct_train.campaign train   --config training/configs/segmenter-2.json   # resumes by itself
    python -m imsct_train.campaign export  --config training/configs/segmenter-2.json
    python -m imsct_train.campaign report  --config training/configs/segmenter-2.json   # learning curve (markdown)

``prepare`` generates phantoms and writes their crops (:mod:`imsct_train.crops`); it can run
beside ``train``, which rescans the crop folder at every validation and so learns from a pool
that grows. ``train`` runs one learning-rate schedule over ``training.total_steps`` (softmax
over background / tumor / edema / cavity, cross-entropy + Dice, deep supervision with its own
losses, balanced patches), resumes model, optimizer, schedule and sampler from
``run_dir/checkpoint.pt``, validates every ``validate_every`` steps on runtime-built inputs and
keeps ``best.pt``. Precision (fp32 / bf16) is chosen by timing both at start-up (``amp: auto``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from tqdm import tqdm

from . import crops as C
from .batches import BatchDataset, BatchMaker
from .data import StageConfig, phantom_case
from .losses import bf16_failed, choose_precision, deep_supervision_loss
from .train import load_config, seeds
from .trainer import dice
from .unet import Modified3DUNet, count_parameters

log = logging.getLogger("imsct_train.campaign")


def _geometry_tag(cfg: dict[str, Any]) -> str:
    g = cfg["geometry"]
    return f"p{'x'.join(str(v) for v in g['patch_size'])}-s{'x'.join(str(v) for v in g['stride'])}"


def crop_folder(cfg: dict[str, Any], split: str, generator: str | None = None) -> Path:
    """``<crops_dir>/g<generator>-<patch>/<split>``: one folder per generator version and geometry.
    ``generator``: default the config's ``data.generator`` (the crops a campaign trains on), else
    this checkout's generator (the crops ``prepare`` builds)."""
    from .phantoms.dataset import GENERATOR_VERSION

    version = generator or cfg["data"].get("generator") or GENERATOR_VERSION
    return Path(cfg["data"].get("crops_dir", "runs/crops")) / f"g{version}-{_geometry_tag(cfg)}" / split


def _prepare_one(job: tuple[int, dict[str, Any], str]) -> str:
    seed, cfg, folder = job
    case = phantom_case(seed)
    x, y, meta = C.build_crop(case, StageConfig.from_dict(cfg["geometry"]))  # the runtime's box for this geometry
    C.save_crop(Path(folder), x, y, meta | {"params_sha256": (case.meta or {}).get("params_sha256")})
    return meta["name"]


def derive(cfg: dict[str, Any], split: str, source_tag: str) -> Path:
    """The split's crops for the config's geometry from crop folder ``<crops_dir>/<source_tag>``
    (same generator, larger patch) by :func:`crops.derive_crop`: no phantom is regenerated."""
    from .phantoms.dataset import GENERATOR_VERSION

    folder = crop_folder(cfg, split, GENERATOR_VERSION)
    src = folder.parent.parent / source_tag / split
    m = re.fullmatch(r"g(.+)-p(\d+)x(\d+)x(\d+)-s(\d+)x(\d+)x(\d+)", source_tag)
    if m is None or not src.is_dir():
        raise SystemExit(f"{src}: not a crop folder (expected <crops_dir>/g<version>-p<S>x<A>x<R>-s<S>x<A>x<R>/{split})")
    if m.group(1) != GENERATOR_VERSION:
        raise SystemExit(f"{src}: generator {m.group(1)}, not {GENERATOR_VERSION}: prepare instead")
    source = ([int(v) for v in m.groups()[1:4]], [int(v) for v in m.groups()[4:7]])
    stage = StageConfig.from_dict(cfg["geometry"])
    done = set(C.complete_cases(folder))
    for name in tqdm([n for n in C.complete_cases(src) if n not in done], desc=f"{split} derive"):
        C.derive_crop(src, folder, name, stage, source)
    return folder


def prepare(cfg: dict[str, Any], split: str, jobs: int) -> Path:
    """Generate the split's phantoms with this checkout's generator and write their crops, skipping
    those already there and linking those another generator version rendered from the same
    parameters (:func:`crops.reuse_crop`)."""
    from .phantoms import params_digest, sample_case_params
    from .phantoms.dataset import GENERATOR_VERSION

    folder = crop_folder(cfg, split, GENERATOR_VERSION)
    done = set(C.complete_cases(folder))
    others = sorted(p for p in folder.parent.parent.glob(f"g*-{_geometry_tag(cfg)}/{split}") if p != folder)
    todo = []
    for s in tqdm([s for s in seeds(cfg["data"][f"{split}_seeds"], split) if f"phantom-{s:05d}" not in done],
                  desc=f"{split} reuse", leave=False):
        if not others or C.reuse_crop(folder, f"phantom-{s:05d}", params_digest(sample_case_params(s)), others) is None:
            todo.append(s)
    log.info("%s: %d crops to build", split, len(todo))
    work = [(s, cfg, str(folder)) for s in todo]
    if jobs <= 1:
        for job in tqdm(work, desc=f"{split} crops"):
            _prepare_one(job)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            for _ in tqdm(pool.imap_unordered(_prepare_one, work), total=len(work), desc=f"{split} crops"):
                pass
    return folder


def build_model(cfg: dict[str, Any]) -> Modified3DUNet:
    g, m = cfg["geometry"], cfg["model"]
    return Modified3DUNet(len(g["contrasts"]), 1 + len(C.LESIONS), int(m["base_filters"]), float(m.get("dropout", 0.0)),
                          output="exclusive", head_filters=m.get("head_filters"))


# ----------------------------------------------------------------------------- validation
def exclusive_masks(prob: np.ndarray, whole_threshold: float = 0.5) -> np.ndarray:
    """(4, ...) bool tumor, edema, cavity, whole from the runtime probabilities (4, ...): whole =
    p(whole) >= threshold, split by the runtime's rule (:func:`deepseg_imsct.postprocess.assign_exclusive`,
    equal thresholds: the most probable lesion class); whole is then exactly the union of the three."""
    from deepseg_imsct.postprocess import assign_exclusive

    masks = np.stack(assign_exclusive(list(prob[:3]), (1.0, 1.0, 1.0), prob[3] >= whole_threshold))
    return np.concatenate([masks, masks.any(0, keepdims=True)])


@torch.no_grad()
def validate(model: Modified3DUNet, folder: Path, names: Sequence[str], cfg: dict[str, Any]) -> dict[str, Any]:
    """Dice per class on the runtime box of each validation crop (sliding window as at run time),
    and whole-tumor volume (cm3) predicted on healthy cases."""
    from deepseg_imsct.segment import sliding_window

    g = StageConfig.from_dict(cfg["geometry"])
    model.eval()
    per: dict[str, list[float]] = {c: [] for c in g.classes}
    healthy_cm3 = []
    voxel_cm3 = float(np.prod(g.spacing_mm)) / 1000.0
    for name in tqdm(names, desc="validation", leave=False):
        cc = C.CropCase.load(folder, name, np.random.default_rng(0))
        inner = tuple(slice(a, a + n) for a, n in zip(cc.inner_start, cc.inner_size))
        x = cc.read_x(cc.inner_start, cc.inner_size)
        y = np.asarray(cc.y[inner]) & 3
        prob = sliding_window(x, lambda b: model(torch.from_numpy(b)).numpy(), g.patch_size, g.stride, len(g.classes), 1)
        pred = exclusive_masks(prob)
        truth = [y == 1, y == 2, y == 3, y > 0]
        for k, c in enumerate(g.classes):
            per[c].append(dice(pred[k], truth[k]))
        if cc.healthy:
            healthy_cm3.append(float(pred[3].sum()) * voxel_cm3)
    out: dict[str, Any] = {f"dice_{c}": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for c, v in per.items()}
    finite = [v for v in out.values() if np.isfinite(v)]
    out["score"] = float(np.mean(finite)) if finite else 0.0
    if healthy_cm3:
        out["healthy_whole_cm3_median"] = float(np.median(healthy_cm3))
        out["healthy_under_0.1cm3"] = float(np.mean(np.asarray(healthy_cm3) < 0.1))
    return out


# ----------------------------------------------------------------------------- training
def poly_lr(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then (1 - t)^0.9 over the whole budget (nnU-Net)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(1.0 - step / total, 0.0) ** 0.9


def _save_atomic(blob: dict[str, Any], path: Path) -> None:
    """torch.save to ``path`` through a temporary file: an interrupted save leaves the old file."""
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


class Campaign:
    """Model, optimizer, schedule and run state of one campaign, checkpointed together."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path):
        self.cfg, self.run_dir, t = cfg, Path(run_dir), cfg["training"]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(int(t.get("threads", 2)))
        torch.manual_seed(int(cfg["seed"]))
        self.model = build_model(cfg).to(memory_format=torch.channels_last_3d)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(t["lr"]), weight_decay=float(t.get("weight_decay", 3e-5)))
        self.state: dict[str, Any] = {"iteration": 0, "best_score": -1.0, "best_iteration": 0, "precision": None}
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)  # reads state["restarted_at"]
        decay = float(t.get("ema_decay", 0.0))  # exponential moving average of the weights: validated, exported
        self.ema = None
        if decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        log.info("%s %s: %d parameters", cfg["name"], cfg["version"], count_parameters(self.model))

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def _lr_factor(self, step: int) -> float:
        """:func:`poly_lr`, and a linear warm-up again after a restart from a snapshot (fresh optimizer moments)."""
        t = self.cfg["training"]
        warmup = int(t.get("warmup_steps", 200))
        factor = poly_lr(step, int(t["total_steps"]), warmup)
        since = step - int(self.state.get("restarted_at", -1))
        return factor * min(1.0, (since + 1) / warmup) if since >= 0 else factor

    def write_snapshot(self, path: Path) -> Path:
        """The campaign's durable state, small enough to commit: the averaged weights in float16,
        the run state and the learning curve so far (:func:`history.rows`). ``resume`` restarts
        from it when ``run_dir`` is lost (the optimizer's moments are not kept: they re-warm)."""
        from .history import rows

        weights = {k: v.half() if v.is_floating_point() else v for k, v in self.evaluated.state_dict().items()}
        hist = self.run_dir / "history.jsonl"
        blob = {"name": self.cfg["name"], "version": self.cfg["version"], "weights": weights, "state": self.state,
                "curve": rows(hist) if hist.exists() else []}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(blob, path)
        return path

    def restore_snapshot(self, path: Path) -> None:
        """Start from a snapshot (:meth:`write_snapshot`): model and average = its weights, the
        schedule at its step with a new warm-up, its learning curve as the history's first rows."""
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if (blob["name"], blob["version"]) != (self.cfg["name"], self.cfg["version"]):
            raise SystemExit(f"{path}: a snapshot of {blob['name']} {blob['version']}, not {self.cfg['name']} {self.cfg['version']}")
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["weights"].items()})
        if self.ema is not None:
            self.ema.update_parameters(self.model)  # a new campaign's average: its first update copies
        step = int(blob["state"]["iteration"])
        self.state.update(blob["state"], restarted_at=step, best_score=-1.0, best_iteration=0, precision=None)  # another machine: measure again
        self.sched.last_epoch = step - 1
        with warnings.catch_warnings():  # "scheduler stepped before the optimizer": deliberate, no step is skipped
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()
        self.log({"restored_from": str(path), "iteration": step})
        for row in blob["curve"]:
            self.log({"restored": row})
        log.info("restarted at step %d from snapshot %s", step, path)

    def save(self) -> None:
        blob = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "state": self.state, "torch_rng": torch.get_rng_state()}
        if self.ema is not None:
            blob["ema"] = self.ema.state_dict()
        _save_atomic(blob, self.checkpoint)

    def resume(self) -> None:
        if not self.checkpoint.exists():
            snapshot = self.cfg["training"].get("snapshot")
            if snapshot and Path(snapshot).exists():
                self.restore_snapshot(Path(snapshot))
                return
            log.info("no checkpoint in %s: starting the campaign", self.run_dir)
            return
        blob = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        self.model.load_state_dict(blob["model"])
        self.opt.load_state_dict(blob["optimizer"])
        self.sched.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        self.state.update(blob["state"])
        if self.ema is not None and "ema" in blob:
            self.ema.load_state_dict(blob["ema"])
        elif self.ema is not None:
            log.info("weight averaging starts at step %d from the current weights", self.state["iteration"])
        self._apply_config_lr()
        log.info("resumed at step %d (best %.4f at %d)", self.state["iteration"], self.state["best_score"], self.state["best_iteration"])

    def _apply_config_lr(self) -> None:
        """A peak learning rate changed in the config since the checkpoint: the schedule goes on
        from the same step with the new peak (a recipe change recorded in docs/training.md)."""
        lr = float(self.cfg["training"]["lr"])
        if all(abs(b - lr) <= 1e-12 for b in self.sched.base_lrs):
            return
        log.info("peak learning rate %g -> %g from step %d", self.sched.base_lrs[0], lr, self.state["iteration"])
        self.sched.base_lrs = [lr] * len(self.sched.base_lrs)
        factor = self.sched.lr_lambdas[0](self.sched.last_epoch)
        for group in self.opt.param_groups:
            group["initial_lr"], group["lr"] = lr, lr * factor
        self.sched._last_lr = [lr * factor] * len(self.opt.param_groups)

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validated and saved as best.pt: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step; returns loss, learning rate and CPU seconds of the step."""
        c0, w0 = time.process_time(), time.perf_counter()
        x = batch["x"].contiguous(memory_format=torch.channels_last_3d)
        self.model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.state["precision"] == "bf16"):
            outs = self.model.logits_ds(x)
        loss = deep_supervision_loss(outs, batch["y"], self.cfg["training"].get("ds_weights", (1.0, 0.5, 0.25)))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 12.0)
        if torch.isfinite(norm):
            self.opt.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        self.sched.step()
        self.state["iteration"] += 1
        if bf16_failed(self.state["precision"], float(loss.detach())):
            log.warning("step %d: non-finite loss in bf16 (step skipped): training goes on in fp32", self.state["iteration"])
            self.state.update(precision="fp32", bf16_failed_at=self.state["iteration"])
        return {"loss": float(loss.detach()), "lr": self.sched.get_last_lr()[0], "compute_cpu_s": time.process_time() - c0,
                "compute_s": time.perf_counter() - w0, "data_cpu_s": float(batch["cpu_s"])}

    def loader(self, folder: Path, names: list[str], start: int, stop: int):
        t, g = self.cfg["training"], StageConfig.from_dict(self.cfg["geometry"])
        aug = C.PatchAug(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.cfg.get("augmentation", {}).items()})
        maker = BatchMaker(folder, names, int(self.cfg["seed"]), int(t["batch_size"]), g.patch_size, g.spacing_mm,
                           self.cfg["sampling"], aug)
        workers = int(t.get("data_workers", 1))
        return torch.utils.data.DataLoader(BatchDataset(maker, range(start, stop)), batch_size=None, num_workers=workers,
                                           prefetch_factor=4 if workers else None, multiprocessing_context="spawn" if workers else None)

    def run(self, stop_at: int | None = None) -> None:
        """Train in segments of ``validate_every`` steps until ``total_steps`` (or ``stop_at``)."""
        t = self.cfg["training"]
        total, every = int(stop_at or t["total_steps"]), int(t.get("validate_every", 500))
        train_dir, val_dir = crop_folder(self.cfg, "train"), crop_folder(self.cfg, "val")
        val_names = C.complete_cases(val_dir)
        bar = tqdm(total=total, initial=self.state["iteration"], desc=self.cfg["name"], dynamic_ncols=True)
        while self.state["iteration"] < total:
            names = C.complete_cases(train_dir)
            if not names:
                raise SystemExit(f"no training crops in {train_dir}: run 'prepare' first")
            start = self.state["iteration"]
            stop = min(total, (start // every + 1) * every)
            if self.state["precision"] is None:
                b = self.loader(train_dir, names, 0, 1).dataset[0]  # a quarter-size probe: the ratio is what matters
                x, y = b["x"][..., :64, :32, :16].contiguous(memory_format=torch.channels_last_3d), b["y"][..., :64, :32, :16]
                self.state["precision"] = choose_precision(self.model, x, y, t.get("amp", "auto"))
            self.log({"segment": start, "train_cases": len(names), "precision": self.state["precision"]})
            w0 = time.perf_counter()
            for batch in self.loader(train_dir, names, start, stop):
                wait = time.perf_counter() - w0
                info = self.step(batch) | {"data_wait_s": wait, "iteration": self.state["iteration"]}
                self.log(info)
                bar.update(1)
                bar.set_postfix(loss=f"{info['loss']:.3f}", step=f"{info['compute_s']:.1f}s", data=f"{info['data_cpu_s']:.2f}cpu-s")
                if self.state["iteration"] % int(t.get("checkpoint_every", 50)) == 0:
                    self.save()
                w0 = time.perf_counter()
            if val_names and (self.state["iteration"] % every == 0 or self.state["iteration"] == total):
                self.validate(val_dir, val_names)
            self.save()
        bar.close()

    def validate(self, folder: Path, names: list[str]) -> None:
        """Validate; a new best is saved as best.pt. Scores on another validation set (a new generator
        version) do not compare: the best so far is then kept as ``best-<set>-step<N>.pt`` and reset."""
        tag = folder.parent.name
        if self.state.get("validation_set") != tag:
            if (self.run_dir / "best.pt").exists():
                old = f"best-{self.state.get('validation_set') or 'previous'}-step{self.state['best_iteration']}.pt"
                shutil.copyfile(self.run_dir / "best.pt", self.run_dir / old)
                log.info("validation set %s (was %s): best so far kept as %s", tag, self.state.get("validation_set"), old)
            self.state.update(validation_set=tag, best_score=-1.0, best_iteration=0)
        metrics = validate(self.evaluated, folder, names, self.cfg)
        log.info("step %d validation %s", self.state["iteration"], json.dumps(metrics))
        self.log({"iteration": self.state["iteration"], "validation": metrics, "validation_set": tag})
        if metrics["score"] > self.state["best_score"]:
            self.state["best_score"], self.state["best_iteration"] = metrics["score"], self.state["iteration"]
            torch.save(self.evaluated.state_dict(), self.run_dir / "best.pt")
        if self.cfg["training"].get("snapshot"):
            self.write_snapshot(Path(self.cfg["training"]["snapshot"]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imsct_train.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("prepare", "derive", "train", "export", "report"))
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="prepare: which seeds")
    p.add_argument("--jobs", type=int, default=1, help="prepare: processes")
    p.add_argument("--source", help="derive: the crop folder (e.g. g2.1-p128x64x32-s64x32x32) to derive the geometry's crops from")
    p.add_argument("--stop-at", type=int, help="train: stop at this step (the schedule still spans total_steps)")
    p.add_argument("--registry", type=Path, help="export: registry to update (default: the package's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(args.config)
    if args.command == "report":
        from .history import markdown

        print(markdown(Path(cfg["run_dir"]) / "history.jsonl"))
        return 0
    if args.command == "prepare":
        print(prepare(cfg, args.split, args.jobs))
        return 0
    if args.command == "derive":
        if not args.source:
            p.error("derive needs --source")
        print(derive(cfg, args.split, args.source))
        return 0
    camp = Campaign(cfg, Path(cfg["run_dir"]))
    if args.command == "train":
        (camp.run_dir / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        camp.resume()
        camp.run(args.stop_at)
        return 0
    from .export import export_trained

    camp.model.load_state_dict(torch.load(camp.run_dir / "best.pt", map_location="cpu"))
    print(export_trained(camp.model.to(memory_format=torch.contiguous_format), cfg, registry_path=args.registry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
