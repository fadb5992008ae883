"""Local response normalisation across channels (Krizhevsky et al., 2012: AlexNet's LRN).

Each activation is divided by a power of the energy of its neighbouring channels at the
same position, so strongly responding channels damp their neighbours ("lateral
inhibition"). PyTorch's ``nn.LocalResponseNorm``, with its window and its divisor.

Derivation: docs/derivations/local_response_norm.md
Tests: tests/test_local_response_norm.py
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module
from ..functional.normalization import empty_as
from ._checks import check_positive_int
from .base import Layer, check_float_input, check_ndim

__all__ = ["LocalResponseNorm"]


def channel_window_sum(a: Any, before: int, after: int) -> Any:
    """w[:, c] = Σ_{c' = c - before}^{c + after} a[:, c'], the terms outside [0, C) zero.

    One shifted slice per window offset d (``before + after + 1`` additions of arrays of
    a's size, never a loop over pixels), without a zero-padded copy: for offset d, channel
    c receives a[:, c + d] for the c where c + d is in [0, C). A cumulative sum would take
    two passes whatever the window, but its differences of large prefix sums lose float32
    digits on many channels; a window of 5 is 5 exact additions.

    w has a's memory layout (``zeros_like``), and each addition writes into its slice of w
    through ``out=`` (``w[:, lo:hi] += ...`` would copy the sum back onto itself, one more
    pass per offset on CuPy).
    """
    xp = get_array_module(a)
    C = a.shape[1]
    w = xp.zeros_like(a)
    for d in range(-before, after + 1):
        lo, hi = max(0, -d), min(C, C - d)       # the c whose neighbour c + d exists
        if lo < hi:
            w_slice = w[:, lo:hi]
            xp.add(w_slice, a[:, lo + d:hi + d], out=w_slice)
    return w


class LocalResponseNorm(Layer):
    """Local response normalisation over channels (PyTorch's ``nn.LocalResponseNorm``).

    Forward (every sample n and position, over the channel axis 1):

        s_c = k + (alpha / size) · Σ_{c' ∈ W(c)} x_{c'}²,   W(c) = [c - size//2, c + (size-1)//2]
        y_c = x_c · s_c^(-beta)

    The window is clipped to the channels [0, C) (the channels outside count as zeros), and
    the divisor is always ``size``, also at the edges and when size > C. For an odd size the
    window is centred (size 5: c - 2 ... c + 2); for an even one it reaches one channel
    further down (size 4: c - 2 ... c + 1), PyTorch's convention.

    Backward: x_j reaches y_j directly and, through s_c, every y_c whose window holds j:

        dx_j = dout_j s_j^(-beta)
               - (2 alpha beta / size) x_j Σ_{c : j ∈ W(c)} dout_c x_c s_c^(-beta-1)

    where {c : j ∈ W(c)} = [j - (size-1)//2, j + size//2] is the window mirrored. Both window
    sums are ``channel_window_sum`` (one shifted slice per offset). The forward keeps x (a
    reference) and s (x's size); backward recomputes s^(-beta) from s.

    Every full-size array is allocated like x (``empty_as``) and written with ``out=`` or in
    place: a CuPy ufunc allocates its output C-ordered, so ``x * x`` would turn a
    channels-last x into an NCHW y and dx. y and dx are stored as x is, on both backends.

    Parameters
    ----------
    size : int
        The number of channels in the window (>= 1; it may exceed C).
    alpha : float, default 1e-4
        The scale of the sum of squares (>= 0); it is divided by ``size``.
    beta : float, default 0.75
        The exponent.
    k : float, default 1.0
        The additive constant (> 0, so that s >= k > 0 and the power is defined). AlexNet
        used size 5, alpha 1e-4, beta 0.75, k 2.

    Attributes
    ----------
    No parameters and no buffers; training and evaluation mode compute the same.
    ``input_grad`` (default True): when False, backward returns None.

    Shapes
    ------
    x: (N, C, H, W), or (N, C) / (N, C, L); y: the same shape and dtype.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__()
        self.size = check_positive_int("LocalResponseNorm", "size", size)
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"LocalResponseNorm: alpha must be a finite number >= 0, got "
                             f"{alpha!r}")
        if not math.isfinite(self.beta):
            raise ValueError(f"LocalResponseNorm: beta must be a finite number, got {beta!r}")
        if not (math.isfinite(self.k) and self.k > 0):
            raise ValueError(f"LocalResponseNorm: k must be a finite number > 0 (s = k + ... "
                             f"is raised to the power -beta), got {k!r}")
        self.input_grad = True

    def forward(self, x: Any) -> Any:
        xp = check_float_input("LocalResponseNorm", x)
        check_ndim("LocalResponseNorm", x, (2, 3, 4), "(N, C, H, W) (or (N, C), (N, C, L))")
        n = self.size
        x2 = xp.multiply(x, x, out=empty_as(x))                # x²
        s = channel_window_sum(x2, n // 2, (n - 1) // 2)        # Σ_{c' ∈ W(c)} x_c'²
        s *= self.alpha / n
        s += self.k                                             # s = k + (α/n) Σ x²
        self.cache = (x, s)
        y = xp.power(s, -self.beta, out=x2)                     # s^(-β), over x²'s buffer
        y *= x                                                  # y = x s^(-β)
        return y

    def backward(self, dout: Any) -> Any:
        x, s = self.cached()
        xp = check_float_input("LocalResponseNorm", dout)
        if dout.shape != x.shape:
            raise ValueError(f"LocalResponseNorm.backward: dout has shape {tuple(dout.shape)}, "
                             f"the output had {tuple(x.shape)}")
        if not self.input_grad:
            return None
        n = self.size
        scale = xp.power(s, -self.beta, out=empty_as(s))       # s^(-β)
        t = xp.multiply(dout, x, out=empty_as(x, dout))
        t *= scale
        t /= s                                                  # t = dout_c x_c s_c^(-β-1)
        back = channel_window_sum(t, (n - 1) // 2, n // 2)      # Σ over {c : j ∈ W(c)}
        # dx = dout s^(-β) - (2αβ/n) x back, the second term over t's buffer
        dx = xp.multiply(dout, scale, out=empty_as(x, dout))
        t = xp.multiply(x, 2 * self.alpha * self.beta / n, out=t)
        t *= back
        dx -= t
        return dx

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
