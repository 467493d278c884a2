"""Projection heads: Linear -> ReLU -> Linear (MoCo v2, no BN), applied point-wise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from collapsekit.models.heads import LocalHead, ProjectionHead


def _reference(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2 = head.parameters()
    return F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)


def test_projection_head_is_linear_relu_linear() -> None:
    head = ProjectionHead(16, 32, 8)
    assert [tuple(p.shape) for p in head.parameters()] == [(32, 16), (32,), (8, 32), (8,)]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in head.modules())
    x = torch.randn(5, 16)
    torch.testing.assert_close(head(x), _reference(head, x))


def test_output_is_not_normalised() -> None:
    z = ProjectionHead(16, 32, 8)(torch.randn(64, 16))
    assert not torch.allclose(z.norm(dim=1), torch.ones(64))


def test_local_head_is_pointwise_over_leading_dims() -> None:
    head = LocalHead(16, 16, 8)
    x = torch.randn(3, 7, 16)
    out = head(x)
    assert out.shape == (3, 7, 8)
    torch.testing.assert_close(out[1, 4], head(x[1, 4][None])[0])
    torch.testing.assert_close(out, _reference(head, x))


@pytest.mark.parametrize("widths", [(0, 8, 8), (8, 0, 8), (8, 8, 0)])
def test_zero_width_is_refused(widths: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="widths"):
        ProjectionHead(*widths)
