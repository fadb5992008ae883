"""Pooling: max and average over KH×KW windows, and global average pooling.

The windows come from the same strided view as ``im2col`` (``window_view``) and the backward
passes are ``col2im``, which adds each window entry's gradient back onto its input pixel
(summing where windows overlap, i.e. stride < kernel). Each pass of max and average pooling
is a named function of ``minicnn.functional.pooling`` (array code on NumPy, one kernel on
CuPy); the loop versions the tests compare with are in ``minicnn.functional.reference``.

Derivation: docs/derivations/pooling.md, docs/derivations/resampling.md
Tests: tests/test_pool.py, tests/test_adaptive_pool.py
"""

from __future__ import annotations

from typing import Any

from ..functional.im2col import normalize_padding, output_size, pair
from ..functional.pooling import (
    adaptive_avg_pool2d,
    adaptive_avg_pool2d_backward,
    avg_pool2d,
    avg_pool2d_backward,
    max_pool2d,
    max_pool2d_backward,
    stored_channels_last,
)
from .base import Layer, check_float_input, check_ndim

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "AdaptiveAvgPool2d"]


def _show(p: tuple[int, int]) -> Any:
    """(2, 2) -> 2 for the repr, like PyTorch shows what the user typed."""
    return p[0] if p[0] == p[1] else p


class _Pool2d(Layer):
    """Argument handling and input checks shared by MaxPool2d and AvgPool2d."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name)
        self.padding = pair(padding, "padding", name)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1 and padding >= 0, "
                             f"got {kernel_size!r}, {stride!r}, {padding!r}")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size, strict=True)):
            # As in PyTorch: otherwise a window could hold only padding.
            raise ValueError(f"{name}: padding must be at most half the kernel size, got "
                             f"padding={padding!r} for kernel_size={kernel_size!r}")
        self.pads = normalize_padding(self.padding, self.kernel_size, self.stride, name)

    def _check(self, x: Any) -> Any:
        name = type(self).__name__
        xp = check_float_input(name, x)
        check_ndim(name, x, 4, "(N, C, H, W)")
        output_size(x.shape, self.kernel_size, self.stride, self.pads, name)  # the window fits
        return xp

    def extra_repr(self) -> str:
        return (f"kernel_size={_show(self.kernel_size)}, stride={_show(self.stride)}, "
                f"padding={_show(self.padding)}")


class MaxPool2d(_Pool2d):
    """Max pooling: the largest value of each KH×KW window.

    Parameters
    ----------
    kernel_size : int or (KH, KW)
    stride : int or (sh, sw), default kernel_size
    padding : int or (ph, pw), default 0
        Padding with -inf (it is never the max), at most half the kernel (as in PyTorch).

    Forward
    -------
    y[n, c, i, j] = max_{a, b} x̃[n, c, i·sh + a, j·sw + b]  for x̃ the padded input;
    (N, C, H, W) -> (N, C, Ho, Wo), Ho = floor((H + 2·ph - KH) / sh) + 1.

    Backward
    --------
    Only the max of a window influenced the output, so dout flows to it alone:
    dx̃[n, c, i·sh + a, j·sw + b] += dout[n, c, i, j] if (a, b) holds the window's max. As a
    mask over the window positions, is_max (1 at the max), that is

        dx̃ = col2im(dout · is_max)

    On ties only the first such position (row-major window order) gets dout, as in PyTorch.
    ``minicnn.functional.pooling`` computes both passes: on NumPy the window max of the
    windows' strided view (``window_max``), the max found again in backward
    (``first_max_mask``), the forward keeping x (a reference) and y, the -inf padded copy
    scratch; on CuPy one kernel each, the forward keeping where each max is (one byte per
    output).

    The loop versions are ``reference.max_pool2d`` and ``reference.max_pool2d_backward``.
    """

    def forward(self, x: Any) -> Any:
        self._check(x)
        # y = max over each window of x padded with -inf; saved: where the max is, or x and y
        out, saved = max_pool2d(x, self.kernel_size, self.stride, self.pads)
        self.cache = (x.shape, saved)
        return out  # (N, C, Ho, Wo), stored channels-last

    def backward(self, dout: Any) -> Any:
        x_shape, saved = self.cached()
        # dx = col2im(dout · is_max), the padding cropped
        return max_pool2d_backward(dout, saved, x_shape, self.kernel_size, self.stride,
                                   self.pads)


class AvgPool2d(_Pool2d):
    """Average pooling: the mean of each KH×KW window.

    Parameters
    ----------
    kernel_size : int or (KH, KW)
    stride : int or (sh, sw), default kernel_size
    padding : int or (ph, pw), default 0
        Zero padding, at most half the kernel; the zeros count in the mean (PyTorch's
        ``count_include_pad=True``), so every window divides by KH·KW.

    Forward
    -------
    y[n, c, i, j] = 1/(KH·KW) · Σ_{a, b} x̃[n, c, i·sh + a, j·sw + b];
    (N, C, H, W) -> (N, C, Ho, Wo), Ho = floor((H + 2·ph - KH) / sh) + 1.

    Backward
    --------
    Every window entry gets the same share: dcols[n, i, j, a, b, c] = dout[n, c, i, j] / (KH·KW),
    and dx = col2im(dcols) (summing where windows overlap).

    The loop versions are ``reference.avg_pool2d`` and ``reference.avg_pool2d_backward``.
    """

    def forward(self, x: Any) -> Any:
        self._check(x)
        self.cache = tuple(x.shape)  # all backward needs: the shares are dout / (KH·KW)
        # y = the mean of each zero-padded window: (N, C, Ho, Wo)
        return avg_pool2d(x, self.kernel_size, self.stride, self.pads)

    def backward(self, dout: Any) -> Any:
        x_shape = self.cached()
        check_float_input("AvgPool2d", dout)
        # dx = col2im(dcols), every window entry's share dcols = dout / (KH·KW)
        return avg_pool2d_backward(dout, x_shape, self.kernel_size, self.stride, self.pads)


class GlobalAvgPool2d(Layer):
    """Global average pooling: the mean of each channel over all of H×W.

    Forward:  y[n, c] = 1/(H·W) · Σ_{h, w} x[n, c, h, w]      (N, C, H, W) -> (N, C)
    Backward: dx[n, c, h, w] = dout[n, c] / (H·W)            (N, C) -> (N, C, H, W)

    Used in place of Flatten + a big Linear at the end of ResNet-style networks.
    """

    def forward(self, x: Any) -> Any:
        check_float_input("GlobalAvgPool2d", x)
        check_ndim("GlobalAvgPool2d", x, 4, "(N, C, H, W)")
        self.cache = x  # only its shape and memory layout are used, for dx
        return x.mean(axis=(2, 3))

    def backward(self, dout: Any) -> Any:
        x = self.cached()
        xp = check_float_input("GlobalAvgPool2d", dout)
        H, W = x.shape[2:]
        dx = xp.empty_like(x, dtype=dout.dtype)  # keeps x's memory layout
        # broadcast straight into dx: one pass (a division, then a copy into dx, is two)
        xp.divide(dout[:, :, None, None], float(H * W), out=dx)
        return dx


class AdaptiveAvgPool2d(Layer):
    """Adaptive average pooling to a fixed output size, whatever the input's (PyTorch's rule).

    Parameters
    ----------
    output_size : int or (oh, ow)
        An entry None keeps that input size. AdaptiveAvgPool2d(1) is GlobalAvgPool2d with the
        (N, C, 1, 1) shape kept.

    Forward
    -------
    Output row i averages the input rows start_i <= h < end_i, start_i = floor(i·H/oh),
    end_i = ceil((i+1)·H/oh) (windows may overlap or differ in size when oh does not divide H;
    oh > H repeats rows), and likewise for the columns:

        y[n, c] = P_h · x[n, c] · P_wᵀ      P_h[i, h] = 1/(end_i − start_i) on row i's window

    (N, C, H, W) -> (N, C, oh, ow), with P_h (oh, H) and P_w (ow, W) the averaging matrices.

    Backward
    --------
    The map is linear, so dx is its transpose: dx[n, c] = P_hᵀ · dout[n, c] · P_w — every input
    pixel collects the share 1/(window size) of each window it lies in.

    Both passes are ``minicnn.functional.pooling``'s ``adaptive_avg_pool2d`` and
    ``adaptive_avg_pool2d_backward``: two GEMMs each, on the NHWC view when x is stored
    channels-last (y and dx then stay channels-last, on CuPy too).

    Derivation: docs/derivations/resampling.md (the matrices are those of
    ``minicnn.functional.resample``); loop versions ``reference.adaptive_avg_pool2d`` and
    ``reference.adaptive_avg_pool2d_backward``.
    """

    def __init__(self, output_size: Any):
        super().__init__()
        pair = (tuple(output_size) if isinstance(output_size, (tuple, list))
                else (output_size, output_size))
        if len(pair) != 2 or not all(
                s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 1)
                for s in pair):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be a positive integer, None "
                             f"or a pair (oh, ow) of them, got {output_size!r}")
        self.output_size = pair

    def _out_hw(self, H: int, W: int) -> tuple[int, int]:
        oh, ow = self.output_size
        return (H if oh is None else oh, W if ow is None else ow)

    def forward(self, x: Any) -> Any:
        check_float_input("AdaptiveAvgPool2d", x)
        check_ndim("AdaptiveAvgPool2d", x, 4, "(N, C, H, W)")
        # All backward needs: the matrices come from the shapes; dx takes x's memory layout.
        self.cache = (tuple(x.shape), stored_channels_last(x))
        # y = P_h · x · P_wᵀ, in x's memory layout
        return adaptive_avg_pool2d(x, self._out_hw(*x.shape[2:]))

    def backward(self, dout: Any) -> Any:
        x_shape, channels_last = self.cached()
        check_float_input("AdaptiveAvgPool2d", dout)
        N, C, H, W = x_shape
        out_shape = (N, C, *self._out_hw(H, W))
        if tuple(dout.shape) != out_shape:
            raise ValueError(f"AdaptiveAvgPool2d.backward: dout must have the output's shape "
                             f"{out_shape}, got {tuple(dout.shape)}")
        # dx = P_hᵀ · dout · P_w, in x's memory layout
        return adaptive_avg_pool2d_backward(dout, x_shape, channels_last)

    def extra_repr(self) -> str:
        oh, ow = self.output_size
        return f"output_size={oh if oh == ow else (oh, ow)}"
