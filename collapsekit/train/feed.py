"""How pretraining batches reach the device: augmented by the CPU loader, or on the device.

Two feeds with one interface (``dataset``, ``collate``, ``prepare(batch) -> device batch``):

- :class:`HostFeed` — DataLoader workers run :class:`~collapsekit.data.augment.TwoViewTransform`
  per sample (:class:`~collapsekit.train.sampling.SeededViews`: views depend only on
  ``(seed, epoch, sample)``); ``prepare`` copies the batch to the device.
- :class:`DeviceFeed` — workers only index stored slices
  (:class:`~collapsekit.data.slice_store.SliceStore`, float16 from the disk cache, pinned on CUDA);
  ``prepare`` copies the batch (``non_blocking``) and runs
  :class:`~collapsekit.data.device_augment.DeviceTwoView` there with a generator seeded per batch
  from ``(seed, epoch, batch indices)``.

``device_augment = "auto"`` chooses the device feed on CUDA and :data:`CPU_AUTO` on the CPU (what
``benchmarks/end_to_end.py`` measured faster there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from collapsekit.data import SliceDataset, TwoViewTransform, Volume
from collapsekit.data.device_augment import DeviceTwoView
from collapsekit.data.slice_store import SliceStore, collate
from collapsekit.options import look_up_option
from collapsekit.train.config import COMPILE_MODES, DEVICE_AUGMENT
from collapsekit.train.sampling import SeededViews

__all__ = [
    "CPU_AUTO",
    "DeviceFeed",
    "HostFeed",
    "compile_model",
    "pretrain_feed",
    "use_device_augment",
]

#: The device feed on the CPU under ``auto``: False. Measured (benchmarks/end_to_end.py, 2 loaded
#: cores, ResNet-18 128 px batch 32; docs/archive/perf/end_to_end_cpu_2core.json): end to end / step only
#: 0.98 with the loader workers vs 0.65 with the batched augmentation, which runs between steps in
#: the training process and costs the same CPU time as the per-sample transform.
CPU_AUTO = False


def use_device_augment(mode: str, device: torch.device) -> bool:
    """Whether the two views are made on ``device`` (``mode``: ``auto``, ``on`` or ``off``)."""
    mode = look_up_option(mode, DEVICE_AUGMENT, "device_augment")
    if mode == "auto":
        return device.type == "cuda" or (device.type == "cpu" and CPU_AUTO)
    return mode == "on"


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
        for k, v in batch.items()
    }


class HostFeed:
    """Views made per sample by the DataLoader workers; ``prepare`` moves them to the device."""

    def __init__(
        self,
        volumes: Sequence[Volume],
        transform: TwoViewTransform,
        seed: int,
        device: torch.device,
    ) -> None:
        self.dataset = SeededViews(SliceDataset(volumes), transform, seed)
        self.collate: Callable[[Any], Any] = default_collate
        self.device = device

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _to(batch, self.device)


class DeviceFeed:
    """Stored slices indexed by the workers; ``prepare`` makes both views on the device."""

    def __init__(
        self,
        volumes: Sequence[Volume],
        transform: TwoViewTransform,
        seed: int,
        device: torch.device,
    ) -> None:
        self.dataset = SliceStore(volumes, seed)
        self.collate: Callable[[Any], Any] = collate
        self.device = device
        self.augment = DeviceTwoView(transform)
        self.generator = torch.Generator(device=device)

    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.generator.manual_seed(int(batch["seed"]))
        images = batch["image"].to(self.device, non_blocking=True)
        views = self.augment(images, batch["size"].to(self.device), self.generator)
        views["volume"], views["slice"] = batch["volume"], batch["slice"]
        return views


def pretrain_feed(
    volumes: Sequence[Volume],
    transform: TwoViewTransform,
    seed: int,
    device: torch.device,
    device_augment: str = "auto",
) -> HostFeed | DeviceFeed:
    """The feed ``device_augment`` chooses on ``device`` (see the module doc)."""
    cls = DeviceFeed if use_device_augment(device_augment, device) else HostFeed
    return cls(volumes, transform, seed, device)


def compile_model(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` under ``torch.compile`` as ``mode`` says: ``off`` (itself), ``on`` (default mode)
    or ``cudagraphs`` (``mode="reduce-overhead"``: CUDA graphs on CUDA)."""
    mode = look_up_option(mode, COMPILE_MODES, "compile")
    if mode == "off":
        return model
    compiled = torch.compile(model, mode="reduce-overhead" if mode == "cudagraphs" else None)
    return compiled  # type: ignore[return-value]
