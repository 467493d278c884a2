"""Reading embedding matrices from files without ever running code from them.

``.npy``/``.npz`` are read with ``allow_pickle=False`` and ``.pt``/``.pth`` with
``torch.load(weights_only=True)``, so a file that holds a pickle which would execute code on load
is refused before anything runs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from collapsekit.errors import InputError

__all__ = ["load_embeddings", "EMBEDDING_SUFFIXES", "EMBEDDING_KEYS"]

EMBEDDING_SUFFIXES = (".npy", ".npz", ".pt", ".pth")
# Keys looked up in an .npz archive or a saved dict that holds more than one array.
EMBEDDING_KEYS = ("embeddings", "z")


def _reason(exc: BaseException) -> str:
    """First line of an exception message, short enough for a one-line error."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def _pick(path: Path, items: dict[str, Any], kind: str) -> Any:
    """The single entry of ``items``, or the one named ``embeddings``/``z``."""
    if len(items) == 1:
        return next(iter(items.values()))
    for key in EMBEDDING_KEYS:
        if key in items:
            return items[key]
    keys = ", ".join(sorted(items)) or "none"
    raise InputError(
        f"{path}: {kind} holds {len(items)} entries ({keys}); expected one array or a key named "
        f"{' or '.join(repr(k) for k in EMBEDDING_KEYS)}"
    )


def _pickle_refusal(path: Path, exc: ValueError, kind: str) -> InputError | None:
    """The error for numpy's ``allow_pickle=False`` refusals, None for other ValueErrors."""
    if "Object arrays" in str(exc):
        return InputError(
            f"{path}: holds a pickled object array, refused because loading it could run code; "
            "save a numeric array instead"
        )
    if "allow_pickle" in str(exc):
        return InputError(
            f"{path}: not a {kind} but pickled data, refused because loading it could run code"
        )
    return None


def _load_npy(path: Path, mmap_mode: Literal["r"] | None) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except ValueError as exc:
        refusal = _pickle_refusal(path, exc, ".npy array")
        if refusal is not None:
            raise refusal from exc
        raise InputError(f"{path}: not a readable .npy array ({_reason(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - a mangled header fails in numpy's parser in many ways
        raise InputError(f"{path}: not a readable .npy array ({_reason(exc)})") from exc
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path}: expected a .npy array, got {type(arr).__name__}")
    return arr


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise InputError(f"{path}: expected an .npz archive")
            key = _pick(path, {k: k for k in archive.files}, ".npz archive")
            return np.asarray(archive[key])
    except InputError:
        raise
    except ValueError as exc:
        refusal = _pickle_refusal(path, exc, ".npz archive")
        if refusal is not None:
            raise refusal from exc
        raise InputError(f"{path}: not a readable .npz archive ({_reason(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - mangled archives and headers fail in many ways
        raise InputError(f"{path}: not a readable .npz archive ({_reason(exc)})") from exc


def _load_torch(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": we refuse anyway
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: refuse with one line, nothing has run
        raise InputError(
            f"{path}: cannot be read as tensors with torch.load(weights_only=True) "
            f"(code-running pickles are refused): {_reason(exc)}"
        ) from exc
    return embeddings_from_object(obj, path)


def embeddings_from_object(obj: Any, path: str | Path) -> np.ndarray:
    """The embeddings array held by an object read from ``path`` with ``torch.load``.

    Accepts a tensor or a dict holding exactly one tensor (see :func:`load_embeddings`).

    Raises:
        InputError: anything else, naming ``path``.
    """
    path = Path(path)
    if isinstance(obj, dict):
        obj = _pick(path, {str(k): v for k, v in obj.items()}, "saved dict")
    if not isinstance(obj, torch.Tensor):
        raise InputError(
            f"{path}: expected a saved tensor or a dict with one tensor, got {type(obj).__name__}"
        )
    t = obj.detach()
    if t.layout != torch.strided:  # sparse COO/CSR/...: numpy has no such arrays
        raise InputError(
            f"{path}: the tensor is {str(t.layout).removeprefix('torch.')}, not dense; save "
            "tensor.to_dense() instead"
        )
    if t.is_meta:
        raise InputError(
            f"{path}: the tensor is on the meta device (a shape without values); save the "
            "computed embeddings"
        )
    if t.is_complex():
        raise InputError(f"{path}: expected real embeddings, got dtype {t.dtype}")
    if t.dtype == torch.bfloat16 or (t.is_floating_point() and t.element_size() == 1):
        t = t.to(torch.float32)  # numpy has no bfloat16 or float8: exact in float32
    try:
        return t.cpu().numpy()
    except (TypeError, RuntimeError):  # a dtype numpy has no equivalent for
        raise InputError(
            f"{path}: tensor dtype {t.dtype} has no numpy equivalent; save it as float32"
        ) from None


def load_embeddings(
    path: str | os.PathLike[str], *, mmap_mode: Literal["r"] | None = None
) -> np.ndarray:
    """Read an ``(N, D)`` embedding matrix from ``.npy``, ``.npz``, ``.pt`` or ``.pth``.

    * ``.npy``: ``np.load(allow_pickle=False)``; ``mmap_mode="r"`` memory-maps it (for files
      larger than memory: the diagnostics read it in blocks).
    * ``.npz``: the single array, or the one named ``"embeddings"`` or ``"z"``.
    * ``.pt``/``.pth``: ``torch.load(weights_only=True)`` of a tensor, or of a dict holding one
      tensor (or one named ``"embeddings"``/``"z"``).

    Values are not checked here (NaN/inf are :func:`as_embeddings`'s job, with its
    ``drop_nonfinite`` option).

    Args:
        path: the file.
        mmap_mode: ``"r"`` to memory-map a ``.npy`` file; ignored for the other formats.

    Returns:
        The ``(N, D)`` array in its stored numeric dtype.

    Raises:
        InputError: one line naming the file: missing or empty file, unknown suffix, corrupt
            content, object/pickled arrays or code-running pickles (refused before anything runs),
            a non-numeric or non-2-D array.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: embeddings file not found")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: embeddings file is empty")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = _load_npy(p, mmap_mode)
    elif suffix == ".npz":
        arr = _load_npz(p)
    elif suffix in (".pt", ".pth"):
        arr = _load_torch(p)
    else:
        raise InputError(
            f"{p}: unsupported embeddings file type {suffix or '(no suffix)'!r}; expected "
            + ", ".join(EMBEDDING_SUFFIXES)
        )
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{p}: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"{p}: expected (N, D) embeddings, got shape {arr.shape}")
    return arr
