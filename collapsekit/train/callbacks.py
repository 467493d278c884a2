"""What happens around each training step: small callbacks with Lightning's hook names.

The loop (:mod:`collapsekit.train.loop`) only steps; everything else is a :class:`Callback`, called
in list order with the session and the step's :class:`~collapsekit.train.records.StepResult`:

* :class:`MetricsLog` — averages steps into a window and writes a ``metrics.jsonl`` row every
  ``log_every`` steps; on the monitor's own interval (``monitor_every``, else once per epoch, and at
  the end of the schedule) the row also carries the monitor's spaces and health verdict.
* :class:`TensorBoardCallback` — every row as scalars (tag = key), the spectrum figure at monitor rows.
* :class:`Checkpointing` — ``checkpoint.pt`` every ``checkpoint_every`` steps and at each epoch's end.
* :class:`StopOnSignal` — SIGINT/SIGTERM (agreed across ranks) stop the loop after the step.
* :class:`ProgressEvents` — progress events for the CLI's bar (the library never prints).

The hooks mirror :class:`~collapsekit.monitoring.lightning.CollapseMonitorCallback`'s
(``on_train_start``, ``on_train_batch_end``, ``on_train_epoch_end``, ``on_train_end``), plus
``on_log`` for every row written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from collapsekit.glossary import label
from collapsekit.monitoring import CollapseMonitor, MonitorResult
from collapsekit.progress import (
    Message,
    ProgressCallback,
    TaskAdvanced,
    TaskFinished,
    TaskStarted,
    emit,
)
from collapsekit.train.config import TrainConfig
from collapsekit.train.distributed import DistContext
from collapsekit.train.interrupts import StopSignals
from collapsekit.train.monitor import spectrum_figure
from collapsekit.train.records import MetricsRecord, StepResult
from collapsekit.train.tensorboard import TensorBoardLog

__all__ = [
    "Session",
    "Callback",
    "MetricsLog",
    "log_interval",
    "TensorBoardCallback",
    "Checkpointing",
    "StopOnSignal",
    "ProgressEvents",
]


class Session(Protocol):
    """What a callback may read and call of the training session
    (:class:`collapsekit.train.loop.TrainingSession`)."""

    cfg: TrainConfig
    ctx: DistContext
    run_dir: Path
    progress: ProgressCallback | None
    step: int
    total_steps: int
    steps_per_epoch: int
    local_batch: int
    loss_chance: float
    history: list[MetricsRecord]
    monitor: CollapseMonitor
    scheduler: Any
    stop: StopSignals
    should_stop: bool

    def log(self, row: MetricsRecord, monitor: MonitorResult | None) -> None: ...

    def checkpoint(self, epoch: int) -> None: ...


class Callback:
    """A no-op hook set; subclasses override the hooks they need."""

    def on_train_start(self, session: Session) -> None:
        """Before the first step of this session (after a resume: its first new step)."""

    def on_train_batch_end(self, session: Session, result: StepResult) -> None:
        """After each optimiser step."""

    def on_log(self, session: Session, row: MetricsRecord, monitor: MonitorResult | None) -> None:
        """After a ``metrics.jsonl`` row was written (``monitor``: the pass it carries, if any)."""

    def on_train_epoch_end(self, session: Session, epoch: int) -> None:
        """When an epoch ends, or the loop stops inside one (``epoch``: 0-based)."""

    def on_train_end(self, session: Session) -> None:
        """After the last step of this session (finished, stopped or interrupted)."""


def log_interval(log_every: int, total_steps: int) -> int:
    """Steps between rows: ``log_every``, or fewer in a run shorter than ``10 · log_every`` steps
    so that its loss curve still has 10 points (``max(total_steps // 10, 1)``)."""
    return max(min(log_every, total_steps // 10), 1)


class MetricsLog(Callback):
    """Window means of the step results, a row every :func:`log_interval` steps, the monitor every
    ``monitor_every`` steps (0: once per epoch) and at the end of the schedule (rank 0 writes).

    Args:
        log_every: steps per training row.
        monitor_every: steps between monitor passes (0: at each epoch's end).
    """

    def __init__(self, log_every: int, monitor_every: int) -> None:
        self.log_every, self.monitor_every = log_every, monitor_every
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._steps = 0
        self._t0 = time.perf_counter()

    def on_train_start(self, session: Session) -> None:
        self._reset()

    def on_train_batch_end(self, session: Session, result: StepResult) -> None:
        for key in ("loss", "loss_global", "loss_local", "top1_queue", "top1_in_batch"):
            self._sums[key] = self._sums.get(key, 0.0) + (getattr(result, key) or 0.0)
        self._steps += 1
        step, last = result.step, result.step >= session.total_steps
        monitor_due = last or step % (self.monitor_every or session.steps_per_epoch) == 0
        if not (monitor_due or step % log_interval(self.log_every, session.total_steps) == 0):
            return
        if session.ctx.is_main:
            row = self._row(session, result)
            monitor = session.monitor.measure(step) if monitor_due else None
            session.log(row.with_monitor(monitor) if monitor else row, monitor)
        self._reset()

    def _row(self, session: Session, result: StepResult) -> MetricsRecord:
        n, cfg = self._steps, session.cfg
        mean = {k: v / n for k, v in self._sums.items()}
        row = MetricsRecord(
            epoch=result.epoch + 1,
            step=result.step,
            steps=n,
            loss=mean["loss"],
            loss_global=mean["loss_global"],
            loss_local=mean["loss_local"] if cfg.model.uses_local else None,
            top1_queue=mean["top1_queue"],
            top1_in_batch=mean["top1_in_batch"],
            lr=float(session.scheduler.get_last_lr()[0]),
            loss_chance=session.loss_chance,
            top1_in_batch_chance=1.0 / session.local_batch,
            images_per_s=n * cfg.batch_size / max(time.perf_counter() - self._t0, 1e-9),
        )
        return row.judged()


class TensorBoardCallback(Callback):
    """Every ``metrics.jsonl`` row as TensorBoard scalars, the spectrum figure at monitor rows.

    Args:
        log: the writer (rank 0 only).
    """

    def __init__(self, log: TensorBoardLog) -> None:
        self.log = log

    def on_log(self, session: Session, row: MetricsRecord, monitor: MonitorResult | None) -> None:
        self.log.record(row.to_dict())
        if monitor is not None:
            cfg = session.cfg
            title = f"{session.run_dir.name} — step {row.step}"
            fig = spectrum_figure(monitor, cfg.model.method, cfg.model.arch, title)
            self.log.figure("spectrum", fig, row.step)
        self.log.flush()

    def on_train_end(self, session: Session) -> None:
        self.log.close()  # each row was flushed already: an error loses nothing


class Checkpointing(Callback):
    """``checkpoint.pt`` every ``every`` steps (0: never mid-epoch) and at each epoch's end."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_batch_end(self, session: Session, result: StepResult) -> None:
        step = result.step
        if self.every and step % self.every == 0 and step % session.steps_per_epoch:
            session.checkpoint(result.epoch)

    def on_train_epoch_end(self, session: Session, epoch: int) -> None:
        session.checkpoint(epoch)


class StopOnSignal(Callback):
    """SIGINT/SIGTERM, agreed across ranks after every step, set ``session.should_stop``."""

    def on_train_batch_end(self, session: Session, result: StepResult) -> None:
        if session.stop.poll(session.ctx) is not None:
            session.should_stop = True


class ProgressEvents(Callback):
    """The ``train`` task's progress events: one advance per step with its loss and lr."""

    def on_train_start(self, session: Session) -> None:
        total, method = session.total_steps, session.cfg.model.method
        emit(session.progress, TaskStarted("train", total=total, description=f"train {method}"))
        if session.step:
            emit(session.progress, TaskAdvanced("train", advance=session.step))
        self._t0, self._first = time.perf_counter(), session.step

    def on_train_batch_end(self, session: Session, result: StepResult) -> None:
        images = (result.step - self._first) * session.cfg.batch_size
        info: dict[str, float | int | str] = {
            "epoch": result.epoch + 1,
            "loss": result.loss,
            "lr": result.lr,
            "img/s": images / max(time.perf_counter() - self._t0, 1e-9),
        }
        last = session.history[-1] if session.history else None
        if last is not None and last.backbone is not None:
            info[label("backbone/effective_rank_lambda")] = last.backbone.effective_rank_lambda
        emit(session.progress, TaskAdvanced("train", info=info))

    def on_log(self, session: Session, row: MetricsRecord, monitor: MonitorResult | None) -> None:
        for alert in monitor.alerts if monitor else ():
            emit(session.progress, Message(alert, level="warning"))

    def on_train_end(self, session: Session) -> None:
        last = session.history[-1].to_dict() if session.history else {}
        emit(session.progress, TaskFinished("train", info=last))


def tensorboard_dir(run_dir: Path, tensorboard: bool | str | Path) -> Path:
    """``<run>/tb`` for ``True``, else the directory given."""
    return run_dir / "tb" if tensorboard is True else Path(str(tensorboard))
