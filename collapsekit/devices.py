"""Device choice shared by every command: ``auto`` picks CUDA when present, else the CPU."""

from __future__ import annotations

import torch

from collapsekit.errors import ConfigError
from collapsekit.options import look_up_option

__all__ = ["DEVICES", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"`` for ``device`` in :data:`DEVICES`.

    Raises:
        ConfigError: unknown device, or ``cuda`` asked for on a machine without a CUDA device.
    """
    device = look_up_option(device, DEVICES, "device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available")
    return device
