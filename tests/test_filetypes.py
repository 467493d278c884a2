"""File sniffing: every kind a user may pass by mistake, written by the real libraries."""

from __future__ import annotations

import pickle
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from collapsekit.filetypes import FileKind, sniff  # noqa: E402


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def test_files_written_by_their_libraries(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(2)}, tmp_path / "ckpt.pt")
    assert sniff(tmp_path / "ckpt.pt") is FileKind.TORCH_ZIP
    np.save(tmp_path / "emb.npy", np.zeros((3, 4)))
    assert sniff(tmp_path / "emb.npy") is FileKind.NPY
    np.savez(tmp_path / "emb.npz", z=np.zeros((3, 4)))
    assert sniff(tmp_path / "emb.npz") is FileKind.NPZ
    img = nib.Nifti1Image(np.zeros((4, 4, 2), np.int16), np.eye(4))
    nib.save(img, tmp_path / "v.nii")
    nib.save(img, tmp_path / "v.nii.gz")
    assert sniff(tmp_path / "v.nii") is FileKind.NIFTI
    assert sniff(tmp_path / "v.nii.gz") is FileKind.GZIP
    plt.imsave(tmp_path / "s.png", np.zeros((4, 4)))
    assert sniff(tmp_path / "s.png") is FileKind.PNG
    for proto in (2, 4, 5):
        p = _write(tmp_path, f"p{proto}.pkl", pickle.dumps({"x": 1}, protocol=proto))
        assert sniff(p) is FileKind.PICKLE
    torch.save({"a": 1}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert sniff(tmp_path / "legacy.pt") is FileKind.PICKLE


@pytest.mark.parametrize(
    "data,kind",
    [
        (b"", FileKind.EMPTY),
        (b"hello", FileKind.TEXT),
        (b"epochs = 3\n[model]\nmethod = 'zca'\n", FileKind.TEXT),
        (b"jjjj", FileKind.TEXT),
        (b'{"step": 1, "loss": 5.2}\n', FileKind.TEXT),
        ("épaisseur = 3 mm\n".encode(), FileKind.TEXT),
        (b"\x00\x01\x02\xff\xfe" * 10, FileKind.BINARY),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 10, FileKind.DICOM),
        (b"PK\x03\x04 truncated zip", FileKind.ZIP),
        (b"\xff\xd8\xff\xe0", FileKind.JPEG),
    ],
)
def test_signatures(tmp_path: Path, data: bytes, kind: FileKind) -> None:
    assert sniff(_write(tmp_path, "f", data)) is kind


def test_text_cut_inside_a_multibyte_character_is_text(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.txt", b"a" * 4095 + "é".encode())
    assert sniff(p) is FileKind.TEXT


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        sniff(tmp_path / "nope")
