"""Random shape parameters of one case, drawn from the case's generator in a fixed order.

Every organ is an ellipse whose centre, axes, rotation and angular harmonics vary smoothly with
height ``t`` (0 inferior .. 1 superior), so neighbouring slices look alike. The draws happen in the
order the anatomy is painted; changing that order changes every later organ of the case.
"""

from __future__ import annotations

import numpy as np

from collapsekit.data.phantom._canvas import profile

__all__ = ["Harmonics", "ShapeSampler"]

#: Angular shape modes ``(k, amplitude, phase)`` of :meth:`~collapsekit.data.phantom._canvas.Canvas.ellipse`.
Harmonics = list[tuple[int, float, float]]


class ShapeSampler:
    """Draws shape parameters of one case from ``rng`` over the slice heights ``t`` ``(Z,)``."""

    def __init__(self, rng: np.random.Generator, t: np.ndarray) -> None:
        self.rng = rng
        self.t = t

    def uniform(self, low: float, high: float) -> float:
        """One uniform draw in ``[low, high)``."""
        return self.rng.uniform(low, high)

    def harmonics(self, amp: float = 0.06) -> Harmonics:
        """Angular shape modes 2..4 with amplitude ``amp / (k - 1)`` and a random phase."""
        U = self.rng.uniform
        return [(k, U(-amp, amp) / (k - 1), U(0, 2 * np.pi)) for k in (2, 3, 4)] if amp > 0 else []

    def wobble(self, amp: float) -> np.ndarray:
        """A slow sinusoidal drift ``(Z,)`` of amplitude ``amp`` mm (0.4-1.2 periods over the volume)."""
        U = self.rng.uniform
        return (amp * np.sin(2 * np.pi * (U(0.4, 1.2) * self.t + U(0, 1)))).astype(np.float32)

    def extent(self, t0: float, t1: float, power: float = 0.5) -> np.ndarray:
        """Size profile ``(Z,)`` of an organ spanning about ``[t0, t1]`` (shifted ±0.05, scaled ±10%)."""
        U = self.rng.uniform
        dt, sc = U(-0.05, 0.05), U(0.9, 1.1)
        tc, h = 0.5 * (t0 + t1) + dt, 0.5 * (t1 - t0) * sc
        return profile(self.t, tc - h, tc + h, power)
