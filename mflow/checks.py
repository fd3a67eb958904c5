"""Argument checks shared by the modules: one message per kind of mistake."""
from __future__ import annotations


def integer(name: str, value, lo: int = 1) -> int:
    """value, if it is an int >= lo (bools refused); else ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value
