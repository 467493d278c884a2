"""The one validator of labelled CT volumes, used by ``data check``, the probe and fine-tuning.

``data check`` and the segmentation evaluation must agree on what a usable labelled dataset is: a
label map per case with the image's shape, integer values, every value in the dataset's class set
(0 = background plus the organ ids), and at least one organ in the validation split. One function
per rule, here, so a dataset that passes ``data check`` is never rejected by ``probe``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from collapsekit.data.volume import Volume
from collapsekit.errors import DataError

__all__ = ["label_values", "check_label_map", "check_labelled"]


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
