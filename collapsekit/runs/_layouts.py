"""Key layouts of ResNet weights as other tools save them, mapped to torchvision's names.

Two layouts hold a ResNet trunk, under any prefix:

- **named** (torchvision, timm, MONAI, official MoCo, solo-learn, our exports): ``conv1.weight``,
  ``bn1.*``, ``layer1.0.conv1.weight``, ..., ``layer2.0.downsample.0.weight``, ``fc.*``;
- **sequential** (lightly: ``nn.Sequential(*list(resnet.children())[:-1])``): ``0.weight`` (conv1),
  ``1.*`` (bn1), ``4.*`` .. ``7.*`` (layer1..4); indices 2, 3 (ReLU, max-pool) and 8 (avg-pool)
  hold no tensors. torchvision's and MONAI's ResNets list their children in that same order.

A prefix is found from the keys (``module.encoder_q.``, ``backbone.``, ``model.backbone.``, ...).
When several trunks are present (MoCo's query and key encoders, solo-learn's ``backbone`` and
``momentum_backbone``), the query/online one is taken by name (:data:`PREFERRED`); otherwise the
caller must say which with ``strip_prefix``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch

from collapsekit.errors import CheckpointError

__all__ = ["Trunk", "find_trunk", "describe_keys", "MAP_OPTIONS"]

#: Prefixes chosen, in this order, when several trunks are present.
PREFERRED = (
    "",
    "module.encoder_q.",
    "encoder_q.",
    "backbone.",
    "module.backbone.",
    "model.backbone.",
    "model.encoder.",
    "encoder.",
    "model.",
    "module.",
    "net.",
)
#: lightly's nn.Sequential indices -> torchvision child names (2 ReLU, 3 max-pool: no tensors).
_SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
#: What a user passes when the keys fit no layout (CLI spelling; Python: load_model's arguments).
MAP_OPTIONS = (
    "--state-dict-key KEY (the entry holding the weights), --strip-prefix PREFIX (the part of "
    "the names before conv1/layer1) and --arch resnet18|resnet34|resnet50"
)


@dataclass(frozen=True)
class Trunk:
    """A ResNet trunk's tensors under torchvision's names (``fc`` dropped).

    Attributes:
        state: ``{"conv1.weight": ..., "layer1.0.conv1.weight": ..., ...}``.
        prefix: the prefix stripped from the file's names.
        layout: ``named`` or ``sequential``.
        others: other trunk prefixes present and not taken (a momentum encoder).
    """

    state: dict[str, torch.Tensor]
    prefix: str
    layout: str
    others: tuple[str, ...] = ()


def _tensors(state: dict[Any, Any]) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _candidates(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{prefix: layout}`` of every trunk the names show."""
    found: dict[str, str] = {}
    for k in tensors:
        if k.endswith("layer1.0.conv1.weight"):
            p = k[: -len("layer1.0.conv1.weight")]
            if p + "conv1.weight" in tensors:
                found[p] = "named"
        elif k.endswith("4.0.conv1.weight"):
            p = k[: -len("4.0.conv1.weight")]
            if (not p or p.endswith(".")) and p + "0.weight" in tensors:
                found.setdefault(p, "sequential")
    return found


def _rename(tensors: dict[str, torch.Tensor], prefix: str, layout: str) -> dict[str, torch.Tensor]:
    """The trunk's tensors under ``prefix``, renamed to torchvision's names; ``fc`` dropped."""
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix) :]
        if layout == "sequential":
            head, _, rest = name.partition(".")
            if head not in _SEQUENTIAL:
                continue  # a projection head after the trunk, or the avg-pool's index
            name = f"{_SEQUENTIAL[head]}.{rest}"
        elif name.startswith("fc.") or not name.startswith(("conv1.", "bn1.", "layer")):
            continue  # the classifier, or a head beside the trunk (projector, queue ...)
        out[name] = v
    return out


def find_trunk(state: dict[Any, Any], strip_prefix: str | None = None, source: str = "") -> Trunk:
    """The ResNet trunk in ``state``, renamed to torchvision's names.

    Args:
        state: a state dict (tensors; other values are ignored).
        strip_prefix: the prefix in front of ``conv1``/``layer1`` (or of lightly's ``0``/``4``);
            ``None``: found from the names.
        source: the file, for messages.

    Raises:
        CheckpointError: no trunk, or several and none preferred (the message lists them and the
            options that choose).
    """
    tensors = _tensors(state)
    found = _candidates(tensors)
    if strip_prefix is not None:
        p = strip_prefix if not strip_prefix or strip_prefix.endswith(".") else strip_prefix + "."
        if p not in found:
            raise CheckpointError(
                f"{source}: no ResNet names under --strip-prefix {strip_prefix!r} "
                f"({describe_keys(tensors)}); trunks found under: "
                f"{', '.join(repr(c) for c in found) or 'none'}"
            )
        return Trunk(_rename(tensors, p, found[p]), p, found[p], tuple(c for c in found if c != p))
    if not found:
        raise CheckpointError(
            f"{source}: unrecognised checkpoint, no ResNet layout in its {describe_keys(tensors)}; "
            "recognised: collapsekit runs and exports, official MoCo ('module.encoder_q.*'), "
            "torchvision/timm/MONAI ResNet names, lightly's nn.Sequential indices; map it with "
            f"{MAP_OPTIONS}"
        )
    if len(found) == 1:
        ((p, layout),) = found.items()
        return Trunk(_rename(tensors, p, layout), p, layout)
    chosen = next((p for p in PREFERRED if p in found), None)
    if chosen is None:
        names = ", ".join(repr(p) for p in sorted(found))
        raise CheckpointError(
            f"{source}: {len(found)} ResNet trunks ({names}); choose one with --strip-prefix PREFIX"
        )
    layout = found[chosen]
    others = tuple(p for p in found if p != chosen)
    return Trunk(_rename(tensors, chosen, layout), chosen, layout, others)


def describe_keys(tensors: dict[str, Any], shown: int = 3) -> str:
    """``"120 tensors, e.g. 'a.b', 'a.c', 'd' (by first name: a 118, d 2)"``."""
    names = list(tensors)
    if not names:
        return "0 tensors"
    groups = Counter(re.split(r"\.", n, maxsplit=1)[0] for n in names)
    by_group = ", ".join(f"{g} {c}" for g, c in groups.most_common(4))
    more = f", +{len(groups) - 4} more" if len(groups) > 4 else ""
    examples = ", ".join(repr(n) for n in names[:shown])
    return f"{len(names)} tensors, e.g. {examples} (by first name: {by_group}{more})"
