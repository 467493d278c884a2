"""Rank of an embedding matrix from its singular values: effective rank and numerical rank.

Both take a vector of singular values ``s`` (any nonnegative vector: numpy, torch or a list), so
they apply equally to the singular values of an embedding matrix and to any other spectrum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from collapsekit.errors import InputError

__all__ = ["effective_rank", "numerical_rank", "as_spectrum"]

_EPS32 = float(np.finfo(np.float32).eps)


def as_spectrum(s: Any, *, name: str = "singular values") -> np.ndarray:
    """Validate a spectrum: a finite, nonnegative, non-empty 1-D vector -> float64 numpy array.

    Raises:
        InputError: naming the shape, or the first negative / non-finite value.
    """
    if hasattr(s, "detach"):  # torch tensor on any device
        s = s.detach().cpu().double().numpy()
    arr = np.asarray(s)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InputError(f"{name}: expected a numeric vector, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: expected real values, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name}: expected a non-empty 1-D vector, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: {int((~np.isfinite(arr)).sum())} values are NaN or inf")
    if (arr < 0).any():
        raise InputError(f"{name}: expected nonnegative values, got minimum {arr.min():.3g}")
    return arr


def effective_rank(s: Any, *, eps: float = 1e-12) -> float:
    """Effective rank ``exp(-sum_k p_k log p_k)`` with ``p_k = s_k / sum(s) + eps``.

    Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007;
    RankMe, Garrido et al., "RankMe: assessing the downstream performance of pretrained
    self-supervised representations by their rank", ICML 2023 (``eps`` keeps ``0 log 0`` finite).

    Known values: 1 for a rank-one spectrum ``(c, 0, ..., 0)``, ``D`` for ``D`` equal values, and
    ``r`` for ``r`` equal values followed by zeros. Scale-invariant: ``s`` and ``c s`` agree.

    Args:
        s: ``(D,)`` nonnegative singular values (of the embedding matrix, centred or not; pass
            ``sqrt`` of covariance eigenvalues to get the same number).
        eps: added to each ``p_k`` (RankMe uses 1e-7; the default 1e-12 keeps the rank-one value
            within 1e-9 of 1 for ``D`` up to a few thousand).

    Returns:
        The effective rank in ``[1, D]``; 0.0 for an all-zero spectrum (no direction at all, the
        same as its numerical rank).

    Raises:
        InputError: ``s`` is not a finite nonnegative 1-D vector.
    """
    arr = as_spectrum(s)
    total = float(arr.sum())
    if total == 0.0:
        return 0.0
    p = arr / total + eps
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def numerical_rank(s: Any, *, rtol: float | None = None) -> int:
    """Number of singular values above ``rtol * max(s)``.

    The default ``rtol = len(s) * eps(float32)`` (about ``1.2e-7 * D``) is the rule of
    :func:`numpy.linalg.matrix_rank` (``max(M, N) * eps * s_max``) with float32 epsilon, because
    embeddings are float32 data, and with ``D`` in place of ``max(N, D)``: collapsekit computes
    spectra in float64 from a covariance, so rounding does not grow with ``N``, and a rank that
    fell as more samples arrive would be a poor diagnostic.

    Known values: ``r`` for a rank-``r`` matrix held in float32 (rounding noise sits near
    ``1e-7 * s_max``); 0 for an all-zero spectrum.

    Args:
        s: ``(D,)`` nonnegative singular values (not eigenvalues: for covariance eigenvalues
            ``lambda`` pass ``sqrt(lambda)``, the tolerance applies to ``sigma``).
        rtol: relative tolerance; default ``len(s) * eps(float32)``.

    Raises:
        InputError: bad ``s`` or a negative ``rtol``.
    """
    arr = as_spectrum(s)
    tol = len(arr) * _EPS32 if rtol is None else float(rtol)
    if not tol >= 0:
        raise InputError(f"numerical_rank: rtol must be >= 0, got {rtol}")
    s_max = float(arr.max())
    if s_max == 0.0:
        return 0
    return int(np.count_nonzero(arr > tol * s_max))
