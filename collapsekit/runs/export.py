"""Export a run's query backbone as a plain ResNet state dict (MONAI- or torchvision-keyed).

A training checkpoint holds both encoders, the queues and the optimiser (139 MiB for ResNet-18); a
segmentation pipeline wants the trunk alone. :func:`export_backbone` writes the query encoder's
backbone (no projector, no local head) as a plain ``{name: tensor}`` dict (45 MB for ResNet-18) that
loads with ``strict=True`` into

- ``monai.networks.nets.resnet18(**monai_resnet_kwargs(backbone))`` — ``spatial_dims=2``,
  ``n_input_channels=1``, the stride-2 7×7 stem, bias-free downsample convolutions,
  ``feed_forward=False`` (no ``fc``) — whose output is the pooled feature ``(B, C)``; or
- a torchvision ResNet whose ``fc`` is ``nn.Identity()`` (format ``torchvision``): the same key
  names, with the 1-channel stem replicated to RGB as ``w_rgb[:, c] = w / 3``, so a grayscale slice
  copied to three channels gives exactly the 1-channel features (``Σ_c w/3 · x = w · x``).

**Metadata.** The file records what the weights cannot show — arch, the MONAI kwargs (stem
stride included), input channels, training image size, HU window, whether ZCA was folded — in
the state dict's ``_metadata`` under ``"collapsekit"`` (:func:`with_export_metadata`), where
``load_state_dict`` does not look (it reads only module names there), so strict loading still
works; :func:`collapsekit.runs.models.load_model` reads it back. MONAI's ``FlexibleUNet`` ResNet
encoders use shortcut type A (no downsample convolution) and reject the export's 18
``downsample`` tensors; ``monai.networks.nets.ResNet`` with the recorded kwargs accepts it.

**ZCA in the block.** With ``zca_placement = "block"`` (the default) the last residual block's final
norm is a :class:`~collapsekit.models.zca.ZCAWhitening` layer, which no plain ResNet has. In eval
mode it is an affine map per position, ``y = M (x − μ) + β`` with ``M = diag(γ) W`` and
``W = (Σ_run + εI)^{-1/2}`` (block-diagonal over groups), and the convolution before it is linear,
so the export **folds** it: the convolution's weights become ``M · w`` (output channels mixed by
``M``) and the norm becomes a BatchNorm with ``running_mean = M μ``,
``running_var = diag(M Σ_run Mᵀ)`` (the variance of the folded convolution's output on the
training distribution, as the whitening layer tracked it) and ``weight = √(running_var + ε_BN)``,
``bias = β``, which computes ``M(x − μ) + β`` exactly in eval mode. The exported network's
eval-mode features equal the run's; in train mode (fine-tuning) that norm is an ordinary
BatchNorm, no longer a whitening. With ``pre_projector`` the whitening is not in the backbone and
nothing is folded.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapsekit.errors import CheckpointError, OutputError
from collapsekit.models.backbone import Backbone
from collapsekit.models.zca import ZCAWhitening, inv_sqrt_eigh
from collapsekit.options import look_up_option
from collapsekit.outputs import check_writable_dir, writing
from collapsekit.runs.models import (
    EXPORT_METADATA_KEY,
    LoadedModel,
    ModelOptions,
    check_model_spec,
    load_model,
    model_path,
)
from collapsekit.serialization import atomic_write

__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "export_backbone",
    "backbone_state_dict",
    "fold_block_zca",
    "monai_resnet_kwargs",
    "export_metadata_of",
    "with_export_metadata",
]

EXPORT_FORMATS = ("monai", "torchvision")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_backbone` wrote.

    Attributes:
        path: the exported file.
        format: ``monai`` or ``torchvision``.
        arch: ``resnet18`` | ``resnet34`` | ``resnet50``.
        in_channels: input channels of the exported stem (1 for ``monai``, 3 for ``torchvision``).
        num_tensors: entries of the state dict.
        num_parameters: learnable parameters (BatchNorm running statistics not counted).
        size_bytes: size of the file.
        zca_folded: a ZCA layer inside the last block was folded into a convolution + BatchNorm.
        image_size: the training image size recorded by the run (``None`` for a foreign model).
        monai_kwargs: keyword arguments of ``monai.networks.nets.<arch>`` that load the export
            (``monai`` format).
        source: the checkpoint the backbone came from.
        hu_window: the run's HU window ``[a_min, a_max]`` (``None`` for a foreign model).
        assumptions: what the loader assumed about a foreign source (its stem stride).
    """

    path: Path
    format: str
    arch: str
    in_channels: int
    num_tensors: int
    num_parameters: int
    size_bytes: int
    zca_folded: bool
    image_size: int | None
    monai_kwargs: dict[str, Any]
    source: Path
    hu_window: list[float] | None = None
    assumptions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "arch": self.arch,
            "in_channels": self.in_channels,
            "num_tensors": self.num_tensors,
            "num_parameters": self.num_parameters,
            "size_bytes": self.size_bytes,
            "zca_folded": self.zca_folded,
            "image_size": self.image_size,
            "monai_kwargs": self.monai_kwargs,
            "source": str(self.source),
            "hu_window": self.hu_window,
            "assumptions": list(self.assumptions),
        }


def monai_resnet_kwargs(backbone: Backbone) -> dict[str, Any]:
    """Keyword arguments of ``monai.networks.nets.<arch>`` that rebuild ``backbone``'s layout.

    Read off the built modules (stem kernel and stride, max-pool, downsample bias), so they follow
    :mod:`collapsekit.models.backbone` if its stem changes. ``feed_forward=False``: no ``fc``, the
    network returns the pooled ``(B, C)`` feature.
    """
    downsample_bias = any(
        m[0].bias is not None
        for m in backbone.modules()
        if isinstance(m, nn.Sequential) and len(m) and isinstance(m[0], nn.Conv2d)
    )
    return {
        "spatial_dims": 2,
        "n_input_channels": int(backbone.conv1.in_channels),
        "conv1_t_size": int(backbone.conv1.kernel_size[0]),
        "conv1_t_stride": int(backbone.conv1.stride[0]),
        "no_max_pool": not isinstance(backbone.maxpool, nn.MaxPool2d),
        "shortcut_type": "B",
        "bias_downsample": downsample_bias,
        "feed_forward": False,
    }


def _conv_before_last_norm(backbone: Backbone) -> nn.Conv2d:
    """The convolution whose output :meth:`Backbone.last_norm` normalises (conv2, or conv3 of a
    bottleneck block)."""
    block = backbone.layer4[-1]
    conv = block.conv3 if hasattr(block, "bn3") else block.conv2
    assert isinstance(conv, nn.Conv2d)
    return conv


@torch.no_grad()
def fold_block_zca(backbone: Backbone) -> tuple[Backbone, bool]:
    """A copy of ``backbone`` with a ZCA layer in its last block folded into conv + BatchNorm.

    Eval-mode features of the copy equal the original's (see the module docstring for the math);
    the original is not modified. A backbone without ZCA is returned as a copy, unfolded.

    Returns:
        ``(plain backbone, whether a ZCA layer was folded)``.

    Raises:
        CheckpointError: a ZCA layer somewhere other than the last block's final norm.
    """
    out = copy.deepcopy(backbone).eval()
    zca = out.last_norm()
    stray = [n for n, m in out.named_modules() if isinstance(m, ZCAWhitening) and m is not zca]
    if stray:
        raise CheckpointError(
            f"cannot export: ZCA whitening at {stray[0]} (only the last block's norm can be folded)"
        )
    if not isinstance(zca, ZCAWhitening):
        return out, False
    conv = _conv_before_last_norm(out)
    c, f64 = zca.num_features, torch.float64
    w_groups = inv_sqrt_eigh(zca.running_cov.to(f64), zca.eps)  # (G, d, d)
    w_full = torch.block_diag(*w_groups.unbind(0))  # (C, C), block-diagonal
    gamma = zca.weight.to(f64) if zca.weight is not None else torch.ones(c, dtype=f64)
    beta = zca.bias.to(f64) if zca.bias is not None else torch.zeros(c, dtype=f64)
    m = gamma[:, None] * w_full  # M = diag(γ) W
    cov_full = torch.block_diag(*zca.running_cov.to(f64).unbind(0))
    var = (m @ cov_full @ m.T).diagonal().clamp_min(0.0)  # diag(M Σ Mᵀ)
    bn = nn.BatchNorm2d(c).to(device=zca.running_mean.device)
    bn.load_state_dict(  # copy_ casts the float64 values to the module's float32
        {
            "weight": torch.sqrt(var + bn.eps),
            "bias": beta,
            "running_mean": m @ zca.running_mean.to(f64),
            "running_var": var,
            "num_batches_tracked": torch.tensor(0),
        }
    )
    bn.eval()
    weight = conv.weight.to(f64)  # (C, C_in, k, k)
    conv.weight.copy_(torch.einsum("oc,cikl->oikl", m, weight).to(conv.weight.dtype))
    out.set_last_norm(bn)
    return out, True


def backbone_state_dict(
    backbone: Backbone, fmt: str = "monai"
) -> tuple[dict[str, torch.Tensor], bool]:
    """The plain ResNet state dict of ``backbone`` (ZCA folded), on the CPU, detached.

    Args:
        backbone: the trunk (as loaded from a run: eval mode, ZCA possibly in the last block).
        fmt: ``monai`` (the backbone's own stem, 1 channel for collapsekit runs) or ``torchvision``
            (a 3-channel stem: each RGB channel gets ``w / 3`` of a 1-channel stem, so a grayscale
            slice replicated to RGB gives the same features).

    Returns:
        ``(state dict, whether a ZCA layer was folded)``. Keys are torchvision's names without
        ``fc`` (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ..., ``downsample.0/1``).
    """
    fmt = look_up_option(fmt, EXPORT_FORMATS, "export format")
    plain, folded = fold_block_zca(backbone)
    state = {k: v.detach().cpu().clone() for k, v in plain.state_dict().items()}
    if fmt == "torchvision" and state["conv1.weight"].shape[1] == 1:
        state["conv1.weight"] = state["conv1.weight"].expand(-1, 3, -1, -1) / 3.0
    return state, folded


def export_backbone(
    spec: str | Path,
    out: str | Path,
    *,
    fmt: str = "monai",
    overwrite: bool = False,
    options: ModelOptions | None = None,
) -> ExportResult:
    """Write the query backbone of a run (or any model :func:`load_model` reads) to ``out``.

    The file is a plain state dict written atomically (temp file, fsync, ``os.replace``) and read
    back with ``torch.load(weights_only=True)``; see the module docstring for what it loads into.

    Args:
        spec: a run directory, a training checkpoint, or a foreign checkpoint.
        out: the ``.pt`` file to write.
        fmt: ``monai`` or ``torchvision`` (see :func:`backbone_state_dict`).
        overwrite: replace an existing ``out``.
        options: how to read a foreign ``spec`` (:class:`~collapsekit.runs.models.ModelOptions`).

    Raises:
        ConfigError: an unknown format (with a "did you mean").
        OutputError: ``out`` exists (without ``overwrite``), is a directory, is the source
            checkpoint itself, or cannot be written.
        CheckpointError: ``spec`` is missing, corrupt or not a model.
    """
    fmt = look_up_option(fmt, EXPORT_FORMATS, "export format")
    out = Path(out)
    if str(spec).startswith(("random:", "random-raw:")):
        raise CheckpointError(
            f"'{spec}' is a random initialisation, not a trained backbone: export a run directory "
            "or a checkpoint"
        )
    check_model_spec(spec, needed_by="export")
    source = model_path(spec)
    if out.is_dir():
        raise OutputError(f"{out} is a directory; give the file to write, e.g. {out}/backbone.pt")
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise OutputError(f"{out} is the checkpoint being exported; choose another output file")
    if out.exists() and not overwrite:
        raise OutputError(
            f"{out} already exists; pass --overwrite to replace it, or choose another output file"
        )
    check_writable_dir(out.parent, "output directory")

    model = load_model(source, options=options)
    state, folded = backbone_state_dict(model.backbone, fmt)
    kwargs = monai_resnet_kwargs(model.backbone)
    kwargs["n_input_channels"] = int(state["conv1.weight"].shape[1])
    metadata = export_metadata_of(model, fmt=fmt, monai_kwargs=kwargs, zca_folded=folded)
    state = with_export_metadata(state, metadata)
    with writing(out, "nothing was written"), atomic_write(out, "wb", fsync=True) as f:
        torch.save(state, f)
    return ExportResult(
        path=out,
        format=fmt,
        arch=model.backbone.arch,
        in_channels=int(state["conv1.weight"].shape[1]),
        num_tensors=len(state),
        num_parameters=sum(p.numel() for p in model.backbone.parameters()),
        size_bytes=out.stat().st_size,
        zca_folded=folded,
        image_size=model.image_size,
        monai_kwargs=kwargs,
        source=source,
        hu_window=metadata["hu_window"],
        assumptions=model.assumptions,
    )


#: Version of the metadata an export records (see :func:`export_metadata_of`).
EXPORT_METADATA_VERSION = 1


def export_metadata_of(
    model: LoadedModel, *, fmt: str, monai_kwargs: dict[str, Any], zca_folded: bool
) -> dict[str, Any]:
    """What an export records about itself, as plain data.

    ``{"format": "collapsekit-export", "version", "export_format", "arch", "model_kwargs"
    (MONAI ``ResNet`` kwargs, the stem stride included), "in_channels", "image_size" (training
    size, ``None`` if unknown), "hu_window" (``[a_min, a_max]`` of the run, ``None`` if unknown),
    "zca_folded", "source_kind"}``.
    """
    config = model.config or {}
    window = None
    if "a_min" in config and "a_max" in config:
        window = [float(config["a_min"]), float(config["a_max"])]
    elif model.metadata and model.metadata.get("hu_window") is not None:
        window = list(model.metadata["hu_window"])
    return {
        "format": "collapsekit-export",
        "version": EXPORT_METADATA_VERSION,
        "export_format": fmt,
        "arch": model.backbone.arch,
        "model_kwargs": dict(monai_kwargs),
        "in_channels": int(monai_kwargs["n_input_channels"]),
        "image_size": model.image_size,
        "hu_window": window,
        "zca_folded": bool(zca_folded or (model.metadata or {}).get("zca_folded", False)),
        "source_kind": model.kind,
    }


def with_export_metadata(
    state: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """``state`` as an ``OrderedDict`` whose ``_metadata`` records ``metadata``.

    ``_metadata`` is where PyTorch keeps a state dict's per-module versions; it survives
    ``torch.save``/``torch.load(weights_only=True)``, and ``load_state_dict`` looks up only module
    names there, so the file still loads ``strict=True`` into ``monai.networks.nets.resnetXX``.
    Read it back with :func:`collapsekit.runs.models.export_metadata` (or
    ``torch.load(path)._metadata["collapsekit"]``).
    """
    out: OrderedDict[str, torch.Tensor] = OrderedDict(state)
    versions = getattr(state, "_metadata", None)
    meta: OrderedDict[str, Any] = OrderedDict(versions or {})
    meta[EXPORT_METADATA_KEY] = metadata
    out._metadata = meta  # type: ignore[attr-defined]
    return out
