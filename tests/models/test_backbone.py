"""Backbone helpers: BatchNorm recalibration equals the data's own statistics."""

from __future__ import annotations

import pytest
import torch

from collapsekit.models import build_backbone, recalibrate_batch_norm


def test_recalibrated_stem_statistics_equal_the_data_statistics() -> None:
    torch.manual_seed(0)
    net = build_backbone("resnet18").eval()
    x = torch.rand(40, 1, 32, 32)
    weights = {
        k: v.clone()
        for k, v in net.state_dict().items()
        if "running" not in k and "tracked" not in k
    }
    recalibrate_batch_norm(net, x, batch_size=16)  # chunks of 16, 16, 8: exact averages
    with torch.no_grad():
        a = net.conv1(x)  # the stem BatchNorm's input
    mean = a.mean(dim=(0, 2, 3))
    # update_bn averages per-chunk statistics weighted equally per batch (cumulative average)
    chunks = [a[i : i + 16] for i in range(0, 40, 16)]
    var = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in chunks]).mean(0)
    cmean = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
    torch.testing.assert_close(net.bn1.running_mean, cmean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(net.bn1.running_var, var, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(cmean, torch.zeros_like(mean))
    assert not net.training
    for k, v in net.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


@pytest.mark.parametrize(
    ("stem", "undilated"),
    [({}, 32), ({"conv1_t_stride": 1}, 16), ({"conv1_t_stride": 1, "no_max_pool": True}, 8)],
)
def test_stride_is_the_true_output_stride_for_every_stem(stem: dict, undilated: int) -> None:
    """MONAI's stem settings (foreign weights) change the output stride; ``stride`` says it, and
    dilation divides it as for the usual stem (16: /2, 8: /4)."""
    bb = build_backbone("resnet18", **stem).eval()
    with torch.no_grad():
        assert bb.forward_features(torch.zeros(1, 1, 64, 64)).shape[-1] == 64 // undilated
    assert bb.stride == bb.undilated_stride == undilated
    bb.dilate(8)
    with torch.no_grad():
        assert bb.forward_features(torch.zeros(1, 1, 64, 64)).shape[-1] == 64 // (undilated // 4)
    assert bb.stride == undilated // 4 and bb.undilated_stride == undilated


def test_monai_default_downsample_bias_is_built_when_asked() -> None:
    from monai.networks.nets import resnet18

    bb = build_backbone("resnet18", conv1_t_stride=1, bias_downsample=True)
    ref = resnet18(spatial_dims=2, n_input_channels=1, feed_forward=False)  # MONAI's defaults
    assert {k: v.shape for k, v in bb.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
