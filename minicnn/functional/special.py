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

How it is evaluated on NumPy, and why. A Horner chain is ~20 element-wise passes, and a NumPy
expression writes each pass to a full-size temporary: on a 24 MB activation every pass goes
to main memory and back. So the flattened array goes through in blocks (``_BLOCK_BYTES``: 256
KiB, 64 K float32 numbers), each pass in place (``out=``) in ~10 block buffers allocated once
a call, which stay in the L2 cache. Per block, only the ranges its values reach are evaluated:
one range on the whole block (as a block of large activations is), several each at its own
elements, gathered by index and scattered back. Boolean masks are avoided: a masked copy or
``where`` costs ~4 ns an element (mispredicted branches), the whole pass chain ~10-20 ns.

On CuPy, ``erfc`` calls the library's own fused kernel ``cupyx.scipy.special.erfc`` instead
(``backend.get_special``).

Tests: tests/test_activation.py, tests/test_kernels_elementwise.py
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..backend import get_array_module, get_special

__all__ = ["erf", "erfc", "normal_cdf"]

# Cody's coefficients, highest power first: P(t) = p[0] tⁿ + ... + p[n], Q likewise (monic).
_SQRT_PI_INV = 1.0 / math.sqrt(math.pi)
# |x| <= 0.5:  erf(x) = x P(x²) / Q(x²)
_P_SMALL = (1.85777706184603153e-1, 3.16112374387056560e00, 1.13864154151050156e02,
            3.77485237685302021e02, 3.20937758913846947e03)
_Q_SMALL = (1.0, 2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
            2.84423683343917062e03)
# 0.5 < |x| <= 4:  erfc(x) = exp(-x²) P(x) / Q(x)
_P_MID = (2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e00,
          6.61191906371416295e01, 2.98635138197400131e02, 8.81952221241769090e02,
          1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03)
_Q_MID = (1.0, 1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
          1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
          3.43936767414372164e03, 1.23033935480374942e03)
# |x| > 4:  erfc(x) = exp(-x²) / x (1/√π - z P(z) / Q(z)),  z = 1/x²
_P_BIG = (1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1,
          1.25781726111229246e-1, 1.60837851487422766e-2, 6.58749161529837803e-4)
_Q_BIG = (1.0, 2.56852019228982242e00, 1.87295284992346725e00, 5.27905102951428412e-1,
          6.05183413124413191e-2, 2.33520497626869185e-3)

_BLOCK_BYTES = 256 * 1024   # per block buffer (measured: 128 K to 1 M alike, 32 K slower)


# -- one range of |x|, in place on one block --------------------------------------------------
# Each takes x >= 0 (already clipped into its range), writes its value to ``out`` and uses the
# scratch buffers ``s`` (of x's size) as it likes. They work on NumPy and CuPy alike.

def _horner(t: Any, coeffs: tuple[float, ...], out: Any) -> Any:
    """out = c[0] tⁿ + c[1] tⁿ⁻¹ + ... + c[n], by Horner's rule in place (2n passes)."""
    xp = get_array_module(t)
    xp.multiply(t, coeffs[0], out=out)
    for c in coeffs[1:-1]:
        out += c
        out *= t
    out += coeffs[-1]
    return out


def _exp_minus_square(x: Any, out: Any, t: Any, d: Any) -> Any:
    """out = exp(-x²) for x >= 0, to full relative accuracy (t, d: scratch).

    x² is rounded before exp sees it, and exp magnifies that rounding error x²-fold; Cody's
    trick splits x = t + (x - t) with t = floor(16 x) / 16 (t² exact, x - t exact) and
    x² = t² + (x - t)(x + t): exp(-x²) = exp(-t²) exp((t - x)(x + t)), each exponent accurate.
    """
    xp = get_array_module(x)
    xp.multiply(x, 16.0, out=t)
    xp.floor(t, out=t)
    t /= 16.0
    xp.multiply(t, t, out=out)
    xp.negative(out, out=out)
    xp.exp(out, out=out)                  # exp(-t²)
    xp.subtract(t, x, out=d)              # t - x, exact
    t += x                                # x + t
    d *= t
    xp.exp(d, out=d)                      # exp((t - x)(x + t))
    out *= d
    return out


def _erf_small(x: Any, out: Any, s: tuple[Any, ...]) -> Any:
    """out = erf(x) for 0 <= x <= 0.5 (x may also be signed: erf is odd)."""
    xp = get_array_module(x)
    z, den = s[0], s[1]
    xp.multiply(x, x, out=z)
    _horner(z, _P_SMALL, out)
    _horner(z, _Q_SMALL, den)
    out *= x
    out /= den
    return out


def _erfc_mid(x: Any, out: Any, s: tuple[Any, ...]) -> Any:
    """out = erfc(x) for 0.5 <= x <= 4."""
    den, e = s[0], s[1]
    _horner(x, _P_MID, out)
    _horner(x, _Q_MID, den)
    out *= _exp_minus_square(x, e, s[2], s[3])
    out /= den
    return out


def _erfc_big(x: Any, out: Any, s: tuple[Any, ...]) -> Any:
    """out = erfc(x) for 4 <= x <= 30 (erfc(x) underflows to 0 from x ≈ 27.3 on)."""
    xp = get_array_module(x)
    den, e, z = s[0], s[1], s[4]
    xp.multiply(x, x, out=z)
    xp.divide(1.0, z, out=z)              # z = 1/x²
    _horner(z, _P_BIG, out)
    _horner(z, _Q_BIG, den)
    out *= z
    out /= den
    xp.subtract(_SQRT_PI_INV, out, out=out)
    out *= _exp_minus_square(x, e, s[2], s[3])
    out /= x
    return out


# (evaluate, lowest and highest |x| of the range, what it gives). The big range's upper end 30
# is a clip (x = inf, 1e300 must not reach x²); erfc(30) is 0 already.
_Range = tuple[Callable[[Any, Any, tuple[Any, ...]], Any], float, float, str]
_RANGES: tuple[_Range, ...] = ((_erf_small, 0.0, 0.5, "erf"), (_erfc_mid, 0.5, 4.0, "erfc"),
                               (_erfc_big, 4.0, 30.0, "erfc"))
_N_WORK = 7   # float buffers: y (|x| gathered, clipped), the range's value, the ranges' s[0..4]


def _in_range(a: Any, low: float, high: float, masks: list[Any]) -> Any:
    """masks[0] = whether a falls in the range (low, high] (the small range from 0, the big
    one to inf, the middle one also takes NaN: in no range, it stays NaN through any)."""
    xp = get_array_module(a)
    mask, other = masks
    if low == 0.0:
        return xp.less_equal(a, high, out=mask)
    if high == 30.0:
        return xp.greater(a, low, out=mask)
    xp.less_equal(a, low, out=mask)
    xp.greater(a, high, out=other)
    xp.logical_or(mask, other, out=mask)
    return xp.logical_not(mask, out=mask)


def _erf_or_erfc_of_abs(a: Any, out: Any, want: str, work: list[Any], masks: list[Any]) -> Any:
    """out = erf(a) or erfc(a) (``want``) for one block of a = |x| >= 0 (NaN allowed).

    Evaluates only the ranges that the block's values reach. One range (most blocks): on the
    whole block. Several: each at its own elements only, gathered by index into a contiguous
    buffer and scattered back (a boolean-mask copy or ``where`` would cost ~4 ns an element,
    its branches mispredicted; index gathers and scatters ~1 ns).
    ``work``: ``_N_WORK`` float buffers and ``masks`` two bool buffers, all of a's size.
    """
    xp = get_array_module(a)
    y, value, *s = work
    lo, hi = float(a.min()), float(a.max())
    if hi != hi:                          # a NaN: look at every range (it goes to the middle one)
        lo, hi = 0.0, math.inf
    present = [rng for rng in _RANGES if lo <= rng[2] and hi >= rng[1]]   # overlaps [lo, hi]
    for evaluate, low, high, gives in present:
        if len(present) == 1:             # the whole block
            xp.clip(a, low, high, out=y)
            evaluate(y, out, s)
            target = out
        else:
            index = xp.flatnonzero(_in_range(a, low, high, masks))
            k = index.size
            xp.take(a, index, out=y[:k])
            xp.clip(y[:k], low, high, out=y[:k])
            target = evaluate(y[:k], value[:k], [b[:k] for b in s])
        if gives != want:                 # erfc = 1 - erf
            xp.subtract(1.0, target, out=target)
        if len(present) > 1:
            out[index] = target
    return out


def _blockwise(x: Any, want: str, scale: float = 1.0, factor: float = 1.0) -> Any:
    """factor · erf(u) or factor · erfc(u) (``want``) of u = scale · x, block by block.

    Per block of ``_BLOCK_BYTES``: a = |u| into a buffer, erf(a) or erfc(a) straight into
    the output, then the sign: erf(-a) = -erf(a), erfc(-a) = 2 - erfc(a).
    """
    xp = get_array_module(x)
    out = xp.empty_like(x)                # x's memory layout: channels-last stays channels-last
    axes = sorted(range(x.ndim), key=lambda i: -out.strides[i])     # out's axes, memory order
    flat_x = x.transpose(axes).reshape(-1)          # a view when x is dense (a copy otherwise)
    flat_out = out.transpose(axes).reshape(-1)      # a view: out is dense
    n = flat_x.size
    size = max(1, min(n, _BLOCK_BYTES // x.itemsize))
    buffers = xp.empty((2 + _N_WORK, size), x.dtype)   # allocated once, reused by every block
    masks = xp.empty((2, size), dtype=bool)
    for start in range(0, n, size):
        xb, ob = flat_x[start:start + size], flat_out[start:start + size]
        u, a, *work = (b[:xb.size] for b in buffers)
        xp.multiply(xb, scale, out=u)
        xp.abs(u, out=a)
        _erf_or_erfc_of_abs(a, ob, want, work, [m[:xb.size] for m in masks])
        # The sign, without a masked copy (~4 ns an element): with s = sign(u) = ±1,
        # erf(u) = s erf(|u|) and erfc(u) = s erfc(|u|) + (1 - s), i.e. 2 - erfc(|u|) for u < 0.
        xp.copysign(1.0, u, out=u)
        ob *= u
        if want == "erfc":
            xp.subtract(1.0, u, out=u)
            ob += u
        if factor != 1.0:
            ob *= factor
    return out


def erfc(x: Any) -> Any:
    """The complementary error function erfc(x) = 1 - erf(x) = (2/√π) ∫_x^∞ e^{-t²} dt.

    Accurate (relative error ~1e-16 in float64) also in the far right tail, where 1 - erf(x)
    would cancel to 0. Keeps the shape and dtype of ``x``; NumPy or CuPy.
    """
    xp = get_array_module(x)
    if x.dtype == xp.float16:  # Cody's sums pass float16's 65504 (2e6 at |x| = 4)
        return erfc(x.astype(xp.float32)).astype(xp.float16)
    special = get_special(xp)  # CuPy's own fused kernel when there is one
    if special is not None:
        return special.erfc(x)
    return _blockwise(x, "erfc")


def erf(x: Any) -> Any:
    """The error function erf(x) = (2/√π) ∫_0^x e^{-t²} dt (see ``erfc`` for the method).

    Near 0, erf(x) ≈ 2x/√π is tiny and comes from its own range (1 - erfc(x) would lose its
    relative accuracy). Keeps the shape and dtype of ``x``; NumPy or CuPy.
    """
    xp = get_array_module(x)
    if x.dtype == xp.float16:  # as in erfc: the sums overflow float16
        return erf(x.astype(xp.float32)).astype(xp.float16)
    if get_special(xp) is not None:   # CuPy: the small range here, erfc's kernel elsewhere
        small = xp.abs(x) <= 0.5
        xs = xp.where(small, x, 0.0)
        e = _erf_small(xs, xp.empty_like(xs), (xp.empty_like(xs), xp.empty_like(xs)))
        return xp.where(small, e, 1.0 - erfc(x))
    return _blockwise(x, "erf")


_SQRT_HALF = math.sqrt(0.5)


def normal_cdf(x: Any) -> Any:
    """Φ(x) = P(Z <= x) for Z ~ N(0, 1), as ½ erfc(-x/√2).

    Through erfc rather than ½ (1 + erf(x/√2)): for x << 0 the latter is the difference of two
    numbers near 1 and loses all its digits, while erfc keeps Φ's relative accuracy in the left
    tail (Φ(-20) ≈ 2.8e-89). Keeps the shape and dtype of ``x``; NumPy or CuPy. On NumPy the
    scaling by -1/√2 and ½ happen inside erfc's blocks (the same numbers, two passes fewer).
    """
    xp = get_array_module(x)
    if x.dtype == xp.float16 or get_special(xp) is not None:
        return 0.5 * erfc(x * -_SQRT_HALF)
    return _blockwise(x, "erfc", scale=-_SQRT_HALF, factor=0.5)
