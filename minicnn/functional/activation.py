"""The activation functions and their derivatives, element by element: the arithmetic of
``layers/activation.py``.

Each layer's forward calls ``f(x)`` and its backward ``f_backward(..., dout)``, which returns
dx = dout * f'(x), with f' written from what the forward cached (y for ReLU, Sigmoid and Tanh;
x for the others). Every function reads in two parts:

- the plain array code, which is the formula and runs on NumPy (and on CuPy for a dtype the
  kernels are not compiled for, float16). A formula of several steps makes one new array in
  its input's memory layout (``out=xp.empty_like(...)``) and updates it in place, so a
  channels-last input gives a channels-last output and the caller's x and dout are never
  written. No ``xp.where`` on the data: NumPy branches per element there, several times
  slower than arithmetic, so selections are written as max/min or exp. No ``exp`` of a
  positive number: nothing overflows for large |x|.
- one line before it that sends a float32/float64 CuPy array to its fused kernel
  (``if uses_kernels(x): return kernels...``, ``minicnn/kernels/elementwise.py``). On a GPU each
  ufunc is one kernel launch and writes its output C-ordered, so SiLU's backward as five
  in-place updates would be five launches and would lose a channels-last layout; the kernel
  is one launch in the input's layout. ReLU's and Tanh's forward are one ufunc already and
  have no kernel. On CuPy, SiLU and GELU recompute σ(x) or Φ(x) in backward (one launch
  either way, and the GPU reads less than it would store): their forward returns None for it.

The exact GELU's Φ is ``special.normal_cdf`` (NumPy has no erf).

Derivation: docs/derivations/activations.md
Tests: tests/test_activation.py, tests/test_kernels_elementwise.py
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import get_array_module
from ..kernels import elementwise as kernels
from ..kernels.elementwise import uses_kernels
from .special import normal_cdf

__all__ = ["relu", "relu_backward", "leaky_relu", "leaky_relu_backward", "sigmoid",
           "sigmoid_backward", "tanh", "tanh_backward", "silu", "silu_backward", "gelu",
           "gelu_backward"]


# -- ReLU -------------------------------------------------------------------------------------

def relu(x: Any) -> Any:
    """ReLU: y = max(x, 0).

    Parameters
    ----------
    x : array of any shape

    Returns
    -------
    y : array of x's shape, dtype and memory layout

    One ufunc, on either backend (on CuPy it is one launch already: no kernel of its own).
    """
    xp = get_array_module(x)
    return xp.maximum(x, 0.0, out=xp.empty_like(x))


def relu_backward(y: Any, dout: Any) -> Any:
    """ReLU's backward: dx = dout * [x > 0] = dout * [y > 0] (the subgradient 0 at x = 0).

    Parameters
    ----------
    y : array of any shape
        ReLU's output (the mask is read from it, so the forward keeps nothing else).
    dout : array of y's shape
        dL/dy.

    Returns
    -------
    dx : array of dout's shape, dtype and memory layout
    """
    if uses_kernels(dout):
        return kernels.relu_backward(y, dout)
    xp = get_array_module(dout)
    # The comparison writes 0.0/1.0 straight into a float array, and the product is taken in
    # place: no bool array, no mixed-type multiply.
    dx = xp.greater(y, 0, out=xp.empty_like(dout))
    dx *= dout
    return dx


# -- LeakyReLU --------------------------------------------------------------------------------

def leaky_relu(x: Any, alpha: float) -> Any:
    """Leaky ReLU: y = x for x > 0, y = α x otherwise.

    Parameters
    ----------
    x : array of any shape
    alpha : float
        α, the slope for x <= 0.

    Returns
    -------
    y : array of x's shape, dtype and memory layout
    """
    if uses_kernels(x):
        return kernels.leaky_relu(x, alpha)
    xp = get_array_module(x)
    # For α <= 1, max(x, αx) is x where x > 0 and αx where x < 0 (for α > 1: min(x, αx)).
    y = xp.multiply(x, alpha, out=xp.empty_like(x))
    (xp.maximum if alpha <= 1.0 else xp.minimum)(x, y, out=y)
    return y


def leaky_relu_backward(x: Any, dout: Any, alpha: float) -> Any:
    """Leaky ReLU's backward: dx = dout * f'(x), f'(x) = 1 for x > 0, α otherwise.

    Parameters
    ----------
    x : array of any shape
        The forward's input.
    dout : array of x's shape
        dL/dy.
    alpha : float
        α, the slope for x <= 0.

    Returns
    -------
    dx : array of dout's shape, dtype and memory layout
    """
    if uses_kernels(dout):
        return kernels.leaky_relu_backward(x, dout, alpha)
    xp = get_array_module(dout)
    dx = xp.greater(x, 0, out=xp.empty_like(dout))   # [x > 0], then f' = α + (1 - α) [x > 0]
    dx *= 1.0 - alpha
    dx += alpha
    dx *= dout
    return dx


# -- Sigmoid ----------------------------------------------------------------------------------

def sigmoid(x: Any) -> Any:
    """The logistic sigmoid σ(x) = 1 / (1 + e^{-x}), the textbook formula as it stands.

    It needs no guard: where x is very negative (below about -88 in float32, -709 in
    float64), e^{-x} overflows to inf and 1 / (1 + inf) = 0, the right limit (σ is smaller
    than the smallest normal float there), so the overflow warning is silenced. Elsewhere
    the left tail keeps its relative accuracy: σ(-20) = 1 / (1 + e^{20}) ≈ 2.06e-9 to an ulp,
    where 1 - σ(20) would round to 0. One exp and four passes over the array (a form with
    exp(min(x, 0)) / (1 + exp(-|x|)) avoids the overflow at the price of a second exp and
    seven passes: twice the time, docs/benchmarks.md).

    Parameters
    ----------
    x : array of any shape

    Returns
    -------
    y : array of x's shape, dtype and memory layout, in [0, 1]
    """
    if uses_kernels(x):
        return kernels.sigmoid(x)
    xp = get_array_module(x)
    # A new array through out=, so that it is an array (not a scalar) even when x is 0-d.
    y = xp.negative(x, out=xp.empty_like(x))
    with np.errstate(over="ignore"):      # e^{-x} = inf for x << 0: σ = 1 / inf = 0
        xp.exp(y, out=y)
    y += 1.0
    xp.reciprocal(y, out=y)               # σ = 1 / (1 + e^{-x})
    return y


def sigmoid_backward(y: Any, dout: Any) -> Any:
    """Sigmoid's backward: dx = dout * y (1 - y), since σ' = σ (1 - σ).

    Parameters
    ----------
    y : array of any shape
        The forward's output σ(x).
    dout : array of y's shape
        dL/dy.

    Returns
    -------
    dx : array of dout's shape, dtype and memory layout
    """
    if uses_kernels(dout):
        return kernels.sigmoid_backward(y, dout)
    xp = get_array_module(dout)
    dx = xp.subtract(1.0, y, out=xp.empty_like(dout))   # 1 - y, then y (1 - y), then dout ...
    dx *= y
    dx *= dout
    return dx


# -- Tanh -------------------------------------------------------------------------------------

def tanh(x: Any) -> Any:
    """y = tanh(x) = (e^x - e^{-x}) / (e^x + e^{-x}).

    Parameters
    ----------
    x : array of any shape

    Returns
    -------
    y : array of x's shape, dtype and memory layout, in [-1, 1]

    One ufunc, on either backend (on CuPy it is one launch already: no kernel of its own).
    """
    xp = get_array_module(x)
    return xp.tanh(x, out=xp.empty_like(x))


def tanh_backward(y: Any, dout: Any) -> Any:
    """Tanh's backward: dx = dout * (1 - y²), since tanh' = 1 - tanh².

    Parameters
    ----------
    y : array of any shape
        The forward's output tanh(x).
    dout : array of y's shape
        dL/dy.

    Returns
    -------
    dx : array of dout's shape, dtype and memory layout
    """
    if uses_kernels(dout):
        return kernels.tanh_backward(y, dout)
    xp = get_array_module(dout)
    dx = xp.multiply(y, y, out=xp.empty_like(dout))
    dx *= -1.0
    dx += 1.0                             # 1 - y², in place
    dx *= dout
    return dx


# -- SiLU -------------------------------------------------------------------------------------

def silu(x: Any) -> tuple[Any, Any]:
    """SiLU (swish): y = x σ(x).

    Parameters
    ----------
    x : array of any shape

    Returns
    -------
    y : array of x's shape, dtype and memory layout
    s : array of x's shape, or None
        σ(x), for the backward; None from the kernel (its backward recomputes σ).
    """
    if uses_kernels(x):
        return kernels.silu(x), None
    xp = get_array_module(x)
    s = sigmoid(x)
    return xp.multiply(x, s, out=xp.empty_like(x)), s


def silu_backward(x: Any, s: Any, dout: Any) -> Any:
    """SiLU's backward: dx = dout * σ(x) (1 + x (1 - σ(x))).

    The product rule on x σ(x): σ + x σ' = σ + x σ (1 - σ) = σ (1 + x (1 - σ)).

    Parameters
    ----------
    x : array of any shape
        The forward's input.
    s : array of x's shape, or None
        σ(x), as ``silu`` returned it (None on the kernel path).
    dout : array of x's shape
        dL/dy.

    Returns
    -------
    dx : array of dout's shape, dtype and memory layout
    """
    if uses_kernels(dout):
        return kernels.silu_backward(x, dout)
    xp = get_array_module(dout)
    dx = xp.subtract(1.0, s, out=xp.empty_like(dout))   # 1 - σ
    dx *= x
    dx += 1.0                             # 1 + x (1 - σ)
    dx *= s
    dx *= dout
    return dx


# -- GELU -------------------------------------------------------------------------------------

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_A = 0.044715


def gelu(x: Any, approximate: str = "none") -> tuple[Any, Any]:
    """GELU: y = x Φ(x), Φ the standard normal CDF, exact or in its tanh approximation.

    Exact (``approximate="none"``):  y = x Φ(x),   Φ(x) = ½ erfc(-x/√2)
    Tanh (``approximate="tanh"``):   y = ½ x (1 + tanh u) = x σ(2u),
                                     u = √(2/π) (x + 0.044715 x³)

    σ(2u) equals ½ (1 + tanh u) and keeps its relative accuracy for x << 0, where
    1 + tanh u cancels (``layers.GELU`` and docs/derivations/activations.md derive both).

    Parameters
    ----------
    x : array of any shape
    approximate : {"none", "tanh"}

    Returns
    -------
    y : array of x's shape and dtype
    saved : array of x's shape, or None
        Φ(x) (exact) or s = σ(2u) (tanh), for the backward; None from the kernel (its
        backward recomputes it).
    """
    if uses_kernels(x):
        return kernels.gelu(x, approximate), None
    if approximate == "tanh":
        u = _SQRT_2_OVER_PI * (x + _GELU_TANH_A * (x * x * x))
        s = sigmoid(2.0 * u)
        return x * s, s
    Phi = normal_cdf(x)
    return x * Phi, Phi


def gelu_backward(x: Any, saved: Any, dout: Any, approximate: str = "none") -> Any:
    """GELU's backward: dx = dout * f'(x).

    Exact:  f'(x) = Φ(x) + x φ(x),   φ(x) = exp(-x²/2) / √(2π)   (the product rule)
    Tanh:   f'(x) = s + 2 x s (1 - s) du/dx,   s = σ(2u),   du/dx = √(2/π) (1 + 3 · 0.044715 x²)

    Parameters
    ----------
    x : array of any shape
        The forward's input.
    saved : array of x's shape, or None
        Φ(x) or s, as ``gelu`` returned it (None on the kernel path).
    dout : array of x's shape
        dL/dy.
    approximate : {"none", "tanh"}
        As in the forward.

    Returns
    -------
    dx : array of dout's shape and dtype
    """
    if uses_kernels(dout):
        return kernels.gelu_backward(x, dout, approximate)
    xp = get_array_module(dout)
    if approximate == "tanh":
        s = saved
        du_dx = _SQRT_2_OVER_PI * (1.0 + (3.0 * _GELU_TANH_A) * (x * x))
        return dout * (s + 2.0 * x * s * (1.0 - s) * du_dx)
    Phi = saved
    xc = xp.clip(x, -40.0, 40.0)          # φ(±40) = 0 in float64; clipping keeps x² finite
    phi = _INV_SQRT_2PI * xp.exp(-0.5 * (xc * xc))
    return dout * (Phi + x * phi)
