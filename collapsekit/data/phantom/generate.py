"""A procedural abdominal CT phantom with BTCV labels, in memory or written in real on-disk layouts.

Every command of collapsekit runs on this phantom without a download. One case is an axial stack of
an upper-abdomen CT in Hounsfield units: an elliptical body with skin, subcutaneous fat and a muscle
wall around visceral fat; liver (patient's right), spleen, both kidneys with their sinus fat,
adrenals, stomach with an air pocket, gallbladder, pancreas, portal and splenic veins, aorta and
IVC anterior to the spine, oesophagus near the hiatus, a vertebral column with cortical bone,
intervertebral discs and posterior elements, paraspinal and psoas muscles, ribs and bowel loops. The
organs are smooth 3D shapes (ellipses whose centre, axes, rotation and angular harmonics vary
smoothly with height), so neighbouring slices look alike; each case varies body size, fat, organ
position, size and shape. Noise is spatially correlated Gaussian (10-18 HU), as in filtered
back-projection CT.

Geometry: the array is ``(H, W, Z)`` in RAS orientation -- index 0 increases towards the patient's
Right, index 1 towards Anterior, index 2 towards Superior -- and the affine is
``diag(400/size, 400/size, 150/slices)`` mm (a 400 mm field of view and 150 mm of abdomen, e.g.
3.125 mm in plane and 3.125 mm between slices for 128x128x48; 0.78 mm in plane at size 512), centred
on the origin. Shown in radiological convention (see :func:`collapsekit.data.volume.radiological_view`)
the liver is on the left of the image and the spine at the bottom.

HU values (portal-venous phase, typical of BTCV): air -1000, fat -100..-80, muscle 50, liver 60,
spleen 50, kidney 160, pancreas 90, aorta 170-230, IVC/portal vein 120-160, bile 10, cancellous bone
200-300, cortical bone 700-1000.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from collapsekit.data.labels import BTCV_LABELS, BTCV_TO_ABDOMENCT1K
from collapsekit.errors import ConfigError, DataError
from collapsekit.options import look_up_option
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit

if TYPE_CHECKING:
    from collapsekit.data.layouts import DatasetIndex

__all__ = [
    "PhantomConfig",
    "PHANTOM_LAYOUTS",
    "FIELD_OF_VIEW_MM",
    "Z_EXTENT_MM",
    "generate_phantom",
    "phantom_case_seed",
    "write_phantom_dataset",
]

#: In-plane field of view of a phantom slice (mm); the pixel spacing is ``FIELD_OF_VIEW_MM / size``.
FIELD_OF_VIEW_MM = 400.0
#: Cranio-caudal extent of a phantom volume (mm); the slice spacing is ``Z_EXTENT_MM / slices``.
Z_EXTENT_MM = 150.0
#: On-disk layouts :func:`write_phantom_dataset` can write.
PHANTOM_LAYOUTS = ("btcv", "abdomenct1k")


@dataclass(frozen=True)
class PhantomConfig:
    """The built-in phantom dataset: ``cases`` volumes, the last ``validation`` form the validation split.

    Args:
        cases: number of volumes (>= 1).
        size: in-plane size in pixels (>= 8); the field of view stays 400 mm.
        slices: number of axial slices (>= 1); the volume always spans 150 mm.
        seed: dataset seed; case ``i`` uses :func:`phantom_case_seed` ``(seed, i)``.
        validation: number of validation cases, ``0 <= validation < cases``; ``None`` (default)
            means :func:`default_validation_cases` — a third of the cases, at least 1, at most 4.
    """

    cases: int = 12
    size: int = 128
    slices: int = 48
    seed: int = 0
    validation: int | None = None

    def __post_init__(self) -> None:
        if self.validation is None:
            object.__setattr__(self, "validation", default_validation_cases(self.cases))
        if self.cases < 1:
            raise ConfigError(f"phantom cases must be >= 1, got {self.cases}")
        if self.size < 8:
            raise ConfigError(f"phantom size must be >= 8 pixels, got {self.size}")
        if self.slices < 1:
            raise ConfigError(f"phantom slices must be >= 1, got {self.slices}")
        if not 0 <= self.validation_cases < self.cases:
            raise ConfigError(
                f"phantom validation cases must be in [0, cases) = [0, {self.cases}), got {self.validation}"
            )
        if self.seed < 0:
            raise ConfigError(f"phantom seed must be >= 0, got {self.seed}")

    @property
    def validation_cases(self) -> int:
        """The number of validation cases (``validation`` once its default is resolved)."""
        return (
            self.validation if self.validation is not None else default_validation_cases(self.cases)
        )

    @property
    def training_cases(self) -> int:
        """``cases - validation_cases``: the first cases, which form the training split."""
        return self.cases - self.validation_cases


def default_validation_cases(cases: int) -> int:
    """Validation cases of a ``cases``-volume phantom: a third, at least 1 (when ``cases > 1``), at most 4."""
    return max(1, min(4, cases // 3)) if cases > 1 else 0


def phantom_case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` (0-based) of the phantom dataset with seed ``seed``: ``seed * 100_000 + index``."""
    return int(seed) * 100_000 + int(index)


# ---------------------------------------------------------------------------------------------
# Drawing primitives. Shapes are evaluated only inside their bounding box (the phantom is mostly
# small organs), with per-slice parameters broadcast along the last axis.


def _profile(t: np.ndarray, t0: float, t1: float, power: float = 0.5) -> np.ndarray:
    """Smooth extent along z: ``(1 - ((t - tc) / h)^2)^power`` inside ``[t0, t1]``, 0 outside."""
    tc, h = 0.5 * (t0 + t1), 0.5 * (t1 - t0)
    return np.clip(1.0 - ((t - tc) / h) ** 2, 0.0, 1.0) ** power


class _Canvas:
    """HU and label arrays plus world coordinates (mm) of the voxel centres."""

    def __init__(self, size: int, slices: int) -> None:
        self.spacing = (FIELD_OF_VIEW_MM / size, FIELD_OF_VIEW_MM / size, Z_EXTENT_MM / slices)
        self.x = ((np.arange(size) - (size - 1) / 2) * self.spacing[0]).astype(np.float32)
        self.y = ((np.arange(size) - (size - 1) / 2) * self.spacing[1]).astype(np.float32)
        self.t = ((np.arange(slices) + 0.5) / slices).astype(np.float32)  # 0 inferior .. 1 superior
        self.hu = np.full((size, size, slices), -1000.0, dtype=np.float32)
        self.label = np.zeros((size, size, slices), dtype=np.uint8)

    def _box(
        self, cx: np.ndarray, cy: np.ndarray, r: np.ndarray
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        active = np.nonzero(r > 0)[0]
        if active.size == 0:
            return None
        k0, k1 = int(active[0]), int(active[-1]) + 1
        ks = slice(k0, k1)
        xs = np.searchsorted(self.x, [np.min((cx - r)[ks]), np.max((cx + r)[ks])])
        ys = np.searchsorted(self.y, [np.min((cy - r)[ks]), np.max((cy + r)[ks])])
        i0, i1 = max(int(xs[0]) - 1, 0), min(int(xs[1]) + 1, self.x.size)
        j0, j1 = max(int(ys[0]) - 1, 0), min(int(ys[1]) + 1, self.y.size)
        if i0 >= i1 or j0 >= j1:
            return None
        return (slice(i0, i1), slice(j0, j1), ks), active

    def ellipse(
        self,
        cx: np.ndarray | float,
        cy: np.ndarray | float,
        ax: np.ndarray | float,
        ay: np.ndarray | float,
        theta: np.ndarray | float = 0.0,
        harmonics: Sequence[tuple[int, float, float]] = (),
        power: float = 2.0,
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Mask of ``(|u|/ax)^p + (|v|/ay)^p < r(phi)^p`` with ``r = 1 + sum a_k cos(k phi + p_k)``.

        ``u, v`` are coordinates rotated by ``theta``; every parameter may be per-slice ``(Z,)``.
        Returns the bounding-box index and the boolean mask inside it, or ``None`` if empty.
        """
        nz = self.t.size
        cx_, cy_, ax_, ay_, th_ = (
            np.broadcast_to(np.asarray(v, np.float32), (nz,)) for v in (cx, cy, ax, ay, theta)
        )
        bound = 1.0 + sum(abs(a) for _, a, _ in harmonics)
        r = np.where((ax_ > 0) & (ay_ > 0), np.maximum(ax_, ay_) * bound, 0.0)
        box = self._box(cx_, cy_, r)
        if box is None:
            return None
        (xs, ys, ks), _ = box
        dx = self.x[xs, None, None] - cx_[None, None, ks]
        dy = self.y[None, ys, None] - cy_[None, None, ks]
        c, s = np.cos(th_[ks]), np.sin(th_[ks])
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (dx * c + dy * s) / ax_[ks]
            v = (-dx * s + dy * c) / ay_[ks]
            if power == 2.0:
                rho = np.sqrt(u * u + v * v)
            else:
                rho = (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
            rad = np.ones_like(rho)
            if harmonics:
                phi = np.arctan2(v, u)
                for k, a, p in harmonics:
                    rad = rad + a * np.cos(k * phi + p)
            mask = rho < rad
        return box[0], np.nan_to_num(mask, nan=False).astype(bool)

    def tube(
        self, points: np.ndarray, radius: np.ndarray
    ) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
        """Union of discs: ``points`` ``(P, Z, 2)`` centres (mm), ``radius`` ``(P, Z)`` (0 = absent)."""
        r = np.max(radius, axis=0)
        cx = 0.5 * (points[..., 0].min(0) + points[..., 0].max(0))
        cy = 0.5 * (points[..., 1].min(0) + points[..., 1].max(0))
        half = 0.5 * np.maximum(np.ptp(points[..., 0], 0), np.ptp(points[..., 1], 0))
        box = self._box(cx, cy, np.where(r > 0, r + half, 0.0))
        if box is None:
            return None
        (xs, ys, ks), _ = box
        mask = np.zeros((xs.stop - xs.start, ys.stop - ys.start, ks.stop - ks.start), dtype=bool)
        for p in range(points.shape[0]):
            dx = self.x[xs, None, None] - points[p, ks, 0][None, None, :]
            dy = self.y[None, ys, None] - points[p, ks, 1][None, None, :]
            mask |= dx * dx + dy * dy < radius[p, ks][None, None, :] ** 2
        return box[0], mask

    def paint(
        self,
        region: tuple[tuple[slice, slice, slice], np.ndarray] | None,
        hu: float,
        label: int = 0,
        within: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Set ``hu`` and ``label`` where ``region`` is true (and ``within``, a full-size mask)."""
        if region is None:
            return None
        box, mask = region
        if within is not None:
            mask = mask & within[box]
        self.hu[box][mask] = hu
        self.label[box][mask] = label
        full = np.zeros(self.hu.shape, dtype=bool)
        full[box] = mask
        return full


# ---------------------------------------------------------------------------------------------


def generate_phantom(
    seed: int, size: int = 128, slices: int = 48
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one phantom abdominal CT case.

    Args:
        seed: case seed; the same seed gives the same case (numpy ``default_rng``).
        size: in-plane size ``H = W`` (>= 8); the field of view is 400 mm.
        slices: number of axial slices ``Z`` (>= 1) spanning 150 mm (inferior to superior).

    Returns:
        ``(image, label, affine)``: ``image`` int16 ``(H, W, Z)`` in HU (air -1000, clipped to
        [-1024, 3071]); ``label`` uint8 ``(H, W, Z)`` with BTCV ids (1 spleen, 2 right kidney,
        3 left kidney, 4 gallbladder, 5 oesophagus, 6 liver, 7 stomach, 8 aorta, 9 IVC, 10 portal and
        splenic veins, 11 pancreas, 12/13 right/left adrenal); ``affine`` float64 ``(4, 4)``, RAS,
        ``diag(400/size, 400/size, 150/slices, 1)`` with the volume centred on the origin.

    Raises:
        ConfigError: ``size < 8`` or ``slices < 1``.
    """
    if size < 8:
        raise ConfigError(f"phantom size must be >= 8 pixels, got {size}")
    if slices < 1:
        raise ConfigError(f"phantom slices must be >= 1, got {slices}")
    rng = np.random.default_rng(int(seed))
    cv = _Canvas(size, slices)
    t = cv.t
    U = rng.uniform

    def harm(amp: float = 0.06, drift: float = 1.0) -> list[tuple[int, float, float]]:
        # Angular shape modes 2..4 whose phase turns slowly with height: smooth 3D shape change.
        return [(k, U(-amp, amp) / (k - 1), U(0, 2 * np.pi)) for k in (2, 3, 4)] if amp > 0 else []

    def wobble(amp: float) -> np.ndarray:
        return (amp * np.sin(2 * np.pi * (U(0.4, 1.2) * t + U(0, 1)))).astype(np.float32)

    # --- body: skin, subcutaneous fat, muscle wall, visceral fat cavity ----------------------------
    A, B = U(140, 172), U(100, 125)  # outer semi-axes (mm): lateral, antero-posterior
    bx, by = U(-8, 8), U(-6, 6)
    fat, muscle = U(10, 32), U(7, 12)
    A_t = A * (1 + 0.03 * np.sin(2 * np.pi * (t + U(0, 1))))
    B_t = B * (1 + 0.03 * np.sin(2 * np.pi * (t + U(0, 1))))
    body_h = harm(0.03)
    p_body = U(2.1, 2.5)  # a slightly squared-off ellipse, like a supine abdomen
    body = cv.paint(cv.ellipse(bx, by, A_t, B_t, 0.0, body_h, p_body), 40.0)
    cv.paint(cv.ellipse(bx, by, A_t - 2, B_t - 2, 0.0, body_h, p_body), U(-110, -95))
    Am, Bm = A_t - 2 - fat, B_t - 2 - fat * U(0.7, 1.0)
    cv.paint(cv.ellipse(bx, by, Am, Bm, 0.0, body_h, p_body), U(45, 55))
    Ac, Bc = Am - muscle, Bm - muscle
    cavity = cv.paint(cv.ellipse(bx, by, Ac, Bc, 0.0, body_h, p_body), U(-95, -80))
    assert body is not None and cavity is not None

    # Organ positions live in a reference cavity of semi-axes 123 x 78 mm, scaled to this case.
    kx, ky = Ac / 123.0, Bc / 78.0
    ks = float(np.sqrt(np.mean(kx) * np.mean(ky)))

    def P(px: float, py: float, jitter: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        return (
            bx + (px + rng.normal(0, jitter)) * kx + wobble(3.0),
            by + (py + rng.normal(0, jitter)) * ky + wobble(3.0),
        )

    def zr(t0: float, t1: float, power: float = 0.5) -> np.ndarray:
        dt, sc = U(-0.05, 0.05), U(0.9, 1.1)
        tc, h = 0.5 * (t0 + t1) + dt, 0.5 * (t1 - t0) * sc
        return _profile(t, tc - h, tc + h, power)

    def sz(lo: float = 0.88, hi: float = 1.12) -> float:
        return U(lo, hi) * ks

    # Rectus abdominis: paired anterior muscle bands.
    for side in (-1, 1):
        cv.paint(
            cv.ellipse(bx + side * U(30, 40) * kx, by + Bc + muscle * 0.3, U(28, 38), muscle * 1.1),
            50.0,
        )

    # --- spine anchor and posterior muscles ---------------------------------------------------------
    vx, vy = bx + rng.normal(0, 2), by - 40.0 * ky + rng.normal(0, 2)
    vr = U(19, 23)  # vertebral body half-width
    for side in (-1, 1):  # erector spinae
        cv.paint(
            cv.ellipse(
                vx + side * U(34, 40),
                vy - U(40, 46),
                U(26, 32),
                U(18, 24),
                side * U(-0.2, 0.1),
                harm(0.05),
            ),
            U(45, 55),
        )
    psoas = _profile(t, -0.6, 0.6, 0.7)
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

    # --- bowel: small-bowel loops and colon in the lower, anterior abdomen -------------------------
    for _ in range(int(rng.integers(14, 22))):
        t0 = U(-0.35, 0.5)
        prof = _profile(t, t0, t0 + U(0.2, 0.5), 0.4)
        gx, gy = P(U(-90, 90), U(-15, 62), jitter=0.0)
        r = U(9, 17) * ks * prof
        airy = rng.random() < 0.35
        cv.paint(
            cv.ellipse(gx, gy, r, r * U(0.7, 1.0), U(0, np.pi), harm(0.08)),
            U(35, 60),
            within=cavity,
        )
        cv.paint(
            cv.ellipse(gx, gy, r - 2.5, r * 0.8 - 2.5),
            U(-950, -850) if airy else U(10, 30),
            within=cavity,
        )
    for side, t1 in ((1, 0.5), (-1, 0.62)):  # ascending (right) and descending (left) colon
        cx, cy = P(side * 100, U(-10, 15))
        r = U(14, 20) * ks * zr(-0.6, t1, 0.3)
        cv.paint(cv.ellipse(cx, cy, r, r * 0.9, 0.0, harm(0.08)), 45.0, within=cavity)
        cv.paint(
            cv.ellipse(cx, cy, r - 3, r * 0.9 - 3, 0.0, harm(0.1)), U(-980, -900), within=cavity
        )

    # --- liver (6): conforms to the right abdominal wall; left lobe crosses the midline high up ----
    lp = zr(0.22, 1.45, 0.35)
    lx, ly = P(58, 2)
    s = sz()
    liver_h = harm(0.05)
    liver_hu = U(55, 68)
    cv.paint(
        cv.ellipse(lx, ly, 92 * s * lp, 78 * s * lp, U(-0.2, 0.2), liver_h),
        liver_hu,
        6,
        within=cavity,
    )
    llx, lly = P(-12, 46)
    llp = zr(0.66, 1.4, 0.5)
    cv.paint(
        cv.ellipse(llx, lly, 52 * s * llp, 24 * s * llp, U(-0.3, 0.0), harm(0.06)),
        liver_hu,
        6,
        within=cavity,
    )

    # --- spleen (1): crescent against the left posterolateral wall ---------------------------------
    sx_, sy_ = P(-95, -30)
    sp = zr(0.42, 1.0)
    s = sz()
    cv.paint(
        cv.ellipse(sx_, sy_, 58 * s * sp, 26 * s * sp, -0.85 + U(-0.15, 0.15), harm(0.08)),
        U(45, 55),
        1,
        within=cavity,
    )

    # --- stomach (7) with rugal wall, fluid and an anterior air pocket -----------------------------
    stp = zr(0.45, 1.15, 0.45)
    gx, gy = P(-45, 28)
    gy = gy - 28 * ky * np.clip(t - 0.6, 0, None)  # fundus lies more posterior
    s = sz()
    g_ax, g_ay, g_th = 46 * s * stp, 36 * s * stp, U(0.2, 0.7)
    g_h = harm(0.08)
    stomach = cv.paint(cv.ellipse(gx, gy, g_ax, g_ay, g_th, g_h), U(40, 55), 7, within=cavity)
    if stomach is not None:
        inner = cv.ellipse(gx, gy, g_ax - 4, g_ay - 4, g_th, g_h)
        inner_m = cv.paint(inner, U(5, 25), 7, within=stomach)
        if inner_m is not None:
            level = gy + g_ay * U(
                -0.1, 0.5
            )  # air-fluid level: air rises anteriorly in a supine patient
            air = inner_m & (cv.y[None, :, None] > level[None, None, :])
            cv.hu[air] = U(-1000, -960)

    # --- gallbladder (4): bile under the liver, anterior-inferior -----------------------------------
    bx4, by4 = P(55, 38)
    s = sz(0.8, 1.2)
    gbp = zr(0.2, 0.58)
    cv.paint(
        cv.ellipse(bx4, by4, 14 * s * gbp, 21 * s * gbp, U(0.6, 1.1), harm(0.05)),
        U(0, 20),
        4,
        within=cavity,
    )

    # --- pancreas (11): head right of midline, body over the aorta, tail towards the splenic hilum --
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
    w_ = wobble(3.0)
    pts = np.empty((n_fine, t.size, 2), np.float32)
    pts[..., 0] = bx + (fine[:, None, 0] + shift[0]) * kx[None, :] + w_[None, :]
    pts[..., 1] = by + (fine[:, None, 1] + shift[1]) * ky[None, :] + w_[None, :]
    t_c = np.linspace(0.4, 0.58, n_fine) + U(-0.05, 0.05)
    pr = U(8, 11) * ks
    rad = np.stack(
        [
            pr * (0.75 + 0.25 * np.cos(np.pi * i / n_fine)) * _profile(t, tc - 0.11, tc + 0.11, 0.5)
            for i, tc in enumerate(t_c)
        ]
    )
    cv.paint(cv.tube(pts, rad), U(85, 105), 11, within=cavity)

    # --- portal (towards the liver hilum) and splenic vein (behind the pancreas) (10) ---------------
    vein_hu = U(130, 165)
    sv_pts = pts[n_fine // 3 :].copy()
    sv_pts[..., 1] -= 11 * ky[None, :]
    sv_rad = np.stack(
        [4.0 * ks * _profile(t, tc + 0.02, tc + 0.14, 0.5) for tc in t_c[n_fine // 3 :]]
    )
    cv.paint(cv.tube(sv_pts, sv_rad), vein_hu, 10)
    pvx, pvy = P(16, 14, jitter=3)
    pvp = zr(0.48, 0.8)
    cv.paint(
        cv.ellipse(pvx + 25 * (t - 0.5) * kx, pvy, 9 * pvp * ks, 7 * pvp * ks, 0.5), vein_hu, 10
    )

    # --- kidneys (2 right, 3 left) with renal sinus fat at the hilum --------------------------------
    kid_hu = U(150, 185)
    for side, lab, (t0, t1) in ((1, 2, (-0.1, 0.55)), (-1, 3, (-0.05, 0.62))):
        kx0, ky0 = P(side * 62, -40, jitter=4)
        kp = zr(t0, t1)
        s = sz(0.9, 1.1)
        th = side * U(0.6, 0.9)  # long axis runs postero-medial -> antero-lateral
        kh = harm(0.05)
        cv.paint(cv.ellipse(kx0, ky0, 28 * s * kp, 20 * s * kp, th, kh), kid_hu, lab)
        sinus_p = zr(t0 + 0.12 * (t1 - t0), t1 - 0.12 * (t1 - t0))
        hx = kx0 - side * 13 * s * np.cos(th - side * 1.4)
        hy = ky0 + 13 * s * np.abs(np.sin(th - side * 1.4))
        cv.paint(cv.ellipse(hx, hy, 13 * s * sinus_p, 7 * s * sinus_p, th), U(-70, -30), 0)

    # --- adrenals (12 right, 13 left): thin limbs above the kidneys ---------------------------------
    for side, lab, (t0, t1) in ((1, 12, (0.52, 0.75)), (-1, 13, (0.56, 0.8))):
        ax0, ay0 = P(side * 32, -20, jitter=3)
        ap = zr(t0, t1)
        cv.paint(cv.ellipse(ax0, ay0, 13 * ap, 3.2 * ap, side * U(1.0, 1.4)), U(30, 50), lab)

    # --- oesophagus (5): near the hiatus, moving left-anterior towards the stomach -------------------
    ex, ey = P(-10, -12, jitter=2)
    ep = zr(0.8, 1.6)
    up = np.clip(t - 0.8, 0, None)
    ex, ey = ex - 40 * up * kx, ey + 30 * up * ky
    cv.paint(cv.ellipse(ex, ey, 8 * ep, 6.5 * ep), U(35, 50), 5)
    cv.paint(cv.ellipse(ex, ey, 2.0 * ep, 1.5 * ep), -900.0, 5)

    # --- IVC (9) and aorta (8), anterior to the vertebral body ---------------------------------------
    ivx, ivy = vx + U(20, 28) * ks + wobble(2.0), vy + vr + U(8, 14) + wobble(2.0)
    cv.paint(cv.ellipse(ivx, ivy, U(12, 16), U(8, 11), U(-0.3, 0.3)), U(120, 160), 9)
    ar = U(9.5, 13)
    aox, aoy = vx - U(8, 14) + wobble(2.0), vy + vr + ar + U(1, 4)
    cv.paint(cv.ellipse(aox, aoy, ar, ar), U(170, 230), 8)

    # --- vertebra: cortex + cancellous bone, discs, canal, pedicles, processes ------------------------
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

    # --- ribs: oblique, so their cross-sections drift round the wall with height ---------------------
    rib_r = np.where(t > 0.25, 1.0, 0.0) * _profile(t, 0.1, 2.0, 0.3)
    wall_a, wall_b = Ac + muscle * 0.5, Bc + muscle * 0.5
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

    # --- blur (partial volume), organ texture and correlated noise -------------------------------------
    px = cv.spacing[0]
    blur = max(0.35, 0.6 * 1.0 / px)  # about 0.6 mm of system blur, at least a third of a pixel
    hu = ndimage.gaussian_filter(cv.hu, sigma=(blur, blur, 0.0), mode="nearest")
    texture = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape).astype(np.float32), sigma=(6 / px, 6 / px, 1.0)
    )
    texture *= 4.0 / max(float(texture.std()), 1e-6)
    hu += np.where(body, texture, 0.0)
    noise = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape).astype(np.float32), sigma=(0.8, 0.8, 0.0)
    )
    noise *= U(10, 18) / max(float(noise.std()), 1e-6)
    hu += noise
    image = np.rint(np.clip(hu, -1024, 3071)).astype(np.int16)
    affine = np.diag([cv.spacing[0], cv.spacing[1], cv.spacing[2], 1.0])
    affine[:3, 3] = [
        -(size - 1) / 2 * cv.spacing[0],
        -(size - 1) / 2 * cv.spacing[1],
        -(slices - 1) / 2 * cv.spacing[2],
    ]
    return image, cv.label, affine


# ---------------------------------------------------------------------------------------------


def _btcv_json(
    training: list[int], validation: list[int], size: int, slices: int, seed: int
) -> dict:
    def entry(i: int) -> dict[str, str]:
        return {"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"}

    return {
        "description": f"collapsekit phantom abdominal CT in the BTCV layout (size {size}, {slices} slices, seed {seed})",
        "labels": {"0": "background", **{str(k): v for k, v in BTCV_LABELS.items()}},
        "licence": "generated",
        "modality": {"0": "CT"},
        "name": "collapsekit-phantom",
        "numTest": 0,
        "numTraining": len(training) + len(validation),
        "tensorImageSize": "3D",
        "training": [entry(i) for i in training],
        "validation": [entry(i) for i in validation],
        "test": [],
    }


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)


def write_phantom_dataset(
    out_dir: str | Path,
    cases: int = 12,
    layout: str = "btcv",
    size: int = 128,
    slices: int = 48,
    seed: int = 0,
    validation: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> DatasetIndex:
    """Write phantom cases to ``out_dir`` in a real dataset layout and return its index.

    The cases are the in-memory phantom's (same seeds), so ``discover("btcv", out_dir)`` loads the
    same volumes as ``discover("phantom", phantom=PhantomConfig(cases, size, slices, seed, validation))``.

    Layouts:
        ``btcv``: ``imagesTr/img0001.nii.gz``, ``labelsTr/label0001.nii.gz`` and ``dataset_0.json``
        (the first ``cases - validation`` cases under ``training``, the rest under ``validation``).
        ``abdomenct1k``: ``AbdomenCT-1K-ImagePart1/Case_00001_0000.nii.gz`` and
        ``Mask/Case_00001.nii.gz`` with labels remapped to 1 liver, 2 kidney, 3 spleen, 4 pancreas
        (every case is training; ``validation`` is ignored).

    Images are int16 HU, labels uint8, the spacing is in the affine (qform and sform, code 1).

    Args:
        out_dir: target directory; created if missing.
        cases, size, slices, seed, validation: as in :class:`PhantomConfig`.
        layout: ``"btcv"`` or ``"abdomenct1k"``.
        overwrite: allow writing into a non-empty directory. Only this layout's files are
            replaced; nothing else in the directory is touched or deleted.
        progress: receives ``TaskStarted/TaskAdvanced/TaskFinished`` for task ``"phantom"``.

    Returns:
        The :class:`~collapsekit.data.layouts.DatasetIndex` of the written dataset.

    Raises:
        DataError: ``out_dir`` is a file, or is not empty and ``overwrite`` is false.
        ConfigError: unknown layout or invalid sizes.
    """
    from collapsekit.data.layouts import discover

    layout = look_up_option(layout, PHANTOM_LAYOUTS, "phantom layout")
    cfg = PhantomConfig(
        cases=cases,
        size=size,
        slices=slices,
        seed=seed,
        validation=validation if layout == "btcv" else 0,
    )
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(
            f"{out} is a file, not a directory; choose a directory for the phantom dataset"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"{out} is not empty; refusing to write the phantom there (pass --overwrite / overwrite=True, which replaces only the phantom's own files)"
        )
    if layout == "btcv":
        img_dir, lab_dir = out / "imagesTr", out / "labelsTr"
    else:
        img_dir, lab_dir = out / "AbdomenCT-1K-ImagePart1", out / "Mask"
    for d in (img_dir, lab_dir):
        if d.exists() and not d.is_dir():
            raise DataError(f"{d} exists and is not a directory; cannot write the phantom dataset")
        d.mkdir(parents=True, exist_ok=True)

    emit(
        progress, TaskStarted("phantom", total=cfg.cases, description=f"writing phantom ({layout})")
    )
    lut = np.zeros(256, dtype=np.uint8)
    for k, v in BTCV_TO_ABDOMENCT1K.items():
        lut[k] = v
    for i in range(cfg.cases):
        image, label, affine = generate_phantom(
            phantom_case_seed(cfg.seed, i), cfg.size, cfg.slices
        )
        n = i + 1
        if layout == "btcv":
            _save_nifti(image, affine, img_dir / f"img{n:04d}.nii.gz")
            _save_nifti(label, affine, lab_dir / f"label{n:04d}.nii.gz")
        else:
            _save_nifti(image, affine, img_dir / f"Case_{n:05d}_0000.nii.gz")
            _save_nifti(lut[label], affine, lab_dir / f"Case_{n:05d}.nii.gz")
        emit(progress, TaskAdvanced("phantom", 1, {"case": n}))
    if layout == "btcv":
        n_train = cfg.training_cases
        doc = _btcv_json(
            list(range(1, n_train + 1)),
            list(range(n_train + 1, cfg.cases + 1)),
            cfg.size,
            cfg.slices,
            cfg.seed,
        )
        tmp = out / ".dataset_0.json.tmp"
        tmp.write_text(json.dumps(doc, indent=4) + "\n")
        tmp.replace(out / "dataset_0.json")
    emit(progress, TaskFinished("phantom", {"cases": cfg.cases, "layout": layout}))
    return discover(layout, out)
