"""Element-wise activation functions y = f(x) and their derivatives.

Each backward is ``dx = dout * f'(x)``, with f' written from what forward cached. All keep
the input's dtype and its memory layout (a channels-last input gives a channels-last output).
None of them overflows for large |x|: every ``exp`` is taken of a non-positive number.

The arithmetic is in ``functional/activation.py``, one named function per formula (``relu``,
``relu_backward``, ...): a few cheap passes over memory on NumPy (each step after the first in
place), one fused kernel on CuPy. The exact GELU's Φ(x) = ½ erfc(-x/√2) is
``functional/special.py``'s ``normal_cdf`` (NumPy has no erf).

Derivation: docs/derivations/activations.md
Tests: tests/test_activation.py, tests/test_kernels_elementwise.py
"""

from __future__ import annotations

from typing import Any

from ..functional.activation import (
    gelu,
    gelu_backward,
    leaky_relu,
    leaky_relu_backward,
    relu,
    relu_backward,
    sigmoid,
    sigmoid_backward,
    silu,
    silu_backward,
    tanh,
    tanh_backward,
)
from .base import Layer, check_float_input

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "GELU"]


class ReLU(Layer):
    """Rectified linear unit.

    Forward:  y = max(x, 0)
    Backward: dx = dout * [x > 0] = dout * [y > 0]   (the subgradient 0 is used at x = 0)

    The mask is taken from the output in backward: forward (all that evaluation runs) is then
    a single pass, and nothing but a reference to y is kept.

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        check_float_input("ReLU", x)
        y = relu(x)
        self.cache = y
        return y

    @property
    def mask(self) -> Any:
        """[x > 0] of the last forward, taken from its output: [y > 0]."""
        return self.cached() > 0

    def backward(self, dout: Any) -> Any:
        return relu_backward(self.cached(), dout)


class LeakyReLU(Layer):
    """Leaky ReLU: a small slope α instead of 0 for negative inputs (no "dead" units).

    Forward:  y = x        if x > 0
              y = α x      otherwise
    Backward: dx = dout * (1 if x > 0 else α)

    Parameters
    ----------
    negative_slope : float
        α, the slope for x <= 0 (PyTorch's default 0.01).

    Shapes: any, output same as input.
    """

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: Any) -> Any:
        check_float_input("LeakyReLU", x)
        self.cache = x
        return leaky_relu(x, self.negative_slope)

    def backward(self, dout: Any) -> Any:
        return leaky_relu_backward(self.cached(), dout, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope:g}"


class Sigmoid(Layer):
    """Logistic sigmoid, squashing to (0, 1).

    Forward:  y = σ(x) = 1 / (1 + e^{-x})      (computed stably for any x:
                                                functional.activation.sigmoid)
    Backward: dx = dout * y (1 - y)            since σ' = σ (1 - σ)

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        check_float_input("Sigmoid", x)
        y = sigmoid(x)
        self.cache = y
        return y

    def backward(self, dout: Any) -> Any:
        return sigmoid_backward(self.cached(), dout)       # σ' = σ (1 - σ)


class Tanh(Layer):
    """Hyperbolic tangent, squashing to (-1, 1).

    Forward:  y = tanh(x) = (e^x - e^{-x}) / (e^x + e^{-x})
    Backward: dx = dout * (1 - y²)

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        check_float_input("Tanh", x)
        y = tanh(x)
        self.cache = y
        return y

    def backward(self, dout: Any) -> Any:
        return tanh_backward(self.cached(), dout)


class SiLU(Layer):
    """Sigmoid-weighted linear unit (swish): y = x σ(x).

    Forward:  y = x σ(x)
    Backward: dx = dout * σ(x) (1 + x (1 - σ(x)))
              (product rule: σ + x σ (1 - σ))

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        check_float_input("SiLU", x)
        y, s = silu(x)                   # s = σ(x) (None where backward recomputes it)
        self.cache = (x, s)
        return y

    def backward(self, dout: Any) -> Any:
        x, s = self.cached()
        return silu_backward(x, s, dout)


class GELU(Layer):
    """Gaussian error linear unit: y = x Φ(x), Φ the standard normal CDF.

    Exact (``approximate="none"``, the default, as in PyTorch):

        Forward:  y = x Φ(x),   Φ(x) = ½ erfc(-x / √2) = ½ (1 + erf(x / √2))
        Backward: dx = dout * (Φ(x) + x φ(x)),   φ(x) = exp(-x²/2) / √(2π)

    Tanh approximation (``approximate="tanh"``, the original BERT/GPT-2 formula):

        Forward:  y = ½ x (1 + t),   t = tanh(u),   u = √(2/π) (x + 0.044715 x³)
        Backward: dx = dout * (½ (1 + t) + ½ x (1 - t²) √(2/π) (1 + 3 · 0.044715 x²))

    computed through s = σ(2u), since ½ (1 + tanh u) = σ(2u) and ½ (1 - t²) = 2 s (1 - s):
    y = x s, dx = dout * (s + 2 x s (1 - s) du/dx). For x << 0, 1 + tanh(u) is the difference
    of two numbers near 1 and loses its digits (all of them in float32 below x ≈ -3.9);
    σ(2u) keeps its relative accuracy.

    Φ is computed with ``erfc`` (``functional/special.py``: Cody's float64-accurate rational
    approximation, or CUDA's ``erfc`` in one fused kernel on the GPU), so the left tail
    Φ(x) → 0 keeps its relative accuracy. On the CPU the exact form costs more than the tanh
    form (a rational approximation in three ranges against one ``tanh``); on the GPU both are
    one kernel launch each way.

    Shapes: any, output same as input.
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Any) -> Any:
        check_float_input("GELU", x)
        y, saved = gelu(x, self.approximate)   # saved: Φ(x) or s = σ(2u) (or None)
        self.cache = (x, saved)
        return y

    def backward(self, dout: Any) -> Any:
        x, saved = self.cached()
        return gelu_backward(x, saved, dout, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
