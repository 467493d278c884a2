"""Error classes: each is a CollapsekitError and the built-in a Python user would catch."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from collapsekit.data.layouts import discover
from collapsekit.diagnostics import effective_rank
from collapsekit.errors import (
    CheckpointError,
    CollapsekitError,
    ConfigError,
    DataError,
    InputError,
    LayoutError,
    OutputError,
    TrainingError,
)
from collapsekit.options import look_up_option
from collapsekit.outputs import os_error_in, writing


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (InputError, ValueError),
        (ConfigError, ValueError),
        (DataError, ValueError),
        (LayoutError, ValueError),
        (CheckpointError, ValueError),
        (OutputError, OSError),
    ],
)
def test_error_is_also_the_builtin(cls, builtin):
    assert issubclass(cls, CollapsekitError) and issubclass(cls, builtin)
    with pytest.raises(builtin, match="^bad thing$"):
        raise cls("bad thing")


def test_training_error_is_not_a_value_error():
    assert not issubclass(TrainingError, ValueError | OSError)


def test_output_error_message_is_its_str_and_has_no_errno():
    e = OutputError("cannot write /x: full")
    assert str(e) == "cannot write /x: full" and e.errno is None


def test_library_errors_are_caught_by_the_builtin(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'btcv'"):
        look_up_option("btvc", ("btcv", "phantom"), "dataset")
    with pytest.raises(ValueError, match="expected"):
        effective_rank(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError):  # a LayoutError
        discover("btcv", tmp_path)


def test_os_error_in_leaves_an_output_error_alone():
    """An OutputError is an OSError but already one actionable line: never re-wrapped."""
    assert os_error_in(OutputError("disk full")) is None
    plain = OSError(errno.ENOSPC, "No space left on device")
    assert os_error_in(plain) is plain
    with pytest.raises(OutputError, match="^already said$"), writing("/x", "nothing kept"):
        raise OutputError("already said")
    with pytest.raises(OutputError, match="^cannot write /x: No space left on device; kept$"):
        with writing("/x", "kept"):
            raise plain
