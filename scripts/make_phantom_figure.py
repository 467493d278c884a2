"""Regenerate ``docs/assets/phantom.png``: four axial slices of one phantom case, with and without labels.

Usage::

    python scripts/make_phantom_figure.py [--out docs/assets/phantom.png] [--seed 0] [--size 256]

Slices are shown in radiological convention (anterior up, patient's right on the left of the image)
with the BTCV soft-tissue window -175..250 HU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from collapsekit.data import BTCV_LABELS, generate_phantom, radiological_view, window  # noqa: E402

COLORS = [
    "#000000",
    "#1f77b4",  # spleen
    "#ff7f0e",  # right kidney
    "#ffbb78",  # left kidney
    "#2ca02c",  # gallbladder
    "#98df8a",  # oesophagus
    "#d62728",  # liver
    "#9467bd",  # stomach
    "#e377c2",  # aorta
    "#17becf",  # IVC
    "#bcbd22",  # portal / splenic veins
    "#8c564b",  # pancreas
    "#f7b6d2",  # right adrenal
    "#c5b0d5",  # left adrenal
]


def make_figure(out: Path, seed: int = 0, size: int = 256, slices: int = 48) -> Path:
    """Draw the figure and save it to ``out``; returns ``out``."""
    image, label, affine = generate_phantom(seed, size, slices)
    zs = [int(round(f * (slices - 1))) for f in (0.15, 0.4, 0.6, 0.85)]
    z_mm = affine[2, 2] * np.array(zs) + affine[2, 3]
    cmap = ListedColormap(COLORS)
    fig, axes = plt.subplots(2, 4, figsize=(13, 7.2), facecolor="black")
    for col, (z, zm) in enumerate(zip(zs, z_mm, strict=True)):
        ct = radiological_view(window(image[:, :, z]))
        lab = radiological_view(label[:, :, z])
        axes[0, col].imshow(ct, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
        axes[0, col].set_title(f"z = {zm:+.0f} mm", color="white", fontsize=11)
        axes[1, col].imshow(ct, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
        axes[1, col].imshow(
            np.ma.masked_equal(lab, 0),
            cmap=cmap,
            vmin=0,
            vmax=13,
            alpha=0.55,
            interpolation="nearest",
        )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    present = sorted({int(v) for z in zs for v in np.unique(label[:, :, z]) if v})
    handles = [
        Patch(color=COLORS[i], label=f"{i} {BTCV_LABELS[i].replace('_', ' ')}") for i in present
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=7, frameon=False, labelcolor="white", fontsize=9
    )
    fig.suptitle(
        f"collapsekit phantom, case seed {seed} ({size}x{size}x{slices}, window -175..250 HU, radiological view)",
        color="white",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor="black")
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs" / "assets" / "phantom.png",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--slices", type=int, default=48)
    args = ap.parse_args()
    print(make_figure(args.out, args.seed, args.size, args.slices))


if __name__ == "__main__":
    main()
