"""Argument checks shared by the normalization layers (input checks are in ``base``)."""

from __future__ import annotations

from typing import Any


def check_positive_int(layer: str, name: str, value: Any) -> int:
    """``int(value)``; ValueError naming ``layer`` unless it is an integer >= 1."""
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_eps(layer: str, eps: Any) -> float:
    """``float(eps)``; ValueError naming ``layer`` unless it is > 0."""
    if not float(eps) > 0:
        raise ValueError(f"{layer}: eps must be > 0, got {eps!r}")
    return float(eps)
