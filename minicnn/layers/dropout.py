"""Dropout: randomly zero units during training, a cheap ensemble that fights overfitting."""

from __future__ import annotations

from typing import Any

import numpy as np

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

    Evaluation (``eval()``): y = x, dx = dout.

    Parameters
    ----------
    p : float
        Probability of zeroing a unit, 0 <= p < 1 (p = 0: identity).
    seed : int, optional
        Seeds the mask generator, for reproducible runs.

    Attributes
    ----------
    rng : numpy.random.Generator
        Draws the masks of NumPy inputs. (``minicnn.gradcheck`` replays its state, so the
        gradient check sees the same mask at every forward.) CuPy inputs get their masks from
        a CuPy generator on the GPU, created on first use from the same seed: masks are never
        copied from the host.

    Shapes: any, output same as input.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p (the probability of zeroing) must be in [0, 1), got {p}")
        self.p = float(p)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._gpu_rng: Any = None

    def _uniform(self, xp: Any, shape: tuple[int, ...]) -> Any:
        """U[0, 1) float32 draws of ``shape`` on x's device."""
        if xp is np:
            return self.rng.random(shape, dtype=np.float32)
        if self._gpu_rng is None:
            self._gpu_rng = xp.random.default_rng(self.seed)
        return self._gpu_rng.random(shape, dtype=xp.float32)

    def forward(self, x: Any) -> Any:
        xp = check_float_input("Dropout", x)
        if not self.training or self.p == 0.0:
            self.cache = _IDENTITY
            return x
        keep = self._uniform(xp, tuple(x.shape)) >= self.p  # P(keep) = 1 - p
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
