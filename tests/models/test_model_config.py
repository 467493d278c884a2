"""ModelConfig validation and encoder assembly for each method and ZCA placement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from collapsekit.errors import ConfigError
from collapsekit.models import METHODS, ModelConfig, ZCAWhitening, build_encoder


def test_defaults_and_flags() -> None:
    cfg = ModelConfig()
    assert (cfg.arch, cfg.method, cfg.zca_method, cfg.zca_group_size) == (
        "resnet18",
        "local+zca",
        "eigh",
        64,
    )
    flags = {m: (ModelConfig(method=m).uses_local, ModelConfig(method=m).uses_zca) for m in METHODS}
    assert flags == {
        "mocov2": (False, False),
        "local": (True, False),
        "zca": (False, True),
        "local+zca": (True, True),
    }
    assert ModelConfig(method="LOCAL+ZCA", arch="ResNet50").method == "local+zca"
    assert ModelConfig(arch="resnet50").backbone_width == 2048


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "mocov3"}, "did you mean 'mocov2'"),
        ({"arch": "resnet19"}, "unknown backbone"),
        ({"zca_placement": "blok"}, "did you mean 'block'"),
        ({"zca_method": "cholesky"}, "unknown zca method"),
        ({"zca_group_size": 48}, "must divide the resnet18 width 512"),
        ({"temperature": 0.0}, "temperature"),
        ({"momentum": 1.0}, "momentum"),
        ({"shuffle_bn_splits": 0}, "shuffle_bn_splits"),
        ({"local_min_overlap": 1.5}, "local_min_overlap"),
    ],
)
def test_bad_values_raise_config_error(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def _count_zca(module: nn.Module) -> int:
    return sum(isinstance(m, ZCAWhitening) for m in module.modules())


def test_zca_placements() -> None:
    # the measured default (docs/archive/collapse/): inside the last block
    assert ModelConfig().zca_placement == "block"
    block = build_encoder(ModelConfig(method="zca", zca_group_size=128, zca_placement="block"))
    norm = block.backbone.last_norm()
    assert isinstance(norm, ZCAWhitening) and (norm.num_features, norm.num_groups) == (512, 4)
    assert isinstance(block.pre_projector, nn.Identity) and _count_zca(block) == 1
    pre = build_encoder(ModelConfig(method="local+zca", zca_placement="pre_projector"))
    assert isinstance(pre.pre_projector, ZCAWhitening) and _count_zca(pre) == 1
    assert isinstance(pre.backbone.last_norm(), nn.BatchNorm2d)
    plain = build_encoder(ModelConfig(method="local"))
    assert _count_zca(plain) == 0 and plain.local_head is not None
    assert build_encoder(ModelConfig(method="mocov2")).local_head is None


def test_encoder_outputs() -> None:
    enc = build_encoder(ModelConfig(method="mocov2", proj_hidden=256, proj_dim=64)).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        fmap = enc.features(x)
        assert fmap.shape == (2, 512, 2, 2)
        torch.testing.assert_close(enc.embed(x), fmap.mean(dim=(2, 3)))
        z = enc(x)
    assert z.shape == (2, 64)
    assert (enc.projector.fc1.in_features, enc.projector.fc1.out_features) == (512, 256)
    assert isinstance(enc.projector.act, nn.ReLU)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in enc.projector.modules())  # MoCo v2
