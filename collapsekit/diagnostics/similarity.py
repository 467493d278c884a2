"""Inter-sample cosine similarity: how alike the embeddings (or images) of different samples are.

CT slices look alike, which is why MoCo collapses on them (Hassanpour et al., ISBI 2024): the
distribution of pairwise cosine similarities, split into pairs from the same volume and pairs from
different volumes, shows how much a representation (or the pixels themselves) tells slices apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from collapsekit.diagnostics.validation import as_embeddings, l2_normalize_rows
from collapsekit.errors import InputError

__all__ = ["SimilarityResult", "pairwise_cosine_stats", "QUANTILES"]

QUANTILES: dict[str, float] = {"q05": 0.05, "q25": 0.25, "q50": 0.50, "q75": 0.75, "q95": 0.95}
# All i<j values are kept for exact quantiles: 4000 rows -> 8.0e6 pairs (32 MB as float32).
_MAX_PAIRS = 50_000_000
_BLOCK_ROWS = 1024


@dataclass(frozen=True)
class SimilarityResult:
    """Distribution of the pairwise cosine similarities ``cos(z_i, z_j)``, ``i < j``.

    Attributes:
        name: label of the embeddings (the split results add "(same volume)" / "(different
            volume)").
        n_pairs: number of pairs, ``n (n - 1) / 2`` for ``n`` rows without a split.
        mean_cosine: mean cosine (1.0 when all rows point the same way, about 0 for isotropic
            data).
        std_cosine: population std of the cosines.
        quantiles: ``{"q05", "q25", "q50", "q75", "q95"}`` (linear interpolation, exact).
        histogram: ``(counts, bin_edges)``, equal bins over ``[-1, 1]``.
        n_samples: rows used (after subsampling).
        same_volume: the same summary over pairs from one volume (``None`` without groups or
            without such pairs).
        different_volume: likewise over pairs from different volumes.
    """

    name: str
    n_pairs: int
    mean_cosine: float
    std_cosine: float
    quantiles: dict[str, float]
    histogram: tuple[np.ndarray, np.ndarray]
    n_samples: int = 0
    same_volume: SimilarityResult | None = None
    different_volume: SimilarityResult | None = None

    def density(self) -> np.ndarray:
        """Histogram normalised to a density (integrates to 1 over ``[-1, 1]``)."""
        counts, edges = self.histogram
        total = counts.sum()
        return counts / (total * np.diff(edges)) if total else np.zeros(len(counts))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SimilarityResult:
        """Rebuild a result from :meth:`to_dict` output (e.g. a saved ``similarity.json``); JSON
        written by earlier versions (keys ``mean``, ``std``) loads too."""
        return cls(
            name=d["name"],
            n_pairs=int(d["n_pairs"]),
            mean_cosine=float(d["mean_cosine"] if "mean_cosine" in d else d["mean"]),
            std_cosine=float(d["std_cosine"] if "std_cosine" in d else d["std"]),
            quantiles={k: float(v) for k, v in d["quantiles"].items()},
            histogram=(
                np.asarray(d["histogram"]["counts"], dtype=np.int64),
                np.asarray(d["histogram"]["bin_edges"], dtype=np.float64),
            ),
            n_samples=int(d.get("n_samples", 0)),
            same_volume=None if d.get("same_volume") is None else cls.from_dict(d["same_volume"]),
            different_volume=(
                None if d.get("different_volume") is None else cls.from_dict(d["different_volume"])
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict whose keys are the field names (plain floats and lists), splits nested
        under their names."""
        counts, edges = self.histogram
        return {
            "name": self.name,
            "n_samples": self.n_samples,
            "n_pairs": self.n_pairs,
            "mean_cosine": self.mean_cosine,
            "std_cosine": self.std_cosine,
            "quantiles": dict(self.quantiles),
            "histogram": {
                "counts": [int(c) for c in counts],
                "bin_edges": [float(e) for e in edges],
            },
            "same_volume": None if self.same_volume is None else self.same_volume.to_dict(),
            "different_volume": (
                None if self.different_volume is None else self.different_volume.to_dict()
            ),
        }


def _summary(name: str, values: np.ndarray, edges: np.ndarray, n_samples: int) -> SimilarityResult:
    q = np.quantile(values, list(QUANTILES.values()))
    counts, _ = np.histogram(values, bins=edges)
    return SimilarityResult(
        name=name,
        n_pairs=int(values.size),
        mean_cosine=float(np.mean(values, dtype=np.float64)),
        std_cosine=float(np.std(values, dtype=np.float64)),
        quantiles={k: float(v) for k, v in zip(QUANTILES, q, strict=True)},
        histogram=(counts.astype(np.int64), edges),
        n_samples=n_samples,
    )


def _group_ids(groups: Any, n: int) -> np.ndarray:
    labels = np.asarray(groups)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"groups: expected one volume id per row ({n},), got shape {labels.shape}")
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def pairwise_cosine_stats(
    z: Any,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    bins: int = 200,
    max_samples: int | None = 4000,
    seed: int = 0,
    name: str = "embeddings",
) -> SimilarityResult:
    """Mean, quantiles and histogram of ``cos(z_i, z_j) = z_iᵀ z_j / (||z_i|| ||z_j||)``, ``i < j``.

    The diagonal (``cos(z_i, z_i) = 1``) is excluded. Computed in float64; a zero row has cosine
    0 with everything (it is normalised as :func:`torch.nn.functional.normalize` does).

    Known values: identical rows give 1, orthogonal rows 0, ``z`` and ``-z`` give -1; with
    ``groups``, the same-volume split has ``sum_g n_g (n_g - 1) / 2`` pairs.

    Args:
        z: ``(N, D)`` rows (embeddings, or flattened images), numpy or torch on any device.
        groups: ``(N,)`` volume id of each row (any labels); splits same- and different-volume
            pairs.
        bins: histogram bins over ``[-1, 1]``.
        max_samples: above this many rows, use a random subset of this size (``seed``), so the cost
            is bounded; None uses every row (at most about 10,000: all pairs are kept for exact
            quantiles).
        seed: seed of the subsampling (deterministic).
        name: label of the result and of error messages.

    Returns:
        A :class:`SimilarityResult`.

    Raises:
        InputError: bad ``z`` (see :func:`as_embeddings`), bad ``groups``, ``bins < 1``,
            ``max_samples < 2`` or too many pairs.
    """
    t = as_embeddings(z, name=name)
    n = t.shape[0]
    group_ids = None if groups is None else _group_ids(groups, n)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise InputError(f"pairwise_cosine_stats: bins must be a positive integer, got {bins!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 2):
        raise InputError(f"pairwise_cosine_stats: max_samples must be >= 2, got {max_samples!r}")
    if max_samples is not None and n > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
        t = t[torch.from_numpy(rows).to(t.device)]
        group_ids = None if group_ids is None else group_ids[rows]
        n = max_samples
    n_pairs = n * (n - 1) // 2
    if n_pairs > _MAX_PAIRS:
        raise InputError(
            f"{name}: {n} rows give {n_pairs} pairs, too many to keep; pass max_samples "
            f"(e.g. 4000) to use a random subset"
        )
    u = l2_normalize_rows(t.to(torch.float64, copy=True), inplace=True)
    g = None if group_ids is None else torch.from_numpy(group_ids).to(u.device)
    values: list[np.ndarray] = []
    same: list[np.ndarray] = []
    for i0 in range(0, n - 1, _BLOCK_ROWS):
        i1 = min(i0 + _BLOCK_ROWS, n)
        sims = u[i0:i1] @ u[i0:].T  # (rows i0..i1) × (columns i0..n)
        upper = torch.ones_like(sims, dtype=torch.bool).triu(diagonal=1)  # column > row
        values.append(sims[upper].clamp(-1.0, 1.0).to(torch.float32).cpu().numpy())
        if g is not None:
            same_block = g[i0:i1, None] == g[None, i0:]
            same.append(same_block[upper].cpu().numpy())
    vals = np.concatenate(values)
    edges = np.linspace(-1.0, 1.0, bins + 1)
    result = _summary(name, vals, edges, n)
    if g is None:
        return result
    same_mask = np.concatenate(same)
    split = {}
    for key, mask, label in (
        ("same_volume", same_mask, "same volume"),
        ("different_volume", ~same_mask, "different volume"),
    ):
        split[key] = _summary(f"{name} ({label})", vals[mask], edges, n) if mask.any() else None
    return replace(
        result, same_volume=split["same_volume"], different_volume=split["different_volume"]
    )
