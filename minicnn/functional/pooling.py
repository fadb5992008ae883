"""Max pooling's fast paths: the window max, where it is (the first on ties), and dx from it.

``MaxPool2d`` computes, over the windows of the padded input x̃ (``window_view``: the view
(N, Ho, Wo, KH, KW, C) with ``windows[n, i, j, a, b, c] = x̃[n, c, i·sh + a, j·sw + b]``)::

    y       = max over (a, b) of the window                        window_max
    is_max  = 1 at the window's max, 0 elsewhere (first on ties)    first_max_mask
    dx̃      = col2im(dout · is_max), cropped to x                  max_pool_input_grad

(docs/derivations/pooling.md). Each function names the simple function of
``minicnn.functional.reference`` it equals; tests/test_pool.py compares them.
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .im2col import Pads, window_slices

__all__ = ["window_max", "first_max", "first_max_mask", "max_pool_input_grad"]


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
