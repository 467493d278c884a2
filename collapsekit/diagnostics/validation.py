"""Validation of ``(N, D)`` embedding matrices given to the diagnostics.

Every diagnostic takes a plain ``(N, D)`` numpy array or torch tensor (any device), so it works on
anyone's embeddings. This module is the one place that checks shape, dtype and finiteness and turns
bad input into an :class:`~collapsekit.errors.InputError` naming what arrived.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from collapsekit.errors import InputError

__all__ = [
    "as_embeddings",
    "as_matrix",
    "nonfinite_rows",
    "l2_normalize_rows",
    "refuse_tiny_rows",
]

# Rows per block when scanning for NaN/inf, so a memory-mapped (N, D) file is never expanded into
# an N x D boolean mask.
_SCAN_ROWS = 8192
# Norm floor of the row L2 normalisation (as torch.nn.functional.normalize): a zero row stays zero.
_NORM_EPS = 1e-12


def _to_tensor(z: Any, name: str) -> torch.Tensor:
    """Numpy array, memmap, tensor or nested list -> tensor without copying when possible."""
    if isinstance(z, torch.Tensor):
        return z.detach()
    try:
        arr = np.asarray(z)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{name}: expected a numpy array or torch tensor of embeddings, got {type(z).__name__}"
        ) from exc
    if arr.dtype == object:
        raise InputError(
            f"{name}: expected numeric embeddings, got an object array of shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{name}: expected numeric embeddings, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: expected real embeddings, got complex dtype {arr.dtype}")
    if arr.dtype.byteorder == ">" or not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        # Read-only arrays (np.load(mmap_mode="r")) are shared, never written to.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _as_float(t: torch.Tensor, name: str) -> torch.Tensor:
    """Integer/bool -> float64 (exact up to 2**53); float16/bfloat16 -> float32; else as is."""
    if t.is_complex():
        raise InputError(f"{name}: expected real embeddings, got complex dtype {t.dtype}")
    if t.dtype in (torch.float32, torch.float64):
        return t
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.to(torch.float32)
    return t.to(torch.float64)


def as_matrix(z: Any, *, name: str = "embeddings", min_rows: int = 2) -> torch.Tensor:
    """Check that ``z`` is a real ``(N, D)`` matrix with ``N >= min_rows`` and ``D >= 1``.

    Does not look at the values (see :func:`as_embeddings` for the NaN/inf check). Used directly
    by the streaming accumulator, whose batches may hold a single row.

    Args:
        z: numpy array (memory-mapped arrays are not copied) or torch tensor on any device.
        name: what ``z`` is called in error messages (a file name, ``"embeddings"``).
        min_rows: the smallest allowed ``N``.

    Returns:
        A floating tensor on ``z``'s device: float32 and float64 kept, float16/bfloat16 promoted to
        float32, integers and bools converted to float64.

    Raises:
        InputError: not an array, object/complex dtype, not 2-D, ``N < min_rows`` or ``D < 1``.
    """
    t = _to_tensor(z, name)
    if t.ndim != 2:
        raise InputError(f"{name}: expected (N, D) embeddings, got shape {tuple(t.shape)}")
    n, d = t.shape
    if d < 1:
        raise InputError(
            f"{name}: expected (N, D) embeddings with D >= 1, got shape {tuple(t.shape)}"
        )
    if n < min_rows:
        raise InputError(
            f"{name}: need at least {min_rows} embeddings (rows), got shape {tuple(t.shape)}"
        )
    return _as_float(t, name)


def nonfinite_rows(z: torch.Tensor) -> torch.Tensor:
    """Boolean ``(N,)`` mask of the rows of ``z`` that hold a NaN or an infinity.

    A row with a NaN or inf has a non-finite float64 sum, so one reduction finds the candidates
    (about 10x faster than ``isfinite(z).all(1)``); only rows whose sum overflowed without a
    non-finite entry (float64 values near 1e308) are rechecked element-wise. Scans blocks of rows,
    so memory stays at one block, also for memory-mapped input.
    """
    if not z.is_floating_point():
        return torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    masks = []
    for block in z.split(_SCAN_ROWS):
        bad = ~torch.isfinite(block.sum(dim=1, dtype=torch.float64))
        if bad.any():
            bad[bad.clone()] = ~torch.isfinite(block[bad]).all(dim=1)
        masks.append(bad)
    return torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool, device=z.device)


def as_embeddings(
    z: Any, *, name: str = "embeddings", drop_nonfinite: bool = False
) -> torch.Tensor:
    """Validate an ``(N, D)`` embedding matrix and return it as a floating tensor.

    Args:
        z: ``(N, D)`` numpy array or torch tensor (any device, any real float/int dtype). ``N`` is
            the number of samples, ``D`` the embedding dimension.
        name: what ``z`` is called in error messages.
        drop_nonfinite: drop the rows that contain NaN or inf instead of raising.

    Returns:
        ``(N', D)`` tensor on ``z``'s device (not copied when nothing is dropped or converted):
        float32/float64 kept, float16/bfloat16 -> float32, integers/bools -> float64.

    Raises:
        InputError: naming what arrived, e.g. ``"expected (N, D) embeddings, got shape (3, 4, 5)"``;
            for object or complex dtypes; ``N < 2`` (also after dropping rows); ``D < 1``; rows with
            NaN/inf when ``drop_nonfinite`` is False (the message gives their count).
    """
    t = as_matrix(z, name=name, min_rows=2)
    bad = nonfinite_rows(t)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return t
    if not drop_nonfinite:
        raise InputError(
            f"{name}: {n_bad} of {t.shape[0]} rows contain NaN or inf; "
            "drop them with --drop-nonfinite (drop_nonfinite=True)"
        )
    kept = t[~bad]
    if kept.shape[0] < 2:
        raise InputError(
            f"{name}: only {kept.shape[0]} of {t.shape[0]} rows are finite after dropping "
            f"{n_bad} rows with NaN or inf; need at least 2"
        )
    return kept


def l2_normalize_rows(
    z: torch.Tensor, *, inplace: bool = False, strict: bool = False, name: str = "embeddings"
) -> torch.Tensor:
    """Divide each row by its L2 norm, ``z_i / max(||z_i||, 1e-12)`` (a zero row stays zero).

    Same convention as :func:`torch.nn.functional.normalize`; right for cosines (a zero row has
    cosine 0 with everything, e.g. an all-air image). With ``strict=True`` rows whose norm is below
    ``1e-12`` are refused instead (:func:`refuse_tiny_rows`): where a statistic of the normalised
    rows is reported (the spectrum, ``std_of_l2_normalized``), a row left ~0 would read as
    collapse while the JSON says the rows were normalised. With ``inplace=True`` the rows of ``z``
    are overwritten (``z`` must own its memory).

    Raises:
        InputError: ``strict`` and some rows have an L2 norm below ``1e-12``.
    """
    norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    if strict:
        refuse_tiny_rows(norms, name)
    norms = norms.clamp_min(_NORM_EPS)
    return z.div_(norms) if inplace else z / norms


def refuse_tiny_rows(norms: torch.Tensor, name: str = "embeddings") -> None:
    """Raise :class:`InputError` when any row norm in ``norms`` (``(N,)`` or ``(N, 1)``) is below
    ``1e-12``: such rows cannot be L2-normalised (see :func:`l2_normalize_rows`)."""
    tiny = int((norms < _NORM_EPS).sum())
    if tiny:
        raise InputError(
            f"{name}: {tiny} of {norms.shape[0]} rows have an L2 norm below {_NORM_EPS:g} and "
            "cannot be L2-normalised (all-zero outputs?), and std_of_l2_normalized needs every "
            "row normalised; drop those rows"
        )
