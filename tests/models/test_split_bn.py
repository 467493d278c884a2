"""Split normalisation (shuffle-BN on one process): sub-batch statistics in contiguous blocks."""

from __future__ import annotations

import torch
from torch import nn

from collapsekit.models import SplitBatchNorm2d, convert_split_bn
from collapsekit.models.split_bn import split_order


def test_split_batchnorm_uses_contiguous_sub_batches() -> None:
    x = torch.randn(6, 3, 4, 4) * 2 + 1
    split = SplitBatchNorm2d(3, num_splits=2)
    with torch.no_grad():
        split.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        split.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))
    y = split(x)
    for s in range(2):
        sub = x[3 * s : 3 * s + 3]
        mean = sub.mean(dim=(0, 2, 3), keepdim=True)
        var = sub.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        ref = (sub - mean) / torch.sqrt(var + split.eps) * split.weight.view(
            1, 3, 1, 1
        ) + split.bias.view(1, 3, 1, 1)
        torch.testing.assert_close(y[3 * s : 3 * s + 3], ref, atol=1e-5, rtol=1e-5)
    unbiased = torch.stack([x[3 * s : 3 * s + 3].var(dim=(0, 2, 3)) for s in range(2)]).mean(0)
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


def test_split_batchnorm_is_the_same_in_channels_last() -> None:
    x = torch.randn(8, 4, 5, 5, dtype=torch.float64) * 3 - 1
    xc = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    xp = x.clone().requires_grad_()
    a = SplitBatchNorm2d(4, num_splits=2).double()
    b = SplitBatchNorm2d(4, num_splits=2).double()
    ya, yb = a(xp), b(xc)
    assert yb.is_contiguous(memory_format=torch.channels_last) and not yb.is_contiguous()
    torch.testing.assert_close(ya, yb)
    grad = torch.randn_like(x)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(xp.grad, xc.grad)
    torch.testing.assert_close(a.running_var, b.running_var)


def test_split_order_makes_interleaved_sub_batches_contiguous() -> None:
    assert split_order(6, 2).tolist() == [0, 2, 4, 1, 3, 5]
    assert split_order(6, 3).tolist() == [0, 3, 1, 4, 2, 5]
    assert split_order(6, 4).tolist() == [0, 2, 4, 1, 3, 5]  # gcd(4, 6) = 2, like the layers
    assert split_order(5, 2).tolist() == [0, 1, 2, 3, 4]
    # the layer's blocks of x[order] are the samples n = r (mod S) of x
    x = torch.randn(6, 2, 3, 3)
    layer = SplitBatchNorm2d(2, num_splits=2)
    y = layer(x[split_order(6, 2)])[torch.argsort(split_order(6, 2))]
    plain = torch.nn.BatchNorm2d(2)
    torch.testing.assert_close(y[0::2], plain(x[0::2]))
    torch.testing.assert_close(y[1::2], plain(x[1::2]))
