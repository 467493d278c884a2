"""pool_features: one stated rule from a model output to (B, D) rows."""

from __future__ import annotations

import pytest
import torch

from collapsekit.diagnostics import pool_features
from collapsekit.errors import InputError


def test_rows_are_used_as_is() -> None:
    t = torch.randn(5, 7)
    rows, rule = pool_features(t)
    assert rows is t and rule == "as is (5, 7)"


def test_tokens_are_averaged_over_tokens_not_features() -> None:
    t = torch.randn(4, 16, 64)
    rows, rule = pool_features(t)
    assert rows.shape == (4, 64) and rule == "mean over tokens of (4, 16, 64)"
    torch.testing.assert_close(rows, t.sum(dim=1) / 16)
    cls, rule = pool_features(t, pool="cls")
    assert torch.equal(cls, t[:, 0]) and rule == "cls token (index 0) of (4, 16, 64)"


def test_2d_and_3d_conv_maps_are_averaged_over_space() -> None:
    fmap = torch.randn(3, 8, 5, 6)
    rows, rule = pool_features(fmap)
    assert rule == "mean over space of (3, 8, 5, 6)"
    torch.testing.assert_close(rows, fmap.sum(dim=(2, 3)) / 30)
    vol = torch.randn(2, 4, 3, 5, 6)
    rows, rule = pool_features(vol)
    assert rows.shape == (2, 4) and rule == "mean over space of (2, 4, 3, 5, 6)"
    torch.testing.assert_close(rows, vol.sum(dim=(2, 3, 4)) / 90)


def test_channels_last_maps_are_refused_by_default_and_read_when_stated() -> None:
    nhwc = torch.randn(2, 7, 7, 96)  # Swin/ConvNeXt-style (B, H, W, C)
    with pytest.raises(InputError, match=r"\(2, 7, 7, 96\) reads two ways: channels first \(C=7\)"):
        pool_features(nhwc)
    rows, rule = pool_features(nhwc, pool="channels_last")
    assert rule == "mean over axes 1..-2 (channels last) of (2, 7, 7, 96)"
    torch.testing.assert_close(rows, nhwc.sum(dim=(1, 2)) / 49)
    rows, rule = pool_features(nhwc, pool="channels_first")  # stated, so taken as stated
    assert rows.shape == (2, 7) and rule == "mean over axes 2.. (channels first) of (2, 7, 7, 96)"
    ndhwc = torch.randn(2, 3, 5, 5, 16)
    with pytest.raises(InputError, match="reads two ways"):
        pool_features(ndhwc)
    assert pool_features(ndhwc, pool="channels_last")[0].shape == (2, 16)
    conv1d = torch.randn(4, 8, 30)  # (B, C, L): tokens by default, a 1-D conv when stated
    rows, rule = pool_features(conv1d, pool="channels_first")
    torch.testing.assert_close(rows, conv1d.sum(dim=2) / 30)
    # ordinary channels-first maps are not ambiguous: square grids after the channels
    assert pool_features(torch.randn(2, 512, 4, 4))[0].shape == (2, 512)
    assert pool_features(torch.randn(2, 32, 8, 8, 8))[0].shape == (2, 32)


def test_a_callable_is_applied_and_named() -> None:
    def max_over_tokens(t: torch.Tensor) -> torch.Tensor:
        return t.amax(dim=1)

    t = torch.randn(4, 16, 64)
    rows, rule = pool_features(t, pool=max_over_tokens)
    assert torch.equal(rows, t.amax(dim=1)) and rule == "max_over_tokens of (4, 16, 64)"
    with pytest.raises(InputError, match=r"must return \(B, D\) = \(4, D\) rows, got \(4, 3, 3\)"):
        pool_features(torch.randn(4, 16, 3, 3), pool=lambda x: x.mean(dim=1))


@pytest.mark.parametrize(
    ("shape", "pool", "message"),
    [
        ((7,), "mean", r"out: cannot pool a 1-D output \(7\); \(B, D\) is used as is"),
        ((2, 3, 4, 5, 6, 7), "mean", r"cannot pool a 6-D output \(2, 3, 4, 5, 6, 7\)"),
        ((2, 3, 4, 5), "cls", r"cannot pool pool='cls' on a 4-D output \(2, 3, 4, 5\)"),
        ((2, 3), "max", r"unknown pool 'max'; choices: .*'cls'"),
    ],
)
def test_anything_else_is_refused_naming_the_shape_and_the_choices(
    shape: tuple[int, ...], pool: str, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        pool_features(torch.zeros(shape), pool=pool, name="out")  # type: ignore[arg-type]
