"""Grouped and depthwise convolution (``Conv2d(..., groups=G)``), as batched products.

With G groups, the C_in input channels split into G blocks of Cg = C_in / G and the C_out
output channels into G blocks of Og = C_out / G; output block g sees only input block g::

    y[n, g·Og + o, i, j] = Σ_{c<Cg, a, b'} W[g·Og + o, c, a, b'] · x̃[n, g·Cg + c, i·sh+a, j·sw+b']

W is (C_out, Cg, KH, KW), PyTorch's layout. Per group this is an ordinary convolution, so the
im2col formula of docs/derivations/conv2d_im2col.md holds per group, with one patch matrix
per group. They are built in one copy (``grouped_im2col``, (G, N·Ho·Wo, KH·KW·Cg)) and
multiplied in ONE batched product over the groups, never a Python loop of G GEMMs::

    out_g   = cols_g @ W_g                      (G, N·Ho·Wo, Og)       forward
    dW_g    = cols_gᵀ @ dout_g                  (G, KH·KW·Cg, Og)
    dcols_g = dout_g @ W_gᵀ,  dx = col2im(dcols)                      backward

Depthwise (G = C_in, Cg = 1, C_out = k·C_in) has KH·KW-long rows: C GEMMs of inner size 9.
``depthwise_conv2d`` writes it directly instead, a sum over the KH·KW shifted views of x̃,
each an elementwise product with one kernel entry per channel::

    y[n, c·k + m, i, j] = Σ_{a, b'} W[c·k + m, 0, a, b'] · x̃[n, c, i·sh + a, j·sw + b']

``grouped_conv2d`` / ``grouped_conv2d_backward`` pick the route (measured,
docs/benchmarks.md). Twins: ``reference.conv2d_grouped_forward`` / ``_backward``
(``reference.conv2d_forward`` / ``_backward`` applied per group); tests/test_grouped_conv.py.
Derivation: docs/derivations/conv2d_im2col.md, "Grouped and depthwise convolution".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backend import get_array_module
from .im2col import Pads, output_size, pad_channels_last, padded_windows, window_slices

__all__ = ["GROUPED_METHODS", "grouped_weight_matrices", "grouped_im2col", "grouped_conv2d",
           "grouped_conv2d_backward", "depthwise_conv2d", "depthwise_conv2d_backward"]

Workspace = Callable[[str, tuple[int, ...], Any], Any]

# "batched": one batched GEMM over the groups; "direct": the shifted-view sum (depthwise only).
GROUPED_METHODS = ("auto", "batched", "direct")


def _method(method: str, x_shape: tuple[int, ...], groups: int) -> str:
    if method not in GROUPED_METHODS:
        raise ValueError(f"grouped_conv2d: method must be one of {GROUPED_METHODS}, got "
                         f"{method!r}")
    depthwise = groups == x_shape[1]
    if method == "direct" and not depthwise:
        raise ValueError("grouped_conv2d: method='direct' needs groups == C_in (depthwise)")
    if method == "auto":  # measured: docs/benchmarks.md, "Grouped and depthwise convolution"
        return "direct" if depthwise else "batched"
    return method


def grouped_weight_matrices(W: Any, groups: int) -> Any:
    """W (C_out, Cg, KH, KW) as W_g (G, KH·KW·Cg, Og), rows in ``grouped_im2col``'s
    (kh, kw, c) order: ``W_g[g, (a, b, c), o] = W[g·Og + o, c, a, b]`` (a copy)."""
    C_out, Cg, kh, kw = W.shape
    Og = C_out // groups
    return W.reshape(groups, Og, Cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(
        groups, kh * kw * Cg, Og)


def grouped_im2col(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                   padding: Pads, groups: int, workspace: Workspace | None = None) -> Any:
    """The G patch matrices of ``x``, one per group, in one copy.

    ``cols_g[g, (n, i, j), (a, b, c)] = x̃[n, g·Cg + c, i·sh + a, j·sw + b]``: group g's block
    of ``im2col(x)``'s columns, (G, N·Ho·Wo, KH·KW·Cg), C-contiguous (the arena's "cols" and
    "x_pad" buffers when ``workspace`` is given). Equals ``reference.im2col`` of each group's
    channels.
    """
    xp = get_array_module(x)
    windows = padded_windows(x, kernel_size, stride, padding, workspace)
    N, Ho, Wo, kh, kw, C = windows.shape
    Cg = C // groups
    # (N, Ho, Wo, KH, KW, G, Cg) -> (G, N, Ho, Wo, KH, KW, Cg): still a view
    windows = windows.reshape(N, Ho, Wo, kh, kw, groups, Cg).transpose(5, 0, 1, 2, 3, 4, 6)
    shape = windows.shape
    cols = xp.empty(shape, x.dtype) if workspace is None else workspace("cols", shape, x.dtype)
    xp.copyto(cols, windows)
    return cols.reshape(groups, N * Ho * Wo, kh * kw * Cg)


def grouped_conv2d(x: Any, W: Any, groups: int, stride: tuple[int, int], padding: Pads,
                   workspace: Workspace | None = None, method: str = "auto") -> Any:
    """y = the grouped convolution of x with W, no bias (see the module docstring).

    Parameters
    ----------
    x : array (N, C_in, H, W)
    W : array (C_out, C_in / groups, KH, KW)
    groups : G, dividing C_in and C_out
    stride, padding : (sh, sw), ((top, bottom), (left, right))
    workspace : the scratch arena (``scratch_workspace(xp)``) or None
    method : "auto", "batched" (one batched GEMM) or "direct" (depthwise only)

    Returns
    -------
    y : array (N, C_out, Ho, Wo), x's dtype, stored channels-last.
    Equals ``reference.conv2d_grouped_forward(x, W, None, stride, padding, groups)``.
    """
    if _method(method, x.shape, groups) == "direct":
        return depthwise_conv2d(x, W, stride, padding, workspace=workspace)
    xp = get_array_module(x)
    N, C_out, kh, kw = x.shape[0], W.shape[0], W.shape[2], W.shape[3]
    Ho, Wo = output_size(x.shape, (kh, kw), stride, padding)
    cols_g = grouped_im2col(x, (kh, kw), stride, padding, groups, workspace)
    out_g = xp.matmul(cols_g, grouped_weight_matrices(W, groups))    # (G, N·Ho·Wo, Og)
    # (G, N, Ho, Wo, Og) -> (N, Ho, Wo, G, Og) = (N, Ho, Wo, C_out), channel g·Og + o
    y = xp.ascontiguousarray(out_g.reshape(groups, N, Ho, Wo, -1).transpose(1, 2, 3, 0, 4))
    return y.reshape(N, Ho, Wo, C_out).transpose(0, 3, 1, 2)


def grouped_conv2d_backward(dout: Any, x: Any, W: Any, groups: int, stride: tuple[int, int],
                            padding: Pads, need_dx: bool = True, need_dW: bool = True,
                            workspace: Workspace | None = None,
                            method: str = "auto") -> tuple[Any, Any]:
    """(dx, dW) of ``grouped_conv2d`` (None for one not wanted); db = Σ dout is the caller's.

    Per group, the ordinary convolution's backward, all groups in one batched product:
    ``dW_g = cols_gᵀ @ dout_g`` and ``dx = col2im(dout_g @ W_gᵀ)``, with cols_g built again
    from x (``grouped_im2col``) and col2im over the KH·KW positions (``window_slices``).
    Equals ``reference.conv2d_grouped_backward``'s dx and dW.

    Parameters
    ----------
    dout : array (N, C_out, Ho, Wo), any layout (not modified)
    x : array (N, C_in, H, W), the forward's input
    W : array (C_out, C_in / groups, KH, KW), the forward's weights
    groups, stride, padding, workspace, method : as ``grouped_conv2d``

    Returns
    -------
    dx : array (N, C_in, H, W) stored channels-last, or None
    dW : array (C_out, C_in / groups, KH, KW), C-contiguous, or None
    """
    if _method(method, x.shape, groups) == "direct":
        return depthwise_conv2d_backward(dout, x, W, stride, padding, need_dx, need_dW,
                                         workspace=workspace)
    xp = get_array_module(x)
    N, C, H, Wd = x.shape
    C_out, Cg, kh, kw = W.shape
    Og = C_out // groups
    (top, bottom), (left, right) = padding
    Ho, Wo = dout.shape[2], dout.shape[3]
    # dout as G row blocks (G, N·Ho·Wo, Og), rows (n, i, j) like cols_g's
    dout_g = dout.transpose(1, 0, 2, 3).reshape(groups, Og, N * Ho * Wo).transpose(0, 2, 1)
    dx = dW = None
    if need_dW:
        cols_g = grouped_im2col(x, (kh, kw), stride, padding, groups, workspace)
        dW_g = xp.matmul(cols_g.transpose(0, 2, 1), dout_g)          # (G, KH·KW·Cg, Og)
        dW = xp.ascontiguousarray(dW_g.reshape(groups, kh, kw, Cg, Og).transpose(
            0, 4, 3, 1, 2)).reshape(C_out, Cg, kh, kw)
    if need_dx:
        W_gT = grouped_weight_matrices(W, groups).transpose(0, 2, 1)   # (G, Og, KH·KW·Cg)
        shape = (groups, N * Ho * Wo, kh * kw * Cg)
        # cols_g is dead once dW is read: its arena buffer takes dcols.
        dcols = xp.empty(shape, dout.dtype) if workspace is None else workspace(
            "cols", shape, dout.dtype)
        xp.matmul(dout_g, W_gT, out=dcols)
        # (G, N, Ho, Wo, KH, KW, Cg) -> (N, Ho, Wo, KH, KW, G, Cg), a view
        dcols = dcols.reshape(groups, N, Ho, Wo, kh, kw, Cg).transpose(1, 2, 3, 4, 5, 0, 6)
        dx_p = xp.zeros((N, H + top + bottom, Wd + left + right, groups, Cg), dout.dtype)
        for a, b, index in window_slices((kh, kw), stride, (Ho, Wo)):  # col2im
            dx_p[index] += dcols[:, :, :, a, b]
        dx = dx_p.reshape(N, H + top + bottom, Wd + left + right, C)[
            :, top:top + H, left:left + Wd].transpose(0, 3, 1, 2)
    return dx, dW


def _shifted_views(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                   padding: Pads, out_size: tuple[int, int],
                   workspace: Workspace | None) -> Any:
    """x̃ channels-last (N, Hp, Wp, C) and, per kernel position, its (N, Ho, Wo, C) view."""
    (top, bottom), (left, right) = padding
    N, C, H, W = x.shape
    pad_buf = None
    if workspace is not None and (top or bottom or left or right):
        pad_buf = workspace("x_pad", (N, H + top + bottom, W + left + right, C), x.dtype)
    x_p = pad_channels_last(x, padding, out=pad_buf).transpose(0, 2, 3, 1)
    return [(a, b, x_p[index]) for a, b, index in window_slices(kernel_size, stride, out_size)]


def depthwise_conv2d(x: Any, W: Any, stride: tuple[int, int], padding: Pads,
                     workspace: Workspace | None = None) -> Any:
    """Depthwise y (groups = C_in, W (k·C_in, 1, KH, KW)) as a sum over KH·KW shifted views::

        y[n, c·k + m, i, j] = Σ_{a, b'} W[c·k + m, 0, a, b'] · x̃[n, c, i·sh + a, j·sw + b']

    Each term is one vectorised multiply-add over all (n, i, j, c, m): no GEMM, no patch
    matrix (KH·KW passes over the output instead). Returns (N, C_out, Ho, Wo), x's dtype,
    stored channels-last. Equals ``reference.conv2d_grouped_forward`` with groups = C_in.
    """
    xp = get_array_module(x)
    N, C = x.shape[0], x.shape[1]
    C_out, _, kh, kw = W.shape
    k = C_out // C
    Ho, Wo = output_size(x.shape, (kh, kw), stride, padding)
    Wk = W.reshape(C, k, kh, kw)
    y = xp.empty((N, Ho, Wo, C, k), x.dtype)
    term = xp.empty((N, Ho, Wo, C, k), x.dtype)
    for a, b, x_ab in _shifted_views(x, (kh, kw), stride, padding, (Ho, Wo), workspace):
        if a == 0 and b == 0:
            xp.multiply(x_ab[..., None], Wk[:, :, a, b], out=y)
        else:
            xp.multiply(x_ab[..., None], Wk[:, :, a, b], out=term)
            y += term
    return y.reshape(N, Ho, Wo, C_out).transpose(0, 3, 1, 2)


def depthwise_conv2d_backward(dout: Any, x: Any, W: Any, stride: tuple[int, int],
                              padding: Pads, need_dx: bool = True, need_dW: bool = True,
                              workspace: Workspace | None = None) -> tuple[Any, Any]:
    """(dx, dW) of ``depthwise_conv2d``, term by term over the KH·KW shifted views::

        dW[c·k + m, 0, a, b'] = Σ_{n, i, j} dout[n, c·k + m, i, j] · x̃[n, c, i·sh + a, j·sw + b']
        dx̃[n, c, i·sh + a, j·sw + b'] += Σ_m dout[n, c·k + m, i, j] · W[c·k + m, 0, a, b']

    Equals ``reference.conv2d_grouped_backward``'s dx and dW with groups = C_in.
    """
    xp = get_array_module(x)
    N, C, H, Wd = x.shape
    C_out, _, kh, kw = W.shape
    k = C_out // C
    (top, bottom), (left, right) = padding
    Ho, Wo = dout.shape[2], dout.shape[3]
    d = xp.ascontiguousarray(dout.transpose(0, 2, 3, 1)).reshape(N, Ho, Wo, C, k)
    Wk = W.reshape(C, k, kh, kw)
    dx = dW = None
    if need_dW:
        dW = xp.empty((C, k, kh, kw), dout.dtype)
        for a, b, x_ab in _shifted_views(x, (kh, kw), stride, padding, (Ho, Wo), workspace):
            dW[:, :, a, b] = xp.einsum("nijc,nijcm->cm", x_ab, d)
        dW = dW.reshape(C_out, 1, kh, kw)
    if need_dx:
        dx_p = xp.zeros((N, H + top + bottom, Wd + left + right, C), dout.dtype)
        for a, b, index in window_slices((kh, kw), stride, (Ho, Wo)):
            if k == 1:
                dx_p[index] += d[..., 0] * Wk[:, 0, a, b]
            else:
                dx_p[index] += xp.einsum("nijcm,cm->nijc", d, Wk[:, :, a, b])
        dx = dx_p[:, top:top + H, left:left + Wd].transpose(0, 3, 1, 2)
    return dx, dW
