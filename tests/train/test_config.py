"""Config errors name the file, the table, the key, the value found and the type expected."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from collapsekit.errors import ConfigError
from collapsekit.train.config import load_config


@pytest.mark.parametrize(
    "text,message",
    [
        ('epochs = "three"\n', "c.toml: key 'epochs' = 'three': expected an integer, got str"),
        ("[model]\narhc = 1\n", "c.toml: unknown [model] key 'arhc'; did you mean 'arch'?"),
        (
            '[model]\nqueue_size = "big"\n',
            "c.toml: [model] key 'queue_size' = 'big': expected an integer, got str",
        ),
        ("lr = true\n", "c.toml: key 'lr' = True: expected a number, got bool"),
        ("prefill_queue = 1\n", "c.toml: key 'prefill_queue' = 1: expected true or false, got int"),
        ("model = 3\n", "c.toml: 'model' must be a table ([model]), got int"),
        ("epochs = 0\n", "c.toml: epochs must be >= 1, got 0"),
    ],
)
def test_config_errors_name_file_table_key_and_type(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{tmp_path}/{message}"


def test_numbers_of_the_right_kind_load(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("lr = 1\nwarmup_steps = 5\n[model]\ntemperature = 1\n")  # ints are numbers
    cfg = load_config(path)
    assert cfg.lr == 1 and cfg.warmup_steps == 5 and cfg.model.temperature == 1


def test_config_directory_and_the_cli_keeps_the_table_name(tmp_path: Path) -> None:
    from collapsekit.cli.app import app

    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    (tmp_path / "c.toml").write_text("[model]\narhc = 1\n")
    res = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "c.toml")])
    assert res.exit_code == 2 and "unknown [model] key 'arhc'" in res.output  # not eaten as markup


def test_config_nested_a_hundred_thousand_levels_is_one_error(tmp_path) -> None:
    """Issue 22, item 10: tomllib raised RecursionError (a traceback)."""
    from collapsekit.errors import ConfigError
    from collapsekit.train.config import load_config

    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="deep.toml: its tables or arrays are nested too deeply"):
        load_config(path)
