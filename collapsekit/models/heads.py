"""Projection heads: the MoCo v2 global MLP and the per-point local MLP.

MoCo v2 (Chen et al. 2020, arXiv 2003.04297; facebookresearch/moco ``--mlp``) replaces the linear
projection by ``Linear(C, hidden) → ReLU → Linear(hidden, out)`` with no BatchNorm; hidden = the
backbone width, out = 128. The local head has the same shape and is applied to every sampled point
(any leading dimensions), mapping ``(..., C)`` features to ``(..., out)`` local embeddings.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjectionHead", "LocalHead"]


class ProjectionHead(nn.Module):
    """``Linear(in_dim, hidden_dim) → ReLU → Linear(hidden_dim, out_dim)`` (MoCo v2, no BN).

    Args:
        in_dim: input width ``C``.
        hidden_dim: hidden width (MoCo v2: ``C``).
        out_dim: output width (MoCo v2: 128).

    Shapes:
        ``(..., in_dim) -> (..., out_dim)``, not normalised.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        if min(in_dim, hidden_dim, out_dim) < 1:
            raise ValueError(f"head widths must be >= 1, got {in_dim}, {hidden_dim}, {out_dim}")
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class LocalHead(ProjectionHead):
    """The local-feature MLP: the same ``Linear → ReLU → Linear`` applied point-wise.

    Shapes:
        ``(B, P, C) -> (B, P, out_dim)`` (any leading dimensions), not normalised.
    """
