"""Pooling's passes: the window max, where it is (the first on ties), dx from it; the mean.

``MaxPool2d`` computes, over the windows of the padded input x̃ (``window_view``: the view
(N, Ho, Wo, KH, KW, C) with ``windows[n, i, j, a, b, c] = x̃[n, c, i·sh + a, j·sw + b]``)::

    y       = max over (a, b) of the window                        window_max
    is_max  = 1 at the window's max, 0 elsewhere (first on ties)    first_max_mask
    dx̃      = col2im(dout · is_max), cropped to x                  max_pool_input_grad

(docs/derivations/pooling.md), and ``AvgPool2d`` the mean of each zero-padded window and
``dx̃ = col2im(dout / (KH·KW))``. The layers call one function per pass: ``max_pool2d`` /
``max_pool2d_backward``, ``avg_pool2d`` / ``avg_pool2d_backward`` and, for
``AdaptiveAvgPool2d``, ``adaptive_avg_pool2d`` / ``adaptive_avg_pool2d_backward`` (the
averaging matrices of ``minicnn.functional.resample``, multiplied in the input's memory
layout, docs/derivations/resampling.md). On NumPy they run the
array code named above; on CuPy one kernel each (``minicnn.kernels.pool``: the max and a
one-byte argmax in one launch, each dx a gather in one launch), where the array code is 4 to
60 launches per layer and step. Each function names the simple function of
``minicnn.functional.reference`` it equals; tests/test_pool.py and tests/test_kernels_pool.py
compare them.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from ..kernels import pool as pool_kernels
from ..kernels import uses_kernels
from .im2col import Pads, col2im, output_size, pad_channels_last, window_slices, window_view
from .resample import resample, resample_backward, resampling_matrices
from .scratch import scratch

__all__ = ["window_max", "first_max", "first_max_mask", "max_pool_input_grad", "max_pool2d",
           "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "stored_channels_last",
           "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward"]


def window_max(windows: Any) -> Any:
    """The max of every window: ``windows.max(axis=(3, 4))``, (N, Ho, Wo, C), C-contiguous.

    Equals ``reference.max_pool2d`` (one window at a time) on the windows of the padded
    input. Computed as a running ``maximum`` over the KH·KW kernel positions, each step
    vectorised over the whole batch.

    Parameters
    ----------
    windows : array (N, Ho, Wo, KH, KW, C), the ``window_view`` of the padded input
    """
    xp = get_array_module(windows)
    kw = windows.shape[4]
    out = windows[:, :, :, 0, 0, :].copy()                    # running max (N, Ho, Wo, C)
    for k in range(1, windows.shape[3] * kw):
        xp.maximum(out, windows[:, :, :, k // kw, k % kw, :], out=out)
    return out


def first_max(is_max: Any) -> Any:
    """Keep only the first True of each window along axis 0, in place; returns ``is_max``.

    ``is_max`` (K, ...) bool marks the K window entries equal to the window's max. Where several
    tie, the gradient goes to the first of them alone (PyTorch's choice), so a later position
    keeps its True only if no earlier one had it: ``is_max[k] &= ~claimed``, written
    ``is_max[k] > claimed`` (one pass, no negated temporary). Equals, per window, ``argmax``
    of the entries (``reference.max_pool2d_backward``'s choice).
    """
    xp = get_array_module(is_max)
    claimed = is_max[0].copy()
    for k in range(1, is_max.shape[0]):
        xp.greater(is_max[k], claimed, out=is_max[k])
        if k < is_max.shape[0] - 1:
            claimed |= is_max[k]
    return is_max


def first_max_mask(windows: Any, out: Any) -> Any:
    """Where each window's max is: a bool mask (KH·KW, N, Ho, Wo, C), one True per window.

    ``is_max[a·KW + b, n, i, j, c]`` is True for the first (row-major) window position (a, b)
    whose entry equals the window's max ``out[n, i, j, c]``: the position
    ``reference.max_pool2d_backward`` finds with ``argmax``, one window at a time.

    The max is found again (not stored by the forward) in one comparison of all window
    entries with the output, a faster pass than one per position. It comes out in x's memory
    order; the reshape copies the (4x smaller) bool result to position-major, so that each
    position's mask is contiguous for ``first_max``, which resolves the ties.

    Parameters
    ----------
    windows : array (N, Ho, Wo, KH, KW, C), the forward's ``window_view``
    out : array (N, Ho, Wo, C), the forward's ``window_max(windows)``
    """
    xp = get_array_module(out)
    N, Ho, Wo, kh, kw, C = windows.shape
    is_max = xp.equal(windows.transpose(3, 4, 0, 1, 2, 5), out)  # (KH, KW, N, Ho, Wo, C)
    return first_max(is_max.reshape(kh * kw, N, Ho, Wo, C))


def max_pool_input_grad(dout: Any, is_max: Any, x_shape: tuple[int, ...],
                        kernel_size: tuple[int, int], stride: tuple[int, int],
                        padding: Pads) -> Any:
    """dx = col2im(dout · is_max): each window's dout onto the pixel of its max.

    Equals ``col2im(dcols, x_shape, kernel_size, stride, padding)`` with
    ``dcols[n, i, j, a, b, c] = dout[n, c, i, j] · is_max[a·KW + b, n, i, j, c]``, and, with
    ``is_max = first_max_mask(...)``, ``reference.max_pool2d_backward``::

        dx̃[n, c, i·sh + a*, j·sw + b*] += dout[n, c, i, j]    (a*, b*) the window's max

    When the windows tile the padded input exactly (stride = kernel, the common 2×2 / stride 2
    on an even size) every pixel lies in one window, so dx̃ is *assigned* in one sequential
    pass, with no zeros first; otherwise each kernel position adds its share into a strided
    slice of dx̃ (where windows overlap, stride < kernel, a pixel collects from several).

    Parameters
    ----------
    dout : array (N, C, Ho, Wo), any memory layout
    is_max : bool array (KH·KW, N, Ho, Wo, C), from ``first_max_mask``
    x_shape : (N, C, H, W), the input's shape
    kernel_size, stride : (KH, KW), (sh, sw)
    padding : ((top, bottom), (left, right))

    Returns
    -------
    dx : array (N, C, H, W), dout's dtype, stored channels-last
    """
    xp = get_array_module(dout)
    N, _, Ho, Wo = dout.shape
    C = is_max.shape[-1]
    (kh, kw), (sh, sw) = kernel_size, stride
    (top, bottom), (left, right) = padding
    H, W = x_shape[2:]
    dout_nhwc = dout.transpose(0, 2, 3, 1)                       # (N, Ho, Wo, C), a view
    Hp, Wp = H + top + bottom, W + left + right
    tiled = (sh, sw) == (kh, kw) and Ho * kh == Hp and Wo * kw == Wp
    dx_p = (xp.empty if tiled else xp.zeros)((N, Hp, Wp, C), dtype=dout.dtype)
    if tiled:
        # dx̃ seen as (N, Ho, KH, Wo, KW, C) blocks, filled in one sequential pass.
        blocks = dx_p.reshape(N, Ho, kh, Wo, kw, C)
        xp.multiply(dout_nhwc[:, :, None, :, None, :],
                    is_max.reshape(kh, kw, N, Ho, Wo, C).transpose(2, 3, 0, 4, 1, 5),
                    out=blocks)
    else:
        for k, (_, _, index) in enumerate(window_slices(kernel_size, stride, (Ho, Wo))):
            dx_p[index] += dout_nhwc * is_max[k]
    return dx_p[:, top:top + H, left:left + W, :].transpose(0, 3, 1, 2)


def _padded(x: Any, padding: Pads, value: float) -> Any:
    """x padded with ``value`` (x itself without padding); the padded copy is scratch (the
    arena's "x_pad", ``minicnn.functional.scratch``): dead when the pass that asked returns."""
    (top, bottom), (left, right) = padding
    if not (top or bottom or left or right):
        return x
    N, C, H, W = x.shape
    buf = scratch(get_array_module(x), "x_pad", (N, H + top + bottom, W + left + right, C),
                  x.dtype)
    return pad_channels_last(x, padding, value=value, out=buf)


def max_pool2d(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
               padding: Pads) -> tuple[Any, Any]:
    """y = the max of every window of x padded with -inf, and what the backward needs.

    Equals ``reference.max_pool2d``::

        y[n, c, i, j] = max_{a, b} x̃[n, c, i·sh + a, j·sw + b]

    Parameters
    ----------
    x : array (N, C, H, W), any memory layout
    kernel_size, stride : (KH, KW), (sh, sw)
    padding : ((top, bottom), (left, right)), -inf (never the max)

    Returns
    -------
    y : array (N, C, Ho, Wo), x's dtype, stored channels-last
    saved : for ``max_pool2d_backward``. On NumPy (x, y as (N, Ho, Wo, C)): the backward
        finds the max again (``first_max_mask``), which was measured faster than storing
        where it is. On CuPy the argmax (N, Ho, Wo, C) uint8, the first max's window
        position a·KW + b, from the same launch as y (``minicnn.kernels.pool``); a quarter
        of y's bytes.
    """
    if uses_kernels(x) and pool_kernels.max_pool_fits(kernel_size):
        out_size = output_size(x.shape, kernel_size, stride, padding, "max_pool2d")
        return pool_kernels.max_pool_forward(get_array_module(x), x, kernel_size, stride,
                                             padding, out_size)
    windows = window_view(_padded(x, padding, float("-inf")), kernel_size, stride)
    out = window_max(windows)                      # (N, Ho, Wo, C)
    return out.transpose(0, 3, 1, 2), (x, out)


def max_pool2d_backward(dout: Any, saved: Any, x_shape: tuple[int, ...],
                        kernel_size: tuple[int, int], stride: tuple[int, int],
                        padding: Pads) -> Any:
    """dx̃ = col2im(dout · is_max), the padding cropped: each window's dout onto its max.

    Equals ``reference.max_pool2d_backward`` (the first max of a window on ties)::

        dx̃[n, c, i·sh + a*, j·sw + b*] += dout[n, c, i, j]    (a*, b*) the window's max

    Parameters
    ----------
    dout : array (N, C, Ho, Wo), any memory layout
    saved : the second result of ``max_pool2d``
    x_shape : (N, C, H, W), the forward's input shape
    kernel_size, stride, padding : as given to ``max_pool2d``

    Returns
    -------
    dx : array (N, C, H, W), dout's dtype, stored channels-last
    """
    if not isinstance(saved, tuple):               # CuPy: the argmax of the forward's launch
        return pool_kernels.max_pool_backward(get_array_module(dout), dout, saved, x_shape,
                                              kernel_size, stride, padding)
    x, out = saved
    windows = window_view(_padded(x, padding, float("-inf")), kernel_size, stride)
    is_max = first_max_mask(windows, out)          # (KH·KW, N, Ho, Wo, C) bool
    return max_pool_input_grad(dout, is_max, x_shape, kernel_size, stride, padding)


def avg_pool2d(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
               padding: Pads) -> Any:
    """y = the mean of every window of x padded with zeros (which count: / (KH·KW)).

    Equals ``reference.avg_pool2d``; (N, C, H, W) -> (N, C, Ho, Wo), stored channels-last. On
    CuPy one launch (``minicnn.kernels.pool``).
    """
    xp = get_array_module(x)
    if uses_kernels(x):
        out_size = output_size(x.shape, kernel_size, stride, padding, "avg_pool2d")
        return pool_kernels.avg_pool_forward(xp, x, kernel_size, stride, padding, out_size)
    windows = window_view(pad_channels_last(x, padding, value=0.0), kernel_size, stride)
    return windows.mean(axis=(3, 4)).transpose(0, 3, 1, 2)


def avg_pool2d_backward(dout: Any, x_shape: tuple[int, ...], kernel_size: tuple[int, int],
                        stride: tuple[int, int], padding: Pads) -> Any:
    """dx = col2im(dcols) with every window entry's share dcols = dout / (KH·KW).

    Equals ``reference.avg_pool2d_backward``; dx (N, C, H, W) stored channels-last. On CuPy
    one launch (``minicnn.kernels.pool``: a gather, each pixel summing the shares of the
    windows that cover it).
    """
    xp = get_array_module(dout)
    if uses_kernels(dout):
        return pool_kernels.avg_pool_backward(xp, dout, x_shape, kernel_size, stride, padding)
    kh, kw = kernel_size
    N, C, Ho, Wo = dout.shape
    share = dout.transpose(0, 2, 3, 1) / float(kh * kw)        # (N, Ho, Wo, C)
    # The same share for every (a, b) of a window: a broadcast view, not a copy.
    dcols = xp.broadcast_to(share[:, :, :, None, None, :], (N, Ho, Wo, kh, kw, C))
    return col2im(dcols, x_shape, kernel_size, stride, padding)


def stored_channels_last(x: Any) -> bool:
    """True when the (N, C, H, W) array ``x`` is stored NHWC (channels fastest) and not also
    NCHW (C = 1 or H·W = 1 is both; those take the NCHW code)."""
    return not x.flags.c_contiguous and x.transpose(0, 2, 3, 1).flags.c_contiguous


def adaptive_avg_pool2d(x: Any, out_hw: tuple[int, int]) -> Any:
    """y = P_h · x · P_wᵀ for every (n, c): adaptive average pooling to (oh, ow) = ``out_hw``.

    P_h (oh, H), P_w (ow, W) are ``resampling_matrices(..., "adaptive_avg")``:
    P_h[i, h] = 1/(end_i − start_i) on row i's window (PyTorch's rule). Equals
    ``reference.adaptive_avg_pool2d``::

        y[n, c, i, j] = Σ_{h, w} P_h[i, h] · P_w[j, w] · x[n, c, h, w]

    Two GEMMs over the whole batch, in x's memory layout: an NCHW x is ``resample`` (the
    columns, then the rows), a channels-last x is multiplied as its NHWC view, where channels
    are the last axis and the two products write y channels-last (a CuPy matmul writes
    C-ordered in its logical shape, so ``resample`` would turn it into NCHW)::

        t = P_w · x[n, h]              (N, H, ow, C)        one (ow, W)·(W, C) per (n, h)
        y = P_h · t[n]                 (N, oh, ow·C)        one (oh, H)·(H, ow·C) per n

    Parameters
    ----------
    x : array (N, C, H, W), any memory layout
    out_hw : (oh, ow)

    Returns
    -------
    y : array (N, C, oh, ow), stored NHWC when x is (``stored_channels_last``), else NCHW
    """
    N, C, H, W = x.shape
    P_h, P_w = resampling_matrices(x, (H, W), out_hw, "adaptive_avg")
    if not stored_channels_last(x):
        return resample(x, P_h, P_w)
    oh, ow = out_hw
    t = P_w @ x.transpose(0, 2, 3, 1)                  # (N, H, ow, C): the columns
    y = P_h @ t.reshape(N, H, ow * C)                  # (N, oh, ow·C): the rows
    return y.reshape(N, oh, ow, C).transpose(0, 3, 1, 2)


def adaptive_avg_pool2d_backward(dout: Any, x_shape: tuple[int, ...],
                                 channels_last: bool) -> Any:
    """dx = P_hᵀ · dout · P_w for every (n, c): the transpose of ``adaptive_avg_pool2d``.

    Each input pixel collects the share 1/(window size) of dout of every window it lies in.
    Equals ``reference.adaptive_avg_pool2d_backward``. With ``channels_last`` (the forward's
    x was stored NHWC) dx is computed on the NHWC views and stored NHWC, whatever dout's
    layout; otherwise ``resample_backward`` (NCHW)::

        t  = P_wᵀ · dout[n, i]         (N, oh, W, C)
        dx = P_hᵀ · t[n]               (N, H, W·C)

    Parameters
    ----------
    dout : array (N, C, oh, ow), any memory layout
    x_shape : (N, C, H, W), the forward's input shape
    channels_last : ``stored_channels_last`` of the forward's input
    """
    N, C, H, W = x_shape
    oh, ow = dout.shape[2:]
    P_h, P_w = resampling_matrices(dout, (H, W), (oh, ow), "adaptive_avg")
    if not channels_last:
        return resample_backward(dout, P_h, P_w)
    t = P_w.T @ dout.transpose(0, 2, 3, 1)             # (N, oh, W, C): the columns
    dx = P_h.T @ t.reshape(N, oh, W * C)               # (N, H, W·C): the rows
    return dx.reshape(N, H, W, C).transpose(0, 3, 1, 2)
