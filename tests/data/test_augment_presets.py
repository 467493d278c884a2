"""Augmentation presets: named parameter sets of the two-view transform, and jitter strength."""

from __future__ import annotations

import pytest
import torch

from collapsekit.data.augment import AUGMENT_PRESETS, TwoViewTransform, augment_preset
from collapsekit.errors import ConfigError


def test_presets_are_the_documented_parameter_sets() -> None:
    assert set(AUGMENT_PRESETS) == {"mocov2", "demo", "ct"}
    assert augment_preset("mocov2") == {
        "scale": (0.2, 1.0),
        "jitter_p": 0.8,
        "jitter_strength": 1.0,
        "blur_p": 0.5,
    }
    assert augment_preset("demo") == {
        "scale": (0.8, 1.0),
        "jitter_p": 0.0,
        "jitter_strength": 1.0,
        "blur_p": 0.0,
    }
    assert augment_preset("ct") == {
        "scale": (0.2, 1.0),
        "jitter_p": 0.8,
        "jitter_strength": 0.25,
        "blur_p": 0.0,
    }
    t = TwoViewTransform.from_preset("ct", size=48, blur_p=0.1)
    assert (t.size, t.scale, t.jitter_strength, t.jitter_p, t.blur_p) == (
        48,
        (0.2, 1.0),
        0.25,
        0.8,
        0.1,
    )
    with pytest.raises(ConfigError, match="did you mean"):
        augment_preset("mocov")
    augment_preset("ct")["scale"] = (0.5, 1.0)  # a copy
    assert AUGMENT_PRESETS["ct"]["scale"] == (0.2, 1.0)


def _jittered(strength: float, seed: int) -> torch.Tensor:
    t = TwoViewTransform(size=8, jitter_p=1.0, blur_p=0.0, noise_std=0.0, jitter_strength=strength)
    torch.manual_seed(seed)
    return t._intensity(torch.full((1, 8, 8), 0.5))


def test_jitter_strength_bounds_the_intensity_change() -> None:
    # on a constant image contrast does nothing; brightness f and gamma g give (0.5 f)^g or
    # 0.5^g f, monotone in f and g: the corners bound every output
    def bounds(s: float) -> tuple[float, float]:
        fs, gs = (1 - 0.4 * s, 1 + 0.4 * s), (1 - 0.3 * s, 1 + 0.5 * s)
        vals = [v for f in fs for g in gs for v in ((0.5 * f) ** g, 0.5**g * f)]
        return min(vals), max(vals)

    for s in (0.25, 1.0):
        lo, hi = bounds(s)
        outs = torch.stack([_jittered(s, seed) for seed in range(200)])
        assert outs.min() >= lo - 1e-6 and outs.max() <= hi + 1e-6
    lo, hi = bounds(0.25)
    strong = torch.stack([_jittered(1.0, seed) for seed in range(200)])
    assert strong.min() < lo and strong.max() > hi  # full strength leaves the quarter range
    assert torch.equal(_jittered(0.0, 3), torch.full((1, 8, 8), 0.5))  # strength 0: identity


def test_bad_jitter_strength() -> None:
    with pytest.raises(ConfigError, match="jitter_strength"):
        TwoViewTransform(jitter_strength=3.0)
