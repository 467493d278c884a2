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
encoders becomes a :class:`SplitBatchNorm2d` that normalises ``shuffle_bn_splits`` interleaved
sub-batches (sample ``n`` in sub-batch ``n mod S``) separately, and the key batch is randomly
permuted before the key forward and restored after it. ZCA layers always see the whole batch.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models.builder import Encoder, ModelConfig, build_encoder
from collapsekit.models.distributed import broadcast, concat_all_gather, is_dist, rank, world_size
from collapsekit.models.local import local_info_nce, overlap_grid, sample_local_features

__all__ = [
    "MoCo",
    "MoCoOutput",
    "Queue",
    "SplitBatchNorm2d",
    "convert_split_bn",
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


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from ``num_splits`` sub-batches separately.

    Sample ``n`` is normalised with the statistics of the samples ``n' ≡ n (mod num_splits)``; the
    running statistics are the average over sub-batches. Eval mode, ``num_splits = 1`` and
    ``torch.distributed`` runs (where each rank's batch is the sub-batch) behave like plain
    ``BatchNorm2d``. Same parameters, buffers and state-dict keys as ``BatchNorm2d``.
    """

    def __init__(self, num_features: int, num_splits: int = 2, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 1 if is_dist() else math.gcd(self.num_splits, x.shape[0])
        if s == 1 or not self.training or not self.track_running_stats:
            return super().forward(x)
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        n, c, h, w = x.shape
        self.num_batches_tracked.add_(1)
        momentum = (
            self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        )
        mean_s = self.running_mean.repeat(s)
        var_s = self.running_var.repeat(s)
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        out = F.batch_norm(
            x.reshape(n // s, c * s, h, w), mean_s, var_s, weight, bias, True, momentum, self.eps
        )
        with torch.no_grad():
            self.running_mean.copy_(mean_s.view(s, c).mean(0))
            self.running_var.copy_(var_s.view(s, c).mean(0))
        return out.reshape(n, c, h, w)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Turn every ``BatchNorm2d`` of ``module`` into a :class:`SplitBatchNorm2d`, in place.

    Parameters and running statistics are kept; existing split layers get the new ``num_splits``
    (``convert_split_bn(m, 1)`` makes them plain BatchNorm in behaviour, e.g. for fine-tuning).
    Returns ``module`` (or the replacement when ``module`` itself is a BatchNorm2d).
    """
    if isinstance(module, SplitBatchNorm2d):
        module.num_splits = num_splits
        return module
    if type(module) is nn.BatchNorm2d:
        new = SplitBatchNorm2d(
            module.num_features,
            num_splits,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        ref = next((t for t in module.state_dict().values() if t.is_floating_point()), None)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        new_child = convert_split_bn(child, num_splits)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


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
    """

    loss: torch.Tensor
    loss_global: torch.Tensor
    loss_local: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor
    local_valid_fraction: float | None


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

    Attributes:
        encoder_q: the trained :class:`~collapsekit.models.builder.Encoder`.
        encoder_k: its momentum copy (``requires_grad=False``).
        queue: :class:`Queue` of global keys ``(proj_dim, queue_size)``.
        local_queue: :class:`Queue` of local keys ``(local_dim, local_queue_size)`` or ``None``.

    In eval mode (e.g. a validation loss) the key encoder and the queues are left untouched.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_q: Encoder = build_encoder(cfg)
        if cfg.shuffle_bn_splits > 1:
            convert_split_bn(self.encoder_q, cfg.shuffle_bn_splits)
        self.encoder_k: Encoder = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.queue = Queue(cfg.proj_dim, cfg.queue_size)
        self.local_queue = Queue(cfg.local_dim, cfg.local_queue_size) if cfg.uses_local else None

    def _key_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key feature map and projection with shuffle-BN (inputs and outputs in batch order)."""
        enc = self.encoder_k
        if is_dist() and world_size() > 1:
            x_sh, idx_unshuffle = _batch_shuffle_ddp(x)
            fmap = enc.features(x_sh)
            proj = _batch_unshuffle_ddp(enc.project(fmap), idx_unshuffle)
            if self.cfg.uses_local:
                fmap = _batch_unshuffle_ddp(fmap, idx_unshuffle)
            return fmap, proj
        if self.cfg.shuffle_bn_splits > 1:
            perm = torch.randperm(x.shape[0], device=x.device)
            inv = torch.argsort(perm)
            fmap = enc.features(x[perm])
            return fmap[inv], enc.project(fmap)[inv]
        fmap = enc.features(x)
        return fmap, enc.project(fmap)

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
        v1, v2 = batch["view1"], batch["view2"]
        fq = self.encoder_q.features(v1)
        q = F.normalize(self.encoder_q.project(fq), dim=1)
        with torch.no_grad():
            if self.training:
                update_momentum(self.encoder_k, self.encoder_q, cfg.momentum)
            fk, k_proj = self._key_forward(v2)
            k = F.normalize(k_proj, dim=1)
        # clone: the queue is updated in place after the loss, before backward
        logits, labels = info_nce_logits(q, k, self.queue.queue.clone().detach(), cfg.temperature)
        loss_global = F.cross_entropy(logits, labels)
        loss = loss_global

        loss_local: torch.Tensor | None = None
        valid_fraction: float | None = None
        zk: torch.Tensor | None = None
        valid: torch.Tensor | None = None
        if cfg.uses_local:
            assert self.encoder_q.local_head is not None and self.encoder_k.local_head is not None
            assert self.local_queue is not None
            c1, c2, valid = overlap_grid(
                batch["box1"],
                batch["box2"],
                batch["flip1"],
                batch["flip2"],
                cfg.local_grid,
                v1.shape[-1],
                cfg.local_min_overlap,
            )
            zq = F.normalize(self.encoder_q.local_head(sample_local_features(fq, c1)), dim=-1)
            with torch.no_grad():
                zk = F.normalize(self.encoder_k.local_head(sample_local_features(fk, c2)), dim=-1)
            valid_fraction = float(valid.float().mean())
            # Key points of every rank (one process's negatives); this rank's positives start at offset.
            zk_all = concat_all_gather(zk)
            valid_all = concat_all_gather(valid.to(torch.uint8)).bool()  # gloo has no bool
            n_points = zk.shape[1]
            offset = int(valid_all[: rank() * zk.shape[0]].sum()) * n_points if is_dist() else 0
            if bool(valid.any()):
                loss_local, _, _ = local_info_nce(
                    zq[valid].reshape(-1, cfg.local_dim),
                    zk_all[valid_all].reshape(-1, cfg.local_dim),
                    self.local_queue.queue.clone().detach(),
                    cfg.temperature,
                    offset=offset,
                )
            else:  # keep the graph (and DDP's used-parameter set) intact
                loss_local = zq.sum() * 0.0
            loss = loss_global + cfg.local_weight * loss_local

        if self.training:
            self.queue.enqueue(concat_all_gather(k))
            if self.local_queue is not None and zk is not None and valid is not None:
                self.local_queue.enqueue(zk_all[valid_all].reshape(-1, cfg.local_dim))
        return MoCoOutput(
            loss=loss,
            loss_global=loss_global,
            loss_local=loss_local,
            logits=logits,
            labels=labels,
            local_valid_fraction=valid_fraction,
        )
