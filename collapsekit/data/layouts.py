"""Dataset layouts on disk: find the cases of BTCV, AbdomenCT-1K, a folder of NIfTI files, or the phantom.

:func:`discover` only lists files (nothing is decoded); :func:`~collapsekit.data.preprocess.load_volumes`
reads them. Every layout problem raises :class:`~collapsekit.errors.LayoutError` whose message names
the directory and the structure that was expected.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from collapsekit.data.dicom import DicomSeries, find_series
from collapsekit.data.spec import PhantomConfig, phantom_case_seed
from collapsekit.data.volume import CaseRecord, describe_path
from collapsekit.errors import ConfigError, DataError, LayoutError
from collapsekit.options import look_up_option

__all__ = ["DATASETS", "DatasetIndex", "discover"]

#: Dataset names :func:`discover` understands.
DATASETS = ("phantom", "btcv", "abdomenct1k", "folder")
#: Split names; ``"all"`` is every case with an image (training + validation + test).
SPLITS = ("training", "validation", "test", "all")
#: Case numbers of the raw Synapse layout that go to validation: the same six cases
#: (img0035..img0040) as the ``validation`` list of MONAI's BTCV ``dataset_0.json``.
BTCV_RAW_VALIDATION = frozenset(range(35, 41))

BTCV_LAYOUT_HELP = (
    "expected either DIR/dataset_0.json (MONAI layout: 'training'/'validation' lists of "
    '{"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz"}, optional \'test\' list) '
    "or the raw Synapse layout DIR/RawData/Training/img/img0001.nii.gz + DIR/RawData/Training/label/label0001.nii.gz"
)
BTCV_ABOUT = (
    "BTCV is the Synapse multi-organ abdominal CT dataset (30 labelled cases, 13 organs); "
    "download it from synapse.org after registering (Synapse ID syn3193805)"
)
ABDOMENCT1K_LAYOUT_HELP = (
    "expected DIR/AbdomenCT-1K-ImagePart1/Case_00001_0000.nii.gz (ImagePart1..3) "
    "and optionally DIR/Mask/Case_00001.nii.gz"
)
FOLDER_LAYOUT_HELP = (
    "expected a directory tree holding .nii or .nii.gz volumes and/or DICOM series "
    "(one directory of .dcm slices per series)"
)

_NII = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class DatasetIndex:
    """The cases of a dataset, by split.

    Attributes:
        dataset: ``"phantom"``, ``"btcv"``, ``"abdomenct1k"`` or ``"folder"``.
        root: the data directory (``None`` for the phantom).
        training, validation, test: case records; test cases usually have no label.
        phantom: the phantom configuration (phantom only), needed to generate its volumes.
        outside: files listed in ``dataset_0.json`` that lie outside ``root`` (``../`` or
            absolute paths); they are read, and ``data check`` lists them.
        notes: warnings found while listing (DICOM series read with a blank UID or without
            rescale tags), one line each; ``data check`` and training show them.
    """

    dataset: str
    root: Path | None
    training: list[CaseRecord]
    validation: list[CaseRecord]
    test: list[CaseRecord]
    phantom: PhantomConfig | None = field(default=None, compare=False)
    outside: tuple[Path, ...] = field(default=(), compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def split(self, name: str) -> list[CaseRecord]:
        """Records of split ``name`` (``training``, ``validation``, ``test`` or ``all``)."""
        name = look_up_option(name, SPLITS, "split")
        if name == "all":
            return [*self.training, *self.validation, *self.test]
        return list(getattr(self, name))

    def counts(self) -> dict[str, int]:
        """Number of cases per split: ``{"training": .., "validation": .., "test": ..}``."""
        return {
            "training": len(self.training),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def _strip_nii(name: str) -> str:
    return _NII.sub("", name)


def _require_dir(root: Path, dataset: str, help_text: str) -> None:
    if not root.exists():
        about = f"{BTCV_ABOUT}; " if dataset == "btcv" else ""
        raise LayoutError(f"{dataset} data directory {root} does not exist; {about}{help_text}")
    if not root.is_dir():
        raise LayoutError(f"{dataset} data directory {root} is not a directory; {help_text}")


def _json_path(root: Path, value: object, json_file: Path, where: str, outside: list[Path]) -> Path:
    """The file an entry of ``dataset_0.json`` names: relative to ``root`` or absolute.

    Entries may leave ``root`` (``../other/img.nii.gz``, ``/data/img.nii.gz``): users share image
    directories between datasets on purpose, so they are read; each is added to ``outside`` so that
    ``data check`` lists them.
    """
    if not isinstance(value, str) or not value:
        raise LayoutError(f"{json_file}: {where} must be a relative file path, got {value!r}")
    p = Path(value)
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise DataError(f"{p} {describe_path(p)} (listed in {json_file} under {where})")
    if not _inside(p, root):
        outside.append(p)
    return p


def _inside(p: Path, root: Path) -> bool:
    """Whether ``p`` lies under ``root`` once ``..`` and symlinks are resolved."""
    try:
        return p.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def _btcv_from_json(root: Path, json_file: Path) -> DatasetIndex:
    try:
        doc = json.loads(json_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LayoutError(f"{json_file} is not valid JSON ({e}); {BTCV_LAYOUT_HELP}") from None
    except RecursionError:
        raise LayoutError(
            f"{json_file} is nested too deeply to be a dataset list; {BTCV_LAYOUT_HELP}"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("training"), list):
        raise LayoutError(f"{json_file} has no 'training' list; {BTCV_LAYOUT_HELP}")
    splits: dict[str, list[CaseRecord]] = {}
    outside: list[Path] = []
    for split in ("training", "validation", "test"):
        entries = doc.get(split, [])
        if not isinstance(entries, list):
            raise LayoutError(
                f"{json_file}: '{split}' must be a list, got {type(entries).__name__}"
            )
        records: list[CaseRecord] = []
        for i, entry in enumerate(entries):
            where = f"'{split}'[{i}]"
            if isinstance(entry, str):
                image, label = _json_path(root, entry, json_file, where, outside), None
            elif isinstance(entry, dict) and "image" in entry:
                image = _json_path(root, entry["image"], json_file, where + ".image", outside)
                label = (
                    _json_path(root, entry["label"], json_file, where + ".label", outside)
                    if entry.get("label")
                    else None
                )
            else:
                raise LayoutError(
                    f"{json_file}: {where} must be a path or an object with an 'image' key, got {entry!r}"
                )
            records.append(CaseRecord(_strip_nii(image.name), image, label))
        splits[split] = records
    if not any(splits.values()):
        raise LayoutError(f"{json_file} lists no cases; {BTCV_LAYOUT_HELP}")
    return DatasetIndex(
        "btcv",
        root,
        splits["training"],
        splits["validation"],
        splits["test"],
        outside=tuple(dict.fromkeys(outside)),
    )


def _case_number(name: str) -> int | None:
    m = re.search(r"(\d+)", name)
    return int(m.group(1)) if m else None


def _btcv_from_raw(root: Path, raw: Path) -> DatasetIndex:
    img_dir, lab_dir = raw / "Training" / "img", raw / "Training" / "label"
    images = sorted(p for p in img_dir.iterdir() if p.is_file() and _NII.search(p.name))
    if not images:
        raise LayoutError(f"{img_dir} holds no .nii.gz images; {BTCV_LAYOUT_HELP}")
    training: list[CaseRecord] = []
    validation: list[CaseRecord] = []
    for img in images:
        num = _case_number(_strip_nii(img.name))
        label = None
        if num is not None:
            for ext in (".nii.gz", ".nii"):
                cand = lab_dir / f"label{num:04d}{ext}"
                if cand.is_file():
                    label = cand
                    break
        if label is None:
            raise DataError(
                f"{img} has no label file (expected {lab_dir / f'label{(num or 0):04d}.nii.gz'})"
            )
        rec = CaseRecord(_strip_nii(img.name), img, label)
        (validation if num in BTCV_RAW_VALIDATION else training).append(rec)
    test_dir = raw / "Testing" / "img"
    test = []
    if test_dir.is_dir():
        test = [
            CaseRecord(_strip_nii(p.name), p, None)
            for p in sorted(test_dir.iterdir())
            if _NII.search(p.name)
        ]
    return DatasetIndex("btcv", root, training, validation, test)


def _discover_btcv(root: Path) -> DatasetIndex:
    _require_dir(root, "btcv", BTCV_LAYOUT_HELP)
    if (root / "dataset_0.json").is_file():
        return _btcv_from_json(root, root / "dataset_0.json")
    for raw in (root / "RawData", root):
        if (raw / "Training" / "img").is_dir():
            return _btcv_from_raw(root, raw)
    empty = not any(root.iterdir())
    what = "is empty" if empty else "has neither dataset_0.json nor RawData/Training/img"
    raise LayoutError(f"btcv data directory {root} {what}; {BTCV_ABOUT}; {BTCV_LAYOUT_HELP}")


def _discover_abdomenct1k(root: Path) -> DatasetIndex:
    _require_dir(root, "abdomenct1k", ABDOMENCT1K_LAYOUT_HELP)
    parts = sorted(p for p in root.glob("AbdomenCT-1K-ImagePart*") if p.is_dir())
    if not parts:
        raise LayoutError(
            f"abdomenct1k data directory {root} has no AbdomenCT-1K-ImagePart* folder; {ABDOMENCT1K_LAYOUT_HELP}"
        )
    pattern = re.compile(r"^Case_(\d+)_0000\.nii(\.gz)?$")
    mask_dir = root / "Mask"
    records = []
    for part in parts:
        for img in sorted(part.iterdir()):
            m = pattern.match(img.name)
            if not m or not img.is_file():
                continue
            case = f"Case_{m.group(1)}"
            label = None
            for ext in (".nii.gz", ".nii"):
                if (mask_dir / f"{case}{ext}").is_file():
                    label = mask_dir / f"{case}{ext}"
                    break
            records.append(CaseRecord(case, img, label))
    if not records:
        raise LayoutError(
            f"{root}: no Case_XXXXX_0000.nii.gz images in {', '.join(p.name for p in parts)}; {ABDOMENCT1K_LAYOUT_HELP}"
        )
    records.sort(key=lambda r: r.case_id)
    return DatasetIndex("abdomenct1k", root, records, [], [])


def _series_case_id(root: Path, series: DicomSeries, shared: bool) -> str:
    rel = series.directory.relative_to(root).as_posix()
    name = root.name if rel == "." else rel
    return f"{name}/{series.uid}" if shared else name


def _discover_folder(root: Path, allow_non_ct: bool = False) -> DatasetIndex:
    _require_dir(root, "folder", FOLDER_LAYOUT_HELP)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and _NII.search(p.name) and not p.name.startswith(".")
    )
    records = [CaseRecord(_strip_nii(str(p.relative_to(root).as_posix())), p, None) for p in files]
    series = find_series(root, allow_non_ct=allow_non_ct)
    per_dir = Counter(s.directory for s in series)
    records += [
        CaseRecord(
            _series_case_id(root, s, per_dir[s.directory] > 1),
            s.directory,
            None,
            series_uid=s.uid,
        )
        for s in series
    ]
    if not records:
        raise LayoutError(
            f"folder data directory {root} holds no .nii/.nii.gz files and no DICOM series; {FOLDER_LAYOUT_HELP}"
        )
    notes = tuple(n for s in series for n in s.notes)
    return DatasetIndex("folder", root, records, [], [], notes=notes)


def discover(
    dataset: str,
    data_dir: str | Path | None = None,
    phantom: PhantomConfig | None = None,
    *,
    allow_non_ct: bool = False,
) -> DatasetIndex:
    """List the cases of a dataset without reading them.

    Layouts:
        ``btcv``: ``DIR/dataset_0.json`` (MONAI: ``training`` and ``validation`` lists of
        ``{"image", "label"}`` paths relative to DIR, ``test`` a list of image paths; other keys such
        as ``numTraining`` are ignored), or the raw Synapse layout
        ``DIR/RawData/Training/{img,label}/{img,label}XXXX.nii.gz`` (cases 35-40 go to validation as
        in MONAI's json, the other 24 to training; ``RawData/Testing/img`` to test).
        ``abdomenct1k``: ``DIR/AbdomenCT-1K-ImagePart*/Case_XXXXX_0000.nii.gz`` with optional masks
        ``DIR/Mask/Case_XXXXX.nii.gz``; all cases are training.
        ``folder``: every ``.nii``/``.nii.gz`` under DIR (recursively) and every DICOM series
        (the slices of one ``SeriesInstanceUID`` in one directory, see
        :func:`~collapsekit.data.dicom.find_series`; case id: the directory relative to DIR, plus
        ``/UID`` when a directory holds several series), images only, all training (NIfTI files first, then series by directory).
        ``phantom``: generated in memory from ``phantom`` (default :class:`PhantomConfig`); the
        last ``phantom.validation`` cases are validation; no ``data_dir``.

    Args:
        dataset: one of :data:`DATASETS` (case-insensitive, misspellings get a suggestion).
        data_dir: the dataset directory (required except for the phantom).
        phantom: phantom configuration (phantom only).
        allow_non_ct: ``folder``: also read DICOM series whose Modality is not CT (or absent);
            refused by default, since their values are not Hounsfield units.

    Returns:
        A :class:`DatasetIndex` with files checked to exist.

    Raises:
        LayoutError: missing or empty directory, or a structure that matches no layout; the message
            names the directory and the expected structure.
        DataError: a file listed in ``dataset_0.json`` or a raw label file does not exist or is
            not a regular file (a directory, a FIFO: said so); a DICOM file of a folder that is
            not a usable CT slice, or not CT (named in the message).
        ConfigError: unknown dataset, a phantom with a ``data_dir``, or a file dataset without one.
    """
    dataset = look_up_option(dataset, DATASETS, "dataset")
    if dataset == "phantom":
        if data_dir is not None:
            raise ConfigError(
                "the phantom is generated in memory and takes no data directory "
                "(to read a phantom written by 'collapsekit data phantom DIR', use --dataset btcv --data-dir DIR)"
            )
        cfg = phantom or PhantomConfig()
        records = [
            CaseRecord(f"phantom{i + 1:04d}", None, None, phantom_case_seed(cfg.seed, i))
            for i in range(cfg.cases)
        ]
        n_train = cfg.training_cases
        return DatasetIndex("phantom", None, records[:n_train], records[n_train:], [], phantom=cfg)
    if data_dir is None:
        help_text = {
            "btcv": f"{BTCV_ABOUT}; {BTCV_LAYOUT_HELP}",
            "abdomenct1k": ABDOMENCT1K_LAYOUT_HELP,
            "folder": FOLDER_LAYOUT_HELP,
        }[dataset]
        raise ConfigError(f"dataset {dataset} needs a data directory (--data-dir DIR); {help_text}")
    root = Path(data_dir).expanduser()
    if dataset == "btcv":
        return _discover_btcv(root)
    if dataset == "abdomenct1k":
        return _discover_abdomenct1k(root)
    return _discover_folder(root, allow_non_ct)
