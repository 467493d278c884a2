"""CLI: ``collapsekit export`` — the file written, what it prints, refusals, ``spectrum`` reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import error_line
from monai.networks.nets import resnet18
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.models import build_backbone

runner = CliRunner()
TINY_CFG = """
phantom_cases = 4
phantom_size = 32
phantom_slices = 6
monitor_samples = 12
final_samples = 0
[model]
method = "local+zca"
queue_size = 16
local_queue_size = 64
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("export_cli")
    cfg = tmp / "cfg.toml"
    cfg.write_text(TINY_CFG)
    args = ["train", "--steps", "2", "--batch-size", "4", "--image-size", "32", "--workers", "0"]
    res = runner.invoke(app, [*args, "--quiet", "--config", str(cfg), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run"


@pytest.mark.slow  # trains a tiny local+zca run (~8 s)
def test_export_writes_a_monai_backbone_and_refuses_to_overwrite(
    run_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "backbone.pt"
    res = runner.invoke(app, ["export", str(run_dir), str(out)])
    assert res.exit_code == 0, res.output
    # rich wraps long paths at the terminal width (pytest-xdist's tmp paths are longer): compare
    # without the line breaks
    assert "".join(f"wrote {out}".split()) in "".join(res.output.split())
    assert "monai format" in res.output
    assert "ZCA layer of the last block was folded" in res.output
    assert "conv1_t_stride=2" in res.output and "trained at 32 px" in res.output
    net = resnet18(
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_stride=2,
        bias_downsample=False,
        feed_forward=False,
    )
    net.load_state_dict(torch.load(out, weights_only=True), strict=True)

    before = out.read_bytes()
    res = runner.invoke(app, ["export", str(run_dir), str(out), "--format", "torchvision"])
    assert "backbone.pt already exists; pass --overwrite" in error_line(res)
    assert out.read_bytes() == before

    res = runner.invoke(
        app, ["export", str(run_dir), str(out), "--format", "torchvision", "--overwrite", "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)  # nothing but JSON on stdout
    assert data["format"] == "torchvision" and data["in_channels"] == 3 and data["zca_folded"]
    assert data["size_bytes"] == out.stat().st_size
    assert torch.load(out, weights_only=True)["conv1.weight"].shape == (64, 3, 7, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.pt"]


@pytest.mark.slow  # the tiny run, then two spectra of the evaluation phantom (~15 s)
def test_spectrum_reads_the_export_back(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "backbone.pt"
    assert runner.invoke(app, ["export", str(run_dir), str(out)]).exit_code == 0
    res = runner.invoke(
        app,
        [
            "spectrum",
            str(run_dir),
            str(out),
            "--samples",
            "40",
            "--image-size",
            "32",
            "--out",
            str(tmp_path / "spec"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    run, exported = json.loads(res.output)["results"]
    assert exported["name"] == "backbone" and exported["n"] == 40 and exported["d"] == 512
    # the same eval-mode features, hence the same spectrum
    np.testing.assert_allclose(
        exported["spectrum"][:10],
        run["spectrum"][:10],
        rtol=1e-3,
    )
    assert exported["effective_rank_lambda"] == pytest.approx(
        run["effective_rank_lambda"], rel=1e-3
    )


def test_export_bad_input_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", str(tmp_path / "nope"), str(tmp_path / "b.pt")])
    assert "checkpoint not found" in error_line(res)
    (tmp_path / "config.toml").write_text("[model]\n")
    res = runner.invoke(app, ["export", str(tmp_path / "config.toml"), str(tmp_path / "b.pt")])
    assert "config.toml is a text file, not a checkpoint" in error_line(res)
    torch.save(build_backbone("resnet18").state_dict(), tmp_path / "src.pt")
    res = runner.invoke(
        app, ["export", str(tmp_path / "src.pt"), str(tmp_path / "b.pt"), "--format", "onnx"]
    )
    assert "export format" in error_line(res)
    assert not (tmp_path / "b.pt").exists()


def test_export_of_a_plain_state_dict(tmp_path: Path) -> None:
    torch.save(build_backbone("resnet18").state_dict(), tmp_path / "src.pt")
    res = runner.invoke(app, ["export", str(tmp_path / "src.pt"), str(tmp_path / "b.pt"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # the JSON on stdout; the stem assumption on stderr
    assert not data["zca_folded"] and data["image_size"] is None and data["arch"] == "resnet18"
    (line,) = data["assumptions"]
    assert res.stderr.strip() == f"warning: {line}" and "assumed stride 2" in line
