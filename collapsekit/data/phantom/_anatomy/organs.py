"""Solid and hollow abdominal organs with their BTCV labels.

Liver (6), spleen (1), stomach (7), gallbladder (4), pancreas (11), kidneys (2 right, 3 left),
adrenals (12 right, 13 left) and oesophagus (5). Positions are in the reference cavity of
:class:`~collapsekit.data.phantom._anatomy.body.Body` (x towards the patient's right, y anterior).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collapsekit.data.phantom._anatomy.body import Body
from collapsekit.data.phantom._anatomy.shape import ShapeSampler
from collapsekit.data.phantom._canvas import Canvas, profile

__all__ = [
    "Pancreas",
    "paint_adrenals",
    "paint_gallbladder",
    "paint_kidneys",
    "paint_liver",
    "paint_oesophagus",
    "paint_pancreas",
    "paint_spleen",
    "paint_stomach",
]


@dataclass(frozen=True)
class Pancreas:
    """Centreline ``(P, Z, 2)`` (mm) from head to tail and the height ``(P,)`` of each point."""

    centreline: np.ndarray
    heights: np.ndarray


def paint_liver(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Liver (6): conforms to the right abdominal wall; the left lobe crosses the midline high up."""
    U = shape.uniform
    lp = shape.extent(0.22, 1.45, 0.35)
    lx, ly = body.place(shape, 58, 2)
    s = body.scale(shape)
    liver_h = shape.harmonics(0.05)
    liver_hu = U(55, 68)
    cv.paint(
        cv.ellipse(lx, ly, 92 * s * lp, 78 * s * lp, U(-0.2, 0.2), liver_h),
        liver_hu,
        6,
        within=body.cavity,
    )
    llx, lly = body.place(shape, -12, 46)
    llp = shape.extent(0.66, 1.4, 0.5)
    cv.paint(
        cv.ellipse(llx, lly, 52 * s * llp, 24 * s * llp, U(-0.3, 0.0), shape.harmonics(0.06)),
        liver_hu,
        6,
        within=body.cavity,
    )


def paint_spleen(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Spleen (1): a crescent against the left posterolateral wall."""
    U = shape.uniform
    sx_, sy_ = body.place(shape, -95, -30)
    sp = shape.extent(0.42, 1.0)
    s = body.scale(shape)
    cv.paint(
        cv.ellipse(
            sx_, sy_, 58 * s * sp, 26 * s * sp, -0.85 + U(-0.15, 0.15), shape.harmonics(0.08)
        ),
        U(45, 55),
        1,
        within=body.cavity,
    )


def paint_stomach(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Stomach (7) with rugal wall, fluid and an anterior air pocket; the fundus lies posterior."""
    U, t = shape.uniform, shape.t
    stp = shape.extent(0.45, 1.15, 0.45)
    gx, gy = body.place(shape, -45, 28)
    gy = gy - 28 * body.ky * np.clip(t - 0.6, 0, None)
    s = body.scale(shape)
    g_ax, g_ay, g_th = 46 * s * stp, 36 * s * stp, U(0.2, 0.7)
    g_h = shape.harmonics(0.08)
    stomach = cv.paint(cv.ellipse(gx, gy, g_ax, g_ay, g_th, g_h), U(40, 55), 7, within=body.cavity)
    if stomach is None:
        return
    inner = cv.ellipse(gx, gy, g_ax - 4, g_ay - 4, g_th, g_h)
    inner_m = cv.paint(inner, U(5, 25), 7, within=stomach)
    if inner_m is None:
        return
    level = gy + g_ay * U(-0.1, 0.5)  # air-fluid level: air rises anteriorly in a supine patient
    air = inner_m & (cv.y[None, :, None] > level[None, None, :])
    cv.hu[air] = U(-1000, -960)


def paint_gallbladder(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Gallbladder (4): bile under the liver, anterior-inferior."""
    U = shape.uniform
    bx4, by4 = body.place(shape, 55, 38)
    s = body.scale(shape, 0.8, 1.2)
    gbp = shape.extent(0.2, 0.58)
    cv.paint(
        cv.ellipse(bx4, by4, 14 * s * gbp, 21 * s * gbp, U(0.6, 1.1), shape.harmonics(0.05)),
        U(0, 20),
        4,
        within=body.cavity,
    )


def paint_pancreas(cv: Canvas, shape: ShapeSampler, body: Body) -> Pancreas:
    """Pancreas (11): head right of the midline, body over the aorta, tail towards the splenic hilum.

    A tube of 64 discs along a reference centreline; each disc spans its own height range, so the
    gland climbs from head to tail. Returns the centreline, which the splenic vein follows.
    """
    rng, U, t = shape.rng, shape.uniform, shape.t
    ref = np.array(
        [[26, 18], [14, 26], [0, 28], [-18, 24], [-36, 16], [-54, 6], [-70, -6], [-82, -18]],
        np.float32,
    )
    n_fine = 64
    fine = np.stack(
        [
            np.interp(np.linspace(0, len(ref) - 1, n_fine), np.arange(len(ref)), ref[:, d])
            for d in (0, 1)
        ],
        1,
    )
    shift = np.array([rng.normal(0, 5), rng.normal(0, 5)], np.float32)
    w_ = shape.wobble(3.0)
    pts = np.empty((n_fine, t.size, 2), np.float32)
    pts[..., 0] = body.bx + (fine[:, None, 0] + shift[0]) * body.kx[None, :] + w_[None, :]
    pts[..., 1] = body.by + (fine[:, None, 1] + shift[1]) * body.ky[None, :] + w_[None, :]
    t_c = np.linspace(0.4, 0.58, n_fine) + U(-0.05, 0.05)
    pr = U(8, 11) * body.ks
    rad = np.stack(
        [
            pr * (0.75 + 0.25 * np.cos(np.pi * i / n_fine)) * profile(t, tc - 0.11, tc + 0.11, 0.5)
            for i, tc in enumerate(t_c)
        ]
    )
    cv.paint(cv.tube(pts, rad), U(85, 105), 11, within=body.cavity)
    return Pancreas(pts, t_c)


def paint_kidneys(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Kidneys (2 right, 3 left) with renal sinus fat at the hilum; the right one sits lower."""
    U = shape.uniform
    kid_hu = U(150, 185)
    for side, lab, (t0, t1) in ((1, 2, (-0.1, 0.55)), (-1, 3, (-0.05, 0.62))):
        kx0, ky0 = body.place(shape, side * 62, -40, jitter=4)
        kp = shape.extent(t0, t1)
        s = body.scale(shape, 0.9, 1.1)
        th = side * U(0.6, 0.9)  # long axis runs postero-medial -> antero-lateral
        kh = shape.harmonics(0.05)
        cv.paint(cv.ellipse(kx0, ky0, 28 * s * kp, 20 * s * kp, th, kh), kid_hu, lab)
        sinus_p = shape.extent(t0 + 0.12 * (t1 - t0), t1 - 0.12 * (t1 - t0))
        hx = kx0 - side * 13 * s * np.cos(th - side * 1.4)
        hy = ky0 + 13 * s * np.abs(np.sin(th - side * 1.4))
        cv.paint(cv.ellipse(hx, hy, 13 * s * sinus_p, 7 * s * sinus_p, th), U(-70, -30), 0)


def paint_adrenals(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Adrenals (12 right, 13 left): thin limbs above the kidneys."""
    U = shape.uniform
    for side, lab, (t0, t1) in ((1, 12, (0.52, 0.75)), (-1, 13, (0.56, 0.8))):
        ax0, ay0 = body.place(shape, side * 32, -20, jitter=3)
        ap = shape.extent(t0, t1)
        cv.paint(cv.ellipse(ax0, ay0, 13 * ap, 3.2 * ap, side * U(1.0, 1.4)), U(30, 50), lab)


def paint_oesophagus(cv: Canvas, shape: ShapeSampler, body: Body) -> None:
    """Oesophagus (5) near the hiatus, moving left-anterior towards the stomach, with luminal air."""
    U, t = shape.uniform, shape.t
    ex, ey = body.place(shape, -10, -12, jitter=2)
    ep = shape.extent(0.8, 1.6)
    up = np.clip(t - 0.8, 0, None)
    ex, ey = ex - 40 * up * body.kx, ey + 30 * up * body.ky
    cv.paint(cv.ellipse(ex, ey, 8 * ep, 6.5 * ep), U(35, 50), 5)
    cv.paint(cv.ellipse(ex, ey, 2.0 * ep, 1.5 * ep), -900.0, 5)
