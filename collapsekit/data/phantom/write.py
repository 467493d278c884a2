"""Write the phantom to disk in a real dataset layout (BTCV or AbdomenCT-1K) and read it back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from collapsekit.data.labels import BTCV_LABELS, BTCV_TO_ABDOMENCT1K
from collapsekit.data.layouts import DatasetIndex, discover
from collapsekit.data.phantom.generate import generate_phantom
from collapsekit.data.spec import PhantomConfig, phantom_case_seed
from collapsekit.errors import DataError
from collapsekit.options import look_up_option
from collapsekit.outputs import writing
from collapsekit.progress import ProgressCallback, TaskAdvanced, TaskFinished, TaskStarted, emit
from collapsekit.serialization import atomic_write, save_nifti

__all__ = ["PHANTOM_LAYOUTS", "write_phantom_dataset"]

#: On-disk layouts :func:`write_phantom_dataset` can write.
PHANTOM_LAYOUTS = ("btcv", "abdomenct1k")


def _btcv_json(
    training: list[int], validation: list[int], size: int, slices: int, seed: int
) -> dict:
    def entry(i: int) -> dict[str, str]:
        return {"image": f"imagesTr/img{i:04d}.nii.gz", "label": f"labelsTr/label{i:04d}.nii.gz"}

    return {
        "description": f"collapsekit phantom abdominal CT in the BTCV layout (size {size}, {slices} slices, seed {seed})",
        "labels": {"0": "background", **{str(k): v for k, v in BTCV_LABELS.items()}},
        "licence": "generated",
        "modality": {"0": "CT"},
        "name": "collapsekit-phantom",
        "numTest": 0,
        "numTraining": len(training) + len(validation),
        "tensorImageSize": "3D",
        "training": [entry(i) for i in training],
        "validation": [entry(i) for i in validation],
        "test": [],
    }


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    save_nifti(img, path)


def write_phantom_dataset(
    out_dir: str | Path,
    cases: int = 12,
    layout: str = "btcv",
    size: int = 128,
    slices: int = 48,
    seed: int = 0,
    validation: int | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> DatasetIndex:
    """Write phantom cases to ``out_dir`` in a real dataset layout and return its index.

    The cases are the in-memory phantom's (same seeds), so ``discover("btcv", out_dir)`` loads the
    same volumes as ``discover("phantom", phantom=PhantomConfig(cases, size, slices, seed, validation))``.

    Layouts:
        ``btcv``: ``imagesTr/img0001.nii.gz``, ``labelsTr/label0001.nii.gz`` and ``dataset_0.json``
        (the first ``cases - validation`` cases under ``training``, the rest under ``validation``).
        ``abdomenct1k``: ``AbdomenCT-1K-ImagePart1/Case_00001_0000.nii.gz`` and
        ``Mask/Case_00001.nii.gz`` with labels remapped to 1 liver, 2 kidney, 3 spleen, 4 pancreas
        (every case is training; ``validation`` is ignored).

    Images are int16 HU, labels uint8, the spacing is in the affine (qform and sform, code 1).

    Args:
        out_dir: target directory; created if missing.
        cases, size, slices, seed, validation: as in :class:`PhantomConfig`.
        layout: ``"btcv"`` or ``"abdomenct1k"``.
        overwrite: allow writing into a non-empty directory. Only this layout's files are
            replaced; nothing else in the directory is touched or deleted.
        progress: receives ``TaskStarted/TaskAdvanced/TaskFinished`` for task ``"phantom"``.

    Returns:
        The :class:`~collapsekit.data.layouts.DatasetIndex` of the written dataset.

    Raises:
        DataError: ``out_dir`` is a file, or is not empty and ``overwrite`` is false.
        ConfigError: unknown layout or invalid sizes.
    """
    layout = look_up_option(layout, PHANTOM_LAYOUTS, "phantom layout")
    cfg = PhantomConfig(
        cases=cases,
        size=size,
        slices=slices,
        seed=seed,
        validation=validation if layout == "btcv" else 0,
    )
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(
            f"{out} is a file, not a directory; choose a directory for the phantom dataset"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(
            f"{out} is not empty; refusing to write the phantom there (pass --overwrite / overwrite=True, which replaces only the phantom's own files)"
        )
    if layout == "btcv":
        img_dir, lab_dir = out / "imagesTr", out / "labelsTr"
    else:
        img_dir, lab_dir = out / "AbdomenCT-1K-ImagePart1", out / "Mask"
    for d in (img_dir, lab_dir):
        if d.exists() and not d.is_dir():
            raise DataError(f"{d} exists and is not a directory; cannot write the phantom dataset")
        d.mkdir(parents=True, exist_ok=True)

    emit(
        progress, TaskStarted("phantom", total=cfg.cases, description=f"writing phantom ({layout})")
    )
    lut = np.zeros(256, dtype=np.uint8)
    for k, v in BTCV_TO_ABDOMENCT1K.items():
        lut[k] = v
    for i in range(cfg.cases):
        image, label, affine = generate_phantom(
            phantom_case_seed(cfg.seed, i), cfg.size, cfg.slices
        )
        n = i + 1
        if layout == "btcv":
            files = {img_dir / f"img{n:04d}.nii.gz": image, lab_dir / f"label{n:04d}.nii.gz": label}
        else:
            files = {
                img_dir / f"Case_{n:05d}_0000.nii.gz": image,
                lab_dir / f"Case_{n:05d}.nii.gz": lut[label],
            }
        for path, array in files.items():
            # A full disk midway: one line saying how many whole cases are there, no torn file.
            with writing(path, kept=f"{i} of {cfg.cases} cases were written to {out}"):
                _save_nifti(array, affine, path)
        emit(progress, TaskAdvanced("phantom", 1, {"case": n}))
    if layout == "btcv":
        n_train = cfg.training_cases
        doc = _btcv_json(
            list(range(1, n_train + 1)),
            list(range(n_train + 1, cfg.cases + 1)),
            cfg.size,
            cfg.slices,
            cfg.seed,
        )
        kept = f"the {cfg.cases} cases were written to {out}, but not their dataset_0.json"
        with writing(out / "dataset_0.json", kept=kept), atomic_write(out / "dataset_0.json") as f:
            f.write(json.dumps(doc, indent=4) + "\n")
    emit(progress, TaskFinished("phantom", {"cases": cfg.cases, "layout": layout}))
    return discover(layout, out)
