"""Thin ``torch.distributed`` helpers that are no-ops on a single process.

MoCo's cross-rank pieces (facebookresearch/moco ``builder.py``): ``concat_all_gather`` for keys and
shuffle-BN, ``broadcast`` for the shuffle permutation. (ZCA statistics are per rank, like
shuffle-BN, so nothing is all-reduced differentiably.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_dist", "world_size", "rank", "concat_all_gather", "broadcast"]


def is_dist() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    """Rank of this process (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


@torch.no_grad()
def concat_all_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0 (no gradient), rank order.

    Every rank must pass the same shape. On one process this returns ``t`` itself.
    """
    if not is_dist() or world_size() == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t)
    return torch.cat(parts, dim=0)


@torch.no_grad()
def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Broadcast ``t`` in place from ``src`` (no-op on one process); returns ``t``."""
    if is_dist() and world_size() > 1:
        dist.broadcast(t, src=src)
    return t
