"""Pooling: max and average over KH×KW windows, and global average pooling.

The windows come from the same strided view as ``im2col`` (``window_view``) and the backward
passes reuse ``col2im``, which adds each window entry's gradient back onto its input pixel
(summing where windows overlap, i.e. stride < kernel).
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from ..functional.im2col import (
    col2im,
    normalize_padding,
    output_size,
    pad_channels_last,
    pair,
    window_slices,
    window_view,
)
from .base import Layer, check_float_input, check_ndim

__all__ = ["MaxPool2d", "AvgPool2d", "GlobalAvgPool2d"]


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


def first_max(is_max: Any) -> Any:
    """Keep only the first True of each window along axis 0, in place; returns ``is_max``.

    ``is_max`` (K, ...) bool marks the K window entries equal to the window's max. Where several
    tie, the gradient goes to the first of them alone (PyTorch's choice), so a later position
    keeps its True only if no earlier one had it: ``is_max[k] &= ~claimed``, written
    ``is_max[k] > claimed`` (one pass, no negated temporary).
    """
    xp = get_array_module(is_max)
    claimed = is_max[0].copy()
    for k in range(1, is_max.shape[0]):
        xp.greater(is_max[k], claimed, out=is_max[k])
        if k < is_max.shape[0] - 1:
            claimed |= is_max[k]
    return is_max


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

    Computed with a loop over the KH·KW kernel positions (4 steps for 2×2), each step
    vectorised over the whole batch: a running ``maximum`` of the window entries.

    Backward
    --------
    Only the max of a window influenced the output, so dout flows to it alone:
    dx̃[n, c, i·sh + a, j·sw + b] += dout[n, c, i, j] if (a, b) holds the window's max.
    The max is found again in one comparison of all window entries with the output,
    ``is_max[a, b, n, i, j, c] = (window entry == y)``; on ties only the first such position
    (row-major window order) keeps its True, as in PyTorch (``first_max``). Then
    dx̃ = dout · is_max, in one pass when the windows tile the input, else with a loop over the
    kernel positions adding each one's share into a strided slice of dx̃ (where windows
    overlap, i.e. stride < kernel, a pixel collects from several).

    (Storing an argmax in the forward pass instead reads naturally, but NumPy's masked
    assignments — ``np.where``, ``copyto(where=)`` — are 5x slower than the comparisons used
    here, so the max pool would cost more than the convolution before it.)
    """

    def forward(self, x: Any) -> Any:
        xp = self._check(x)
        x_p = pad_channels_last(x, self.pads, value=float("-inf"))
        windows = window_view(x_p, self.kernel_size, self.stride)  # (N, Ho, Wo, KH, KW, C)
        kh, kw = self.kernel_size
        out = windows[:, :, :, 0, 0, :].copy()                      # running max (N, Ho, Wo, C)
        for k in range(1, kh * kw):
            xp.maximum(out, windows[:, :, :, k // kw, k % kw, :], out=out)
        self.cache = (windows, out, x.shape)
        return out.transpose(0, 3, 1, 2)  # (N, C, Ho, Wo), stored channels-last

    def backward(self, dout: Any) -> Any:
        windows, out, x_shape = self.cached()
        xp = get_array_module(out)
        N, Ho, Wo, C = out.shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (top, bottom), (left, right) = self.pads
        H, W = x_shape[2:]
        dout_nhwc = dout.transpose(0, 2, 3, 1)                       # (N, Ho, Wo, C), a view
        Hp, Wp = H + top + bottom, W + left + right
        # Windows that tile the input exactly (the common 2×2 / stride 2 on an even size):
        # every pixel is in one window, so dx̃ is *assigned* once, no zeros needed.
        tiled = (sh, sw) == (kh, kw) and Ho * kh == Hp and Wo * kw == Wp
        dx_p = (xp.empty if tiled else xp.zeros)((N, Hp, Wp, C), dtype=dout.dtype)
        # One comparison for all kernel positions (a faster pass than one per position). It
        # comes out in x's memory order; the reshape copies the (4x smaller) bool result to
        # position-major, so that each position's mask is contiguous for ``first_max``.
        # (Working on the strided masks instead measured the same.)
        is_max = xp.equal(windows.transpose(3, 4, 0, 1, 2, 5), out)  # (KH, KW, N, Ho, Wo, C)
        is_max = first_max(is_max.reshape(kh * kw, N, Ho, Wo, C))
        if tiled:
            # dx̃ seen as (N, Ho, KH, Wo, KW, C) blocks, filled in one sequential pass.
            blocks = dx_p.reshape(N, Ho, kh, Wo, kw, C)
            xp.multiply(dout_nhwc[:, :, None, :, None, :],
                        is_max.reshape(kh, kw, N, Ho, Wo, C).transpose(2, 3, 0, 4, 1, 5),
                        out=blocks)
        else:
            positions = window_slices(self.kernel_size, self.stride, (Ho, Wo))
            for k, (_, _, index) in enumerate(positions):
                dx_p[index] += dout_nhwc * is_max[k]
        return dx_p[:, top:top + H, left:left + W, :].transpose(0, 3, 1, 2)


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
    """

    def forward(self, x: Any) -> Any:
        self._check(x)
        x_p = pad_channels_last(x, self.pads, value=0.0)
        windows = window_view(x_p, self.kernel_size, self.stride)  # (N, Ho, Wo, KH, KW, C)
        self.cache = tuple(x.shape)  # all backward needs: the shares are dout / (KH·KW)
        return windows.mean(axis=(3, 4)).transpose(0, 3, 1, 2)   # (N, C, Ho, Wo)

    def backward(self, dout: Any) -> Any:
        x_shape = self.cached()
        xp = check_float_input("AvgPool2d", dout)
        kh, kw = self.kernel_size
        N, C, Ho, Wo = dout.shape
        share = dout.transpose(0, 2, 3, 1) / float(kh * kw)        # (N, Ho, Wo, C)
        # The same share for every (a, b) of a window: a broadcast view, not a copy.
        dcols = xp.broadcast_to(share[:, :, :, None, None, :], (N, Ho, Wo, kh, kw, C))
        return col2im(dcols, x_shape, self.kernel_size, self.stride, self.pads)


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
        dx[...] = (dout / float(H * W))[:, :, None, None]
        return dx
