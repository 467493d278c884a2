"""Every seed of the CPU fair test (docs/results/fair-test.md) as one markdown table.

Reads ``cpu96/<method>/seed<k>/metrics.jsonl`` (the last row: health by the pre-registered rule,
loss_global <= 0.8 ln(K+1) and top1_in_batch >= 3/B) and, where the run was evaluated,
``eval.json`` (pooled and dense effective ranks, linear-probe mean Dice). Standard library only:
``python docs/archive/fair_test/summarize.py [cpu96]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _last_row(path: Path) -> dict | None:
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[-1] if rows else None


def _rank(space: dict, *keys: str) -> float | None:
    for key in keys:
        if key in space:
            return float(space[key])
    return None


def _eval_cells(ev: dict) -> list[str]:
    g, d = ev.get("backbone", ev.get("global", {})), ev.get("dense", {})
    cells = [
        _rank(g, "effective_rank_lambda", "effective_rank_eigenvalues"),
        _rank(g, "effective_rank_sigma", "effective_rank_centered"),
        _rank(d, "effective_rank_lambda", "effective_rank_eigenvalues"),
        _rank(d, "effective_rank_sigma", "effective_rank_centered"),
    ]
    dice = ev.get("probe", {}).get("mean_dice")
    return [("—" if c is None else f"{c:.1f}") for c in cells] + [
        "—" if dice is None else f"{100 * dice:.1f}"
    ]


def main(root: Path) -> None:
    print(
        "| arm | seed | step | loss_global (0.8·ln(K+1)) | top1_in_batch (3/B) | healthy "
        "| pooled λ | pooled σ | dense λ | dense σ | mean Dice % |"
    )
    print("|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|")
    random = root / "random" / "eval.json"
    if random.exists():
        cells = _eval_cells(json.loads(random.read_text()))
        print("| random (BN recalibrated) | — | — | — | — | — | " + " | ".join(cells) + " |")
    for arm in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "random"):
        for seed in sorted(arm.glob("seed*")):
            row = _last_row(seed / "metrics.jsonl")
            if row is None:
                continue
            bound = 0.8 * row["loss_chance"]
            b = round(1 / row["top1_in_batch_chance"]) if row.get("top1_in_batch_chance") else None
            top1 = row.get("top1_in_batch")
            ok = (
                row["loss_global"] <= bound and b is not None and top1 is not None and top1 >= 3 / b
            )
            ev = seed / "eval.json"
            cells = _eval_cells(json.loads(ev.read_text())) if ev.exists() else ["—"] * 5
            print(
                f"| {arm.name} | {seed.name[4:]} | {row['step']} | {row['loss_global']:.2f} "
                f"({bound:.2f}) | {top1 if top1 is None else f'{top1:.3f}'} "
                f"({'—' if b is None else f'{3 / b:.3f}'}) | {'yes' if ok else 'no'} | "
                + " | ".join(cells)
                + " |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "cpu96")
