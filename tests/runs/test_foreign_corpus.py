"""Checkpoints as other tools save them: collapsekit's features equal the original model's.

Issue 19's corpus. Each checkpoint is built from a freshly built model, saved in the tool's own
container (never from collapsekit's loader output), and loaded with :func:`load_model`; the
pooled features of the loaded backbone must equal the original model's on the same input
(max abs difference <= 1e-5), or the refusal must be one line naming what is missing.

torchvision and timm cannot be installed here, so their ResNets are rebuilt below with plain
``torch.nn`` modules of the same structure and attribute names (:class:`TorchvisionResNet`, the
torchvision v1.5 layout timm's ``resnet18``/``resnet50`` share); MONAI's come from MONAI, the
Lightning checkpoints from a real ``lightning.Trainer`` and solo-learn's ``cfg`` is a real OmegaConf
``DictConfig``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.networks.nets import resnet18 as monai_resnet18
from torch import nn

from collapsekit.errors import CheckpointError
from collapsekit.runs.models import LoadedModel, load_model

TOL = 1e-5


# -- torchvision's ResNet (torchvision/models/resnet.py), same modules and names ------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchvisionResNet(nn.Module):
    """``torchvision.models.resnet18()`` / ``resnet50()``: stride-2 7×7 stem, max-pool, ``fc``."""

    def __init__(self, depth: int = 18, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if depth == 18 else Bottleneck
        layers = [2, 2, 2, 2] if depth == 18 else [3, 4, 6, 3]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(block, 64, layers[0], 1)
        self.layer2 = self._layer(block, 128, layers[1], 2)
        self.layer3 = self._layer(block, 256, layers[2], 2)
        self.layer4 = self._layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(512 * block.expansion, num_classes)

    def _layer(self, block: Any, planes: int, n: int, stride: int) -> nn.Sequential:
        out = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        out += [block(self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affines, so a wrong stem or skipped layer shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _tv(depth: int = 18, seed: int = 0) -> TorchvisionResNet:
    torch.manual_seed(seed)
    return _randomise_bn(TorchvisionResNet(depth), seed)  # type: ignore[return-value]


def _monai(**kwargs: Any) -> nn.Module:
    torch.manual_seed(1)
    return _randomise_bn(monai_resnet18(spatial_dims=2, n_input_channels=1, **kwargs), 1)


def _monai_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fc, net.fc = net.fc, nn.Identity()  # MONAI's forward: ... avgpool, flatten, fc
    try:
        return net(x)
    finally:
        net.fc = fc


def _rgb() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _gray() -> torch.Tensor:
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(6))


def _max_diff(model: LoadedModel, ref: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.backbone(x) - ref).abs().max())


# -- the corpus -----------------------------------------------------------------------------------
def test_official_moco(tmp_path: Path) -> None:
    """facebookresearch/moco ``main_moco.py``: DataParallel ``module.`` + ``encoder_q``/``encoder_k``
    (torchvision ResNet-50 whose ``fc`` is the MLP head) + queue, ``{"epoch", "arch",
    "state_dict", "optimizer"}``."""
    enc_q, enc_k = _tv(50, seed=0), _tv(50, seed=1)
    for enc in (enc_q, enc_k):
        enc.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 128))
    moco = nn.Module()
    moco.encoder_q, moco.encoder_k = enc_q, enc_k
    moco.register_buffer("queue", torch.randn(128, 64))
    state = {f"module.{k}": v for k, v in moco.state_dict().items()}
    opt = torch.optim.SGD(moco.parameters(), lr=0.03, momentum=0.9)
    p = tmp_path / "checkpoint_0199.pth.tar"
    torch.save(
        {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": opt.state_dict()}, p
    )

    m = load_model(p)
    with torch.no_grad():
        ref = enc_q.features(_rgb())
    assert m.kind == "moco-official" and m.backbone.arch == "resnet50" and m.in_channels == 3
    assert _max_diff(m, ref, _rgb()) <= TOL
    assert m.assumptions == ()  # MoCo builds torchvision ResNets: the stem is known


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_and_timm_state_dicts(tmp_path: Path, suffix: str) -> None:
    """``torch.save(model.state_dict())`` (torchvision, timm) and timm/HF ``model.safetensors``:
    the stem is assumed (stride 2, the torchvision convention) and the assumption is said."""
    net = _tv(18)
    p = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(
            {k: v.contiguous() for k, v in net.state_dict().items()}, p, metadata={"format": "pt"}
        )
    else:
        torch.save(net.state_dict(), p)
    m = load_model(p)
    with torch.no_grad():
        ref = net.features(_rgb())
    assert m.kind == ("safetensors" if suffix == ".safetensors" else "torchvision")
    assert _max_diff(m, ref, _rgb()) <= TOL
    (line,) = m.assumptions
    assert "assumed stride 2 with a max-pool (torchvision/timm convention)" in line
    assert "--stem-stride" in line and "\n" not in line


def test_timm_train_py_checkpoint(tmp_path: Path) -> None:
    """timm ``train.py`` (``CheckpointSaver``): ``args`` is an ``argparse.Namespace``."""
    net = _tv(18)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    args = argparse.Namespace(model="resnet18", lr=0.1, epochs=300, data_dir=Path("/data"))
    p = tmp_path / "model_best.pth.tar"
    torch.save(
        {
            "epoch": 299,
            "arch": "resnet18",
            "state_dict": net.state_dict(),
            "optimizer": opt.state_dict(),
            "version": 2,
            "args": args,
            "metric": 71.2,
        },
        p,
    )
    with pytest.raises(Exception, match="argparse"):  # what torch alone says
        torch.load(p, weights_only=True)
    m = load_model(p)
    with torch.no_grad():
        ref = net.features(_rgb())
    assert m.kind == "timm" and m.assumptions == ()
    assert _max_diff(m, ref, _rgb()) <= TOL


def _lightning_checkpoint(module: Any, path: Path) -> None:
    """``Trainer.save_checkpoint`` of a real Lightning trainer that fitted ``module`` for 1 step."""
    import lightning as L  # noqa: N812

    images = torch.rand(4, *module.example_input_array.shape[1:])
    data: Any = torch.utils.data.DataLoader(images, batch_size=2)  # type: ignore[arg-type]
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        default_root_dir=path.parent,  # its ModelCheckpoint's state goes into the .ckpt
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module.train()
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)  # the test's own file: what Lightning wrote
    assert {"pytorch-lightning_version", "state_dict", "callbacks", "loops"} <= set(saved)
    assert any("ModelCheckpoint" in k for k in saved["callbacks"])


def _lit_module(backbone: nn.Module, channels: int, **hparams: Any) -> Any:
    import lightning as L  # noqa: N812

    class Lit(L.LightningModule):
        def __init__(self, **hp: Any) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.backbone = backbone
            self.projector = nn.Linear(512, 16)
            self.example_input_array = torch.rand(2, channels, 32, 32)

        def training_step(self, batch: torch.Tensor, _: int) -> torch.Tensor:
            return self.projector(_pooled(self.backbone, batch)).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)  # BN statistics move, weights not

    return Lit(**hparams)


def _pooled(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(backbone, TorchvisionResNet):
        return backbone.features(x)
    return _monai_features(backbone, x)


def test_lightning_ckpt_of_monais_default_resnet(tmp_path: Path) -> None:
    """A real Lightning ``.ckpt`` (``AttributeDict`` hyper-parameters, callbacks, loops) around
    MONAI's default ``resnet18(spatial_dims=2, n_input_channels=1)``: downsample convolutions with
    bias (read from the keys) and MONAI's stride-1 stem (assumed from that bias, and said)."""
    net = _monai()
    module = _lit_module(net, 1, lr=0.1, tag="monai")
    p = tmp_path / "epoch=0-step=1.ckpt"
    _lightning_checkpoint(module, p)
    m = load_model(p)
    net.eval()
    with torch.no_grad():
        ref = _monai_features(net, _gray())
    assert m.kind == "lightning" and m.in_channels == 1
    assert m.backbone.state_dict()["layer2.0.downsample.0.bias"] is not None
    assert _max_diff(m, ref, _gray()) <= TOL
    (line,) = m.assumptions
    assert "assumed stride 1 with a max-pool (its downsample convolutions have a bias" in line


def test_solo_learn_checkpoint_with_a_dictconfig(tmp_path: Path) -> None:
    """solo-learn: a Lightning checkpoint whose hyper-parameters are ``{"cfg": DictConfig}``, with
    ``backbone`` (torchvision ResNet, ``fc = Identity``) and ``momentum_backbone``."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "method": "mocov2plus",
            "backbone": {"name": "resnet18"},
            "data": {"dataset": "imagenet100"},
        }
    )
    net = _tv(18)
    net.fc = nn.Identity()
    module = _lit_module(net, 3, cfg=cfg)
    module.momentum_backbone = _tv(18, seed=3)
    p = tmp_path / "mocov2plus-imagenet100-abc123-ep=0.ckpt"
    _lightning_checkpoint(module, p)
    with pytest.raises(Exception, match="omegaconf"):  # what torch alone says
        torch.load(p, weights_only=True)
    m = load_model(p)
    net.eval()
    with torch.no_grad():
        ref = net.features(_rgb())
    assert m.kind == "solo-learn" and m.assumptions == ()
    assert _max_diff(m, ref, _rgb()) <= TOL


def test_solo_learn_cifar_stem_is_refused(tmp_path: Path) -> None:
    """solo-learn's CIFAR backbones replace the stem by a 3×3 stride-1 conv with padding 2 and no
    max-pool: MONAI's ResNet pads k // 2 = 1, so the features cannot be reproduced. Refused."""
    from omegaconf import OmegaConf

    net = _tv(18)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    net.maxpool, net.fc = nn.Identity(), nn.Identity()  # type: ignore[assignment]
    state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    cfg = OmegaConf.create({"data": {"dataset": "cifar10"}})
    p = tmp_path / "simclr-cifar10.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.2.0",
            "state_dict": state,
            "hyper_parameters": {"cfg": cfg},
        },
        p,
    )
    with pytest.raises(CheckpointError, match=r"solo-learn CIFAR backbone .* has no MONAI ResNet"):
        load_model(p)


def test_lightly_sequential_backbone(tmp_path: Path) -> None:
    """lightly: ``nn.Sequential(*list(resnet.children())[:-1])`` + a projection head; keys
    ``backbone.0.weight``, ``backbone.4.0.conv1.weight``."""
    net = _tv(18)
    model = nn.Module()
    model.backbone = nn.Sequential(*list(net.children())[:-1])
    model.projection_head = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 128))
    state = model.state_dict()
    assert "backbone.0.weight" in state and "backbone.4.0.conv1.weight" in state
    p = tmp_path / "simclr.pth"
    torch.save(state, p)
    m = load_model(p)
    with torch.no_grad():
        ref = model.backbone(_rgb()).flatten(1)
    assert m.kind == "lightly"
    assert _max_diff(m, ref, _rgb()) <= TOL
    assert len(m.assumptions) == 1


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_monai_resnet_every_stem(tmp_path: Path, stride: int, bias: bool) -> None:
    """MONAI ``resnet18(spatial_dims=2, n_input_channels=1)`` with and without downsample bias,
    stride-1 (MONAI's default) and stride-2 stems: the bias is read from the keys; the stride is
    assumed (stride 1 with bias, 2 without) and exact with ``stem_stride`` either way."""
    net = _monai(bias_downsample=bias, conv1_t_stride=stride)
    p = tmp_path / "monai.pt"
    torch.save(net.state_dict(), p)
    with torch.no_grad():
        ref = _monai_features(net, _gray())

    given = load_model(p, stem_stride=stride)
    assert given.assumptions == ()
    assert _max_diff(given, ref, _gray()) <= TOL

    assumed = load_model(p)
    (line,) = assumed.assumptions
    rule = 1 if bias else 2
    assert f"assumed stride {rule}" in line
    diff = _max_diff(assumed, ref, _gray())
    if rule == stride:
        assert diff <= TOL
    else:
        assert diff > 1e-2  # the silent misread of issue 19, now announced by the line above


def test_model_kwargs_json_equals_stem_stride(tmp_path: Path) -> None:
    net = _monai(bias_downsample=False)
    p = tmp_path / "monai.pt"
    torch.save(net.state_dict(), p)
    m = load_model(p, model_kwargs={"conv1_t_stride": 1, "no_max_pool": False})
    with torch.no_grad():
        assert _max_diff(m, _monai_features(net, _gray()), _gray()) <= TOL
    assert m.assumptions == ()


def test_model_kwargs_no_max_pool_is_exact(tmp_path: Path) -> None:
    net = _monai(no_max_pool=True)
    p = tmp_path / "monai_nopool.pt"
    torch.save(net.state_dict(), p)
    m = load_model(p, model_kwargs={"conv1_t_stride": 1, "no_max_pool": True})
    with torch.no_grad():
        assert _max_diff(m, _monai_features(net, _gray()), _gray()) <= TOL
    assert m.backbone.stride == 8


def _collapsekit_checkpoint(tmp_path: Path) -> tuple[Path, nn.Module]:
    """A training checkpoint exactly as ``train`` writes it (``build_checkpoint`` of a MoCo)."""
    from collapsekit.models import ModelConfig
    from collapsekit.models.moco import MoCo
    from collapsekit.runs.checkpoint import build_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(method="mocov2", queue_size=16)
    moco = MoCo(cfg)
    _randomise_bn(moco.encoder_q, 2)
    opt = torch.optim.SGD(moco.parameters(), lr=0.1)
    ckpt = build_checkpoint(
        {"model": asdict(cfg), "image_size": 64, "a_min": -160.0, "a_max": 240.0},
        epoch=0,
        step=1,
        total_steps=1,
        model=moco,
        optimizer=opt,
        scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        losses=[1.0],
        history=[],
    )
    p = tmp_path / "run" / "checkpoint.pt"
    p.parent.mkdir()
    save_checkpoint(ckpt, p)
    return p, moco.encoder_q.backbone.eval()


def test_our_runs_and_exports(tmp_path: Path) -> None:
    from collapsekit.runs.export import export_backbone

    p, backbone = _collapsekit_checkpoint(tmp_path)
    with torch.no_grad():
        ref = backbone(_gray())
    run = load_model(p.parent)
    assert run.kind == "collapsekit" and run.assumptions == ()
    assert run.hu_window == (-160.0, 240.0) and run.window_warning(-160, 240) is None
    assert run.window_warning(-175, 250) == (
        "run was trained on the HU window -160..240 and is evaluated on slices windowed -175..250"
    )
    assert _max_diff(run, ref, _gray()) <= TOL

    for fmt in ("monai", "torchvision"):
        out = tmp_path / f"{fmt}.pt"
        res = export_backbone(p.parent, out, fmt=fmt)
        assert res.hu_window == [-160.0, 240.0] and res.assumptions == ()
        back = load_model(out)  # the export's metadata says the stem: nothing assumed
        assert back.kind == "collapsekit-export" and back.assumptions == ()
        assert back.image_size == 64 and back.metadata is not None
        assert back.metadata["hu_window"] == [-160.0, 240.0]
        assert back.metadata["model_kwargs"]["conv1_t_stride"] == 2
        assert back.metadata["zca_folded"] is False
        assert back.hu_window == (-160.0, 240.0)
        assert _max_diff(back, ref, _gray()) <= TOL


def test_an_export_of_a_foreign_stride1_model_keeps_its_stride(tmp_path: Path) -> None:
    """The stride given once at export is recorded, so later commands need no option."""
    from collapsekit.runs.export import export_backbone
    from collapsekit.runs.models import ModelOptions

    net = _monai(bias_downsample=False)
    src = tmp_path / "monai.pt"
    torch.save(net.state_dict(), src)
    out = tmp_path / "export.pt"
    export_backbone(src, out, options=ModelOptions(stem_stride=1))
    back = load_model(out)
    assert back.assumptions == () and back.metadata is not None
    assert back.metadata["model_kwargs"]["conv1_t_stride"] == 1
    with torch.no_grad():
        assert _max_diff(back, _monai_features(net, _gray()), _gray()) <= TOL


# -- refusals: one line naming what is missing ----------------------------------------------------
def test_unknown_layout_lists_what_it_found_and_the_options(tmp_path: Path) -> None:
    torch.save(
        {"encoder.stem.weight": torch.zeros(2), "encoder.blocks.0.w": torch.zeros(2)},
        tmp_path / "x.pt",
    )
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "x.pt")
    msg = str(info.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert "2 tensors, e.g. 'encoder.stem.weight'" in msg and "(by first name: encoder 2)" in msg
    assert "--state-dict-key" in msg and "--strip-prefix" in msg and "--arch" in msg


def test_strip_prefix_and_state_dict_key_map_an_unusual_layout(tmp_path: Path) -> None:
    net = _tv(18)
    twin = _tv(18, seed=9)
    state = {f"student.net.{k}": v for k, v in net.state_dict().items()}
    state.update({f"teacher.net.{k}": v for k, v in twin.state_dict().items()})
    p = tmp_path / "dino.pth"
    torch.save({"weights": state}, p)
    with pytest.raises(CheckpointError) as info:
        load_model(p)  # 'weights' is not a known entry: the file's top level has no tensors
    assert str(info.value) == (
        f"{p}: no weights at the top level or under state_dict, model, backbone, ...; its "
        "entries: 'weights' (dict of 244, 244 tensors); choose one with --state-dict-key KEY"
    )
    with pytest.raises(
        CheckpointError, match=r"2 ResNet trunks \('student\.net\.', 'teacher\.net\.'\); choose"
    ):
        load_model(p, key="weights")
    m = load_model(p, key="weights", strip_prefix="student.net", arch="resnet18")
    with torch.no_grad():
        assert _max_diff(m, net.features(_rgb()), _rgb()) <= TOL
    with pytest.raises(CheckpointError, match=r"no entry 'ema' for --state-dict-key 'ema'"):
        load_model(p, key="ema")


def test_wrong_arch_is_one_line(tmp_path: Path) -> None:
    torch.save(_tv(18).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "r18.pt", arch="resnet34")
    assert "weights do not fit a resnet34" in str(info.value) and "\n" not in str(info.value)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_reduce_payload_inside_a_dictconfig_does_not_run(tmp_path: Path) -> None:
    """A ``__reduce__`` payload where solo-learn keeps its metadata (inside the ``DictConfig``):
    refused as strictly as at the top level, and nothing runs."""
    from omegaconf import OmegaConf

    marker = tmp_path / "pwned"
    cfg = OmegaConf.create({"method": "byol", "x": _Payload(marker)}, flags={"allow_objects": True})
    p = tmp_path / "solo.ckpt"
    torch.save({"state_dict": _tv(18).state_dict(), "hyper_parameters": {"cfg": cfg}}, p)
    with pytest.raises(CheckpointError) as info:
        load_model(p)
    msg = str(info.value)
    assert msg.startswith(f"refused to load {p}: it holds Python objects that would run code")
    assert msg.endswith("GLOBAL posix.system is neither a tensor, plain data nor inert metadata.")
    assert "\n" not in msg and "\x1b" not in msg
    assert not marker.exists()
