"""TensorBoard logging of a training run: every ``metrics.jsonl`` field and the spectrum figure.

Optional: needs the ``tensorboard`` package (``pip install 'collapsekit[tensorboard]'``), imported
only when a run asks for it, through :class:`torch.utils.tensorboard.SummaryWriter`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from collapsekit.errors import ConfigError

__all__ = ["TensorBoardLog", "tensorboard_tag", "require_tensorboard"]

INSTALL_HINT = "pip install 'collapsekit[tensorboard]'"

# Record fields that are not plotted: the x-axis itself.
_NOT_PLOTTED = ("step",)
_TRAIN = ("epoch", "loss", "loss_global", "loss_local", "loss_chance", "top1", "batch_top1")


def require_tensorboard() -> None:
    """Raise :class:`ConfigError` (one line, with the install command) without tensorboard."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}"
        ) from None


def tensorboard_tag(field: str) -> str:
    """The TensorBoard tag of a ``metrics.jsonl`` field: ``train/`` for the loss, accuracy, lr
    and speed, ``projector/`` for ``proj_*`` and ``backbone/`` for the other monitor fields."""
    if field.startswith("proj_"):
        return f"projector/{field.removeprefix('proj_')}"
    if field in _TRAIN or field.startswith(("loss", "top1", "batch_top1", "lr", "images_per")):
        return f"train/{field}"
    return f"backbone/{field}"


class TensorBoardLog:
    """A ``SummaryWriter`` on ``log_dir`` that logs training records and spectrum figures.

    Args:
        log_dir: the event-file directory (``runs/<name>/tb``).
        purge_step: events at or after this step written earlier into ``log_dir`` are discarded
            by TensorBoard (``SummaryWriter(purge_step=...)``): the step after the checkpoint when
            resuming (the run replays the later steps), 0 for a fresh run.

    Raises:
        ConfigError: tensorboard is not installed.
    """

    def __init__(self, log_dir: str | Path, *, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def record(self, record: dict[str, Any]) -> None:
        """One scalar per numeric field of a metrics record, at ``record["step"]``."""
        step = int(record["step"])
        for field, value in record.items():
            if field in _NOT_PLOTTED or isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tensorboard_tag(field), float(value), step)

    def figure(self, tag: str, fig: Figure, step: int) -> None:
        """The figure as an image at ``step`` (closed afterwards)."""
        self.writer.add_figure(tag, fig, step, close=True)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
