"""Figures and per-seed tables of docs/archive/collapse from an ablation directory.

Usage: python docs/archive/collapse/make_figures.py ABLATION_DIR [OUT_DIR]

Writes into OUT_DIR (default: this folder): projector_spectra.png (the final projector spectra of
seed 0 of every method: Jing et al.'s near-zero tail), rank_curves.png (backbone and projector
λ-effective rank over training, every seed), and per_seed.md (every seed's numbers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from collapsekit.diagnostics import SpectrumResult  # noqa: E402
from collapsekit.plotting import plot_rank_history, plot_spectrum, save_figure  # noqa: E402

KEYS = [
    ("final_loss", "loss", 2),
    ("top1", "top-1", 2),
    ("proj_effective_rank_eigenvalues", "proj λ-rank", 1),
    ("proj_mean_cosine", "proj cos", 3),
    ("effective_rank_eigenvalues", "backbone λ-rank", 1),
    ("effective_rank", "backbone σ-rank", 1),
    ("dense_effective_rank_eigenvalues", "dense λ-rank", 1),
    ("mean_dice", "mean Dice %", 1),
]


def main(abl: Path, out: Path) -> None:
    res = json.loads((abl / "results.json").read_text())
    methods = res["methods"]
    specs = []
    for name in methods:
        if name == "random":
            continue
        path = abl / name.replace("+", "_") / "seed0" / "spectrum_projector.json"
        spec = SpectrumResult.from_dict(json.loads(path.read_text()))
        object.__setattr__(spec, "name", name)
        specs.append(spec)
    fig, _ = plot_spectrum(specs, title="Projector spectra after demo pretraining (seed 0)")
    save_figure(fig, out / "projector_spectra.png")

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    plot_rank_history(res, ax=axes[0], key="effective_rank_eigenvalues", title="Backbone λ-rank")
    plot_rank_history(
        res, ax=axes[1], key="proj_effective_rank_eigenvalues", title="Projector λ-rank"
    )
    fig.tight_layout()
    save_figure(fig, out / "rank_curves.png")

    lines = [
        "| method | seed | " + " | ".join(label for _, label, _ in KEYS) + " |",
        "|---|--:|" + "--:|" * len(KEYS),
    ]
    for m in methods.values():
        for seed, s in enumerate(m["per_seed"]):
            cells = []
            for key, _, digits in KEYS:
                v = s.get(key)
                if v is None:
                    cells.append("–")
                else:
                    cells.append(f"{v * (100 if key == 'mean_dice' else 1):.{digits}f}")
            lines.append(f"| {m['method']} | {seed} | " + " | ".join(cells) + " |")
    (out / "per_seed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent)
