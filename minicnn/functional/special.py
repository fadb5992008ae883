"""Element-wise functions: the special functions NumPy lacks (``erf``, ``erfc``, the logistic
``sigmoid``), and the activations' and dropout's passes that ``layers/activation.py`` and
``layers/dropout.py`` call.

Activations. Each ``f(x)`` and ``f_backward(..., dout)`` is the layer's formula in plain array
code on NumPy (a few passes, each after the first in place) and one fused kernel on CuPy
(``kernels/elementwise.py``), where each ufunc would be one launch and would write its
output C-ordered in the logical shape, losing a channels-last layout. Every output keeps its
input's memory layout on both backends. On CuPy, SiLU and GELU recompute σ(x) or Φ(x) in
backward (one launch either way; the GPU reads less than it would store): their forward
returns None for it.

Error function.

    erf(x)  = (2/√π) ∫_0^x e^{-t²} dt
    erfc(x) = 1 - erf(x) = (2/√π) ∫_x^∞ e^{-t²} dt

The exact GELU needs Φ(x) = ½ erfc(-x/√2) (``minicnn.layers.GELU``). NumPy has no erf and
SciPy is not a dependency, so this module evaluates W. J. Cody's rational Chebyshev
approximations ("Rational Chebyshev approximations for the error function", Math. Comp. 23,
1969; the CALERF routine of SPECFUN), one per range of |x|:

    |x| <= 0.5        erf(x)  = x P(x²) / Q(x²)
    0.5 < |x| <= 4    erfc(x) = exp(-x²) P(|x|) / Q(|x|)
    |x| > 4           erfc(x) = exp(-x²) / |x| (1/√π - z P(z) / Q(z)),   z = 1/x²

and erfc(-x) = 2 - erfc(x). Cody's coefficients are good to about 1e-16. Measured against
``scipy.special`` (tests/test_activation.py): in float64 erf has a relative error below 1e-15
and erfc below 1e-13 over [-26, 26], also in the right tail where 1 - erf(x) would cancel to 0
(this is what lets the float64 gradient check, tolerance 1e-6, see the true derivative of
GELU's forward pass). The functions keep the input's dtype: in float32 the error is a few
units in the last place (relative below 1e-6 while erfc(x) is a normal float32 number).

On CuPy, ``erfc`` calls the library's own fused kernel ``cupyx.scipy.special.erfc`` instead
(``backend.get_special``).

Tests: tests/test_activation.py, tests/test_kernels_elementwise.py
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import get_array_module, get_special
from ..kernels import elementwise as kernels
from .random_bits import random_bits, random_seed

__all__ = ["erf", "erfc", "sigmoid", "relu", "relu_backward", "leaky_relu",
           "leaky_relu_backward", "sigmoid_backward", "tanh", "tanh_backward", "silu",
           "silu_backward", "gelu", "gelu_backward", "dropout"]

# Cody's coefficients: the numerator (P) and denominator (Q) of each range's rational function.
_SQRT_PI_INV = 1.0 / math.sqrt(math.pi)
# |x| <= 0.5:  erf(x) = x P(x²) / Q(x²)
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
# 0.5 < |x| <= 4:  erfc(x) = exp(-x²) P(x) / Q(x)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
# |x| > 4:  erfc(x) = exp(-x²) / x (1/√π - z P(z) / Q(z)),  z = 1/x²
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)


def _erf_small(x: Any) -> Any:
    """erf(x) for |x| <= 0.5."""
    z = x * x
    num, den = _A[4] * z, z
    for a, b in zip(_A[:3], _B[:3], strict=True):
        num = (num + a) * z
        den = (den + b) * z
    return x * (num + _A[3]) / (den + _B[3])


def _exp_minus_square(ax: Any) -> Any:
    """exp(-x²) for x >= 0, to full relative accuracy.

    x² is rounded before exp sees it, and exp magnifies that rounding error x²-fold; Cody's
    trick splits x = t + d with t = floor(16 x) / 16 (t² exact) and x² = t² + (x - t)(x + t).
    """
    xp = get_array_module(ax)
    t = xp.floor(ax * 16.0) / 16.0
    return xp.exp(-t * t) * xp.exp(-(ax - t) * (ax + t))


def _erfc_mid(ax: Any) -> Any:
    """erfc(x) for 0.5 < x <= 4."""
    num, den = _C[8] * ax, ax
    for c, d in zip(_C[:7], _D[:7], strict=True):
        num = (num + c) * ax
        den = (den + d) * ax
    return _exp_minus_square(ax) * (num + _C[7]) / (den + _D[7])


def _erfc_big(ax: Any) -> Any:
    """erfc(x) for x > 4 (x clipped to 30: erfc(x) underflows to 0 from x ≈ 27.3 on)."""
    xp = get_array_module(ax)
    ax = xp.minimum(ax, 30.0)  # keeps x² finite for x = inf or 1e300
    z = 1.0 / (ax * ax)
    num, den = _P[5] * z, z
    for p, q in zip(_P[:4], _Q[:4], strict=True):
        num = (num + p) * z
        den = (den + q) * z
    return _exp_minus_square(ax) * (_SQRT_PI_INV - z * (num + _P[4]) / (den + _Q[4])) / ax


def erfc(x: Any) -> Any:
    """The complementary error function erfc(x) = 1 - erf(x) = (2/√π) ∫_x^∞ e^{-t²} dt.

    Accurate (relative error ~1e-16 in float64) also in the far right tail, where 1 - erf(x)
    would cancel to 0. Keeps the dtype of ``x``; NumPy or CuPy.
    """
    xp = get_array_module(x)
    special = get_special(xp)  # CuPy's own fused kernel when there is one
    if special is not None:
        return special.erfc(x)
    ax = xp.abs(x)
    # erfc(|x|), each range with its own approximation, evaluated only where it applies
    # (NaN stays NaN: it falls in no range).
    r = xp.full_like(ax, xp.nan)
    small = ax <= 0.5
    big = ax > 4.0
    mid = ~(small | big) & (ax == ax)
    r[small] = 1.0 - _erf_small(ax[small])
    r[mid] = _erfc_mid(ax[mid])
    r[big] = _erfc_big(ax[big])
    return xp.where(x < 0, 2.0 - r, r)  # erfc(-x) = 2 - erfc(x)


def erf(x: Any) -> Any:
    """The error function erf(x) = (2/√π) ∫_0^x e^{-t²} dt (see ``erfc`` for the method)."""
    xp = get_array_module(x)
    small = xp.abs(x) <= 0.5
    # Near 0, erf(x) ≈ 2x/√π is tiny: 1 - erfc(x) would lose its relative accuracy.
    return xp.where(small, _erf_small(xp.where(small, x, 0.0)), 1.0 - erfc(x))


# --------------------------------------------------------------------------------------------
# Activations and dropout, element by element (the layers' formulas: layers/activation.py)
# --------------------------------------------------------------------------------------------
# NumPy: plain array code; a formula of several steps makes one new array (in the layout of
# its input: ``out=xp.empty_like(...)``) and updates it in place, never touching the caller's
# x or dout. No ``xp.where`` on the data: on NumPy it is several times slower than arithmetic
# (it branches per element), so selections are written as max/min or exp.
# CuPy: one kernel per call (``kernels.fused``: float32/float64 arrays on CuPy).

def sigmoid(x: Any) -> Any:
    """σ(x) = 1 / (1 + e^{-x}) without overflow for any x, and accurate in both tails.

    x >= 0: σ = 1 / (1 + e^{-x});   x < 0: σ = e^{x} / (1 + e^{x}).   Both at once:

        σ(x) = exp(min(x, 0)) / (1 + exp(-|x|))

    where neither exponent is positive (no overflow) and, for x << 0, σ ≈ e^{x} keeps its
    relative accuracy (1 - σ(-x) would round to 0).
    """
    if kernels.fused(x):
        return kernels.unary("ew_sigmoid_forward", x)
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


def sigmoid_backward(y: Any, dout: Any) -> Any:
    """dx = dout * y (1 - y), y = σ(x) (σ' = σ (1 - σ))."""
    if kernels.fused(dout):
        return kernels.binary("ew_sigmoid_backward", y, dout)
    xp = get_array_module(dout)
    d = xp.subtract(1.0, y, out=xp.empty_like(dout))
    d *= y
    d *= dout
    return d


def relu(x: Any) -> Any:
    """y = max(x, 0): one pass (one ufunc on either backend), in x's layout."""
    xp = get_array_module(x)
    return xp.maximum(x, 0.0, out=xp.empty_like(x))


def relu_backward(y: Any, dout: Any) -> Any:
    """dx = dout * [y > 0] (the subgradient 0 at 0), from ReLU's output y."""
    if kernels.fused(dout):
        return kernels.binary("ew_relu_backward", y, dout)
    # The comparison writes 0.0/1.0 straight into a float array and the product is taken in
    # place: no bool array, no mixed-type multiply.
    xp = get_array_module(dout)
    d = xp.greater(y, 0, out=xp.empty_like(dout))
    d *= dout
    return d


def leaky_relu(x: Any, alpha: float) -> Any:
    """y = x for x > 0, α x otherwise."""
    if kernels.fused(x):
        return kernels.unary("ew_leaky_relu_forward", x, x.dtype.type(alpha))
    xp = get_array_module(x)
    # max(x, αx) is x for x > 0 and αx for x < 0 when α <= 1 (min(x, αx) when α > 1).
    y = xp.multiply(x, alpha, out=xp.empty_like(x))  # (out=: an array even if x is 0-d)
    (xp.maximum if alpha <= 1.0 else xp.minimum)(x, y, out=y)
    return y


def leaky_relu_backward(x: Any, dout: Any, alpha: float) -> Any:
    """dx = dout * (1 if x > 0 else α)."""
    if kernels.fused(dout):
        return kernels.binary("ew_leaky_relu_backward", x, dout, dout.dtype.type(alpha))
    xp = get_array_module(dout)
    d = xp.greater(x, 0, out=xp.empty_like(dout))   # f'(x) = α + (1 - α) [x > 0]
    d *= 1.0 - alpha
    d += alpha
    d *= dout
    return d


def tanh(x: Any) -> Any:
    """y = tanh(x): one ufunc on either backend, in x's layout."""
    xp = get_array_module(x)
    return xp.tanh(x, out=xp.empty_like(x))


def tanh_backward(y: Any, dout: Any) -> Any:
    """dx = dout * (1 - y²), y = tanh(x)."""
    if kernels.fused(dout):
        return kernels.binary("ew_tanh_backward", y, dout)
    xp = get_array_module(dout)
    d = xp.multiply(y, y, out=xp.empty_like(dout))
    d *= -1.0
    d += 1.0                         # 1 - y², in place
    d *= dout
    return d


def silu(x: Any) -> tuple[Any, Any]:
    """(y, s): y = x σ(x), and s = σ(x) for the backward (None on CuPy: recomputed there)."""
    if kernels.fused(x):
        return kernels.unary("ew_silu_forward", x), None
    xp = get_array_module(x)
    s = sigmoid(x)
    return xp.multiply(x, s, out=xp.empty_like(x)), s


def silu_backward(x: Any, s: Any, dout: Any) -> Any:
    """dx = dout * σ(x) (1 + x (1 - σ(x))) (product rule: σ + x σ (1 - σ)); s = σ(x) or None."""
    if kernels.fused(dout):
        return kernels.binary("ew_silu_backward", x, dout)
    xp = get_array_module(dout)
    d = xp.subtract(1.0, s, out=xp.empty_like(dout))  # then 1 + x (1 - σ), σ (...), dout σ (...)
    d *= x
    d += 1.0
    d *= s
    d *= dout
    return d


_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_A = 0.044715


def gelu(x: Any, approximate: str = "none") -> tuple[Any, Any]:
    """(y, saved): GELU's y = x Φ(x) (exact) or y = x σ(2u) (``approximate="tanh"``,
    u = √(2/π) (x + 0.044715 x³)); ``saved`` is Φ(x) or σ(2u) for the backward, None on CuPy
    (recomputed there). See ``layers.GELU`` for the formulas."""
    tanh_form = approximate == "tanh"
    if kernels.fused(x):
        return kernels.unary("ew_gelu_tanh_forward" if tanh_form else "ew_gelu_forward", x), None
    if tanh_form:
        u = _SQRT_2_OVER_PI * (x + _GELU_TANH_A * (x * x * x))
        s = sigmoid(2.0 * u)                          # = ½ (1 + tanh u)
        return x * s, s
    Phi = 0.5 * erfc(x * -_SQRT_HALF)
    return x * Phi, Phi


def gelu_backward(x: Any, saved: Any, dout: Any, approximate: str = "none") -> Any:
    """dx = dout * (Φ + x φ(x)) (exact), dout * (s + 2 x s (1 - s) du/dx) (tanh form)."""
    tanh_form = approximate == "tanh"
    if kernels.fused(dout):
        return kernels.binary("ew_gelu_tanh_backward" if tanh_form else "ew_gelu_backward",
                              x, dout)
    xp = get_array_module(dout)
    if tanh_form:
        s = saved
        du_dx = _SQRT_2_OVER_PI * (1.0 + (3.0 * _GELU_TANH_A) * (x * x))
        return dout * (s + 2.0 * x * s * (1.0 - s) * du_dx)
    Phi = saved
    xc = xp.clip(x, -40.0, 40.0)  # φ(±40) = 0 in float64; clipping keeps x² finite
    phi = _INV_SQRT_2PI * xp.exp(-0.5 * (xc * xc))
    return dout * (Phi + x * phi)


def dropout(x: Any, p: float, rng: Any) -> tuple[Any, Any]:
    """(y, mask): inverted dropout, y = x * mask, mask = m / (1 - p), m_i ~ Bernoulli(1 - p).

    ``rng`` (a host NumPy Generator) draws the mask's uniforms on NumPy, and one 64-bit seed
    on CuPy, where one kernel hashes (seed, element index) into the mask
    (``functional.random_bits``) and applies it.
    """
    scale = 1.0 / (1.0 - p)
    if kernels.fused(x):
        # u = bits / 2**32 is uniform on [0, 1), and u >= p  <=>  bits >= p * 2**32.
        threshold = min(round(p * 2**32), 2**32 - 1)
        return kernels.dropout_forward(x, random_seed(rng), threshold, scale)
    xp = get_array_module(x)
    if xp is np:
        keep = rng.random(tuple(x.shape), dtype=np.float32) >= p
    else:  # a dtype without kernels (float16) on CuPy
        threshold = np.uint32(min(round(p * 2**32), 2**32 - 1))
        keep = random_bits(xp, tuple(x.shape), random_seed(rng)) >= threshold
    # The scaled mask m / (1 - p), in x's dtype (a Python-float scale keeps float32).
    mask = keep.astype(x.dtype) * scale
    return x * mask, mask
