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


def _row(step: int, lam: float | None):
    import math

    from collapsekit.train.records import MetricsRecord, SpaceRecord

    space = None if lam is None else SpaceRecord(lam, 2 * lam, 2 * lam, 1.0, 0.9, 0.1, 0.2, 511)
    return MetricsRecord(
        epoch=1,
        step=step,
        steps=1,
        loss=5.0,
        loss_global=4.0,
        loss_local=None,
        top1_queue=0.5,
        top1_in_batch=0.5,
        lr=0.1,
        loss_chance=math.log(17),
        top1_in_batch_chance=0.25,
        images_per_s=1.0,
        backbone=space,
    )


def test_plot_rank_history_draws_the_rows_of_each_run_by_glossary_key() -> None:

    a = [_row(10, 3.0), _row(15, None), _row(20, 5.0)]  # the middle row has no monitor pass
    b = [[_row(10, 7.0)], [_row(10, 8.0)]]  # two seeds
    fig, ax = plot_rank_history({"a": a, "b": b})
    lines = ax.get_lines()
    assert [list(ln.get_xdata()) for ln in lines] == [[10, 20], [10], [10]]
    assert [list(ln.get_ydata()) for ln in lines] == [[3.0, 5.0], [7.0], [8.0]]
    assert [ln.get_linewidth() for ln in lines] == [2, 2, 0.8]  # further seeds thin
    assert ax.get_ylabel() == "backbone effective rank (λ)" and ax.get_xlabel() == "step"
    assert all(float(t).is_integer() for t in ax.get_xticks())  # integer step ticks
    # a legacy key names the same quantity
    _, ax2 = plot_rank_history({"a": a}, key="backbone/effective_rank_eigenvalues")
    assert ax2.get_ylabel() == "backbone effective rank (λ)"
    assert [list(ln.get_ydata()) for ln in ax2.get_lines()] == [[3.0, 5.0]]


def test_plot_ablation_dice_takes_the_typed_results() -> None:
    from collapsekit.experiments.results import MethodResult, RunSummary

    def method(label: str, spleen: float, liver: float | None, seeds: int) -> MethodResult:
        mean = RunSummary(mean_dice=0.5, dice={"spleen": spleen, "liver": liver, "aorta": None})
        std = RunSummary(mean_dice=0.1, dice={"spleen": 0.02, "liver": None, "aorta": None})
        return MethodResult(label, label, None, None, seeds, mean, std, (), ())

    fig, ax = plot_ablation_dice([method("m1", 0.8, 0.6, 1), method("m2", 0.7, None, 2)])
    # aorta is absent in every method: not drawn; liver absent in m2 only: no bar but "n/a"
    # (never a bar of height 0) at m2's liver slot
    assert [t.get_text() for t in ax.get_xticklabels()] == ["spleen", "liver", "mean"]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([80.0, 60.0, 50.0, 70.0, 50.0])
    assert [t.get_text() for t in ax.texts] == ["n/a"]
    assert ax.texts[0].get_position()[0] == pytest.approx(1.0 + 0.2)  # liver, second bar
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["m1", "m2"]
