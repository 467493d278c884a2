"""plot_spectrum / plot_similarity / save_figure: drawn values, legends, files, closed figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.plotting import plot_similarity, plot_spectrum, save_figure


@pytest.fixture(autouse=True)
def _close_all() -> None:
    yield
    plt.close("all")


def _results():
    rng = np.random.default_rng(0)
    healthy = spectrum_report(rng.standard_normal((400, 16)), name="healthy")
    small = spectrum_report(rng.standard_normal((6, 16)), name="tiny", normalize=False)
    return healthy, small


def test_plot_spectrum_draws_log10_values_with_named_legend() -> None:
    healthy, small = _results()
    fig, ax = plot_spectrum([healthy, small])
    lines = ax.get_lines()
    assert len(lines) == 2
    x, y = lines[0].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 17))
    np.testing.assert_allclose(y, np.log10(healthy.spectrum))
    # the padding beyond the N = 6 Gram eigenvalues is 0 and left out (NaN), not drawn at -inf;
    # the 6th (rank N-1 = 5) is rounding noise: exactly 0 (NaN, not drawn) or far below the
    # y-axis floor, depending on the BLAS's rounding
    y_small = lines[1].get_ydata()
    assert np.isnan(y_small[6:]).all() and np.isfinite(y_small[:5]).all()
    assert ax.get_ylim()[0] < y_small[4]
    assert np.isnan(y_small[5]) or y_small[5] < ax.get_ylim()[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("healthy") and f"{healthy.effective_rank_sigma:.1f}" in legend[0]
    assert f"λ {healthy.effective_rank_lambda:.1f}" in legend[0]
    assert "N-1=5" in legend[1]
    assert "log" in ax.get_ylabel() and "(rows L2-normalised)" not in ax.get_title()


def test_plot_spectrum_on_given_axes_and_title() -> None:
    healthy, _ = _results()
    fig, ax = plt.subplots()
    fig2, ax2 = plot_spectrum(healthy, ax, title="mine")
    assert fig2 is fig and ax2 is ax and ax.get_title() == "mine"
    with pytest.raises(TypeError):
        plot_spectrum([])


def test_plot_similarity_draws_densities_and_split() -> None:
    rng = np.random.default_rng(1)
    res = pairwise_cosine_stats(
        rng.standard_normal((40, 6)), groups=np.arange(40) // 10, name="emb"
    )
    other = pairwise_cosine_stats(rng.standard_normal((30, 6)) + 2.0, name="pixels")
    fig, ax = plot_similarity([res, other])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        f"emb: all pairs (mean {res.mean_cosine:.3f})",
        f"emb: same volume (mean {res.same_volume.mean_cosine:.3f})",
        f"emb: different volume (mean {res.different_volume.mean_cosine:.3f})",
        f"pixels: all pairs (mean {other.mean_cosine:.3f})",
    ]
    # the filled histogram of all pairs carries the density values
    filled = ax.patches[0]
    np.testing.assert_allclose(filled.get_data().values, res.density())
    assert ax.get_xlim()[1] == 1.0 and ax.get_xlabel() == "cosine similarity"


def test_save_figure_writes_png_creates_dirs_and_closes(tmp_path: Path) -> None:
    healthy, _ = _results()
    fig, _ = plot_spectrum(healthy)
    out = save_figure(fig, tmp_path / "deep" / "dir" / "spectrum.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
