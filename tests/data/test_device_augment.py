"""The batched device augmentation against the CPU two-view transform (issue 21).

Distributions: two-sample Kolmogorov–Smirnov tests at fixed seeds (deterministic), accepted at
p > 0.001, and rates within 4 binomial standard errors. Geometry: exact equality with the CPU grid
and a closed form. Equivalence: the CPU transform is fed the device's parameters through a scripted
RNG, and both batches give the same views and the same MoCo loss.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from collapsekit.data.augment import TwoViewTransform, crop_grid, sample_crop_box
from collapsekit.data.device_augment import DeviceTwoView, ViewParams, crop_grids
from collapsekit.models import MoCo, ModelConfig

N = 4000
KS_P = 1e-3


def _sizes(n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), h), torch.full((n,), w)


def _box_stats(boxes: torch.Tensor, h: int, w: int) -> dict[str, np.ndarray]:
    b = boxes.double()
    bh, bw = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    return {
        "area": (bh * bw / (h * w)).numpy(),
        "log_ratio": torch.log(bw / bh).numpy(),
        "y0": (b[:, 0] / (h - bh).clamp(min=1e-9)).numpy(),
        "x0": (b[:, 1] / (w - bw).clamp(min=1e-9)).numpy(),
    }


@pytest.mark.parametrize(
    "h, w, scale, ratio",
    [
        (96, 80, (0.2, 1.0), (3 / 4, 4 / 3)),  # MoCo v2: mostly first-try fits
        (64, 64, (0.8, 1.0), (3 / 4, 4 / 3)),  # the demo preset: frequent misses, retries
        (40, 120, (0.5, 1.0), (3 / 4, 4 / 3)),  # a wide slice: some fall back to the centred crop
    ],
)
def test_crop_boxes_are_distributed_as_the_cpu_rule(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> None:
    t = TwoViewTransform(size=16, scale=scale, ratio=ratio)
    g = torch.Generator().manual_seed(1)
    dev = DeviceTwoView(t).sample(*_sizes(N, h, w), generator=g).box
    gc = torch.Generator().manual_seed(2)
    cpu = torch.stack([sample_crop_box(h, w, scale, ratio, gc) for _ in range(N)])
    assert (
        (dev[:, :2] >= 0).all() and (dev[:, 2] <= h + 1e-4).all() and (dev[:, 3] <= w + 1e-4).all()
    )
    sd, sc = _box_stats(dev, h, w), _box_stats(cpu, h, w)
    for key in ("area", "log_ratio", "y0", "x0"):
        p = stats.ks_2samp(sd[key], sc[key]).pvalue
        assert p > KS_P, f"{key}: KS p = {p:.2e}"
    # the fallback (largest centred crop, ratio clamped) appears equally often, with the same box
    centred_d = np.isclose(sd["area"], sd["area"].max()) & (sd["area"] > scale[1] - 1e-6)
    centred_c = np.isclose(sc["area"], sc["area"].max()) & (sc["area"] > scale[1] - 1e-6)
    assert abs(centred_d.mean() - centred_c.mean()) < 4 * math.sqrt(0.25 * 2 / N) + 1e-9


def test_fallback_box_is_the_cpu_rule_exactly() -> None:
    """A scale no crop can reach inside the ratio range: every box is the centred fallback."""
    h, w, scale, ratio = 30, 120, (1.0, 1.0), (3 / 4, 4 / 3)
    dev = DeviceTwoView(TwoViewTransform(size=8, scale=scale, ratio=ratio))
    boxes = dev.sample(*_sizes(5, h, w), generator=torch.Generator().manual_seed(0)).box
    expected = sample_crop_box(h, w, scale, ratio, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, expected.expand(5, 4))  # (0, 40, 30, 80): h = 30, w = 30 * 4/3


@pytest.mark.parametrize("strength", [1.0, 0.25])
def test_rates_and_ranges_match_the_cpu_transform(strength: float) -> None:
    t = TwoViewTransform(
        size=8, flip_p=0.3, jitter_p=0.8, blur_p=0.5, noise_std=0.02, jitter_strength=strength
    )
    p = DeviceTwoView(t).sample(*_sizes(N, 32, 32), generator=torch.Generator().manual_seed(3))
    se = lambda q: 4 * math.sqrt(q * (1 - q) / N)  # noqa: E731 - 4 binomial standard errors
    for got, q in ((p.flip, 0.3), (p.jitter, 0.8), (p.blur, 0.5), (p.noise, 0.5)):
        assert abs(got.float().mean().item() - q) < se(q)
    # factors: U(1 - 0.4 s, 1 + 0.4 s) and gamma U(1 - 0.3 s, 1 + 0.5 s), as
    # augment.TwoViewTransform draws them (s = 1: 0.6-1.4 and 0.7-1.5; the ct preset's s = 0.25:
    # 0.9-1.1 and 0.925-1.125)
    f = (1 - 0.4 * strength, 1 + 0.4 * strength)
    for x, (lo, hi) in (
        (p.brightness, f),
        (p.contrast, f),
        (p.gamma, (1 - 0.3 * strength, 1 + 0.5 * strength)),
    ):
        assert lo <= x.min() and x.max() <= hi
        assert stats.kstest(x.numpy(), stats.uniform(lo, hi - lo).cdf).pvalue > KS_P
    assert stats.kstest(p.sigma.numpy(), stats.uniform(0.1, 1.9).cdf).pvalue > KS_P
    # each of the 6 orders of (brightness, contrast, gamma) equally likely, as randperm(3)
    codes = (p.order * torch.tensor([9, 3, 1])).sum(1)
    counts = torch.bincount(codes, minlength=27)[codes.unique()]
    assert len(counts) == 6 and stats.chisquare(counts.numpy()).pvalue > KS_P
    assert p.normal is not None and abs(p.normal.std().item() - 1) < 0.01


def test_geometric_only_and_no_noise_draw_no_intensity_ops() -> None:
    t = TwoViewTransform(size=8, geometric_only=True)
    p = DeviceTwoView(t).sample(*_sizes(64, 16, 16), generator=torch.Generator().manual_seed(0))
    assert not (p.jitter.any() or p.blur.any() or p.noise.any()) and p.normal is None


def test_grids_are_the_cpu_grids_bit_for_bit() -> None:
    h, w, s = 96, 80, 24
    boxes = torch.tensor([[3.25, 7.5, 70.0, 61.0], [0.0, 0.0, 96.0, 80.0], [10.1, 2.2, 41.7, 33.3]])
    flips = torch.tensor([False, True, True])
    grids = crop_grids(boxes, h, w, s, flips)
    for b in range(3):
        ref = crop_grid(boxes[b], h, w, s)
        assert torch.equal(grids[b], ref.flip(1) if flips[b] else ref)


def _params(box: torch.Tensor, flip: torch.Tensor) -> ViewParams:
    n, off = box.shape[0], torch.zeros(box.shape[0], dtype=torch.bool)
    one = torch.ones(n)
    return ViewParams(
        box, flip, off, torch.arange(3).expand(n, 3), one, one, one, off, one, off, None
    )


def test_boxes_map_the_recorded_source_pixels_closed_form() -> None:
    """On a linear image ``I = a y + b x + c`` bilinear sampling is exact, so output pixel
    ``(i, j)`` must equal ``I`` at ``(y0 + (i + 0.5) h / S - 0.5, x0 + (j' + 0.5) w / S - 0.5)``
    (pixel ``k`` is centred at ``k + 0.5``; ``j' = S - 1 - j`` when flipped)."""
    hh, ww, s = 64, 48, 16
    y = torch.arange(hh, dtype=torch.float64)[:, None]
    x = torch.arange(ww, dtype=torch.float64)[None, :]
    image = (0.01 * y + 0.003 * x + 0.1).float()[None, None].expand(2, 1, hh, ww)
    box = torch.tensor([[4.0, 3.0, 52.0, 35.0], [10.5, 6.25, 30.5, 46.25]])
    flip = torch.tensor([False, True])
    views = DeviceTwoView(TwoViewTransform(size=s, geometric_only=True)).apply(
        image, _params(box, flip)
    )
    t = torch.arange(s, dtype=torch.float64) + 0.5
    for b in range(2):
        y0, x0, y1, x1 = box[b].double()
        ys = y0 + t * (y1 - y0) / s - 0.5
        xs = x0 + t * (x1 - x0) / s - 0.5
        if flip[b]:
            xs = xs.flip(0)
        expected = 0.01 * ys[:, None] + 0.003 * xs[None, :] + 0.1
        torch.testing.assert_close(views[b, 0].double(), expected, rtol=0, atol=2e-6)
    # an integer box shrunk by an integer factor is the plain bilinear resize of the crop
    ref = F.interpolate(image[:1, :, 4:52, 3:35], size=(s, s), mode="bilinear", align_corners=False)
    torch.testing.assert_close(views[:1], ref, rtol=0, atol=1e-6)


def test_replication_padding_gives_the_unpadded_views() -> None:
    """A slice padded by edge replication (the slice store's mixed sizes) gives the same views as
    the slice alone, under the same boxes drawn inside the slice's own size."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 1, 40, 30, generator=g)
    padded = F.pad(small, (0, 20, 0, 8), mode="replicate")  # to 48 x 50
    box = torch.tensor([[0.0, 0.0, 40.0, 30.0], [12.3, 0.7, 39.9, 29.8], [0.0, 20.0, 10.0, 30.0]])
    p = _params(box, torch.tensor([False, True, False]))
    dev = DeviceTwoView(TwoViewTransform(size=12, geometric_only=True))
    a = dev.apply(small.expand(3, 1, 40, 30), p)
    b = dev.apply(padded.expand(3, 1, 48, 50), p)
    # the same source points, normalised by 50 instead of 30 px: float32 rounding of the grid
    # (~50 · 6e-8 px) times a unit pixel gradient
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


class _ScriptedRNG:
    """Replays given values for torch.rand / randperm / randn_like (the CPU transform's draws)."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def rand(self, *size: Any, generator: Any = None, dtype: Any = None, **kw: Any) -> torch.Tensor:
        shape = size[0] if len(size) == 1 and isinstance(size[0], tuple) else size
        value = torch.as_tensor(self.values.pop(0), dtype=dtype or torch.float32)
        return value.reshape(shape)

    def randperm(self, n: int, **kw: Any) -> torch.Tensor:
        return torch.as_tensor(self.values.pop(0))

    def randn_like(self, v: torch.Tensor, **kw: Any) -> torch.Tensor:
        return self.values.pop(0).reshape(v.shape)


def _script(p: ViewParams, b: int, t: TwoViewTransform, h: int, w: int) -> list[Any]:
    """The uniforms (etc.) that make the CPU transform draw view ``b`` of ``p``."""
    y0, x0, y1, x1 = p.box[b].double().tolist()
    bh, bw = y1 - y0, x1 - x0
    lr = (math.log(t.ratio[0]), math.log(t.ratio[1]))
    u_area = (bh * bw / (h * w) - t.scale[0]) / (t.scale[1] - t.scale[0])
    u_ratio = (math.log(bw / bh) - lr[0]) / (lr[1] - lr[0])
    gate = lambda on: 0.0 if on else 0.999999  # noqa: E731
    out: list[Any] = [[u_area, u_ratio, 0.5], [y0 / (h - bh), x0 / (w - bw)], gate(p.flip[b])]
    out.append(gate(p.jitter[b]))
    if p.jitter[b]:
        out.append(p.order[b].clone())
        for op in p.order[b].tolist():
            if op == 0:
                out.append((float(p.brightness[b]) - 0.6) / 0.8)
            elif op == 1:
                out.append((float(p.contrast[b]) - 0.6) / 0.8)
            else:
                out += [0.5, (float(p.gamma[b]) - 0.7) / 0.8]
    out.append(gate(p.blur[b]))
    if p.blur[b]:
        out.append((float(p.sigma[b]) - 0.1) / 1.9)
    out.append(gate(p.noise[b]))
    if p.noise[b]:
        assert p.normal is not None
        out.append(p.normal[b])
    return out


def _cpu_views(
    images: torch.Tensor, p: ViewParams, t: TwoViewTransform, monkeypatch: pytest.MonkeyPatch
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = _ScriptedRNG()
    views, boxes, flips = [], [], []
    with monkeypatch.context() as m:
        for name in ("rand", "randperm", "randn_like"):
            m.setattr(torch, name, getattr(rng, name))
        for b in range(images.shape[0]):
            rng.values = _script(p, b, t, *images.shape[-2:])
            v, box, flip = t.view(images[b])
            assert not rng.values  # every scripted draw was consumed
            views.append(v)
            boxes.append(box)
            flips.append(flip)
    return torch.stack(views), torch.stack(boxes), torch.stack(flips)


def test_same_parameters_give_the_same_views_and_the_same_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, h, w, s = 8, 96, 80, 64
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    images = 0.5 + 0.3 * torch.sin(9 * yy[None, None] + 5 * xx + torch.arange(b).view(b, 1, 1, 1))
    images = (images + 0.05 * torch.rand(b, 1, h, w, generator=g)).clamp(0, 1)
    t = TwoViewTransform(size=s, flip_p=0.5, jitter_p=0.8, blur_p=0.5, noise_std=0.02)
    dev = DeviceTwoView(t)
    batches: dict[str, dict[str, torch.Tensor]] = {"device": {}, "cpu": {}}
    for k in (1, 2):
        p = dev.sample(*_sizes(b, h, w), generator=g)
        assert p.jitter.any() and p.blur.any() and p.noise.any() and p.flip.any()
        views, boxes, flips = _cpu_views(images, p, t, monkeypatch)
        torch.testing.assert_close(boxes, p.box, rtol=0, atol=1e-4)  # the scripted draws replay it
        assert torch.equal(flips, p.flip)
        batches["device"].update(
            {f"view{k}": dev.apply(images, p), f"box{k}": p.box, f"flip{k}": p.flip}
        )
        batches["cpu"].update({f"view{k}": views, f"box{k}": boxes, f"flip{k}": flips})
        torch.testing.assert_close(batches["device"][f"view{k}"], views, rtol=0, atol=1e-5)
    torch.manual_seed(0)
    model = MoCo(
        ModelConfig(method="local+zca", queue_size=32, local_queue_size=64, zca_group_size=16)
    )
    losses = {}
    for name, batch in batches.items():
        m = copy.deepcopy(model).train()
        torch.manual_seed(1)  # the same shuffle-BN permutation
        out = m(batch)
        assert out.loss_local is not None
        losses[name] = (out.loss.item(), out.loss_global.item(), out.loss_local.item())
    np.testing.assert_allclose(losses["device"], losses["cpu"], rtol=1e-5)


def test_call_returns_the_collated_cpu_format() -> None:
    t = TwoViewTransform(size=16)
    out = DeviceTwoView(t)(torch.rand(4, 1, 32, 24), generator=torch.Generator().manual_seed(0))
    assert set(out) == {"view1", "view2", "box1", "box2", "flip1", "flip2"}
    assert out["view1"].shape == (4, 1, 16, 16) and out["view1"].dtype == torch.float32
    assert out["box1"].shape == (4, 4) and out["flip1"].dtype == torch.bool
    assert 0 <= out["view2"].min() and out["view2"].max() <= 1
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        DeviceTwoView(t)(torch.rand(1, 32, 24))


@pytest.mark.gpu
def test_cuda_views_match_cpu_views_on_the_same_parameters() -> None:
    t = TwoViewTransform(size=64, flip_p=0.5, jitter_p=0.8, blur_p=0.5, noise_std=0.02)
    dev = DeviceTwoView(t)
    images = torch.rand(16, 1, 96, 80, generator=torch.Generator().manual_seed(0))
    p = dev.sample(*_sizes(16, 96, 80), generator=torch.Generator().manual_seed(1))
    cuda = torch.device("cuda")
    parts: dict[str, Any] = {k: (None if v is None else v.to(cuda)) for k, v in vars(p).items()}
    moved = ViewParams(**parts)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # the step's autocast must not reach it
        out = dev.apply(images.to(cuda, torch.float16), moved)
    assert out.dtype == torch.float32
    ref = dev.apply(images.half().float(), p)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-5)
    g = torch.Generator(device=cuda).manual_seed(0)
    views = dev(images.to(cuda), generator=g)
    assert views["view1"].device.type == "cuda" and views["box2"].device.type == "cuda"
