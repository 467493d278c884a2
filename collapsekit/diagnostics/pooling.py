"""One rule for turning a model output into ``(B, D)`` rows, stated rather than guessed.

Every place collapsekit pools a model's output (the :class:`~collapsekit.monitoring.CollapseMonitor`
and embedding extraction) calls :func:`pool_features`, and reports the rule it applied:

* ``(B, D)`` — used as is;
* ``(B, C, H, W)`` (2-D conv maps) and ``(B, C, D, H, W)`` (3-D conv maps) — mean over the
  spatial positions, channels first (``(B, C)``);
* ``(B, N, D)`` (transformer tokens) — mean over the ``N`` tokens by default (``(B, D)``);
  ``pool="cls"`` takes the first token instead; a callable ``pool(t) -> (B, D)`` does anything else.

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

Pool = Literal["mean", "cls"] | Callable[[torch.Tensor], torch.Tensor]
POOL_CHOICES = ("mean", "cls")
"""Named pooling rules for ``(B, N, D)`` token outputs (a callable is the third choice)."""

_CHOICES_TEXT = (
    "(B, D) is used as is; (B, C, H, W) and (B, C, D, H, W) are averaged over space; (B, N, D) "
    "tokens take pool='mean' (default) or 'cls', or pass a callable pool(t) -> (B, D)"
)


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def pool_features(
    t: torch.Tensor, *, pool: Pool = "mean", name: str = "output"
) -> tuple[torch.Tensor, str]:
    """``(B, D)`` rows of a model output and the rule that produced them (see the module docstring).

    Args:
        t: the output, batch first.
        pool: the rule for ``(B, N, D)`` tokens: ``"mean"``, ``"cls"`` or a callable; a callable is
            also applied to any other shape (it must return ``(B, D)``).
        name: the output's name in messages (a layer or space).

    Returns:
        ``(rows, rule)``, e.g. ``(tensor (B, 64), "mean over tokens of (B, 16, 64)")``; ``rows`` is
        ``t`` itself for ``(B, D)`` input.

    Raises:
        InputError: not a tensor, an unsupported rank or ``pool``, or a callable whose result is
            not ``(B, D)``.
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
    if t.ndim == 3:
        if pool == "cls":
            return t[:, 0], f"cls token (index 0) of {shape}"
        return t.mean(dim=1), f"mean over tokens of {shape}"
    if t.ndim in (4, 5) and pool == "mean":
        return t.flatten(2).mean(dim=2), f"mean over space of {shape}"
    what = f"pool={pool!r} on " if t.ndim in (4, 5) else ""
    raise InputError(f"{name}: cannot pool {what}a {t.ndim}-D output {shape}; {_CHOICES_TEXT}")
