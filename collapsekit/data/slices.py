"""Map-style dataset of axial slices over preprocessed volumes.

Indexed by ``(volume, slice)`` so a shuffled DataLoader mixes slices of all volumes in one batch
(an iterable patch stream would put adjacent, near-identical slices together as negatives). The
volumes are decoded once (see :func:`~collapsekit.data.loading.load_volumes`), so epochs never
re-read ``.nii.gz`` files.

A slice is ``volume.image[:, :, z]`` in the volume's array layout (RAS: rows run towards the
patient's Right, columns towards Anterior); use
:func:`~collapsekit.data.volume.radiological_view` to display it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from collapsekit.data.augment import TwoViewTransform
from collapsekit.data.cache import MappedVolume, read_slice
from collapsekit.data.volume import Volume
from collapsekit.errors import ConfigError, DataError, InputError

__all__ = [
    "SliceDataset",
    "pretrain_dataset",
    "resize_label",
    "resize_slice",
    "select_slices",
    "slice_tensor",
]


def letterbox(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Geometry of fitting an ``height × width`` slice into ``size × size`` without distortion.

    The longer side becomes ``size``, the shorter one ``round(size · short / long)`` (at least 1),
    and the image is centred: returns ``(h, w, top, left)``, the resized extent and its offset.
    Square slices give ``(size, size, 0, 0)``.
    """
    scale = size / max(height, width)
    h = max(1, min(size, round(height * scale)))
    w = max(1, min(size, round(width * scale)))
    return h, w, (size - h) // 2, (size - w) // 2


def _fit(x: torch.Tensor, size: int, **interp: Any) -> torch.Tensor:
    lead, (height, width) = x.shape[:-2], x.shape[-2:]
    h, w, top, left = letterbox(height, width, size)
    y = F.interpolate(x.reshape(-1, 1, height, width), size=(h, w), **interp)
    if (h, w) != (size, size):  # pad with 0: air after windowing, background for labels
        y = F.pad(y, (left, size - w - left, top, size - h - top))
    return y.reshape(*lead, size, size)


def resize_slice(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the last two axes of ``(..., H, W)`` to ``(size, size)``, keeping the aspect ratio.

    The one image resize of collapsekit: pretraining, the monitor, embedding extraction, the
    linear probe and fine-tuning all call it, so every path sees the same pixels of a slice.
    Bilinear, ``align_corners=False``, anti-aliased (a 512-px slice shrunk to 128 px without
    antialiasing aliases its noise and edges). A non-square slice (real CT can be 122×101) is
    scaled so its longer side is ``size`` and padded with zeros (see :func:`letterbox`), never
    stretched. Each leading index is resized independently.
    """
    if image.shape[-2:] == (size, size):
        return image
    return _fit(image, size, mode="bilinear", align_corners=False, antialias=True)


def resize_label(label: torch.Tensor, size: int) -> torch.Tensor:
    """Resize label maps ``(..., H, W)`` to ``(size, size)`` like :func:`resize_slice` (same
    letterbox), with nearest neighbour (``nearest-exact``); padding is background (0)."""
    if label.shape[-2:] == (size, size):
        return label
    return _fit(label.float(), size, mode="nearest-exact").to(label.dtype)


def unletterbox(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of the letterbox for dense outputs: ``(B, K, s, s)`` maps of a letterboxed slice at
    any resolution ``s`` -> ``(B, K, height, width)``, cropping the padding and resizing bilinearly."""
    s = maps.shape[-1]
    h, w, top, left = letterbox(height, width, s)
    maps = maps[..., top : top + h, left : left + w]
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)


def select_slices(volumes: Sequence[Volume], samples: int | None) -> list[tuple[int, int]]:
    """Deterministic, evenly spaced ``(volume, slice)`` pairs over all usable slices."""
    index = [(v, int(s)) for v, vol in enumerate(volumes) for s in vol.slices]
    if not index:
        raise InputError("no usable slices in the selected volumes (all slices had almost no body)")
    if samples is None or samples >= len(index):
        return index
    pick = np.linspace(0, len(index) - 1, num=samples).round().astype(int)
    return [index[i] for i in pick]


def slice_tensor(
    volumes: Sequence[Volume], index: Sequence[tuple[int, int]], image_size: int
) -> torch.Tensor:
    """Stack slices into ``(B, 1, S, S)`` float32, resized with :func:`resize_slice`."""
    out = []
    for v, s in index:
        img = torch.from_numpy(read_slice(volumes[v].image, s))
        out.append(resize_slice(img[None], image_size))
    return torch.stack(out)


class SliceDataset(Dataset):
    """Axial slices of preprocessed volumes.

    Args:
        volumes: preprocessed volumes; only their :attr:`Volume.slices` are used.
        image_size: resize every slice to ``(image_size, image_size)`` (image bilinear and
            anti-aliased, label nearest); ``None`` keeps the volume's in-plane size.
        with_label: also return the label map (volumes must have labels).
        transform: applied to the ``(1, H, W)`` image tensor (after ``image_size`` resizing); its
            dict output is returned, merged with ``volume`` and ``slice`` (and ``label``).

    Attributes:
        index: ``(volume index, slice index)`` pairs, in volume order then slice order.

    Slices are read one at a time with :func:`~collapsekit.data.cache.read_slice`: over memory-mapped
    volumes (a disk cache) no volume is ever materialised, and the pages of a slice are released once
    it is copied, so resident memory does not grow with the number of volumes. The dataset pickles
    memory-mapped volumes as file references (:class:`~collapsekit.data.cache.MappedVolume`).

    Items are ``{"image": float32 (1, S, S), "label": int64 (S, S) (if with_label), "volume": int,
    "slice": int}``, or ``transform(image) | {"volume", "slice"}`` when a transform is given.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        *,
        image_size: int | None = None,
        with_label: bool = False,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        if image_size is not None and image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        if with_label:
            missing = [v.case_id for v in volumes if v.label is None]
            if missing:
                raise DataError(
                    f"with_label=True but case {missing[0]} has no label map ({len(missing)} cases without labels)"
                )
        self.volumes = list(volumes)
        self.image_size = image_size
        self.with_label = with_label
        self.transform = transform
        self.index: list[tuple[int, int]] = [
            (vi, int(z)) for vi, v in enumerate(self.volumes) for z in v.slices
        ]

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        # Disk-cache volumes travel to spawned DataLoader workers as file references, not copies.
        state = self.__dict__.copy()
        state["volumes"] = [MappedVolume.of(v) for v in self.volumes]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["volumes"] = [m.open() for m in state["volumes"]]
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return (
            f"SliceDataset({len(self.volumes)} volumes, {len(self)} slices, image_size={self.image_size}, "
            f"with_label={self.with_label}, transform={self.transform!r})"
        )

    def slice_image(self, i: int) -> torch.Tensor:
        """The float32 ``(1, S, S)`` image of item ``i`` before any transform."""
        vi, z = self.index[i]
        img = torch.from_numpy(read_slice(self.volumes[vi].image, z))[None]
        return resize_slice(img, self.image_size) if self.image_size is not None else img

    def slice_label(self, i: int) -> torch.Tensor:
        """The int64 ``(S, S)`` label map of item ``i``."""
        vi, z = self.index[i]
        label = self.volumes[vi].label
        if label is None:
            raise DataError(f"case {self.volumes[vi].case_id} has no label map")
        lab = torch.from_numpy(read_slice(label, z, np.int64))
        return resize_label(lab, self.image_size) if self.image_size is not None else lab

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"slice index {i} out of range for {len(self)} slices")
        i = i % len(self)
        vi, z = self.index[i]
        image = self.slice_image(i)
        out: dict[str, Any]
        if self.transform is not None:
            result = self.transform(image)
            out = dict(result) if isinstance(result, dict) else {"image": result}
        else:
            out = {"image": image}
        if self.with_label:
            out["label"] = self.slice_label(i)
        out["volume"] = vi
        out["slice"] = z
        return out


def pretrain_dataset(volumes: Sequence[Volume], transform: TwoViewTransform) -> SliceDataset:
    """Slices of ``volumes`` fed through a two-view transform (no labels), for contrastive pretraining."""
    return SliceDataset(volumes, transform=transform)
