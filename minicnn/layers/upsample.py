"""Upsampling by an integer factor: nearest neighbour or bilinear (align_corners=False).

Both modes are linear maps that act on the rows and the columns separately, so the layer is
two small matrices (``minicnn.functional.resample``): y = R_h · x · R_wᵀ per channel, and the
backward pass is the transposed map dx = R_hᵀ · dout · R_w. The loop versions the tests compare
with are ``reference.upsample2d`` and ``reference.upsample2d_backward``.

Derivation: docs/derivations/resampling.md
Tests: tests/test_upsample.py
"""

from __future__ import annotations

from typing import Any

from ..functional.resample import resample, resample_backward, resampling_matrices
from .base import Layer, check_float_input, check_ndim

__all__ = ["Upsample"]

MODES = ("nearest", "bilinear")


def _scale_pair(scale_factor: Any) -> tuple[int, int]:
    """2 -> (2, 2); (sh, sw) kept; each a positive integer."""
    pair = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                 for s in pair):
        raise ValueError(f"Upsample: scale_factor must be a positive integer or a pair (sh, sw) "
                         f"of them, got {scale_factor!r}")
    return pair


class Upsample(Layer):
    """Upsampling of the spatial axes by integer factors (PyTorch's ``nn.Upsample``).

    Parameters
    ----------
    scale_factor : int or (sh, sw)
        Positive integers: (N, C, H, W) -> (N, C, sh·H, sw·W).
    mode : "nearest" or "bilinear", default "nearest"
        Bilinear uses align_corners=False, PyTorch's default. Kept as the attribute
        ``interpolation`` (``mode`` is ``Layer.mode()``, the train/eval switch of every layer).

    Forward
    -------
    y[n, c] = R_h · x[n, c] · R_wᵀ, with R_h (Ho, H) and R_w (Wo, W) the 1-D resampling matrices:

    - nearest: R[i, floor(i / s)] = 1, so y[n, c, i, j] = x[n, c, floor(i/sh), floor(j/sw)];
    - bilinear: output sample i sits at s_i = (i + 0.5)/s − 0.5 in the input (clamped to
      [0, H − 1]); with lo = floor(s_i) and λ_i = s_i − lo, R[i, lo] = 1 − λ_i and
      R[i, min(lo + 1, H − 1)] += λ_i.

    Backward
    --------
    y is linear in x, y = A x with A = R_h ⊗ R_w, so dx = Aᵀ dout:

        dx[n, c] = R_hᵀ · dout[n, c] · R_w

    every input pixel collects dout times each weight it was used with. No parameters; the
    forward keeps only x's shape (the matrices are rebuilt, or found in a small cache).
    """

    def __init__(self, scale_factor: Any = 2, mode: str = "nearest"):
        super().__init__()
        self.scale_factor = _scale_pair(scale_factor)
        if mode not in MODES:
            raise ValueError(f"Upsample: mode must be one of {MODES}, got {mode!r}")
        self.interpolation = mode  # not `mode`: that name is Layer.mode(), the train/eval switch

    def forward(self, x: Any) -> Any:
        check_float_input("Upsample", x)
        check_ndim("Upsample", x, 4, "(N, C, H, W)")
        N, C, H, W = x.shape
        sh, sw = self.scale_factor
        R_h, R_w = resampling_matrices(x, (H, W), (sh * H, sw * W), self.interpolation)
        self.cache = tuple(x.shape)    # all backward needs: the matrices come from the shapes
        return resample(x, R_h, R_w)   # y = R_h · x · R_wᵀ

    def backward(self, dout: Any) -> Any:
        x_shape = self.cached()
        check_float_input("Upsample", dout)
        N, C, H, W = x_shape
        sh, sw = self.scale_factor
        if tuple(dout.shape) != (N, C, sh * H, sw * W):
            raise ValueError(f"Upsample.backward: dout must have the output's shape "
                             f"{(N, C, sh * H, sw * W)}, got {tuple(dout.shape)}")
        R_h, R_w = resampling_matrices(dout, x_shape[2:], dout.shape[2:], self.interpolation)
        return resample_backward(dout, R_h, R_w)      # dx = R_hᵀ · dout · R_w

    def extra_repr(self) -> str:
        sh, sw = self.scale_factor
        return f"scale_factor={sh if sh == sw else (sh, sw)}, mode={self.interpolation!r}"
