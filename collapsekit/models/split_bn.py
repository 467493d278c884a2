"""Split normalisation: MoCo's single-process emulation of shuffle-BN.

Under ``torch.distributed`` MoCo shuffles the key batch across ranks so that a query and its
positive key are normalised with different statistics (He et al., CVPR 2020, §3.3). On one process a
shuffle alone changes nothing, so, like the official MoCo single-GPU demo, normalisation layers
compute their training statistics over ``num_splits`` interleaved sub-batches (sample ``n`` in
sub-batch ``n mod S``) and the key batch is permuted first. :func:`convert_split_bn` applies the
rule to every BatchNorm2d *and* every ZCA whitening layer of a module: whitening statistics shared
by a whole batch would reintroduce the shortcut shuffle-BN removes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.models.distributed import is_dist
from collapsekit.models.zca import ZCAWhitening

__all__ = ["SplitBatchNorm2d", "convert_split_bn"]


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
