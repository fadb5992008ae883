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
from .im2col import storage

__all__ = ["max_pool_fits", "max_pool_forward", "max_pool_backward", "avg_pool_forward",
           "avg_pool_backward"]

Pads = tuple[tuple[int, int], tuple[int, int]]


def max_pool_fits(kernel_size: tuple[int, int]) -> bool:
    """Whether the one-byte argmax can name every position of a KH×KW window."""
    return kernel_size[0] * kernel_size[1] <= 256


def _geometry(x_shape: tuple[int, ...], kernel_size: tuple[int, int], stride: tuple[int, int],
              padding: Pads, out_size: tuple[int, int]) -> tuple[np.int32, ...]:
    """(N, C, H, W, KH, KW, sh, sw, top, left, Ho, Wo) as the kernels' int arguments."""
    (kh, kw), (sh, sw), ((top, _), (left, _)) = kernel_size, stride, padding
    values = (*x_shape, kh, kw, sh, sw, top, left, *out_size)
    N, C, H, W = x_shape
    if max(N * H * W, N * out_size[0] * out_size[1]) > 2**31 - 1:
        raise ValueError("kernels.pool: more than 2^31 - 1 pixels: the kernels index them "
                         "with 32-bit ints")
    return tuple(np.int32(v) for v in values)


def _strides(a: Any) -> tuple[Any, tuple[np.int64, ...]]:
    base, strides = storage(a)
    return base, tuple(np.int64(s) for s in strides)


def max_pool_forward(xp: Any, x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                     padding: Pads, out_size: tuple[int, int]) -> tuple[Any, Any]:
    """(y, argmax): y (N, C, Ho, Wo) stored channels-last and the first max's window position
    (N, Ho, Wo, C) uint8, in one launch."""
    N, C = x.shape[:2]
    Ho, Wo = out_size
    y = xp.empty((N, Ho, Wo, C), dtype=x.dtype)
    argmax = xp.empty((N, Ho, Wo, C), dtype=np.uint8)
    base, strides = _strides(x)
    args = (base, y, argmax, *strides, *_geometry(x.shape, kernel_size, stride, padding,
                                                  out_size), x.dtype.type(-np.inf))
    launch(xp, "pool", "pool_max_forward", x.dtype, y.size, args)
    return y.transpose(0, 3, 1, 2), argmax


def max_pool_backward(xp: Any, dout: Any, argmax: Any, x_shape: tuple[int, ...],
                      kernel_size: tuple[int, int], stride: tuple[int, int],
                      padding: Pads) -> Any:
    """dx (N, C, H, W) stored channels-last: each window's dout onto its argmax, one launch."""
    N, C, H, W = x_shape
    dx = xp.empty((N, H, W, C), dtype=dout.dtype)
    base, strides = _strides(dout)
    args = (base, argmax, dx, *strides,
            *_geometry(x_shape, kernel_size, stride, padding, dout.shape[2:]))
    launch(xp, "pool", "pool_max_backward", dout.dtype, dx.size, args)
    return dx.transpose(0, 3, 1, 2)


def avg_pool_forward(xp: Any, x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                     padding: Pads, out_size: tuple[int, int]) -> Any:
    """y (N, C, Ho, Wo) stored channels-last: each window's mean (zero padding counts)."""
    N, C = x.shape[:2]
    Ho, Wo = out_size
    y = xp.empty((N, Ho, Wo, C), dtype=x.dtype)
    base, strides = _strides(x)
    args = (base, y, *strides, *_geometry(x.shape, kernel_size, stride, padding, out_size))
    launch(xp, "pool", "pool_avg_forward", x.dtype, y.size, args)
    return y.transpose(0, 3, 1, 2)


def avg_pool_backward(xp: Any, dout: Any, x_shape: tuple[int, ...],
                      kernel_size: tuple[int, int], stride: tuple[int, int],
                      padding: Pads) -> Any:
    """dx (N, C, H, W) stored channels-last: every window entry gets dout / (KH·KW)."""
    N, C, H, W = x_shape
    dx = xp.empty((N, H, W, C), dtype=dout.dtype)
    base, strides = _strides(dout)
    args = (base, dx, *strides, *_geometry(x_shape, kernel_size, stride, padding,
                                           dout.shape[2:]))
    launch(xp, "pool", "pool_avg_backward", dout.dtype, dx.size, args)
    return dx.transpose(0, 3, 1, 2)


# -- the twins ---------------------------------------------------------------------------------

def _logical(buffer: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    """The array a kernel sees at ``buffer`` through element ``strides`` (read-only view)."""
    flat = buffer.reshape(-1)
    return np.lib.stride_tricks.as_strided(
        flat, shape=shape, strides=tuple(int(s) * flat.itemsize for s in strides),
        writeable=False)


def _padded_nhwc(x4: np.ndarray, KH, KW, sh, sw, top, left, Ho, Wo, fill) -> np.ndarray:
    """x (N, C, H, W) copied channels-last into a ``fill`` buffer at (top, left), large enough
    for all Ho×Wo windows."""
    N, C, H, W = x4.shape
    Hp, Wp = max(top + H, (Ho - 1) * sh + KH), max(left + W, (Wo - 1) * sw + KW)
    x_p = np.full((N, Hp, Wp, C), fill, dtype=x4.dtype)
    x_p[:, top:top + H, left:left + W, :] = x4.transpose(0, 2, 3, 1)
    return x_p


def _windows(x_p: np.ndarray, KH, KW, sh, sw, Ho, Wo) -> np.ndarray:
    """(N, Ho, Wo, KH·KW, C): window entries in row-major position order (a view)."""
    N, _, _, C = x_p.shape
    t_n, t_h, t_w, t_c = x_p.strides
    return np.lib.stride_tricks.as_strided(
        x_p, shape=(N, Ho, Wo, KH, KW, C),
        strides=(t_n, sh * t_h, sw * t_w, t_h, t_w, t_c)).reshape(N, Ho, Wo, KH * KW, C)


def _gather_back(share: np.ndarray, N, C, H, W, KH, KW, sh, sw, top, left, Ho, Wo
                 ) -> np.ndarray:
    """dx (N, H, W, C): Σ of share[n, i, j, a·KW + b, c] onto the pixel x̃[i·sh + a, j·sw + b],
    position by position in (a, b) order, the padding cut."""
    Hp, Wp = max(top + H, (Ho - 1) * sh + KH), max(left + W, (Wo - 1) * sw + KW)
    dx_p = np.zeros((N, Hp, Wp, C), dtype=share.dtype)
    for a in range(KH):
        for b in range(KW):
            dx_p[:, a:a + sh * Ho:sh, b:b + sw * Wo:sw, :] += share[:, :, :, a * KW + b, :]
    return dx_p[:, top:top + H, left:left + W, :]


@twin("pool_max_forward")
def pool_max_forward_twin(x, y, argmax, s_n, s_c, s_h, s_w, N, C, H, W, KH, KW, sh, sw, top,
                          left, Ho, Wo, fill) -> None:
    """argmax = the first position of each window's max (``np.argmax``: first on ties, the
    first NaN if any), y = the entry there."""
    x_p = _padded_nhwc(_logical(x, (N, C, H, W), (s_n, s_c, s_h, s_w)), KH, KW, sh, sw, top,
                       left, Ho, Wo, fill)
    windows = _windows(x_p, KH, KW, sh, sw, Ho, Wo)                 # (N, Ho, Wo, K, C)
    where = windows.argmax(axis=3)                                  # (N, Ho, Wo, C)
    argmax.reshape(N, Ho, Wo, C)[...] = where
    y.reshape(N, Ho, Wo, C)[...] = np.take_along_axis(windows, where[:, :, :, None], 3)[
        :, :, :, 0]


@twin("pool_max_backward")
def pool_max_backward_twin(dout, argmax, dx, d_n, d_c, d_h, d_w, N, C, H, W, KH, KW, sh, sw,
                           top, left, Ho, Wo) -> None:
    """Each window's dout at its argmax position, zero at the others, summed back per pixel."""
    d = _logical(dout, (N, C, Ho, Wo), (d_n, d_c, d_h, d_w)).transpose(0, 2, 3, 1)
    is_max = argmax.reshape(N, Ho, Wo, 1, C) == np.arange(KH * KW).reshape(1, 1, 1, -1, 1)
    share = np.where(is_max, d[:, :, :, None, :], 0).astype(dx.dtype)
    dx.reshape(N, H, W, C)[...] = _gather_back(share, N, C, H, W, KH, KW, sh, sw, top, left,
                                               Ho, Wo)


@twin("pool_avg_forward")
def pool_avg_forward_twin(x, y, s_n, s_c, s_h, s_w, N, C, H, W, KH, KW, sh, sw, top, left,
                          Ho, Wo) -> None:
    """y = the sum of each zero-padded window / (KH·KW)."""
    x_p = _padded_nhwc(_logical(x, (N, C, H, W), (s_n, s_c, s_h, s_w)), KH, KW, sh, sw, top,
                       left, Ho, Wo, 0)
    total = _windows(x_p, KH, KW, sh, sw, Ho, Wo).sum(axis=3)
    y.reshape(N, Ho, Wo, C)[...] = total / y.dtype.type(KH * KW)


@twin("pool_avg_backward")
def pool_avg_backward_twin(dout, dx, d_n, d_c, d_h, d_w, N, C, H, W, KH, KW, sh, sw, top, left,
                           Ho, Wo) -> None:
    """Σ dout over the windows covering each pixel, / (KH·KW)."""
    d = _logical(dout, (N, C, Ho, Wo), (d_n, d_c, d_h, d_w)).transpose(0, 2, 3, 1)
    share = np.broadcast_to(d[:, :, :, None, :], (N, Ho, Wo, KH * KW, C))
    total = _gather_back(share, N, C, H, W, KH, KW, sh, sw, top, left, Ho, Wo)
    dx.reshape(N, H, W, C)[...] = total / dx.dtype.type(KH * KW)
