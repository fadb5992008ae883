"""Reshaping layers: no arithmetic, only a change of view.

Derivation: docs/derivations/linear.md
Tests: tests/test_container.py
"""

from __future__ import annotations

import math
from typing import Any

from .base import Layer

__all__ = ["Flatten"]


class Flatten(Layer):
    """Flatten everything but the batch axis: (N, d1, d2, ...) -> (N, d1·d2·...).

    Forward:  y = x.reshape(N, -1)
    Backward: dx = dout.reshape(x.shape)   (reshaping moves no value, so the gradient is
              the upstream gradient put back into the input's shape)

    Works for non-contiguous inputs too (the reshape then copies).

    Shapes: x (N, ...) with at least 2 dimensions; y (N, prod(x.shape[1:])).
    """

    def forward(self, x: Any) -> Any:
        if not hasattr(x, "shape") or not hasattr(x, "reshape"):
            raise TypeError(f"Flatten: expected an array, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"Flatten: expected input of shape (N, d1, ...) with at least 2 "
                             f"dimensions, got shape {tuple(x.shape)}")
        self.cache = tuple(x.shape)  # the input shape, all backward needs
        # An explicit size rather than -1: -1 cannot be inferred when N = 0.
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dout: Any) -> Any:
        return dout.reshape(self.cached())
