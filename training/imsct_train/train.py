"""Train one stage of the cascade from a JSON config, with checkpoints, resume and export.

    python -m imsct_train.train --config training/configs/localizer.json [--resume] [--device auto]

The config holds every hyperparameter (see ``training/configs/*.json`` and docs/training.md).
A run folder keeps ``checkpoint.pt`` (latest state: model, optimizer, scheduler, RNGs,
iteration), ``best.pt`` (best validation weights), ``history.jsonl`` and ``config.json``.
This module is the command (config, case stores, phases, export); the training loop itself is
:class:`imsct_train.trainer.Trainer`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before torch starts OpenMP: spinning worker threads collapse throughput when the cores are
# shared (data thread, other jobs): 36 s -> 9 s per localizer step measured on a busy 2-core CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from . import data as D
from .trainer import CaseStore, Trainer, compute_loss

log = logging.getLogger("imsct_train")


# ----------------------------------------------------------------------------- configuration
def load_config(path: Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    for dotted, value in (overrides or {}).items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def seeds(spec: Any, split: str) -> list[int]:
    """Seeds from ``[start, stop)``, ``{"seeds": [...]}`` or ``{"split": name, "n": count}``."""
    if isinstance(spec, dict) and "seeds" in spec:
        return [int(v) for v in spec["seeds"]]
    if isinstance(spec, dict):
        from .phantoms import split_seeds

        return list(split_seeds(spec.get("split", split), int(spec["n"])))
    start, stop = (int(v) for v in spec)
    return list(range(start, stop))


def make_store(cfg: dict[str, Any], split: str, cache_dir: Path, keep: int) -> CaseStore:
    """Cases of a split: phantom seeds (generated once into the cache) or a BIDS folder."""
    dcfg = cfg["data"]
    if dcfg.get("bids_root"):
        subjects = dcfg.get(f"{split}_subjects")
        cases = D.bids_cases(Path(dcfg["bids_root"]), subjects)
        return CaseStore({c.name: (lambda c=c: c) for c in cases}, keep=len(cases))
    from .phantoms.dataset import GENERATOR_VERSION

    cache_dir = cache_dir / f"phantoms-v{GENERATOR_VERSION}"  # a new generator never reuses stale cases
    todo = seeds(dcfg[f"{split}_seeds"], split)
    warm_cache([s for s in todo if not (cache_dir / f"phantom-{s:05d}.npz").exists()], cache_dir, int(dcfg.get("jobs", 1)), split)
    return CaseStore({f"phantom-{s:05d}": (lambda s=s: D.phantom_case(s, cache_dir)) for s in todo}, keep)


def shared_data_dir() -> Path:
    """The shared real-data folder: $IMSCT_SHARED_DATA, else ``../shared/data`` beside the repo."""
    env = os.environ.get("IMSCT_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def real_store(cfg: dict[str, Any]) -> CaseStore | None:
    """Real scans with manual cord masks (config ``real_validation``), monitored but not scored;
    None (with a log line) when the shared data folder or a file is absent."""
    entries, root = cfg.get("real_validation", []), shared_data_dir()
    paths = [(root / e["image"], root / e["cord"]) for e in entries]
    missing = [str(p) for pair in paths for p in pair if not p.exists()]
    if not entries or missing:
        if entries:
            log.info("real-scan validation skipped: missing %s (set IMSCT_SHARED_DATA)", ", ".join(missing))
        return None
    cases = [D.case_from_images(img.name.split(".")[0], nib.load(img), None, {"cord": nib.load(cord)}) for img, cord in paths]
    log.info("real-scan validation (monitoring only) on %s", ", ".join(str(img) for img, _ in paths))
    return CaseStore({c.name: (lambda c=c: c) for c in cases}, keep=len(cases))


def _cache_one(job: tuple[int, Path]) -> int:
    D.phantom_case(job[0], job[1])
    return job[0]


def warm_cache(missing: Sequence[int], cache_dir: Path, jobs: int, split: str) -> None:
    """Generate the phantoms of ``missing`` seeds into the npz cache (``jobs`` processes)."""
    if not missing:
        return
    log.info("generating %d %s phantoms into %s with %d process(es)", len(missing), split, cache_dir, jobs)
    work = [(s, cache_dir) for s in missing]
    if jobs <= 1:
        for job in tqdm(work, desc=f"{split} phantoms"):
            _cache_one(job)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(jobs) as pool:
        for _ in tqdm(pool.imap_unordered(_cache_one, work), total=len(work), desc=f"{split} phantoms"):
            pass


# ----------------------------------------------------------------------------- benchmark


def benchmark(trainer: Trainer, n: int) -> dict[str, Any]:
    """Seconds per optimisation step (median of ``n`` after one warm-up) on random tensors."""
    g, t = trainer.cfg["geometry"], trainer.cfg["training"]
    shape = (int(t["batch_size"]), len(g["contrasts"]), *g["patch_size"])
    x = torch.randn(shape, device=trainer.device)
    y = (torch.rand((shape[0], len(g["classes"]), *g["patch_size"]), device=trainer.device) > 0.9).float()
    times = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        loss = compute_loss(trainer.model.train(), x, y, t.get("loss", "dice"), t.get("amp", "none"))
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer.opt.step()
        times.append(time.perf_counter() - t0)
    return {"name": trainer.cfg["name"], "device": str(trainer.device), "threads": torch.get_num_threads(),
            "batch": shape[0], "patch": list(g["patch_size"]), "amp": t.get("amp", "none"),
            "median_step_s": float(np.median(times[1:])), "steps_s": [round(v, 2) for v in times]}


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m imsct_train.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path, help="stage config (training/configs/*.json)")
    p.add_argument("--run-dir", type=Path, help="run folder (default: the config's run_dir)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    p.add_argument("--device", default="auto", help="auto (GPU when available), cpu or cuda[:i]")
    p.add_argument("--iterations", type=int, help="override training.iterations")
    p.add_argument("--init-from", type=Path, help="start from these weights (best.pt, checkpoint.pt, or a phase config "
                   "trained first) with a fresh optimizer and schedule: fine-tuning; overrides training.init_from")
    p.add_argument("--no-export", action="store_true", help="do not write the ONNX file and registry entry")
    p.add_argument("--registry", type=Path, help="registry to update (default: the package's)")
    p.add_argument("--cache-dir", type=Path, help="phantom npz cache (default: the config's data.cache_dir)")
    p.add_argument("--export-only", action="store_true", help="export the run folder's best.pt and exit")
    p.add_argument("--benchmark", type=int, metavar="N", help="time N training steps on random tensors and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def initial_weights(init_from: str, args: argparse.Namespace) -> Path:
    """Weights to fine-tune from: a ``.pt`` file, or a phase config (``.json``, relative to this
    config's folder) that is trained first, resuming its run folder, when its best.pt is missing."""
    path = Path(init_from)
    if path.suffix != ".json":
        return path
    phase = path if path.is_absolute() else Path(args.config).parent / path
    phase_cfg = load_config(phase)
    best = Path(phase_cfg.get("run_dir", f"runs/{phase_cfg['name']}")) / "best.pt"
    if not best.exists():
        log.info("training phase %s first (no %s)", phase, best)
        extra = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
        main(["--config", str(phase), "--resume", "--no-export", "--device", args.device, *extra])
    return best


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides: dict[str, Any] = {"training.iterations": args.iterations} if args.iterations else {}
    if args.init_from:
        overrides["training.init_from"] = str(args.init_from)
    cfg = load_config(args.config, overrides)
    run_dir = args.run_dir or Path(cfg.get("run_dir", f"runs/{cfg['name']}"))
    cache_dir = Path(args.cache_dir or cfg["data"].get("cache_dir", "runs/cache"))
    trainer = Trainer(cfg, run_dir, args.device)
    if args.benchmark:
        print(json.dumps(benchmark(trainer, args.benchmark)))
        return 0
    if not args.export_only:
        (trainer.run_dir / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        if args.resume:
            trainer.resume()
        if trainer.state.iteration == 0 and cfg["training"].get("init_from"):
            trainer.init_weights(initial_weights(cfg["training"]["init_from"], args))
        trainer.real = real_store(cfg)
        keep = int(cfg["data"].get("cases_in_memory", 64))
        train_store, val_store = make_store(cfg, "train", cache_dir, keep), make_store(cfg, "val", cache_dir, keep)
        state = trainer.run(train_store, val_store)
        log.info("stopped at iteration %d; best score %.4f at iteration %d", state.iteration, state.best_score, state.best_iteration)
    if args.no_export:
        return 0
    from .export import export_trained

    best = trainer.run_dir / "best.pt"
    if best.exists():
        trainer.model.load_state_dict(torch.load(best, map_location=trainer.device))
    elif args.export_only:
        log.error("no best.pt in %s: nothing to export", trainer.run_dir)
        return 1
    print(export_trained(trainer.model.cpu(), cfg, registry_path=args.registry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
