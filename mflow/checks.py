"""Argument checks shared by the modules: one message per kind of mistake."""
from __future__ import annotations

import math

import torch

PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


def precision(name: str, value: str) -> torch.dtype:
    """The dtype of a precision option (float64 | float32); else ValueError naming the argument."""
    if value not in PRECISIONS:
        raise ValueError(f"{name} must be one of {tuple(PRECISIONS)}, got {value!r}")
    return PRECISIONS[value]


def integer(name: str, value, lo: int = 1) -> int:
    """value, if it is an int >= lo (bools refused); else ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return value


def positive(name: str, value, allow_zero: bool = False) -> float:
    """float(value) if it is finite and > 0 (>= 0 with allow_zero); else ValueError naming the argument."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v
