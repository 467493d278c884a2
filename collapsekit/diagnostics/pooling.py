"""One rule for turning a model output into ``(B, D)`` rows, stated rather than guessed.

Every place collapsekit pools a model's output (the :class:`~collapsekit.monitoring.CollapseMonitor`
and embedding extraction) calls :func:`pool_features`, and reports the rule it applied:

* ``(B, D)`` — used as is;
* ``(B, C, H, W)`` (2-D conv maps) and ``(B, C, D, H, W)`` (3-D conv maps) — mean over the
  spatial positions, channels first (``(B, C)``);
* ``(B, N, D)`` (transformer tokens) — mean over the ``N`` tokens by default (``(B, D)``);
  ``pool="cls"`` takes the first token instead.

Shapes that read two ways are stated, never guessed: ``pool="channels_first"`` averages every axis
after the first two (a 1-D conv's ``(B, C, L)``, or a map the default refuses), and
``pool="channels_last"`` every axis between the first and the last (``(B, H, W, C)`` maps of
Swin/ConvNeXt-style models). The default refuses a 4-D or 5-D output whose last axis is wider than
a square grid before it (``(B, 7, 7, 768)``: channels last, not a 7-channel map). A callable
``pool(t) -> (B, D)`` does anything else.

Any other rank, a ``pool`` the shape has no meaning for (``"cls"`` on a feature map) or a callable
that does not return ``(B, D)`` is refused with one :class:`~collapsekit.errors.InputError` naming
the shape and the choices. (The earlier ``t.flatten(2).mean(2)`` averaged a ``(B, N, D)`` output over
its *feature* axis and silently measured an ``N``-dimensional space.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from collapsekit.errors import InputError

__all__ = ["POOL_CHOICES", "Pool", "pool_features"]

Pool = (
    Literal["mean", "cls", "channels_first", "channels_last"]
    | Callable[[torch.Tensor], torch.Tensor]
)
POOL_CHOICES = ("mean", "cls", "channels_first", "channels_last")
"""Named pooling rules (a callable is the other choice)."""

_CHOICES_TEXT = (
    "(B, D) is used as is; (B, C, H, W) and (B, C, D, H, W) are averaged over space; (B, N, D) "
    "tokens take pool='mean' (default) or 'cls'; pool='channels_first' or 'channels_last' says "
    "where the channels of a map are; or pass a callable pool(t) -> (B, D)"
)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _looks_channels_last(t: torch.Tensor) -> bool:
    """A 4-D/5-D output with a square grid just before a wider last axis: ``(B, 7, 7, 768)``."""
    *_, a, b, c = t.shape
    return a == b and c > a


def pool_features(
    t: torch.Tensor, *, pool: Pool = "mean", name: str = "output"
) -> tuple[torch.Tensor, str]:
    """``(B, D)`` rows of a model output and the rule that produced them (see the module docstring).

    Args:
        t: the output, batch first.
        pool: ``"mean"`` (default), ``"cls"``, ``"channels_first"``, ``"channels_last"`` or a
            callable (applied to any shape; it must return ``(B, D)``).
        name: the output's name in messages (a layer or space).

    Returns:
        ``(rows, rule)``, e.g. ``(tensor (B, 64), "mean over tokens of (B, 16, 64)")``; ``rows`` is
        ``t`` itself for ``(B, D)`` input.

    Raises:
        InputError: not a tensor, an unsupported rank or ``pool``, a shape the default cannot read
            one way, or a callable whose result is not ``(B, D)``.
    """
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name}: expected a tensor output, got {type(t).__name__}")
    shape = _shape(t)
    if callable(pool):
        out = pool(t)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != t.shape[0]:
            got = _shape(out) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"{name}: pool callable {getattr(pool, '__name__', 'pool')!r} must return "
                f"(B, D) = ({t.shape[0]}, D) rows, got {got} from {shape}"
            )
        return out, f"{getattr(pool, '__name__', 'callable')} of {shape}"
    if pool not in POOL_CHOICES:
        raise InputError(f"{name}: unknown pool {pool!r}; choices: {_CHOICES_TEXT}")
    if t.ndim == 2:
        return t, f"as is {shape}"
    if 3 <= t.ndim <= 5 and pool == "channels_first":
        return t.flatten(2).mean(dim=2), f"mean over axes 2.. (channels first) of {shape}"
    if 3 <= t.ndim <= 5 and pool == "channels_last":
        return t.flatten(1, -2).mean(dim=1), f"mean over axes 1..-2 (channels last) of {shape}"
    if t.ndim == 3:
        if pool == "cls":
            return t[:, 0], f"cls token (index 0) of {shape}"
        return t.mean(dim=1), f"mean over tokens of {shape}"
    if t.ndim in (4, 5) and pool == "mean":
        if _looks_channels_last(t):
            raise InputError(
                f"{name}: {shape} reads two ways: channels first (C={t.shape[1]}) or channels "
                f"last (C={t.shape[-1]}, as Swin/ConvNeXt-style models output); pass "
                "pool='channels_last' or pool='channels_first'"
            )
        return t.flatten(2).mean(dim=2), f"mean over space of {shape}"
    what = f"pool={pool!r} on " if t.ndim in (3, 4, 5) else ""
    raise InputError(f"{name}: cannot pool {what}a {t.ndim}-D output {shape}; {_CHOICES_TEXT}")
