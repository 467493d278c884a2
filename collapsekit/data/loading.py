"""Load preprocessed volumes (cached), whole splits, and summarise a dataset for ``data check``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collapsekit.data.cache import MEMORY, cache_key, read_disk, write_disk
from collapsekit.data.dicom import series_summary
from collapsekit.data.labels import ABDOMENCT1K_LABELS, BTCV_LABELS
from collapsekit.data.layouts import discover
from collapsekit.data.preprocess import PreprocessConfig, preprocess_record
from collapsekit.data.spec import PhantomConfig
from collapsekit.data.validate import check_label_map, check_labelled
from collapsekit.data.volume import CaseRecord, Volume
from collapsekit.options import look_up_option
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit

__all__ = ["load_volumes", "load_split", "check_dataset", "voxel_spacing"]


def load_volumes(
    records: Sequence[CaseRecord],
    preprocess: PreprocessConfig = PreprocessConfig(),
    *,
    phantom: PhantomConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> list[Volume]:
    """Read and preprocess cases, each decoded at most once per process (and per cache directory).

    Lookup order: the process-wide memory cache, then ``cache_dir/<key>.npz``, then the file (or the
    phantom generator). See :mod:`collapsekit.data.cache` for the key: a changed file (size or
    mtime) or a changed :class:`PreprocessConfig` never reuses an old entry.

    Args:
        records: cases from :func:`~collapsekit.data.layouts.discover`.
        preprocess: windowing, resampling and slice selection.
        phantom: phantom configuration for records without a file (default :class:`PhantomConfig`).
        cache_dir: optional directory of preprocessed ``.npz`` volumes (created if missing).
        progress: receives ``TaskStarted/TaskAdvanced/TaskFinished`` for task ``"load"``; each advance
            carries ``{"case": id, "cached": bool}``.

    Returns:
        One :class:`Volume` per record, in order. Volumes are shared with the cache and read-only.

    Raises:
        DataError: a missing, unreadable, 2D/4D, mismatched or non-integer-label file (the message
            names it).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    out: list[Volume] = []
    emit(progress, TaskStarted("load", total=len(records), description="loading volumes"))
    for rec in records:
        digest, key_json = cache_key(rec, preprocess, phantom)
        vol = MEMORY.get(digest)
        cached = vol is not None
        if vol is None and cache is not None:
            vol = read_disk(cache, digest, key_json, rec.case_id)
            cached = vol is not None
        if vol is None:
            vol = preprocess_record(rec, preprocess, phantom)
            if cache is not None:
                write_disk(cache, digest, key_json, vol)
        MEMORY[digest] = vol
        out.append(vol)
        emit(progress, TaskAdvanced("load", 1, {"case": rec.case_id, "cached": cached}))
    emit(progress, TaskFinished("load", {"volumes": len(out)}))
    return out


def load_split(
    dataset: str,
    data_dir: str | Path | None = None,
    split: str = "training",
    preprocess: PreprocessConfig = PreprocessConfig(),
    *,
    phantom: PhantomConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> list[Volume]:
    """``discover`` + ``load_volumes`` for one split.

    Args:
        dataset, data_dir, phantom: as in :func:`~collapsekit.data.layouts.discover`.
        split: ``training``, ``validation``, ``test`` or ``all`` (every case with an image, e.g.
            for pretraining; labels are loaded where they exist).
        preprocess, cache_dir, progress: as in :func:`load_volumes`.

    Raises:
        LayoutError, DataError, ConfigError: see ``discover`` and ``load_volumes``.
    """
    split = look_up_option(split, ("training", "validation", "test", "all"), "split")
    index = discover(dataset, data_dir, phantom)
    return load_volumes(
        index.split(split),
        preprocess,
        phantom=index.phantom,
        cache_dir=cache_dir,
        progress=progress,
    )


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size (mm) along each array axis: the column norms of the affine's ``3x3`` block."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_dataset(
    dataset: str,
    data_dir: str | Path | None = None,
    phantom: PhantomConfig | None = None,
    preprocess: PreprocessConfig = PreprocessConfig(),
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Load every case of a dataset and summarise it.

    Returns:
        ``{"dataset", "root", "volumes": {"training", "validation", "test"}, "slices": {"training",
        "validation", "test", "total"} (usable slices), "labels": sorted foreground label ids present,
        "spacing": {"min": [x, y, z], "max": [...]}, "shape": {"min": [H, W, Z], "max": [...]}}``;
        spacing and shape are of the preprocessed volumes; ``"dicom"``: the DICOM series among them
        (:func:`~collapsekit.data.dicom.series_summary`: series count, slices, spacing).
        ``btcv`` and ``phantom`` (what the probe and fine-tuning read) are checked by the probe's
        own validator, :func:`~collapsekit.data.validate.check_labelled`, so a dataset ``data
        check`` passes is one they accept; other label maps by
        :func:`~collapsekit.data.validate.check_label_map`.

    Raises:
        LayoutError, DataError, ConfigError: the first problem found.
    """
    index = discover(dataset, data_dir, phantom)
    volumes: dict[str, list[Volume]] = {}
    for split in ("training", "validation", "test"):
        volumes[split] = load_volumes(
            index.split(split), preprocess, phantom=index.phantom, progress=progress
        )
    every = [v for vs in volumes.values() for v in vs]
    if index.dataset in ("btcv", "phantom"):
        # What the probe and fine-tuning will be given: the same validator decides.
        check_labelled(
            volumes["training"], volumes["validation"], BTCV_LABELS, what="probe and fine-tuning"
        )
    class_set = ABDOMENCT1K_LABELS if index.dataset == "abdomenct1k" else None
    labels: set[int] = set()
    for split, vs in volumes.items():
        for v in vs:
            if v.label is not None:
                labels.update(check_label_map(v, split, class_set) - {0})
    slices = {k: int(sum(len(v.slices) for v in vs)) for k, vs in volumes.items()}
    slices["total"] = sum(slices.values())
    records = [r for split in ("training", "validation", "test") for r in index.split(split)]
    dicom = [v for v, r in zip(every, records, strict=True) if r.series_uid is not None]
    spacing = np.array([voxel_spacing(v.affine) for v in every])
    shape = np.array([v.image.shape for v in every])
    return {
        "dataset": index.dataset,
        "root": None if index.root is None else str(index.root),
        "volumes": index.counts(),
        "slices": slices,
        "labels": sorted(labels),
        "spacing": {
            "min": [round(float(x), 4) for x in spacing.min(0)],
            "max": [round(float(x), 4) for x in spacing.max(0)],
        },
        "shape": {"min": [int(x) for x in shape.min(0)], "max": [int(x) for x in shape.max(0)]},
        "dicom": series_summary(dicom),
    }
