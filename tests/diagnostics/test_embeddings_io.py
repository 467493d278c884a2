"""load_embeddings: formats, one-line errors naming the file, hostile pickles refused unrun."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from collapsekit.diagnostics import load_embeddings
from collapsekit.errors import InputError


class Hostile:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


Z = np.arange(12, dtype=np.float32).reshape(4, 3)


def test_hostile_object_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    # control: the payload works, so the refusals below are meaningful
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Hostile(marker))).close()
    assert marker.exists()


def test_npy_roundtrip_and_mmap(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", Z)
    out = load_embeddings(tmp_path / "z.npy")
    np.testing.assert_array_equal(out, Z)
    assert out.dtype == np.float32
    mm = load_embeddings(str(tmp_path / "z.npy"), mmap_mode="r")
    assert isinstance(mm, np.memmap)
    np.testing.assert_array_equal(mm, Z)


def test_npz_single_array_and_named_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", anything=Z)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "one.npz"), Z)
    np.savez(tmp_path / "named.npz", labels=np.arange(4), embeddings=Z)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "named.npz"), Z)
    np.savez(tmp_path / "z.npz", labels=np.arange(4), z=Z)
    np.testing.assert_array_equal(load_embeddings(tmp_path / "z.npz"), Z)
    np.savez(tmp_path / "ambiguous.npz", a=Z, b=Z)
    with pytest.raises(InputError, match=r"ambiguous.npz: .npz archive holds 2 entries \(a, b\)"):
        load_embeddings(tmp_path / "ambiguous.npz")


def test_torch_tensor_and_dict(tmp_path: Path) -> None:
    torch.save(torch.from_numpy(Z), tmp_path / "t.pt")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "t.pt"), Z)
    torch.save({"feats": torch.from_numpy(Z)}, tmp_path / "d.pth")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "d.pth"), Z)
    torch.save({"z": torch.from_numpy(Z), "ids": torch.arange(4)}, tmp_path / "z.pt")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "z.pt"), Z)
    torch.save(torch.from_numpy(Z).to(torch.bfloat16), tmp_path / "bf16.pt")
    out = load_embeddings(tmp_path / "bf16.pt")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, Z)  # small integers are exact in bfloat16
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(InputError, match="list.pt: expected a saved tensor"):
        load_embeddings(tmp_path / "list.pt")


def _assert_one_line(err: pytest.ExceptionInfo[InputError], path: Path) -> None:
    message = str(err.value)
    assert str(path) in message and "\n" not in message


def test_hostile_pickle_in_pt_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, save in (
        ("hostile.pt", lambda p: torch.save(Hostile(marker), p)),
        ("dict.pt", lambda p: torch.save({"z": torch.zeros(2, 2), "x": Hostile(marker)}, p)),
        ("legacy.pth", lambda p: p.write_bytes(pickle.dumps(Hostile(marker)))),
    ):
        path = tmp_path / name
        save(path)
        with pytest.raises(InputError, match="weights_only") as err:
            load_embeddings(path)
        _assert_one_line(err, path)
        assert not marker.exists(), name


def test_object_arrays_in_npy_and_npz_are_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = np.empty((1, 1), dtype=object)
    hostile[0, 0] = Hostile(marker)
    np.save(tmp_path / "obj.npy", hostile, allow_pickle=True)
    np.savez(tmp_path / "obj.npz", z=hostile)
    for name in ("obj.npy", "obj.npz"):
        with pytest.raises(InputError, match="pickled object array") as err:
            load_embeddings(tmp_path / name)
        _assert_one_line(err, tmp_path / name)
    assert not marker.exists()


def test_empty_missing_corrupt_and_unsupported_files(tmp_path: Path) -> None:
    cases = {
        "empty.npy": (b"", "empty"),
        "garbage.npy": (b"this is not an npy file at all", "not a .npy array but pickled data"),
        "truncated.npy": (b"\x93NUMPY\x01\x00v\x00{'descr'", "not a readable .npy"),
        "garbage.npz": (b"PK\x03\x04 broken zip", "not a readable .npz"),
        "garbage.pt": (b"\x80\x04garbage", "weights_only"),
        "z.csv": (b"1,2\n3,4\n", "unsupported embeddings file type '.csv'"),
    }
    for name, (content, text) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError, match=text) as err:
            load_embeddings(path)
        _assert_one_line(err, path)
    with pytest.raises(InputError, match="not found"):
        load_embeddings(tmp_path / "missing.npy")


def test_wrong_shapes_and_dtypes_name_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(
        InputError, match=r"flat.npy: expected \(N, D\) embeddings, got shape \(5,\)"
    ):
        load_embeddings(tmp_path / "flat.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    with pytest.raises(InputError, match="text.npy: expected a numeric array"):
        load_embeddings(tmp_path / "text.npy")


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda: torch.eye(3).to_sparse(), "sparse_coo, not dense"),
        (lambda: torch.eye(3).to_sparse_csr(), "sparse_csr, not dense"),
        (lambda: {"embeddings": torch.eye(3).to_sparse()}, "sparse_coo, not dense"),
        (lambda: torch.zeros(4, 3, device="meta"), "meta device"),
    ],
)
def test_tensors_numpy_cannot_hold_are_refused_in_one_line(
    tmp_path: Path, make, needle: str
) -> None:
    """Issue 22, item 10: sparse and meta tensors raised TypeError/NotImplementedError."""
    path = tmp_path / "z.pt"
    with pytest.warns(UserWarning) if "csr" in needle else _no_warning():
        torch.save(make(), path)
    with pytest.raises(InputError, match=needle) as err:
        load_embeddings(path)
    _assert_one_line(err, path)


def test_float8_embeddings_are_read_exactly_as_float32(tmp_path: Path) -> None:
    values = torch.tensor([[0.5, -2.0, 448.0], [0.0, 1.0, -0.25]])
    torch.save(values.to(torch.float8_e4m3fn), tmp_path / "f8.pt")
    arr = load_embeddings(tmp_path / "f8.pt")
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, values.numpy())  # each value is exact in e4m3


def _no_warning():
    import contextlib

    return contextlib.nullcontext()
