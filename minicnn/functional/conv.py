"""The lines of ``Conv2d`` that run by a faster route than their formula, behind one name each.

``Conv2d`` computes, with ``cols = im2col(x)`` (N·Ho·Wo, KH·KW·C_in), W_mat the weights in
``im2col``'s (kh, kw, c) column order (C_out, KH·KW·C_in) and dout_mat = dL/dout as rows
(N·Ho·Wo, C_out) in the row order of cols (docs/derivations/conv2d_im2col.md)::

    out    = cols @ W_matᵀ + b            forward
    dW_mat = dout_matᵀ @ cols             conv2d_weight_grad
    db     = Σ_rows dout_mat              conv2d_bias_grad
    dx     = col2im(dout_mat @ W_mat)     conv2d_input_grad

cols is KH·KW times the input, so the layer does not keep it from forward to backward: it
keeps x, and the backward builds one patch matrix again (``conv2d_backward_patches``), into
the scratch arena (``minicnn.functional.scratch``), from which both gradients are read:

- for stride 1, when dx is wanted (``backward_from_dout``), the patch matrix of *dout*
  (``flipped_patches``): dx is a convolution of dout with the flipped kernel
  (``conv_input_grad``), and dW, a correlation of x with dout, is xᵀ times the same matrix;
- otherwise cols = im2col(x) itself, and dx goes one kernel position at a time
  (``col2im_matmul``).

Each function names the simple function of ``minicnn.functional.reference`` it equals;
tests/test_conv.py compares them.

On CuPy the same functions run in a few launches each (tests/test_kernels_im2col.py counts
them): im2col and col2im are one gather kernel each (``minicnn.kernels.im2col``), db a
two-launch reduction, the rest GEMMs and weight reorders; the output and dx stay channels-last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..backend import blas_threads, get_array_module
from ..kernels import uses_kernels
from ..kernels.im2col import conv_bias_grad
from .im2col import (
    Pads,
    col2im_matmul,
    conv_input_grad,
    flipped_pads,
    flipped_patches,
    im2col,
    output_size,
)
from .precision import gemm_storage, get_precision, matmul
from .winograd import winograd_applies, winograd_is_faster

__all__ = ["CONV_ALGORITHMS", "conv2d_algorithm", "conv2d_weight_matrix", "BackwardPatches",
           "backward_from_dout", "conv2d_backward_patches", "conv2d_weight_grad",
           "conv2d_bias_grad", "conv2d_input_grad"]

CONV_ALGORITHMS = ("auto", "im2col", "winograd")

Workspace = Callable[[str, tuple[int, ...], Any], Any]


def conv2d_weight_matrix(W: Any) -> Any:
    """W (C_out, C_in, KH, KW) as W_mat (C_out, KH·KW·C_in), columns in ``im2col``'s (kh, kw, c)
    order: ``W_mat[o, (a, b, c)] = W[o, c, a, b]`` (a copy)."""
    return W.transpose(0, 2, 3, 1).reshape(W.shape[0], -1)


class BackwardPatches(NamedTuple):
    """The one patch matrix a convolution's backward reads its gradients from.

    ``of == "x"``: ``cols = im2col(x)`` (N·Ho·Wo, KH·KW·C_in), the forward's patch matrix.
    ``of == "dout"``: ``flipped_patches(dout)`` (N·H·W, KH·KW·C_out), stride 1 only.
    ``cols`` is scratch (the arena's "cols" buffer): dead when the backward returns. On CuPy
    under bf16 / fp16 it is stored in 16 bits (``precision.gemm_storage``): only GEMMs
    (``precision.matmul``) read it.
    """

    of: str
    cols: Any


def backward_from_dout(x_shape: tuple[int, ...], C_out: int, kernel_size: tuple[int, int],
                       stride: tuple[int, int], padding: Pads) -> bool:
    """Whether a backward that wants dx reads both gradients from dout's patches (else x's).

    dout's patches (``flipped_patches``) need stride 1 and a padding of at most K - 1
    (``flipped_pads``). They are taken where that was measured faster (docs/benchmarks.md):
    unless the layer widens (C_out > C_in), when they would be wider than x's (by
    C_out / C_in: 21 times for an RGB first layer), and x's patches with ``col2im_matmul``
    for dx (KH·KW thin GEMMs) win, in time and in scratch memory.

    Parameters
    ----------
    x_shape : (N, C_in, H, W), the layer's input shape
    C_out : int
    kernel_size, stride, padding : the layer's (KH, KW), (sh, sw), ((top, bottom), (left, right))
    """
    return (stride == (1, 1) and flipped_pads(kernel_size, padding) is not None
            and C_out <= x_shape[1])


def conv2d_backward_patches(dout_mat: Any, x: Any, kernel_size: tuple[int, int],
                            stride: tuple[int, int], padding: Pads, weight_grad: bool = True,
                            input_grad: bool = True,
                            workspace: Workspace | None = None) -> BackwardPatches | None:
    """The patch matrix a convolution's backward needs, built now: of dout or of x.

    With dx wanted and ``backward_from_dout``: ``BackwardPatches("dout",
    flipped_patches(dout))``, which equals ``reference.im2col(dout, kernel_size, (1, 1),
    flipped_pads(kernel_size, padding))``; dW and dx are both read from it. Else, with dW
    wanted: ``BackwardPatches("x", im2col(x))``, which equals ``reference.im2col(x, ...)``
    (the forward's cols, built again instead of kept). None when neither gradient is wanted.

    Parameters
    ----------
    dout_mat : array (N·Ho·Wo, C_out), dL/dout with rows (n, ho, wo)
    x : array (N, C_in, H, W), the forward's input, any memory layout
    kernel_size, stride, padding : the layer's
    weight_grad, input_grad : which gradients the backward computes
    workspace : callable ``(name, shape, dtype) -> array``, optional
        Where the matrix and its padded source go ("cols", "x_pad"): ``scratch_workspace(xp)``,
        the arena every layer shares. None allocates them.
    """
    C_out = dout_mat.shape[1]
    if input_grad and backward_from_dout(x.shape, C_out, kernel_size, stride, padding):
        N = x.shape[0]
        Ho, Wo = output_size(x.shape, kernel_size, stride, padding)
        dout = dout_mat.reshape(N, Ho, Wo, C_out).transpose(0, 3, 1, 2)   # a view
        return BackwardPatches("dout", flipped_patches(dout, x.shape, kernel_size, padding,
                                                       workspace=workspace,
                                                       dtype=gemm_storage(dout)))
    if weight_grad:
        cols, _ = im2col(x, kernel_size, stride, padding, workspace=workspace,
                         dtype=gemm_storage(x))
        return BackwardPatches("x", cols)
    return None


def conv2d_weight_grad(dout_mat: Any, x: Any, patches: BackwardPatches,
                       kernel_size: tuple[int, int]) -> Any:
    """dW = dout_matᵀ @ im2col(x), in W's layout (C_out, C_in, KH, KW), C-contiguous.

    Equals the dW of ``reference.conv2d_backward``::

        dW[o, c, a, b] = Σ_{n, i, j} dout[n, o, i, j] · x̃[n, c, i·sh + a, j·sw + b]

    read from ``patches`` (``conv2d_backward_patches``):

    - of x: cols itself, dW_mat = dout_matᵀ @ cols, computed as (colsᵀ @ dout_mat)ᵀ, the
      same product: as fast on a quiet CPU, and less slowed down when other processes
      compete for the cores (docs/benchmarks.md);
    - of dout (stride 1): the same sum taken over the input pixels instead of the output
      pixels. Row (n, h, w) of ``dcols = flipped_patches(dout)`` holds, at column
      (KH-1-a, KW-1-b, o), the dout[n, o, i, j] whose window reads x[n, c, h, w] at kernel
      offset (a, b) (zero where there is none), so with x_mat = x as rows (N·H·W, C_in)::

          dW[o, c, a, b] = Σ_{n, h, w} x_mat[(n, h, w), c] · dcols[(n, h, w), (KH-1-a, KW-1-b, o)]
                         = (x_matᵀ @ dcols)[c, (KH-1-a, KW-1-b, o)]

      (the padding's zeros drop out on both sides), computed as (dcolsᵀ @ x_mat)ᵀ.

    Parameters
    ----------
    dout_mat : array (N·Ho·Wo, C_out), rows (n, ho, wo)
    x : array (N, C_in, H, W), the forward's input, any memory layout (channels-last makes
        x_mat a view)
    patches : ``BackwardPatches`` built for this backward
    kernel_size : (KH, KW)

    Returns
    -------
    dW : array (C_out, C_in, KH, KW), C-contiguous on NumPy; on CuPy the strided view of the
        product (``Parameter.set_grad`` copies it into the optimizer's flat gradient buffer,
        and that copy is the reorder)
    """
    xp = get_array_module(x)
    C_out, C_in, (kh, kw) = dout_mat.shape[1], x.shape[1], kernel_size
    if patches.of == "x":
        dW_mat = matmul(patches.cols.T, dout_mat).T               # (C_out, KH·KW·C_in)
        dW = dW_mat.reshape(C_out, kh, kw, C_in).transpose(0, 3, 1, 2)
    else:
        x_mat = x.transpose(0, 2, 3, 1).reshape(-1, C_in)        # (N·H·W, C_in)
        G = matmul(patches.cols.T, x_mat).T                       # (C_in, KH·KW·C_out)
        dW = G.reshape(C_in, kh, kw, C_out)[:, ::-1, ::-1, :].transpose(3, 0, 1, 2)
    if uses_kernels(dW):
        # The optimizer's flat gradient buffer takes it by one copy (``Parameter.set_grad``),
        # which is then the reorder: a contiguous copy first would be a second launch.
        return dW
    return xp.ascontiguousarray(dW)


def conv2d_bias_grad(dout_mat: Any, out: Any = None) -> Any:
    """db = Σ_rows dout_mat (C_out,): the bias gradient, every output pixel's dout summed.

    Equals the db of ``reference.conv2d_backward`` (``dout.sum(axis=(0, 2, 3))``).

    On CuPy, ``dout_mat.sum(axis=0)`` is one reduction that CuPy spreads over one block per
    32 channels (2 blocks of a 132-SM GPU for 64 channels, each looping over all N·Ho·Wo
    rows); ``minicnn.kernels.im2col.conv_bias_grad`` is two launches that use the whole GPU
    (per-chunk partial sums, then per channel; deterministic, no atomics).

    Parameters
    ----------
    dout_mat : array (N·Ho·Wo, C_out), dL/dout with rows (n, ho, wo)
    out : array (C_out,), optional
        Where the CuPy kernel writes db (``Parameter.grad_out``: the optimizer's flat
        gradient buffer, so no copy follows); NumPy ignores it.
    """
    if uses_kernels(dout_mat):
        xp = get_array_module(dout_mat)
        return conv_bias_grad(xp, xp.ascontiguousarray(dout_mat), out)
    return dout_mat.sum(axis=0)


def conv2d_input_grad(dout_mat: Any, W_mat: Any, x_shape: tuple[int, int, int, int],
                      kernel_size: tuple[int, int], stride: tuple[int, int], padding: Pads,
                      patches: BackwardPatches | None = None,
                      workspace: Workspace | None = None) -> Any:
    """dx = col2im(dout_mat @ W_mat): the input gradient of a convolution.

    Equals ``col2im(dout_mat @ W_mat, x_shape, ...)`` and the dx of
    ``reference.conv2d_backward``::

        dx[n, c, h, w] = Σ_{o, i, j} dout[n, o, i, j] · W[o, c, h + top - i·sh, w + left - j·sw]

    (the sum over the (i, j) whose kernel index lies inside the kernel). Computed without the
    KH·KW-times larger dcols = dout_mat @ W_mat, in one of two ways:

    - ``conv_input_grad``: for stride 1, dx is a convolution of dout with the flipped kernel,
      one GEMM of dout's patch matrix, taken when ``patches`` are dout's (or, without
      ``patches``, when ``backward_from_dout`` says so: then the matrix is built here);
    - ``col2im_matmul``: one kernel position at a time, KH·KW thin GEMMs each added into a
      strided slice of dx.

    Parameters
    ----------
    dout_mat : array (N·Ho·Wo, C_out)
        dL/dout with rows ordered (n, ho, wo), as the rows of ``im2col``'s ``cols``.
    W_mat : array (C_out, KH·KW·C_in), the weights in ``im2col``'s (kh, kw, c) column order,
        or the weights W (C_out, C_in, KH, KW) themselves: then each route makes the one
        reorder of W it needs (W_mat for ``col2im_matmul``, the flipped kernel for
        ``conv_input_grad``), one launch on CuPy instead of two
    x_shape : (N, C_in, H, W), the input's shape
    kernel_size, stride, padding : as given to ``im2col``
    patches : ``BackwardPatches``, optional
        What ``conv2d_backward_patches`` built for this backward.
    workspace : callable ``(name, shape, dtype) -> array``, optional
        Scratch buffers that die with this call (``scratch_workspace(xp)``, the arena every
        layer shares): "dcols_block" for ``col2im_matmul``; "x_pad" and "cols" when dout's
        patches are built here. None allocates them.

    Returns
    -------
    dx : array (N, C_in, H, W), dout_mat's dtype, stored channels-last (C-contiguous NHWC)
    """
    C_out = W_mat.shape[0]
    if patches is None:
        from_dout = backward_from_dout(x_shape, C_out, kernel_size, stride, padding)
    else:
        from_dout = patches.of == "dout"
    if from_dout:
        N = x_shape[0]
        Ho, Wo = output_size(x_shape, kernel_size, stride, padding)
        dout = dout_mat.reshape(N, Ho, Wo, C_out).transpose(0, 3, 1, 2)   # a view
        return conv_input_grad(dout, W_mat, x_shape, kernel_size, padding, workspace=workspace,
                               dcols=None if patches is None else patches.cols)
    if W_mat.ndim == 4:
        W_mat = conv2d_weight_matrix(W_mat)
    return col2im_matmul(dout_mat, W_mat, x_shape, kernel_size, stride, padding,
                         workspace=workspace)


def conv2d_algorithm(algorithm: str, x_shape: tuple[int, ...], C_out: int,
                     kernel_size: tuple[int, int], stride: tuple[int, int],
                     padding: Pads, groups: int = 1, xp: Any = np) -> int | None:
    """How a ``Conv2d`` computes its output for an input of ``x_shape``: None for im2col + one
    GEMM (the formula of docs/derivations/conv2d_im2col.md), or m for Winograd's F(m×m, 3×3)
    (``minicnn.functional.winograd``: the same y with fewer multiplies, docs/derivations/
    winograd.md). Both equal ``reference.conv2d_forward``.

    ``algorithm`` is the layer's setting: "im2col" always None; "winograd" F(4×4, 3×3) (the
    layer checked at construction that ``winograd_applies``); "auto" Winograd where it applies
    and was measured faster (``winograd_is_faster``, given the BLAS threads of the moment,
    ``backend.blas_threads``), else im2col. A grouped convolution (``groups`` > 1,
    ``minicnn.functional.grouped_conv``) has no Winograd route: None.

    On CuPy (``xp``, the input's array module) "auto" is im2col: there a training step is
    bound by kernel launches, not by multiplies (docs/benchmarks.md), and Winograd takes
    about three times as many: 13 + 26 launches per layer and step (padded copy, tile gather,
    four transform GEMMs, output and dout tile copies, the four strided writes of dx) against
    im2col's 4 + 6 for a 3×3 stride-1 layer with bias (a gather, a GEMM, weight reorders,
    the bias add, db in two), counted on the strict stand-in (tests/test_kernels_im2col.py).

    Under the bf16 and fp16 precision policies (``minicnn.functional.precision``) "auto" is
    im2col too: F(4×4, 3×3)'s transforms (entries up to 8 and 1/24) magnify the rounding of
    their 8- or 11-bit inputs about tenfold (tests/test_precision.py), and im2col is what a
    GPU run takes.
    """
    if algorithm == "im2col" or groups != 1 or not winograd_applies(kernel_size, stride, padding):
        return None
    if algorithm == "auto" and get_precision() in ("bf16", "fp16"):
        return None
    if algorithm == "winograd":
        return 4
    if xp is not np:
        return None
    N, C_in = x_shape[0], x_shape[1]
    Ho, Wo = output_size(x_shape, kernel_size, stride, padding)
    return winograd_is_faster(C_in, C_out, Ho, Wo, N, blas_threads())
