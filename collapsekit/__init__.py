"""collapsekit: measure and overcome dimensional collapse in contrastive SSL on CT."""

from __future__ import annotations

__version__ = "0.1.0"

from collapsekit.errors import CollapsekitError

__all__ = ["CollapsekitError", "__version__"]
