"""Process-group set-up for ``torchrun``: one process per device, gloo on CPU, NCCL on CUDA.

One node or several: ``torchrun`` sets ``RANK`` (global, ``0 .. WORLD_SIZE-1`` over all nodes),
``LOCAL_RANK`` (``0 .. LOCAL_WORLD_SIZE-1`` on this node) and ``WORLD_SIZE``. The global rank
decides everything that must be unique in the job — which share of each global batch a process
trains on, and that only rank 0 writes and prints — while the local rank only picks this
process's GPU on its node (``cuda:LOCAL_RANK``). With ``--nnodes 2 --nproc_per_node 1`` both
processes have ``LOCAL_RANK`` 0 and ``RANK`` 0 and 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from collapsekit.devices import resolve_device
from collapsekit.errors import ConfigError

__all__ = ["DistContext", "setup_distributed", "broadcast_object", "barrier", "cleanup_distributed"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: global ``rank`` of ``world_size``, its ``local_rank`` of
    ``local_world_size`` processes on its node, and the device it trains on (chosen by the local
    rank)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str = "auto") -> DistContext:
    """Initialise the default process group when launched by torchrun (``WORLD_SIZE`` > 1).

    Args:
        device: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.

    Raises:
        ConfigError: on CUDA, ``LOCAL_RANK`` names a GPU this node does not have (more processes
            per node than GPUs).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = resolve_device(device) == "cuda"
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} CUDA "
                "device(s): start at most one process per GPU (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if not use_cuda:
            # Share this node's cores between this node's processes instead of oversubscribing.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=dev,
        local_world_size=max(1, local_world),
    )


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (identity on one process)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def cleanup_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
