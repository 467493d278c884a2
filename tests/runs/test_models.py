from __future__ import annotations

from pathlib import Path

import pytest
import torch

from collapsekit.errors import CheckpointError, ConfigError
from collapsekit.models.backbone import build_backbone
from collapsekit.runs.models import infer_arch, load_model


def test_random_baseline_is_seeded_and_eval() -> None:
    a, b = load_model("random:resnet18"), load_model("random:resnet18")
    assert a.kind == "random" and a.name == "random:resnet18"
    assert not a.backbone.training
    for (ka, va), (_, vb) in zip(
        a.backbone.state_dict().items(), b.backbone.state_dict().items(), strict=True
    ):
        assert torch.equal(va, vb), ka


def test_random_unknown_arch_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet50'"):
        load_model("random:resnet05")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_infer_arch(arch: str) -> None:
    assert infer_arch(build_backbone(arch).state_dict()) == arch


def test_torchvision_style_state_dict_with_fc(tmp_path: Path) -> None:
    src = build_backbone("resnet18", in_channels=3)
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "tv.pth")
    m = load_model(tmp_path / "tv.pth")
    assert m.kind == "torchvision" and m.in_channels == 3 and m.backbone.arch == "resnet18"
    assert torch.equal(m.backbone.conv1.weight, src.conv1.weight)
    x = torch.rand(2, 1, 64, 64)
    src.eval()
    # A grayscale slice is replicated to the 3 RGB channels.
    assert torch.allclose(m.backbone(x), src(x.expand(-1, 3, -1, -1)), atol=1e-6)


def test_official_moco_checkpoint(tmp_path: Path) -> None:
    src = build_backbone("resnet50", in_channels=3)
    sd = {f"module.encoder_q.{k}": v for k, v in src.state_dict().items()}
    sd["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)
    sd["module.encoder_k.conv1.weight"] = torch.zeros(64, 3, 7, 7)
    sd["module.queue"] = torch.zeros(128, 16)
    torch.save(
        {"epoch": 200, "arch": "resnet50", "state_dict": sd}, tmp_path / "moco_v2_200ep.pth.tar"
    )
    m = load_model(tmp_path / "moco_v2_200ep.pth.tar")
    assert m.kind == "moco-official" and m.backbone.arch == "resnet50" and m.in_channels == 3
    assert torch.equal(m.backbone.layer4[2].conv3.weight, src.layer4[2].conv3.weight)


def test_unrecognised_keys_listed(tmp_path: Path) -> None:
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(
        CheckpointError, match=r"unrecognised checkpoint.*foo\.weight.*official MoCo"
    ):
        load_model(tmp_path / "x.pt")


def test_wrong_shapes_rejected(tmp_path: Path) -> None:
    state = dict(build_backbone("resnet18").state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="size mismatch for layer1.0.conv1.weight"):
        load_model(tmp_path / "bad.pt")


def test_directory_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="without checkpoint.pt"):
        load_model(tmp_path)


def test_extract_head_from_an_encoder_passed_directly() -> None:
    import numpy as np

    from collapsekit.data.volume import Volume
    from collapsekit.evaluation.extract import extract_embeddings
    from collapsekit.models import ModelConfig, build_encoder

    enc = build_encoder(ModelConfig(method="mocov2")).eval()
    vol = Volume(
        "v",
        np.random.default_rng(0).random((32, 32, 3), dtype=np.float32),
        None,
        np.eye(4),
        np.arange(3),
    )
    head = extract_embeddings(enc, [vol], image_size=32, mode="head")
    pooled = extract_embeddings(enc, [vol], image_size=32, mode="backbone")
    assert head.z.shape == (3, 128) and pooled.z.shape == (3, 512)
    with torch.no_grad():
        x = torch.from_numpy(np.moveaxis(vol.image, -1, 0)[:, None].copy())
        np.testing.assert_allclose(head.z, enc(x).numpy(), rtol=1e-4, atol=1e-5)
