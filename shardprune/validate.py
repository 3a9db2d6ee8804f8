"""Argument checks shared by every module: one message style, one place.

Each check returns the value normalised (a Python ``int`` or ``float``) or raises
``error`` (a :class:`~shardprune.errors.ConfigError` unless the caller passes another
subclass of ``ValueError``) whose message names the argument, the value, the allowed
range and, where given, the fix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shardprune.errors import ConfigError

__all__ = ["check_bool", "check_float", "check_int", "check_choice"]


def _range(low: float | None, high: float | None, closed_high: bool = True) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}{']' if closed_high else ')'}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}" if closed_high else f"< {high}"
    return "any value"


def check_int(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    *,
    fix: str = "",
    error: type[ValueError] = ConfigError,
) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (a bool is refused: ``True`` is not a count)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok and ((low is not None and int(value) < low) or (high is not None and int(value) > high)):
        ok = False
    if not ok:
        hint = f"; {fix}" if fix else ""
        raise error(f"{name}={value!r} must be an int {_range(low, high)}{hint}")
    return int(value)


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    fix: str = "",
    error: type[ValueError] = ConfigError,
) -> float:
    """``value`` as a finite ``float`` in the range (ends closed unless ``*_open``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)
        ok = math.isfinite(v)
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        if low is not None and high is not None:
            span = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        elif low is not None:
            span = f"{'>' if low_open else '>='} {low}"
        elif high is not None:
            span = f"{'<' if high_open else '<='} {high}"
        else:
            span = "(any finite value)"
        hint = f"; {fix}" if fix else ""
        raise error(f"{name}={value!r} must be a finite number {span}{hint}")
    return float(value)


def check_bool(name: str, value: Any, *, error: type[ValueError] = ConfigError) -> bool:
    """``value`` as a ``bool`` (numpy bools accepted; ints are not)."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name}={value!r} must be True or False")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...], *, error: type[ValueError] = ConfigError) -> str:
    """``value`` as one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value
