"""Load any model whose embeddings we diagnose: ours, official MoCo, torchvision-style, random.

Every file goes through ``torch.load(weights_only=True)``: a checkpoint can never run code. Formats
are recognised by their keys:

- collapsekit training checkpoints (``{"format": "collapsekit", "config", "model", ...}``) or a run
  directory holding ``checkpoint.pt``;
- official MoCo checkpoints (``{"state_dict": {"module.encoder_q.*"}}``, torchvision ResNet-50 on
  RGB input: the grayscale slice is replicated to 3 channels);
- torchvision-style ResNet state dicts (``conv1.weight``, ``layer1.0.conv1.weight``, ...), optionally
  wrapped in ``state_dict``/``model`` and prefixed with ``module.``/``backbone.``/``encoder.``;
- ``random:ARCH`` (e.g. ``random:resnet18``): a randomly initialised baseline, seeded, whose
  BatchNorm statistics are recalibrated on the evaluation data before use (the honest baseline:
  raw init statistics (0, 1) mean no normalisation); ``random-raw:ARCH`` keeps the raw init.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapsekit.errors import CheckpointError
from collapsekit.filetypes import FileKind
from collapsekit.models import ModelConfig, build_encoder
from collapsekit.models.backbone import BACKBONES, Backbone, build_backbone
from collapsekit.models.builder import upgrade_model_keys
from collapsekit.runs.checkpoint import (
    FORMAT,
    NotACheckpointError,
    check_checkpoint_kind,
    safe_torch_load,
)

__all__ = [
    "LoadedModel",
    "load_model",
    "model_path",
    "check_model_spec",
    "model_from_object",
    "model_config_from_checkpoint",
    "backbone_from_state_dict",
    "infer_arch",
]


@dataclass
class LoadedModel:
    """A model ready for diagnostics, in eval mode.

    Attributes:
        name: display name (file stem, run name, or ``random:resnet18``).
        kind: ``collapsekit``, ``moco-official``, ``torchvision``, or ``random``.
        backbone: the trunk; ``backbone(x)`` is the pooled embedding, ``forward_features`` the map.
        encoder: the full collapsekit encoder (backbone + projector) when available, for ``--head``.
        in_channels: what the backbone's first conv expects (3 for RGB-pretrained weights).
        image_size: the training image size recorded in the checkpoint, if any.
        config: the training config recorded in the checkpoint, if any.
        calibrate_bn: the BatchNorm running statistics must be re-estimated on the evaluation
            data before use (``random:ARCH``); evaluation functions do it, then clear the flag and
            append "(BN recalibrated)" to the name.
    """

    name: str
    kind: str
    backbone: Backbone
    encoder: nn.Module | None = None
    in_channels: int = 1
    image_size: int | None = None
    config: dict[str, Any] | None = field(default=None, repr=False)
    path: Path | None = None
    calibrate_bn: bool = False

    def to(self, device: str | torch.device) -> LoadedModel:
        self.backbone.to(device)
        if self.encoder is not None:
            self.encoder.to(device)
        return self


_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.", "backbone.", "encoder.", "model.")


def infer_arch(state: dict[str, torch.Tensor]) -> str:
    """ResNet depth from torchvision-style keys: bottleneck blocks and blocks per stage."""
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k)) is not None}
    n3 = max(blocks) + 1 if blocks else 0
    if bottleneck:
        if n3 == 6:
            return "resnet50"
    else:
        if n3 == 2:
            return "resnet18"
        if n3 == 6:
            return "resnet34"
    raise CheckpointError(
        f"unsupported ResNet variant ({'bottleneck' if bottleneck else 'basic'} blocks, {n3} blocks in "
        f"layer3); supported: {', '.join(BACKBONES)}"
    )


def _strip(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in _PREFIXES:
        if any(k.startswith(prefix + "conv1.") for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in tensors.items() if not k.startswith("fc.")}


def backbone_from_state_dict(state: dict[str, Any], source: str = "state dict") -> Backbone:
    """Build a :class:`Backbone` matching a torchvision-style ResNet state dict and load it."""
    trunk = _strip(state)
    if "conv1.weight" not in trunk:
        raise CheckpointError(f"{source}: no ResNet 'conv1.weight' key found")
    arch = infer_arch(trunk)
    in_ch = int(trunk["conv1.weight"].shape[1])
    backbone = build_backbone(arch, in_channels=in_ch)
    try:
        missing, unexpected = backbone.load_state_dict(trunk, strict=False)
    except RuntimeError as e:
        detail = next(
            (ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e)[:160]
        )
        raise CheckpointError(f"{source}: weights do not fit a {arch} ({detail})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit a {arch} (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return backbone


# The training image size when a checkpoint's config does not record one (TrainConfig's default).
DEFAULT_IMAGE_SIZE = 128


def model_config_from_checkpoint(config: dict[str, Any], path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored (as plain data) in a training checkpoint's config.

    Raises:
        CheckpointError: the stored model config does not build (another version's keys or values).
    """
    data = upgrade_model_keys(dict(config.get("model") or {}))  # keys of earlier versions
    names = {f.name for f in fields(ModelConfig)}
    try:
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown [model] keys {unknown}")
        return ModelConfig(**data)
    except Exception as e:  # a config from another version
        raise CheckpointError(
            f"{path}: cannot rebuild the model from its stored config ({e})"
        ) from None


def _load_collapsekit(ckpt: dict[str, Any], name: str, path: Path) -> LoadedModel:
    config = ckpt["config"] if isinstance(ckpt.get("config"), dict) else {}
    encoder = build_encoder(model_config_from_checkpoint(config, path))
    prefix = "encoder_q."
    state = {k[len(prefix) :]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as e:
        detail = next(
            (ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e)[:160]
        )
        raise CheckpointError(f"{path}: model weights do not match its config ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: model weights do not match its config (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]})"
        )
    encoder.eval()
    return LoadedModel(
        name=name,
        kind="collapsekit",
        backbone=encoder.backbone,
        encoder=encoder,
        in_channels=1,
        image_size=int(config.get("image_size", DEFAULT_IMAGE_SIZE)),
        config=ckpt["config"],
        path=path,
    )


def load_model(spec: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model for diagnostics from a path, a run directory or ``random:ARCH``.

    Raises:
        CheckpointError: missing/corrupt file, a pickle that would run code, or unrecognised keys
            (the message lists what was recognised).
    """
    spec_str = str(spec)
    for prefix, calibrate in (("random:", True), ("random-raw:", False)):
        if spec_str.startswith(prefix):
            arch = spec_str.split(":", 1)[1]
            if not arch:
                raise CheckpointError(
                    f"'{spec_str}' names no architecture: use {prefix}resnet18, "
                    f"{prefix}resnet34 or {prefix}resnet50"
                )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                backbone = build_backbone(arch)
            backbone.eval()
            name = f"{prefix}{backbone.arch}"
            model = LoadedModel(name=name, kind="random", backbone=backbone, calibrate_bn=calibrate)
            return model.to(device)

    path = model_path(spec_str)
    return model_from_object(safe_torch_load(path), path, device)


def model_path(spec: str | Path) -> Path:
    """The checkpoint file a model spec names: the file itself, or a run directory's checkpoint.pt.

    Raises:
        CheckpointError: a directory without ``checkpoint.pt``.
    """
    path = Path(spec)
    if path.is_dir():
        if (path / "checkpoint.pt").is_file():
            return path / "checkpoint.pt"
        raise CheckpointError(
            f"{path} is a directory without checkpoint.pt (not a collapsekit run)"
        )
    return path


def check_model_spec(spec: str | Path, needed_by: str = "this command") -> None:
    """Refuse, cheaply and before any work, a spec that cannot name a model (nothing is loaded).

    Checks ``random:ARCH`` names an architecture and that a path exists and is a checkpoint by its
    first bytes (:func:`~collapsekit.runs.checkpoint.check_checkpoint_kind`).

    Raises:
        CheckpointError: "probe needs a model; tworow.npy holds embeddings", "config.toml is a text
            file, not a checkpoint — pass the run directory instead", ...
    """
    spec_str = str(spec)
    for prefix in ("random:", "random-raw:"):
        if spec_str.startswith(prefix):
            if not spec_str.split(":", 1)[1]:
                raise CheckpointError(
                    f"'{spec_str}' names no architecture: use {prefix}resnet18, "
                    f"{prefix}resnet34 or {prefix}resnet50"
                )
            return
    path = model_path(spec_str)
    try:
        check_checkpoint_kind(path)
    except NotACheckpointError as e:
        if e.kind in (FileKind.NPY, FileKind.NPZ):
            raise CheckpointError(
                f"{needed_by} needs a model; {path.name} holds embeddings"
            ) from None
        raise


def model_from_object(
    obj: Any, path: str | Path, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Build the model held by ``obj``, already read from checkpoint file ``path`` (weights only).

    Raises:
        CheckpointError: ``obj`` is not a recognised checkpoint (the message lists the formats).
    """
    path = Path(path)
    name = path.parent.name if path.name == "checkpoint.pt" else path.stem
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a dict of weights, got {type(obj).__name__} (for raw embeddings use .npy/.npz)"
        )
    if obj.get("format") == FORMAT:
        return _load_collapsekit(obj, name, path).to(device)

    kind = "torchvision"
    state: dict[str, Any] = obj
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj.get(key), dict):
            state = obj[key]
            break
    if any(str(k).startswith(("module.encoder_q.", "encoder_q.")) for k in state):
        kind = "moco-official"
    try:
        backbone = backbone_from_state_dict(state, source=str(path))
    except CheckpointError as e:
        keys = [str(k) for k in list(state)[:4]]
        if "no ResNet" in str(e):
            raise CheckpointError(
                f"{path}: unrecognised checkpoint (first keys {keys}); recognised formats: collapsekit "
                "checkpoint, official MoCo ('module.encoder_q.*'), torchvision-style ResNet state dict"
            ) from None
        raise
    backbone.eval()
    return LoadedModel(
        name=name, kind=kind, backbone=backbone, in_channels=backbone.in_channels, path=path
    ).to(device)
