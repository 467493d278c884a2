"""CT data: phantom, dataset layouts, preprocessing and caching, slice datasets, two-view augmentation.

Typical use::

    from collapsekit.data import PhantomConfig, TwoViewTransform, load_split, pretrain_dataset

    volumes = load_split("phantom", split="all", phantom=PhantomConfig(cases=12))
    ds = pretrain_dataset(volumes, TwoViewTransform(size=128))
"""

from __future__ import annotations

from collapsekit.data.augment import TwoViewTransform, crop_grid, resized_crop, sample_crop_box
from collapsekit.data.cache import clear_cache, memory_cache_info
from collapsekit.data.labels import ABDOMENCT1K_LABELS, BTCV_LABELS, BTCV_TO_ABDOMENCT1K
from collapsekit.data.layouts import DATASETS, SPLITS, DatasetIndex, discover
from collapsekit.data.loading import LoadOptions, load_split, load_volumes, voxel_spacing
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
from collapsekit.data.spec import (
    EVAL_PHANTOM_SEED,
    PhantomConfig,
    eval_phantom,
    phantom_case_seed,
)
from collapsekit.data.validate import check_dataset
from collapsekit.data.volume import CaseRecord, Volume, radiological_view

__all__ = [
    "DATASETS",
    "SPLITS",
    "BTCV_LABELS",
    "ABDOMENCT1K_LABELS",
    "BTCV_TO_ABDOMENCT1K",
    "CaseRecord",
    "Volume",
    "select_slices",
    "slice_tensor",
    "DatasetIndex",
    "PhantomConfig",
    "EVAL_PHANTOM_SEED",
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
    "phantom_case_seed",
    "write_phantom_dataset",
    "pretrain_dataset",
    "resized_crop",
    "crop_grid",
    "sample_crop_box",
    "resize_slice",
    "resize_label",
    "radiological_view",
    "window",
    "voxel_spacing",
    "clear_cache",
    "memory_cache_info",
]
