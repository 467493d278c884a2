"""PyTorch Lightning callback around :class:`~collapsekit.monitoring.CollapseMonitor`.

Needs the ``lightning`` package (``pip install 'collapsekit[lightning]'``)::

    monitor = CollapseMonitor(model, held_out, layers={"backbone": "encoder", "projector": "head"},
                              every=50)
    trainer = lightning.Trainer(callbacks=[CollapseMonitorCallback(monitor)], logger=...)
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without lightning
    raise ImportError(
        "collapsekit.monitoring.lightning needs Lightning: pip install 'collapsekit[lightning]'"
    ) from exc

from collapsekit.monitoring.monitor import CollapseMonitor, MonitorResult

__all__ = ["CollapseMonitorCallback"]


class CollapseMonitorCallback(Callback):
    """Run a :class:`CollapseMonitor` after every ``monitor.every``-th optimiser step.

    At the end of a training batch whose ``trainer.global_step`` (optimiser steps taken) is a
    multiple of ``monitor.every``, rank 0 measures the held-out set and

    * writes ``{prefix}{space}/{metric}`` (see :meth:`MonitorResult.scalars`) to every logger of
      the trainer at that ``global_step`` (directly, so the values are not dropped by
      ``log_every_n_steps``);
    * logs the same values with ``pl_module.log_dict(..., logger=False)``, so
      ``trainer.callback_metrics`` holds them (for ``EarlyStopping``/``ModelCheckpoint`` on
      e.g. ``collapse/backbone/effective_rank_lambda``), and on the progress bar if asked.

    Threshold crossings raise :class:`~collapsekit.monitoring.CollapseWarning` as the monitor is
    configured to. The results stay in :attr:`CollapseMonitor.history`.

    Args:
        monitor: the monitor (its module is usually the LightningModule or a part of it).
        prefix: prepended to every logged name.
        prog_bar: also show the values on the progress bar.
    """

    def __init__(
        self, monitor: CollapseMonitor, *, prefix: str = "collapse/", prog_bar: bool = False
    ) -> None:
        self.monitor = monitor
        self.prefix = prefix
        self.prog_bar = prog_bar
        self._last_step: int | None = None

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        # with gradient accumulation several batches end on the same optimiser step
        if step == self._last_step or not self.monitor.due(step):
            return
        self._last_step = step
        if not trainer.is_global_zero:
            return
        result: MonitorResult = self.monitor.measure(step)
        scalars = result.scalars(self.prefix)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        pl_module.log_dict(
            scalars,
            on_step=True,
            on_epoch=False,
            logger=False,
            prog_bar=self.prog_bar,
            rank_zero_only=True,
        )
