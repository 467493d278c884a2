"""The one validator of labelled CT volumes, used by ``data check`` (:func:`check_dataset`), the probe
and fine-tuning.

``data check`` and the segmentation evaluation must agree on what a usable labelled dataset is: a
label map per case with the image's shape, integer values, every value in the dataset's class set
(0 = background plus the organ ids), and at least one organ in the validation split. One function
per rule, here, so a dataset that passes ``data check`` is never rejected by ``probe``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collapsekit.data.dicom import series_summary
from collapsekit.data.labels import ABDOMENCT1K_LABELS, BTCV_LABELS
from collapsekit.data.layouts import discover
from collapsekit.data.loading import LoadOptions, load_volumes, voxel_spacing
from collapsekit.data.preprocess import PreprocessConfig
from collapsekit.data.spec import PhantomConfig
from collapsekit.data.volume import Volume, check_label_geometry
from collapsekit.errors import DataError
from collapsekit.progress import ProgressCallback

__all__ = ["check_dataset", "check_label_map", "check_labelled"]


def label_values(lab: np.ndarray) -> set[int]:
    """Distinct values of an integer array (bincount is far faster than unique on 10⁷ voxels)."""
    lab = lab.astype(np.int64, copy=False)
    lo = int(lab.min())
    if lo < 0:
        return {int(x) for x in np.unique(lab)}
    return {int(x) for x in np.flatnonzero(np.bincount(lab.ravel()))}


def check_label_map(
    volume: Volume, split: str, labels: Mapping[int, str] | None = None
) -> set[int]:
    """Check one labelled volume and return the label values it holds.

    Args:
        volume: a case with ``image`` and ``label`` of shape ``(H, W, Z)``.
        split: the split's name, for the message.
        labels: organ id -> name; values outside ``{0} ∪ labels`` are refused. ``None`` accepts
            any non-negative integer (a ``folder`` dataset has no fixed class set).

    Raises:
        DataError: naming the split and case: no label map, shapes differ, non-integer or
            negative values, values outside the class set.
    """
    case = volume.case_id
    if volume.label is None:
        raise DataError(f"{split} case '{case}' has no label map")
    if volume.image.ndim != 3:
        raise DataError(
            f"{split} case '{case}': expected an (H, W, Z) image, got shape {volume.image.shape}"
        )
    if volume.image.shape != volume.label.shape:
        raise DataError(
            f"{split} case '{case}': image shape {tuple(volume.image.shape)} and label shape "
            f"{tuple(volume.label.shape)} differ"
        )
    lab = np.asarray(volume.label)
    if lab.dtype.kind == "f" and not np.array_equal(lab, np.round(lab)):
        raise DataError(f"{split} case '{case}': label map holds non-integer values")
    found = label_values(lab)
    if labels is None:
        if min(found) < 0:
            raise DataError(f"{split} case '{case}': label map holds negative values")
        return found
    allowed = {0, *(int(k) for k in labels)}
    extra = sorted(found - allowed)
    if extra:
        raise DataError(
            f"{split} case '{case}': label values {extra[:8]} are outside the class set "
            f"(0 = background, organs {sorted(allowed - {0})})"
        )
    return found


def check_labelled(
    train: Sequence[Volume], val: Sequence[Volume], labels: Mapping[int, str], *, what: str
) -> None:
    """Check that ``train``/``val`` can be used for segmentation (the probe, fine-tuning).

    Every case has a valid label map (:func:`check_label_map`), validation case ids are unique,
    neither split is empty and some organ of ``labels`` appears in the validation split.

    Raises:
        DataError: the first problem, naming the case and what ``what`` (e.g. "linear probe") needs.
    """
    if not labels:
        raise DataError("no organ labels given: labels must map at least one organ id to a name")
    if len(labels) > 254:
        raise DataError(f"at most 254 organ classes are supported, got {len(labels)}")
    if any(int(k) < 1 for k in labels):
        raise DataError(f"organ ids must be ≥ 1 (0 is background), got {sorted(labels)}")
    if len(train) == 0:
        raise DataError(f"the training split is empty: the {what} needs labelled training volumes")
    if len(val) == 0:
        raise DataError(
            f"the validation split is empty: the {what} needs at least one labelled validation volume"
        )
    seen: set[str] = set()
    present_any = False
    for split, volumes in (("training", train), ("validation", val)):
        for v in volumes:
            if split == "validation":
                if v.case_id in seen:
                    raise DataError(
                        f"validation case '{v.case_id}' appears twice; case ids must be unique"
                    )
                seen.add(v.case_id)
            if v.label is None:
                raise DataError(
                    f"{split} case '{v.case_id}' has no label map; the {what} needs labels on "
                    "every training and validation case"
                )
            found = check_label_map(v, split, labels)
            if split == "validation" and found - {0}:
                present_any = True
    if not present_any:
        raise DataError(
            "no organ of the label set appears in any validation volume: nothing to score"
        )


def check_dataset(
    dataset: str,
    data_dir: str | Path | None = None,
    phantom: PhantomConfig | None = None,
    preprocess: PreprocessConfig = PreprocessConfig(),
    progress: ProgressCallback | None = None,
    *,
    options: LoadOptions = LoadOptions(),
) -> dict[str, Any]:
    """Load every case of a dataset and summarise it (``options``: see
    :func:`~collapsekit.data.loading.load_volumes`).

    Returns:
        ``{"dataset", "root", "volumes": {"training", "validation", "test"}, "slices": {"training",
        "validation", "test", "total"} (usable slices), "labels": sorted foreground label ids present,
        "spacing": {"min": [x, y, z], "max": [...]}, "shape": {"min": [H, W, Z], "max": [...]}}``;
        spacing and shape are of the preprocessed volumes; ``"dicom"``: the DICOM series among them
        (:func:`~collapsekit.data.dicom.series_summary`: series count, slices, spacing).
        Every label map is checked against the dataset's class set
        (:func:`~collapsekit.data.validate.check_label_map`); ``"segmentation"`` (``btcv`` and
        ``phantom``, else ``None``): ``{"usable", "reason"}``, the verdict of the probe's and
        fine-tuning's own split check (:func:`~collapsekit.data.validate.check_labelled`: labels
        on every training and validation case, a non-empty validation split with an organ in it),
        so ``data check`` and ``probe`` never disagree. ``"outside_data_dir"``: files of
        ``dataset_0.json`` outside the data directory (read as listed); ``"warnings"``: one line
        each (DICOM series read with blank UIDs or without rescale tags, volumes or a dataset
        without a usable slice, files outside the data directory). Each label file's affine is
        compared with its image's (a mirrored label map has the right shape and the wrong organs).

    Raises:
        LayoutError, DataError, ConfigError: the first problem found (a label value outside the
            class set, or a label whose affine differs from its image's, included).
    """
    index = discover(dataset, data_dir, phantom)
    volumes: dict[str, list[Volume]] = {}
    for split in ("training", "validation", "test"):
        volumes[split] = load_volumes(
            index.split(split),
            preprocess,
            phantom=index.phantom,
            options=options,
            progress=progress,
        )
    every = [v for vs in volumes.values() for v in vs]
    # Every label map against the dataset's class set (BTCV's 13 organs for btcv and the phantom):
    # a value outside it is corrupt data, for any use.
    class_set = {"abdomenct1k": ABDOMENCT1K_LABELS, "btcv": BTCV_LABELS, "phantom": BTCV_LABELS}
    labels: set[int] = set()
    for split, vs in volumes.items():
        for v in vs:
            if v.label is not None:
                labels.update(check_label_map(v, split, class_set.get(index.dataset)) - {0})
    segmentation: dict[str, Any] | None = None
    if index.dataset in ("btcv", "phantom"):
        # Whether the probe and fine-tuning can use the splits: their own validator decides.
        try:
            check_labelled(
                volumes["training"], volumes["validation"], BTCV_LABELS, what="linear probe"
            )
            segmentation = {"usable": True, "reason": None}
        except DataError as e:
            segmentation = {"usable": False, "reason": str(e)}
    slices = {k: int(sum(len(v.slices) for v in vs)) for k, vs in volumes.items()}
    slices["total"] = sum(slices.values())
    records = [r for split in ("training", "validation", "test") for r in index.split(split)]
    for v, r in zip(every, records, strict=True):
        if r.label is not None:
            check_label_geometry(v, r.label)
    warnings = list(index.notes)
    empty = [v.case_id for v in every if len(v.slices) == 0]
    if slices["total"] == 0:
        warnings.append(
            "no usable slice in the whole dataset (every slice has less body than "
            f"min_body_fraction {preprocess.min_body_fraction}): all air, or not CT in HU?"
        )
    elif empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        warnings.append(f"{len(empty)} volumes have no usable slice: {shown}")
    if index.outside:
        warnings.append(
            f"{len(index.outside)} files listed in dataset_0.json lie outside {index.root} "
            f"(read as listed): {', '.join(str(p) for p in index.outside[:5])}"
            + (", ..." if len(index.outside) > 5 else "")
        )
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
        "segmentation": segmentation,
        "outside_data_dir": [str(p) for p in index.outside],
        "warnings": warnings,
    }
