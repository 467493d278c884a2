"""Two-view augmentation for contrastive pretraining on 1-channel CT, with recorded crop geometry.

The MoCo v2 recipe (Chen et al. 2020, "Improved baselines with momentum contrastive learning")
adapted to CT: random resized crop (area scale 0.2-1, aspect ratio 3/4-4/3), horizontal flip,
intensity jitter (brightness/contrast/gamma instead of colour jitter, p=0.8), Gaussian blur
(sigma 0.1-2 px, p=0.5) and light Gaussian noise. Local feature learning needs to know where each
view came from, so every view reports its crop box and flip.

Geometry (exact, used by the local loss): a view of size ``S`` cut from box ``(y0, x0, y1, x1)``
(continuous source-pixel coordinates; pixel ``k`` covers ``[k, k+1)``) has its output pixel
``(i, j)`` centred on the source point

    y = y0 + (i + 0.5) * (y1 - y0) / S,    x = x0 + (j + 0.5) * (x1 - x0) / S,

sampled bilinearly (``grid_sample``, ``align_corners=False``, border padding). If ``flip`` is true
the view is then mirrored along its last axis, so view column ``j`` shows crop column ``S - 1 - j``.
For an integer box that shrinks by an integer factor this equals
``F.interpolate(source[..., y0:y1, x0:x1], size=S, mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from collapsekit.errors import ConfigError
from collapsekit.options import look_up_option

__all__ = ["AUGMENT_PRESETS", "TwoViewTransform", "augment_preset"]

#: Named parameter sets of :class:`TwoViewTransform` (``--augment``), measured on the phantom:
#:
#: * ``mocov2`` — MoCo v2's recipe adapted to CT: crops 0.2–1, intensity jitter at full strength
#:   (brightness and contrast ×0.6–1.4, gamma 0.7–1.5, p 0.8), blur p 0.5. Every run with this
#:   jitter collapsed completely (issue 10: 64 px, batch 32, runs of 100–200 steps, and the
#:   120-step default run of issue 19 at 128 px); whether longer runs recover was not measured.
#: * ``demo`` — crops 0.8–1, no jitter, no blur: the 64-px demo regime (healthy MoCo v2, loss
#:   0.46·ln(K+1) at 1,200 steps, 3 seeds).
#: * ``ct`` — crops 0.2–1 and mild intensity jitter (quarter strength: brightness/contrast ×0.9–1.1,
#:   gamma 0.925–1.125, p 0.8), no blur. Quarter-strength jitter was healthy at crop 0.8–1
#:   (issue 10, C5); at crop 0.2–1 see docs/results/fair-test.md (not yet measured).
#:
#: Every preset keeps the flip (p 0.5), aspect ratio 3/4–4/3 and noise (σ 0.02, p 0.5).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "mocov2": {"scale": (0.2, 1.0), "jitter_p": 0.8, "jitter_strength": 1.0, "blur_p": 0.5},
    "demo": {"scale": (0.8, 1.0), "jitter_p": 0.0, "jitter_strength": 1.0, "blur_p": 0.0},
    "ct": {"scale": (0.2, 1.0), "jitter_p": 0.8, "jitter_strength": 0.25, "blur_p": 0.0},
}


def augment_preset(name: str) -> dict[str, Any]:
    """The :class:`TwoViewTransform` keyword arguments of the preset ``name`` (a copy).

    Raises:
        ConfigError: an unknown name (with a "did you mean").
    """
    return dict(AUGMENT_PRESETS[look_up_option(name, AUGMENT_PRESETS, "augmentation preset")])


def crop_grid(
    box: torch.Tensor, height: int, width: int, size: int | tuple[int, int]
) -> torch.Tensor:
    """Normalised ``grid_sample`` grid ``(Sh, Sw, 2)`` (x, y in [-1, 1]) of the crop ``box``.

    Args:
        box: ``(4,)`` tensor ``(y0, x0, y1, x1)`` in source pixels.
        height, width: source size.
        size: output size ``S`` or ``(Sh, Sw)``.
    """
    sh, sw = (size, size) if isinstance(size, int) else size
    box = box.to(torch.float64)
    y0, x0, y1, x1 = box.unbind()
    iy = (torch.arange(sh, dtype=torch.float64, device=box.device) + 0.5) / sh
    ix = (torch.arange(sw, dtype=torch.float64, device=box.device) + 0.5) / sw
    ys = y0 + iy * (y1 - y0)  # source coordinates of the output pixel centres
    xs = x0 + ix * (x1 - x0)
    gy = 2.0 * ys / height - 1.0  # align_corners=False: pixel k's centre is at k + 0.5
    gx = 2.0 * xs / width - 1.0
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # (Sh, Sw, 2) as (x, y)
    return grid.to(torch.float32)


def resized_crop(
    image: torch.Tensor, box: torch.Tensor, size: int | tuple[int, int]
) -> torch.Tensor:
    """Crop ``box`` from ``image`` ``(C, H, W)`` and resize it to ``size`` (bilinear, see module doc).

    Returns:
        float32 ``(C, Sh, Sw)``.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
    _, h, w = image.shape
    grid = crop_grid(box.to(image.device), h, w, size)
    out = F.grid_sample(
        image[None].float(), grid[None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0]


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random crop box ``(y0, x0, y1, x1)`` (float32) as in torchvision's ``RandomResizedCrop``.

    Area fraction ~ U(scale), log aspect ratio ``w/h`` ~ U(log ratio); up to 10 tries to fit, then
    the largest centred crop with a clamped ratio. Coordinates are continuous (not rounded), so the
    box is exactly what the view shows. Uses torch's global RNG unless ``generator`` is given.
    """
    area = float(height * width)
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=generator, dtype=torch.float64)
        target = area * (scale[0] + (scale[1] - scale[0]) * float(u[0]))
        r = math.exp(log_r[0] + (log_r[1] - log_r[0]) * float(u[1]))
        w = math.sqrt(target * r)
        h = math.sqrt(target / r)
        if 0 < w <= width and 0 < h <= height:
            v = torch.rand(2, generator=generator, dtype=torch.float64)
            y0 = float(v[0]) * (height - h)
            x0 = float(v[1]) * (width - w)
            return torch.tensor([y0, x0, y0 + h, x0 + w], dtype=torch.float32)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        h, w = float(height), height * ratio[1]
    else:
        w, h = float(width), float(height)
    y0, x0 = (height - h) / 2, (width - w) / 2
    return torch.tensor([y0, x0, y0 + h, x0 + w], dtype=torch.float32)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)`` with reflect padding, radius ``ceil(3 sigma)``."""
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, (min(x.shape[-2:]) - 1))
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


class TwoViewTransform:
    """Two augmented views of one CT slice and the geometry that produced them.

    Args:
        size: output size ``S`` of each view.
        scale: range of the crop area as a fraction of the slice (MoCo v2: 0.2-1).
        ratio: range of the crop aspect ratio ``w/h``.
        flip_p: probability of a horizontal flip (applied after crop and resize).
        jitter_p: probability of intensity jitter: brightness x U(1 - 0.4 s, 1 + 0.4 s), contrast
            around the mean x U(1 - 0.4 s, 1 + 0.4 s), gamma U(1 - 0.3 s, 1 + 0.5 s), in random
            order, clipped to [0, 1], with ``s = jitter_strength``.
        jitter_strength: ``s``; 1 is MoCo v2's strength (×0.6–1.4, gamma 0.7–1.5), 0.25 the
            quarter strength of the ``ct`` preset.
        blur_p: probability of a Gaussian blur with sigma ~ U(0.1, 2.0) px.
        noise_std: standard deviation of the additive Gaussian noise (applied with p=0.5; 0 = off).
        geometric_only: only crop, resize and flip (no jitter, blur or noise), e.g. for tests.

    Calling it on an image ``(1, H, W)`` in [0, 1] returns ``{"view1", "view2": float32 (1, S, S);
    "box1", "box2": float32 (4,) (y0, x0, y1, x1) in source pixels; "flip1", "flip2": bool}``.
    Randomness comes from torch's global RNG, so DataLoader worker seeding makes it reproducible.
    """

    def __init__(
        self,
        size: int = 128,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        blur_p: float = 0.5,
        noise_std: float = 0.02,
        geometric_only: bool = False,
        jitter_strength: float = 1.0,
    ) -> None:
        if size < 1:
            raise ConfigError(f"view size must be >= 1, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"crop ratio must satisfy 0 < min <= max, got {ratio}")
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("blur_p", blur_p)):
            if not 0 <= p <= 1:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {p}")
        if noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {noise_std}")
        if not 0 <= jitter_strength <= 2.5:  # at 2.5 brightness and contrast reach factor 0
            raise ConfigError(f"jitter_strength must be in [0, 2.5], got {jitter_strength}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)
        self.jitter_p = float(jitter_p)
        self.blur_p = float(blur_p)
        self.noise_std = float(noise_std)
        self.geometric_only = bool(geometric_only)
        self.jitter_strength = float(jitter_strength)

    @classmethod
    def from_preset(cls, name: str, size: int = 128, **overrides: Any) -> TwoViewTransform:
        """The transform of the preset ``name`` (:data:`AUGMENT_PRESETS`); ``overrides`` win."""
        return cls(size=size, **{**augment_preset(name), **overrides})

    def __repr__(self) -> str:
        return (
            f"TwoViewTransform(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
            f"jitter_p={self.jitter_p}, jitter_strength={self.jitter_strength}, blur_p={self.blur_p}, noise_std={self.noise_std}, geometric_only={self.geometric_only})"
        )

    def _intensity(self, v: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < self.jitter_p:
            s = self.jitter_strength
            for op in torch.randperm(3).tolist():
                f = 1.0 - 0.4 * s + 0.8 * s * float(torch.rand(()))
                if op == 0:
                    v = v * f
                elif op == 1:
                    v = (v - v.mean()) * f + v.mean()
                else:
                    v = v.clamp(0, 1) ** (1.0 - 0.3 * s + 0.8 * s * float(torch.rand(())))
            v = v.clamp(0, 1)
        if torch.rand(()) < self.blur_p:
            v = _gaussian_blur(v, 0.1 + 1.9 * float(torch.rand(())))
        if self.noise_std > 0 and torch.rand(()) < 0.5:
            v = (v + self.noise_std * torch.randn_like(v)).clamp(0, 1)
        return v

    def view(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One view: ``(view (1, S, S), box (4,), flip ())``."""
        _, h, w = image.shape
        box = sample_crop_box(h, w, self.scale, self.ratio)
        v = resized_crop(image, box, self.size)
        flip = bool(torch.rand(()) < self.flip_p)
        if flip:
            v = v.flip(-1)
        if not self.geometric_only:
            v = self._intensity(v)
        return v.contiguous(), box, torch.tensor(flip)

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) slice, got shape {tuple(image.shape)}")
        image = image.float()
        v1, b1, f1 = self.view(image)
        v2, b2, f2 = self.view(image)
        return {"view1": v1, "view2": v2, "box1": b1, "box2": b2, "flip1": f1, "flip2": f2}
