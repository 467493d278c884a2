"""Fine-tuning: ResNet encoder under MONAI's UNet decoder, all weights trained, 3D Dice."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError, DataError
from collapsekit.evaluation.segmentation.finetune import FinetuneConfig, SegmentationNet, finetune
from collapsekit.models.backbone import build_backbone
from collapsekit.progress import ProgressEvent, TaskAdvanced

LABELS = {1: "spleen", 2: "liver", 3: "gallbladder"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and 2 shared cores are not oversubscribed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_volume(case: str, seed: int, size: int = 32, z: int = 6) -> Volume:
    """Noise, a bright 12-px square (organ 1) and a grey 8-px square (organ 2) per slice."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(0.0, 0.15, (size, size, z)).astype(np.float32)
    lab = np.zeros((size, size, z), dtype=np.int64)
    for k in range(z):
        r, c = rng.integers(2, size - 14, 2)
        img[r : r + 12, c : c + 12, k] = 0.9
        lab[r : r + 12, c : c + 12, k] = 1
        r, c = rng.integers(2, size - 10, 2)
        free = lab[r : r + 8, c : c + 8, k] == 0
        img[r : r + 8, c : c + 8, k][free] = 0.5
        lab[r : r + 8, c : c + 8, k][free] = 2
    return Volume(case, img, lab, np.eye(4), np.arange(z))


@pytest.fixture(scope="module")
def data() -> tuple[list[Volume], list[Volume]]:
    return [make_volume(f"t{i}", i) for i in range(3)], [make_volume("v0", 100)]


FAST = FinetuneConfig(epochs=1, image_size=32, batch_size=6)


def test_segmentation_net_shapes_and_all_weights_train() -> None:
    torch.manual_seed(0)
    net = SegmentationNet(build_backbone("resnet18"), num_classes=4, image_size=32)
    x = torch.rand(3, 1, 32, 32)
    widths = [f.shape[1] for f in net.stages(x)]
    sizes = [f.shape[-1] for f in net.stages(x)]
    assert widths == [64, 64, 128, 256, 512] and sizes == [16, 8, 4, 2, 1]
    out = net(x)
    assert out.shape == (3, 4, 32, 32)
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(out, torch.randint(0, 4, (3, 32, 32))).backward()
    opt.step()
    changed = {k for k, p in net.named_parameters() if not torch.equal(before[k], p)}
    assert {"encoder.conv1.weight", "encoder.layer4.1.conv2.weight"} <= changed
    assert any(k.startswith("decoder.") for k in changed) and any(
        k.startswith("head.") for k in changed
    )


def test_finetune_runs_deterministically_and_leaves_the_backbone_alone(data) -> None:
    train, val = data
    torch.manual_seed(0)
    bb = build_backbone("resnet18")
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    events: list[ProgressEvent] = []
    r = finetune(bb, train, val, LABELS, FAST, name="rnd", progress=events.append)
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
    assert r.method == "finetune" and r.checkpoint == "rnd"
    assert len(r.history) == 1 and np.isfinite(r.history[0]["loss"])
    assert r.info["train_slices"] == 18
    assert [e.task for e in events if isinstance(e, TaskAdvanced)].count("finetune/train") == 1
    assert set(r.dice) == {"spleen", "liver", "gallbladder"} and r.dice["gallbladder"] is None
    assert r.config["decoder"] == "unet" and r.config["decoder_channels"] == [256, 128, 64, 32, 16]
    again = finetune(bb, train, val, LABELS, FAST)  # seeded: decoder init, shuffling
    assert again.history[0]["loss"] == r.history[0]["loss"] and again.per_volume == r.per_volume


@pytest.mark.slow
def test_finetune_learns(data) -> None:
    train, val = data
    torch.manual_seed(0)
    cfg = dataclasses.replace(FAST, epochs=20, lr=3e-3)
    r = finetune(build_backbone("resnet18"), train, val, LABELS, cfg)
    lab = val[0].label
    p = float((lab == 1).mean())
    assert r.dice["spleen"] > 2 * p / (1 + p) + 0.3  # far above predicting the organ everywhere
    assert r.history[-1]["loss"] < 0.5 * r.history[0]["loss"]


class _NotAResNet(nn.Module):
    in_channels = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_bad_inputs(data) -> None:
    train, val = data
    with pytest.raises(ConfigError, match="ResNet-style"):
        finetune(_NotAResNet(), train, val, LABELS, FAST)
    with pytest.raises(ConfigError, match="undilated"):
        finetune(build_backbone("resnet18").dilate(8), train, val, LABELS, FAST)
    with pytest.raises(ConfigError, match="did you mean 'unet'"):
        FinetuneConfig(decoder="unte")
    with pytest.raises(ConfigError, match="decoder_channels"):
        FinetuneConfig(decoder_channels=(64, 32))
    no_label = dataclasses.replace(train[1], label=None)
    with pytest.raises(DataError, match="training case 't1' has no label map"):
        finetune(build_backbone("resnet18"), [train[0], no_label], val, LABELS, FAST)
