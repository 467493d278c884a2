"""Skeletal muscles: rectus abdominis in front, erector spinae and psoas beside the spine."""

from __future__ import annotations

from collapsekit.data.phantom._anatomy.body import Body
from collapsekit.data.phantom._anatomy.shape import ShapeSampler
from collapsekit.data.phantom._anatomy.skeleton import Spine
from collapsekit.data.phantom._canvas import Canvas, profile

__all__ = ["paint_back_muscles", "paint_rectus"]


def paint_rectus(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Rectus abdominis: paired anterior muscle bands."""
    U = shape.uniform
    for side in (-1, 1):
        cv.paint(
            cv.ellipse(
                body.bx + side * U(30, 40) * body.kx,
                body.by + body.bc + body.muscle * 0.3,
                U(28, 38),
                body.muscle * 1.1,
            ),
            50.0,
        )


def paint_back_muscles(cv: Canvas, shape: ShapeSampler, spine: Spine) -> None:
    """Erector spinae behind the spine, psoas beside it (growing towards the pelvis)."""
    U, t = shape.uniform, shape.t
    vx, vy, vr = spine.vx, spine.vy, spine.vr
    for side in (-1, 1):  # erector spinae
        cv.paint(
            cv.ellipse(
                vx + side * U(34, 40),
                vy - U(40, 46),
                U(26, 32),
                U(18, 24),
                side * U(-0.2, 0.1),
                shape.harmonics(0.05),
            ),
            U(45, 55),
        )
    psoas = profile(t, -0.6, 0.6, 0.7)
    for side in (-1, 1):
        cv.paint(
            cv.ellipse(
                vx + side * (vr + 8 + 8 * psoas),
                vy + 2,
                (8 + 9 * psoas) * U(0.9, 1.1),
                (8 + 8 * psoas) * U(0.9, 1.1),
                side * 0.5,
            ),
            U(45, 55),
        )
