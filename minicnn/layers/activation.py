"""Element-wise activation functions y = f(x) and their derivatives.

Each backward is ``dx = dout * f'(x)``, with f' written from what forward cached. All keep
the input's dtype: constants are Python floats, which NumPy/CuPy do not let upcast float32.
None of them overflows for large |x|: every ``exp`` is taken of a non-positive number.
The exact GELU's Φ(x) = ½ erfc(-x/√2) comes from ``functional/special.py`` (NumPy has no erf).

Speed: these are a few cheap passes over memory, so what counts is how many full-size arrays
are written. Where a formula has several steps, the first step makes a new array and the rest
update it in place (``g *= dout``), never touching the caller's ``x`` or ``dout``. And no
``xp.where`` on the data: on NumPy it is several times slower than arithmetic (it branches per
element, and a sign mask is unpredictable), so selections are written as max/min or exp.

Derivation: docs/derivations/activations.md
Tests: tests/test_activation.py
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module
from ..functional.special import erfc
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
        xp = check_float_input("ReLU", x)
        y = xp.maximum(x, 0.0)
        self.cache = y
        return y

    @property
    def mask(self) -> Any:
        """[x > 0] of the last forward, taken from its output: [y > 0]."""
        return self.cached() > 0

    def backward(self, dout: Any) -> Any:
        # dout * mask, but the comparison writes 0.0/1.0 straight into a float array and the
        # product is taken in place: no bool array, no mixed-type multiply.
        y = self.cached()
        xp = get_array_module(dout)
        d = xp.greater(y, 0, out=xp.empty_like(dout))
        d *= dout
        return d


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
        xp = check_float_input("LeakyReLU", x)
        self.cache = x
        alpha = self.negative_slope
        # max(x, αx) is x for x > 0 and αx for x < 0 when α <= 1 (min(x, αx) when α > 1).
        y = xp.multiply(x, alpha, out=xp.empty_like(x))  # (out=: an array even if x is 0-d)
        (xp.maximum if alpha <= 1.0 else xp.minimum)(x, y, out=y)
        return y

    def backward(self, dout: Any) -> Any:
        x, alpha = self.cached(), self.negative_slope
        xp = get_array_module(dout)
        d = xp.greater(x, 0, out=xp.empty_like(dout))   # f'(x) = α + (1 - α) [x > 0]
        d *= 1.0 - alpha
        d += alpha
        d *= dout
        return d

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope:g}"


def _sigmoid(x: Any) -> Any:
    """σ(x) = 1 / (1 + e^{-x}) without overflow for any x, and accurate in both tails.

    x >= 0: σ = 1 / (1 + e^{-x});   x < 0: σ = e^{x} / (1 + e^{x}).   Both at once:

        σ(x) = exp(min(x, 0)) / (1 + exp(-|x|))

    where neither exponent is positive (no overflow) and, for x << 0, σ ≈ e^{x} keeps its
    relative accuracy (1 - σ(-x) would round to 0).
    """
    xp = get_array_module(x)
    # New arrays via out=, so that they are arrays (not scalars) even when x is 0-d.
    s = xp.minimum(x, 0.0, out=xp.empty_like(x))
    xp.exp(s, out=s)                 # numerator, in place
    d = xp.abs(x, out=xp.empty_like(x))
    xp.negative(d, out=d)
    xp.exp(d, out=d)
    d += 1.0                         # denominator 1 + exp(-|x|)
    s /= d
    return s


class Sigmoid(Layer):
    """Logistic sigmoid, squashing to (0, 1).

    Forward:  y = σ(x) = 1 / (1 + e^{-x})      (computed stably for any x)
    Backward: dx = dout * y (1 - y)            since σ' = σ (1 - σ)

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        check_float_input("Sigmoid", x)
        y = _sigmoid(x)
        self.cache = y
        return y

    def backward(self, dout: Any) -> Any:
        y = self.cached()
        d = 1.0 - y                      # σ' = σ (1 - σ)
        d *= y
        d *= dout
        return d


class Tanh(Layer):
    """Hyperbolic tangent, squashing to (-1, 1).

    Forward:  y = tanh(x) = (e^x - e^{-x}) / (e^x + e^{-x})
    Backward: dx = dout * (1 - y²)

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        xp = check_float_input("Tanh", x)
        y = xp.tanh(x)
        self.cache = y
        return y

    def backward(self, dout: Any) -> Any:
        y = self.cached()
        d = y * y
        d *= -1.0
        d += 1.0                         # 1 - y², in place
        d *= dout
        return d


class SiLU(Layer):
    """Sigmoid-weighted linear unit (swish): y = x σ(x).

    Forward:  y = x σ(x)
    Backward: dx = dout * σ(x) (1 + x (1 - σ(x)))
              (product rule: σ + x σ (1 - σ))

    Shapes: any, output same as input.
    """

    def forward(self, x: Any) -> Any:
        check_float_input("SiLU", x)
        s = _sigmoid(x)
        self.cache = (x, s)
        return x * s

    def backward(self, dout: Any) -> Any:
        x, s = self.cached()
        d = 1.0 - s                      # then 1 + x (1 - σ), σ (...), dout σ (...)
        d *= x
        d += 1.0
        d *= s
        d *= dout
        return d


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_A = 0.044715


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
    approximation, or CuPy's kernel on the GPU), so the left tail Φ(x) → 0 keeps its
    relative accuracy. On the CPU the exact form costs more than the tanh form (a rational
    approximation in three ranges against one ``tanh``); on the GPU both are a few fused
    kernels.

    Shapes: any, output same as input.
    """

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x: Any) -> Any:
        check_float_input("GELU", x)
        if self.approximate == "tanh":
            u = _SQRT_2_OVER_PI * (x + _GELU_TANH_A * (x * x * x))
            s = _sigmoid(2.0 * u)                          # = ½ (1 + tanh u)
            self.cache = (x, s)
            return x * s
        Phi = 0.5 * erfc(x * -_SQRT_HALF)
        self.cache = (x, Phi)
        return x * Phi

    def backward(self, dout: Any) -> Any:
        xp = get_array_module(dout)
        if self.approximate == "tanh":
            x, s = self.cached()
            du_dx = _SQRT_2_OVER_PI * (1.0 + (3.0 * _GELU_TANH_A) * (x * x))
            return dout * (s + 2.0 * x * s * (1.0 - s) * du_dx)
        x, Phi = self.cached()
        xc = xp.clip(x, -40.0, 40.0)  # φ(±40) = 0 in float64; clipping keeps x² finite
        phi = _INV_SQRT_2PI * xp.exp(-0.5 * (xc * xc))
        return dout * (Phi + x * phi)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
