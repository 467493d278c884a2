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
