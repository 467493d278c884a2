"""Nothing on the core import path needs the optional extras (Lightning, TensorBoard)."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK = """
import sys
BLOCKED = ("lightning", "pytorch_lightning", "lightning_fabric", "tensorboard", "tensorboardX")
for name in BLOCKED:
    sys.modules[name] = None  # `import name` now raises ImportError, as when not installed
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=180
    )


@pytest.mark.slow  # ~3-6 s: a fresh interpreter imports torch and the CLI
def test_core_monitor_and_cli_import_without_the_extras() -> None:
    p = _run(
        """
import collapsekit
import collapsekit.monitoring
from collapsekit.monitoring import CollapseMonitor, CollapseWarning
import collapsekit.train, collapsekit.train.loop, collapsekit.experiments.ablation
from collapsekit.cli.app import app
from typer.testing import CliRunner
result = CliRunner().invoke(app, ["train", "--help"])
assert result.exit_code == 0 and "--tensorboard" in result.output, result.output
import torch
res = CollapseMonitor(torch.nn.Identity(), torch.randn(20, 4)).measure()
assert res["embeddings"].spectrum.d == 4
loaded = [m for m, mod in sys.modules.items() if m.split(".")[0] in BLOCKED and mod is not None]
assert not loaded, loaded
print("ok")
"""
    )
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_lightning_callback_without_lightning_says_how_to_install() -> None:
    p = _run(
        """
try:
    import collapsekit.monitoring.lightning
except ImportError as e:
    print(e)
"""
    )
    assert p.stdout.strip() == (
        "collapsekit.monitoring.lightning needs Lightning: pip install 'collapsekit[lightning]'"
    ), p.stderr
