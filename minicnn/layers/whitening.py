"""PatchWhitening: a fixed first convolution that whitens the image's small patches.

Derivation: docs/derivations/whitening.md
Tests: tests/test_whitening.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module, to_numpy
from ..functional.im2col import im2col
from .base import check_channels, check_float_input, check_ndim
from .conv import Conv2d

__all__ = ["PatchWhitening"]


class PatchWhitening(Conv2d):
    """A KxK convolution (no padding, no bias) whose filters whiten the input's KxK patches.

    The filters are not learned: ``fit(x)`` computes them from training images, once, before
    training (``minicnn train`` does it for you); the optimizer skips them (``W`` is frozen).
    It is the first layer of the fast CIFAR-10 training scripts (airbench, hlb-CIFAR10):
    the convolutions after it see decorrelated inputs of unit variance, which makes the
    first epochs of SGD much more effective.

    Formula. Every KxK window of x, flattened to a vector p of d = C·K·K numbers (in the
    (kh, kw, c) order of ``im2col``), has the second-moment matrix (x is already normalised
    to mean 0 per channel, so this is its covariance)

        Σ = E[p pᵀ] = V diag(λ) Vᵀ          (d, d), eigenvalues λ_1 >= ... >= λ_d

    The whitening map z = diag(λ + eps)^(-1/2) Vᵀ p has E[z zᵀ] ≈ I. Its d rows are the
    first d filters; their negatives are the other d, so an activation such as ReLU or GELU
    after this layer keeps both signs of every component:

        W_mat = [ diag(λ + eps)^(-1/2) Vᵀ ;  -diag(λ + eps)^(-1/2) Vᵀ ]    (2d, d)

    ``eps`` keeps the noise directions (tiny λ) from being blown up.

    Parameters
    ----------
    in_channels : int
        C of the images (3 for CIFAR-10).
    kernel_size : int, default 2
        K: the patch size (2 in airbench).
    eps : float, default 5e-4
        Added to every eigenvalue before the inverse square root.

    Shapes: x (N, C, H, W) -> y (N, 2·C·K·K, H - K + 1, W - K + 1).
    Until ``fit`` is called the filters are zero (the output is all zeros).
    """

    def __init__(self, in_channels: int = 3, kernel_size: int = 2, eps: float = 5e-4):
        k = int(kernel_size)
        d = int(in_channels) * k * k
        super().__init__(in_channels, 2 * d, k, padding=0, bias=False, init="zeros")
        if not float(eps) > 0:
            raise ValueError(f"PatchWhitening: eps must be > 0, got {eps!r}")
        self.eps = float(eps)
        self.W.requires_grad = False  # fixed filters: the optimizer skips them

    def fit(self, x: Any) -> PatchWhitening:
        """Set the filters from images ``x`` (N, C, H, W), normalised as the training batches
        will be (a few thousand images are plenty). Returns self."""
        check_float_input("PatchWhitening.fit", x)
        check_ndim("PatchWhitening.fit", x, 4, self._expected())
        check_channels("PatchWhitening.fit", x, self.in_channels, self._expected())
        patches, _ = im2col(to_numpy(x), self.kernel_size, self.stride, self.pads)
        patches = patches.astype(np.float64)           # (N·Ho·Wo, d), (kh, kw, c) order
        if not np.isfinite(patches).all():
            raise ValueError("PatchWhitening.fit: the images hold NaN or inf values")
        sigma = patches.T @ patches / len(patches)      # Σ = E[p pᵀ]
        lam, V = np.linalg.eigh(sigma)                  # ascending eigenvalues
        lam, V = lam[::-1], V[:, ::-1]                  # largest first
        lam = np.maximum(lam, 0.0)                      # round-off can make tiny λ negative
        half = V.T / np.sqrt(lam + self.eps)[:, None]   # diag(λ + eps)^(-1/2) Vᵀ   (d, d)
        W_mat = np.concatenate([half, -half])           # (2d, d)
        kh, kw = self.kernel_size
        W = W_mat.reshape(self.out_channels, kh, kw, self.in_channels).transpose(0, 3, 1, 2)
        xp = get_array_module(self.W.data)
        self.W.data[...] = xp.asarray(W.astype(self.W.data.dtype))
        return self

    def extra_repr(self) -> str:
        return f"{self.in_channels}, kernel_size={self.kernel_size[0]}, eps={self.eps:g}"
