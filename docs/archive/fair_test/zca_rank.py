"""λ-rank at the ZCA position of each fair-test run (issue 20): `zca/effective_rank_lambda`.

For every finished run under an ablation directory (and the BN-recalibrated random ResNet-18) it
embeds the ablation's evaluation slices (the same evaluation phantom, the same 1,024 evenly spaced
slices, the same image size) and reports, on L2-normalised rows as the ablation does:

* `zca/effective_rank_lambda`: the output of the last block's final norm — the ZCA layer in a
  `block` run, the BatchNorm it replaces otherwise — averaged over positions;
* `backbone/effective_rank_lambda`: the pooled backbone vector (after the residual add and ReLU),
  what the ablation table reports.

Usage: PYTHONPATH=. python docs/archive/fair_test/zca_rank.py docs/archive/fair_test/cpu96
Writes <dir>/zca_rank.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from collapsekit.data import eval_phantom, load_split
from collapsekit.data.slices import select_slices, slice_tensor
from collapsekit.diagnostics import spectrum_report
from collapsekit.evaluation.extract import calibrate_baseline
from collapsekit.runs.models import load_model


def ranks(model, vols, image_size: int, samples: int) -> dict[str, float]:
    calibrate_baseline(model, vols, image_size)
    backbone = model.backbone.eval()
    seen: list[torch.Tensor] = []
    hook = backbone.last_norm().register_forward_hook(
        lambda m, i, o: seen.append(o.detach().mean(dim=(2, 3)))
    )
    pooled = []
    index = select_slices(vols, samples)
    with torch.no_grad():
        for start in range(0, len(index), 64):
            x = slice_tensor(vols, index[start : start + 64], image_size)
            pooled.append(backbone(x))
    hook.remove()
    zca = torch.cat(seen).numpy()
    pool = torch.cat(pooled).numpy()
    return {
        "zca/effective_rank_lambda": spectrum_report(zca).effective_rank_eigenvalues,
        "backbone/effective_rank_lambda": spectrum_report(pool).effective_rank_eigenvalues,
        "n": len(index),
    }


def main(out: Path) -> None:
    settings = json.loads((out / "results.json").read_text())["settings"]
    size, samples = settings["image_size"], settings["samples"]
    phantom = eval_phantom(cases=settings["phantom_cases"])
    vols = load_split("phantom", None, "training", phantom=phantom) + load_split(
        "phantom", None, "validation", phantom=phantom
    )
    rows = {"random:resnet18": ranks(load_model("random:resnet18"), vols, size, samples)}
    for run in sorted(out.glob("*/seed*")):
        if (run / "eval.json").is_file():
            rows[f"{run.parent.name}/{run.name}"] = ranks(load_model(run), vols, size, samples)
    (out / "zca_rank.json").write_text(json.dumps(rows, indent=1))
    for name, r in rows.items():
        print(
            f"{name:24s} zca {r['zca/effective_rank_lambda']:7.1f}  pooled "
            f"{r['backbone/effective_rank_lambda']:7.1f}"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
