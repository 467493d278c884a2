"""Split normalisation: MoCo's single-process emulation of shuffle-BN.

Under ``torch.distributed`` MoCo shuffles the key batch across ranks so that a query and its
positive key are normalised with different statistics (He et al., CVPR 2020, §3.3). On one process a
shuffle alone changes nothing, so, like the official MoCo single-GPU demo, normalisation layers
compute their training statistics over ``num_splits`` sub-batches and the key batch is permuted
first. :func:`convert_split_bn` applies the rule to every BatchNorm2d *and* every ZCA whitening
layer of a module: whitening statistics shared by a whole batch would reintroduce the shortcut
shuffle-BN removes.

The layers split a batch into ``S`` *contiguous* blocks (sample ``n`` of ``B`` in sub-batch
``⌊n S / B⌋``): each block is a view in any memory format (contiguous or ``channels_last``), so the
native BatchNorm kernel runs on it without a copy. :class:`~collapsekit.models.moco.MoCo` orders
the batch with :func:`split_order` before its encoders, so a sample's sub-batch there is
``n mod S``, the samples one of ``S`` ranks would get from the distributed sampler.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models.distributed import is_dist
from collapsekit.models.zca import ZCAWhitening

__all__ = ["SplitBatchNorm2d", "convert_split_bn", "split_order"]


def split_order(
    batch_size: int, num_splits: int, device: torch.device | None = None
) -> torch.Tensor:
    """The permutation that makes interleaved sub-batches contiguous blocks.

    ``x[split_order(B, S)]`` lists samples ``0, S, 2S, …, 1, 1 + S, …``: its ``r``-th block of
    ``B / S`` rows holds the samples ``n ≡ r (mod S)``. ``S`` is reduced to ``gcd(S, B)`` like the
    split layers do; ``argsort`` of the result undoes it.
    """
    s = math.gcd(num_splits, batch_size)
    return torch.arange(batch_size, device=device).view(batch_size // s, s).t().reshape(-1)


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from ``num_splits`` sub-batches separately.

    The batch of ``B`` is cut into ``S = gcd(num_splits, B)`` contiguous blocks (sample ``n`` in
    sub-batch ``⌊n S / B⌋``), each normalised by the native BatchNorm kernel with its own
    statistics (no copy in either memory format); the running statistics are the average over
    sub-batches. Eval mode, ``num_splits = 1`` and ``torch.distributed`` runs (where each rank's
    batch is the sub-batch) behave like plain ``BatchNorm2d``. Same parameters, buffers and
    state-dict keys as ``BatchNorm2d``.
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
        self.num_batches_tracked.add_(1)
        momentum = (
            self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        )
        # each block updates its own copy of the running statistics; they are averaged after
        means = [self.running_mean.clone() for _ in range(s)]
        variances = [self.running_var.clone() for _ in range(s)]
        out = torch.cat(
            [
                F.batch_norm(
                    block, mean, var, self.weight, self.bias, True, momentum, self.eps
                )  # block: a view of B/S samples
                for block, mean, var in zip(x.split(x.shape[0] // s), means, variances, strict=True)
            ]
        )
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return out


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Turn every ``BatchNorm2d`` of ``module`` into a :class:`SplitBatchNorm2d`, in place.

    Parameters and running statistics are kept; existing split layers get the new ``num_splits``
    (``convert_split_bn(m, 1)`` makes them plain BatchNorm in behaviour, e.g. for fine-tuning).
    :class:`~collapsekit.models.zca.ZCAWhitening` layers get ``num_splits`` too.
    Returns ``module`` (or the replacement when ``module`` itself is a BatchNorm2d).
    """
    if isinstance(module, SplitBatchNorm2d | ZCAWhitening):
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
