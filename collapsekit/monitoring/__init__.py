"""Live collapse monitoring for any training loop: :class:`CollapseMonitor` and its warning.

The Lightning callback lives in :mod:`collapsekit.monitoring.lightning` (``pip install
'collapsekit[lightning]'``); nothing imported here needs Lightning or TensorBoard.
"""

from __future__ import annotations

from collapsekit.monitoring.monitor import (
    CollapseMonitor,
    CollapseWarning,
    MonitorResult,
    SpaceMetrics,
)

__all__ = ["CollapseMonitor", "CollapseWarning", "MonitorResult", "SpaceMetrics"]
