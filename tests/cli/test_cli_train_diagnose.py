"""CLI: train, spectrum, similarity — exit codes, files written, JSON on stdout, one-line errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from collapsekit import __version__
from collapsekit.cli.app import app

runner = CliRunner()
TINY_TRAIN = [
    "train",
    "--steps",
    "2",
    "--batch-size",
    "4",
    "--image-size",
    "32",
    "--workers",
    "0",
    "--quiet",
]
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


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    return errors[0]


def test_version_and_help() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"collapsekit {__version__}"
    res = runner.invoke(app, [])
    assert "train" in res.output and "spectrum" in res.output and "probe" in res.output


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "cfg.toml"
    cfg.write_text(TINY_CFG)
    res = runner.invoke(app, [*TINY_TRAIN, "--config", str(cfg), "--out", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    return tmp / "run"


def test_train_writes_run(run_dir: Path) -> None:
    assert {"checkpoint.pt", "config.toml", "metrics.jsonl", "spectrum.png"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert 'method = "local+zca"' in (run_dir / "config.toml").read_text()


def test_train_refuses_existing_run(run_dir: Path) -> None:
    before = (run_dir / "checkpoint.pt").stat().st_mtime_ns
    res = runner.invoke(app, [*TINY_TRAIN, "--out", str(run_dir)])
    assert res.exit_code == 2
    assert "already holds a run" in _one_error_line(res.output)
    assert (run_dir / "checkpoint.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "loca"], "did you mean 'local'"),
        (["--backbone", "resnet51"], "did you mean"),
        (["--dataset", "btcv", "--data-dir", "/nonexistent/btcv"], "/nonexistent/btcv"),
        (["--batch-size", "4096"], "larger than the"),
    ],
)
def test_train_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(TINY_CFG)
    res = runner.invoke(
        app, [*TINY_TRAIN, "--config", str(cfg), "--out", str(tmp_path / "r"), *args]
    )
    assert res.exit_code == 2, res.output
    assert message in _one_error_line(res.output)


@pytest.mark.slow  # ~10 s: embeds the eval phantom twice
def test_spectrum_of_checkpoint_and_random_json(run_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "spectrum",
            str(run_dir),
            "random:resnet18",
            "--samples",
            "40",
            "--image-size",
            "32",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)  # nothing but JSON on stdout
    assert [r["name"] for r in data["results"]] == ["run", "random:resnet18 (BN recalibrated)"]
    for r in data["results"]:
        assert r["n"] == 40 and r["d"] == 512 and r["rank_bound"] == 39 and r["bounded_by_samples"]
        assert 1.0 <= r["effective_rank_sigma"] <= 39.0
    assert (tmp_path / "spectrum.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "spectrum.json").read_text()) == data


def test_spectrum_of_embeddings_file_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 16)) * np.linspace(3, 0.1, 16)
    np.save(tmp_path / "emb.npy", z.astype(np.float32))
    res = runner.invoke(
        app,
        ["spectrum", str(tmp_path / "emb.npy"), "--no-normalize", "--out", str(tmp_path), "--json"],
    )
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)["results"][0]
    ref = np.linalg.svd(np.cov(z.astype(np.float32).astype(np.float64).T), compute_uv=False)
    np.testing.assert_allclose(r["spectrum"], ref, rtol=1e-5)
    assert r["numerical_rank"] == 16


def test_spectrum_table_output(tmp_path: Path) -> None:
    np.save(tmp_path / "emb.npy", np.random.default_rng(1).normal(size=(10, 64)).astype(np.float32))
    res = runner.invoke(app, ["spectrum", str(tmp_path / "emb.npy"), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "bounded by N-1 = 9" in res.output and "emb" in res.output
    assert "rank (λ)" in res.output and "rank (σ)" in res.output and "(σ, raw)" in res.output
    assert "Every rank is measured on the N rows shown, each L2-normalised" in res.output


@pytest.mark.parametrize(("fmt", "magic"), [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_figure_format_option(tmp_path: Path, fmt: str, magic: bytes) -> None:
    np.save(tmp_path / "emb.npy", np.random.default_rng(1).normal(size=(10, 8)).astype(np.float32))
    for command in ("spectrum", "similarity"):
        args = [command, str(tmp_path / "emb.npy"), "--out", str(tmp_path), "--format", fmt]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert (tmp_path / f"{command}.{fmt}").read_bytes().startswith(magic)
        assert not (tmp_path / f"{command}.png").exists()
    res = runner.invoke(app, ["spectrum", str(tmp_path / "emb.npy"), "--format", "jpg"])
    assert res.exit_code == 2 and "--format" in res.output and len(res.output.splitlines()) == 1


@pytest.mark.parametrize(
    "case", ["nan", "1d", "3d", "object", "empty", "pickle", "one_row", "keys"]
)
def test_spectrum_bad_inputs(tmp_path: Path, case: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "x.npy"
    if case == "nan":
        z = np.ones((10, 4))
        z[[2, 5]] = np.nan
        np.save(path, z)
        expect = "2 of 10 rows"
    elif case == "1d":
        np.save(path, np.ones(5))
        expect = "(N, D)"
    elif case == "3d":
        np.save(path, np.ones((3, 4, 5)))
        expect = "(3, 4, 5)"
    elif case == "object":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        expect = "x.npy"
    elif case == "empty":
        path.write_bytes(b"")
        expect = "x.npy"
    elif case == "one_row":
        np.save(path, np.ones((1, 4)))
        expect = "2"
    elif case == "pickle":

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        path = tmp_path / "x.pt"
        path.write_bytes(pickle.dumps(Evil()))
        expect = "x.pt"
    else:
        path = tmp_path / "x.pt"
        torch.save({"foo.weight": torch.zeros(2)}, path)
        expect = "unrecognised"
    res = runner.invoke(app, ["spectrum", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert expect in _one_error_line(res.output)
    assert not marker.exists()
    assert not (tmp_path / "out" / "spectrum.json").exists()


def test_drop_nonfinite(tmp_path: Path) -> None:
    z = np.random.default_rng(0).normal(size=(12, 4))
    z[3] = np.inf
    np.save(tmp_path / "e.npy", z)
    res = runner.invoke(
        app,
        ["spectrum", str(tmp_path / "e.npy"), "--drop-nonfinite", "--json", "--out", str(tmp_path)],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["results"][0]["n"] == 11


@pytest.mark.slow  # ~10 s: builds the 48-case evaluation phantom
def test_similarity_pixels_and_identical_rows(tmp_path: Path) -> None:
    np.save(tmp_path / "same.npy", np.tile(np.array([[1.0, 2.0, 3.0]]), (6, 1)))
    res = runner.invoke(
        app,
        [
            "similarity",
            str(tmp_path / "same.npy"),
            "random:resnet18",
            "--pixels",
            "--samples",
            "200",
            "--image-size",
            "32",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads(res.output)["results"]
    assert [r["name"] for r in results] == [
        "pixels (64x64)",
        "same",
        "random:resnet18 (BN recalibrated)",
    ]
    assert results[1]["mean_cosine"] == pytest.approx(1.0) and results[1]["n_pairs"] == 15
    assert results[0]["same_volume"] is not None and results[0]["different_volume"] is not None
    assert (tmp_path / "similarity.png").exists()
