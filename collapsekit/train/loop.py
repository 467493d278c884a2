"""The pretraining loop: MoCo v2 (+ local learning, + ZCA) with live collapse monitoring.

Reproducibility: the data order comes from a per-epoch seeded permutation and every sample's
augmentation from a seed derived from ``(seed, epoch, sample)``, so a run resumed from a checkpoint
(which also stores model, queues, optimiser, scheduler and RNG states) replays exactly the loss
sequence of an uninterrupted run on CPU, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from collapsekit.data import (
    PhantomConfig,
    PreprocessConfig,
    SliceDataset,
    TwoViewTransform,
    load_split,
)
from collapsekit.data.volume import Volume
from collapsekit.diagnostics.extract import select_slices, slice_tensor
from collapsekit.diagnostics.spectrum import SpectrumResult, spectrum_report
from collapsekit.errors import ConfigError, TrainingError
from collapsekit.models import MoCo
from collapsekit.progress import (
    Message,
    ProgressCallback,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    emit,
)
from collapsekit.serialization import write_json
from collapsekit.train.checkpoint import (
    FORMAT,
    VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from collapsekit.train.config import TrainConfig, config_from_dict, config_to_dict, save_config
from collapsekit.train.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    cleanup_distributed,
    setup_distributed,
)

__all__ = ["TrainResult", "train", "default_run_dir", "monitor_report", "RUN_FILES"]

RUN_FILES = ("checkpoint.pt", "config.toml", "metrics.jsonl")


@dataclass
class TrainResult:
    """What a finished (or stopped) training session leaves behind."""

    run_dir: Path
    step: int
    total_steps: int
    epoch: int
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False


class _SeededViews(Dataset):
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


class _EpochSampler(Sampler[int]):
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


def default_run_dir(cfg: TrainConfig, root: str | Path = "runs") -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<method>-<backbone>``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    method = cfg.model.method.replace("+", "_")
    return Path(root) / f"{stamp}-{method}-{cfg.model.arch}"


def _update_latest(run_dir: Path) -> None:
    run_dir = run_dir.resolve()  # never point latest at itself when run via runs/latest
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, link)
    except OSError:  # e.g. a filesystem without symlinks: not worth failing a run for
        pass


def _load_volumes(
    cfg: TrainConfig, progress: ProgressCallback | None
) -> tuple[list[Volume], list[Volume]]:
    pre = PreprocessConfig(a_min=cfg.a_min, a_max=cfg.a_max, in_plane_size=cfg.in_plane_size)
    phantom = PhantomConfig(
        cases=cfg.phantom_cases,
        size=cfg.phantom_size,
        slices=cfg.phantom_slices,
        seed=cfg.seed,
    )
    kw: dict[str, Any] = dict(phantom=phantom, cache_dir=cfg.cache_dir, progress=progress)
    train_vols = load_split(cfg.dataset, cfg.data_dir, "training", pre, **kw)
    monitor_vols = load_split(cfg.dataset, cfg.data_dir, "validation", pre, **kw)
    if not monitor_vols:
        # No validation split (AbdomenCT-1K, folder): hold out the last volumes for monitoring.
        n_hold = max(1, len(train_vols) // 20) if len(train_vols) >= 5 else 0
        if n_hold:
            monitor_vols = train_vols[-n_hold:]
            train_vols = train_vols[:-n_hold]
        else:
            monitor_vols = train_vols
    return train_vols, monitor_vols


@torch.no_grad()
def monitor_report(encoder: Any, images: torch.Tensor, batch_size: int = 128) -> SpectrumResult:
    """Spectrum report of the pooled backbone embeddings of ``images`` (eval mode, L2-normalised)."""
    was = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        z = torch.cat(
            [
                encoder.embed(images[i : i + batch_size].to(device)).float().cpu()
                for i in range(0, len(images), batch_size)
            ]
        )
    finally:
        encoder.train(was)
    return spectrum_report(z, name="monitor", normalize=True)


def _monitor_record(rep: SpectrumResult) -> dict[str, float]:
    """What metrics.jsonl logs of a monitor report each epoch."""
    return {
        "effective_rank": rep.effective_rank_centered,
        "effective_rank_uncentered": rep.effective_rank_uncentered,
        "alpha": rep.alpha,
        "alpha_r2": rep.alpha_r2,
        "std_l2": rep.std_l2,
    }


def _global_mean(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a per-rank scalar over ranks (what one process on the whole batch would log)."""
    if not ctx.distributed:
        return x
    y = x.clone()
    torch.distributed.all_reduce(y)
    return y / ctx.world_size


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Pretrain a MoCo v2 model (method per ``cfg.model.method``) and write a run directory.

    The run directory receives ``checkpoint.pt`` (atomic; after every epoch and every
    ``checkpoint_every`` steps), ``config.toml``, ``metrics.jsonl`` (one line per epoch: loss parts,
    lr, images/s, effective rank, α) and at the end ``spectrum.png`` of the final backbone.
    Under ``torchrun`` every rank trains on its share of each batch and only rank 0 writes.

    Args:
        cfg: the configuration (ignored except for runtime fields when ``resume``: the stored config wins).
        out: run directory; default ``runs/<time>-<method>-<arch>``.
        resume: continue the run in ``out`` from its ``checkpoint.pt``.
        overwrite: allow writing into a directory that already holds another run.
        progress: progress callback (task ``train``; warnings as :class:`Message`).

    Raises:
        ConfigError: ``out`` holds another run (without ``resume``/``overwrite``), or nothing to resume.
        TrainingError: batch larger than the data, or a non-finite loss (the last good checkpoint is kept).
    """
    ctx = setup_distributed(cfg.device)
    try:
        return _train(
            cfg,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=progress if ctx.is_main else None,
            ctx=ctx,
        )
    finally:
        cleanup_distributed(ctx)


def _train(
    cfg: TrainConfig,
    out: str | Path | None,
    *,
    resume: bool,
    overwrite: bool,
    progress: ProgressCallback | None,
    ctx: DistContext,
) -> TrainResult:
    # ---- run directory and (optionally) the checkpoint to resume from
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    run_dir = Path(broadcast_object(str(run_dir), ctx))
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise ConfigError(f"nothing to resume: {ckpt_path} does not exist")
        ckpt = load_checkpoint(ckpt_path)
        runtime = {
            k: getattr(cfg, k) for k in ("stop_after", "num_workers", "device", "checkpoint_every")
        }
        cfg = dataclasses.replace(config_from_dict(ckpt["config"]), **runtime)
    else:
        existing = [f for f in RUN_FILES if (run_dir / f).exists()]
        if existing and not overwrite:
            raise ConfigError(
                f"{run_dir} already holds a run ({', '.join(existing)}); use --resume to continue it, "
                "--overwrite to replace it, or another --out"
            )
    if cfg.batch_size % ctx.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not divisible by the {ctx.world_size} processes"
        )

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    device = ctx.device

    # ---- data
    train_vols, monitor_vols = _load_volumes(cfg, progress)
    slices = SliceDataset(train_vols)
    if len(slices) < cfg.batch_size:
        raise TrainingError(
            f"batch size {cfg.batch_size} is larger than the {len(slices)} usable training slices; "
            "lower --batch-size or add data"
        )
    views = _SeededViews(slices, TwoViewTransform(size=cfg.image_size), cfg.seed)
    sampler = _EpochSampler(len(views), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size)
    loader = DataLoader(
        views,
        batch_size=cfg.batch_size // ctx.world_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: creating an iterator must not draw from the global RNG, or a resumed
        # run would see a shifted shuffle-BN permutation stream.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    stop_at = min(total_steps, cfg.stop_after) if cfg.stop_after else total_steps
    monitor_images = slice_tensor(
        monitor_vols, select_slices(monitor_vols, cfg.monitor_samples), cfg.image_size
    )

    # ---- model, optimiser, schedule
    torch.manual_seed(cfg.seed)
    moco = MoCo(cfg.model).to(device)
    model: nn.Module = moco
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    params = [p for p in moco.encoder_q.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=cfg.base_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, total_steps))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    step, losses, history = 0, [], []
    if ckpt is not None:
        moco.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if "scaler" in ckpt and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        losses = list(ckpt.get("losses", []))
        history = list(ckpt.get("history", []))
        set_rng_state(ckpt["rng"])

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        if run_dir.resolve().parent.name == "runs":
            _update_latest(run_dir)
    barrier(ctx)

    def checkpoint(epoch: int) -> None:
        if not ctx.is_main:
            return
        state = {
            "format": FORMAT,
            "version": VERSION,
            "config": config_to_dict(cfg),
            "epoch": epoch,
            "step": step,
            "total_steps": total_steps,
            "model": moco.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "losses": losses,
            "history": history,
        }
        save_checkpoint(state, ckpt_path)
        if (
            cfg.keep_every_epochs
            and step % steps_per_epoch == 0
            and (epoch + 1) % cfg.keep_every_epochs == 0
        ):
            save_checkpoint(state, run_dir / f"checkpoint_epoch{epoch + 1:03d}.pt")

    width = moco.encoder_q.backbone.out_channels
    emit(progress, TaskStarted("train", total=total_steps, description=f"train {cfg.model.method}"))
    if step:
        emit(progress, TaskAdvanced("train", advance=step))
    model.train()
    epoch = step // steps_per_epoch
    last_metrics: dict[str, float] = history[-1] if history else {}
    last_report: SpectrumResult | None = None
    while step < stop_at:
        epoch = step // steps_per_epoch
        start_batch = step - epoch * steps_per_epoch
        sampler.set_epoch(epoch, start_batch)
        views.epoch = epoch
        t0, n_img = time.perf_counter(), 0
        sums: dict[str, float] = {"loss": 0.0, "loss_global": 0.0, "loss_local": 0.0}
        n_steps = 0
        for batch in loader:
            batch = {
                k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()
            }
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                output = model(batch)
            loss = output.loss
            if not torch.isfinite(loss.detach()).all():
                kept = f"; the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else ""
                raise TrainingError(
                    f"loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}){kept}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            n_steps += 1
            n_img += cfg.batch_size
            lv = float(_global_mean(loss.detach(), ctx))
            losses.append(lv)
            sums["loss"] += lv
            sums["loss_global"] += float(_global_mean(output.loss_global.detach(), ctx))
            if output.loss_local is not None:
                sums["loss_local"] += float(_global_mean(output.loss_local.detach(), ctx))
            ips = n_img / max(time.perf_counter() - t0, 1e-9)
            info = {"epoch": epoch + 1, "loss": lv, "lr": scheduler.get_last_lr()[0], "img/s": ips}
            if "effective_rank" in last_metrics:
                info["erank"] = last_metrics["effective_rank"]
            emit(progress, TaskAdvanced("train", info=info))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                checkpoint(epoch)
            if step >= stop_at:
                break
        elapsed = time.perf_counter() - t0
        if step % steps_per_epoch == 0 or step >= total_steps:
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": step,
                "loss": sums["loss"] / max(n_steps, 1),
                "loss_global": sums["loss_global"] / max(n_steps, 1),
                "loss_local": sums["loss_local"] / max(n_steps, 1)
                if cfg.model.uses_local
                else None,
                "lr": scheduler.get_last_lr()[0],
                "images_per_s": n_img / max(elapsed, 1e-9),
            }
            if ctx.is_main:
                last_report = monitor_report(moco.encoder_q, monitor_images)
                record.update(_monitor_record(last_report))
                last_metrics = record
                er = record["effective_rank"]
                if er < cfg.collapse_warn_fraction * width:
                    emit(
                        progress,
                        Message(
                            f"epoch {epoch + 1}: effective rank {er:.1f} is below "
                            f"{cfg.collapse_warn_fraction:.0%} of the backbone width {width}: "
                            "the representation is collapsing",
                            level="warning",
                        ),
                    )
                history.append(record)
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
        checkpoint(epoch)
    emit(progress, TaskFinished("train", info=last_metrics))

    finished = step >= total_steps
    if finished and ctx.is_main:
        if last_report is None:  # resumed exactly at the end: nothing was trained this session
            last_report = monitor_report(moco.encoder_q, monitor_images)
        _final_spectrum(last_report, run_dir, cfg)
    barrier(ctx)
    return TrainResult(
        run_dir=run_dir,
        step=step,
        total_steps=total_steps,
        epoch=epoch + 1,
        losses=losses,
        history=history,
        finished=finished,
    )


def _final_spectrum(rep: SpectrumResult, run_dir: Path, cfg: TrainConfig) -> None:
    """``spectrum.png`` and ``spectrum.json`` of the final backbone (its last monitor report)."""
    from collapsekit.plotting import plot_spectrum, save_figure

    rep = dataclasses.replace(rep, name=f"{cfg.model.method} ({cfg.model.arch})")
    fig, _ = plot_spectrum(rep, title=f"Backbone spectrum after training — {run_dir.name}")
    save_figure(fig, run_dir / "spectrum.png")
    write_json(rep, run_dir / "spectrum.json")
