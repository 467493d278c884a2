"""PyTorch Lightning callback around :class:`~collapsekit.monitoring.CollapseMonitor`.

Needs the ``lightning`` package (``pip install 'collapsekit[lightning]'``)::

    monitor = CollapseMonitor(model, held_out, layers={"backbone": "encoder", "projector": "head"},
                              every=50)
    trainer = lightning.Trainer(callbacks=[CollapseMonitorCallback(monitor)], logger=...)
"""

from __future__ import annotations

from dataclasses import replace
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
      e.g. ``collapse/backbone/effective_rank_lambda``), and on the progress bar if asked;
    * with ``log_spectrum_image=True``, draws every space's spectrum
      (:func:`~collapsekit.plotting.plot_spectrum`) and adds it as ``{prefix}spectrum`` to every
      logger whose ``experiment`` has ``add_figure`` (TensorBoard); other loggers get no image.

    Metric names are those of :mod:`collapsekit.glossary` (``{space}/{name}``).

    Threshold crossings raise :class:`~collapsekit.monitoring.CollapseWarning` as the monitor is
    configured to. The results stay in :attr:`CollapseMonitor.history`.

    Args:
        monitor: the monitor (its module is usually the LightningModule or a part of it).
        prefix: prepended to every logged name.
        prog_bar: also show the values on the progress bar.
        log_spectrum_image: also log the spectrum figure (TensorBoard ``add_figure``).
    """

    def __init__(
        self,
        monitor: CollapseMonitor,
        *,
        prefix: str = "collapse/",
        prog_bar: bool = False,
        log_spectrum_image: bool = False,
    ) -> None:
        self.monitor = monitor
        self.prefix = prefix
        self.prog_bar = prog_bar
        self.log_spectrum_image = log_spectrum_image
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
        if self.log_spectrum_image:
            self._log_spectrum_figure(trainer, result, step)

    def _log_spectrum_figure(self, trainer: Trainer, result: MonitorResult, step: int) -> None:
        experiments: list[Any] = [getattr(lg, "experiment", None) for lg in trainer.loggers]
        writers = [e for e in experiments if callable(getattr(e, "add_figure", None))]
        if not writers:
            return
        from collapsekit.plotting import plot_spectrum  # matplotlib only when asked

        spectra = [replace(m.spectrum, name=space) for space, m in result.spaces.items()]
        fig, _ = plot_spectrum(spectra, title=f"Covariance eigenvalue spectrum, step {step}")
        for i, writer in enumerate(writers):  # the last add_figure closes the figure
            writer.add_figure(
                f"{self.prefix}spectrum", fig, global_step=step, close=i == len(writers) - 1
            )
