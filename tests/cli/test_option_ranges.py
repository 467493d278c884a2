"""Numeric options are validated up front by Typer ranges (exit 2, the range in the message)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from collapsekit.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args,option",
    [
        (["spectrum", "random:resnet18", "--samples", "0"], "--samples"),
        (["spectrum", "random:resnet18", "--samples", "-5"], "--samples"),
        (["similarity", "random:resnet18", "--image-size", "7"], "--image-size"),
        (["train", "--workers", "-3"], "--workers"),
        (["train", "--image-size", "0"], "--image-size"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--batch-size", "1"], "--batch-size"),
        (["probe", "random:resnet18", "--label-fraction", "1.5"], "--label-fraction"),
        (["probe", "random:resnet18", "--epochs", "0"], "--epochs"),
        (["ablate", "--seeds", "0"], "--seeds"),
        (["data", "phantom", "/nonexistent-ck-out", "--cases", "0"], "--cases"),
    ],
)
def test_out_of_range_options_exit_2_before_any_work(args: list[str], option: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{option}'" in res.output
    assert "Traceback" not in res.output


def test_help_shows_the_ranges() -> None:
    res = runner.invoke(app, ["spectrum", "--help"], env={"COLUMNS": "200"})
    line = next(ln for ln in res.output.splitlines() if "--samples" in ln)
    assert "x>=2" in line
