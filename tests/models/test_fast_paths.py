"""The speed paths (issue 13) give the plain paths' numbers: fused local loss, channels_last."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from collapsekit.models import (
    MoCo,
    ModelConfig,
    local_info_nce,
    local_info_nce_loss,
)
from collapsekit.models.local import local_negative_mask

TINY: dict[str, Any] = {
    "queue_size": 32,
    "local_queue_size": 64,
    "zca_group_size": 16,
    "local_negatives": "both",  # a queue and same-image negatives: every path of the fused loss
}


def _unit(*shape: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=dim)


@pytest.mark.parametrize("with_queue", [True, False])
@pytest.mark.parametrize("negatives", [None, "other_images", "same_image"])
@pytest.mark.parametrize("offset", [0, 8])
def test_fused_local_loss_equals_the_plain_loss_and_gradient(
    with_queue: bool, negatives: str | None, offset: int
) -> None:
    q0, k = _unit(12, 8, dim=1, seed=0), _unit(24, 8, dim=1, seed=1)
    queue = _unit(8, 40, dim=0, seed=2) if with_queue else None
    exclude = None if negatives is None else local_negative_mask(12, 24, 4, negatives, offset)
    q_plain, q_fast = q0.clone().requires_grad_(), q0.clone().requires_grad_()
    plain, _, _ = local_info_nce(q_plain, k, queue, 0.2, offset, exclude)
    fast = local_info_nce_loss(q_fast, k, queue, 0.2, offset, exclude)
    plain.backward()
    fast.backward()
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=0)
    assert q_plain.grad is not None and q_fast.grad is not None
    torch.testing.assert_close(q_fast.grad, q_plain.grad, rtol=1e-10, atol=1e-15)
    assert q_fast.grad.abs().max() > 1e-3  # a gradient worth comparing


def test_fused_local_loss_survives_an_in_place_queue_update_before_backward() -> None:
    q0, k, queue = (
        _unit(6, 8, dim=1, seed=3),
        _unit(6, 8, dim=1, seed=4),
        _unit(8, 16, dim=0, seed=5),
    )
    q_plain, q_fast = q0.clone().requires_grad_(), q0.clone().requires_grad_()
    plain, _, _ = local_info_nce(q_plain, k, queue.clone(), 0.2)
    fast = local_info_nce_loss(q_fast, k, queue, 0.2)
    queue[:, :6] = k.t()  # what MoCo's enqueue does between the loss and backward
    plain.backward()
    fast.backward()
    torch.testing.assert_close(q_fast.grad, q_plain.grad)


def test_fused_local_loss_runs_in_float32_under_autocast() -> None:
    q0, k, queue = (
        _unit(6, 8, dim=1, seed=6),
        _unit(6, 8, dim=1, seed=7),
        _unit(8, 16, dim=0, seed=8),
    )
    q32, k32, queue32 = q0.float(), k.float(), queue.float()
    exclude = local_negative_mask(6, 6, 3, "other_images")
    ref = local_info_nce_loss(q32, k32, queue32, 0.2, exclude=exclude)
    q_bf = q32.to(torch.bfloat16).requires_grad_()  # what a head under bf16 autocast returns
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = local_info_nce_loss(q32.clone().requires_grad_(), k32, queue32, 0.2, 0, exclude)
        loss_bf = local_info_nce_loss(q_bf, k32, queue32, 0.2, 0, exclude)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)  # autocast did not touch the math
    loss_bf.backward()  # outside autocast, as the training loop calls it
    assert q_bf.grad is not None and q_bf.grad.dtype == torch.bfloat16


def _batch(b: int = 8, s: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    box1 = torch.tensor([[0.0, 0.0, 48.0, 48.0]]).repeat(b, 1)
    box2 = box1 + torch.rand(b, 4, generator=g) * 12
    return {
        "view1": torch.rand(b, 1, s, s, generator=g, dtype=torch.float64),
        "view2": torch.rand(b, 1, s, s, generator=g, dtype=torch.float64),
        "box1": box1,
        "box2": box2,
        "flip1": torch.arange(b) % 3 == 0,
        "flip2": torch.arange(b) % 2 == 1,
    }


def test_channels_last_fused_loss_and_fused_sgd_train_like_the_plain_step() -> None:
    """Two SGD steps of local+zca: every speed switch on vs all off, in float64."""
    torch.manual_seed(0)
    plain = MoCo(ModelConfig(method="local+zca", **TINY), fused_local_loss=False).double()
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    fast.fused_local_loss = True
    assert fast.encoder_q.backbone.memory_format == torch.channels_last
    assert plain.encoder_q.backbone.memory_format == torch.contiguous_format
    seen: list[torch.Tensor] = []
    fast.encoder_q.backbone.layer1.register_forward_hook(lambda m, i, o: seen.append(o))

    def sgd(model: MoCo, fused: bool) -> torch.optim.SGD:
        params = [p for p in model.encoder_q.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, fused=fused)

    runs = [(plain, sgd(plain, False)), (fast, sgd(fast, True))]
    for step in range(2):
        outs = []
        for model, opt in runs:
            torch.manual_seed(step)  # the same key permutation
            out = model(_batch(seed=step))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            grads = [p.grad.clone() for p in model.encoder_q.parameters() if p.grad is not None]
            opt.step()
            outs.append((out, grads))
        (a, ga), (b, gb) = outs
        assert a.loss_local is not None and b.loss_local is not None
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-10, atol=0)
        torch.testing.assert_close(b.loss_local, a.loss_local, rtol=1e-10, atol=0)
        assert len(ga) == len(gb) == len(list(plain.encoder_q.parameters()))
        for x, y in zip(ga, gb, strict=True):
            torch.testing.assert_close(y, x, rtol=1e-7, atol=1e-9)
    assert seen and all(t.is_contiguous(memory_format=torch.channels_last) for t in seen)
    for (name, x), y in zip(plain.state_dict().items(), fast.state_dict().values(), strict=True):
        torch.testing.assert_close(y, x, rtol=1e-7, atol=1e-9, msg=name)


def test_query_sub_batches_are_the_samples_of_one_residue() -> None:
    """With shuffle_bn_splits=2 a query's statistics come from the samples of its parity only."""
    model = MoCo(ModelConfig(method="mocov2", shuffle_bn_splits=2, **TINY)).train()
    x = _batch(s=32)["view1"].float()
    with torch.no_grad():
        _, base = model._query_forward(x)
        odd = x.clone()
        odd[1] += 1.0
        _, moved = model._query_forward(odd)
    torch.testing.assert_close(moved[0::2], base[0::2])
    assert not torch.allclose(moved[3], base[3], atol=1e-3)  # sample 1's sub-batch
