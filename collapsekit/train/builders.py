"""The parts of a training session, each built by one small function: data, model, optimiser and
schedule, mixed precision; and the queue size that fits the data."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from collapsekit.data import SliceDataset, TwoViewTransform
from collapsekit.data.slice_store import SliceStore
from collapsekit.errors import TrainingError
from collapsekit.models import MoCo
from collapsekit.progress import Message, ProgressCallback
from collapsekit.train.config import TrainConfig
from collapsekit.train.distributed import DistContext
from collapsekit.train.feed import DeviceFeed, HostFeed, compile_model, pretrain_feed
from collapsekit.train.interrupts import ignore_stop_signals
from collapsekit.train.monitor import monitor_images
from collapsekit.train.sampling import EpochSampler, SeededViews
from collapsekit.train.split import load_training_volumes

__all__ = [
    "TrainData",
    "Precision",
    "build_data",
    "fit_queue",
    "build_model",
    "build_optimizer",
    "build_precision",
    "cosine_schedule",
]


@dataclass
class TrainData:
    """The training views (made by the loader workers, or on the device: ``feed``), their sampler
    and loader, and the monitor slices."""

    feed: HostFeed | DeviceFeed
    sampler: EpochSampler
    loader: DataLoader
    monitor_images: torch.Tensor
    n_slices: int

    @property
    def views(self) -> SeededViews | SliceStore:
        """The dataset the loader indexes (its ``epoch`` selects the augmentation seeds)."""
        return self.feed.dataset

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch


@dataclass
class Precision:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler); off on CPU."""

    enabled: bool
    dtype: torch.dtype
    scaler: torch.amp.GradScaler

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device_type=device.type, dtype=self.dtype, enabled=self.enabled)


def build_data(cfg: TrainConfig, ctx: DistContext, progress: ProgressCallback | None) -> TrainData:
    """Training volumes → seeded two-view slices → this rank's loader; held-out monitor slices.

    Raises:
        TrainingError: fewer usable slices than one batch.
    """
    train_vols, monitor_vols = load_training_volumes(cfg, progress, ctx)
    slices = SliceDataset(train_vols)
    if len(slices) < cfg.batch_size:
        raise TrainingError(
            f"batch size {cfg.batch_size} is larger than the {len(slices)} usable training "
            "slices; lower --batch-size or add data"
        )
    transform = TwoViewTransform(**cfg.augmentation())
    # the views are made by the loader workers or on the device (collapsekit.train.feed)
    feed = pretrain_feed(train_vols, transform, cfg.seed, ctx.device, cfg.device_augment)
    sampler = EpochSampler(len(feed.dataset), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    loader = DataLoader(
        feed.dataset,
        batch_size=cfg.batch_size // ctx.world_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        worker_init_fn=ignore_stop_signals,
        pin_memory=ctx.device.type == "cuda",
        # Its own generator: creating an iterator must not draw from the global RNG, or a
        # resumed run would see a shifted shuffle-BN permutation stream.
        generator=torch.Generator().manual_seed(cfg.seed),
        collate_fn=feed.collate,
    )
    images = monitor_images(monitor_vols, cfg.monitor_samples, cfg.image_size)
    return TrainData(feed, sampler, loader, images, len(slices))


def fit_queue(cfg: TrainConfig, n_slices: int) -> tuple[TrainConfig, Message | None]:
    """``cfg`` with ``K ≤ N/4`` when ``cfg.fit_queue`` (a queue larger than a quarter of the data
    holds each slice several times as its own negative, and its prefill dwarfs a short run).

    Returns:
        The config to train with, and the message saying what changed (``None``: nothing).
    """
    k, fit = cfg.model.queue_size, max(n_slices // 4, 1)
    if not cfg.fit_queue or k <= fit:
        return cfg, None
    model = dataclasses.replace(cfg.model, queue_size=fit)
    message = Message(
        f"queue size K = {k} exceeds a quarter of the {n_slices} training slices: training with "
        f"K = {fit} (chance loss ln(K+1) = {math.log(fit + 1):.2f}); set fit_queue = false to "
        "keep it"
    )
    return dataclasses.replace(cfg, model=model), message


def build_model(cfg: TrainConfig, ctx: DistContext) -> tuple[MoCo, nn.Module]:
    """The MoCo model on the device (seeded), and the module to call (DDP-wrapped under torchrun)."""
    torch.manual_seed(cfg.seed)
    moco = MoCo(cfg.model, fused_local_loss=cfg.fused_local_loss).to(ctx.device)
    if cfg.channels_last:  # Module.to's type stubs lack memory_format
        moco.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model: nn.Module = moco
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(moco, device_ids=ids)
    return moco, compile_model(model, cfg.compile)


def cosine_schedule(step: int, total: int, warmup: int = 0) -> float:
    """Learning-rate factor: linear warm-up ``(step + 1) / warmup`` for ``step < warmup``, then a
    cosine from 1 (at ``warmup``) to 0 (at ``total``)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (min(step, total) - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def build_optimizer(
    cfg: TrainConfig, moco: MoCo, total_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD on the query encoder (MoCo's settings) and the warm-up + cosine schedule."""
    params = [p for p in moco.encoder_q.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=cfg.base_lr,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
        fused=cfg.fused_sgd,
    )
    warmup = cfg.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, total_steps, warmup)
    )
    return optimizer, scheduler


def build_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """:class:`Precision` for ``cfg.amp`` on ``device``."""
    enabled = cfg.amp and device.type == "cuda"
    dtype = torch.bfloat16 if enabled and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=enabled and dtype == torch.float16)
    return Precision(enabled, dtype, scaler)
