"""Device check (run by gpu_run3.sh where torchvision is installed): a ``--format torchvision``
export of a real run (block ZCA folded) loads with ``strict=True`` into the stock
``torchvision.models.resnet18()`` with ``fc = nn.Identity()``, and a grayscale slice copied to RGB
gives the run's features. The CPU suite checks the key names and shapes against a written-out list
(torchvision does not import against the CPU torch wheel)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from collapsekit.runs.export import export_backbone
from collapsekit.runs.models import load_model
from collapsekit.train.config import config_from_dict
from collapsekit.train.loop import train


def main() -> int:
    tmp = Path(tempfile.mkdtemp())
    cfg = config_from_dict(
        {},
        steps=3,
        batch_size=8,
        image_size=64,
        phantom_cases=4,
        phantom_size=64,
        phantom_slices=8,
        monitor_samples=16,
        num_workers=0,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    train(cfg, tmp / "run")
    res = export_backbone(tmp / "run", tmp / "tv.pt", fmt="torchvision")
    try:
        import torchvision

        net, version = torchvision.models.resnet18(), torchvision.__version__
        net.fc = nn.Identity()
    except (ImportError, RuntimeError, OSError):  # the CPU wheel here: a dry run on MONAI's layout
        from monai.networks.nets import resnet18

        monai = export_backbone(tmp / "run", tmp / "monai.pt").monai_kwargs
        net, version = resnet18(**{**monai, "n_input_channels": 3}), None
    net.load_state_dict(torch.load(tmp / "tv.pt", weights_only=True), strict=True)
    net.eval()
    run = load_model(tmp / "run")
    x = torch.rand(4, 1, 64, 64)
    with torch.no_grad():
        ref = run.backbone(x)
        got = net(x.expand(-1, 3, -1, -1))
    err = float((got - ref).abs().max())
    ok = err <= 1e-4 * float(ref.abs().max())
    print(
        json.dumps(
            {
                "torchvision": version,
                "zca_folded": res.zca_folded,
                "max_abs_diff": err,
                "max_abs_feature": float(ref.abs().max()),
                "ok": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
