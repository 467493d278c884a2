"""Vessels: portal and splenic veins (10), IVC (9) and aorta (8)."""

from __future__ import annotations

import numpy as np

from collapsekit.data.phantom._anatomy.body import Body
from collapsekit.data.phantom._anatomy.organs import Pancreas
from collapsekit.data.phantom._anatomy.shape import ShapeSampler
from collapsekit.data.phantom._anatomy.skeleton import Spine
from collapsekit.data.phantom._canvas import Canvas, profile

__all__ = ["paint_great_vessels", "paint_portal_veins"]


def paint_portal_veins(cv: Canvas, shape: ShapeSampler, body: Body, pancreas: Pancreas) -> None:
    """Splenic vein behind the pancreas body and tail, portal vein towards the liver hilum (10)."""
    U, t = shape.uniform, shape.t
    pts, t_c = pancreas.centreline, pancreas.heights
    n_fine = pts.shape[0]
    vein_hu = U(130, 165)
    sv_pts = pts[n_fine // 3 :].copy()
    sv_pts[..., 1] -= 11 * body.ky[None, :]
    sv_rad = np.stack(
        [4.0 * body.ks * profile(t, tc + 0.02, tc + 0.14, 0.5) for tc in t_c[n_fine // 3 :]]
    )
    cv.paint(cv.tube(sv_pts, sv_rad), vein_hu, 10)
    pvx, pvy = body.place(shape, 16, 14, jitter=3)
    pvp = shape.extent(0.48, 0.8)
    ks = body.ks
    cv.paint(
        cv.ellipse(pvx + 25 * (t - 0.5) * body.kx, pvy, 9 * pvp * ks, 7 * pvp * ks, 0.5),
        vein_hu,
        10,
    )


def paint_great_vessels(cv: Canvas, shape: ShapeSampler, body: Body, spine: Spine) -> None:
    """IVC (9) right-anterior and aorta (8) left-anterior of the vertebral body."""
    U = shape.uniform
    vx, vy, vr = spine.vx, spine.vy, spine.vr
    ivx = vx + U(20, 28) * body.ks + shape.wobble(2.0)
    ivy = vy + vr + U(8, 14) + shape.wobble(2.0)
    cv.paint(cv.ellipse(ivx, ivy, U(12, 16), U(8, 11), U(-0.3, 0.3)), U(120, 160), 9)
    ar = U(9.5, 13)
    aox, aoy = vx - U(8, 14) + shape.wobble(2.0), vy + vr + ar + U(1, 4)
    cv.paint(cv.ellipse(aox, aoy, ar, ar), U(170, 230), 8)
