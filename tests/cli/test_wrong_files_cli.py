"""The CLI's answer to a wrong file given as a checkpoint: exit 2, one line, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import error_line
from typer.testing import CliRunner

from collapsekit.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["probe", "finetune"])
def test_embeddings_given_to_probe_and_finetune(tmp_path: Path, command: str) -> None:
    np.save(tmp_path / "tworow.npy", np.zeros((2, 3), np.float32))
    before = sorted(tmp_path.iterdir())
    result = runner.invoke(app, [command, str(tmp_path / "tworow.npy"), "--device", "cpu"])
    assert error_line(result) == f"error: {command} needs a model; tworow.npy holds embeddings"
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("command", ["probe", "spectrum", "similarity"])
def test_config_given_as_checkpoint(tmp_path: Path, command: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text("epochs = 3\n")
    result = runner.invoke(app, [command, "config.toml", "--device", "cpu"])
    assert error_line(result) == (
        "error: config.toml is a text file, not a checkpoint — pass the run directory instead"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]
