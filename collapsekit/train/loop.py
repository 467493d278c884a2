"""The pretraining loop: MoCo v2 (+ local learning, + ZCA) with live collapse monitoring.

The loop has the shape of facebookresearch/moco's ``main_moco.py`` ``train()``: for each batch, one
step (:meth:`TrainingSession.train_step`, returning a typed :class:`~collapsekit.train.records.StepResult`),
then the callbacks of :mod:`collapsekit.train.callbacks` (metrics rows and the monitor,
TensorBoard, checkpoints, stop signals, progress). The session's parts are built by
:mod:`collapsekit.train.builders`; the run directory is :mod:`collapsekit.train.run_dir`'s.

Reproducibility: the data order comes from a per-epoch seeded permutation and every sample's
augmentation from a seed derived from ``(seed, epoch, sample)`` (see :mod:`collapsekit.train.sampling`),
so a run resumed from a checkpoint (which also stores model, queues, optimiser, scheduler and RNG
states) replays exactly the loss sequence of an uninterrupted run on CPU, whatever the number of
DataLoader workers.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collapsekit.data.spec import DIAGNOSTICS_SAMPLES
from collapsekit.diagnostics.health import HealthVerdict
from collapsekit.errors import TrainingError, TrainingInterrupted
from collapsekit.monitoring import MonitorResult
from collapsekit.outputs import os_error_in, write_failure
from collapsekit.progress import Message, ProgressCallback, emit
from collapsekit.runs.checkpoint import (
    build_checkpoint,
    remove_stale_temp_files,
    restore_checkpoint,
    save_checkpoint,
)
from collapsekit.runs.rundir import hold_run_dir, update_latest
from collapsekit.serialization import append_line, write_json
from collapsekit.train.builders import (
    TrainData,
    build_data,
    build_model,
    build_optimizer,
    build_precision,
    cosine_schedule,
    fit_queue,
)
from collapsekit.train.callbacks import (
    Callback,
    Checkpointing,
    MetricsLog,
    ProgressEvents,
    StopOnSignal,
    TensorBoardCallback,
    tensorboard_dir,
)
from collapsekit.train.config import TrainConfig, config_to_dict, save_config
from collapsekit.train.distributed import (
    DistContext,
    barrier,
    cleanup_distributed,
    setup_distributed,
)
from collapsekit.train.interrupts import StopSignals, before_first_step
from collapsekit.train.monitor import (
    encoder_monitor,
    evaluation_images,
    evaluation_set,
    monitor_set,
    write_final_spectrum,
)
from collapsekit.train.records import MetricsRecord, SpaceRecord, StepResult
from collapsekit.train.resume import ResumePlan
from collapsekit.train.run_dir import open_run
from collapsekit.train.split import loading_options
from collapsekit.train.tensorboard import TensorBoardLog, require_tensorboard

__all__ = ["TrainResult", "FinalSpectra", "TrainingSession", "train", "cosine_schedule"]

# Data "epoch" of the batches that prefill the queues: an order and augmentations no training
# epoch uses.
PREFILL_EPOCH = 1_000_000


@dataclass(frozen=True)
class FinalSpectra:
    """The diagnostics of the trained encoder at the end of the schedule.

    Attributes:
        where: the set and normalisation, e.g. "2048 evaluation-phantom slices, rows
            L2-normalised" (``collapsekit spectrum RUN``'s default set) or the monitor slices.
        backbone, projector: the two spaces' numbers.
        as_spectrum: measured on ``collapsekit spectrum RUN``'s default set (``final_samples``
            equal to its default), so both report this headline number.
    """

    where: str
    backbone: SpaceRecord
    projector: SpaceRecord
    as_spectrum: bool = False

    def to_dict(self) -> dict[str, Any]:
        spaces = {"backbone": self.backbone, "projector": self.projector}
        out: dict[str, Any] = {"where": self.where, "as_spectrum": self.as_spectrum}
        for name, space in spaces.items():
            out.update({f"{name}/{k}": v for k, v in space.__dict__.items()})
        return out


@dataclass
class TrainResult:
    """What a finished (or stopped) training session leaves behind.

    Attributes:
        history: the ``metrics.jsonl`` rows.
        final: the final spectra (``None`` unless finished in this session).
        health: the verdict of the last row (``None`` without rows).
    """

    run_dir: Path
    step: int
    total_steps: int
    epoch: int
    losses: list[float] = field(default_factory=list)
    history: list[MetricsRecord] = field(default_factory=list)
    finished: bool = False
    final: FinalSpectra | None = None
    health: HealthVerdict | None = None
    #: resumed at its last step: nothing was trained or written this session
    already_finished: bool = False

    def summary(self) -> dict[str, Any]:
        """``summary.json``: the run's state, health verdict, last row and final spectra."""
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "finished": self.finished,
            "health": self.health.to_dict() if self.health else None,
            "last": self.history[-1].to_dict() if self.history else None,
            "final": self.final.to_dict() if self.final else None,
        }


def _global_mean(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of a per-rank scalar over ranks (what one process on the whole batch would log)."""
    if not ctx.distributed:
        return x
    y = x.clone()
    torch.distributed.all_reduce(y)
    return y / ctx.world_size


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    tensorboard: bool | str | Path = False,
    given: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Pretrain a MoCo v2 model (method per ``cfg.model.method``) and write a run directory.

    The run directory receives ``checkpoint.pt`` (atomic; after every epoch and every
    ``checkpoint_every`` steps), ``config.toml``, ``metrics.jsonl`` (a row every ``log_every``
    steps: loss parts, lr, top-1s, images/s and the health verdict; the monitor's spaces on its own
    interval) and at the end ``spectrum.png``/``.json`` of the final encoder on ``collapsekit
    spectrum``'s default set, and ``summary.json``. Under ``torchrun`` every rank trains on its
    share of each batch and only rank 0 writes.

    Args:
        cfg: the configuration. When ``resume``: the saved config wins, and the settings given
            explicitly (``given``, else the fields of ``cfg`` that differ from ``TrainConfig()``)
            must agree with it (:func:`~collapsekit.train.resume.plan_resume`).
        out: run directory; default ``runs/<time>-<method>-<arch>``.
        resume: continue the run in ``out`` from its ``checkpoint.pt``. A run already at its last
            step is left as it is (``TrainResult.already_finished``) unless ``steps`` extends it.
        given: with ``resume``, the settings the user gave explicitly, flat (``"num_workers"``,
            ``"model.method"``): what the CLI passes.
        overwrite: allow writing into a directory that already holds another run.
        progress: progress callback (task ``train``; warnings as :class:`Message`).
        tensorboard: also log every metrics row (and the spectrum figure at each monitor step)
            to TensorBoard event files (rank 0): ``True`` in ``<run>/tb``, or in the directory
            given. Needs the ``tensorboard`` package.

    Raises:
        ConfigError: ``out`` holds another run (without ``resume``/``overwrite``), nothing to
            resume, or a setting given on resume that conflicts with the saved run.
        TrainingError: batch larger than the data, a non-finite loss or a failed write (the last good
            checkpoint is kept).
        TrainingInterrupted: SIGINT/SIGTERM; the step finished and a checkpoint was written.
        OutputError: ``out`` is a file, a non-empty directory without a run, or not writable, or
            another process is training in it (the run directory is locked).
    """
    if tensorboard is not False:
        require_tensorboard()  # before any work
    ctx = setup_distributed(cfg.device)
    try:
        with ExitStack() as resources:  # the run-directory lock, released however we leave
            return _train(
                cfg,
                out,
                resume=resume,
                overwrite=overwrite,
                progress=progress if ctx.is_main else None,
                ctx=ctx,
                tensorboard=tensorboard,
                given=given,
                resources=resources,
            )
    finally:
        if ctx.distributed:
            # Free the session's DistributedDataParallel model (kept alive by reference cycles:
            # the monitor's forward hooks) while its process group still exists. Left to the
            # interpreter's exit, gloo's threads can outlive it and abort the process
            # ("terminate called without an active exception", exit -6) after a good run.
            gc.collect()
        cleanup_distributed(ctx)


class TrainingSession:
    """One training session: the built parts, the counters a checkpoint stores, and the step.

    Callbacks read its attributes and call its public methods (:meth:`log`, :meth:`checkpoint`,
    :meth:`write`); ``should_stop`` ends the loop after the current step.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        data: TrainData,
        run_dir: Path,
        progress: ProgressCallback | None,
        ctx: DistContext,
    ) -> None:
        self.cfg, self.data, self.run_dir, self.progress, self.ctx = (
            cfg,
            data,
            run_dir,
            progress,
            ctx,
        )
        self.ckpt_path = run_dir / "checkpoint.pt"
        self.stop = StopSignals()
        self.should_stop = False
        self.saved_step: int | None = None  # the step of the last checkpoint written (or resumed)
        self.steps_per_epoch = data.steps_per_epoch
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.steps_per_epoch
        self.stop_at = min(self.total_steps, cfg.stop_after) if cfg.stop_after else self.total_steps
        self.local_batch = cfg.batch_size // ctx.world_size
        self.loss_chance = math.log(cfg.model.queue_size + 1)
        self.moco, self.model = build_model(cfg, ctx)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.moco, self.total_steps)
        self.precision = build_precision(cfg, ctx.device)
        self.width = self.moco.encoder_q.backbone.out_channels
        self.monitor = encoder_monitor(
            self.moco.encoder_q, data.monitor_images, warn_fraction=cfg.collapse_warn_fraction
        )
        self.step = 0
        self.losses: list[float] = []
        self.history: list[MetricsRecord] = []
        self.callbacks: list[Callback] = []

    def warnings(self) -> list[Message]:
        """Settings that undermine the run or its diagnostics (printed, not fatal)."""
        out = []
        k, n = self.cfg.model.queue_size, self.data.n_slices
        if 4 * k > n:  # only with fit_queue = false
            out.append(
                Message(
                    f"queue size K = {k} exceeds a quarter of the {n} training slices: each slice "
                    f"sits in the queue as its own negative about {k / n:.1f} times per pass; "
                    f"use K <= {max(n // 4, 1)} (config [model] queue_size)",
                    level="warning",
                )
            )
        m = len(self.data.monitor_images)
        if m < 2 * self.width:
            out.append(
                Message(
                    f"{m} monitor slices cap the monitor's rank at {m - 1} of {self.width} "
                    f"dimensions (reported as rank_bound); the final spectrum uses "
                    f"{self.cfg.final_samples or m} slices",
                    level="info",
                )
            )
        return out

    def on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors on the training device (two views made there by a device feed)."""
        return self.data.feed.prepare(batch)

    def autocast(self) -> torch.autocast:
        return self.precision.autocast(self.ctx.device)

    @torch.no_grad()
    def prefill(self) -> None:
        """Fill the queues with real keys of the first ``ceil(K / B)`` batches (fresh runs)."""
        n_batches = -(-self.cfg.model.queue_size // self.cfg.batch_size)
        done, epoch = 0, PREFILL_EPOCH  # orders and augmentations no training epoch uses
        while done < n_batches:
            self.data.views.epoch = epoch
            self.data.sampler.set_epoch(epoch)
            for batch in self.data.loader:
                with self.autocast():
                    self.moco.prefill_queues(self.on_device(batch))
                done += 1
                if done >= n_batches:
                    break
            epoch += 1

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.step, self.losses, history = restore_checkpoint(
            ckpt,
            model=self.moco,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.precision.scaler,
        )
        self.history = [MetricsRecord.from_dict(r) for r in history]
        self.saved_step = self.step

    def checkpoint(self, epoch: int) -> None:
        """Write ``checkpoint.pt`` (rank 0), and a periodic copy at the end of some epochs."""
        if not self.ctx.is_main:
            return
        state = build_checkpoint(
            config_to_dict(self.cfg),
            epoch=epoch,
            step=self.step,
            total_steps=self.total_steps,
            model=self.moco,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.precision.scaler,
            losses=self.losses,
            history=[r.to_dict() for r in self.history],
        )
        self.write(save_checkpoint, state, self.ckpt_path)
        self.saved_step = self.step
        keep = self.cfg.keep_every_epochs
        if keep and self.step % self.steps_per_epoch == 0 and (epoch + 1) % keep == 0:
            self.write(save_checkpoint, state, self.run_dir / f"checkpoint_epoch{epoch + 1:03d}.pt")

    def kept(self) -> str:
        """What a failure leaves on disk, for its message."""
        if self.saved_step is None:
            return "no checkpoint of this run was written yet"
        return f"the last good checkpoint {self.ckpt_path} (step {self.saved_step}) is kept"

    def write(self, write: Callable[[Any, Path], Any], obj: Any, path: Path) -> None:
        """``write(obj, path)``; a failed write (disk full, read-only) becomes a TrainingError
        saying what was kept. The writers are atomic, so no half-written file is left."""
        try:
            write(obj, path)
        except (OSError, RuntimeError) as e:
            err = os_error_in(e)
            if err is None:
                raise
            raise TrainingError(write_failure(path, err, self.kept())) from None

    def log(self, row: MetricsRecord, monitor: MonitorResult | None) -> None:
        """Append ``row`` to the history and ``metrics.jsonl``; tell the callbacks."""
        self.history.append(row)
        self.write(append_line, json.dumps(row.to_dict()), self.run_dir / "metrics.jsonl")
        for callback in self.callbacks:
            callback.on_log(self, row, monitor)

    def train_step(self, batch: dict[str, Any], epoch: int) -> StepResult:
        """One optimiser step; the loss parts and top-1s averaged over ranks."""
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
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.scaler.scale(loss).backward()
        self.precision.scaler.step(self.optimizer)
        self.precision.scaler.update()
        self.scheduler.step()
        self.step += 1

        def mean(x: torch.Tensor | float) -> float:
            t = x.detach() if isinstance(x, torch.Tensor) else torch.tensor(x)
            return float(_global_mean(t.to(self.ctx.device), self.ctx))

        result = StepResult(
            step=self.step,
            epoch=epoch,
            loss=mean(loss),
            loss_global=mean(output.loss_global),
            loss_local=None if output.loss_local is None else mean(output.loss_local),
            top1_queue=mean((output.logits.detach().argmax(dim=1) == 0).float().mean()),
            top1_in_batch=mean(float(output.batch_top1 or 0.0)),
            lr=lr,
        )
        self.losses.append(result.loss)
        return result

    def run_epoch(self) -> int:
        """Train from the current step to the end of its epoch (or a stop); the epoch index."""
        spe = self.steps_per_epoch
        epoch = self.step // spe
        self.data.sampler.set_epoch(epoch, self.step - epoch * spe)
        self.data.views.epoch = epoch
        for batch in self.data.loader:
            result = self.train_step(batch, epoch)
            for callback in self.callbacks:
                callback.on_train_batch_end(self, result)
            if self.should_stop or self.step >= self.stop_at:
                break
        for callback in self.callbacks:
            callback.on_train_epoch_end(self, epoch)
        return epoch

    def fit(self) -> int:
        """The loop: epochs until ``stop_at`` or a stop; the last epoch index."""
        epoch = self.step // self.steps_per_epoch
        self.model.train()
        for callback in self.callbacks:
            callback.on_train_start(self)
        try:
            with self.stop:
                while self.step < self.stop_at and not self.should_stop:
                    epoch = self.run_epoch()
        finally:
            for callback in self.callbacks:
                callback.on_train_end(self)
        return epoch


def _callbacks(
    session: TrainingSession, tensorboard: bool | str | Path, resumed: bool
) -> list[Callback]:
    cfg = session.cfg
    callbacks: list[Callback] = [
        MetricsLog(cfg.log_every, cfg.monitor_every),
        Checkpointing(cfg.checkpoint_every),
        StopOnSignal(),
        ProgressEvents(),
    ]
    if tensorboard is not False and session.ctx.is_main:
        # TensorBoard drops earlier events at or after purge_step: a resumed run replays the
        # steps after its checkpoint, an overwritten one starts again
        tb = TensorBoardLog(
            tensorboard_dir(session.run_dir, tensorboard),
            purge_step=session.step + 1 if resumed else 0,
        )
        callbacks.insert(1, TensorBoardCallback(tb))
    return callbacks


def _start_run_dir(session: TrainingSession, resources: ExitStack) -> None:
    """Rank 0: the run directory (locked: one process per run), its config and ``runs/latest``."""
    run_dir = session.run_dir
    resources.enter_context(hold_run_dir(run_dir))  # creates it
    remove_stale_temp_files(run_dir)  # a kill during a checkpoint write leaves one
    session.write(save_config, session.cfg, run_dir / "config.toml")
    note = update_latest(run_dir)
    if note is not None:
        emit(session.progress, Message(note, level="warning"))


def _already_finished(run_dir: Path, plan: ResumePlan, ckpt: dict[str, Any]) -> TrainResult:
    """A resumed run at its last step: nothing is trained, nothing is written."""
    history = [MetricsRecord.from_dict(r) for r in ckpt.get("history", [])]
    return TrainResult(
        run_dir=run_dir,
        step=plan.step,
        total_steps=plan.total_steps,
        epoch=int(ckpt.get("epoch", 0)) + 1,
        losses=list(ckpt.get("losses", [])),
        history=history,
        finished=True,
        health=history[-1].verdict() if history else None,
        already_finished=True,
    )


def _train(
    cfg: TrainConfig,
    out: str | Path | None,
    *,
    resume: bool,
    overwrite: bool,
    progress: ProgressCallback | None,
    ctx: DistContext,
    tensorboard: bool | str | Path = False,
    given: Mapping[str, Any] | None = None,
    resources: ExitStack,
) -> TrainResult:
    cfg, run_dir, ckpt, plan = open_run(
        cfg, out, resume=resume, overwrite=overwrite, ctx=ctx, given=given
    )
    if plan is not None:
        for line in plan.changes:
            emit(progress, Message(f"resume: {line}"))
        if plan.already_finished and ckpt is not None:
            return _already_finished(run_dir, plan, ckpt)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002 - seeds the legacy global RNG that user code may use
    with before_first_step(run_dir):  # Ctrl-C/SIGTERM while volumes load: one line, exit 130/143
        data = build_data(cfg, ctx, progress)
        cfg, queue_message = fit_queue(cfg, data.n_slices) if ckpt is None else (cfg, None)
        session = TrainingSession(cfg, data, run_dir, progress, ctx)
        if ckpt is not None:
            session.restore(ckpt)
        elif cfg.prefill_queue:
            session.prefill()
    for message in [queue_message, *session.warnings()]:
        if message is not None:
            emit(progress, message)
    if ctx.is_main:
        _start_run_dir(session, resources)
    barrier(ctx)
    session.callbacks = _callbacks(session, tensorboard, resumed=ckpt is not None)
    epoch = session.fit()
    if session.stop.agreed is not None:
        raise TrainingInterrupted(
            f"stopped at step {session.step}; resume with: collapsekit train --resume "
            f"--out {run_dir}",
            exit_code=128 + int(session.stop.agreed),
        )
    finished = session.step >= session.total_steps
    final = _final_spectra(session) if finished and ctx.is_main else None
    barrier(ctx)
    result = TrainResult(
        run_dir=run_dir,
        step=session.step,
        total_steps=session.total_steps,
        epoch=epoch + 1,
        losses=session.losses,
        history=session.history,
        finished=finished,
        final=final,
        health=session.history[-1].verdict() if session.history else None,
    )
    if ctx.is_main:
        session.write(write_json, result.summary(), run_dir / "summary.json")
    return result


def _final_spectra(session: TrainingSession) -> FinalSpectra:
    """Measure the trained encoder on ``collapsekit spectrum``'s default set (or, with
    ``final_samples = 0``, the monitor slices) and write the spectrum files."""
    cfg = session.cfg
    if cfg.final_samples:
        images = evaluation_images(
            cfg.final_samples,
            cfg.image_size,
            options=loading_options(cfg, session.ctx),
            progress=session.progress,
        )
        where = evaluation_set(len(images))
    else:
        images = session.data.monitor_images
        where = monitor_set(len(images))
    result = encoder_monitor(session.moco.encoder_q, images).measure(session.step)
    session.write(
        lambda r, d: write_final_spectrum(r, d, cfg.model.method, cfg.model.arch, where),
        result,
        session.run_dir,
    )
    return FinalSpectra(
        where,
        SpaceRecord.of(result["backbone"]),
        SpaceRecord.of(result["projector"]),
        as_spectrum=cfg.final_samples == DIAGNOSTICS_SAMPLES,
    )
