"""The vertebral column and the ribs.

The vertebra is cortical shell around cancellous bone with intervertebral discs every 33-38 mm,
the spinal canal, pedicles and transverse and spinous processes on the upper part of each level.
Ribs run obliquely, so their cross-sections drift round the wall with height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collapsekit.data.phantom._anatomy.body import Body
from collapsekit.data.phantom._anatomy.shape import ShapeSampler
from collapsekit.data.phantom._canvas import Z_EXTENT_MM, Canvas, profile

__all__ = ["Spine", "paint_ribs", "paint_vertebra", "place_spine"]


@dataclass(frozen=True)
class Spine:
    """Centre ``(vx, vy)`` (mm) and half-width ``vr`` (mm) of the vertebral body."""

    vx: float
    vy: np.ndarray
    vr: float


def place_spine(shape: ShapeSampler, body: Body) -> Spine:
    """Anchor the vertebral body 40 reference-mm posterior of the body centre."""
    rng = shape.rng
    vx, vy = body.bx + rng.normal(0, 2), body.by - 40.0 * body.ky + rng.normal(0, 2)
    vr = shape.uniform(19, 23)  # vertebral body half-width
    return Spine(vx, vy, vr)


def paint_vertebra(cv: Canvas, shape: ShapeSampler, spine: Spine) -> None:
    """Cortex + cancellous bone, discs, canal, pedicles, transverse and spinous processes."""
    U, t = shape.uniform, shape.t
    vx, vy, vr = spine.vx, spine.vy, spine.vr
    zmm = t * Z_EXTENT_MM
    period = U(33, 38)
    phase = U(0, period)
    disc = ((zmm + phase) % period) < U(7, 9)
    bone = ~disc
    vb_ay = vr * U(0.8, 0.9)
    cv.paint(
        cv.ellipse(vx, vy, np.where(bone, vr, 0), np.where(bone, vb_ay, 0), 0.0, (), 2.3),
        U(650, 850),
    )
    cv.paint(
        cv.ellipse(
            vx, vy, np.where(bone, vr - 2.5, 0), np.where(bone, vb_ay - 2.5, 0), 0.0, (), 2.3
        ),
        U(200, 300),
    )
    cv.paint(
        cv.ellipse(vx, vy, np.where(disc, vr, 0), np.where(disc, vb_ay, 0), 0.0, (), 2.3),
        U(80, 100),
    )
    cy_canal = vy - vb_ay - 10
    cv.paint(cv.ellipse(vx, cy_canal, np.where(bone, 15, 0), np.where(bone, 13, 0)), U(450, 600))
    cv.paint(cv.ellipse(vx, cy_canal, 8.5, 8.0), U(10, 30))
    upper = bone & (((zmm + phase) % period) > 0.45 * period)
    for side in (-1, 1):
        cv.paint(
            cv.ellipse(
                vx + side * 24,
                cy_canal + 2,
                np.where(upper, 16, 0),
                np.where(upper, 4.5, 0),
                side * 0.25,
            ),
            U(450, 600),
        )
    cv.paint(
        cv.ellipse(vx, cy_canal - 22, np.where(upper, 4.5, 0), np.where(upper, 13, 0)), U(450, 600)
    )


def paint_ribs(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Seven ribs a side in the muscle wall, from posterior towards anterior, above the lowest quarter."""
    U, t = shape.uniform, shape.t
    bx, by = body.bx, body.by
    rib_r = np.where(t > 0.25, 1.0, 0.0) * profile(t, 0.1, 2.0, 0.3)
    wall_a, wall_b = body.ac + body.muscle * 0.5, body.bc + body.muscle * 0.5
    for side in (-1, 1):
        for k in range(7):
            ang = np.deg2rad(-70 + 22 * k + U(-4, 4)) + 1.6 * (
                t - 0.5
            )  # from posterior towards anterior
            if np.rad2deg(ang.min()) > 55:
                continue
            ang = np.where(np.rad2deg(ang) < 60, ang, np.nan)
            rx = bx + side * wall_a * np.cos(ang)
            ry = by + wall_b * np.sin(ang)
            on = np.isfinite(rx) & (rib_r > 0)
            rx, ry = np.where(on, rx, bx), np.where(on, ry, by)
            ra = np.where(on, 6.0, 0.0)
            cv.paint(
                cv.ellipse(rx, ry, ra, ra * 0.6, side * (np.pi / 2 - np.where(on, ang, 0))),
                U(500, 750),
            )
