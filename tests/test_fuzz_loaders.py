"""Property-based fuzzing of every loader a user can point at a file (issue 11).

Random bytes, truncations and byte mutations of valid files (a checkpoint, embeddings, a NIfTI
volume, ``dataset_0.json``, a TOML config) may only give a valid result or the project's own error
type with a one-line message — never another exception, never a traceback.

The default suite runs a bounded number of examples per loader; ``pytest -m fuzz`` runs the
deeper variant (``FUZZ_EXAMPLES`` examples per loader, default 300).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collapsekit.data import load_split
from collapsekit.diagnostics.embeddings_io import load_embeddings
from collapsekit.errors import CollapsekitError
from collapsekit.runs.checkpoint import safe_torch_load
from collapsekit.runs.models import load_model
from collapsekit.train.config import load_config

FAST = 25
DEEP = int(os.environ.get("FUZZ_EXAMPLES", "300"))


def _valid_files(root: Path) -> dict[str, bytes]:
    """One valid file of each kind, as bytes."""
    out: dict[str, bytes] = {}
    torch.save({"conv1.weight": torch.zeros(2, 1, 3, 3)}, root / "w.pt")
    out["checkpoint"] = (root / "w.pt").read_bytes()
    torch.save(torch.randn(6, 4), root / "e.pt")
    out["pt_embeddings"] = (root / "e.pt").read_bytes()
    np.save(root / "e.npy", np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32))
    out["npy"] = (root / "e.npy").read_bytes()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4)), root / "v.nii")
    out["nifti"] = (root / "v.nii").read_bytes()
    out["json"] = json.dumps(
        {"training": [{"image": "imagesTr/img0001.nii", "label": "labelsTr/label0001.nii"}]}
    ).encode()
    out["toml"] = b'epochs = 3\nbatch_size = 8\n[model]\nmethod = "zca"\n'
    return out


_VALID = _valid_files(Path(tempfile.mkdtemp(prefix="ck-fuzz-")))


def _mutations(kind: str) -> st.SearchStrategy[bytes]:
    """Random bytes, a truncation of the valid file, or the valid file with bytes overwritten."""
    valid = _VALID[kind]
    truncated = st.integers(0, len(valid)).map(lambda n: valid[:n])
    flips = st.lists(
        st.tuples(st.integers(0, max(len(valid) - 1, 0)), st.integers(0, 255)),
        min_size=1,
        max_size=8,
    )

    def mutate(changes: list[tuple[int, int]]) -> bytes:
        b = bytearray(valid)
        for i, v in changes:
            b[i] = v
        return bytes(b)

    return st.one_of(st.binary(max_size=2048), truncated, flips.map(mutate))


def _only_own_errors(call: Callable[[Path], Any], data: bytes, name: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ck-fuzz-case-"))
    try:
        path = tmp / name
        path.write_bytes(data)
        try:
            call(path)
        except CollapsekitError as e:
            msg = str(e)
            assert msg and "\n" not in msg.strip(), repr(msg)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _btcv_json(path: Path) -> Any:
    # the fuzzed file is dataset_0.json of a BTCV layout whose volume exists
    root = path.parent
    (root / "imagesTr").mkdir(exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    img = nib.Nifti1Image(np.full((8, 8, 3), 40, np.int16), np.eye(4))
    nib.save(img, root / "imagesTr" / "img0001.nii")
    nib.save(
        nib.Nifti1Image(np.zeros((8, 8, 3), np.uint8), np.eye(4)),
        root / "labelsTr" / "label0001.nii",
    )
    return load_split("btcv", root, "training")


def _nifti_volume(path: Path) -> Any:
    # the fuzzed file is the only volume of a folder dataset
    return load_split("folder", path.parent, "training")


LOADERS: dict[str, tuple[str, str, Callable[[Path], Any]]] = {
    "checkpoint (safe_torch_load)": ("checkpoint", "ckpt.pt", safe_torch_load),
    "checkpoint (load_model)": ("checkpoint", "ckpt.pt", load_model),
    "embeddings .npy": ("npy", "emb.npy", load_embeddings),
    "embeddings .pt": ("pt_embeddings", "emb.pt", load_embeddings),
    "NIfTI volume": ("nifti", "vol.nii", _nifti_volume),
    "dataset_0.json": ("json", "dataset_0.json", _btcv_json),
    "TOML config": ("toml", "cfg.toml", load_config),
}


def _fuzz(loader: str, examples: int, *, derandomize: bool = False) -> None:
    kind, name, call = LOADERS[loader]

    @settings(
        max_examples=examples,
        derandomize=derandomize,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=_mutations(kind))
    def run(data: bytes) -> None:
        _only_own_errors(call, data, name)

    run()


@pytest.mark.parametrize("loader", list(LOADERS))
def test_fuzz_loader_bounded(loader: str) -> None:
    _fuzz(loader, FAST, derandomize=True)  # the same examples in every CI run; -m fuzz explores


@pytest.mark.fuzz
@pytest.mark.slow  # also out of the fast lane, whose -m replaces the default "not fuzz"
@pytest.mark.parametrize("loader", list(LOADERS))
def test_fuzz_loader_deep(loader: str) -> None:
    _fuzz(loader, DEEP)
