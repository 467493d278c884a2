"""Reproducible data order and augmentation for pretraining.

The data order comes from a per-epoch seeded permutation and every sample's augmentation from a seed
derived from ``(seed, epoch, sample)``, so a resumed run replays an uninterrupted one exactly on CPU,
whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from collapsekit.data import SliceDataset, TwoViewTransform

__all__ = ["SeededViews", "EpochSampler"]


class SeededViews(Dataset):
    """Two-view samples whose augmentation depends only on ``(seed, epoch, index)``."""

    def __init__(self, slices: SliceDataset, transform: TwoViewTransform, seed: int) -> None:
        self.slices = slices
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.slices[i]
        s = int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            views = self.transform(item["image"])
        views["volume"] = item["volume"]
        views["slice"] = item["slice"]
        return views


class EpochSampler(Sampler[int]):
    """Seeded permutation per epoch; each global batch is split across ranks; can start mid-epoch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.steps_per_epoch = n // batch_size
        self.local = batch_size // world
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start_batch, self.steps_per_epoch):
            # Interleaved: rank r takes samples r, r+W, ... of the global batch, the same
            # sub-batches that split-BN normalises together on one process.
            batch = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield from batch[self.rank :: self.world]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_batch) * self.local
