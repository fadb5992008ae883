"""Dropout: randomly zero units during training, a cheap ensemble that fights overfitting.

The mask and the two products are ``functional/dropout.py``'s ``dropout`` and
``dropout_backward``.

Derivation: docs/derivations/dropout.md
Tests: tests/test_dropout.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..functional.dropout import dropout, dropout_backward
from .base import Layer, check_float_input

__all__ = ["Dropout"]

# The cache of a forward that was the identity (evaluation mode or p = 0): backward passes
# dout through unchanged.
_IDENTITY = "identity"


class Dropout(Layer):
    """Inverted dropout.

    Training: each unit is kept with probability 1 - p and scaled by 1 / (1 - p), so that
    E[y] = x and evaluation needs no rescaling:

        m_i ~ Bernoulli(1 - p),   y = x * m / (1 - p)
        dx = dout * m / (1 - p)           (the same mask)

    Evaluation (``eval()``): y = x, dx = dout. Backward uses the mode of its forward.

    Parameters
    ----------
    p : float
        Probability of zeroing a unit, 0 <= p < 1 (p = 0: identity).
    seed : int, optional
        Seeds the mask generator, for reproducible runs.

    Attributes
    ----------
    rng : numpy.random.Generator
        The layer's only random state, on the host: saved in checkpoints
        (``Layer.rng_states``), copied by ``copy.deepcopy`` and pickle, and replayed by
        ``minicnn.gradcheck``, so a restored state gives the same masks again. NumPy inputs
        take their mask's uniforms from it directly. CuPy inputs take one 64-bit seed per
        forward from it (a host draw: no device synchronisation) and build the mask on the
        GPU from that seed with ``functional.random_bits``, a counter-based hash: a pure
        function of (seed, element index), so no generator lives on the device (nothing
        there to save, copy or replay) and no mask is copied from the host; one kernel
        hashes, masks and scales (``functional.dropout.dropout``). (A fresh CuPy
        generator per forward would do too, but each one allocates and initialises its
        state with a kernel, every step.) The two backends draw different masks from the
        same seed.
    mask : array or None
        The scaled mask m / (1 - p) of the last forward (None after an identity forward).

    Shapes: any, output same as input.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p (the probability of zeroing) must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    def forward(self, x: Any) -> Any:
        check_float_input("Dropout", x)
        if not self.training or self.p == 0.0:
            self.cache = _IDENTITY
            return x
        y, mask = dropout(x, self.p, self.rng)   # mask = m / (1 - p), in x's dtype
        self.cache = mask
        return y

    def backward(self, dout: Any) -> Any:
        mask = self.cached()
        if mask is _IDENTITY:  # the forward was the identity (eval mode or p = 0)
            return dout
        return dropout_backward(mask, dout)      # dx = dout * m / (1 - p)

    @property
    def mask(self) -> Any:
        """The scaled mask m / (1 - p) of the last forward; None when it was the identity."""
        mask = self.cached()
        return None if mask is _IDENTITY else mask

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
