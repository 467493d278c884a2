"""MoCo v2: logits, closed-form InfoNCE, queue, momentum update, shuffle-BN, full forward."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models import (
    METHODS,
    MoCo,
    ModelConfig,
    Queue,
    ZCAWhitening,
    build_encoder,
    convert_split_bn,
    info_nce_logits,
    update_momentum,
)
from collapsekit.models.split_bn import split_order

TINY: dict[str, Any] = {
    "queue_size": 32,
    "local_queue_size": 256,
    "local_negatives": "other_images",  # the variant with a local queue
}


def _batch(b: int = 8, s: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    box1 = torch.tensor([[0.0, 0.0, 48.0, 48.0]]).repeat(b, 1)
    box2 = box1 + torch.tensor([8.0, 4.0, 8.0, 4.0])
    box2[-1] = torch.tensor([100.0, 100.0, 140.0, 140.0])  # one pair without overlap
    return {
        "view1": torch.rand(b, 1, s, s, generator=g),
        "view2": torch.rand(b, 1, s, s, generator=g),
        "box1": box1,
        "box2": box2,
        "flip1": torch.zeros(b, dtype=torch.bool),
        "flip2": torch.arange(b) % 2 == 1,
    }


def test_info_nce_logits_against_loops() -> None:
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    k = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    queue = F.normalize(torch.randn(4, 5, generator=g), dim=0)
    logits, labels = info_nce_logits(q, k, queue, 0.2)
    assert logits.shape == (3, 6) and labels.tolist() == [0, 0, 0]
    for n in range(3):
        pos = sum(float(q[n, c]) * float(k[n, c]) for c in range(4)) / 0.2
        assert logits[n, 0].item() == pytest.approx(pos, abs=1e-5)
        for j in range(5):
            neg = sum(float(q[n, c]) * float(queue[c, j]) for c in range(4)) / 0.2
            assert logits[n, 1 + j].item() == pytest.approx(neg, abs=1e-5)


def test_info_nce_closed_form_for_a_perfect_pair() -> None:
    n_keys, t = 16, 0.2
    q = torch.zeros(2, 8)
    q[0, 0] = q[1, 1] = 1.0
    queue = torch.zeros(8, n_keys)
    queue[2 + torch.arange(n_keys) % 6, torch.arange(n_keys)] = 1.0  # orthogonal to both queries
    logits, labels = info_nce_logits(q, q.clone(), queue, t)
    loss = F.cross_entropy(logits, labels).item()
    assert loss == pytest.approx(math.log(1 + n_keys * math.exp(-1 / t)), rel=1e-6)  # 0.1023...


def test_queue_pointer_and_contents_with_wrap_around() -> None:
    qu = Queue(dim=2, size=5)
    torch.testing.assert_close(qu.queue.norm(dim=0), torch.ones(5))
    keys = torch.arange(14, dtype=torch.float32).reshape(7, 2)  # key i = (2i, 2i+1)
    qu.enqueue(keys[0:2])
    qu.enqueue(keys[2:4])
    assert qu.ptr.item() == 4
    qu.enqueue(keys[4:7])  # slots 4, 0, 1
    assert qu.ptr.item() == 2
    assert qu.queue[:, [4, 0, 1, 2, 3]].T.tolist() == keys[[4, 5, 6, 2, 3]].tolist()
    big = -torch.arange(16, dtype=torch.float32).reshape(8, 2)  # more keys than slots
    qu.enqueue(big)  # keeps the last 5, written so that the newest sits just before the pointer
    assert qu.ptr.item() == (2 + 8) % 5
    assert qu.queue[:, [0, 1, 2, 3, 4]].T.tolist() == big[[3, 4, 5, 6, 7]].tolist()


def test_update_momentum_arithmetic() -> None:
    q = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    k = copy.deepcopy(q)
    with torch.no_grad():
        for p in k.parameters():
            p.copy_(torch.randn_like(p))
        q[1].running_mean.fill_(0.7)
    k0 = [p.clone() for p in k.parameters()]
    update_momentum(k, q, 0.9)
    for pk, pk0, pq in zip(k.parameters(), k0, q.parameters(), strict=True):
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq, rtol=0, atol=1e-15)
    assert torch.equal(k[1].running_mean, q[1].running_mean)


def test_logits_and_queue_match_a_hand_written_moco_step() -> None:
    cfg = ModelConfig(method="mocov2", shuffle_bn_splits=1, momentum=0.5, **TINY)
    model = MoCo(cfg)
    with torch.no_grad():  # make k differ from q so the update order matters
        for p in model.encoder_k.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    ref = copy.deepcopy(model)
    queue0 = model.queue.queue.clone()

    out = model(batch)

    update_momentum(ref.encoder_k, ref.encoder_q, 0.5)  # before the key forward
    q = F.normalize(ref.encoder_q(batch["view1"]), dim=1)
    with torch.no_grad():
        k = F.normalize(ref.encoder_k(batch["view2"]), dim=1)
    expected = torch.cat([(q * k).sum(1, keepdim=True), q @ queue0], dim=1) / cfg.temperature
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert out.labels.tolist() == [0] * 8 and out.logits.shape == (8, 1 + 32)
    torch.testing.assert_close(
        out.loss, F.cross_entropy(expected, out.labels), atol=1e-5, rtol=1e-5
    )
    # keys enqueued after the loss, at slots 0..7
    torch.testing.assert_close(model.queue.queue[:, :8], k.T, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.queue.queue[:, 8:], queue0[:, 8:]) and model.queue.ptr.item() == 8
    for pk, pr in zip(model.encoder_k.parameters(), ref.encoder_k.parameters(), strict=True):
        torch.testing.assert_close(pk, pr)


def test_single_process_shuffle_bn_restores_order() -> None:
    cfg = ModelConfig(method="mocov2", shuffle_bn_splits=2, **TINY)
    model = MoCo(cfg)
    x = _batch()["view2"]
    torch.manual_seed(7)
    with torch.no_grad():
        fmap, k = model._key_forward(x)
        torch.manual_seed(7)
        # the split layers' blocks of x[perm] are the interleaved sub-batches of x[randperm]
        perm = torch.randperm(8)[split_order(8, 2)]
        ref_local, ref_map = model.encoder_k.feature_maps(x[perm])
        ref = F.normalize(model.encoder_k.project(ref_map), dim=1)[torch.argsort(perm)]
    torch.testing.assert_close(k, ref)
    torch.testing.assert_close(fmap, ref_local[torch.argsort(perm)])
    # the split is real: sample 0's key depends on which sub-batch it lands in
    assert not torch.allclose(k, F.normalize(model.encoder_k(x), dim=1), atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_full_forward_backward_each_method(method: str) -> None:
    cfg = ModelConfig(method=method, **TINY)
    model = MoCo(cfg)
    out = model(_batch())
    assert torch.isfinite(out.loss)
    if cfg.uses_local:
        assert out.loss_local is not None and out.local_valid_fraction == pytest.approx(7 / 8)
        torch.testing.assert_close(out.loss, out.loss_global + 0.5 * out.loss_local)
        assert model.local_queue is not None and model.local_queue.ptr.item() == 7 * 16
    else:
        assert out.loss_local is None and out.local_valid_fraction is None
        assert torch.equal(out.loss, out.loss_global)
    out.loss.backward()
    grads = [p.grad for p in model.encoder_q.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert model.encoder_q.backbone.conv1.weight.grad.abs().sum() > 0


def test_eval_mode_leaves_key_encoder_and_queues_alone() -> None:
    model = MoCo(ModelConfig(method="local", **TINY)).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(_batch())
    assert torch.isfinite(out.loss)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_query_encoder_state_loads_into_a_plain_encoder() -> None:
    """Split BatchNorm keeps BatchNorm's keys: checkpoints rebuild with ``build_encoder``."""
    cfg = ModelConfig(method="local+zca", **TINY)
    model = MoCo(cfg)
    model(_batch())  # move running statistics away from their init
    prefix = "encoder_q."
    state = {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    enc = build_encoder(cfg)
    enc.load_state_dict(state, strict=True)
    x = _batch()["view1"]
    enc.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc.embed(x), model.encoder_q.embed(x))
    assert {"queue.queue", "queue.ptr", "local_queue.queue", "local_queue.ptr"} <= set(
        model.state_dict()
    )


def test_prefill_puts_real_keys_in_the_queues_without_training() -> None:
    cfg = ModelConfig(
        method="local",
        shuffle_bn_splits=1,
        queue_size=16,
        local_queue_size=64,
        local_negatives="other_images",
    )
    model = MoCo(cfg)
    before = copy.deepcopy(model.encoder_k.state_dict())
    batch = _batch()
    model.prefill_queues(batch)
    with torch.no_grad():
        _, final = model.encoder_k.feature_maps(batch["view2"])
        k = F.normalize(model.encoder_k.project(final), dim=1)
    torch.testing.assert_close(model.queue.queue[:, :8], k.T)
    assert model.queue.ptr.item() == 8
    assert (
        model.local_queue is not None and model.local_queue.ptr.item() == (7 * 16) % 64
    )  # 7 valid pairs, wrapped
    for name, t in model.encoder_k.state_dict().items():
        if t.is_floating_point() and "running" not in name:
            assert torch.equal(t, before[name]), name


def test_zca_layers_follow_the_shuffle_bn_split() -> None:
    for placement in ("block", "pre_projector"):
        cfg = ModelConfig(
            method="zca", shuffle_bn_splits=2, zca_group_size=16, zca_placement=placement
        )
        model = MoCo(cfg)
        for enc in (model.encoder_q, model.encoder_k):
            zcas = [m for m in enc.modules() if isinstance(m, ZCAWhitening)]
            assert len(zcas) == 1 and zcas[0].num_splits == 2


def test_batch_top1_counts_rows_whose_own_key_is_nearest() -> None:
    from collapsekit.models.moco import _batch_top1

    q = torch.eye(4)
    assert _batch_top1(q, q) == 1.0
    assert _batch_top1(q, q[[1, 0, 2, 3]]) == 0.5  # rows 0 and 1 find each other's key
    out = MoCo(ModelConfig(method="mocov2", **TINY))(_batch())
    assert out.batch_top1 is not None and 0.0 <= out.batch_top1 <= 1.0


@pytest.mark.parametrize("negatives", ["same_image", "both"])
def test_full_forward_backward_with_same_image_local_negatives(negatives: str) -> None:
    cfg = ModelConfig(method="local+zca", **{**TINY, "local_negatives": negatives})
    model = MoCo(cfg)
    out = model(_batch())
    assert out.loss_local is not None and torch.isfinite(out.loss_local)
    # same_image keeps no queue of local keys (its negatives are the image's own points)
    assert (model.local_queue is None) == (negatives == "same_image")
    assert ("local_queue.queue" in model.state_dict()) == (negatives != "same_image")
    out.loss.backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())


@pytest.mark.parametrize("placement", ["block", "pre_projector"])
def test_one_process_whitens_the_samples_two_processes_would(placement: str) -> None:
    """Split emulation = 2 ranks: rank r holds samples n ≡ r (mod 2) for the queries and the
    blocks of the random key permutation for the keys; every BatchNorm and the ZCA layer (both
    placements) must normalise exactly those samples together."""
    cfg = ModelConfig(
        method="zca",
        shuffle_bn_splits=2,
        zca_group_size=4,
        zca_placement=placement,
        zca_eps=1e-6,
        **TINY,
    )
    torch.manual_seed(0)
    model = MoCo(cfg).double().train()
    b = 16  # 8 vectors per sub-batch: m = 2d for pre_projector
    batch = _batch(b=b)
    x, x2 = batch["view1"].double(), batch["view2"].double()
    rank_q = convert_split_bn(copy.deepcopy(model.encoder_q), 1)  # what one rank computes
    rank_k = convert_split_bn(copy.deepcopy(model.encoder_k), 1)
    with torch.no_grad():
        _, q = model._query_forward(x)
        for r in range(2):
            _, fmap = rank_q.feature_maps(x[r::2])
            torch.testing.assert_close(q[r::2], rank_q.project(fmap), rtol=1e-9, atol=1e-9)
        torch.manual_seed(5)
        _, k = model._key_forward(x2)
        torch.manual_seed(5)
        perm = torch.randperm(b)[split_order(b, 2)]
        for r in range(2):
            idx = perm[r * b // 2 : (r + 1) * b // 2]
            _, fmap = rank_k.feature_maps(x2[idx])
            ref = F.normalize(rank_k.project(fmap), dim=1)
            torch.testing.assert_close(k[idx], ref, rtol=1e-9, atol=1e-9)
        # the sub-batches matter: whitening the whole batch gives other vectors
        _, fmap_all = rank_q.feature_maps(x)
        assert not torch.allclose(q, rank_q.project(fmap_all), atol=1e-4)
