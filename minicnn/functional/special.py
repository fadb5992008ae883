"""Special functions NumPy lacks: the error function ``erf``, its complement ``erfc``, and
the standard normal CDF Φ built on it (the exact GELU's, ``functional/activation.py``).

    erf(x)  = (2/√π) ∫_0^x e^{-t²} dt
    erfc(x) = 1 - erf(x) = (2/√π) ∫_x^∞ e^{-t²} dt
    Φ(x)    = ½ erfc(-x/√2)

NumPy has no erf and SciPy is not a dependency, so this module evaluates W. J. Cody's rational
Chebyshev approximations ("Rational Chebyshev approximations for the error function", Math.
Comp. 23, 1969; the CALERF routine of SPECFUN), one per range of |x|:

    |x| <= 0.5        erf(x)  = x P(x²) / Q(x²)
    0.5 < |x| <= 4    erfc(x) = exp(-x²) P(|x|) / Q(|x|)
    |x| > 4           erfc(x) = exp(-x²) / |x| (1/√π - z P(z) / Q(z)),   z = 1/x²

and erfc(-x) = 2 - erfc(x). Cody's coefficients are good to about 1e-16. Measured against
``scipy.special`` (tests/test_activation.py): in float64 erf has a relative error below 1e-15
and erfc below 1e-13 over [-26, 26], also in the right tail where 1 - erf(x) would cancel to 0
(this is what lets the float64 gradient check, tolerance 1e-6, see the true derivative of
GELU's forward pass). The functions keep the input's dtype: in float32 the error is a few
units in the last place (relative below 1e-6 while erfc(x) is a normal float32 number); a
float16 input is evaluated in float32 (the rational functions' sums overflow float16).

On CuPy, ``erfc`` calls the library's own fused kernel ``cupyx.scipy.special.erfc`` instead
(``backend.get_special``).

Tests: tests/test_activation.py, tests/test_kernels_elementwise.py
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module, get_special

__all__ = ["erf", "erfc", "normal_cdf"]

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
    if x.dtype == xp.float16:  # Cody's sums pass float16's 65504 (2e6 at |x| = 4)
        return erfc(x.astype(xp.float32)).astype(xp.float16)
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
    if x.dtype == xp.float16:  # as in erfc: the sums overflow float16
        return erf(x.astype(xp.float32)).astype(xp.float16)
    small = xp.abs(x) <= 0.5
    # Near 0, erf(x) ≈ 2x/√π is tiny: 1 - erfc(x) would lose its relative accuracy.
    return xp.where(small, _erf_small(xp.where(small, x, 0.0)), 1.0 - erfc(x))


_SQRT_HALF = math.sqrt(0.5)


def normal_cdf(x: Any) -> Any:
    """Φ(x) = P(Z <= x) for Z ~ N(0, 1), as ½ erfc(-x/√2).

    Through erfc rather than ½ (1 + erf(x/√2)): for x << 0 the latter is the difference of two
    numbers near 1 and loses all its digits, while erfc keeps Φ's relative accuracy in the left
    tail (Φ(-20) ≈ 2.8e-89). Keeps the shape and dtype of ``x``; NumPy or CuPy.
    """
    return 0.5 * erfc(x * -_SQRT_HALF)
