"""CT data: phantom, dataset layouts, preprocessing and caching, slice datasets, two-view augmentation.

Typical use::

    from collapsekit.data import PhantomConfig, TwoViewTransform, load_split, pretrain_dataset

    volumes = load_split("phantom", split="all", phantom=PhantomConfig(cases=12))
    ds = pretrain_dataset(volumes, TwoViewTransform(size=128))
"""

from __future__ import annotations

from collapsekit.data.augment import TwoViewTransform
from collapsekit.data.cache import clear_cache, memory_cache_info
from collapsekit.data.labels import ABDOMENCT1K_LABELS, BTCV_LABELS, BTCV_TO_ABDOMENCT1K
from collapsekit.data.layouts import DATASETS, DatasetIndex, discover
from collapsekit.data.loading import LoadOptions, load_split, load_volumes
from collapsekit.data.phantom import generate_phantom, write_phantom_dataset
from collapsekit.data.preprocess import PreprocessConfig, window
from collapsekit.data.slices import (
    SliceDataset,
    pretrain_dataset,
    resize_label,
    resize_slice,
    select_slices,
    slice_tensor,
)
from collapsekit.data.spec import PhantomConfig, eval_phantom
from collapsekit.data.validate import check_dataset
from collapsekit.data.volume import CaseRecord, Volume, radiological_view

__all__ = [
    "DATASETS",
    "BTCV_LABELS",
    "ABDOMENCT1K_LABELS",
    "BTCV_TO_ABDOMENCT1K",
    "CaseRecord",
    "Volume",
    "select_slices",
    "slice_tensor",
    "DatasetIndex",
    "PhantomConfig",
    "eval_phantom",
    "PreprocessConfig",
    "SliceDataset",
    "TwoViewTransform",
    "discover",
    "LoadOptions",
    "load_volumes",
    "load_split",
    "check_dataset",
    "generate_phantom",
    "write_phantom_dataset",
    "pretrain_dataset",
    "resize_slice",
    "resize_label",
    "radiological_view",
    "window",
    "clear_cache",
    "memory_cache_info",
]
