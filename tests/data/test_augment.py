"""Two-view augmentation: recorded boxes and flips reproduce the views exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from collapsekit.data import TwoViewTransform
from collapsekit.data.augment import resized_crop, sample_crop_box
from collapsekit.errors import ConfigError


@pytest.fixture
def source() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 48, 64, generator=g)
    return F.avg_pool2d(img[None], 3, 1, 1)[0]  # a smooth-ish image, values in [0, 1]


def test_identity_box(source):
    box = torch.tensor([0.0, 0.0, 48.0, 64.0])
    out = resized_crop(source, box, (48, 64))
    torch.testing.assert_close(out, source, atol=1e-6, rtol=0)


def test_integer_box_matches_interpolate(source):
    box = torch.tensor(
        [8.0, 4.0, 40.0, 36.0]
    )  # 32x32 -> 16x16: source points 2i + 0.5 inside the crop
    out = resized_crop(source, box, 16)
    ref = F.interpolate(
        source[None, :, 8:40, 4:36], size=(16, 16), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def test_continuous_box_matches_formula(source):
    """Pixel (i, j) of an S-view samples y0 + (i+0.5)(y1-y0)/S, x0 + (j+0.5)(x1-x0)/S (pixel centres at k)."""
    y0, x0, y1, x1, s = 5.3, 7.9, 37.1, 50.2, 12
    out = resized_crop(source, torch.tensor([y0, x0, y1, x1]), s)
    ys = y0 + (np.arange(s) + 0.5) * (y1 - y0) / s - 0.5
    xs = x0 + (np.arange(s) + 0.5) * (x1 - x0) / s - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ref = ndimage.map_coordinates(source[0].double().numpy(), [yy, xx], order=1, mode="nearest")
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-5)


def test_views_reproduced_from_recorded_geometry(source):
    tf = TwoViewTransform(size=24, geometric_only=True)
    flips = []
    for _ in range(20):
        out = tf(source)
        for k in ("1", "2"):
            box, flip, view = out["box" + k], out["flip" + k], out["view" + k]
            assert box.dtype == torch.float32 and box.shape == (4,) and flip.dtype == torch.bool
            ref = resized_crop(source, box, 24)
            if bool(flip):
                ref = ref.flip(-1)
            torch.testing.assert_close(view, ref, atol=1e-6, rtol=0)
            y0, x0, y1, x1 = box.tolist()
            assert 0 <= y0 < y1 <= 48 + 1e-4 and 0 <= x0 < x1 <= 64 + 1e-4
            area = (y1 - y0) * (x1 - x0) / (48 * 64)
            assert 0.2 - 1e-4 <= area <= 1 + 1e-4
            assert 3 / 4 - 1e-4 <= (x1 - x0) / (y1 - y0) <= 4 / 3 + 1e-4
            flips.append(bool(flip))
    assert 0 < sum(flips) < len(flips)  # both flipped and unflipped views occur at p = 0.5


def test_flip_probabilities(source):
    always = TwoViewTransform(size=8, flip_p=1.0, geometric_only=True)(source)
    never = TwoViewTransform(size=8, flip_p=0.0, geometric_only=True)(source)
    assert bool(always["flip1"]) and bool(always["flip2"])
    assert not bool(never["flip1"]) and not bool(never["flip2"])


def test_intensity_changes_stay_in_range_and_reproduce(source):
    tf = TwoViewTransform(size=32, jitter_p=1.0, blur_p=1.0, noise_std=0.05)
    torch.manual_seed(7)
    a = tf(source)
    torch.manual_seed(7)
    b = tf(source)
    torch.testing.assert_close(a["view1"], b["view1"])
    torch.testing.assert_close(a["box2"], b["box2"])
    for k in ("view1", "view2"):
        assert a[k].dtype == torch.float32 and a[k].shape == (1, 32, 32)
        assert 0.0 <= float(a[k].min()) and float(a[k].max()) <= 1.0
    geometric = resized_crop(source, a["box1"], 32)
    if bool(a["flip1"]):
        geometric = geometric.flip(-1)
    assert not torch.allclose(a["view1"], geometric, atol=1e-3)


def test_crop_box_fallback():
    # An aspect ratio of 2 with the full area cannot fit a square: centred crop with the ratio clamped.
    box = sample_crop_box(40, 40, scale=(1.0, 1.0), ratio=(2.0, 2.0))
    torch.testing.assert_close(box, torch.tensor([10.0, 0.0, 30.0, 40.0]))


def test_crop_box_distribution():
    """With scale <= 0.5 every try fits, so area ~ U(scale) and log ratio ~ U(log 3/4, log 4/3) exactly."""
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    boxes = torch.stack(
        [sample_crop_box(100, 100, scale=(0.2, 0.5), generator=g) for _ in range(400)]
    ).double()
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 1e4).numpy()
    log_r = torch.log((boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0])).numpy()
    assert stats.kstest(area, stats.uniform(0.2, 0.3).cdf).pvalue > 0.01
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert stats.kstest(log_r, stats.uniform(lo, hi - lo).cdf).pvalue > 0.01
    # Positions: y0 ~ U(0, H - h), so the box centre is uniform over the free range on average.
    assert abs(float(((boxes[:, 0] + boxes[:, 2]) / 2).mean()) - 50) < 3


def test_collate_and_validation(source):
    tf = TwoViewTransform(size=16)
    batch = torch.utils.data.default_collate([tf(source) for _ in range(3)])
    assert (
        batch["view1"].shape == (3, 1, 16, 16)
        and batch["box1"].shape == (3, 4)
        and batch["flip1"].shape == (3,)
    )
    with pytest.raises(ConfigError, match="scale"):
        TwoViewTransform(scale=(0.0, 1.0))
    with pytest.raises(ConfigError, match="flip_p"):
        TwoViewTransform(flip_p=2.0)
