"""Draw the issue-19 figures from make_inputs.py's files with the checked-out collapsekit.

``before_*.png`` were drawn by this script with the code before issue 19 (file names without the
``after_`` prefix); ``after_*.png`` with branch ``monitor``: ``python plot.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")

from collapsekit.diagnostics import spectrum_report  # noqa: E402
from collapsekit.plotting import plot_rank_history, plot_spectrum, save_figure  # noqa: E402

IN = "/tmp/mon/fig"


def main(out: str) -> None:
    results = [
        spectrum_report(
            np.load(f"{IN}/random_resnet18.npy"), name="random:resnet18 (BN recalibrated)"
        ),
        spectrum_report(np.load(f"{IN}/collapsed.npy"), name="collapsed (6 directions)"),
    ]
    fig, _ = plot_spectrum(results)
    save_figure(fig, f"{out}/after_spectrum.png")
    with open(f"{IN}/history.json") as f:
        history = json.load(f)
    fig, _ = plot_rank_history(history)
    save_figure(fig, f"{out}/after_rank_history.png")


if __name__ == "__main__":
    main(sys.argv[1])
