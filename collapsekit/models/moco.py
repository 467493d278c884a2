"""MoCo v2 (+ local feature learning), built from small parts.

Faithful to facebookresearch/moco ``moco/builder.py`` (He et al. CVPR 2020; Chen et al. 2020,
arXiv 2003.04297): ``q = normalize(f_q(view1))``; under ``no_grad`` the key encoder is first
updated ``θ_k ← m θ_k + (1 − m) θ_q`` and then computes ``k = normalize(f_k(view2))`` with
shuffled BatchNorm; ``logits = [q·k⁺ | q·queue] / T`` with label 0 and cross-entropy; the keys are
enqueued after the loss (gathered from every rank). The loss is not symmetrised (that is not
MoCo v2). With the local branch (Hassanpour et al., ISBI 2024; see :mod:`collapsekit.models.local`)
the total is ``L = L_global + λ L_local``.

Shuffle-BN: under ``torch.distributed`` the key batch is shuffled across ranks exactly like
MoCo's ``_batch_shuffle_ddp``. On one process a shuffle alone changes nothing (BatchNorm sees the
same set of samples), so, like the official MoCo single-GPU demo, every ``BatchNorm2d`` of both
encoders becomes a :class:`~collapsekit.models.split_bn.SplitBatchNorm2d` that normalises
``shuffle_bn_splits`` sub-batches separately (query sample ``n`` in sub-batch ``n mod S``, as the
distributed sampler would shard it), and the key batch is randomly permuted before the key forward
and restored after it. ZCA layers follow the same rule (per sub-batch on one process, per rank
under DDP).

The queues start as random unit vectors (as in MoCo); :meth:`MoCo.prefill_queues` replaces them
by real keys before the first update, so no step trains against noise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models.builder import Encoder, ModelConfig, build_encoder
from collapsekit.models.distributed import broadcast, concat_all_gather, is_dist, rank, world_size
from collapsekit.models.local import (
    close_points,
    local_info_nce,
    local_info_nce_loss,
    local_negative_mask,
    overlap_grid,
    sample_local_features,
)
from collapsekit.models.split_bn import convert_split_bn, split_order

__all__ = [
    "MoCo",
    "MoCoOutput",
    "Queue",
    "info_nce_logits",
    "update_momentum",
]


class Queue(nn.Module):
    """FIFO of L2-normalised vectors stored as buffers (MoCo's dictionary).

    Args:
        dim: vector width ``C``.
        size: number of slots ``K``.

    Buffers:
        ``queue`` ``(C, K)``: random unit columns at init (as in MoCo); ``ptr`` ``(1,)`` long: the
        next slot to write.
    """

    queue: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"queue dim and size must be >= 1, got {dim}, {size}")
        self.dim, self.size = dim, size
        self.register_buffer("queue", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` ``(n, C)`` at the pointer, wrapping around; the pointer moves by ``n``.

        Any ``n`` works (``K mod n ≠ 0`` wraps); when ``n > K`` only the last ``K`` keys are kept.
        """
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) keys, got shape {tuple(keys.shape)}")
        n = keys.shape[0]
        if n == 0:
            return
        ptr = int(self.ptr.item())
        skip = max(0, n - self.size)
        keys = keys[skip:].detach().to(self.queue.dtype)
        idx = (ptr + skip + torch.arange(keys.shape[0], device=self.queue.device)) % self.size
        self.queue[:, idx] = keys.t()
        self.ptr[0] = (ptr + n) % self.size


@torch.no_grad()
def update_momentum(model_k: nn.Module, model_q: nn.Module, m: float) -> None:
    """Momentum update ``θ_k ← m θ_k + (1 − m) θ_q`` of parameters; buffers are copied from ``q``.

    The two modules must have the same structure (``model_k`` is a deep copy of ``model_q``).
    """
    for pk, pq in zip(model_k.parameters(), model_q.parameters(), strict=True):
        pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)
    for bk, bq in zip(model_k.buffers(), model_q.buffers(), strict=True):
        bk.copy_(bq)


def info_nce_logits(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo logits ``[q·k⁺ | q·queue] / T`` and labels (all 0: the positive is column 0).

    Args:
        q: ``(N, C)`` normalised queries.
        k: ``(N, C)`` normalised positive keys.
        queue: ``(C, K)`` normalised negatives.
        temperature: ``T``.

    Returns:
        ``logits`` ``(N, 1 + K)`` and ``labels`` ``(N,)`` long zeros. For a perfect pair
        (``q = k``) and a queue orthogonal to it, the cross-entropy is ``log(1 + K e^{−1/T})``.
    """
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # q: N×C, k: N×C -> N×1
    l_neg = torch.einsum("nc,ck->nk", q, queue)  # q: N×C, queue: C×K -> N×K
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return logits, labels


@dataclass
class MoCoOutput:
    """What one MoCo step returns.

    Attributes:
        loss: ``L_global + λ L_local`` (or ``L_global``), the scalar to back-propagate.
        loss_global: the MoCo InfoNCE loss.
        loss_local: the local InfoNCE loss, ``None`` without the local branch.
        logits: ``(N, 1 + K)`` global logits (already divided by ``T``).
        labels: ``(N,)`` zeros.
        local_valid_fraction: fraction of pairs whose overlap passed ``local_min_overlap``.
        batch_top1: fraction of queries whose own key is the nearest among the batch's keys (same
            key encoder and statistics, so no "fresh key" shortcut: a health signal; chance 1/B).
    """

    loss: torch.Tensor
    loss_global: torch.Tensor
    loss_local: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor
    local_valid_fraction: float | None
    batch_top1: float | None = None


@dataclass
class _LocalKeys:
    """Key points of the local branch: this rank's valid-pair mask, every rank's valid points."""

    valid: torch.Tensor  # (B,) bool, this rank's valid pairs
    all_valid_points: torch.Tensor  # (M, D) valid key points of every rank, rank order


@torch.no_grad()
def _batch_top1(q: torch.Tensor, k: torch.Tensor) -> float:
    """Fraction of rows whose positive key is the most similar key of the batch."""
    sim = q @ k.t()  # q: N×C, k: N×C -> N×N
    return float((sim.argmax(dim=1) == torch.arange(q.shape[0], device=q.device)).float().mean())


@torch.no_grad()
def _batch_shuffle_ddp(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MoCo's cross-rank shuffle: this rank's slice of a random permutation of the global batch."""
    x_all = concat_all_gather(x)
    n_all = x_all.shape[0]
    idx_shuffle = broadcast(torch.randperm(n_all, device=x.device), src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    idx_this = idx_shuffle.view(world_size(), -1)[rank()]
    return x_all[idx_this], idx_unshuffle


@torch.no_grad()
def _batch_unshuffle_ddp(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    x_all = concat_all_gather(x)
    return x_all[idx_unshuffle.view(world_size(), -1)[rank()]]


class MoCo(nn.Module):
    """MoCo v2 with the optional local branch and ZCA whitening selected by ``cfg.method``.

    Args:
        cfg: the :class:`~collapsekit.models.builder.ModelConfig`.
        fused_local_loss: compute the local loss with
            :func:`~collapsekit.models.local.local_info_nce_loss` (one autograd node, about half
            the time) instead of the plain :func:`~collapsekit.models.local.local_info_nce`; the
            same value and gradient to float rounding. A speed switch, not part of the model
            (``TrainConfig.fused_local_loss``).

    Attributes:
        encoder_q: the trained :class:`~collapsekit.models.builder.Encoder`.
        encoder_k: its momentum copy (``requires_grad=False``).
        queue: :class:`Queue` of global keys ``(proj_dim, queue_size)``.
        local_queue: :class:`Queue` of local keys ``(local_dim, local_queue_size)`` or ``None``.

    In eval mode (e.g. a validation loss) the key encoder and the queues are left untouched.
    """

    def __init__(self, cfg: ModelConfig, *, fused_local_loss: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.fused_local_loss = fused_local_loss
        self.encoder_q: Encoder = build_encoder(cfg)
        if cfg.shuffle_bn_splits > 1:
            convert_split_bn(self.encoder_q, cfg.shuffle_bn_splits)
        self.encoder_k: Encoder = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.queue = Queue(cfg.proj_dim, cfg.queue_size)
        self.local_queue = (
            Queue(cfg.local_dim, cfg.local_queue_size) if cfg.uses_local_queue else None
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> MoCoOutput:
        """One MoCo step on a two-view batch.

        Args:
            batch: ``view1``, ``view2`` ``(B, 1, S, S)``; for the local branch also ``box1``,
                ``box2`` ``(B, 4)`` crop boxes ``(y0, x0, y1, x1)`` in source pixels and ``flip1``,
                ``flip2`` ``(B,)`` bool.

        Returns:
            :class:`MoCoOutput`.
        """
        cfg = self.cfg
        local_q, q = self._query_forward(batch["view1"])
        q = F.normalize(q, dim=1)
        with torch.no_grad():
            if self.training:
                update_momentum(self.encoder_k, self.encoder_q, cfg.momentum)
            local_map_k, k = self._key_forward(batch["view2"])
        # clone: the queue is updated in place after the loss, before backward
        logits, labels = info_nce_logits(q, k, self.queue.queue.clone().detach(), cfg.temperature)
        loss_global = F.cross_entropy(logits, labels)
        loss_local, local_keys = None, None
        if cfg.uses_local:
            local_keys = self._local_keys(batch, local_map_k)
            loss_local = self._local_loss(batch, local_q, local_keys)
        loss = loss_global if loss_local is None else loss_global + cfg.local_weight * loss_local
        if self.training:
            self._enqueue(k, local_keys)
        return MoCoOutput(
            loss=loss,
            loss_global=loss_global,
            loss_local=loss_local,
            logits=logits,
            labels=labels,
            local_valid_fraction=None
            if local_keys is None
            else float(local_keys.valid.float().mean()),
            batch_top1=_batch_top1(q.detach(), k),
        )

    @torch.no_grad()
    def prefill_queues(self, batch: dict[str, torch.Tensor]) -> None:
        """Enqueue the keys of ``batch`` without a training step (no gradient, no momentum update).

        Called on the first ``ceil(K / B)`` batches of a fresh run, so the first update contrasts
        against real keys instead of MoCo's random initial queue.
        """
        local_map_k, k = self._key_forward(batch["view2"])
        keys = self._local_keys(batch, local_map_k) if self.cfg.uses_local else None
        self._enqueue(k, keys)

    @torch.no_grad()
    def _enqueue(self, k: torch.Tensor, local_keys: _LocalKeys | None) -> None:
        self.queue.enqueue(concat_all_gather(k))
        if self.local_queue is not None and local_keys is not None:
            self.local_queue.enqueue(local_keys.all_valid_points)

    def _query_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query local feature map and projector output ``(B, proj_dim)``, in batch order.

        With split normalisation the encoder sees the batch in :func:`split_order`, so the
        layers' contiguous sub-batches are the samples ``n ≡ r (mod S)`` (what rank ``r`` of
        ``S`` would get from the distributed sampler). The projection runs in that order too, so
        a ``pre_projector`` whitening uses the same sub-batches as every BatchNorm.
        """
        enc = self.encoder_q
        if self.cfg.shuffle_bn_splits == 1:
            local_map, final = enc.feature_maps(x)
            return local_map, enc.project(final)
        order = split_order(x.shape[0], self.cfg.shuffle_bn_splits, x.device)
        inv = torch.argsort(order)
        local_map, final = enc.feature_maps(x[order])
        return local_map[inv], enc.project(final)[inv]

    @torch.no_grad()
    def _key_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key local feature map and normalised key ``(B, proj_dim)``, with shuffle-BN.

        Inputs and outputs are in batch order; the encoder sees a shuffled batch (across ranks
        under DDP, a random permutation with split normalisation on one process).
        """
        enc = self.encoder_k
        if is_dist() and world_size() > 1:
            x_sh, idx_unshuffle = _batch_shuffle_ddp(x)
            local_map, final = enc.feature_maps(x_sh)
            k = _batch_unshuffle_ddp(enc.project(final), idx_unshuffle)
            if self.cfg.uses_local:
                local_map = _batch_unshuffle_ddp(local_map, idx_unshuffle)
        elif self.cfg.shuffle_bn_splits > 1:
            # a random permutation; its interleaved sub-batches become the layers' blocks
            perm = torch.randperm(x.shape[0], device=x.device)
            perm = perm[split_order(x.shape[0], self.cfg.shuffle_bn_splits, x.device)]
            inv = torch.argsort(perm)
            local_map, final = enc.feature_maps(x[perm])
            local_map, k = local_map[inv], enc.project(final)[inv]
        else:
            local_map, final = enc.feature_maps(x)
            k = enc.project(final)
        return local_map, F.normalize(k, dim=1)

    def _grid(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return overlap_grid(
            batch["box1"],
            batch["box2"],
            batch["flip1"],
            batch["flip2"],
            self.cfg.local_grid,
            batch["view1"].shape[-1],
            self.cfg.local_min_overlap,
        )

    def _exclude(
        self,
        batch: dict[str, torch.Tensor],
        n_queries: int,
        n_keys: int,
        offset: int,
        fmap: torch.Tensor,
    ) -> torch.Tensor | None:
        """The key points that are not negatives of each valid query point (``local_negatives``)."""
        cfg = self.cfg
        p = cfg.local_grid**2
        close = None
        if cfg.local_negatives != "other_images" and cfg.local_min_distance > 0:
            c1, c2, valid = self._grid(batch)
            size = (fmap.shape[-2], fmap.shape[-1])
            close = close_points(c1[valid], size, cfg.local_min_distance) | close_points(
                c2[valid], size, cfg.local_min_distance
            )
        return local_negative_mask(
            n_queries, n_keys, p, cfg.local_negatives, offset, close, fmap.device
        )

    @torch.no_grad()
    def _local_keys(self, batch: dict[str, torch.Tensor], local_map_k: torch.Tensor) -> _LocalKeys:
        assert self.encoder_k.local_head is not None
        _, c2, valid = self._grid(batch)
        zk = F.normalize(self.encoder_k.local_head(sample_local_features(local_map_k, c2)), dim=-1)
        # every rank's key points, so each rank sees the negatives one process would see
        zk_all = concat_all_gather(zk)
        valid_all = concat_all_gather(valid.to(torch.uint8)).bool()  # gloo has no bool
        return _LocalKeys(valid, zk_all[valid_all].reshape(-1, self.cfg.local_dim))

    def _local_loss(
        self, batch: dict[str, torch.Tensor], local_map_q: torch.Tensor, keys: _LocalKeys
    ) -> torch.Tensor:
        """Per-point InfoNCE between corresponding points of the two views (see ``local.py``)."""
        cfg = self.cfg
        assert self.encoder_q.local_head is not None
        c1, _, valid = self._grid(batch)
        zq = F.normalize(self.encoder_q.local_head(sample_local_features(local_map_q, c1)), dim=-1)
        if not bool(valid.any()):  # keep the graph (and DDP's used-parameter set) intact
            return zq.sum() * 0.0
        n_points = zq.shape[1]
        # this rank's positives start after the valid points of the ranks before it
        offset = int(concat_all_gather(valid.to(torch.uint8))[: rank() * valid.shape[0]].sum())
        zq_valid, zk = zq[valid].reshape(-1, cfg.local_dim), keys.all_valid_points
        exclude = self._exclude(
            batch, zq_valid.shape[0], zk.shape[0], offset * n_points, local_map_q
        )
        queue = None if self.local_queue is None else self.local_queue.queue
        if self.fused_local_loss:  # copies the queue itself (it is updated before backward)
            return local_info_nce_loss(
                zq_valid, zk, queue, cfg.temperature, offset=offset * n_points, exclude=exclude
            )
        loss, _, _ = local_info_nce(
            zq_valid,
            zk,
            None if queue is None else queue.clone().detach(),  # updated in place before backward
            cfg.temperature,
            offset=offset * n_points,
            exclude=exclude,
        )
        return loss
