"""Pre-decoded slices for the device augmentation: the CPU only indexes, the device does the pixels.

:class:`SliceStore` is a map-style dataset over the same ``(volume, slice)`` index as
:class:`~collapsekit.data.slices.SliceDataset`, but it returns the stored source slice as it is —
the disk cache's float16 (or an in-memory volume's float32), no resize, no augmentation — and
fetches a whole batch in one call (``__getitems__``, which a ``DataLoader`` with a batch sampler
uses): indices are sorted, runs of adjacent slices of one volume are read as one contiguous block
(a cached image is stored in Fortran order, so ``image[:, :, z0:z1]`` is one run of bytes), and the
batch is returned as one ``(B, 1, H, W)`` tensor. With ``pin_memory`` the DataLoader pins it, and the
copy to the GPU is ``non_blocking``; :class:`~collapsekit.data.device_augment.DeviceTwoView` then
makes the two views there.

Resident memory stays bounded as for :func:`~collapsekit.data.cache.read_slice`: after each block is
copied, the mapping's pages are dropped (``madvise(MADV_DONTNEED)``); the data stays in the OS page
cache. Slices of different in-plane sizes are padded to the largest ``(H, W)`` by edge replication
and each item reports its own size (see :mod:`~collapsekit.data.device_augment`).
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from collapsekit.data.cache import MappedVolume
from collapsekit.data.volume import Volume
from collapsekit.errors import InputError

__all__ = ["SliceStore", "batch_seed", "collate", "read_block"]


def read_block(array: np.ndarray, z0: int, z1: int, dtype: np.dtype | type) -> np.ndarray:
    """A copy of the axial slices ``array[:, :, z0:z1]`` as ``(z1 - z0, H, W)`` ``dtype``; a
    memory-mapped array's pages are dropped afterwards (as :func:`~collapsekit.data.cache.read_slice`)."""
    out = np.ascontiguousarray(np.moveaxis(array[:, :, z0:z1], -1, 0), dtype=dtype)
    mm = getattr(array, "_mmap", None)
    if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)
    return out


def batch_seed(seed: int, epoch: int, indices: Sequence[int]) -> int:
    """The augmentation seed of one batch: a function of ``(seed, epoch, the batch's indices)`` only,
    so a resumed run draws the same views (on the same device) whatever the number of workers."""
    entropy = [int(seed), int(epoch), *(int(i) for i in indices)]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> 1)


class SliceStore(Dataset):
    """The usable axial slices of ``volumes`` as stored, fetched a batch at a time.

    Args:
        volumes: preprocessed volumes (disk-cache entries are memory-mapped float16).
        seed: run seed; each batch carries ``seed`` = :func:`batch_seed` ``(seed, epoch, indices)``.

    Attributes:
        index: ``(volume, slice)`` pairs, as :class:`~collapsekit.data.slices.SliceDataset`'s.
        epoch: set by the training loop before each pass (part of the batch seed).
        height, width: the common (largest) in-plane size.
        dtype: the stored dtype shared by all volumes (float16 for the disk cache).

    ``store[i]`` is ``{"image": (1, H, W), "size": int64 (2,), "volume", "slice", "index"}``;
    ``store.__getitems__(indices)`` the collated batch ``{"image": (B, 1, H, W), "size": (B, 2),
    "volume", "slice", "index": int64 (B,), "seed": int}`` (use :func:`collate` as the
    DataLoader's ``collate_fn``).
    """

    def __init__(self, volumes: Sequence[Volume], seed: int = 0) -> None:
        self.volumes = list(volumes)
        self.index: list[tuple[int, int]] = [
            (vi, int(z)) for vi, v in enumerate(self.volumes) for z in v.slices
        ]
        if not self.index:
            raise InputError("no usable slices in the selected volumes")
        self.height = max(int(v.image.shape[0]) for v in self.volumes)
        self.width = max(int(v.image.shape[1]) for v in self.volumes)
        self.dtype = np.result_type(*(v.image.dtype for v in self.volumes))
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (
            f"SliceStore({len(self.volumes)} volumes, {len(self)} slices, "
            f"{self.height}x{self.width} {self.dtype})"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # disk-cache volumes travel to workers as file references
        state["volumes"] = [MappedVolume.of(v) for v in self.volumes]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["volumes"] = [m.open() for m in state["volumes"]]
        self.__dict__.update(state)

    def _pad(self, block: np.ndarray) -> np.ndarray:
        h, w = block.shape[-2:]
        if (h, w) == (self.height, self.width):
            return block
        return np.pad(block, ((0, 0), (0, self.height - h), (0, self.width - w)), mode="edge")

    def gather(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Slices ``indices`` as ``(B, 1, H, W)`` (stored dtype) and their own sizes ``(B, 2)``.

        Runs of adjacent slices of one volume are read as one contiguous block."""
        order = sorted(range(len(indices)), key=lambda k: self.index[indices[k]])
        out = np.empty((len(indices), 1, self.height, self.width), self.dtype)
        sizes = np.empty((len(indices), 2), np.int64)
        k = 0
        while k < len(order):
            vi, z0 = self.index[indices[order[k]]]
            run = 1  # extend the run while the next sorted item is the next slice of the volume
            while k + run < len(order) and self.index[indices[order[k + run]]] == (vi, z0 + run):
                run += 1
            image = self.volumes[vi].image
            block = self._pad(read_block(image, z0, z0 + run, self.dtype))
            for r in range(run):
                out[order[k + r], 0] = block[r]
                sizes[order[k + r]] = image.shape[:2]
            k += run
        return torch.from_numpy(out), torch.from_numpy(sizes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"slice index {i} out of range for {len(self)} slices")
        i %= len(self)
        image, size = self.gather([i])
        vi, z = self.index[i]
        return {"image": image[0], "size": size[0], "volume": vi, "slice": z, "index": i}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        indices = [int(i) % len(self) for i in indices]
        image, size = self.gather(indices)
        return {
            "image": image,
            "size": size,
            "volume": torch.tensor([self.index[i][0] for i in indices]),
            "slice": torch.tensor([self.index[i][1] for i in indices]),
            "index": torch.tensor(indices),
            "seed": batch_seed(self.seed, self.epoch, indices),
        }


def collate(batch: Any) -> Any:
    """``collate_fn`` for :class:`SliceStore`: its ``__getitems__`` already returns the batch."""
    return batch
