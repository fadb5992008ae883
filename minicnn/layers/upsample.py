"""Upsampling (and resizing) by any scale or to a given size: nearest neighbour or bilinear
(align_corners=False), PyTorch's ``nn.Upsample`` / ``F.interpolate`` rules included.

Both modes are linear maps that act on the rows and the columns separately, so the layer is
two small matrices (``minicnn.functional.resample``): y = R_h · x · R_wᵀ per channel, and the
backward pass is the transposed map dx = R_hᵀ · dout · R_w. The loop versions the tests compare
with are ``reference.upsample2d`` and ``reference.upsample2d_backward`` (integer scales) and
the twin in tests/test_upsample.py (any scale or size).

Derivation: docs/derivations/resampling.md
Tests: tests/test_upsample.py
"""

from __future__ import annotations

import math
from typing import Any

from ..functional.resample import (
    resample,
    resample_backward,
    resampling_matrices,
    stored_channels_last,
)
from .base import Layer, check_float_input, check_ndim

__all__ = ["Upsample"]

MODES = ("nearest", "bilinear")


def _pair(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 2


def _scale_pair(scale_factor: Any) -> tuple[float, float]:
    """2 -> (2, 2); 1.5 -> (1.5, 1.5); (sh, sw) kept; each a positive finite number."""
    pair = _pair(scale_factor)
    if len(pair) != 2 or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                 and math.isfinite(s) and s > 0 for s in pair):
        raise ValueError(f"Upsample: scale_factor must be a positive number or a pair (sh, sw) "
                         f"of them, got {scale_factor!r}")
    return pair


def _size_pair(size: Any) -> tuple[int, int]:
    """8 -> (8, 8); (Ho, Wo) kept; each a positive integer."""
    pair = _pair(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                 for s in pair):
        raise ValueError(f"Upsample: size must be a positive integer or a pair (H_out, W_out) "
                         f"of them, got {size!r}")
    return pair


class Upsample(Layer):
    """Resampling of the spatial axes (PyTorch's ``nn.Upsample``): by a scale, or to a size.

    Parameters
    ----------
    scale_factor : number or (sh, sw), optional
        Positive, integer or not (1.5; below 1 shrinks): (N, C, H, W) -> (N, C, Ho, Wo) with
        Ho = floor(sh·H), Wo = floor(sw·W).
    mode : "nearest" or "bilinear", default "nearest"
        Bilinear uses align_corners=False, PyTorch's default. Kept as the attribute
        ``interpolation`` (``mode`` is ``Layer.mode()``, the train/eval switch of every layer).
    size : int or (Ho, Wo), optional
        The output's spatial size instead of a scale (exactly one of the two is given).
    recompute_scale_factor : bool, default False
        PyTorch's flag: True places the samples from the sizes (r = H/Ho) even when a scale
        was given; False (PyTorch's default) from the scale itself (r = 1/sh). The two differ
        when sh·H is not an integer.

    Forward
    -------
    y[n, c] = R_h · x[n, c] · R_wᵀ, with R_h (Ho, H) and R_w (Wo, W) the 1-D resampling matrices.
    Output sample i of an axis sits at input coordinate i·r (nearest) or (i + 0.5)·r − 0.5
    (bilinear: pixel centres), with r = 1/sh for a scale, H/Ho for a size:

    - nearest: R[i, min(floor(i·r), H − 1)] = 1 (floor(i/s) for an integer scale s), the index
      computed in float32 as PyTorch does;
    - bilinear: s_i = max((i + 0.5)·r − 0.5, 0); with lo = floor(s_i) and λ_i = s_i − lo,
      R[i, lo] = 1 − λ_i and R[i, min(lo + 1, H − 1)] += λ_i.

    As in PyTorch, an axis whose size does not change is copied (R = I), and nearest with
    Ho = 2H takes floor(i/2), whatever the scale that led there.

    Backward
    --------
    y is linear in x, y = A x with A = R_h ⊗ R_w, so dx = Aᵀ dout:

        dx[n, c] = R_hᵀ · dout[n, c] · R_w

    every input pixel collects dout times each weight it was used with (nearest: the sum of
    dout over the output pixels that copied it; bilinear: the four weights of each output
    pixel sent back to its four neighbours). No parameters; the forward keeps only x's shape
    (the matrices are rebuilt, or found in a small cache) and its memory layout: y and dx
    are stored like x (NCHW, or channels-last on CuPy after a convolution).
    """

    def __init__(self, scale_factor: Any = None, mode: str = "nearest", *, size: Any = None,
                 recompute_scale_factor: bool | None = False):
        super().__init__()
        if (scale_factor is None) == (size is None):
            raise ValueError(f"Upsample: give exactly one of scale_factor and size, got "
                             f"scale_factor={scale_factor!r}, size={size!r}")
        self.scale_factor = None if scale_factor is None else _scale_pair(scale_factor)
        self.size = None if size is None else _size_pair(size)
        if mode not in MODES:
            raise ValueError(f"Upsample: mode must be one of {MODES}, got {mode!r}")
        self.interpolation = mode  # not `mode`: that name is Layer.mode(), the train/eval switch
        self.recompute_scale_factor = bool(recompute_scale_factor)

    def output_hw(self, H: int, W: int) -> tuple[int, int]:
        """(Ho, Wo) for an (H, W) input: ``size``, or (floor(sh·H), floor(sw·W))."""
        if self.size is not None:
            return self.size
        sh, sw = self.scale_factor
        Ho, Wo = math.floor(H * sh), math.floor(W * sw)
        if Ho < 1 or Wo < 1:
            raise ValueError(f"Upsample: scale_factor {self._scale_repr()} takes a {H}×{W} "
                             f"input to {Ho}×{Wo}: the output needs at least one pixel")
        return Ho, Wo

    def _sample_scales(self) -> tuple[float, float] | None:
        """The scales the sample positions come from, or None: from the sizes."""
        return None if self.size is not None or self.recompute_scale_factor \
            else self.scale_factor

    def forward(self, x: Any) -> Any:
        check_float_input("Upsample", x)
        check_ndim("Upsample", x, 4, "(N, C, H, W)")
        H, W = x.shape[2:]
        R_h, R_w = resampling_matrices(x, (H, W), self.output_hw(H, W), self.interpolation,
                                       self._sample_scales())
        # All backward needs: the matrices come from the shapes; dx takes x's memory layout.
        self.cache = (tuple(x.shape), stored_channels_last(x))
        return resample(x, R_h, R_w)   # y = R_h · x · R_wᵀ, in x's memory layout

    def backward(self, dout: Any) -> Any:
        x_shape, channels_last = self.cached()
        check_float_input("Upsample", dout)
        N, C, H, W = x_shape
        out_hw = self.output_hw(H, W)
        if tuple(dout.shape) != (N, C, *out_hw):
            raise ValueError(f"Upsample.backward: dout must have the output's shape "
                             f"{(N, C, *out_hw)}, got {tuple(dout.shape)}")
        R_h, R_w = resampling_matrices(dout, (H, W), out_hw, self.interpolation,
                                       self._sample_scales())
        return resample_backward(dout, R_h, R_w, channels_last)  # dx = R_hᵀ · dout · R_w

    def _scale_repr(self) -> str:
        sh, sw = self.scale_factor
        return repr(sh) if sh == sw else repr((sh, sw))

    def extra_repr(self) -> str:
        if self.size is not None:
            Ho, Wo = self.size
            what = f"size={Ho if Ho == Wo else (Ho, Wo)}"
        else:
            what = f"scale_factor={self._scale_repr()}"
        extra = ", recompute_scale_factor=True" if self.recompute_scale_factor and \
            self.size is None else ""
        return f"{what}, mode={self.interpolation!r}{extra}"
