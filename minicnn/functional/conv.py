"""The lines of ``Conv2d`` that run by a faster route than their formula, behind one name each.

``Conv2d`` computes, with ``cols = im2col(x)`` (N·Ho·Wo, KH·KW·C_in), W_mat the weights in
``im2col``'s (kh, kw, c) column order (C_out, KH·KW·C_in) and dout_mat = dL/dout as rows
(N·Ho·Wo, C_out) in the row order of cols (docs/derivations/conv2d_im2col.md)::

    out    = cols @ W_matᵀ + b            forward
    dW_mat = dout_matᵀ @ cols             conv2d_weight_grad
    db     = Σ_rows dout_mat
    dx     = col2im(dout_mat @ W_mat)     conv2d_input_grad

``conv2d_input_grad`` chooses how dx is computed (``col2im_matmul`` or, for stride 1, the
flipped-kernel convolution ``conv_input_grad``: ``dx_by_flipped_conv`` is the rule) and
``patch_workspace`` sizes the one patch buffer that the forward's ``im2col`` of x and the
backward's ``im2col`` of dout share. Each function names the simple function of
``minicnn.functional.reference`` it equals; tests/test_conv.py compares them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..backend import get_array_module
from .im2col import Pads, col2im_matmul, conv_input_grad, flipped_pads, output_size

__all__ = ["conv2d_weight_matrix", "conv2d_weight_grad", "dx_by_flipped_conv",
           "patch_workspace", "conv2d_input_grad"]

Workspace = Callable[[str, tuple[int, ...], Any], Any]


def conv2d_weight_matrix(W: Any) -> Any:
    """W (C_out, C_in, KH, KW) as W_mat (C_out, KH·KW·C_in), columns in ``im2col``'s (kh, kw, c)
    order: ``W_mat[o, (a, b, c)] = W[o, c, a, b]`` (a copy)."""
    return W.transpose(0, 2, 3, 1).reshape(W.shape[0], -1)


def conv2d_weight_grad(dout_mat: Any, cols: Any, W_shape: tuple[int, int, int, int]) -> Any:
    """dW = dout_matᵀ @ cols, reordered to W's layout (C_out, C_in, KH, KW), C-contiguous.

    Equals the dW of ``reference.conv2d_backward``:
    ``dW[o, c, a, b] = Σ_{n, i, j} dout[n, o, i, j] · x̃[n, c, i·sh + a, j·sw + b]``.

    Computed as the transpose of colsᵀ @ dout_mat, the same product: as fast on a quiet CPU,
    and less slowed down when other processes compete for the cores (docs/benchmarks.md).

    Parameters
    ----------
    dout_mat : array (N·Ho·Wo, C_out), rows in the order of ``cols``
    cols : array (N·Ho·Wo, KH·KW·C_in), the forward's ``im2col(x)``
    W_shape : (C_out, C_in, KH, KW)
    """
    xp = get_array_module(cols)
    C_out, C_in, kh, kw = W_shape
    dW_mat = (cols.T @ dout_mat).T                                # (C_out, KH·KW·C_in)
    return xp.ascontiguousarray(dW_mat.reshape(C_out, kh, kw, C_in).transpose(0, 3, 1, 2))


def dx_by_flipped_conv(x_shape: tuple[int, ...], C_out: int, kernel_size: tuple[int, int],
                       stride: tuple[int, int], padding: Pads) -> bool:
    """Whether ``conv2d_input_grad`` computes dx by ``conv_input_grad`` (else ``col2im_matmul``).

    The flipped-kernel convolution needs stride 1 and a padding of at most K - 1
    (``flipped_pads``). It is taken where it was measured faster (docs/benchmarks.md): inputs
    of 8×8 and more, and unless dout's patch matrix (N·H·W, KH·KW·C_out) would be larger than
    the forward's (C_out > C_in: a layer that widens, or an RGB first layer, where the KH·KW
    thin GEMMs of ``col2im_matmul`` need no such matrix).

    Parameters
    ----------
    x_shape : (N, C_in, H, W), the layer's input shape
    C_out : int
    kernel_size, stride, padding : the layer's (KH, KW), (sh, sw), ((top, bottom), (left, right))
    """
    return (stride == (1, 1) and flipped_pads(kernel_size, padding) is not None
            and C_out <= x_shape[1] and min(x_shape[2:]) >= 8)


def patch_workspace(workspace: Workspace, x_shape: tuple[int, ...], C_out: int,
                    kernel_size: tuple[int, int], stride: tuple[int, int], padding: Pads,
                    dx: bool = True, pad_name: str = "x_pad") -> Workspace:
    """The ``workspace`` callable for the ``im2col`` of a convolution's forward and backward.

    Both patch matrices, the forward's of x (N·Ho·Wo, KH·KW·C_in) and, when dx is computed by
    ``conv_input_grad``, the backward's of dout (N·H·W, KH·KW·C_out), are views of one flat
    "cols" buffer sized for the larger of the two, so it is allocated once, not per pass (the
    backward's patches overwrite the forward's, which are dead once dW is computed).
    ``im2col``'s padded copy goes to its own buffer, named ``pad_name`` ("x_pad" in forward,
    "dout_pad" in backward); any other name is passed through.

    Parameters
    ----------
    workspace : callable ``(name, shape, dtype) -> array``
        The layer's buffers (``functools.partial(layer.workspace, xp)``).
    x_shape : (N, C_in, H, W), the layer's input shape
    C_out : int
    kernel_size, stride, padding : the layer's
    dx : bool
        Whether the backward will compute dx (``Conv2d.input_grad``); if not, the buffer is
        sized for the forward's patches alone.
    pad_name : str
    """
    N, C_in, H, W = x_shape
    (kh, kw) = kernel_size
    Ho, Wo = output_size(x_shape, kernel_size, stride, padding)
    size = N * Ho * Wo * kh * kw * C_in
    if dx and dx_by_flipped_conv(x_shape, C_out, kernel_size, stride, padding):
        size = max(size, N * H * W * kh * kw * C_out)

    def buffers(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        if name == "cols":
            flat = workspace("cols", (size,), dtype)
            return flat[:math.prod(shape)].reshape(shape)
        return workspace(pad_name if name == "x_pad" else name, shape, dtype)

    return buffers


def conv2d_input_grad(dout_mat: Any, W_mat: Any, x_shape: tuple[int, int, int, int],
                      kernel_size: tuple[int, int], stride: tuple[int, int], padding: Pads,
                      workspace: Workspace | None = None) -> Any:
    """dx = col2im(dout_mat @ W_mat): the input gradient of a convolution.

    Equals ``col2im(dout_mat @ W_mat, x_shape, ...)`` and the dx of
    ``reference.conv2d_backward``::

        dx[n, c, h, w] = Σ_{o, i, j} dout[n, o, i, j] · W[o, c, h + top - i·sh, w + left - j·sw]

    (the sum over the (i, j) whose kernel index lies inside the kernel). Computed without the
    KH·KW-times larger dcols = dout_mat @ W_mat, in one of two ways (``dx_by_flipped_conv``):

    - ``conv_input_grad``: for stride 1, dx is a convolution of dout with the flipped kernel,
      one ``im2col`` of dout and one GEMM. Its patches go into the forward's patch buffer
      (``patch_workspace``), so the forward's ``cols`` are overwritten.
    - ``col2im_matmul``: one kernel position at a time, KH·KW thin GEMMs each added into a
      strided slice of dx.

    Parameters
    ----------
    dout_mat : array (N·Ho·Wo, C_out)
        dL/dout with rows ordered (n, ho, wo), as the rows of ``im2col``'s ``cols``.
    W_mat : array (C_out, KH·KW·C_in), the weights in ``im2col``'s (kh, kw, c) column order
    x_shape : (N, C_in, H, W), the input's shape
    kernel_size, stride, padding : as given to ``im2col``
    workspace : callable ``(name, shape, dtype) -> array``, optional
        The layer's buffers, reused from step to step (``functools.partial(layer.workspace,
        xp)``); the same one the forward's ``patch_workspace`` wrapped.

    Returns
    -------
    dx : array (N, C_in, H, W), dout_mat's dtype, stored channels-last (C-contiguous NHWC)
    """
    C_out = W_mat.shape[0]
    if dx_by_flipped_conv(x_shape, C_out, kernel_size, stride, padding):
        N = x_shape[0]
        Ho, Wo = output_size(x_shape, kernel_size, stride, padding)
        dout = dout_mat.reshape(N, Ho, Wo, C_out).transpose(0, 3, 1, 2)   # a view
        if workspace is not None:
            workspace = patch_workspace(workspace, x_shape, C_out, kernel_size, stride, padding,
                                        pad_name="dout_pad")
        return conv_input_grad(dout, W_mat, x_shape, kernel_size, padding, workspace=workspace)
    return col2im_matmul(dout_mat, W_mat, x_shape, kernel_size, stride, padding,
                         workspace=workspace)
