"""Split normalisation (shuffle-BN on one process): interleaved sub-batch statistics."""

from __future__ import annotations

import torch
from torch import nn

from collapsekit.models import SplitBatchNorm2d, convert_split_bn


def test_split_batchnorm_uses_interleaved_sub_batches() -> None:
    x = torch.randn(6, 3, 4, 4) * 2 + 1
    split = SplitBatchNorm2d(3, num_splits=2)
    with torch.no_grad():
        split.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        split.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    y = split(x)
    for s in range(2):
        sub = x[s::2]
        mean = sub.mean(dim=(0, 2, 3), keepdim=True)
        var = sub.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        ref = (sub - mean) / torch.sqrt(var + split.eps) * split.weight.view(
            1, 3, 1, 1
        ) + split.bias.view(1, 3, 1, 1)
        torch.testing.assert_close(y[s::2], ref, atol=1e-5, rtol=1e-5)
    unbiased = torch.stack([x[s::2].var(dim=(0, 2, 3)) for s in range(2)]).mean(0)
    torch.testing.assert_close(split.running_var, 0.9 + 0.1 * unbiased)
    split.eval()
    plain = nn.BatchNorm2d(3)
    plain.load_state_dict(split.state_dict())
    plain.eval()
    torch.testing.assert_close(split(x), plain(x))


def test_convert_split_bn_keeps_state_and_keys() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    keys = list(net.state_dict())
    net[1].running_mean.fill_(0.3)
    convert_split_bn(net, 4)
    assert isinstance(net[1], SplitBatchNorm2d) and isinstance(net[2][0], SplitBatchNorm2d)
    assert net[1].num_splits == 4 and list(net.state_dict()) == keys
    assert torch.all(net[1].running_mean == 0.3)
