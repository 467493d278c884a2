"""Validated string options: accept an Enum or its value; misspellings get a "did you mean"."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import Enum
from typing import TypeVar

from collapsekit.errors import ConfigError

__all__ = ["look_up_option"]

E = TypeVar("E", bound=Enum)


def look_up_option(
    value: str | Enum, choices: Iterable[str] | type[Enum], name: str = "option"
) -> str:
    """Return the canonical string for ``value`` among ``choices``.

    Args:
        value: a string (case-insensitive) or an Enum member.
        choices: allowed strings, or an Enum class whose values are the allowed strings.
        name: what the option is called, used in the error message.

    Returns:
        The matching choice, exactly as spelled in ``choices``.

    Raises:
        ConfigError: ``value`` is not one of ``choices``; the message suggests the closest one.
    """
    if isinstance(choices, type) and issubclass(choices, Enum):
        allowed = [str(c.value) for c in choices]
    else:
        allowed = [str(c) for c in choices]
    if isinstance(value, Enum):
        value = str(value.value)
    key = str(value).strip()
    for c in allowed:
        if c.lower() == key.lower():
            return c
    close = difflib.get_close_matches(key.lower(), [c.lower() for c in allowed], n=1, cutoff=0.5)
    hint = ""
    if close:
        hint = f"; did you mean '{allowed[[c.lower() for c in allowed].index(close[0])]}'?"
    raise ConfigError(f"unknown {name} '{value}' (choose from {', '.join(allowed)}){hint}")
