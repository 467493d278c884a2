"""Load any model whose embeddings we diagnose: ours, other tools' checkpoints, random.

Files are read by :func:`~collapsekit.runs.checkpoint.safe_torch_load`: nothing in them can run
code (weights-only, other tools' metadata objects read as inert placeholders, safetensors).
Formats are recognised by their container and keys:

- collapsekit training checkpoints (``{"format": "collapsekit", "config", "model", ...}``) or a run
  directory holding ``checkpoint.pt``; collapsekit exports (a state dict whose ``_metadata``
  records the arch, MONAI kwargs, image size and HU window);
- official MoCo (``{"state_dict": {"module.encoder_q.*"}}``, torchvision ResNet-50 on RGB input:
  the grayscale slice is replicated to 3 channels); timm ``train.py`` checkpoints (``args`` an
  ``argparse.Namespace``); PyTorch Lightning ``.ckpt``; solo-learn (``cfg`` a ``DictConfig``);
- ResNet state dicts with torchvision/timm/MONAI names (``conv1.weight``,
  ``layer1.0.conv1.weight``, ...) or lightly's ``nn.Sequential`` indices (``0.weight``,
  ``4.0.conv1.weight``), under any prefix (:mod:`collapsekit.runs._layouts`), in ``.pt``/``.pth``
  or ``.safetensors`` files;
- ``random:ARCH`` (e.g. ``random:resnet18``): a randomly initialised baseline, seeded, whose
  BatchNorm statistics are recalibrated on the evaluation data before use (the honest baseline:
  raw init statistics (0, 1) mean no normalisation); ``random-raw:ARCH`` keeps the raw init.

The depth, input channels, stem kernel and downsample bias are read from the weights. The stem
stride is not in the weights: it comes from the file's metadata (our runs and exports), from the
tool (official MoCo, timm, solo-learn build torchvision ResNets), from
:class:`ModelOptions` (``--stem-stride``, ``--model-kwargs``), or it is assumed by a documented
rule (:func:`assumed_stem_stride`) and the assumption is returned in ``LoadedModel.assumptions`` for the
caller to show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapsekit.errors import CheckpointError, ConfigError
from collapsekit.filetypes import FileKind
from collapsekit.models import ModelConfig, build_encoder
from collapsekit.models.backbone import BACKBONES, Backbone, build_backbone
from collapsekit.models.builder import upgrade_model_keys
from collapsekit.options import look_up_option
from collapsekit.runs._layouts import MAP_OPTIONS, find_trunk
from collapsekit.runs._unpickle import InertObject
from collapsekit.runs.checkpoint import (
    FORMAT,
    NotACheckpointError,
    check_checkpoint_kind,
    safe_torch_load,
)

__all__ = [
    "ModelOptions",
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
        kind: ``collapsekit``, ``collapsekit-export``, ``moco-official``, ``timm``,
            ``solo-learn``, ``lightning``, ``lightly``, ``safetensors``, ``torchvision`` (a bare
            ResNet state dict, torchvision/timm/MONAI names) or ``random``.
        backbone: the trunk; ``backbone(x)`` is the pooled embedding, ``forward_features`` the map.
        encoder: the full collapsekit encoder (backbone + projector) when available, for ``--head``.
        in_channels: what the backbone's first conv expects (3 for RGB-pretrained weights).
        image_size: the training image size recorded in the checkpoint, if any.
        config: the training config recorded in the checkpoint, if any.
        calibrate_bn: the BatchNorm running statistics must be re-estimated on the evaluation
            data before use (``random:ARCH``); evaluation functions do it, then clear the flag and
            append "(BN recalibrated)" to the name.
        assumptions: one line per setting the file did not show and the loader assumed (the
            stem stride of a bare state dict): commands print them as warnings.
        metadata: what an export recorded (arch, MONAI kwargs, image size, channels, HU window,
            ZCA folded), see :mod:`collapsekit.runs.export`.
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
    assumptions: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def hu_window(self) -> tuple[float, float] | None:
        """The HU window ``(a_min, a_max)`` the model was trained with, when the file says."""
        config = self.config or {}
        if "a_min" in config and "a_max" in config:
            return float(config["a_min"]), float(config["a_max"])
        window = (self.metadata or {}).get("hu_window")
        return (float(window[0]), float(window[1])) if window else None

    def window_warning(self, a_min: float, a_max: float) -> str | None:
        """A line to show when the evaluation's HU window differs from the training one."""
        trained = self.hu_window
        if trained is None or trained == (float(a_min), float(a_max)):
            return None
        return (
            f"{self.name} was trained on the HU window {trained[0]:g}..{trained[1]:g} and is "
            f"evaluated on slices windowed {a_min:g}..{a_max:g}"
        )

    def to(self, device: str | torch.device) -> LoadedModel:
        self.backbone.to(device)
        if self.encoder is not None:
            self.encoder.to(device)
        return self


@dataclass(frozen=True)
class ModelOptions:
    """How to read a foreign checkpoint whose layout or stem the file does not say.

    Attributes:
        arch: ``resnet18`` | ``resnet34`` | ``resnet50`` (default: from the blocks per stage).
        key: the entry holding the weights, dotted for nested dicts (``state_dict``,
            ``model.ema``); default: the first of ``state_dict``, ``model``, ``backbone``, ... or
            the file itself.
        strip_prefix: the prefix in front of ``conv1``/``layer1`` (``backbone.``); default:
            found from the names.
        stem_stride: the stem convolution's stride (MONAI ``conv1_t_stride``).
        model_kwargs: MONAI ``ResNet`` settings the weights cannot show (:data:`MODEL_KWARGS`).
    """

    arch: str | None = None
    key: str | None = None
    strip_prefix: str | None = None
    stem_stride: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch is not None:
            object.__setattr__(self, "arch", look_up_option(self.arch, BACKBONES, "--arch"))
        if self.stem_stride is not None and self.stem_stride < 1:
            raise ConfigError(f"--stem-stride must be >= 1, got {self.stem_stride}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(
                "--model-kwargs must be a JSON object, e.g. '{\"conv1_t_stride\": 1}'"
            )


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


def backbone_from_state_dict(
    state: dict[str, Any],
    source: str = "state dict",
    *,
    options: ModelOptions | None = None,
    known: dict[str, Any] | None = None,
) -> tuple[Backbone, list[str]]:
    """Build the :class:`Backbone` that ``state`` fits and load it exactly.

    Read from the weights: the depth (blocks per stage), the input channels and kernel of
    ``conv1``, whether downsample convolutions have a bias (MONAI's default) or not
    (torchvision, timm, MONAI ``bias_downsample=False``). Not visible in weights: the stem stride
    and the max-pool. They come from ``options`` (``--stem-stride``, ``--model-kwargs``), else
    from ``known`` (an export's metadata, a tool whose stem is fixed), else they are *assumed*
    (:func:`assumed_stem_stride`) and the assumption is returned as a message to show the user.

    Returns:
        ``(backbone in eval mode, assumptions)``: one line per setting that was assumed.

    Raises:
        CheckpointError: no ResNet layout (the message lists what was found and the options that
            map it), an architecture the weights do not fit, missing or unexpected tensors.
    """
    options = options or ModelOptions()
    trunk = find_trunk(state, options.strip_prefix, source).state
    arch = options.arch or infer_arch(trunk)
    conv1 = trunk["conv1.weight"]
    if conv1.ndim != 4:
        raise CheckpointError(
            f"{source}: conv1.weight has shape {tuple(conv1.shape)}, not a 2D conv"
        )
    read = {
        "conv1_t_size": int(conv1.shape[2]),
        "bias_downsample": any(k.endswith("downsample.0.bias") for k in trunk),
    }
    kwargs, assumptions = stem_settings(read, options, known or {}, source)
    backbone = build_backbone(arch, in_channels=int(conv1.shape[1]), **kwargs)
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
            f"{source}: weights do not fit a {arch}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); map them with {MAP_OPTIONS}"
        )
    backbone.eval()
    return backbone, assumptions


#: MONAI ``ResNet`` keyword arguments ``--model-kwargs`` may set (the rest come from the weights).
MODEL_KWARGS = ("conv1_t_stride", "no_max_pool", "conv1_t_size", "bias_downsample")


def assumed_stem_stride(bias_downsample: bool) -> int:
    """The rule for a stem stride the weights and metadata do not show.

    Downsample convolutions with a bias exist only in MONAI's ResNets with their defaults, so
    MONAI's default stem is assumed (stride 1); bias-free ones are the torchvision/timm
    convention (stride 2), which MONAI's ``bias_downsample=False`` with its default stride 1
    also produces: hence the warning that always goes with an assumption. A max-pool is assumed
    present (every one of these ResNets has one unless built with ``no_max_pool``).
    """
    return 1 if bias_downsample else 2


def stem_settings(
    read: dict[str, Any], options: ModelOptions, known: dict[str, Any], source: str
) -> tuple[dict[str, Any], list[str]]:
    """The backbone's MONAI stem kwargs: the user's options over metadata over the rule.

    Returns:
        ``(kwargs, assumptions)``; an assumption names the rule and the option that overrides it.
    """
    given = dict(options.model_kwargs)
    unknown = sorted(set(given) - set(MODEL_KWARGS))
    if unknown:
        raise ConfigError(
            f"--model-kwargs: unknown keys {unknown}; accepted: {', '.join(MODEL_KWARGS)}"
        )
    if options.stem_stride is not None:
        given["conv1_t_stride"] = options.stem_stride
    if known.get("conv1_t_size", read["conv1_t_size"]) != read["conv1_t_size"]:
        known = {}  # not the stem the tool usually builds (solo-learn's CIFAR 3×3): not known
    kwargs = {**read, **{k: v for k, v in known.items() if k in MODEL_KWARGS}, **given}
    assumptions: list[str] = []
    kwargs.setdefault("no_max_pool", False)  # every ResNet named here has one unless told
    if "conv1_t_stride" not in kwargs:
        kwargs["conv1_t_stride"] = assumed_stem_stride(bool(kwargs["bias_downsample"]))
        why = (
            "its downsample convolutions have a bias, as in MONAI's default ResNet"
            if kwargs["bias_downsample"]
            else "torchvision/timm convention"
        )
        pool = "no max-pool" if kwargs["no_max_pool"] else "a max-pool"
        assumptions.append(
            f"{source}: the weights do not show the stem stride; assumed stride "
            f"{kwargs['conv1_t_stride']} with {pool} ({why}); if the model was built otherwise, "
            'pass --stem-stride N or --model-kwargs \'{"conv1_t_stride": N, "no_max_pool": '
            "false}' (Python: load_model(..., stem_stride=N))"
        )
    stride = kwargs["conv1_t_stride"]
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ConfigError(f"the stem stride must be a positive integer, got {stride!r}")
    return {k: kwargs[k] for k in MODEL_KWARGS}, assumptions


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


def load_model(
    spec: str | Path,
    device: str | torch.device = "cpu",
    *,
    arch: str | None = None,
    key: str | None = None,
    strip_prefix: str | None = None,
    stem_stride: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    options: ModelOptions | None = None,
) -> LoadedModel:
    """Load a model for diagnostics from a path, a run directory or ``random:ARCH``.

    Args:
        spec: a run directory, a collapsekit checkpoint or export, a foreign checkpoint (official
            MoCo, torchvision, timm state dict / ``train.py`` checkpoint / ``.safetensors``,
            Lightning ``.ckpt``, solo-learn, lightly, MONAI), or ``random:ARCH``.
        device: where the model goes.
        arch, key, strip_prefix, stem_stride, model_kwargs: see :class:`ModelOptions` (or pass
            ``options``). Only needed where the file does not say; ``LoadedModel.assumptions``
            lists what was assumed.

    Raises:
        CheckpointError: missing/corrupt file, a pickle that would run code, or unrecognised keys
            (the message lists what was found and the options that map it).
        ConfigError: an invalid option.
    """
    if options is None:
        options = ModelOptions(
            arch=arch,
            key=key,
            strip_prefix=strip_prefix,
            stem_stride=stem_stride,
            model_kwargs=dict(model_kwargs or {}),
        )
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
    return model_from_object(safe_torch_load(path), path, device, options=options)


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
    obj: Any,
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    options: ModelOptions | None = None,
) -> LoadedModel:
    """Build the model held by ``obj``, already read from checkpoint file ``path`` (weights only).

    Raises:
        CheckpointError: ``obj`` is not a recognised checkpoint (the message lists what was found
            and the options that map it).
    """
    options = options or ModelOptions()
    path = Path(path)
    name = path.parent.name if path.name == "checkpoint.pt" else path.stem
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a dict of weights, got {type(obj).__name__} (for raw embeddings use .npy/.npz)"
        )
    if obj.get("format") == FORMAT and options.key is None:
        return _load_collapsekit(obj, name, path).to(device)

    state = _weights_entry(obj, options.key, path)
    kind, known = _container_kind(obj, state)
    if kind == "solo-learn" and _conv1_kernel(state) == 3:
        raise CheckpointError(
            f"{path}: a solo-learn CIFAR backbone (3×3 stem with padding 2, no max-pool) has no "
            "MONAI ResNet equivalent, so collapsekit cannot reproduce its features; use an "
            "ImageNet-stem (7×7) backbone"
        )
    metadata = export_metadata(state)
    if metadata is not None:
        kind, known = "collapsekit-export", dict(metadata.get("model_kwargs") or {})
    backbone, assumptions = backbone_from_state_dict(
        state, source=str(path), options=options, known=known
    )
    image_size = metadata.get("image_size") if metadata else None
    return LoadedModel(
        name=name,
        kind=kind,
        backbone=backbone,
        in_channels=backbone.in_channels,
        image_size=int(image_size) if image_size else None,
        path=path,
        assumptions=tuple(assumptions),
        metadata=metadata,
    ).to(device)


#: Entries that hold the weights in other tools' checkpoints, tried in this order.
WEIGHT_KEYS = ("state_dict", "model", "backbone", "module", "net", "model_state_dict", "params")
#: The stem of torchvision's and timm's ResNets (MONAI kwargs): what a tool that only builds
#: those (official MoCo, timm ``train.py``, solo-learn) implies.
TORCHVISION_STEM = {"conv1_t_stride": 2, "no_max_pool": False, "conv1_t_size": 7}
#: Key under a state dict's ``_metadata`` where :mod:`collapsekit.runs.export` records itself.
EXPORT_METADATA_KEY = "collapsekit"


def export_metadata(state: Any) -> dict[str, Any] | None:
    """What a collapsekit export recorded in its state dict's ``_metadata`` (``None`` if not one).

    PyTorch keeps a state dict's ``_metadata`` (per-module versions) through ``torch.save`` and
    ``torch.load(weights_only=True)``, and ``load_state_dict`` reads only module names from it, so
    an export records itself there and still loads ``strict=True`` into MONAI's ResNet.
    """
    meta = getattr(state, "_metadata", None)
    if isinstance(meta, dict) and isinstance(meta.get(EXPORT_METADATA_KEY), dict):
        return dict(meta[EXPORT_METADATA_KEY])
    return None


def _weights_entry(obj: dict[str, Any], key: str | None, path: Path) -> dict[str, Any]:
    """The dict of tensors in a checkpoint: ``key`` (dotted), else a known entry, else ``obj``."""
    if key is not None:
        node: Any = obj
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                keys = [str(k) for k in node][:8] if isinstance(node, dict) else []
                raise CheckpointError(
                    f"{path}: no entry {part!r} for --state-dict-key {key!r} (entries here: {keys})"
                )
            node = node[part]
        if not isinstance(node, dict):
            raise CheckpointError(
                f"{path}: --state-dict-key {key!r} holds {type(node).__name__}, not a dict of tensors"
            )
        return node
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for k in WEIGHT_KEYS:
        if isinstance(obj.get(k), dict):
            return obj[k]
    entries = ", ".join(f"{k!r} ({_describe(v)})" for k, v in list(obj.items())[:6])
    raise CheckpointError(
        f"{path}: no weights at the top level or under {', '.join(WEIGHT_KEYS[:3])}, ...; its "
        f"entries: {entries or 'none'}; choose one with --state-dict-key KEY"
    )


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        n = sum(isinstance(v, torch.Tensor) for v in value.values())
        return f"dict of {len(value)}, {n} tensors"
    if isinstance(value, InertObject):
        return type(value).qualname
    return type(value).__name__


def _inert_name(value: Any) -> str:
    return type(value).qualname if isinstance(value, InertObject) else ""


def _container_kind(obj: dict[str, Any], state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The tool that wrote ``obj`` (by its container's entries) and the stem settings it implies."""
    names = [str(k) for k in state]
    if any(n.startswith(("module.encoder_q.", "encoder_q.")) for n in names):
        return "moco-official", TORCHVISION_STEM
    if "pytorch-lightning_version" in obj:
        hparams = obj.get("hyper_parameters")
        cfg = hparams.get("cfg") if isinstance(hparams, dict) else None
        if _inert_name(cfg).endswith("DictConfig"):
            return "solo-learn", TORCHVISION_STEM
        return ("lightly" if _is_sequential(names) else "lightning"), {}
    if _inert_name(obj.get("args")) == "argparse.Namespace":
        return "timm", TORCHVISION_STEM
    if "__metadata__" in obj:
        return "safetensors", {}
    if _is_sequential(names):
        return "lightly", {}
    return "torchvision", {}


def _conv1_kernel(state: dict[str, Any]) -> int | None:
    w = next((v for k, v in state.items() if str(k).endswith("conv1.weight") and v.ndim == 4), None)
    return int(w.shape[-1]) if w is not None else None


def _is_sequential(names: list[str]) -> bool:
    return any(re.search(r"(^|\.)4\.0\.conv1\.weight$", n) for n in names) and not any(
        n.endswith("layer1.0.conv1.weight") for n in names
    )
