"""CLI: the options that say how to read a foreign checkpoint, on every command that takes a model.

``--state-dict-key``, ``--strip-prefix``, ``--arch``, ``--stem-stride`` and ``--model-kwargs`` are
declared once (``collapsekit.cli.common``) and reach :func:`collapsekit.runs.models.load_model`;
what the loader assumed is printed as one ``warning:`` line on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import error_line
from monai.networks.nets import resnet18
from typer.main import get_command
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data import write_phantom_dataset
from collapsekit.runs.models import load_model

runner = CliRunner()
OPTIONS = {"--state-dict-key", "--strip-prefix", "--arch", "--stem-stride", "--model-kwargs"}


@pytest.mark.parametrize("command", ["spectrum", "similarity", "probe", "finetune", "export"])
def test_every_model_command_takes_the_load_options(command: str) -> None:
    cmd = get_command(app).commands[command]  # type: ignore[attr-defined]
    names = {opt for p in cmd.params for opt in p.opts}
    assert names >= OPTIONS


def _monai_stride1(tmp_path: Path) -> Path:
    """MONAI ``resnet18(..., bias_downsample=False)`` with MONAI's default stride-1 stem: the
    case issue 19 found misread silently."""
    torch.manual_seed(0)
    net = resnet18(spatial_dims=2, n_input_channels=1, bias_downsample=False)
    p = tmp_path / "monai_nobias.pt"
    torch.save({"model": net.state_dict()}, p)
    return p


def test_export_warns_the_assumption_then_records_the_given_stride(tmp_path: Path) -> None:
    src = _monai_stride1(tmp_path)
    res = runner.invoke(app, ["export", str(src), str(tmp_path / "a.pt")])
    assert res.exit_code == 0, res.output
    (warning,) = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert "assumed stride 2 with a max-pool (torchvision/timm convention)" in warning
    assert "--stem-stride N" in warning

    out = tmp_path / "b.pt"
    res = runner.invoke(
        app,
        ["export", str(src), str(out), "--stem-stride", "1", "--state-dict-key", "model", "--json"],
    )
    assert res.exit_code == 0, res.output
    assert res.stderr == "" and json.loads(res.stdout)["monai_kwargs"]["conv1_t_stride"] == 1
    back = load_model(out)  # every command reads the stride back: nothing assumed
    assert back.assumptions == () and back.backbone.conv1.stride == (1, 1)


def test_model_kwargs_json_and_arch_are_checked(tmp_path: Path) -> None:
    src = _monai_stride1(tmp_path)
    out = str(tmp_path / "b.pt")
    res = runner.invoke(app, ["export", str(src), out, "--model-kwargs", "{stride: 1"])
    assert "--model-kwargs is not valid JSON" in error_line(res)
    res = runner.invoke(app, ["export", str(src), out, "--model-kwargs", '{"stride": 1}'])
    assert "--model-kwargs: unknown keys ['stride']; accepted: conv1_t_stride" in error_line(res)
    res = runner.invoke(app, ["export", str(src), out, "--arch", "resnet19"])
    assert "did you mean 'resnet18'" in error_line(res)
    res = runner.invoke(app, ["export", str(src), out, "--strip-prefix", "encoder."])
    assert "no ResNet names under --strip-prefix 'encoder.'" in error_line(res)
    res = runner.invoke(
        app, ["export", str(src), out, "--model-kwargs", '{"conv1_t_stride": 1}', "--json"]
    )
    assert res.exit_code == 0 and res.stderr == "", res.output


@pytest.mark.slow  # embeds 40 slices twice
def test_spectrum_prints_the_assumption_and_takes_the_stride(tmp_path: Path) -> None:
    src = _monai_stride1(tmp_path)
    # Two small cases on disk: the default evaluation phantom would be generated first, by a
    # pool of worker processes, for slices that have nothing to do with the stride.
    write_phantom_dataset(tmp_path / "btcv", cases=2, size=64, slices=32, validation=0)
    base = ["spectrum", str(src), "--samples", "40", "--image-size", "64", "--json", "--overwrite"]
    base += ["--dataset", "btcv", "--data-dir", str(tmp_path / "btcv")]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "assumed stride 2" in res.stderr and json.loads(res.stdout)["results"][0]["d"] == 512
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--stem-stride", "1"])
    assert res.exit_code == 0, res.output
    assert "assumed" not in res.stderr
