"""Backbone export: plain state dicts that load strictly into MONAI / torchvision-keyed ResNets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import resnet18, resnet50
from torch import nn

from collapsekit.errors import CheckpointError, ConfigError, OutputError
from collapsekit.models import ModelConfig, ZCAWhitening, build_backbone, build_encoder
from collapsekit.models.backbone import Backbone
from collapsekit.runs.export import (
    backbone_state_dict,
    export_backbone,
    fold_block_zca,
    monai_resnet_kwargs,
)
from collapsekit.runs.models import load_model, model_from_object

# The README's lines: what a user types to rebuild the network the export loads into.
README_MONAI_KWARGS = {
    "spatial_dims": 2,
    "n_input_channels": 1,
    "conv1_t_stride": 2,
    "bias_downsample": False,
    "feed_forward": False,
}

# torchvision.models.resnet18().state_dict(): names and shapes, written out from torchvision's
# architecture (BasicBlock = conv1 bn1 relu conv2 bn2 [downsample = conv1x1, BatchNorm]; stem
# conv1 3->64 7x7, fc 512->1000). torchvision itself is not imported (its wheel is broken here).
TORCHVISION_RESNET18 = """
conv1.weight 64 3 7 7
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked
layer1.0.conv1.weight 64 64 3 3
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked
layer1.0.conv2.weight 64 64 3 3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked
layer1.1.conv1.weight 64 64 3 3
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked
layer1.1.conv2.weight 64 64 3 3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked
layer2.0.conv1.weight 128 64 3 3
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.bn1.running_mean 128
layer2.0.bn1.running_var 128
layer2.0.bn1.num_batches_tracked
layer2.0.conv2.weight 128 128 3 3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked
layer2.0.downsample.0.weight 128 64 1 1
layer2.0.downsample.1.weight 128
layer2.0.downsample.1.bias 128
layer2.0.downsample.1.running_mean 128
layer2.0.downsample.1.running_var 128
layer2.0.downsample.1.num_batches_tracked
layer2.1.conv1.weight 128 128 3 3
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked
layer2.1.conv2.weight 128 128 3 3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked
layer3.0.conv1.weight 256 128 3 3
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.bn1.running_mean 256
layer3.0.bn1.running_var 256
layer3.0.bn1.num_batches_tracked
layer3.0.conv2.weight 256 256 3 3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked
layer3.0.downsample.0.weight 256 128 1 1
layer3.0.downsample.1.weight 256
layer3.0.downsample.1.bias 256
layer3.0.downsample.1.running_mean 256
layer3.0.downsample.1.running_var 256
layer3.0.downsample.1.num_batches_tracked
layer3.1.conv1.weight 256 256 3 3
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked
layer3.1.conv2.weight 256 256 3 3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked
layer4.0.conv1.weight 512 256 3 3
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.bn1.running_mean 512
layer4.0.bn1.running_var 512
layer4.0.bn1.num_batches_tracked
layer4.0.conv2.weight 512 512 3 3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked
layer4.0.downsample.0.weight 512 256 1 1
layer4.0.downsample.1.weight 512
layer4.0.downsample.1.bias 512
layer4.0.downsample.1.running_mean 512
layer4.0.downsample.1.running_var 512
layer4.0.downsample.1.num_batches_tracked
layer4.1.conv1.weight 512 512 3 3
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked
layer4.1.conv2.weight 512 512 3 3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked
fc.weight 1000 512
fc.bias 1000
"""


def _torchvision_keys() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in TORCHVISION_RESNET18.strip().splitlines():
        name, *dims = line.split()
        out[name] = tuple(int(d) for d in dims)
    return out


def _used(backbone: Backbone, size: int = 64) -> Backbone:
    """A backbone whose BatchNorm (and ZCA) running statistics are not the init's (0, 1)."""
    backbone.train()
    with torch.no_grad():
        for _ in range(2):
            backbone(torch.rand(16, backbone.in_channels, size, size))
    return backbone.eval()


def _zca_backbone(placement: str = "block", arch: str = "resnet18") -> Backbone:
    cfg = ModelConfig(arch=arch, method="zca", zca_placement=placement, zca_group_size=64)
    enc = build_encoder(cfg)
    zca = enc.backbone.last_norm()
    if isinstance(zca, ZCAWhitening):
        zca.momentum = 1.0  # running statistics = the last batch's: far from the identity
        with torch.no_grad():
            zca.weight.copy_(0.5 + torch.rand(zca.num_features))
            zca.bias.copy_(torch.randn(zca.num_features))
    # 128 px: 4x4 positions x 16 images = 256 samples per statistic for groups of 64
    return _used(enc.backbone, size=128)


@pytest.mark.parametrize(("arch", "ctor"), [("resnet18", resnet18), ("resnet50", resnet50)])
def test_monai_export_loads_strictly_and_gives_the_same_features(arch: str, ctor: object) -> None:
    backbone = _used(build_backbone(arch))
    state, folded = backbone_state_dict(backbone, "monai")
    assert not folded
    assert monai_resnet_kwargs(backbone) == {
        **README_MONAI_KWARGS,
        "conv1_t_size": 7,
        "no_max_pool": False,
        "shortcut_type": "B",
    }
    net = ctor(**README_MONAI_KWARGS)  # type: ignore[operator]
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), backbone(x), rtol=0, atol=1e-6)


def test_block_zca_is_folded_into_conv_and_batchnorm() -> None:
    backbone = _zca_backbone("block")
    zca = backbone.last_norm()
    assert isinstance(zca, ZCAWhitening)
    state, folded = backbone_state_dict(backbone, "monai")
    assert folded
    net = resnet18(**README_MONAI_KWARGS)
    net.load_state_dict(state, strict=True)  # a plain ResNet: no running_cov, no extra keys
    net.eval()
    x = torch.rand(4, 1, 96, 96)
    with torch.no_grad():
        ref = backbone(x)
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    # the source is untouched: it still whitens
    assert backbone.last_norm() is zca

    # the folded BatchNorm, against an independent numpy computation of M = diag(gamma) W
    cov = zca.running_cov.double().numpy()
    lam, u = np.linalg.eigh(cov)
    w = np.einsum("gij,gj,gkj->gik", u, 1.0 / np.sqrt(np.clip(lam, 0, None) + zca.eps), u)
    m = np.zeros((512, 512))
    for g in range(zca.num_groups):
        sl = slice(64 * g, 64 * (g + 1))
        m[sl, sl] = w[g]
    m = zca.weight.detach().double().numpy()[:, None] * m
    mu = zca.running_mean.double().numpy()
    bn = "layer4.1.bn2."
    np.testing.assert_allclose(state[bn + "running_mean"].numpy(), m @ mu, rtol=1e-4, atol=1e-5)
    full_cov = np.zeros((512, 512))
    for g in range(zca.num_groups):
        full_cov[64 * g : 64 * (g + 1), 64 * g : 64 * (g + 1)] = cov[g]
    var = np.diag(m @ full_cov @ m.T)
    np.testing.assert_allclose(state[bn + "running_var"].numpy(), var, rtol=1e-4)
    np.testing.assert_allclose(state[bn + "weight"].numpy(), np.sqrt(var + 1e-5), rtol=1e-4)
    torch.testing.assert_close(state[bn + "bias"], zca.bias.detach())
    conv = backbone.layer4[1].conv2.weight.detach().double().numpy()
    np.testing.assert_allclose(
        state["layer4.1.conv2.weight"].numpy(),
        np.einsum("oc,cikl->oikl", m, conv),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.slow  # ResNet-50 forwards in train and eval mode (~6 s)
def test_block_zca_of_a_bottleneck_resnet_is_folded_into_conv3() -> None:
    backbone = _zca_backbone("block", arch="resnet50")
    state, folded = backbone_state_dict(backbone, "monai")
    assert folded and state["layer4.2.bn3.running_var"].shape == (2048,)
    net = resnet50(**README_MONAI_KWARGS)
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        ref = backbone(x)
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_pre_projector_zca_is_not_in_the_backbone() -> None:
    backbone = _zca_backbone("pre_projector")
    state, folded = backbone_state_dict(backbone, "monai")
    assert not folded
    assert state.keys() == backbone.state_dict().keys()


def test_zca_elsewhere_is_refused() -> None:
    backbone = build_backbone("resnet18")
    backbone.layer3[1].bn2 = ZCAWhitening(256, group_size=64)
    with pytest.raises(CheckpointError, match="layer3.1.bn2"):
        fold_block_zca(backbone)


def test_torchvision_export_has_torchvision_keys_and_an_rgb_stem() -> None:
    backbone = _zca_backbone("block")
    state, _ = backbone_state_dict(backbone, "torchvision")
    expected = _torchvision_keys()
    # every torchvision key but the classifier, which collapsekit never trained
    assert set(state) == set(expected) - {"fc.weight", "fc.bias"}
    for k, v in state.items():
        assert tuple(v.shape) == expected[k], k
    # the 1-channel stem split evenly over R, G, B
    stem = backbone.conv1.weight.detach()
    torch.testing.assert_close(state["conv1.weight"].sum(dim=1, keepdim=True), stem)
    assert torch.equal(state["conv1.weight"][:, 0], state["conv1.weight"][:, 2])

    # it loads strictly into a torchvision-layout ResNet with fc = Identity (MONAI's ResNet uses
    # torchvision's names; 3 input channels, no fc), and a grayscale slice copied to RGB gives
    # the run's features
    net = resnet18(**{**README_MONAI_KWARGS, "n_input_channels": 3})
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ref = backbone(x)
        got = net(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_export_reads_back_as_a_plain_backbone(tmp_path: Path) -> None:
    backbone = _zca_backbone("block")
    for fmt, channels in (("monai", 1), ("torchvision", 3)):
        state, _ = backbone_state_dict(backbone, fmt)
        torch.save(state, tmp_path / f"{fmt}.pt")
        loaded = load_model(tmp_path / f"{fmt}.pt")
        assert loaded.in_channels == channels and loaded.backbone.arch == "resnet18"
        assert not loaded.backbone.training
        x = torch.rand(2, 1, 64, 64)
        with torch.no_grad():
            ref = backbone(x)
            got = loaded.backbone(x)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_unknown_format_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'monai'"):
        export_backbone("random:resnet18", tmp_path / "b.pt", fmt="monia")


def test_refuses_random_and_embeddings_and_directories(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="random initialisation"):
        export_backbone("random:resnet18", tmp_path / "b.pt")
    np.save(tmp_path / "emb.npy", np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(CheckpointError, match="export needs a model; emb.npy holds embeddings"):
        export_backbone(tmp_path / "emb.npy", tmp_path / "b.pt")
    torch.save(build_backbone("resnet18").state_dict(), tmp_path / "src.pt")
    with pytest.raises(OutputError, match="is a directory"):
        export_backbone(tmp_path / "src.pt", tmp_path)
    with pytest.raises(OutputError, match="is the checkpoint being exported"):
        export_backbone(tmp_path / "src.pt", tmp_path / "src.pt", overwrite=True)
    assert not (tmp_path / "b.pt").exists()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    torch.save(_used(build_backbone("resnet18")).state_dict(), tmp_path / "src.pt")
    out = tmp_path / "b.pt"
    out.write_text("mine")
    with pytest.raises(OutputError, match="b.pt already exists; pass --overwrite"):
        export_backbone(tmp_path / "src.pt", out)
    assert out.read_text() == "mine"
    res = export_backbone(tmp_path / "src.pt", out, overwrite=True)
    assert res.size_bytes == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.pt", "src.pt"]  # no temp file left
    state = torch.load(out, weights_only=True)
    assert set(state) == set(build_backbone("resnet18").state_dict())


# ---- a real run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from collapsekit.train import TrainConfig, train

    cfg = TrainConfig(
        steps=2,
        batch_size=4,
        image_size=32,
        num_workers=0,
        device="cpu",
        phantom_cases=4,
        phantom_size=32,
        phantom_slices=6,
        monitor_samples=12,
        final_samples=0,  # no evaluation phantom for a final spectrum
        model=ModelConfig(method="local+zca", queue_size=16, local_queue_size=64),
    )
    out = tmp_path_factory.mktemp("export") / "run"
    train(cfg, out)
    return out


@pytest.mark.slow  # trains a tiny local+zca run (~8 s)
def test_export_of_a_run_loads_into_monai_with_the_runs_features(run_dir: Path) -> None:
    out = run_dir.parent / "backbone.pt"
    res = export_backbone(run_dir, out)
    assert res.path == out and res.format == "monai" and res.arch == "resnet18"
    assert res.zca_folded and res.in_channels == 1 and res.image_size == 32
    assert res.monai_kwargs["conv1_t_stride"] == 2
    ckpt_size = (run_dir / "checkpoint.pt").stat().st_size
    # the trunk alone: 11.2 M float32 parameters + BN statistics, about a third of the checkpoint
    assert 44e6 < out.stat().st_size < 46e6 and out.stat().st_size < ckpt_size / 3
    # torchvision's 11,689,512 less fc (513,000) less the two RGB stem channels (2 x 3,136)
    assert res.num_parameters == 11_170_240

    run = load_model(run_dir)  # the run's backbone, ZCA inside, eval mode
    net = resnet18(**README_MONAI_KWARGS)
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)
    net.eval()
    x = torch.rand(6, 1, 32, 32)
    with torch.no_grad():
        ref = run.backbone(x)
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

    # and collapsekit reads it back as a plain backbone state dict
    back = model_from_object(torch.load(out, weights_only=True), out)
    assert back.kind == "collapsekit-export" and back.encoder is None
    assert back.assumptions == () and back.image_size == 32  # read back from the file
    assert back.metadata is not None and back.metadata["zca_folded"] is True
    with torch.no_grad():
        torch.testing.assert_close(
            back.backbone(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())
        )
    assert isinstance(back.backbone.last_norm(), nn.BatchNorm2d)


def test_export_metadata_is_monais_kwargs_and_flexibleunet_rejects_the_export(
    tmp_path: Path,
) -> None:
    """The recorded ``model_kwargs`` build the MONAI ResNet that loads the file ``strict=True``
    (the metadata rides in the state dict's ``_metadata``, which ``load_state_dict`` ignores
    except for module versions). ``FlexibleUNet``'s ResNet-18/34 encoder uses MONAI's shortcut
    type A (a parameter-free, zero-padded identity), so the 18 tensors of the three
    ``downsample`` branches (conv weight + BN weight, bias, mean, var, count) are unexpected."""
    from monai.networks.nets import FlexibleUNet

    src = build_backbone("resnet18")
    torch.save(src.state_dict(), tmp_path / "src.pt")
    out = tmp_path / "export.pt"
    export_backbone(tmp_path / "src.pt", out)
    state = torch.load(out, weights_only=True)
    meta = state._metadata["collapsekit"]
    assert meta["format"] == "collapsekit-export" and meta["arch"] == "resnet18"
    assert meta["model_kwargs"] == {
        **README_MONAI_KWARGS,
        "conv1_t_size": 7,
        "no_max_pool": False,
        "shortcut_type": "B",
    }
    assert meta["hu_window"] is None and meta["in_channels"] == 1

    net = resnet18(**meta["model_kwargs"]).eval()
    net.load_state_dict(state, strict=True)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), src.eval()(x), rtol=0, atol=1e-5)

    unet = FlexibleUNet(in_channels=1, out_channels=2, backbone="resnet18", spatial_dims=2)
    missing, unexpected = unet.encoder.load_state_dict(state, strict=False)
    assert missing == [] and len(unexpected) == 18
    assert all(".downsample." in k for k in unexpected)
