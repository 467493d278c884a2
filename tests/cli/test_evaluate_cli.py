"""``collapsekit probe`` / ``collapsekit finetune`` on a tiny phantom: JSON, table, NIfTI, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from collapsekit.cli.app import app
from collapsekit.data import BTCV_LABELS, PhantomConfig, load_split
from collapsekit.models.backbone import build_backbone

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and 2 shared cores are not oversubscribed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TINY = [
    "--phantom-cases",
    "3",
    "--phantom-size",
    "32",
    "--phantom-slices",
    "6",
    "--image-size",
    "32",
    "--device",
    "cpu",
]
# What the CLI evaluates on with TINY: 3 cases, the last one for validation.
TINY_PHANTOM = PhantomConfig(cases=3, size=32, slices=6, seed=10_000, validation=1)


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def torchvision_ckpt(tmp_path_factory) -> Path:
    """A foreign (torchvision-style) ResNet-18 state dict."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("ckpt") / "tv18.pt"
    torch.save(build_backbone("resnet18").state_dict(), path)
    return path


def test_probe_json_and_saved_predictions(tmp_path) -> None:
    out = tmp_path / "pred"
    args = ["probe", "random:resnet18", *TINY, "--epochs", "2", "--output-stride", "8"]
    data = _json(runner.invoke(app, [*args, "--json", "--save-predictions", str(out)]))
    (res,) = data["results"]
    assert res["checkpoint"] == "random:resnet18 (BN recalibrated)"
    assert res["method"] == "linear_probe"
    assert list(res["dice"]) == list(BTCV_LABELS.values())
    assert res["config"]["output_stride"] == 8 and res["info"]["feature_shape"] == [512, 4, 4]
    known = [d for d in res["dice"].values() if d is not None]
    assert res["mean_dice"] == pytest.approx(float(np.mean(known)))
    # The saved label maps reproduce the reported numbers with plain numpy.
    (val,) = load_split("phantom", split="validation", phantom=TINY_PHANTOM)
    img = nib.load(out / f"{val.case_id}_pred.nii.gz")
    np.testing.assert_allclose(img.affine, val.affine)
    pred = np.asarray(img.dataobj)
    for organ_id, organ in BTCV_LABELS.items():
        p, g = pred == organ_id, val.label == organ_id
        reported = res["per_volume"][val.case_id][organ]
        if g.any():
            assert reported == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), abs=1e-6)
        else:
            assert reported is None and organ in res["absent"][val.case_id]


def test_probe_table_compares_checkpoints(torchvision_ckpt) -> None:
    result = runner.invoke(
        app, ["probe", "random:resnet18", str(torchvision_ckpt), *TINY, "--epochs", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "random:resnet18" in text and "tv18" in text
    assert "spleen" in text and "left_adrenal" in text and "mean" in text


def test_probe_defaults_to_runs_latest(tmp_path, torchvision_ckpt, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["probe", *TINY, "--epochs", "1", "--json"])
    assert "runs/latest" in _error_line(result)
    run = tmp_path / "runs" / "20250101-mocov2-resnet18"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(torchvision_ckpt.read_bytes())
    os.symlink(run.name, tmp_path / "runs" / "latest")
    data = _json(runner.invoke(app, ["probe", *TINY, "--epochs", "1", "--json"]))
    assert data["results"][0]["checkpoint"] == run.name


def test_probe_through_the_btcv_layout(tmp_path) -> None:
    from collapsekit.data import write_phantom_dataset

    root = tmp_path / "btcv"
    write_phantom_dataset(root, cases=3, size=32, slices=6, seed=10_000, validation=1)
    args = ["probe", "random:resnet18", "--dataset", "btcv", "--data-dir", str(root)]
    data = _json(runner.invoke(app, [*args, *TINY[6:], "--epochs", "1", "--json"]))
    (res,) = data["results"]
    assert len(res["per_volume"]) == 1 and res["mean_dice"] is not None
    assert "BTCV" in _error_line(
        runner.invoke(app, ["probe", "random:resnet18", "--dataset", "btcv"])
    )


def test_finetune_json() -> None:
    data = _json(
        runner.invoke(app, ["finetune", "random:resnet18", *TINY, "--epochs", "1", "--json"])
    )
    (res,) = data["results"]
    assert res["method"] == "finetune" and res["config"]["decoder"] == "unet"
    assert len(res["history"]) == 1 and list(res["dice"]) == list(BTCV_LABELS.values())


def test_finetune_and_probe_write_the_disk_cache_in_cache_dir(tmp_path: Path) -> None:
    """``--cache-dir`` reaches the loader: one entry per phantom case (3), reused by the probe."""
    from collapsekit.data import clear_cache

    clear_cache()  # as in a fresh process: the memory cache would answer first
    cache = tmp_path / "cache"
    args = [*TINY, "--epochs", "1", "--json", "--cache-dir", str(cache)]
    assert runner.invoke(app, ["finetune", "random:resnet18", *args]).exit_code == 0
    entries = sorted(p.name for p in cache.glob("*.json"))
    assert len(entries) == 3 and len(list(cache.glob("*.image.npy"))) == 3
    clear_cache()
    res = runner.invoke(app, ["probe", "random:resnet18", *args, "--preprocess-workers", "0"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in cache.glob("*.json")) == entries  # hits, no new entry


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["probe", "random:resnet18", "--output-stride", "4"], "output_stride"),
        (["probe", "random:resnet18", "--dataset", "phantm"], "did you mean 'phantom'"),
        (["probe", "random:resnet18", "--label-fraction", "0"], "label_fraction"),
        (["probe", "no/such/file.pt"], "no/such/file.pt"),
        (["finetune", "random:resnet18", "--decoder", "fpn"], "decoder"),
    ],
)
def test_bad_options_exit_2(args: list[str], match: str) -> None:
    assert match in _error_line(runner.invoke(app, [*args, *TINY, "--epochs", "1"]))
