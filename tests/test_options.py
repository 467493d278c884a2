"""look_up_option: canonical spelling, Enum members, and a 'did you mean' for misspellings."""

from __future__ import annotations

from enum import Enum

import pytest

from collapsekit.errors import ConfigError
from collapsekit.options import look_up_option


class Color(Enum):
    RED = "red"
    GREEN = "green"


def test_returns_the_choice_as_spelled_in_choices() -> None:
    assert look_up_option("Local+ZCA", ("mocov2", "local+zca")) == "local+zca"
    assert look_up_option("  mocov2 ", ["mocov2"]) == "mocov2"


def test_enum_members_and_enum_classes() -> None:
    assert look_up_option(Color.RED, Color, "color") == "red"
    assert look_up_option("GREEN", Color, "color") == "green"
    assert look_up_option(Color.GREEN, ("red", "green")) == "green"


def test_misspelling_names_the_option_lists_choices_and_suggests() -> None:
    with pytest.raises(ConfigError) as e:
        look_up_option("btvc", ("phantom", "btcv"), "dataset")
    msg = str(e.value)
    assert "unknown dataset 'btvc'" in msg
    assert "phantom, btcv" in msg
    assert "did you mean 'btcv'?" in msg


def test_no_suggestion_when_nothing_is_close() -> None:
    with pytest.raises(ConfigError) as e:
        look_up_option("zzzzzz", ("phantom", "btcv"), "dataset")
    assert "did you mean" not in str(e.value)
