"""Collapse diagnostics on plain ``(N, D)`` embeddings: spectrum, ranks, similarity, file IO.

Arrays in, numbers out: nothing here takes a model or a volume (see :mod:`collapsekit.evaluation`).
:func:`pool_features` is the one rule that turns a model's output tensor into ``(N, D)`` rows.
Result fields and JSON keys are the names of :mod:`collapsekit.glossary`.
"""

from __future__ import annotations

from collapsekit.diagnostics.embeddings_io import load_embeddings
from collapsekit.diagnostics.pooling import pool_features
from collapsekit.diagnostics.rank import effective_rank, numerical_rank
from collapsekit.diagnostics.similarity import SimilarityResult, pairwise_cosine_stats
from collapsekit.diagnostics.spectrum import (
    SpectrumResult,
    alpha_req,
    explained_variance,
    singular_spectrum,
    spectrum_report,
    std_of_l2_normalized,
)
from collapsekit.diagnostics.streaming import SpectrumAccumulator
from collapsekit.diagnostics.validation import as_embeddings

__all__ = [
    "as_embeddings",
    "singular_spectrum",
    "effective_rank",
    "alpha_req",
    "numerical_rank",
    "explained_variance",
    "std_of_l2_normalized",
    "SpectrumResult",
    "spectrum_report",
    "SpectrumAccumulator",
    "SimilarityResult",
    "pairwise_cosine_stats",
    "load_embeddings",
    "pool_features",
]
