"""The pretraining loop: MoCo v2 (+ local learning, + ZCA) with live collapse monitoring.

Reproducibility: the data order comes from a per-epoch seeded permutation and every sample's
augmentation from a seed derived from ``(seed, epoch, sample)`` (see :mod:`collapsekit.train.sampling`),
so a run resumed from a checkpoint (which also stores model, queues, optimiser, scheduler and RNG
states) replays exactly the loss sequence of an uninterrupted run on CPU, whatever the number of
DataLoader workers.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from collapsekit.data import (
    SliceDataset,
    TwoViewTransform,
)
from collapsekit.errors import TrainingError, TrainingInterrupted
from collapsekit.models import MoCo
from collapsekit.monitoring import MonitorResult
from collapsekit.outputs import os_error_in, write_failure
from collapsekit.progress import (
    Message,
    ProgressCallback,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    emit,
)
from collapsekit.runs.checkpoint import (
    build_checkpoint,
    remove_stale_temp_files,
    restore_checkpoint,
    save_checkpoint,
)
from collapsekit.runs.rundir import update_latest
from collapsekit.serialization import append_line
from collapsekit.train.config import TrainConfig, config_to_dict, save_config
from collapsekit.train.distributed import (
    DistContext,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from collapsekit.train.interrupts import StopSignals, ignore_stop_signals
from collapsekit.train.monitor import (
    encoder_monitor,
    metrics_record,
    monitor_images,
    spectrum_figure,
    write_final_spectrum,
)
from collapsekit.train.run_dir import open_run
from collapsekit.train.sampling import EpochSampler, SeededViews
from collapsekit.train.split import load_volumes
from collapsekit.train.tensorboard import TensorBoardLog, require_tensorboard

__all__ = ["TrainResult", "train"]

# Data "epoch" of the batches that prefill the queues: an order and augmentations no training
# epoch uses.
PREFILL_EPOCH = 1_000_000


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


def _global_mean(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a per-rank scalar over ranks (what one process on the whole batch would log)."""
    if not ctx.distributed:
        return x
    y = x.clone()
    torch.distributed.all_reduce(y)
    return y / ctx.world_size


def cosine_schedule(step: int, total: int, warmup: int = 0) -> float:
    """Learning-rate factor: linear warm-up ``(step + 1) / warmup`` for ``step < warmup``, then a
    cosine from 1 (at ``warmup``) to 0 (at ``total``)."""
    if step < warmup:
        return (step + 1) / warmup
    t = (min(step, total) - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * t))


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    tensorboard: bool | str | Path = False,
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
        tensorboard: also log every metrics record (and the spectrum figure at each monitor step)
            to TensorBoard event files (rank 0): ``True`` in ``<run>/tb``, or in the directory
            given. Needs the ``tensorboard`` package.

    Raises:
        ConfigError: ``out`` holds another run (without ``resume``/``overwrite``), or nothing to resume.
        TrainingError: batch larger than the data, a non-finite loss or a failed write (the last good
            checkpoint is kept).
        TrainingInterrupted: SIGINT/SIGTERM; the step finished and a checkpoint was written.
        OutputError: ``out`` is a file, a non-empty directory without a run, or not writable.
    """
    if tensorboard is not False:
        require_tensorboard()  # before any work
    ctx = setup_distributed(cfg.device)
    try:
        return _train(
            cfg,
            out,
            resume=resume,
            overwrite=overwrite,
            progress=progress if ctx.is_main else None,
            ctx=ctx,
            tensorboard=tensorboard,
        )
    finally:
        cleanup_distributed(ctx)


class _Session:
    """One training session: data, model, optimiser and the counters a checkpoint stores."""

    def __init__(
        self, cfg: TrainConfig, run_dir: Path, progress: ProgressCallback | None, ctx: DistContext
    ) -> None:
        self.cfg, self.run_dir, self.progress, self.ctx = cfg, run_dir, progress, ctx
        self.ckpt_path = run_dir / "checkpoint.pt"
        self.stop = StopSignals()
        self.saved_step: int | None = None  # the step of the last checkpoint written (or resumed)
        device = self.device = ctx.device

        # ---- data
        train_vols, monitor_vols = load_volumes(cfg, progress)
        slices = SliceDataset(train_vols)
        if len(slices) < cfg.batch_size:
            raise TrainingError(
                f"batch size {cfg.batch_size} is larger than the {len(slices)} usable training "
                "slices; lower --batch-size or add data"
            )
        transform = TwoViewTransform(
            size=cfg.image_size,
            scale=(cfg.crop_min_scale, 1.0),
            jitter_p=cfg.jitter_p,
            blur_p=cfg.blur_p,
        )
        self.views = SeededViews(slices, transform, cfg.seed)
        self.sampler = EpochSampler(
            len(self.views), cfg.batch_size, cfg.seed, ctx.rank, ctx.world_size
        )
        self.loader = DataLoader(
            self.views,
            batch_size=cfg.batch_size // ctx.world_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=cfg.num_workers,
            worker_init_fn=ignore_stop_signals,
            pin_memory=device.type == "cuda",
            # Its own generator: creating an iterator must not draw from the global RNG, or a
            # resumed run would see a shifted shuffle-BN permutation stream.
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.steps_per_epoch
        self.stop_at = min(self.total_steps, cfg.stop_after) if cfg.stop_after else self.total_steps
        self.monitor_images = monitor_images(monitor_vols, cfg.monitor_samples, cfg.image_size)
        self.tb: TensorBoardLog | None = None
        self.n_slices = len(slices)

        # ---- model, optimiser, schedule
        torch.manual_seed(cfg.seed)
        self.moco = MoCo(cfg.model, fused_local_loss=cfg.fused_local_loss).to(device)
        if cfg.channels_last:  # Module.to's type stubs lack memory_format
            self.moco.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model: nn.Module = self.moco
        if ctx.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                self.moco, device_ids=[device.index] if device.type == "cuda" else None
            )
        params = [p for p in self.moco.encoder_q.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            params,
            lr=cfg.base_lr,
            momentum=cfg.sgd_momentum,
            weight_decay=cfg.weight_decay,
            fused=cfg.fused_sgd,
        )
        total, warmup = self.total_steps, cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_schedule(s, total, warmup)
        )
        self.use_amp = cfg.amp and device.type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        )
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.amp_dtype == torch.float16
        )
        self.width = self.moco.encoder_q.backbone.out_channels
        self.monitor = encoder_monitor(
            self.moco.encoder_q, self.monitor_images, warn_fraction=cfg.collapse_warn_fraction
        )
        self.loss_chance = math.log(cfg.model.queue_size + 1)

        self.step = 0
        self.losses: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.last_report: MonitorResult | None = None
        self._window: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def warnings(self) -> list[Message]:
        """Settings that undermine the run or its diagnostics (printed, not fatal)."""
        cfg, out = self.cfg, []
        k, n = cfg.model.queue_size, self.n_slices
        if 4 * k > n:
            out.append(
                Message(
                    f"queue size K = {k} exceeds a quarter of the {n} training slices: each slice "
                    f"sits in the queue as its own negative about {k / n:.1f} times per pass; "
                    f"use K <= {max(n // 4, 1)} (config [model] queue_size)",
                    level="warning",
                )
            )
        m = len(self.monitor_images)
        if m < 2 * self.width:
            out.append(
                Message(
                    f"{m} monitor slices cap the measured rank at {m - 1} of {self.width} "
                    f"dimensions; use monitor_samples >= {2 * self.width} (reported as rank_bound)",
                    level="warning",
                )
            )
        return out

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors moved to the training device (other entries as they are)."""
        return {
            k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()
        }

    def autocast(self) -> torch.autocast:
        """Mixed precision on CUDA (bf16 where supported), a no-op on CPU."""
        return torch.autocast(
            device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp
        )

    @torch.no_grad()
    def prefill(self) -> None:
        """Fill the queues with real keys of the first ``ceil(K / B)`` batches (fresh runs)."""
        k = self.cfg.model.queue_size
        n_batches = -(-k // self.cfg.batch_size)
        done, epoch = 0, PREFILL_EPOCH  # orders and augmentations no training epoch uses
        while done < n_batches:
            self.views.epoch = epoch
            self.sampler.set_epoch(epoch)
            for batch in self.loader:
                with self.autocast():
                    self.moco.prefill_queues(self.on_device(batch))
                done += 1
                if done >= n_batches:
                    break
            epoch += 1

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.step, self.losses, self.history = restore_checkpoint(
            ckpt,
            model=self.moco,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
        )

    def checkpoint(self, epoch: int) -> None:
        """Write ``checkpoint.pt`` (rank 0), and a periodic copy at the end of some epochs."""
        if not self.ctx.is_main:
            return
        cfg = self.cfg
        state = build_checkpoint(
            config_to_dict(cfg),
            epoch=epoch,
            step=self.step,
            total_steps=self.total_steps,
            model=self.moco,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            losses=self.losses,
            history=self.history,
        )
        self._write(save_checkpoint, state, self.ckpt_path)
        self.saved_step = self.step
        if (
            cfg.keep_every_epochs
            and self.step % self.steps_per_epoch == 0
            and (epoch + 1) % cfg.keep_every_epochs == 0
        ):
            path = self.run_dir / f"checkpoint_epoch{epoch + 1:03d}.pt"
            self._write(save_checkpoint, state, path)

    def kept(self) -> str:
        """What a failure leaves on disk, for its message."""
        if self.saved_step is None:
            return "no checkpoint of this run was written yet"
        return f"the last good checkpoint {self.ckpt_path} (step {self.saved_step}) is kept"

    def _write(self, write: Callable[[Any, Path], Any], obj: Any, path: Path) -> None:
        """``write(obj, path)``; a failed write (disk full, read-only) becomes a TrainingError
        saying what was kept. The writers are atomic, so no half-written file is left."""
        try:
            write(obj, path)
        except (OSError, RuntimeError) as e:
            err = os_error_in(e)
            if err is None:
                raise
            raise TrainingError(write_failure(path, err, self.kept())) from None

    def train_step(
        self, batch: dict[str, Any], epoch: int
    ) -> tuple[float, float, float | None, float, float]:
        """One optimiser step; returns the global means ``(loss, loss_global, loss_local, top1,
        batch_top1)`` (top-1: the fraction of queries whose positive key outranks every queued
        negative; batch top-1: whose key is the nearest of the batch's keys)."""
        with self.autocast():
            output = self.model(self.on_device(batch))
        loss = output.loss
        if not torch.isfinite(loss.detach()).all():
            kept = (
                f"; the last good checkpoint is {self.ckpt_path}" if self.ckpt_path.exists() else ""
            )
            raise TrainingError(
                f"loss became {loss.item()} at step {self.step + 1} (epoch {epoch + 1}){kept}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        lv = float(_global_mean(loss.detach(), self.ctx))
        self.losses.append(lv)
        lg = float(_global_mean(output.loss_global.detach(), self.ctx))
        ll = None
        if output.loss_local is not None:
            ll = float(_global_mean(output.loss_local.detach(), self.ctx))
        top1 = (output.logits.detach().argmax(dim=1) == 0).float().mean()
        btop1 = torch.tensor(output.batch_top1 or 0.0, device=top1.device)
        return (
            lv,
            lg,
            ll,
            float(_global_mean(top1, self.ctx)),
            float(_global_mean(btop1, self.ctx)),
        )

    def run_epoch(self, last_metrics: dict[str, Any]) -> int:
        """Train from the current step to the end of its epoch (or ``stop_at``), logging a record
        every ``monitor_every`` steps and at the end of the epoch. Returns the epoch index."""
        cfg, spe = self.cfg, self.steps_per_epoch
        epoch = self.step // spe
        self.sampler.set_epoch(epoch, self.step - epoch * spe)
        self.views.epoch = epoch
        for batch in self.loader:
            lv, lg, ll, top1, btop1 = self.train_step(batch, epoch)
            w = self._window
            parts = {"loss": lv, "loss_global": lg, "loss_local": ll, "top1": top1}
            parts["batch_top1"] = btop1
            for key, v in parts.items():
                w[key] = w.get(key, 0.0) + (v or 0.0)
            w["steps"] = w.get("steps", 0) + 1
            ips = w["steps"] * cfg.batch_size / max(time.perf_counter() - self._t0, 1e-9)
            info = {"epoch": epoch + 1, "loss": lv, "lr": self.scheduler.get_last_lr()[0]}
            info["img/s"] = ips
            if "effective_rank" in last_metrics:
                info["erank"] = last_metrics["effective_rank"]
            emit(self.progress, TaskAdvanced("train", info=info))
            # a record (and a monitor pass) every monitor_every steps, else once per epoch; always
            # at the end of the schedule
            every = cfg.monitor_every or spe
            if self.step % every == 0 or self.step >= self.total_steps:
                if self.ctx.is_main:
                    last_metrics.clear()
                    last_metrics.update(self.log_record(epoch))
                else:
                    self._reset_window()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step % spe:
                self.checkpoint(epoch)
            if self.stop.poll(self.ctx) is not None or self.step >= self.stop_at:
                break
        return epoch

    def _reset_window(self) -> None:
        self._window, self._t0 = {}, time.perf_counter()

    def log_record(self, epoch: int) -> dict[str, Any]:
        """Close the current window: monitor both spaces, warn on collapse, append the record to
        ``metrics.jsonl`` (rank 0 only)."""
        w, cfg = self._window, self.cfg
        n = max(int(w.get("steps", 0)), 1)
        elapsed = time.perf_counter() - self._t0
        self.last_report = self.monitor.measure(self.step)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.step,
            "loss": w.get("loss", 0.0) / n,
            "loss_global": w.get("loss_global", 0.0) / n,
            "loss_local": w.get("loss_local", 0.0) / n if cfg.model.uses_local else None,
            "loss_chance": self.loss_chance,
            "top1": w.get("top1", 0.0) / n,
            "batch_top1": w.get("batch_top1", 0.0) / n,
            "batch_top1_chance": 1.0 / (cfg.batch_size // self.ctx.world_size),
            "lr": self.scheduler.get_last_lr()[0],
            "images_per_s": n * cfg.batch_size / max(elapsed, 1e-9),
            **metrics_record(self.last_report),
        }
        for alert in self.last_report.alerts:
            emit(self.progress, Message(alert, level="warning"))
        self.history.append(record)
        self._write(append_line, json.dumps(record), self.run_dir / "metrics.jsonl")
        if self.tb is not None:
            self.tb.record(record)
            title = f"{self.run_dir.name} — step {self.step}"
            fig = spectrum_figure(self.last_report, cfg.model.method, cfg.model.arch, title)
            self.tb.figure("spectrum", fig, self.step)
            self.tb.flush()
        self._reset_window()
        return record


def _train(
    cfg: TrainConfig,
    out: str | Path | None,
    *,
    resume: bool,
    overwrite: bool,
    progress: ProgressCallback | None,
    ctx: DistContext,
    tensorboard: bool | str | Path = False,
) -> TrainResult:
    cfg, run_dir, ckpt = open_run(cfg, out, resume=resume, overwrite=overwrite, ctx=ctx)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    session = _Session(cfg, run_dir, progress, ctx)
    if ckpt is not None:
        session.restore(ckpt)
        session.saved_step = session.step
    elif cfg.prefill_queue:
        session.prefill()
    for message in session.warnings():
        emit(progress, message)

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(run_dir)  # a kill during a checkpoint write leaves one
        session._write(save_config, cfg, run_dir / "config.toml")
        update_latest(run_dir)
        if tensorboard is not False:
            tb_dir = run_dir / "tb" if tensorboard is True else Path(tensorboard)
            # TensorBoard drops earlier events at or after purge_step: a resumed run replays the
            # steps after its checkpoint, an overwritten one starts again
            session.tb = TensorBoardLog(tb_dir, purge_step=session.step + 1 if ckpt else 0)
    barrier(ctx)

    total = session.total_steps
    emit(progress, TaskStarted("train", total=total, description=f"train {cfg.model.method}"))
    if session.step:
        emit(progress, TaskAdvanced("train", advance=session.step))
    session.model.train()
    epoch = session.step // session.steps_per_epoch
    last_metrics: dict[str, Any] = dict(session.history[-1]) if session.history else {}
    session._reset_window()
    with session.stop:
        while session.step < session.stop_at and session.stop.agreed is None:
            epoch = session.run_epoch(last_metrics)
            session.checkpoint(epoch)
    if session.tb is not None:
        session.tb.close()  # each record was flushed already: an error above loses nothing
    emit(progress, TaskFinished("train", info=last_metrics))
    if session.stop.agreed is not None:
        raise TrainingInterrupted(
            f"stopped at step {session.step}; resume with: collapsekit train --resume "
            f"--out {run_dir}",
            exit_code=128 + int(session.stop.agreed),
        )

    finished = session.step >= total
    if finished and ctx.is_main:
        report = session.last_report
        if report is None:  # resumed exactly at the end: nothing was trained this session
            report = session.monitor.measure(session.step)
        session._write(
            lambda r, d: write_final_spectrum(r, d, cfg.model.method, cfg.model.arch),
            report,
            run_dir,
        )
    barrier(ctx)
    return TrainResult(
        run_dir=run_dir,
        step=session.step,
        total_steps=total,
        epoch=epoch + 1,
        losses=session.losses,
        history=session.history,
        finished=finished,
    )
