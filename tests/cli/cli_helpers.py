"""Assertions shared by the CLI tests."""

from __future__ import annotations

from typing import Any


def error_line(result: Any) -> str:
    """The one ``error:`` line of a CLI result that failed with exit code 2 and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, result.output
    return lines[0]
