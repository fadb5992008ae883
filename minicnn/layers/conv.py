"""2-D convolution as im2col + one matrix multiply (or, for 3×3 stride-1 layers, Winograd).

Derivation: docs/derivations/conv2d_im2col.md, docs/derivations/winograd.md
Tests: tests/test_conv.py, tests/test_winograd.py, tests/test_grouped_conv.py
"""

from __future__ import annotations

from typing import Any

from .. import init as initializers
from ..backend import get_array_module
from ..functional.conv import (
    CONV_ALGORITHMS,
    conv2d_algorithm,
    conv2d_backward_patches,
    conv2d_bias_grad,
    conv2d_input_grad,
    conv2d_weight_grad,
    conv2d_weight_matrix,
)
from ..functional.grouped_conv import grouped_conv2d, grouped_conv2d_backward
from ..functional.im2col import im2col, normalize_padding, output_size, pair
from ..functional.precision import gemm_input, gemm_inputs, gemm_storage, matmul
from ..functional.scratch import scratch_workspace
from ..functional.winograd import winograd_applies, winograd_conv2d, winograd_conv2d_backward
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
        ``minicnn.init`` initialiser for W, called with fan_in = C_in/groups·KH·KW and
        fan_out = C_out/groups·KH·KW (as PyTorch). b starts at zero.
    kernel_regularizer : optional
        A penalty such as ``minicnn.regularizers.L2(1e-4)`` attached to W.
    algorithm : "auto", "im2col" or "winograd", default "auto"
        How y is computed; every choice gives the same y and gradients (to float rounding).
        "im2col" is the formula below. "winograd" is Winograd's F(4×4, 3×3) (3×3 stride-1
        layers only: fewer multiplies, a float32 error about ten times im2col's;
        docs/derivations/winograd.md). "auto" takes Winograd where it applies and was
        measured faster for the input's shape and the BLAS threads of the moment
        (``functional.conv.conv2d_algorithm``), else im2col.
    groups : int, default 1
        G, dividing C_in and C_out: input channels [g·C_in/G, (g+1)·C_in/G) feed only output
        channels [g·C_out/G, (g+1)·C_out/G). ``groups == in_channels`` is a depthwise
        convolution (one KH×KW filter per channel, times C_out/C_in). Winograd is for G = 1.

    Attributes
    ----------
    W : Parameter (C_out, C_in/groups, KH, KW)
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

    The slow-but-obvious versions of all four are ``minicnn.functional.reference``'s
    ``conv2d_forward`` and ``conv2d_backward`` (loops over every pixel). Two lines run by a
    faster route, each behind a named function of ``minicnn.functional.conv``:
    ``conv2d_weight_grad`` (dW_mat) and ``conv2d_input_grad`` (the last two lines, without the
    KH·KW-times larger dcols matrix: ``col2im_matmul``, one kernel position at a time, or, for
    stride 1, ``conv_input_grad``, a convolution of dout with the flipped kernel).

    Memory: cols is KH·KW times the input (nine times for 3×3), so it is not kept from
    forward to backward. The cache holds x (a reference to the input, which the layer before
    holds anyway) and the weights it met. The backward builds one patch matrix again
    (``conv2d_backward_patches``) and reads both gradients from it: cols itself, or, for
    stride 1, the patch matrix of dout, from which dx is the flipped-kernel convolution and
    dW the sum of x times dout over the input pixels. The patch matrices and padded copies
    are scratch: they go to the arena that all layers share (``minicnn.functional.scratch``),
    so a model holds one patch buffer, the size of its largest layer's, however many
    convolutions it has.

    Grouped (G > 1): the same formulas per group, c running over the group's C_in/G input
    channels; one patch matrix per group and one batched product over the groups
    (``minicnn.functional.grouped_conv``: ``grouped_conv2d`` and
    ``grouped_conv2d_backward``; depthwise as a sum over the KH·KW shifted views of x̃).

    The output is stored channels-last (a view of the GEMM result, see
    ``minicnn.functional.im2col``); it is logically (N, C_out, Ho, Wo) like any other array.

    ``input_grad`` (attribute, default True): when False, ``backward`` computes only dW and
    db and returns None. Nothing needs dL/dx of the images, so ``fit`` switches it off for
    the network's first layer, as PyTorch does for an input that does not require grad;
    it saves that layer's dx computation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, bias: bool = True, init: Any = "he_normal",
                 kernel_regularizer: Any = None, algorithm: str = "auto",
                 groups: int = 1):
        super().__init__()
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"Conv2d: in_channels and out_channels must be >= 1, got "
                             f"{in_channels} and {out_channels}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.groups = int(groups)
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: groups must be >= 1 and divide in_channels and "
                             f"out_channels, got groups={groups!r} with in_channels="
                             f"{in_channels} and out_channels={out_channels}")
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = pair(stride, "stride", "Conv2d")
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"Conv2d: kernel_size and stride must be >= 1, got "
                             f"{kernel_size!r} and {stride!r}")
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding",
                                                                     "Conv2d")
        self.pads = normalize_padding(padding, self.kernel_size, self.stride, "Conv2d")
        if algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"Conv2d: algorithm must be one of {CONV_ALGORITHMS}, got "
                             f"{algorithm!r}")
        if algorithm == "winograd" and self.groups != 1:
            raise ValueError(f"Conv2d: algorithm='winograd' needs groups=1, got "
                             f"groups={groups!r}")
        if algorithm == "winograd" and not winograd_applies(self.kernel_size, self.stride,
                                                            self.pads):
            raise ValueError(f"Conv2d: algorithm='winograd' needs a 3×3 kernel, stride 1 and "
                             f"padding at most 2, got kernel_size={self.kernel_size}, "
                             f"stride={self.stride}, padding={padding!r}")
        self.algorithm = algorithm
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        fan_in, fan_out = shape[1] * kh * kw, self.out_channels // self.groups * kh * kw
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
        W = self.W.data.astype(x.dtype, copy=False)
        if self.groups != 1:
            return self._forward_grouped(x, W)
        m = conv2d_algorithm(self.algorithm, x.shape, self.out_channels, self.kernel_size,
                             self.stride, self.pads, xp=xp)
        if m is not None:  # Winograd's F(m×m, 3×3): the same y, fewer multiplies
            return self._forward_winograd(x, W, m)
        # cols is scratch: the arena's patch buffer, dead when forward returns (on CuPy under
        # bf16 / fp16 written in 16 bits, the format its GEMM reads).
        cols, _ = im2col(x, self.kernel_size, self.stride, self.pads,
                         workspace=scratch_workspace(xp), dtype=gemm_storage(x))
        # cols @ W_matᵀ (N·Ho·Wo, C_out), the GEMM of the precision policy (float32 by default)
        out = matmul(cols, conv2d_weight_matrix(W).T)
        if self.b is not None:
            out += self.b.data.astype(x.dtype, copy=False)
        self.cache = (x, W, None)  # the input (not its KH·KW-times larger cols), the weights
        # Logically (N, C_out, Ho, Wo), physically NHWC: a view, no transpose copy.
        return out.reshape(N, Ho, Wo, self.out_channels).transpose(0, 3, 1, 2)

    def backward(self, dout: Any) -> Any:
        x, W, winograd = self.cached()
        if winograd is not None:
            return self._backward_winograd(dout, winograd)
        if self.groups != 1:
            return self._backward_grouped(dout, x, W)
        workspace = scratch_workspace(get_array_module(x))
        # (N, C_out, Ho, Wo) -> rows (n, ho, wo) like cols; free when dout is channels-last.
        dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, self.out_channels)
        # cols was not kept: both gradients read one patch matrix built now, cols = im2col(x)
        # or (stride 1) dout's, in the scratch arena.
        patches = conv2d_backward_patches(dout_mat, x, self.kernel_size, self.stride, self.pads,
                                          weight_grad=self.W.requires_grad,
                                          input_grad=self.input_grad, workspace=workspace)
        if self.W.requires_grad:  # a frozen W (PatchWhitening, transfer learning): no dW
            # dW_mat = dout_matᵀ @ cols
            self.W.set_grad(conv2d_weight_grad(dout_mat, x, patches, self.kernel_size))
        if self.b is not None:
            # db = Σ_rows dout_mat (on CuPy written straight into the optimizer's buffer)
            self.b.set_grad(conv2d_bias_grad(dout_mat, out=self.b.grad_out(dout_mat)))
        if not self.input_grad:
            return None
        # dx = col2im(dout_mat @ W_mat), given W: the route reorders it as it needs
        return conv2d_input_grad(dout_mat, W, x.shape, self.kernel_size, self.stride,
                                 self.pads, patches=patches, workspace=workspace)

    def _forward_winograd(self, x: Any, W: Any, m: int) -> Any:
        """y = Winograd F(m×m, 3×3) of x and W, plus b (``winograd_conv2d``; the cache keeps x
        and W, as the im2col route does, and the backward builds the tiles again)."""
        xp = get_array_module(x)
        y, winograd = winograd_conv2d(x, W, self.pads, m, workspace=scratch_workspace(xp),
                                      keep="input")
        if self.b is not None:
            y += self.b.data.astype(x.dtype, copy=False)[:, None, None]
        self.cache = (x, W, winograd)
        return y

    def _backward_winograd(self, dout: Any, winograd: dict[str, Any]) -> Any:
        """dW and dx in the Winograd domain (``winograd_conv2d_backward``), db = Σ dout."""
        xp = get_array_module(dout)
        dx, dW = winograd_conv2d_backward(dout, winograd, need_dx=self.input_grad,
                                          need_dW=self.W.requires_grad,
                                          workspace=scratch_workspace(xp))
        if self.W.requires_grad:
            self.W.set_grad(dW)
        if self.b is not None:
            self.b.set_grad(dout.sum(axis=(0, 2, 3)))             # db = Σ_{n,i,j} dout
        return dx if self.input_grad else None

    def _forward_grouped(self, x: Any, W: Any) -> Any:
        """y = the grouped convolution of x (``grouped_conv2d``: one batched product over the
        groups, or the depthwise shifted-view sum), plus b; the cache keeps x and W."""
        xp = get_array_module(x)
        x, W = gemm_inputs(x, W)       # the precision policy's inputs, kept for the backward
        y = grouped_conv2d(x, W, self.groups, self.stride, self.pads,
                           workspace=scratch_workspace(xp))
        if self.b is not None:
            y += self.b.data.astype(x.dtype, copy=False)[:, None, None]
        self.cache = (x, W, None)
        return y

    def _backward_grouped(self, dout: Any, x: Any, W: Any) -> Any:
        """dW and dx per group (``grouped_conv2d_backward``), db = Σ dout."""
        dout_g = gemm_input(dout)      # the precision policy's format (x and W already are)
        dx, dW = grouped_conv2d_backward(dout_g, x, W, self.groups, self.stride, self.pads,
                                         need_dx=self.input_grad,
                                         need_dW=self.W.requires_grad,
                                         workspace=scratch_workspace(get_array_module(x)))
        if self.W.requires_grad:
            self.W.set_grad(dW)
        if self.b is not None:
            self.b.set_grad(dout.sum(axis=(0, 2, 3)))             # db = Σ_{n,i,j} dout
        return dx

    def extra_repr(self) -> str:
        padding = self.padding if isinstance(self.padding, str) else tuple(self.padding)
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={padding}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.b is None:
            s += ", bias=False"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s
