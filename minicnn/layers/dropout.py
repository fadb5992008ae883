"""Dropout: randomly zero units during training, a cheap ensemble that fights overfitting.

Derivation: docs/derivations/dropout.md
Tests: tests/test_dropout.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..functional.random_bits import random_bits, random_seed
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
        there to save, copy or replay) and no mask is copied from the host. (A fresh CuPy
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

    def _keep(self, xp: Any, shape: tuple[int, ...]) -> Any:
        """The boolean keep mask, P(keep) = 1 - p, on x's device."""
        if xp is np:
            return self.rng.random(shape, dtype=np.float32) >= self.p
        # u = bits / 2**32 is uniform on [0, 1), and u >= p  <=>  bits >= p * 2**32.
        threshold = np.uint32(min(round(self.p * 2**32), 2**32 - 1))
        return random_bits(xp, shape, random_seed(self.rng)) >= threshold

    def forward(self, x: Any) -> Any:
        xp = check_float_input("Dropout", x)
        if not self.training or self.p == 0.0:
            self.cache = _IDENTITY
            return x
        keep = self._keep(xp, tuple(x.shape))
        # The scaled mask m / (1 - p), in x's dtype (a Python-float scale keeps float32).
        mask = keep.astype(x.dtype) * (1.0 / (1.0 - self.p))
        self.cache = mask
        return x * mask

    def backward(self, dout: Any) -> Any:
        mask = self.cached()
        if mask is _IDENTITY:  # the forward was the identity (eval mode or p = 0)
            return dout
        return dout * mask

    @property
    def mask(self) -> Any:
        """The scaled mask m / (1 - p) of the last forward; None when it was the identity."""
        mask = self.cached()
        return None if mask is _IDENTITY else mask

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
