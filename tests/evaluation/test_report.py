"""Spectrum/similarity reports: embeddings files are used as is and match the array diagnostics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.evaluation.report import (
    _is_embeddings_file,
    load_input,
    similarity_analysis,
    spectrum_analysis,
)


@pytest.fixture
def npy(tmp_path: Path) -> Path:
    z = np.random.default_rng(0).standard_normal((60, 12)).astype(np.float32)
    path = tmp_path / "z.npy"
    np.save(path, z)
    return path


def test_embeddings_files_are_recognised(npy: Path) -> None:
    assert _is_embeddings_file(str(npy)) and _is_embeddings_file("a.NPZ")
    assert not _is_embeddings_file("run/checkpoint.pt")
    assert isinstance(load_input(str(npy)), np.ndarray)


def test_spectrum_analysis_of_a_file_is_the_spectrum_report(npy: Path) -> None:
    (res,) = spectrum_analysis([str(npy)])
    ref = spectrum_report(np.load(npy), name="z", normalize=True)
    assert res.name == "z"
    np.testing.assert_allclose(res.spectrum, ref.spectrum, rtol=1e-6)
    assert res.effective_rank_sigma == pytest.approx(ref.effective_rank_sigma)


def test_similarity_analysis_of_a_file_has_no_volume_split(npy: Path) -> None:
    (res,) = similarity_analysis([str(npy)])
    ref = pairwise_cosine_stats(np.load(npy), name="z")
    assert res.mean_cosine == pytest.approx(ref.mean_cosine)
