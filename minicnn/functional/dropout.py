"""Inverted dropout's mask and its two passes: the arithmetic of ``layers/dropout.py``.

    m_i ~ Bernoulli(1 - p),   mask = m / (1 - p),   y = x * mask,   dx = dout * mask

The mask is drawn from the layer's host NumPy generator ``rng``, its only random state (saved
in checkpoints, copied, replayed by the gradient check):

- on NumPy, u_i = ``rng.random()`` and m_i = [u_i >= p];
- on CuPy, ``rng`` gives one 64-bit seed per forward (a host draw: no device sync) and the
  bits come from ``random_bits``, a counter-based hash of (seed, element index) that needs no
  generator on the device: m_i = [bits_i >= p · 2³²] (u = bits / 2³² is uniform on [0, 1)).
  A float32/float64 array takes one kernel that hashes, masks and scales
  (``ew_dropout_forward``, ``minicnn/kernels/elementwise.py``); other dtypes the same bits in
  array code. The two backends draw different masks from the same seed.

Derivation: docs/derivations/dropout.md
Tests: tests/test_dropout.py, tests/test_kernels_elementwise.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from ..kernels import elementwise as kernels
from ..kernels.elementwise import uses_kernels
from .random_bits import random_bits, random_seed

__all__ = ["dropout", "dropout_backward", "keep_threshold"]


def keep_threshold(p: float) -> int:
    """The uint32 threshold t with [bits >= t] ~ Bernoulli(1 - p) for uniform 32-bit bits.

    u = bits / 2³² is uniform on [0, 1), and u >= p  <=>  bits >= p · 2³² (rounded, and at
    most 2³² - 1 so that it fits a uint32).
    """
    return min(round(p * 2**32), 2**32 - 1)


def dropout(x: Any, p: float, rng: np.random.Generator) -> tuple[Any, Any]:
    """Inverted dropout's forward in training: y = x * mask, mask = m / (1 - p).

    Parameters
    ----------
    x : array of any shape
    p : float
        The probability of zeroing a unit, 0 < p < 1.
    rng : numpy.random.Generator
        The host generator the mask (NumPy) or its seed (CuPy) is drawn from.

    Returns
    -------
    y : array of x's shape and dtype
    mask : array of x's shape and dtype
        The scaled mask m / (1 - p): 0 or 1 / (1 - p), for the backward.
    """
    scale = 1.0 / (1.0 - p)
    if uses_kernels(x):
        return kernels.dropout_forward(x, random_seed(rng), keep_threshold(p), scale)
    xp = get_array_module(x)
    if xp is np:
        keep = rng.random(tuple(x.shape), dtype=np.float32) >= p
    else:  # a dtype without kernels (float16) on CuPy: the kernel's bits, in array code
        bits = random_bits(xp, tuple(x.shape), random_seed(rng))
        keep = bits >= np.uint32(keep_threshold(p))
    # m / (1 - p) in x's dtype (a Python-float scale keeps float32).
    mask = keep.astype(x.dtype) * scale
    return x * mask, mask


def dropout_backward(mask: Any, dout: Any) -> Any:
    """Inverted dropout's backward: dx = dout * mask, the forward's scaled mask.

    Parameters
    ----------
    mask : array of any shape
        ``dropout``'s mask m / (1 - p).
    dout : array of mask's shape
        dL/dy.

    Returns
    -------
    dx : array of dout's shape, dtype and memory layout (one ufunc: one launch on CuPy)
    """
    xp = get_array_module(dout)
    return xp.multiply(dout, mask, out=xp.empty_like(dout))
