"""plot_spectrum / plot_similarity / save_figure: drawn values, legends, files, closed figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from collapsekit.diagnostics import pairwise_cosine_stats, spectrum_report
from collapsekit.errors import ConfigError
from collapsekit.plotting import (
    plot_ablation_dice,
    plot_rank_history,
    plot_similarity,
    plot_spectrum,
    save_figure,
)


@pytest.fixture(autouse=True)
def _close_all() -> None:
    yield
    plt.close("all")


def _results():
    rng = np.random.default_rng(0)
    healthy = spectrum_report(rng.standard_normal((400, 16)), name="healthy")
    small = spectrum_report(rng.standard_normal((6, 16)), name="tiny", normalize=False)
    return healthy, small


def test_plot_spectrum_draws_log10_values_to_the_rank_bound_with_named_legend() -> None:
    healthy, small = _results()
    fig, ax = plot_spectrum([healthy, small])
    lines = ax.get_lines()
    assert len(lines) == 4  # two spectra, then one dashed line per distinct rank bound
    x, y = lines[0].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 17))
    np.testing.assert_allclose(y, np.log10(healthy.spectrum))
    # N = 6 rows: drawn only to min(D, N - 1) = 5, the rest is no information
    x_small, y_small = lines[1].get_data()
    np.testing.assert_array_equal(x_small, np.arange(1, 6))
    np.testing.assert_allclose(y_small, np.log10(small.spectrum[:5]))
    assert [line.get_xdata()[0] for line in lines[2:]] == [5, 16]
    assert lines[2].get_linestyle() == "--"
    assert ax.get_xlim() == pytest.approx((0, 16 * 1.02 + 1))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        f"healthy: effective rank (λ) {healthy.effective_rank_lambda:.1f}, "
        f"effective rank (σ) {healthy.effective_rank_sigma:.1f} (N=400, D=16)",
        f"tiny: effective rank (λ) {small.effective_rank_lambda:.1f}, "
        f"effective rank (σ) {small.effective_rank_sigma:.1f} (N=6, D=16)",
        "rank bound min(D, N − 1) = 5 (N − 1)",
        "rank bound min(D, N − 1) = 16 (D)",
    ]
    assert ax.get_ylabel() == "log$_{10}$ λ (covariance eigenvalue)"
    assert "(rows L2-normalised)" not in ax.get_title()
    assert all(float(t).is_integer() for t in ax.get_xticks())


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
        f"emb: all pairs (mean cosine {res.mean_cosine:.3f})",
        f"emb: same volume (mean cosine {res.same_volume.mean_cosine:.3f})",
        f"emb: different volume (mean cosine {res.different_volume.mean_cosine:.3f})",
        f"pixels: all pairs (mean cosine {other.mean_cosine:.3f})",
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


@pytest.mark.parametrize(
    ("fmt", "magic"), [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")]
)
def test_save_figure_writes_each_format(tmp_path: Path, fmt: str, magic: bytes) -> None:
    fig, _ = plot_spectrum(_results()[0])
    assert save_figure(fig, tmp_path / f"s.{fmt}").read_bytes().startswith(magic)


def test_save_figure_refuses_other_formats(tmp_path: Path) -> None:
    fig, _ = plot_spectrum(_results()[0])
    with pytest.raises(ConfigError, match=r"'s.jpg': use one of png, pdf, svg"):
        save_figure(fig, tmp_path / "s.jpg")
    assert not plt.fignum_exists(fig.number) and not (tmp_path / "s.jpg").exists()


def test_rank_history_reads_any_version_labels_lambda_and_uses_integer_steps() -> None:
    old = [{"epoch": 1, "step": s, "effective_rank_eigenvalues": 10.0 - s} for s in (1, 2, 3)]
    new = [{"epoch": 1, "step": s, "backbone/effective_rank_lambda": 20.0 - s} for s in (1, 2, 3)]
    fig, ax = plot_rank_history({"old run": old, "new run": new})
    (x0, y0), (x1, y1) = (line.get_data() for line in ax.get_lines())
    assert list(x0) == [1, 2, 3] and list(y0) == [9.0, 8.0, 7.0] and list(y1) == [19.0, 18.0, 17.0]
    assert ax.get_ylabel() == "backbone effective rank (λ)"
    assert all(float(t).is_integer() for t in ax.get_xticks())
    _, ax = plot_rank_history({"r": new}, key="proj_effective_rank_eigenvalues")
    assert (
        ax.get_ylabel() == "projector effective rank (λ)" and not ax.get_lines()[0].get_xdata().size
    )


def test_dice_bars_mark_an_absent_organ_na_instead_of_zero() -> None:
    results = {
        "methods": {
            "mocov2": {
                "method": "mocov2",
                "seeds": 1,
                "mean": {"dice/liver": 0.8, "dice/gallbladder": None, "mean_dice": 0.8},
                "std": {},
            }
        }
    }
    _, ax = plot_ablation_dice(results)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([80.0, 80.0])  # liver and the mean: no bar for gallbladder
    assert [t.get_text() for t in ax.texts] == ["n/a"]
    assert ax.texts[0].get_position()[0] == pytest.approx(1.0)  # at the gallbladder's slot
