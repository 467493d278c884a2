"""Bowel: small-bowel loops and the ascending and descending colon, fluid- or air-filled."""

from __future__ import annotations

import numpy as np

from collapsekit.data.phantom._anatomy.body import Body
from collapsekit.data.phantom._anatomy.shape import ShapeSampler
from collapsekit.data.phantom._canvas import Canvas, profile

__all__ = ["paint_bowel"]


def paint_bowel(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """14-21 small-bowel loops in the lower, anterior abdomen (a third air-filled), then the colon."""
    rng, U, t = shape.rng, shape.uniform, shape.t
    for _ in range(int(rng.integers(14, 22))):
        t0 = U(-0.35, 0.5)
        prof = profile(t, t0, t0 + U(0.2, 0.5), 0.4)
        gx, gy = body.place(shape, U(-90, 90), U(-15, 62), jitter=0.0)
        r = U(9, 17) * body.ks * prof
        airy = rng.random() < 0.35
        cv.paint(
            cv.ellipse(gx, gy, r, r * U(0.7, 1.0), U(0, np.pi), shape.harmonics(0.08)),
            U(35, 60),
            within=body.cavity,
        )
        cv.paint(
            cv.ellipse(gx, gy, r - 2.5, r * 0.8 - 2.5),
            U(-950, -850) if airy else U(10, 30),
            within=body.cavity,
        )
    for side, t1 in ((1, 0.5), (-1, 0.62)):  # ascending (right) and descending (left) colon
        cx, cy = body.place(shape, side * 100, U(-10, 15))
        r = U(14, 20) * body.ks * shape.extent(-0.6, t1, 0.3)
        cv.paint(
            cv.ellipse(cx, cy, r, r * 0.9, 0.0, shape.harmonics(0.08)), 45.0, within=body.cavity
        )
        cv.paint(
            cv.ellipse(cx, cy, r - 3, r * 0.9 - 3, 0.0, shape.harmonics(0.1)),
            U(-980, -900),
            within=body.cavity,
        )
