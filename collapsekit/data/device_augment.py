"""The two-view augmentation of a whole batch at once, on the training device.

:class:`DeviceTwoView` applies the same random transform as :class:`~collapsekit.data.augment.TwoViewTransform`
(it takes one and reads its settings, so every preset of that transform works here too) to a
``(B, 1, H, W)`` batch of source slices on whatever device the batch is on: the CPU loader then only
indexes slices (:class:`~collapsekit.data.slice_store.SliceStore`) and the GPU does the pixel work.

Per view and image, with the same distributions as the CPU transform:

- **crop box** as torchvision's ``RandomResizedCrop``: area fraction ~ U(scale), log aspect ratio
  ~ U(log ratio), the first of 10 tries that fits, else the largest centred crop with a clamped
  ratio; position uniform. Drawn for the whole batch at once (``(B, 10)`` tries, first fit wins).
- **resize**: one ``grid_sample`` (bilinear, ``align_corners=False``, border padding) over the batch
  with the grid of :func:`~collapsekit.data.augment.crop_grid` (computed in float64 and rounded to
  float32 exactly as there), so a recorded box maps the same source pixels on both paths;
- **flip** with ``flip_p``, folded into the grid (reversed columns = the view mirrored after the
  resize);
- **intensity jitter** with ``jitter_p``: brightness × U(0.6, 1.4), contrast about the image mean
  × U(0.6, 1.4), gamma U(0.7, 1.5), in a random order per image, then clipped to [0, 1];
- **Gaussian blur** with ``blur_p``, sigma ~ U(0.1, 2) px, radius ``ceil(3 sigma)``, reflect
  padding: one grouped separable convolution whose per-image kernels are zero beyond their radius
  (reflection does not depend on the pad width, so this equals blurring each image alone);
- **noise** ``N(0, noise_std²)`` with p = 0.5, clipped to [0, 1].

The random parameters are drawn by :meth:`DeviceTwoView.sample` into a :class:`ViewParams` and
applied by :meth:`DeviceTwoView.apply`, so the same parameters can be fed to the CPU transform
(the equivalence test does). Pixels agree with the CPU path to float rounding; the random streams
differ (one generator per batch instead of one seed per sample), so a device-augmented run is
reproducible on its device but does not replay a CPU-augmented one.

Batches may mix slice sizes: :class:`~collapsekit.data.slice_store.SliceStore` pads smaller slices
by edge replication to a common ``(H, W)`` and reports each slice's own size; boxes are drawn in that
size and, because the view's sample points never leave the slice's own extent, replication padding
gives the same bilinear samples as border padding of the unpadded slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from collapsekit.data.augment import TwoViewTransform

__all__ = ["DeviceTwoView", "ViewParams", "crop_grids", "sample_crop_boxes"]

# The ranges TwoViewTransform draws from (written there as 0.6 + 0.8 u, 0.7 + 0.8 u, 0.1 + 1.9 u;
# tests/data/test_device_augment.py checks both against each other).
BLUR_SIGMA = (0.1, 2.0)
JITTER_FACTOR = (0.6, 1.4)
GAMMA = (0.7, 1.5)
NOISE_P = 0.5


@dataclass(frozen=True)
class ViewParams:
    """Random parameters of one view of each of ``B`` images (tensors on the batch's device).

    Attributes:
        box: float32 ``(B, 4)`` crop boxes ``(y0, x0, y1, x1)`` in source pixels.
        flip: bool ``(B,)`` horizontal flip after the resize.
        jitter: bool ``(B,)`` whether the intensity jitter is applied.
        order: int64 ``(B, 3)`` order of the jitter operations (0 brightness, 1 contrast, 2 gamma).
        brightness, contrast: float32 ``(B,)`` factors in [0.6, 1.4].
        gamma: float32 ``(B,)`` exponent in [0.7, 1.5].
        blur: bool ``(B,)`` whether the view is blurred; ``sigma`` float32 ``(B,)`` in [0.1, 2] px.
        noise: bool ``(B,)`` whether noise is added; ``normal``: float32 ``(B, 1, S, S)`` standard
            normal draws (scaled by ``noise_std``), or ``None`` when ``noise_std`` is 0.
    """

    box: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    order: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    gamma: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    normal: torch.Tensor | None


def jitter_ranges(strength: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Brightness/contrast factor and gamma ranges at jitter strength ``s`` (as TwoViewTransform:
    ``1 ± 0.4 s`` and ``[1 − 0.3 s, 1 + 0.5 s]``; ``s = 1`` gives :data:`JITTER_FACTOR`, :data:`GAMMA`)."""
    s = float(strength)
    return (1.0 - 0.4 * s, 1.0 + 0.4 * s), (1.0 - 0.3 * s, 1.0 + 0.5 * s)


def _uniform(
    shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def sample_crop_boxes(
    height: torch.Tensor,
    width: torch.Tensor,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop boxes of a batch, distributed as :func:`~collapsekit.data.augment.sample_crop_box`.

    Args:
        height, width: ``(B,)`` source size of each image (any numeric dtype, on the target device).
        scale, ratio: the ranges of the area fraction and of the aspect ratio ``w/h``.
        generator: a generator on ``height``'s device (torch's default RNG if ``None``).

    Returns:
        float32 ``(B, 4)`` boxes ``(y0, x0, y1, x1)``: up to 10 tries per image, the first that fits
        wins; none fits -> the largest centred crop with the ratio clamped to ``ratio``.
    """
    device = height.device
    hs, ws = height.to(torch.float64), width.to(torch.float64)
    n = hs.shape[0]
    u = torch.rand((n, 10, 2), generator=generator, dtype=torch.float64, device=device)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    target = (hs * ws)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    r = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * u[..., 1])
    w_try, h_try = torch.sqrt(target * r), torch.sqrt(target / r)
    fits = (w_try > 0) & (w_try <= ws[:, None]) & (h_try > 0) & (h_try <= hs[:, None])
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)  # the first try that fits
    any_fit = fits.any(dim=1)
    w_fit, h_fit = w_try.gather(1, first)[:, 0], h_try.gather(1, first)[:, 0]
    in_ratio = ws / hs
    narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
    w_fb = torch.where(wide, hs * ratio[1], ws)
    h_fb = torch.where(narrow, ws / ratio[0], hs)
    w, h = torch.where(any_fit, w_fit, w_fb), torch.where(any_fit, h_fit, h_fb)
    v = torch.rand((n, 2), generator=generator, dtype=torch.float64, device=device)
    y0 = torch.where(any_fit, v[:, 0] * (hs - h), (hs - h) / 2)
    x0 = torch.where(any_fit, v[:, 1] * (ws - w), (ws - w) / 2)
    return torch.stack([y0, x0, y0 + h, x0 + w], dim=1).to(torch.float32)


def crop_grids(
    box: torch.Tensor,
    height: int,
    width: int,
    size: int,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """``grid_sample`` grids ``(B, S, S, 2)`` of a batch of crop boxes over ``height × width`` inputs.

    Row ``b`` is :func:`~collapsekit.data.augment.crop_grid` of ``box[b]`` (same float64 arithmetic,
    same rounding to float32), with its columns reversed where ``flip[b]``: output pixel ``(i, j)``
    samples source point ``(y0 + (i + 0.5)(y1 - y0)/S, x0 + (j' + 0.5)(x1 - x0)/S)`` with
    ``j' = S - 1 - j`` if flipped, else ``j``.
    """
    b64 = box.to(torch.float64)
    y0, x0, y1, x1 = b64.unbind(dim=1)
    t = (torch.arange(size, dtype=torch.float64, device=box.device) + 0.5) / size
    ys = y0[:, None] + t * (y1 - y0)[:, None]  # (B, S) source coordinates of the pixel centres
    xs = x0[:, None] + t * (x1 - x0)[:, None]
    gy = (2.0 * ys / height - 1.0).to(torch.float32)
    gx = (2.0 * xs / width - 1.0).to(torch.float32)
    if flip is not None:
        gx = torch.where(flip[:, None], gx.flip(1), gx)
    n = box.shape[0]
    return torch.stack(
        [gx[:, None, :].expand(n, size, size), gy[:, :, None].expand(n, size, size)], dim=-1
    )


def _jitter(v: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """Brightness, contrast and gamma in each image's own order, clipped; only where ``p.jitter``."""
    shape = (-1, 1, 1, 1)
    out = v
    for k in range(3):
        op = p.order[:, k].view(shape)
        bright = out * p.brightness.view(shape)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        contrast = (out - mean) * p.contrast.view(shape) + mean
        gamma = out.clamp(0, 1) ** p.gamma.view(shape)
        out = torch.where(op == 0, bright, torch.where(op == 1, contrast, gamma))
    return torch.where(p.jitter.view(shape), out.clamp(0, 1), v)


def _blur(v: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """Per-image Gaussian blur (radius ``ceil(3 sigma)``, reflect padding); only where ``p.blur``."""
    n, c, h, w = v.shape
    cap = min(h, w) - 1
    big = min(math.ceil(3 * BLUR_SIGMA[1]), cap)
    if big < 1:
        return v
    sigma = p.sigma.to(v.dtype)
    radius = torch.clamp(torch.ceil(3 * sigma), min=1, max=cap)  # as the CPU transform
    t = torch.arange(-big, big + 1, dtype=v.dtype, device=v.device)
    k = torch.exp(-0.5 * (t / sigma[:, None]) ** 2) * (t.abs() <= radius[:, None])
    k = k / k.sum(dim=1, keepdim=True)  # (B, 2R+1), zero beyond each image's radius
    k = k.repeat_interleave(c, dim=0)
    y = F.pad(v.reshape(1, n * c, h, w), (big, big, big, big), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return torch.where(p.blur.view(-1, 1, 1, 1), y.view(n, c, h, w), v)


class DeviceTwoView:
    """The two-view transform of a batch of slices, on the batch's device.

    Args:
        transform: the CPU transform whose settings (size, scale, ratio, flip/jitter/blur
            probabilities, noise, geometric_only) this one applies.

    Calling it on a ``(B, 1, H, W)`` batch returns the collated output of the CPU transform:
    ``{"view1", "view2": float32 (B, 1, S, S); "box1", "box2": float32 (B, 4); "flip1", "flip2":
    bool (B,)}``. Every tensor is created on the batch's device; autocast is off inside (the
    augmentation is float32 whatever the step runs in).
    """

    def __init__(self, transform: TwoViewTransform) -> None:
        self.transform = transform

    def __repr__(self) -> str:
        return f"DeviceTwoView({self.transform!r})"

    def sample(
        self,
        height: torch.Tensor,
        width: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> ViewParams:
        """Random parameters of one view of each image (``height``, ``width``: ``(B,)`` sizes)."""
        t, g, dev = self.transform, generator, height.device
        n = height.shape[0]
        box = sample_crop_boxes(height, width, t.scale, t.ratio, g)
        u = torch.rand((n, 5), generator=g, device=dev)
        order = torch.rand((n, 3), generator=g, device=dev).argsort(dim=1)
        normal = None
        if t.noise_std > 0 and not t.geometric_only:
            normal = torch.randn((n, 1, t.size, t.size), generator=g, device=dev)
        off = torch.zeros(n, dtype=torch.bool, device=dev)
        factor, gamma = jitter_ranges(getattr(t, "jitter_strength", 1.0))
        return ViewParams(
            box=box,
            flip=u[:, 0] < t.flip_p,
            jitter=off if t.geometric_only else u[:, 1] < t.jitter_p,
            order=order,
            brightness=_uniform((n,), *factor, g, dev),
            contrast=_uniform((n,), *factor, g, dev),
            gamma=_uniform((n,), *gamma, g, dev),
            blur=off if t.geometric_only else u[:, 2] < t.blur_p,
            sigma=BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, 3],
            noise=off if normal is None else u[:, 4] < NOISE_P,
            normal=normal,
        )

    def apply(self, images: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """One view ``(B, 1, S, S)`` float32 of each image ``(B, 1, H, W)`` under ``params``."""
        if images.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) slices, got shape {tuple(images.shape)}")
        t = self.transform
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            h, w = x.shape[-2:]
            grid = crop_grids(params.box, h, w, t.size, params.flip)
            v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            if t.geometric_only:
                return v.contiguous()
            v = _jitter(v, params)
            v = _blur(v, params)
            if params.normal is not None:
                noisy = (v + t.noise_std * params.normal).clamp(0, 1)
                v = torch.where(params.noise.view(-1, 1, 1, 1), noisy, v)
            return v.contiguous()

    def __call__(
        self,
        images: torch.Tensor,
        sizes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Two views of each slice.

        Args:
            images: ``(B, 1, H, W)`` source slices (any float dtype; padded by edge replication
                where ``sizes`` says a slice is smaller).
            sizes: int ``(B, 2)`` each slice's own ``(h, w)`` (default: all ``(H, W)``).
            generator: a generator on ``images``' device (torch's default RNG if ``None``).
        """
        if images.ndim != 4:
            raise ValueError(f"expected (B, C, H, W) slices, got shape {tuple(images.shape)}")
        n, _, h, w = images.shape
        if sizes is None:
            sizes = torch.tensor([h, w], device=images.device).expand(n, 2)
        sizes = sizes.to(images.device)
        out: dict[str, Any] = {}
        for k in (1, 2):
            p = self.sample(sizes[:, 0], sizes[:, 1], generator)
            out[f"view{k}"] = self.apply(images, p)
            out[f"box{k}"], out[f"flip{k}"] = p.box, p.flip
        return out
