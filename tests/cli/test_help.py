"""Every command's ``--help`` reads like a well-kept CLI: no type noise, defaults shown, all help."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.cli.train import HELP_DEFAULTS
from collapsekit.train.config import TrainConfig

runner = CliRunner()


def _commands(group: typer.main.TyperGroup, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the app (``("data", "check")`` for a sub-command), the app itself too."""
    out = [path]
    for name, cmd in group.commands.items():
        if isinstance(cmd, typer.main.TyperGroup):
            out += _commands(cmd, (*path, name))
        else:
            out.append((*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def test_the_app_has_every_command() -> None:
    names = {" ".join(c) for c in COMMANDS}
    expected = {"", "spectrum", "similarity", "train", "probe", "finetune", "ablate"}
    assert expected | {"data", "data phantom", "data check"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "collapsekit")
def test_help_has_no_type_noise_and_every_option_has_help(path: tuple[str, ...]) -> None:
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    text = res.output
    # Typer's annotation rendering: <bool>, <int range>, <path>, <list[str]>, {out_dir}.
    assert not re.search(r"<(bool|int|float|str|path|list)[^>]*>", text), text
    assert not re.search(r"\{[a-z_]+\}", text), text
    # Every option line has a help text after its (optional) metavar and range.
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    for param in cmd.params:
        assert param.help, f"{' '.join(path)} {param.name} has no help text"


def test_train_help_shows_the_defaults_of_the_default_budget() -> None:
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    for value in ("phantom", "local+zca", "resnet18", "0.03"):
        assert f"[default: ({value})]" in res.output
    d, m = TrainConfig(), TrainConfig().model
    shown = dict(HELP_DEFAULTS)
    assert shown == {
        "dataset": d.dataset,
        "budget": "default",
        "augment": d.augment,
        "local_negatives": m.local_negatives,
        "method": m.method,
        "backbone": m.arch,
        "epochs": str(d.epochs),
        "batch_size": str(d.batch_size),
        "image_size": str(d.image_size),
        "lr": str(d.lr),
        "seed": str(d.seed),
        "device": d.device,
        "num_workers": str(d.num_workers),
        "checkpoint_every": str(d.checkpoint_every),
        "device_augment": d.device_augment,
        "compile": d.compile,
    }


def test_flags_take_no_metavar_and_arguments_read_as_click_does() -> None:
    res = runner.invoke(app, ["data", "phantom", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert "Usage: collapsekit data phantom [OPTIONS] OUT_DIR" in res.output
    assert re.search(r"--overwrite\s+Write into", res.output)
    assert re.search(r"--cases\s+INT \[x>=1\]\s+Number of volumes", res.output)


def test_help_does_not_import_torch() -> None:
    """``collapsekit --help`` answers in well under a second: the CLI imports torch lazily."""
    import subprocess
    import sys

    code = "import sys, collapsekit.cli.app; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
