"""Launchers and NumPy twins of ``im2col.cu``: a convolution's data movement in one launch each.

On CuPy, ``minicnn.functional.im2col`` and ``minicnn.functional.conv`` call these instead of
their array code (a padded copy, then a 6-D strided copy for im2col; KH·KW strided ``+=`` for
col2im; a per-channel ``sum`` that CuPy spreads over few blocks for db)::

    im2col(x)        cols[(n, i, j), (a, b, c)] = x̃[n, c, i·sh + a, j·sw + b]     im2col_gather
                     the same rounded to 16 bits, for a bf16 / fp16 GEMM     im2col_gather_bf16
                                                                             im2col_gather_fp16
    col2im(dcols)    dx[n, c, h, w] = Σ dcols[(n, i, j), (a, b, c)] over the copies
                     of pixel (h, w)                                              col2im_gather
    db               db[c] = Σ_r dout_mat[r, c]          conv_bias_grad_partial + _finish

x̃ is x zero-padded by ``((top, bottom), (left, right))``; the kernels pad by testing bounds,
never by copying. x is read through its own strides (``storage``), so a channels-last x (the
conv's output layout) or an NCHW one is read in place.

The twins below compute the same in vectorised NumPy, taking the kernel's arguments in order
(arrays as the flat C-contiguous buffers the kernel sees). The strict CPU stand-in for CuPy
runs them when a kernel is launched (``tests/strict_device.py``); tests/test_kernels_im2col.py
compares them with the array code and, on g++, with the CUDA C itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import launch, twin
from .gemm16 import float_to_bf16_twin

__all__ = ["storage", "geometry", "im2col_gather_into", "col2im_gather", "conv_bias_grad",
           "bias_chunks"]

INT32_MAX = 2**31 - 1


def storage(x: Any) -> tuple[Any, tuple[np.int64, ...]]:
    """``x``'s memory as a C-contiguous array, and the element strides of x's axes in it (as
    the kernels' ``long long`` arguments).

    A kernel reads raw memory, so it gets the array whose buffer x views and x's strides in
    elements: for a channels-last (N, C, H, W) view that is its (N, H, W, C) base and strides
    (H·W·C, 1, W·C, C). Found by ordering x's axes by stride: when that transpose is
    C-contiguous it is x's buffer (no copy); otherwise (a cropped or stepped view) x is copied
    once, C-contiguous.
    """
    order = sorted(range(x.ndim), key=lambda k: -x.strides[k])
    base = x.transpose(order)
    if not base.flags.c_contiguous:
        x = base = x.copy()        # C-ordered in x's logical shape: x's strides are its own
    return base, tuple(np.int64(s // x.itemsize) for s in x.strides)


def geometry(x_shape: tuple[int, ...], kernel_size: tuple[int, int], stride: tuple[int, int],
             top_left: tuple[int, int], out_size: tuple[int, int]) -> tuple[np.int32, ...]:
    """(N, C, H, W, KH, KW, sh, sw, top, left, Ho, Wo), the int arguments of the gather
    kernels here and in ``pool.cu``. They index pixels (n, h, w), rows (n, i, j) and the
    columns of cols with 32-bit ints: a ValueError when one of those counts passes 2^31 - 1."""
    N, C, H, W = x_shape
    (kh, kw), (Ho, Wo) = kernel_size, out_size
    largest = max(N * H * W, N * Ho * Wo, kh * kw * C)
    if largest > INT32_MAX:
        raise ValueError(f"kernels: a size above 2^31 - 1 ({largest}): the kernels index "
                         f"pixels, rows and columns with 32-bit ints")
    return tuple(np.int32(v) for v in (N, C, H, W, kh, kw, *stride, *top_left, Ho, Wo))


def im2col_gather_into(xp: Any, x: Any, cols: Any, kernel_size: tuple[int, int],
                       stride: tuple[int, int], top_left: tuple[int, int],
                       out_size: tuple[int, int]) -> None:
    """Fill ``cols`` (N·Ho·Wo, KH·KW·C), C-contiguous, with the patch matrix of x (N, C, H, W)
    zero-padded by ``top_left`` = (top, left) in front: one launch. The padding behind is
    implied by ``out_size`` = (Ho, Wo); x is read in place through its strides. ``cols`` of
    x's dtype gets the values; a 16-bit ``cols`` (``kernels.gemm16``'s storage: uint16 for
    bf16, float16 for fp16) gets them rounded to that format, for a 16-bit GEMM."""
    base, strides = storage(x)
    name, out = "im2col_gather", cols
    if cols.dtype == np.uint16:                 # bf16 bit patterns (kernels.gemm16's storage)
        name = "im2col_gather_bf16"
    elif cols.dtype == np.float16:              # fp16, passed as its bits
        name, out = "im2col_gather_fp16", cols.view(xp.uint16)
    args = (base, out, *strides, *geometry(x.shape, kernel_size, stride, top_left, out_size))
    launch(xp, "im2col", name, x.dtype, cols.size, args)


def col2im_gather(xp: Any, dcols: Any, x_shape: tuple[int, int, int, int],
                  kernel_size: tuple[int, int], stride: tuple[int, int],
                  top_left: tuple[int, int], out_size: tuple[int, int]) -> Any:
    """dx = col2im(dcols) (N, C, H, W), a new array stored channels-last: one launch.

    ``dcols`` (N·Ho·Wo, KH·KW·C) C-contiguous; each pixel sums the entries copied from it,
    so no zero-fill and no atomics."""
    N, C, H, W = x_shape
    dx = xp.empty((N, H, W, C), dtype=dcols.dtype)
    args = (dcols, dx, *geometry(x_shape, kernel_size, stride, top_left, out_size))
    launch(xp, "im2col", "col2im_gather", dcols.dtype, dx.size, args)
    return dx.transpose(0, 3, 1, 2)


def bias_chunks(rows: int, C: int) -> int:
    """How many chunks of rows ``conv_bias_grad_partial`` cuts (rows, C) into: enough
    (chunk, channel) threads to fill a GPU (~64 K), chunks of at least 32 rows."""
    return max(1, min(-(-rows // 32), max(1, 65536 // C)))


def conv_bias_grad(xp: Any, dout_mat: Any, db: Any = None) -> Any:
    """db = Σ_rows dout_mat (C,) for a C-contiguous (rows, C) dout_mat: two launches (partial
    sums per chunk of rows, then per channel; deterministic). Into ``db`` when given (a
    contiguous (C,) array)."""
    rows, C = dout_mat.shape
    chunks = bias_chunks(rows, C)
    partial = xp.empty((chunks, C), dtype=dout_mat.dtype)
    db = xp.empty((C,), dtype=dout_mat.dtype) if db is None else db
    launch(xp, "im2col", "conv_bias_grad_partial", dout_mat.dtype, chunks * C,
           (dout_mat, partial, np.int64(rows), np.int32(C), np.int32(chunks)))
    launch(xp, "im2col", "conv_bias_grad_finish", dout_mat.dtype, C,
           (partial, db, np.int32(C), np.int32(chunks)))
    return db


# -- the twins ---------------------------------------------------------------------------------
# Also used by pool.py's twins: the kernels of both families gather over the same windows.

def strided_view(buffer: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...]
                 ) -> np.ndarray:
    """The array a kernel sees at ``buffer`` through element ``strides``: a read-only view."""
    flat = buffer.reshape(-1)
    return np.lib.stride_tricks.as_strided(
        flat, shape=shape, strides=tuple(int(s) * flat.itemsize for s in strides),
        writeable=False)


def _padded_size(H, W, KH, KW, sh, sw, top, left, Ho, Wo) -> tuple[int, int]:
    """(Hp, Wp): the padded image holds x at (top, left) and every one of the Ho×Wo windows."""
    return max(top + H, (Ho - 1) * sh + KH), max(left + W, (Wo - 1) * sw + KW)


def padded_windows(x4: np.ndarray, KH, KW, sh, sw, top, left, Ho, Wo, fill) -> np.ndarray:
    """(N, Ho, Wo, KH, KW, C): the windows of x̃, x (N, C, H, W) copied channels-last into a
    ``fill`` buffer at (top, left); ``[n, i, j, a, b, c] = x̃[n, c, i·sh + a, j·sw + b]`` (a
    strided view of that buffer)."""
    N, C, H, W = x4.shape
    x_p = np.full((N, *_padded_size(H, W, KH, KW, sh, sw, top, left, Ho, Wo), C), fill,
                  dtype=x4.dtype)
    x_p[:, top:top + H, left:left + W, :] = x4.transpose(0, 2, 3, 1)
    t_n, t_h, t_w, t_c = x_p.strides
    return np.lib.stride_tricks.as_strided(
        x_p, shape=(N, Ho, Wo, KH, KW, C), strides=(t_n, sh * t_h, sw * t_w, t_h, t_w, t_c))


def add_windows_back(blocks: np.ndarray, H, W, sh, sw, top, left) -> np.ndarray:
    """dx (N, H, W, C), the adjoint of ``padded_windows``: each window entry
    blocks[n, i, j, a, b, c] added onto x̃[n, c, i·sh + a, j·sw + b], one kernel position
    (a, b) at a time in (a, b) order (as the gather kernels sum), the padding cut."""
    N, Ho, Wo, KH, KW, C = blocks.shape
    dx_p = np.zeros((N, *_padded_size(H, W, KH, KW, sh, sw, top, left, Ho, Wo), C),
                    dtype=blocks.dtype)
    for a in range(KH):
        for b in range(KW):
            dx_p[:, a:a + sh * Ho:sh, b:b + sw * Wo:sw, :] += blocks[:, :, :, a, b, :]
    return dx_p[:, top:top + H, left:left + W, :]


@twin("im2col_gather")
def im2col_gather_twin(x, cols, s_n, s_c, s_h, s_w, N, C, H, W, KH, KW, sh, sw, top, left,
                       Ho, Wo) -> None:
    """cols[(n, i, j), (a, b, c)] = x̃[n, c, i·sh + a, j·sw + b], x̃ zero-padded."""
    x4 = strided_view(x, (N, C, H, W), (s_n, s_c, s_h, s_w))
    cols.reshape(N, Ho, Wo, KH, KW, C)[...] = padded_windows(x4, KH, KW, sh, sw, top, left,
                                                             Ho, Wo, 0)


@twin("im2col_gather_bf16")
def im2col_gather_bf16_twin(x, cols, *args) -> None:
    """The patches rounded to bfloat16, as bit patterns (``gemm16_float_to_bf16``'s)."""
    patches = np.empty(cols.shape, x.dtype)
    im2col_gather_twin(x, patches, *args)
    patches = patches.astype(np.float32)
    float_to_bf16_twin(patches.reshape(-1), cols.reshape(-1), np.int64(cols.size))


@twin("im2col_gather_fp16")
def im2col_gather_fp16_twin(x, cols, *args) -> None:
    """The patches rounded to float16 (NumPy's conversion), as bit patterns."""
    patches = np.empty(cols.shape, x.dtype)
    im2col_gather_twin(x, patches, *args)
    with np.errstate(over="ignore", invalid="ignore"):
        cols[...] = patches.astype(np.float32).astype(np.float16).view(np.uint16)


@twin("col2im_gather")
def col2im_gather_twin(dcols, dx, N, C, H, W, KH, KW, sh, sw, top, left, Ho, Wo) -> None:
    """dx[n, h, w, c] = Σ dcols[(n, i, j), (a, b, c)] over i·sh + a - top = h,
    j·sw + b - left = w."""
    blocks = dcols.reshape(N, Ho, Wo, KH, KW, C)
    dx.reshape(N, H, W, C)[...] = add_windows_back(blocks, H, W, sh, sw, top, left)


@twin("conv_bias_grad_partial")
def conv_bias_grad_partial_twin(dout, partial, rows, C, chunks) -> None:
    """partial[k, c] = Σ of dout[r, c] over the rows r of chunk k (⌈rows / chunks⌉ each)."""
    per = -(-int(rows) // int(chunks))
    d = dout.reshape(-1)[:rows * C].reshape(rows, C)
    padded = np.zeros((chunks * per, C), dtype=partial.dtype)
    padded[:rows] = d
    partial.reshape(chunks, C)[...] = padded.reshape(chunks, per, C).sum(axis=1)


@twin("conv_bias_grad_finish")
def conv_bias_grad_finish_twin(partial, db, C, chunks) -> None:
    """db[c] = Σ_k partial[k, c]."""
    db.reshape(-1)[:C] = partial.reshape(-1)[:chunks * C].reshape(chunks, C).sum(axis=0)
