"""im2col / col2im: turn a convolution into one matrix multiply (and back).

A convolution slides a KH×KW window over the (padded) input. ``im2col`` copies every window
into one row of a matrix, so that the convolution of all windows with all filters becomes a
single GEMM, the operation a BLAS (or cuBLAS) runs at close to the machine's peak speed:

    cols  = im2col(x)          (N·Ho·Wo, KH·KW·C)     one row per output pixel (n, ho, wo)
    out   = cols @ W_mat.T     (N·Ho·Wo, C_out)        W_mat: (C_out, KH·KW·C)

``col2im`` is its adjoint (the backward pass): every entry of a row is added back to the input
pixel it was copied from. Windows overlap when stride < kernel, so a pixel receives the sum of
all its copies' gradients. A convolution's input gradient is

    dx    = col2im(dout_mat @ W_mat) = col2im_matmul(dout_mat, W_mat, ...)

where ``col2im_matmul`` computes the same one kernel position at a time, without ever
holding the KH·KW-times larger ``dout_mat @ W_mat``, and ``conv_input_grad`` computes it for
stride 1 as a convolution of dout with the flipped kernel (``minicnn.functional.conv`` chooses
between the two). ``output_size`` is the one "does the window fit" check of the convolution
and pooling layers. The loop versions of these functions, which the tests compare them with,
are in ``minicnn.functional.reference``.

Memory layout (why the columns are ordered (kh, kw, c), channels innermost)
---------------------------------------------------------------------------
Arrays are *logically* (N, C, H, W) everywhere in minicnn, but the conv output is stored
*physically* channels-last: the GEMM yields (N·Ho·Wo, C_out), i.e. NHWC memory, and we return
``out.reshape(N, Ho, Wo, C_out).transpose(0, 3, 1, 2)``, a view with no copy. Element-wise
layers keep that layout, and the next ``im2col`` reads each window's C channels from
contiguous memory. Padding allocates its buffer channels-last for the same reason. All
functions here accept any memory layout (they only use strides), the result is the same.

Padding is given as ``((top, bottom), (left, right))`` (see ``normalize_padding``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..backend import get_array_module
from ..kernels import im2col as im2col_kernels
from ..kernels import uses_kernels
from .precision import gemm_inputs, matmul
from .scratch import matmul_into

__all__ = [
    "pair", "normalize_padding", "output_size", "window_slices", "pad_channels_last",
    "window_view", "padded_windows", "im2col", "col2im", "col2im_matmul", "flipped_pads",
    "flipped_patches",
    "conv_input_grad",
]

Pads = tuple[tuple[int, int], tuple[int, int]]


def pair(value: Any, name: str = "value", layer: str = "") -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(3, 2) -> (3, 2)``; raise ValueError for anything else."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    try:
        a_int, b_int = int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}"
                         ) from None
    if a_int != a or b_int != b:
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    return a_int, b_int


def normalize_padding(padding: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                      layer: str = "") -> Pads:
    """Padding as ``((top, bottom), (left, right))``.

    Parameters
    ----------
    padding : int, (ph, pw), "valid" or "same"
        An int or pair pads both sides equally; ``"valid"`` is no padding; ``"same"`` (stride 1
        only, as in PyTorch) keeps H and W: the total padding K - 1 is split as
        top = (K - 1) // 2, bottom = K - 1 - top, so an even kernel puts the extra row/column
        at the bottom/right (as TF/Keras and PyTorch do).
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(f"{layer}: padding='same' needs stride 1 (as in PyTorch), "
                                 f"got stride={stride}")
            (kh, kw) = kernel_size
            top, left = (kh - 1) // 2, (kw - 1) // 2
            return (top, kh - 1 - top), (left, kw - 1 - left)
        raise ValueError(f"{layer}: padding must be an int, a pair, 'same' or 'valid', "
                         f"got {padding!r}")
    ph, pw = pair(padding, "padding", layer)
    if ph < 0 or pw < 0:
        raise ValueError(f"{layer}: padding must be >= 0, got {padding!r}")
    return (ph, ph), (pw, pw)


def output_size(x_shape: tuple[int, ...], kernel_size: tuple[int, int],
                stride: tuple[int, int], padding: Pads, layer: str = "") -> tuple[int, int]:
    """(Ho, Wo), the number of window positions, after checking that the window fits.

    ``Ho = floor((H + top + bottom - KH) / sh) + 1`` (the same for Wo). The one check shared
    by the convolution and the pooling layers.

    Raises
    ------
    ValueError
        When the kernel is larger than the padded input (no window position at all), naming
        ``layer`` and the shapes.
    """
    H, W = x_shape[2], x_shape[3]
    (kh, kw), (sh, sw) = kernel_size, stride
    (top, bottom), (left, right) = padding
    Hp, Wp = H + top + bottom, W + left + right
    if Hp < kh or Wp < kw:
        raise ValueError(f"{layer}: input of shape {tuple(x_shape)} (padded to H×W = "
                         f"{Hp}×{Wp}) is smaller than the kernel {kh}×{kw}")
    return (Hp - kh) // sh + 1, (Wp - kw) // sw + 1


def window_slices(kernel_size: tuple[int, int], stride: tuple[int, int],
                  out_size: tuple[int, int]) -> Iterator[tuple[int, int, tuple[slice, ...]]]:
    """For each kernel position (a, b): the pixels it touches in all windows, as one slice.

    Yields ``(a, b, index)`` in row-major kernel order, where ``x_p_nhwc[index]`` is the
    (N, Ho, Wo, C) strided view ``x_p[n, c, i·sh + a, j·sw + b]`` of a channels-last padded
    array (N, Hp, Wp, C). The slices of one position never overlap, so ``dx_p[index] += g``
    is a single vectorised step with nothing lost: the backward passes (``col2im``,
    ``col2im_matmul``, max pooling) loop over the KH·KW positions, not over the pixels.
    """
    (kh, kw), (sh, sw), (Ho, Wo) = kernel_size, stride, out_size
    for a in range(kh):
        for b in range(kw):
            yield a, b, (slice(None), slice(a, a + sh * Ho, sh), slice(b, b + sw * Wo, sw))


def pad_channels_last(x: Any, padding: Pads, value: float = 0.0, out: Any = None) -> Any:
    """Pad H and W of ``x`` (N, C, H, W) with ``value``; the result is stored channels-last.

    The buffer is (N, Hp, Wp, C), returned as its (N, C, Hp, Wp) view, and the interior is
    assigned: one copy, in the layout ``im2col`` reads fastest (``np.pad`` would produce
    C-order NCHW instead). Without padding ``x`` itself is returned.

    ``out``, optional: a C-contiguous (N, Hp, Wp, C) buffer to reuse (scratch memory);
    only its border is filled with ``value`` and its interior overwritten.
    """
    (top, bottom), (left, right) = padding
    if top == bottom == left == right == 0:
        return x
    xp = get_array_module(x)
    N, C, H, W = x.shape
    shape = (N, H + top + bottom, W + left + right, C)
    if out is None:
        out = xp.full(shape, value, dtype=x.dtype)
    else:
        out[:, :top], out[:, top + H:] = value, value
        out[:, :, :left], out[:, :, left + W:] = value, value
    x_p = out.transpose(0, 3, 1, 2)
    x_p[:, :, top:top + H, left:left + W] = x
    return x_p


def window_view(x_p: Any, kernel_size: tuple[int, int], stride: tuple[int, int]) -> Any:
    """All KH×KW windows of the (already padded) ``x_p`` as a view, no copy.

    Returns an array of shape (N, Ho, Wo, KH, KW, C) with
    ``windows[n, i, j, a, b, c] = x_p[n, c, i*sh + a, j*sw + b]``. It is built from ``x_p``'s
    own strides, so it works for any memory layout. Read-only use only: windows overlap.
    """
    xp = get_array_module(x_p)
    N, C, Hp, Wp = x_p.shape
    (kh, kw), (sh, sw) = kernel_size, stride
    Ho, Wo = (Hp - kh) // sh + 1, (Wp - kw) // sw + 1
    s_n, s_c, s_h, s_w = x_p.strides  # bytes, in the logical (N, C, H, W) order
    return xp.lib.stride_tricks.as_strided(
        x_p, shape=(N, Ho, Wo, kh, kw, C),
        strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))


def padded_windows(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
                   padding: Pads, workspace: Any = None) -> Any:
    """The windows of x's zero-padded channels-last copy, (N, Ho, Wo, KH, KW, C): a strided
    view of ``pad_channels_last(x)`` (in the workspace's "x_pad" buffer when there is padding
    and a ``workspace``), ``window_view``. What ``im2col`` copies into its patch matrix."""
    (top, bottom), (left, right) = padding
    N, C, H, W = x.shape
    pad_buf = None
    if workspace is not None and (top or bottom or left or right):
        pad_buf = workspace("x_pad", (N, H + top + bottom, W + left + right, C), x.dtype)
    return window_view(pad_channels_last(x, padding, out=pad_buf), kernel_size, stride)


def im2col(x: Any, kernel_size: tuple[int, int], stride: tuple[int, int],
           padding: Pads, workspace: Any = None, dtype: Any = None
           ) -> tuple[Any, tuple[int, int]]:
    """The patch matrix of ``x``: one row per output pixel, one column per kernel entry.

    Parameters
    ----------
    x : array (N, C, H, W), any memory layout
    kernel_size, stride : (KH, KW), (sh, sw)
    padding : ((top, bottom), (left, right)), zeros
    workspace : callable, optional
        ``workspace(name, shape, dtype)`` returns a reusable buffer: the scratch arena that
        all layers share (``minicnn.functional.scratch``), asked for "x_pad" (the padded
        copy, only when there is padding) and "cols" (the result). Writing into memory
        already touched avoids allocating (and page-faulting) ~100 MB per layer per step; the
        result is the same. The returned cols is then that buffer: valid until its next user.
    dtype : optional, CuPy only
        The 16-bit storage of a bf16 / fp16 GEMM (``precision.gemm_storage(x)``): the
        patches are written rounded to it, in the same pass. None: x's dtype.

    Returns
    -------
    cols : array (N·Ho·Wo, KH·KW·C), C-contiguous
        ``cols[(n, i, j), (a, b, c)] = x_padded[n, c, i*sh + a, j*sw + b]``: rows ordered
        (n, ho, wo), columns (kh, kw, c) with the channel innermost.
    (Ho, Wo) : the output size, ``floor((H + pads - K) / s) + 1``

    Equals ``reference.im2col`` (a loop over every row and column), in one copy from the
    strided ``window_view``. On CuPy it is one gather kernel instead
    (``minicnn.kernels.im2col``: x read in place through its strides, the padding by bounds
    tests, no "x_pad"): the padded copy and the 6-D strided copy are about six launches.
    """
    xp = get_array_module(x)
    if uses_kernels(x):
        N, C = x.shape[:2]
        (kh, kw), ((top, _), (left, _)) = kernel_size, padding
        Ho, Wo = output_size(x.shape, kernel_size, stride, padding, "im2col")
        shape, dtype = (N * Ho * Wo, kh * kw * C), x.dtype if dtype is None else dtype
        cols = (xp.empty(shape, dtype=dtype) if workspace is None
                else workspace("cols", shape, dtype))
        im2col_kernels.im2col_gather_into(xp, x, cols, kernel_size, stride, (top, left),
                                          (Ho, Wo))
        return cols, (Ho, Wo)
    if dtype is not None and dtype != x.dtype:
        raise TypeError(f"im2col: patches in {dtype} are a CuPy route (a 16-bit GEMM's); "
                        f"NumPy writes them in x's dtype ({x.dtype})")
    windows = padded_windows(x, kernel_size, stride, padding, workspace)
    N, Ho, Wo, kh, kw, C = windows.shape
    if workspace is None:
        cols = xp.ascontiguousarray(windows)  # the one copy, straight into the GEMM layout
    else:
        cols = workspace("cols", windows.shape, x.dtype)
        xp.copyto(cols, windows)
    return cols.reshape(N * Ho * Wo, kh * kw * C), (Ho, Wo)


def col2im(cols: Any, x_shape: tuple[int, int, int, int], kernel_size: tuple[int, int],
           stride: tuple[int, int], padding: Pads) -> Any:
    """Adjoint of ``im2col``: add every column entry back onto the pixel it came from.

    ``dx[n, c, h, w] = Σ cols[(n, i, j), (a, b, c)]`` over all (i, j, a, b) with
    ``i*sh + a - top = h`` and ``j*sw + b - left = w``.

    Parameters
    ----------
    cols : array (N·Ho·Wo, KH·KW·C) as returned by ``im2col``, or (N, Ho, Wo, KH, KW, C)
        (any view, e.g. a ``broadcast_to``, is fine: it is only read).
    x_shape : (N, C, H, W), the shape of the input of ``im2col``
    kernel_size, stride, padding : as given to ``im2col``

    Returns
    -------
    dx : array (N, C, H, W), same dtype as ``cols``, stored channels-last

    Equals ``reference.col2im`` (a loop over every entry of cols). The loop here runs over the
    KH·KW kernel positions, not over pixels (``window_slices``): for a fixed (a, b), the pixels
    hit by all (n, i, j) form one strided slice of the padded input, so each step is a single
    vectorised ``+=``; overlap between windows is handled by the successive steps (measured
    faster than ``np.add.at``, see docs/benchmarks.md). On CuPy it is one gather kernel
    (``minicnn.kernels.im2col``: one thread per pixel of dx sums the entries copied from it;
    no zero-fill, no atomics) instead of 2·KH·KW launches.
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    (kh, kw) = kernel_size
    (top, bottom), (left, right) = padding
    Ho, Wo = output_size(x_shape, kernel_size, stride, padding, "col2im")
    if uses_kernels(cols):
        dcols = xp.ascontiguousarray(cols.reshape(N * Ho * Wo, kh * kw * C))
        return im2col_kernels.col2im_gather(xp, dcols, x_shape, kernel_size, stride,
                                            (top, left), (Ho, Wo))
    cols = cols.reshape(N, Ho, Wo, kh, kw, C)
    dx_p = xp.zeros((N, H + top + bottom, W + left + right, C), dtype=cols.dtype)
    for a, b, index in window_slices(kernel_size, stride, (Ho, Wo)):
        dx_p[index] += cols[:, :, :, a, b, :]
    # Crop the padding (its gradient is discarded); logically NCHW, stored channels-last.
    return dx_p[:, top:top + H, left:left + W, :].transpose(0, 3, 1, 2)


def _clipped(offset: int, before: int, stride: int, in_size: int,
             out_size: int) -> tuple[slice, slice] | None:
    """Along one axis: the input pixels a kernel offset touches, and the outputs touching them.

    Output i reads input pixel ``i·s + offset - before`` (``before``: the padding in front);
    those of the padding are dropped. Returns ``(input_slice, output_slice)`` over the
    unpadded input and the output, or None when the offset only ever touches padding.
    """
    i_lo = max(0, -(-(before - offset) // stride))                     # ceil, clipped at 0
    i_hi = min(out_size - 1, (in_size - 1 + before - offset) // stride)  # inclusive
    if i_lo > i_hi:
        return None
    h_lo = i_lo * stride + offset - before
    return slice(h_lo, h_lo + (i_hi - i_lo) * stride + 1, stride), slice(i_lo, i_hi + 1)


def col2im_matmul(dout_mat: Any, W_mat: Any, x_shape: tuple[int, int, int, int],
                  kernel_size: tuple[int, int], stride: tuple[int, int], padding: Pads,
                  workspace: Any = None) -> Any:
    """= col2im(dout_mat @ W_mat), without the KH·KW-times larger matrix.

    Equals ``col2im(dout_mat @ W_mat, x_shape, ...)`` and the dx of
    ``reference.conv2d_backward``.

    The input gradient of a convolution: ``dcols = dout_mat @ W_mat`` has one row per output
    pixel and one column per kernel entry (kh, kw, c), and ``col2im`` adds each entry back
    onto the input pixel it was copied from. Split W_mat's columns by kernel position: the
    block of dcols that belongs to (a, b) is ``dout_mat @ W_ab`` (N·Ho·Wo, C_in), with
    ``W_ab = W_mat[:, (a, b, :)]``, and col2im adds exactly that block onto the input pixels
    at offset (a, b) of every window. So

        dx[:, i·sh + a - top, j·sw + b - left, :] += dout_mat @ W_ab        for each (a, b),

    the same FLOPs as the single GEMM, but only one (N·Ho·Wo, C_in) block is ever in memory,
    not the (N·Ho·Wo, KH·KW·C_in) dcols (9x larger for 3×3, written once and read once).
    It is also the "transposed convolution" picture: the gradient of a convolution is a
    convolution of dout with the flipped kernel.

    The sums go straight into the unpadded dx: each position adds only the rows and columns
    that land inside the input (``_clipped``; the gradient of the padding is discarded
    anyway). A stride-1 convolution that keeps the size ("same" padding, the common 3×3 with
    padding 1) has one position, (top, left), whose pixel *is* the output pixel: its block
    covers dx exactly once, so the GEMM writes it into dx directly and only the other
    positions add. That saves zero-filling dx, one full pass of adds, the padded buffer, and
    returns a contiguous (not cropped) dx, which the layers below read faster.

    Parameters
    ----------
    dout_mat : array (N·Ho·Wo, C_out)
        dL/dout with rows ordered (n, ho, wo), as the rows of ``im2col``'s ``cols``.
    W_mat : array (C_out, KH·KW·C_in)
        The weights with columns in ``im2col``'s (kh, kw, c) order.
    x_shape : (N, C_in, H, W), the input's shape
    kernel_size, stride, padding : as given to ``im2col``
    workspace : callable, optional
        ``workspace(name, shape, dtype)`` for the (N·Ho·Wo, C_in) block ("dcols_block"), or
        on CuPy the whole dcols ("dcols"), dead when this returns (the scratch arena,
        ``minicnn.functional.scratch``).

    Returns
    -------
    dx : array (N, C_in, H, W), dout_mat's dtype, stored channels-last (C-contiguous NHWC)

    On CuPy the loop is 2·KH·KW launches (a GEMM and a strided ``+=`` per position), and a
    GPU has the memory for dcols: there it is ``col2im(dout_mat @ W_mat)`` as written, one
    GEMM into the scratch "dcols" and the one-launch gather ``col2im``.
    """
    xp = get_array_module(dout_mat)
    N, C, H, W = x_shape
    (kh, kw), (sh, sw) = kernel_size, stride
    (top, _), (left, _) = padding
    Ho, Wo = output_size(x_shape, kernel_size, stride, padding, "col2im_matmul")
    if uses_kernels(dout_mat):
        shape = (N * Ho * Wo, kh * kw * C)
        dcols = (xp.empty(shape, dtype=dout_mat.dtype) if workspace is None
                 else workspace("dcols", shape, dout_mat.dtype))
        matmul(dout_mat, W_mat, out=dcols)          # the precision policy's GEMM
        return im2col_kernels.col2im_gather(xp, dcols, x_shape, kernel_size, stride,
                                            (top, left), (Ho, Wo))
    dout_mat, W_mat = gemm_inputs(dout_mat, W_mat)      # the precision policy's format
    W_ab = W_mat.reshape(W_mat.shape[0], kh, kw, C)
    # The position (top, left) reads input pixel (i, j) for output (i, j): with stride 1 and
    # Ho, Wo = H, W, its block is dx's first term in full.
    direct = (sh, sw) == (1, 1) and (Ho, Wo) == (H, W)
    dx = (xp.empty if direct else xp.zeros)((N, H, W, C), dtype=dout_mat.dtype)
    if direct:
        matmul_into(dout_mat, W_ab[:, top, left, :], dx.reshape(N * H * W, C))
    shape = (N * Ho * Wo, C)
    block = (xp.empty(shape, dtype=dout_mat.dtype) if workspace is None
             else workspace("dcols_block", shape, dout_mat.dtype))
    for a in range(kh):
        along_h = _clipped(a, top, sh, H, Ho)
        for b in range(kw):
            along_w = _clipped(b, left, sw, W, Wo)
            if along_h is None or along_w is None or (direct and (a, b) == (top, left)):
                continue
            matmul_into(dout_mat, W_ab[:, a, b, :], block)        # dcols' columns of (a, b)
            (h_in, i_out), (w_in, j_out) = along_h, along_w
            dx[:, h_in, w_in, :] += block.reshape(N, Ho, Wo, C)[:, i_out, j_out, :]
    return dx.transpose(0, 3, 1, 2)                   # logically NCHW, stored channels-last


def flipped_pads(kernel_size: tuple[int, int], padding: Pads) -> Pads | None:
    """The padding of dout that turns a stride-1 convolution's dx into a convolution.

    dx[h] = Σ_a dout[h + top - a] W[a] (one axis, stride 1). Padding dout with KH - 1 - top
    in front and KH - 1 - bottom behind, the window starting at h holds dout[h + top - a] at
    its offset KH - 1 - a: a plain convolution with the kernel flipped. None when a padding
    exceeds KH - 1 (then dout would need a negative padding).
    """
    (kh, kw), ((top, bottom), (left, right)) = kernel_size, padding
    pads = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
    return pads if min(min(pair_) for pair_ in pads) >= 0 else None


def flipped_patches(dout: Any, x_shape: tuple[int, int, int, int], kernel_size: tuple[int, int],
                    padding: Pads, workspace: Any = None, dtype: Any = None) -> Any:
    """The patch matrix of dout padded by ``flipped_pads``: ``im2col`` of a stride-1 dout.

    ``dcols[(n, h, w), (a, b, o)] = dout[n, o, h + top - (KH-1-a), w + left - (KW-1-b)]``
    (zero outside dout), (N·H·W, KH·KW·C_out): one row per *input* pixel, the dout entries
    whose windows read it, with the kernel offsets flipped. Equals
    ``reference.im2col(dout, kernel_size, (1, 1), flipped_pads(kernel_size, padding))``.
    ``conv_input_grad`` reads dx from it, and ``minicnn.functional.conv.conv2d_weight_grad``
    can read dW from it.

    Parameters
    ----------
    dout : array (N, C_out, Ho, Wo), any memory layout (Ho, Wo = the stride-1 output size)
    x_shape : (N, C_in, H, W), the input's shape
    kernel_size : (KH, KW)
    padding : ((top, bottom), (left, right)) of the forward pass; ``flipped_pads`` must not
        be None for it
    workspace : callable, optional
        As for ``im2col`` (its "x_pad" and "cols" buffers, here dout's).
    dtype : optional
        As for ``im2col``: the patches' storage for a 16-bit GEMM on CuPy.
    """
    pads = flipped_pads(kernel_size, padding)
    if pads is None:
        raise ValueError(f"flipped_patches: padding {padding} exceeds kernel size - 1 "
                         f"for kernel {kernel_size}; use col2im_matmul")
    cols, (Ho, Wo) = im2col(dout, kernel_size, (1, 1), pads, workspace=workspace, dtype=dtype)
    if (Ho, Wo) != tuple(x_shape[2:]):
        raise ValueError(f"flipped_patches: dout of shape {tuple(dout.shape)} does not belong "
                         f"to a stride-1 convolution of an input of shape {tuple(x_shape)}")
    return cols


def conv_input_grad(dout: Any, W_mat: Any, x_shape: tuple[int, int, int, int],
                    kernel_size: tuple[int, int], padding: Pads, workspace: Any = None,
                    dcols: Any = None) -> Any:
    """dx of a stride-1 convolution as one convolution of dout with the flipped kernel.

    = ``col2im_matmul`` for stride 1 and the dx of ``reference.conv2d_backward`` (the tests
    check that they agree), computed as the "transposed convolution" it is::

        dx[n, c, h, w] = Σ_{o, a, b} dout[n, o, h + top - a, w + left - b] · W[o, c, a, b]
                       = conv(pad(dout), W_flip)[n, c, h, w]
        W_flip[c, o, a, b] = W[o, c, KH-1-a, KW-1-b]          (C_in, C_out, KH, KW)

    with dout padded by ``flipped_pads``. That is ``flipped_patches(dout)`` (N·H·W,
    KH·KW·C_out) and a single GEMM with K = KH·KW·C_out, instead of KH·KW thin GEMMs
    (K = C_out) whose blocks are then added into dx slice by slice: the same FLOPs, but one
    efficient GEMM and no read-modify-write passes over dx (measured faster at the VGG sizes,
    docs/benchmarks.md). The price is the patch matrix of dout: KH·KW times dout's size
    (scratch memory).

    Parameters
    ----------
    dout : array (N, C_out, Ho, Wo), any memory layout (Ho, Wo = the stride-1 output size)
    W_mat : array (C_out, KH·KW·C_in), the weights in ``im2col``'s (kh, kw, c) column order,
        or the weights W (C_out, C_in, KH, KW) themselves (W_flip is one copy of either)
    x_shape : (N, C_in, H, W), the input's shape
    kernel_size : (KH, KW)
    padding : ((top, bottom), (left, right)) of the forward pass; ``flipped_pads`` must not
        be None for it
    workspace : callable, optional
        As for ``im2col`` (its "x_pad" and "cols" buffers, here dout's), dead when this
        returns.
    dcols : array, optional
        ``flipped_patches(dout, ...)`` when the caller has built it already (then ``dout``
        is only read for its shape).

    Returns
    -------
    dx : array (N, C_in, H, W), dout's dtype, stored channels-last (C-contiguous NHWC)
    """
    N, C_in, H, W = x_shape
    (kh, kw) = kernel_size
    C_out = W_mat.shape[0]
    if dcols is None:
        dcols = flipped_patches(dout, x_shape, kernel_size, padding, workspace=workspace)
    # W_flip in the (kh, kw, o) column order of dout's patches: (C_in, KH·KW·C_out), a copy.
    if W_mat.ndim == 4:                                       # W (C_out, C_in, KH, KW)
        W_flip = W_mat[:, :, ::-1, ::-1].transpose(1, 2, 3, 0)
    else:
        W_flip = W_mat.reshape(C_out, kh, kw, C_in)[:, ::-1, ::-1, :].transpose(3, 1, 2, 0)
    W_flip = W_flip.reshape(C_in, kh * kw * C_out)
    dx = matmul(dcols, W_flip.T)                              # (N·H·W, C_in)
    return dx.reshape(N, H, W, C_in).transpose(0, 3, 1, 2)    # stored channels-last
