"""Wrong files where a checkpoint belongs: a plain one-line answer naming the kind, never an alarm.

Issue 11: a config, a JSON, a PNG, a NIfTI, an ``.npy`` or random bytes used to be reported as a pickle
that "would run code" (cut mid-word), and some text files crashed ``torch.load`` (``KeyError``,
``IndexError``). The file's kind is sniffed from its first bytes before ``torch.load``.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from collapsekit.errors import CheckpointError
from collapsekit.runs.checkpoint import NotACheckpointError, safe_torch_load
from collapsekit.runs.models import check_model_spec, load_model


def _write(tmp_path: Path, name: str, kind: str) -> Path:
    p = tmp_path / name
    if kind == "text":
        p.write_text({"hello": "hello", "config.toml": "epochs = 3\n", "jjjj": "jjjj"}[name])
    elif kind == "json":
        p.write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    elif kind == "png":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    elif kind == "nifti":
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), p)
    elif kind == "npy":
        np.save(p, np.zeros((2, 3), np.float32))
    elif kind == "npz":
        np.savez(p, z=np.zeros((2, 3), np.float32))
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 4)
    elif kind == "empty":
        p.write_bytes(b"")
    return p


CASES = [
    ("hello", "text", "hello is a text file, not a checkpoint — pass the run directory instead"),
    (
        "config.toml",
        "text",
        "config.toml is a text file, not a checkpoint — pass the run directory instead",
    ),
    ("jjjj", "text", "jjjj is a text file, not a checkpoint — pass the run directory instead"),
    (
        "metrics.jsonl",
        "json",
        "metrics.jsonl is a text file, not a checkpoint — pass the run directory instead",
    ),
    ("spectrum.png", "png", "spectrum.png is a PNG image, not a checkpoint"),
    ("case.nii", "nifti", "case.nii is a NIfTI image, not a checkpoint"),
    ("case.nii.gz", "nifti", "case.nii.gz is a gzip-compressed file, not a checkpoint"),
    ("emb.npy", "npy", "emb.npy holds embeddings (a NumPy .npy array), not a model checkpoint"),
    ("emb.npz", "npz", "emb.npz holds embeddings (a NumPy .npz archive), not a model checkpoint"),
    ("noise.pt", "binary", "noise.pt is an unrecognised binary file, not a checkpoint"),
    ("empty.pt", "empty", "empty.pt is empty (0 bytes), not a checkpoint"),
]


@pytest.mark.parametrize(("name", "kind", "message"), CASES, ids=[c[0] for c in CASES])
def test_safe_torch_load_names_the_kind(tmp_path: Path, name: str, kind: str, message: str) -> None:
    p = _write(tmp_path, name, kind)
    with pytest.raises(NotACheckpointError) as info:
        safe_torch_load(p)
    assert str(info.value) == message
    with pytest.raises(CheckpointError) as info2:  # the same answer through the model loader
        load_model(p)
    assert str(info2.value) == message


@pytest.mark.parametrize("kind", ["npy", "npz"])
def test_probe_needs_a_model(tmp_path: Path, kind: str) -> None:
    p = _write(tmp_path, f"tworow.{kind}", kind)
    with pytest.raises(CheckpointError) as info:
        check_model_spec(p, needed_by="probe")
    assert str(info.value) == f"probe needs a model; tworow.{kind} holds embeddings"


def test_check_model_spec_accepts_models_and_refuses_empty_arch(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    check_model_spec(tmp_path / "w.pt")
    check_model_spec("random:resnet18")
    with pytest.raises(CheckpointError, match=r"^'random:' names no architecture"):
        check_model_spec("random:")
    with pytest.raises(CheckpointError, match=r"is a directory without checkpoint.pt"):
        check_model_spec(tmp_path)
    with pytest.raises(CheckpointError, match=r"^checkpoint not found: "):
        check_model_spec(tmp_path / "missing.pt")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_pickle_refused_with_full_reason_and_no_warning(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"x": _Evil(marker)}, p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's pickle-protocol UserWarning must not leak
        with pytest.raises(CheckpointError) as info:
            safe_torch_load(p)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"refused to load {p}: it holds Python objects that would run code")
    assert msg.endswith("whose module posix is blocked.")  # torch's reason, uncut
    assert "PyTorch 2.6" not in msg  # the boilerplate is gone
    assert not marker.exists()


def test_protocol4_pickle_is_not_a_false_alarm_and_warns_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    with p.open("wb") as f:
        pickle.dump(_Evil(marker), f, protocol=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as info:
            safe_torch_load(p)
    assert str(info.value) == (
        f"cannot read checkpoint {p}: corrupt, truncated or not weights-only loadable "
        "(Unsupported operand 149)"
    )
    assert not marker.exists()


@pytest.mark.parametrize("head", [b"\x80\x02hello", b"\x80\x05\x95", b"\x80\x02}q\x00(X"])
def test_mangled_pickles_are_one_line_errors(tmp_path: Path, head: bytes) -> None:
    p = tmp_path / "mangled.pt"
    p.write_bytes(head)
    with pytest.raises(CheckpointError, match=r"^cannot read checkpoint .*mangled\.pt: ") as info:
        safe_torch_load(p)
    assert "\n" not in str(info.value)
