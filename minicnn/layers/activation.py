"""Element-wise activation functions y = f(x) and their derivatives.

Each backward is ``dx = dout * f'(x)``, with f' written from what forward cached. All keep
the input's dtype: constants are Python floats, which NumPy/CuPy do not let upcast float32.
"""

from __future__ import annotations

from typing import Any

from .base import Layer, check_float_input

__all__ = ["ReLU"]


class ReLU(Layer):
    """Rectified linear unit.

    Forward:  y = max(x, 0)
    Backward: dx = dout * [x > 0]    (the subgradient 0 is used at x = 0)

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        xp = check_float_input("ReLU", x)
        self.mask = x > 0
        return xp.maximum(x, 0)

    def backward(self, dout: Any) -> Any:
        return dout * self.mask
