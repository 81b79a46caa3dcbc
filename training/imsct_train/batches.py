"""Balanced training batches from pre-built crops (:mod:`imsct_train.crops`), built in a worker process.

Each patch first draws a category (a lesion class, lesion-free cord, the cord of a healthy case,
or anywhere in the runtime box) with the config's probabilities, then a case that has it, then
a centre voxel, jittered by up to a quarter patch. Batch ``i`` of a segment is a pure function
of ``(seed, i, case list)``: a resumed run draws the batches an uninterrupted run would have.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .crops import CropCase, PatchAug, augment_patch, cut_patch

CATEGORIES = ("tumor", "edema", "cavity", "cord", "healthy", "uniform")


@dataclass
class BatchMaker:
    """Builds batch ``i`` from the named cases of ``folder`` (loaded lazily, kept as memory maps)."""

    folder: Path
    names: list[str]
    seed: int
    batch_size: int
    patch: tuple[int, int, int]
    spacing: tuple[float, float, float]
    probabilities: Mapping[str, float]
    aug: PatchAug | None = None
    _cases: dict[str, CropCase] = field(default_factory=dict, repr=False)
    _by_category: dict[str, list[str]] | None = field(default=None, repr=False)

    def case(self, name: str) -> CropCase:
        if name not in self._cases:
            self._cases[name] = CropCase.load(self.folder, name, np.random.default_rng([self.seed, len(self._cases)]))
        return self._cases[name]

    def by_category(self) -> dict[str, list[str]]:
        """Case names that can serve each category (loads every case once)."""
        if self._by_category is None:
            table: dict[str, list[str]] = {c: [] for c in CATEGORIES}
            for n in self.names:
                cc = self.case(n)
                for c in ("tumor", "edema", "cavity", "cord"):
                    if len(cc.centres[c]):
                        table[c].append(n)
                if cc.healthy and len(cc.centres["cord"]):
                    table["healthy"].append(n)
                table["uniform"].append(n)
            self._by_category = table
        return self._by_category

    def centre(self, category: str, rng: np.random.Generator) -> tuple[CropCase, np.ndarray]:
        """A case and a centre voxel (crop coordinates) for ``category``."""
        table = self.by_category()
        names = table[category] or table["uniform"]
        cc = self.case(names[int(rng.integers(len(names)))])
        patch = np.asarray(self.patch)
        if category == "uniform" or not table[category]:
            lo = np.asarray(cc.inner_start)
            return cc, lo + (rng.random(3) * np.asarray(cc.inner_size)).astype(int)
        key = "cord" if category == "healthy" else category
        pts = cc.centres[key]
        return cc, pts[int(rng.integers(len(pts)))] + rng.integers(-(patch // 4), patch // 4 + 1)

    def __call__(self, i: int) -> dict[str, Any]:
        """Batch ``i``: x (B, C, *patch) float32, y (B, *patch) int64 class indices, cpu_s, categories."""
        t0 = time.process_time()
        rng = np.random.default_rng([self.seed, i, len(self.names)])
        cats = list(self.probabilities)
        p = np.asarray([self.probabilities[c] for c in cats], dtype=float)
        xs, ys, drawn = [], [], []
        for _ in range(self.batch_size):
            cat = cats[int(rng.choice(len(cats), p=p / p.sum()))]
            cc, centre = self.centre(cat, rng)
            x, y = cut_patch(cc, centre, self.patch, self.spacing, self.aug, rng)
            if self.aug is not None:
                x, y = augment_patch(x, y, self.aug, rng)
            xs.append(x)
            ys.append(y)
            drawn.append(cat)
        return {"x": np.stack(xs), "y": (np.stack(ys) & 3).astype(np.int64), "cpu_s": time.process_time() - t0,
                "categories": drawn, "index": i}


class BatchDataset:
    """Map-style dataset over batch indices for ``torch.utils.data.DataLoader(batch_size=None)``."""

    def __init__(self, maker: BatchMaker, indices: Sequence[int]):
        self.maker, self.indices = maker, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        import torch

        b = self.maker(self.indices[k])
        return b | {"x": torch.from_numpy(b["x"]), "y": torch.from_numpy(b["y"])}
