"""Softmax and log-softmax, stable for logits of any size.

softmax(z)_c = e^{z_c} / Σ_k e^{z_k}. Computed literally, e^{1000} overflows. Softmax is
unchanged by subtracting a constant from every z_k, so we subtract m = max_k z_k first: every
exponent is then <= 0 (no overflow) and the largest term is e^0 = 1 (the sum is >= 1, so its
log is finite). This is the log-sum-exp trick:

    logsumexp(z) = m + log Σ_k e^{z_k - m}
    log_softmax(z)_c = z_c - logsumexp(z) = (z_c - m) - log Σ_k e^{z_k - m}
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = ["softmax", "log_softmax", "logsumexp"]


def logsumexp(z: Any, axis: int = -1, keepdims: bool = False) -> Any:
    """log Σ_k e^{z_k} along ``axis``, computed as m + log Σ_k e^{z_k - m}."""
    xp = get_array_module(z)
    m = z.max(axis=axis, keepdims=True)
    out = m + xp.log(xp.exp(z - m).sum(axis=axis, keepdims=True))
    return out if keepdims else out.squeeze(axis)


def log_softmax(z: Any, axis: int = -1) -> Any:
    """log softmax(z) along ``axis``: z_c - logsumexp(z). Same shape and dtype as ``z``."""
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(z: Any, axis: int = -1) -> Any:
    """softmax(z)_c = e^{z_c - m} / Σ_k e^{z_k - m}, m = max_k z_k. Rows sum to 1."""
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
