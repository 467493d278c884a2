"""torch.distributed helpers: no-ops on one process; a 2-process gloo run for the synced parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from collapsekit.models import MoCo, ModelConfig, ZCAWhitening
from collapsekit.models.distributed import (
    concat_all_gather,
    is_dist,
    rank,
    world_size,
)


def test_single_process_no_ops() -> None:
    assert not is_dist() and world_size() == 1 and rank() == 0
    t = torch.randn(3, 2)
    assert concat_all_gather(t) is t


def _worker(r: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=r, world_size=2)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 8, 3, 3, generator=g, dtype=torch.float64) @ torch.eye(
            3, dtype=torch.float64
        )
        w_out = torch.randn(16, 8, 3, 3, generator=g, dtype=torch.float64)
        layer = ZCAWhitening(8, group_size=4).double()
        xr = x[8 * r : 8 * (r + 1)].clone().requires_grad_()
        y = layer(xr)
        (y * w_out[8 * r : 8 * (r + 1)]).sum().backward()
        gathered = concat_all_gather(torch.full((2,), float(r)))

        torch.manual_seed(1)
        # both: the local queue, other ranks' points and same-image points (the DDP offset)
        cfg = ModelConfig(
            method="local+zca", queue_size=16, local_queue_size=64, local_negatives="both"
        )
        moco = MoCo(cfg)
        b = 4
        gb = torch.Generator().manual_seed(10 + r)
        box = torch.tensor([[0.0, 0.0, 48.0, 48.0]]).repeat(b, 1)
        batch = {
            "view1": torch.rand(b, 1, 32, 32, generator=gb),
            "view2": torch.rand(b, 1, 32, 32, generator=gb),
            "box1": box,
            "box2": box + 8,
            "flip1": torch.zeros(b, dtype=torch.bool),
            "flip2": torch.ones(b, dtype=torch.bool),
        }
        o = moco(batch)
        o.loss.backward()
        torch.save(
            {
                "y": y.detach(),
                "grad": xr.grad,
                "running": layer.running_cov,
                "gathered": gathered,
                "loss": o.loss.detach(),
                "queue": moco.queue.queue,
                "ptr": moco.queue.ptr,
                "local_ptr": moco.local_queue.ptr if moco.local_queue is not None else None,
            },
            f"{out}/rank{r}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    # forked, as DataLoader workers are: the ranks start with torch and collapsekit imported
    # (spawned, each spent seconds importing them and MONAI again)
    mp.start_processes(_worker, args=(init, str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")  # fmt: skip
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # ZCA under DDP whitens each rank's batch on its own (like shuffle-BN): the reference is one
    # process whitening each half separately
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, 3, 3, generator=g, dtype=torch.float64)
    w_out = torch.randn(16, 8, 3, 3, generator=g, dtype=torch.float64)
    x.requires_grad_()
    for r in range(2):
        layer = ZCAWhitening(8, group_size=4).double()
        y = layer(x[8 * r : 8 * (r + 1)])
        (gx,) = torch.autograd.grad((y * w_out[8 * r : 8 * (r + 1)]).sum(), x)
        torch.testing.assert_close(res[r]["y"], y.detach())
        torch.testing.assert_close(res[r]["grad"], gx[8 * r : 8 * (r + 1)])
        torch.testing.assert_close(res[r]["running"], layer.running_cov)
    assert res[0]["gathered"].tolist() == [0.0, 0.0, 1.0, 1.0]

    # MoCo under DDP-style shuffle: finite loss, identical queues holding both ranks' keys
    for rr in res:
        assert torch.isfinite(rr["loss"])
        assert rr["ptr"].item() == 8 and rr["local_ptr"].item() == 2 * 4 * 16 % 64
    torch.testing.assert_close(res[0]["queue"], res[1]["queue"])
