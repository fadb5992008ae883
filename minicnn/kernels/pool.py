"""Launchers and NumPy twins of ``pool.cu``: max and average pooling, one launch per pass.

On CuPy, ``minicnn.functional.pooling`` calls these instead of its array code (for max pooling a
running ``maximum`` per window position, a mask found again in backward and a ``+=`` per
position: 4 to 60 launches per layer and step)::

    max_pool_forward    y = max over each window of x̃, argmax = where (first on ties)
    max_pool_backward   dx[pixel] = Σ dout over the windows whose argmax is that pixel
    avg_pool_forward    y = mean of each window of x̃ (zero padding counts)
    avg_pool_backward   dx[pixel] = Σ dout / (KH·KW) over the windows that cover it

x̃ is x padded by ``((top, bottom), (left, right))``: with -inf for max pooling, zeros for
average pooling, by bounds tests (no padded copy). x and dout are read through their own
strides (``minicnn.kernels.im2col.storage``); every output is a new C-contiguous channels-last
array, returned as its logical (N, C, ., .) view. The argmax is one byte per output, the
window position a·KW + b, so a window has at most 256 entries (``max_pool_fits``).

The twins compute the same in vectorised NumPy (the reference; the strict CPU stand-in for
CuPy runs them at each launch, tests/test_kernels_pool.py compares them with the array code
and, on g++, with the CUDA C).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import launch, twin
from .im2col import add_windows_back, geometry, padded_windows, storage, strided_view

__all__ = ["max_pool_fits", "max_pool_forward", "max_pool_backward", "avg_pool_forward",
           "avg_pool_backward"]

Pads = tuple[tuple[int, int], tuple[int, int]]


def max_pool_fits(kernel_size: tuple[int, int]) -> bool:
    """Whether the one-byte argmax can name every position of a KH×KW window."""
    return kernel_size[0] * kernel_size[1] <= 256


def _geometry(x_shape: tuple[int, ...], kernel_size: tuple[int, int], stride: tuple[int, int],
              padding: Pads, out_size: tuple[int, int]) -> tuple[np.int32, ...]:
    """The kernels' int arguments (``im2col.geometry``) for ``padding`` ((top, _), (left, _))."""
    (top, _), (left, _) = padding
    return geometry(x_shape, kernel_size, stride, (top, left), out_size)


def max_pool_forward(xp: Any, x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                     padding: Pads, out_size: tuple[int, int]) -> tuple[Any, Any]:
    """Max pooling of x (N, C, H, W), any layout, in one launch.

    Returns y (N, C, Ho, Wo), stored channels-last, and the argmax (N, Ho, Wo, C) uint8: the
    window position a·KW + b of each window's first max (what backward needs)."""
    N, C = x.shape[:2]
    Ho, Wo = out_size
    y = xp.empty((N, Ho, Wo, C), dtype=x.dtype)
    argmax = xp.empty((N, Ho, Wo, C), dtype=np.uint8)
    base, strides = storage(x)
    args = (base, y, argmax, *strides,
            *_geometry(x.shape, kernel_size, stride, padding, out_size), x.dtype.type(-np.inf))
    launch(xp, "pool", "pool_max_forward", x.dtype, y.size, args)
    return y.transpose(0, 3, 1, 2), argmax


def max_pool_backward(xp: Any, dout: Any, argmax: Any, x_shape: tuple[int, ...],
                      kernel_size: tuple[int, int], stride: tuple[int, int],
                      padding: Pads) -> Any:
    """dx (N, C, H, W), stored channels-last, from dout (N, C, Ho, Wo), any layout, and the
    forward's argmax: each window's dout onto its max, summed per pixel. One launch."""
    N, C, H, W = x_shape
    dx = xp.empty((N, H, W, C), dtype=dout.dtype)
    base, strides = storage(dout)
    args = (base, argmax, dx, *strides,
            *_geometry(x_shape, kernel_size, stride, padding, dout.shape[2:]))
    launch(xp, "pool", "pool_max_backward", dout.dtype, dx.size, args)
    return dx.transpose(0, 3, 1, 2)


def avg_pool_forward(xp: Any, x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                     padding: Pads, out_size: tuple[int, int]) -> Any:
    """y (N, C, Ho, Wo), stored channels-last: each window's mean of x (N, C, H, W), any
    layout (zero padding counts). One launch."""
    N, C = x.shape[:2]
    Ho, Wo = out_size
    y = xp.empty((N, Ho, Wo, C), dtype=x.dtype)
    base, strides = storage(x)
    args = (base, y, *strides, *_geometry(x.shape, kernel_size, stride, padding, out_size))
    launch(xp, "pool", "pool_avg_forward", x.dtype, y.size, args)
    return y.transpose(0, 3, 1, 2)


def avg_pool_backward(xp: Any, dout: Any, x_shape: tuple[int, ...],
                      kernel_size: tuple[int, int], stride: tuple[int, int],
                      padding: Pads) -> Any:
    """dx (N, C, H, W), stored channels-last, from dout (N, C, Ho, Wo), any layout: every
    window entry gets dout / (KH·KW), summed per pixel. One launch."""
    N, C, H, W = x_shape
    dx = xp.empty((N, H, W, C), dtype=dout.dtype)
    base, strides = storage(dout)
    args = (base, dx, *strides, *_geometry(x_shape, kernel_size, stride, padding,
                                           dout.shape[2:]))
    launch(xp, "pool", "pool_avg_backward", dout.dtype, dx.size, args)
    return dx.transpose(0, 3, 1, 2)


# -- the twins (the window helpers are im2col.py's) ----------------------------------------------

@twin("pool_max_forward")
def pool_max_forward_twin(x, y, argmax, s_n, s_c, s_h, s_w, N, C, H, W, KH, KW, sh, sw, top,
                          left, Ho, Wo, fill) -> None:
    """argmax = the first position of each window's max (``np.argmax``: first on ties, the
    first NaN if any), y = the entry there."""
    x4 = strided_view(x, (N, C, H, W), (s_n, s_c, s_h, s_w))
    windows = padded_windows(x4, KH, KW, sh, sw, top, left, Ho, Wo, fill).reshape(
        N, Ho, Wo, KH * KW, C)
    where = windows.argmax(axis=3)                                  # (N, Ho, Wo, C)
    argmax.reshape(N, Ho, Wo, C)[...] = where
    y.reshape(N, Ho, Wo, C)[...] = np.take_along_axis(windows, where[:, :, :, None], 3)[
        :, :, :, 0]


@twin("pool_max_backward")
def pool_max_backward_twin(dout, argmax, dx, d_n, d_c, d_h, d_w, N, C, H, W, KH, KW, sh, sw,
                           top, left, Ho, Wo) -> None:
    """Each window's dout at its argmax position, zero at the others, summed back per pixel."""
    d = strided_view(dout, (N, C, Ho, Wo), (d_n, d_c, d_h, d_w)).transpose(0, 2, 3, 1)
    is_max = argmax.reshape(N, Ho, Wo, 1, C) == np.arange(KH * KW).reshape(1, 1, 1, -1, 1)
    share = np.where(is_max, d[:, :, :, None, :], 0).astype(dx.dtype)
    dx.reshape(N, H, W, C)[...] = add_windows_back(share.reshape(N, Ho, Wo, KH, KW, C), H, W,
                                                   sh, sw, top, left)


@twin("pool_avg_forward")
def pool_avg_forward_twin(x, y, s_n, s_c, s_h, s_w, N, C, H, W, KH, KW, sh, sw, top, left,
                          Ho, Wo) -> None:
    """y = the sum of each zero-padded window / (KH·KW)."""
    x4 = strided_view(x, (N, C, H, W), (s_n, s_c, s_h, s_w))
    windows = padded_windows(x4, KH, KW, sh, sw, top, left, Ho, Wo, 0)
    total = windows.reshape(N, Ho, Wo, KH * KW, C).sum(axis=3)
    y.reshape(N, Ho, Wo, C)[...] = total / y.dtype.type(KH * KW)


@twin("pool_avg_backward")
def pool_avg_backward_twin(dout, dx, d_n, d_c, d_h, d_w, N, C, H, W, KH, KW, sh, sw, top, left,
                           Ho, Wo) -> None:
    """Σ dout over the windows covering each pixel, / (KH·KW)."""
    d = strided_view(dout, (N, C, Ho, Wo), (d_n, d_c, d_h, d_w)).transpose(0, 2, 3, 1)
    share = np.broadcast_to(d[:, :, :, None, None, :], (N, Ho, Wo, KH, KW, C))
    total = add_windows_back(share, H, W, sh, sw, top, left)
    dx.reshape(N, H, W, C)[...] = total / dx.dtype.type(KH * KW)
