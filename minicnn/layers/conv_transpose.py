"""2-D transposed convolution: Conv2d's backward (dx) as a forward pass, and vice versa.

Derivation: docs/derivations/conv_transpose.md
Tests: tests/test_conv_transpose.py
"""

from __future__ import annotations

from typing import Any

from .. import init as initializers
from ..functional.conv import conv2d_input_grad, conv2d_weight_matrix
from ..functional.im2col import im2col, pair
from ..functional.precision import gemm_inputs
from ..functional.scratch import scratch_workspace
from .base import Layer, Parameter, check_channels, check_float_input, check_ndim, new_array

__all__ = ["ConvTranspose2d"]


class ConvTranspose2d(Layer):
    """2-D transposed convolution ("deconvolution", fractionally strided convolution).

    PyTorch's ``nn.ConvTranspose2d``: the same arguments, weight layout and output size.

    **Its forward is Conv2d's dx, and its backward is Conv2d's forward.** Take the Conv2d
    ``conv`` with the same W read as (C_out_conv, C_in_conv, KH, KW) = (C_in, C_out, KH, KW),
    the same stride and padding, mapping an (N, C_out, Ho, Wo) image to (N, C_in, H, W). Then
    ``ConvTranspose2d(x) = conv``'s input gradient with dout = x: the adjoint (transpose) of
    the linear map x ↦ conv(x), hence the name; ``<convT(x), y> = <x, conv(y)>`` for all x, y.
    Its dx is therefore ``conv``'s forward of dout, and its dW the same correlation of x with
    dout as ``conv``'s dW with the roles of x and dout swapped.

    Parameters
    ----------
    in_channels, out_channels : int
        C_in and C_out (both divisible by ``groups``).
    kernel_size : int or (KH, KW)
    stride : int or (sh, sw), default 1
    padding : int or (ph, pw), default 0
        Rows/columns cropped from each side of the full output (the padding of the
        Conv2d it is the transpose of).
    output_padding : int or (oph, opw), default 0
        Rows/columns added at the bottom/right, each < the stride (as in PyTorch): the Conv2d
        maps several input sizes to the same H (floor), this picks which one.
    groups : int, default 1
        The channels split into ``groups`` independent transposed convolutions; W
        (C_in, C_out/groups, KH, KW), input channels g·C_in/groups.. go to output channels
        g·C_out/groups.. (PyTorch's layout). Computed one group at a time.
    bias : bool, default True
    init : str or callable, default "he_normal"
        ``minicnn.init`` initialiser for W, called with fan_in = C_out/groups·KH·KW and
        fan_out = C_in·KH·KW: PyTorch's fans, computed from W's dimensions 1 and 0 as for any
        weight. Each *output* pixel sums only about C_in·KH·KW/(sh·sw) products, so this is
        not the forward's fan-in; it is the fan-in of the adjoint Conv2d (the backward pass),
        and we keep PyTorch's choice so that default-initialised models behave like theirs.
        b starts at zero.

    Attributes
    ----------
    W : Parameter (C_in, C_out/groups, KH, KW)
    b : Parameter (C_out,) or None

    Forward
    -------
    For x (N, C_in, H, W): every input pixel scatters a copy of the kernel, scaled by its value,
    onto the output, the copies ``s`` pixels apart:

        ỹ[n, o, i·sh + a, j·sw + b'] += x[n, c, i, j] · W[c, o, a, b']   (all n, c, i, j, a, b')
        y[n, o, h, w] = b[o] + ỹ[n, o, h + ph, w + pw]      (zero past ỹ's end)

    Output shape (N, C_out, Ho, Wo), Ho = (H − 1)·sh − 2·ph + KH + oph (the same for Wo).
    As matrices (x_mat = x as rows (N·H·W, C_in), W_mat = W as (C_in, KH·KW·C_out) in
    ``im2col``'s (kh, kw, o) column order):

        y = col2im(x_mat @ W_mat) + b          = conv2d_input_grad(x_mat, W_mat, ...)

    ``conv2d_input_grad`` computes it without the KH·KW-times larger x_mat @ W_mat.

    Backward
    --------
    With cols = im2col(dout) (N·H·W, KH·KW·C_out), the patches of dout under the Conv2d's
    kernel, stride and padding (one row per *input* pixel):

        dx_mat = cols @ W_matᵀ     (N·H·W, C_in)          a Conv2d of dout with W
        dW_mat = x_matᵀ @ cols     (C_in, KH·KW·C_out)    -> dW (C_in, C_out/groups, KH, KW)
        db     = Σ_{n,h,w} dout    (C_out,)

    The loop twins are ``reference.conv_transpose2d_forward`` / ``..._backward``.

    Memory: the cache holds x and the weights it met; cols is scratch (the shared arena).

    ``input_grad`` (attribute, default True): when False, ``backward`` computes only dW and db
    and returns None, like ``Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, output_padding: Any = 0, groups: int = 1, bias: bool = True,
                 init: Any = "he_normal"):
        super().__init__()
        name = "ConvTranspose2d"
        self.in_channels, self.out_channels = _int(name, "in_channels", in_channels), \
            _int(name, "out_channels", out_channels)
        self.groups = _int(name, "groups", groups)
        if min(self.in_channels, self.out_channels, self.groups) < 1:
            raise ValueError(f"{name}: in_channels, out_channels and groups must be >= 1, got "
                             f"{in_channels}, {out_channels} and {groups}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) and out_channels "
                             f"({out_channels}) must both be divisible by groups ({groups})")
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        self.stride = pair(stride, "stride", name)
        if min(self.kernel_size) < 1 or min(self.stride) < 1:
            raise ValueError(f"{name}: kernel_size and stride must be >= 1, got "
                             f"{kernel_size!r} and {stride!r}")
        self.padding = pair(padding, "padding", name)
        self.output_padding = pair(output_padding, "output_padding", name)
        if min(self.padding) < 0 or min(self.output_padding) < 0:
            raise ValueError(f"{name}: padding and output_padding must be >= 0, got "
                             f"{padding!r} and {output_padding!r}")
        if any(op >= s for op, s in zip(self.output_padding, self.stride, strict=True)):
            raise ValueError(f"{name}: output_padding must be smaller than stride, got "
                             f"output_padding={self.output_padding} and stride={self.stride}")
        (ph, pw) = self.padding
        self.pads = ((ph, ph), (pw, pw))       # the padding of the Conv2d it transposes
        kh, kw = self.kernel_size
        shape = (self.in_channels, self.out_channels // self.groups, kh, kw)
        fan_in, fan_out = self.out_channels // self.groups * kh * kw, self.in_channels * kh * kw
        self.W = Parameter(new_array(initializers.get(init)(shape, fan_in, fan_out)), "W")
        self.b = (Parameter(new_array(initializers.zeros((self.out_channels,))), "b")
                  if bias else None)
        self.input_grad = True

    def _expected(self) -> str:
        return f"(N, {self.in_channels}, H, W)"

    def output_shape(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(N, C_out, Ho, Wo), Ho = (H − 1)·sh − 2·ph + KH + oph; ValueError if not positive."""
        N, _, H, W = x_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (oph, opw) = self.padding, self.output_padding
        Ho = (H - 1) * sh - 2 * ph + kh + oph
        Wo = (W - 1) * sw - 2 * pw + kw + opw
        if Ho < 1 or Wo < 1:
            raise ValueError(f"ConvTranspose2d: input of shape {tuple(x_shape)} gives an output "
                             f"of size {Ho}×{Wo} (Ho = (H - 1)·stride - 2·padding + kernel + "
                             f"output_padding); the padding {self.padding} is too large")
        return N, self.out_channels, Ho, Wo

    def forward(self, x: Any) -> Any:
        xp = check_float_input("ConvTranspose2d", x)
        check_ndim("ConvTranspose2d", x, 4, self._expected())
        check_channels("ConvTranspose2d", x, self.in_channels, self._expected())
        N, C_out, Ho, Wo = self.output_shape(x.shape)
        W = self.W.data.astype(x.dtype, copy=False)
        workspace = scratch_workspace(xp)
        x_mat = x.transpose(0, 2, 3, 1).reshape(-1, self.in_channels)   # (N·H·W, C_in)
        ys = []
        for g_in, _ in self._groups():
            W_mat = conv2d_weight_matrix(W[g_in])          # (C_in/g, KH·KW·C_out/g)
            # y = col2im(x_mat @ W_mat): Conv2d's dx, with x in the place of dout
            ys.append(conv2d_input_grad(x_mat[:, g_in], W_mat, (N, C_out // self.groups, Ho, Wo),
                                        self.kernel_size, self.stride, self.pads,
                                        workspace=workspace))
        y = ys[0] if self.groups == 1 else xp.concatenate(ys, axis=1)
        if self.b is not None:
            y += self.b.data.astype(x.dtype, copy=False)[:, None, None]
        self.cache = (x, W)
        return y

    def backward(self, dout: Any) -> Any:
        x, W = self.cached()
        xp = check_float_input("ConvTranspose2d", dout)
        if tuple(dout.shape) != self.output_shape(x.shape):
            raise ValueError(f"ConvTranspose2d: expected dout of shape "
                             f"{self.output_shape(x.shape)}, got {tuple(dout.shape)}")
        workspace = scratch_workspace(xp)
        x_mat = x.transpose(0, 2, 3, 1).reshape(-1, self.in_channels)   # (N·H·W, C_in)
        N, _, H, Wd = x.shape
        dxs, dWs = [], []
        for g_in, g_out in self._groups():
            # cols = im2col(dout): Conv2d's patch matrix, one row per input pixel (scratch)
            cols, _ = im2col(dout[:, g_out], self.kernel_size, self.stride, self.pads,
                             workspace=workspace)
            if self.W.requires_grad:
                xg, cg = gemm_inputs(x_mat[:, g_in], cols)  # rounded under bf16/fp16/tf32
                dW_mat = xg.T @ cg                         # dW_mat = x_matᵀ @ cols
                dWs.append(dW_mat.reshape(-1, *self.kernel_size, self.out_channels
                                          // self.groups).transpose(0, 3, 1, 2))
            if self.input_grad:
                cg, Wg = gemm_inputs(cols, conv2d_weight_matrix(W[g_in]))
                dxs.append(cg @ Wg.T)                      # dx_mat = cols @ W_matᵀ
        if self.W.requires_grad:
            self.W.set_grad(xp.ascontiguousarray(xp.concatenate(dWs, axis=0)))
        if self.b is not None:
            self.b.set_grad(dout.sum(axis=(0, 2, 3)))          # db = Σ_{n,h,w} dout
        if not self.input_grad:
            return None
        dx_mat = dxs[0] if self.groups == 1 else xp.concatenate(dxs, axis=1)
        return dx_mat.reshape(N, H, Wd, self.in_channels).transpose(0, 3, 1, 2)

    def _groups(self) -> list[tuple[slice, slice]]:
        """(input channels, output channels) of each group, as slices."""
        ci, co = self.in_channels // self.groups, self.out_channels // self.groups
        return [(slice(g * ci, (g + 1) * ci), slice(g * co, (g + 1) * co))
                for g in range(self.groups)]

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.b is None:
            s += ", bias=False"
        return s


def _int(layer: str, name: str, value: Any) -> int:
    """``value`` as an int, or a ValueError naming the layer and the argument."""
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: {name} must be an int, got {value!r}") from None
    if as_int != value:
        raise ValueError(f"{layer}: {name} must be an int, got {value!r}")
    return as_int
