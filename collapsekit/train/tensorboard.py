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
from collapsekit.glossary import canonical_key

__all__ = ["TensorBoardLog", "tensorboard_tag", "require_tensorboard"]

INSTALL_HINT = "pip install 'collapsekit[tensorboard]'"

# Row fields that are not plotted: the x-axis itself and the window length.
_NOT_PLOTTED = ("step", "steps")


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
    """The TensorBoard tag of a ``metrics.jsonl`` key: a layer-qualified key as it is
    (``backbone/effective_rank_lambda``, ``projector/mean_cosine``), ``train/<key>`` for the
    training scalars (``train/loss``, ``train/lr``, ``train/top1_in_batch`` …). Keys of earlier
    versions are mapped to the glossary's names first."""
    key = canonical_key(field)
    return key if "/" in key else f"train/{key}"


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
        """One scalar per numeric field of a metrics row (``MetricsRecord.to_dict()``), at
        ``record["step"]``; text fields (the health verdict) are not scalars."""
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
