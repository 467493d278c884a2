"""The voxel grid a phantom case is drawn on, its shapes, and the scanner that turns it into CT.

Private to the phantom generator (not part of the public API).

:class:`Canvas` holds the HU and label arrays with the world coordinates (mm) of the voxel centres
and draws shapes into them; :func:`scan` applies what a CT scanner adds (system blur, organ texture,
correlated noise) and rounds to int16 HU. Shapes are evaluated only inside their bounding box (the
phantom is mostly small organs), with per-slice parameters broadcast along the last axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
from scipy import ndimage

#: In-plane field of view of a phantom slice (mm); the pixel spacing is ``FIELD_OF_VIEW_MM / size``.
FIELD_OF_VIEW_MM = 400.0
#: Cranio-caudal extent of a phantom volume (mm); the slice spacing is ``Z_EXTENT_MM / slices``.
Z_EXTENT_MM = 150.0

#: A shape on the canvas: its bounding-box index and the boolean mask inside it, or ``None`` if empty.
Region: TypeAlias = tuple[tuple[slice, slice, slice], np.ndarray] | None


def profile(t: np.ndarray, t0: float, t1: float, power: float = 0.5) -> np.ndarray:
    """Smooth extent along z: ``(1 - ((t - tc) / h)^2)^power`` inside ``[t0, t1]``, 0 outside."""
    tc, h = 0.5 * (t0 + t1), 0.5 * (t1 - t0)
    return np.clip(1.0 - ((t - tc) / h) ** 2, 0.0, 1.0) ** power


class Canvas:
    """HU and label arrays plus world coordinates (mm) of the voxel centres."""

    def __init__(self, size: int, slices: int) -> None:
        self.spacing = (FIELD_OF_VIEW_MM / size, FIELD_OF_VIEW_MM / size, Z_EXTENT_MM / slices)
        self.x = ((np.arange(size) - (size - 1) / 2) * self.spacing[0]).astype(np.float32)
        self.y = ((np.arange(size) - (size - 1) / 2) * self.spacing[1]).astype(np.float32)
        self.t = ((np.arange(slices) + 0.5) / slices).astype(np.float32)  # 0 inferior .. 1 superior
        self.hu = np.full((size, size, slices), -1000.0, dtype=np.float32)
        self.label = np.zeros((size, size, slices), dtype=np.uint8)

    def affine(self) -> np.ndarray:
        """RAS affine ``(4, 4)``: ``diag(spacing, 1)`` with the volume centred on the origin."""
        size, slices = self.x.size, self.t.size
        affine = np.diag([self.spacing[0], self.spacing[1], self.spacing[2], 1.0])
        affine[:3, 3] = [
            -(size - 1) / 2 * self.spacing[0],
            -(size - 1) / 2 * self.spacing[1],
            -(slices - 1) / 2 * self.spacing[2],
        ]
        return affine

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
    ) -> Region:
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

    def tube(self, points: np.ndarray, radius: np.ndarray) -> Region:
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
        region: Region,
        hu: float,
        label: int = 0,
        within: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Set ``hu`` and ``label`` where ``region`` is true (and ``within``, a full-size mask).

        Returns the painted voxels as a full-size mask, or ``None`` when ``region`` is empty.
        """
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


def scan(cv: Canvas, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What the scanner adds to the drawn HU: partial-volume blur, organ texture, correlated noise.

    Args:
        cv: the drawn canvas (its HU is left unchanged).
        body: full-size boolean mask of the body; texture is added only there.
        rng: the case's generator (draws the texture, the noise and its 10-18 HU level).

    Returns:
        int16 ``(H, W, Z)`` HU, rounded and clipped to [-1024, 3071].
    """
    px = cv.spacing[0]
    blur = max(0.35, 0.6 * 1.0 / px)  # about 0.6 mm of system blur, at least a third of a pixel
    hu = ndimage.gaussian_filter(cv.hu, sigma=(blur, blur, 0.0), mode="nearest")
    texture = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape).astype(np.float32), sigma=(6 / px, 6 / px, 1.0)
    )
    texture *= 4.0 / max(float(texture.std()), 1e-6)
    hu += np.where(body, texture, 0.0)
    # Filtered back-projection noise is spatially correlated: smooth white noise over ~a pixel.
    noise = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape).astype(np.float32), sigma=(0.8, 0.8, 0.0)
    )
    noise *= rng.uniform(10, 18) / max(float(noise.std()), 1e-6)
    hu += noise
    return np.rint(np.clip(hu, -1024, 3071)).astype(np.int16)
