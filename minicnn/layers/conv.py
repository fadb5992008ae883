"""2-D convolution as im2col + one matrix multiply."""

from __future__ import annotations

import functools
import math
from typing import Any

from .. import init as initializers
from ..backend import get_array_module
from ..functional.im2col import (
    col2im_matmul,
    conv_input_grad,
    flipped_pads,
    im2col,
    normalize_padding,
    output_size,
    pair,
)
from .base import Layer, Parameter, check_channels, check_float_input, check_ndim, new_array

__all__ = ["Conv2d"]


class Conv2d(Layer):
    """2-D convolution (in fact a cross-correlation, like every deep-learning library).

    Parameters
    ----------
    in_channels, out_channels : int
        C_in and C_out.
    kernel_size : int or (KH, KW)
    stride : int or (sh, sw), default 1
    padding : int, (ph, pw), "same" or "valid", default 0
        Zero padding of H and W. ``"same"`` (stride 1 only, as in PyTorch) keeps H and W; for
        an even kernel the extra row/column goes at the bottom/right (as in TF/Keras and
        PyTorch). ``"valid"`` means no padding.
    bias : bool, default True
    init : str or callable, default "he_normal"
        ``minicnn.init`` initialiser for W, called with fan_in = C_in·KH·KW and
        fan_out = C_out·KH·KW. b starts at zero.
    kernel_regularizer : optional
        A penalty such as ``minicnn.regularizers.L2(1e-4)`` attached to W.

    Attributes
    ----------
    W : Parameter (C_out, C_in, KH, KW)
    b : Parameter (C_out,) or None

    Forward
    -------
    For x of shape (N, C_in, H, W), with x̃ the zero-padded input:

        y[n, o, i, j] = b[o] + Σ_{c, a, b'} W[o, c, a, b'] · x̃[n, c, i·sh + a, j·sw + b']

    Output shape (N, C_out, Ho, Wo) with Ho = floor((H + 2·ph - KH) / sh) + 1 (same for Wo).
    This is a *cross-correlation*: the kernel is not flipped. A true convolution would flip
    it, but since W is learned, the network simply learns the flipped kernel; skipping the
    flip saves work and makes W[o, c, a, b'] the weight of the pixel at offset (a, b') of the
    window, which is easier to read.

    Computed as one matrix product: ``cols = im2col(x)`` has one row per output pixel and
    one column per kernel entry (kh, kw, c), and ``W_mat`` is W reordered to
    (C_out, KH·KW·C_in) in the same (kh, kw, c) column order:

        cols   (N·Ho·Wo, KH·KW·C_in)
        out  = cols @ W_matᵀ + b          (N·Ho·Wo, C_out)   -> y (N, C_out, Ho, Wo)

    Backward
    --------
    With dout_mat = dL/dout reshaped to (N·Ho·Wo, C_out) (the same row order as cols):

        dW_mat = dout_matᵀ @ cols          (C_out, KH·KW·C_in)  -> dW (C_out, C_in, KH, KW)
        db     = Σ_rows dout_mat           (C_out,)
        dcols  = dout_mat @ W_mat          (N·Ho·Wo, KH·KW·C_in)
        dx     = col2im(dcols)             (N, C_in, H, W)

    The first two are the gradient of a linear map summed over all output pixels (every pixel
    uses the same W); col2im adds each window entry's gradient back onto the input pixel it
    was copied from, summing where windows overlap.

    The last two lines are one call, ``col2im_matmul(dout_mat, W_mat, ...)`` (in
    ``minicnn.functional.im2col``): the same sum, one kernel position at a time, without
    the KH·KW-times larger dcols matrix in memory. For stride 1 (the common 3×3 layers)
    the same dx is computed faster as a convolution of dout with the flipped kernel,
    ``conv_input_grad``: one im2col of dout and one GEMM, its patches written into the
    memory of the forward's ``cols`` (dead once dW is computed; a second backward after
    one forward is then an error).

    The output is stored channels-last (a view of the GEMM result, see
    ``minicnn.functional.im2col``); it is logically (N, C_out, Ho, Wo) like any other array.

    ``input_grad`` (attribute, default True): when False, ``backward`` computes only dW and
    db and returns None. Nothing needs dL/dx of the images, so ``fit`` switches it off for
    the network's first layer, as PyTorch does for an input that does not require grad;
    it saves the dx loop of that layer (about a tenth of a small net's training step).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, bias: bool = True, init: Any = "he_normal",
                 kernel_regularizer: Any = None):
        super().__init__()
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"Conv2d: in_channels and out_channels must be >= 1, got "
                             f"{in_channels} and {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = pair(stride, "stride", "Conv2d")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"Conv2d: kernel_size and stride must be >= 1, got "
                             f"{kernel_size!r} and {stride!r}")
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding",
                                                                     "Conv2d")
        self.pads = normalize_padding(padding, self.kernel_size, self.stride, "Conv2d")
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        fan_in, fan_out = self.in_channels * kh * kw, self.out_channels * kh * kw
        self.W = Parameter(new_array(initializers.get(init)(shape, fan_in, fan_out)), "W",
                           regularizer=kernel_regularizer)
        self.b = (Parameter(new_array(initializers.zeros((self.out_channels,))), "b")
                  if bias else None)
        self.input_grad = True

    def _expected(self) -> str:
        return f"(N, {self.in_channels}, H, W)"

    def forward(self, x: Any) -> Any:
        xp = check_float_input("Conv2d", x)
        check_ndim("Conv2d", x, 4, self._expected())
        check_channels("Conv2d", x, self.in_channels, self._expected())
        N = x.shape[0]
        Ho, Wo = output_size(x.shape, self.kernel_size, self.stride, self.pads, "Conv2d")
        cols, _ = im2col(x, self.kernel_size, self.stride, self.pads,
                         workspace=self._workspace(xp, tuple(x.shape), (Ho, Wo)))
        # W in the (kh, kw, c) column order of cols: (C_out, KH·KW·C_in).
        W_mat = self.W.data.astype(x.dtype, copy=False).transpose(0, 2, 3, 1)
        W_mat = W_mat.reshape(self.out_channels, -1)
        out = cols @ W_mat.T                                  # (N·Ho·Wo, C_out)
        if self.b is not None:
            out += self.b.data.astype(x.dtype, copy=False)
        self.cache = (cols, W_mat, tuple(x.shape))  # arrays and shapes only (no module)
        # Logically (N, C_out, Ho, Wo), physically NHWC: a view, no transpose copy.
        return out.reshape(N, Ho, Wo, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, dout: Any) -> Any:
        cols, W_mat, x_shape = self.cached()
        if cols is None:
            raise RuntimeError("Conv2d.backward: called a second time after one forward; its "
                               "patch matrix was reused for the first dx: run forward again")
        xp = get_array_module(cols)
        (kh, kw), C_in, C_out = self.kernel_size, self.in_channels, self.out_channels
        # (N, C_out, Ho, Wo) -> rows (n, ho, wo) like cols; free when dout is channels-last.
        dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, C_out)
        # dW_mat = dout_matᵀ @ cols (C_out, KH·KW·C_in), computed as its transpose colsᵀ @
        # dout_mat: as fast on a quiet CPU, and OpenBLAS's threads lose 1.3-2.8x less time
        # when other processes compete for the cores (benchmarks/ab.py --only conv_dW).
        if self.W.requires_grad:  # a frozen W (PatchWhitening, transfer learning): no dW
            dW_mat = (cols.T @ dout_mat).T
            dW = dW_mat.reshape(C_out, kh, kw, C_in).transpose(0, 3, 1, 2)
            self.W.set_grad(xp.ascontiguousarray(dW))
        if self.b is not None:
            self.b.set_grad(dout_mat.sum(axis=0))              # db = Σ_rows dout_mat
        if not self.input_grad:
            return None
        if self._dx_by_flipped_conv(x_shape):
            # cols's memory now takes dout's patches: a second backward would need them.
            self.cache = (None, W_mat, x_shape)
            return conv_input_grad(dout, W_mat, x_shape, self.kernel_size, self.pads,
                                   workspace=self._workspace(xp, x_shape, dout.shape[2:],
                                                             pad_name="dout_pad"))
        # dx = col2im(dout_mat @ W_mat), without the KH·KW-times larger matrix.
        return col2im_matmul(dout_mat, W_mat, x_shape, self.kernel_size, self.stride,
                             self.pads, workspace=functools.partial(self.workspace, xp))

    def _dx_by_flipped_conv(self, x_shape: tuple[int, ...]) -> bool:
        """dx by ``conv_input_grad`` (stride 1, padding at most K - 1), where it was measured
        faster than ``col2im_matmul`` (benchmarks/ab.py --only conv_dx: 1.06-1.11x from 8×8
        up, 0.91x at 4×4), and unless dout's patch matrix would be larger than the forward's
        (C_out > C_in: a layer that widens, e.g. 32 -> 64, measured 0.84-0.88x with
        ``--convs small``, or an RGB first layer, where the KH·KW thin GEMMs of
        ``col2im_matmul`` need no such matrix)."""
        return (self.stride == (1, 1) and flipped_pads(self.kernel_size, self.pads) is not None
                and self.out_channels <= self.in_channels and min(x_shape[2:]) >= 8)

    def _workspace(self, xp: Any, x_shape: tuple[int, ...], out_hw: tuple[int, int],
                   pad_name: str = "x_pad") -> Any:
        """The ``workspace`` callable for ``im2col`` in forward and ``conv_input_grad``.

        Both patch matrices are views of one flat "cols" buffer, sized for the larger of the
        two (the forward's x patches, (N·Ho·Wo, KH·KW·C_in), and dout's, (N·H·W, KH·KW·C_out),
        when backward will compute dx that way), so it is allocated once, not per pass.
        ``im2col``'s padded copy goes to its own buffer, named ``pad_name`` ("x_pad" in
        forward, "dout_pad" in backward).
        """
        N, _, H, W = x_shape
        (kh, kw), (Ho, Wo) = self.kernel_size, out_hw
        size = N * Ho * Wo * kh * kw * self.in_channels
        if self.input_grad and self._dx_by_flipped_conv(x_shape):
            size = max(size, N * H * W * kh * kw * self.out_channels)

        def workspace(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
            if name == "cols":
                flat = self.workspace(xp, "cols", (size,), dtype)
                return flat[:math.prod(shape)].reshape(shape)
            return self.workspace(xp, pad_name if name == "x_pad" else name, shape, dtype)

        return workspace

    def extra_repr(self) -> str:
        padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={padding}")
        if self.b is None:
            s += ", bias=False"
        return s
