"""CLI: --augment and --local-negatives reach the config; misspellings exit 2 with one line."""

from __future__ import annotations

import tomllib
from pathlib import Path

from typer.testing import CliRunner

from collapsekit.cli.app import app

runner = CliRunner()
TINY_CFG = """
phantom_cases = 4
phantom_size = 32
phantom_slices = 6
monitor_samples = 12
final_samples = 0
[model]
method = "local"
queue_size = 16
local_queue_size = 64
"""


def test_train_writes_the_chosen_preset_and_local_negatives(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_CFG)
    args = ["train", "--config", str(cfg), "--steps", "1", "--batch-size", "4"]
    args += ["--image-size", "32", "--workers", "0", "--device", "cpu", "--quiet"]
    args += ["--augment", "demo", "--local-negatives", "both", "--out", str(tmp_path / "run")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["augment"] == "demo" and saved["model"]["local_negatives"] == "both"


def test_misspelt_options_exit_2_with_a_suggestion(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--augment", "mocv2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "did you mean 'mocov2'" in res.output
    res = runner.invoke(app, ["train", "--local-negatives", "same", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "local negatives" in res.output
    res = runner.invoke(
        app, ["ablate", "--local-negatives", "sameimage", "--out", str(tmp_path / "a")]
    )
    assert res.exit_code == 2 and "did you mean 'same_image'" in res.output
