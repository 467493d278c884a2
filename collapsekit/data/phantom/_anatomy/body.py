"""The body wall (skin, subcutaneous fat, muscle wall, visceral fat cavity) and the frame it sets.

Organ positions live in a reference cavity of semi-axes 123 x 78 mm; :class:`Body` scales them to
this case's cavity, so a larger patient has proportionally placed and sized organs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collapsekit.data.phantom._anatomy.shape import ShapeSampler
from collapsekit.data.phantom._canvas import Canvas

__all__ = ["Body", "paint_body_wall"]


@dataclass(frozen=True)
class Body:
    """The body of one case and the frame organs are placed in.

    Attributes:
        mask, cavity: full-size boolean masks of the body and of the visceral cavity.
        bx, by: body centre (mm).
        ac, bc: cavity semi-axes ``(Z,)`` (mm), lateral and antero-posterior.
        muscle: thickness of the muscle wall (mm).
        kx, ky: ``(Z,)`` scale from the 123 x 78 mm reference cavity; ``ks`` their mean geometric scale.
    """

    mask: np.ndarray
    cavity: np.ndarray
    bx: float
    by: float
    ac: np.ndarray
    bc: np.ndarray
    muscle: float
    kx: np.ndarray
    ky: np.ndarray
    ks: float

    def place(
        self, shape: ShapeSampler, px: float, py: float, jitter: float = 5.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Centre ``(Z,)`` x, y (mm) of an organ at reference ``(px, py)``, jittered and wobbling."""
        rng = shape.rng
        return (
            self.bx + (px + rng.normal(0, jitter)) * self.kx + shape.wobble(3.0),
            self.by + (py + rng.normal(0, jitter)) * self.ky + shape.wobble(3.0),
        )

    def scale(self, shape: ShapeSampler, lo: float = 0.88, hi: float = 1.12) -> float:
        """Size factor of an organ: uniform in ``[lo, hi)`` times the case's scale ``ks``."""
        return shape.uniform(lo, hi) * self.ks


def paint_body_wall(cv: Canvas, shape: ShapeSampler) -> Body:
    """Skin, subcutaneous fat, muscle wall and the visceral fat cavity; returns the case's frame."""
    U, t = shape.uniform, shape.t
    A, B = U(140, 172), U(100, 125)  # outer semi-axes (mm): lateral, antero-posterior
    bx, by = U(-8, 8), U(-6, 6)
    fat, muscle = U(10, 32), U(7, 12)
    A_t = A * (1 + 0.03 * np.sin(2 * np.pi * (t + U(0, 1))))
    B_t = B * (1 + 0.03 * np.sin(2 * np.pi * (t + U(0, 1))))
    body_h = shape.harmonics(0.03)
    p_body = U(2.1, 2.5)  # a slightly squared-off ellipse, like a supine abdomen
    body = cv.paint(cv.ellipse(bx, by, A_t, B_t, 0.0, body_h, p_body), 40.0)
    cv.paint(cv.ellipse(bx, by, A_t - 2, B_t - 2, 0.0, body_h, p_body), U(-110, -95))
    Am, Bm = A_t - 2 - fat, B_t - 2 - fat * U(0.7, 1.0)
    cv.paint(cv.ellipse(bx, by, Am, Bm, 0.0, body_h, p_body), U(45, 55))
    Ac, Bc = Am - muscle, Bm - muscle
    cavity = cv.paint(cv.ellipse(bx, by, Ac, Bc, 0.0, body_h, p_body), U(-95, -80))
    assert body is not None and cavity is not None
    kx, ky = Ac / 123.0, Bc / 78.0
    ks = float(np.sqrt(np.mean(kx) * np.mean(ky)))
    return Body(body, cavity, bx, by, Ac, Bc, muscle, kx, ky, ks)
