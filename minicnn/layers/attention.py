"""Channel attention: squeeze-and-excitation (Hu et al., 2018), as in MobileNetV3 / EfficientNet.

Derivation: docs/derivations/squeeze_excite.md
Tests: tests/test_squeeze_excite.py
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from .activation import ReLU, Sigmoid
from .base import Layer, check_channels, check_float_input, check_ndim
from .linear import Linear
from .pool import GlobalAvgPool2d

__all__ = ["SqueezeExcite"]


class SqueezeExcite(Layer):
    """Squeeze-and-excitation: rescale each channel by a gate computed from all channels.

    Forward (per sample n):
        z = GAP(x)                              squeeze: (N, C), z[n, c] = mean_{h,w} x[n, c]
        s = σ(ReLU(z W1 + b1) W2 + b2)          excitation: (N, C), each s[n, c] in (0, 1)
        y = x ⊙ s[:, :, None, None]             scale every channel map by its gate

    Backward: x reaches y by two paths, directly and through the gate s, so dx has two terms:
        ds[n, c] = Σ_{h,w} dout[n, c, h, w] · x[n, c, h, w]
        dz       = the chain rule back through σ, fc2, ReLU, fc1 (their own backward passes)
        dx       = dout ⊙ s[:, :, None, None]  +  dz[:, :, None, None] / (H·W)
                   (direct path)                  (gate path: GAP's backward spreads dz)

    Parameters
    ----------
    channels : int
        C, the channels of the input (and output).
    reduction : int
        The bottleneck ratio r: the hidden layer has max(1, C // r) units (C need not be a
        multiple of r). Default 16 (the paper's).

    Attributes
    ----------
    fc1 : Linear(C, C // r), then ReLU;  fc2 : Linear(C // r, C), then Sigmoid.
    Their parameters are ``fc1.W`` (C, C // r), ``fc1.b``, ``fc2.W`` (C // r, C), ``fc2.b``.
    ``input_grad`` (default True): when False, backward fills the parameters' gradients and
    returns None.

    Shapes
    ------
    x: (N, C, H, W); y: (N, C, H, W), same dtype.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        for name, value in (("channels", channels), ("reduction", reduction)):
            if int(value) != value or value < 1:
                raise ValueError(f"SqueezeExcite: {name} must be a positive integer, "
                                 f"got {value!r}")
        self.channels, self.reduction = int(channels), int(reduction)
        self.hidden = max(1, self.channels // self.reduction)
        # Sub-layers in the order the forward uses them (parameters: fc1.W, fc1.b, fc2.W, fc2.b).
        self.squeeze = GlobalAvgPool2d()
        self.fc1 = Linear(self.channels, self.hidden)                       # ReLU follows: He
        self.relu = ReLU()
        self.fc2 = Linear(self.hidden, self.channels, init="glorot_normal")  # σ follows
        self.gate = Sigmoid()
        self.input_grad = True

    def forward(self, x: Any) -> Any:
        check_float_input("SqueezeExcite", x)
        expected = f"(N, {self.channels}, H, W)"
        check_ndim("SqueezeExcite", x, 4, expected)
        check_channels("SqueezeExcite", x, self.channels, expected)
        z = self.squeeze.forward(x)                                   # (N, C)
        s = self.gate.forward(self.fc2.forward(self.relu.forward(self.fc1.forward(z))))
        self.cache = (x, s)
        xp = get_array_module(x)
        # y = x ⊙ s, written in x's memory layout (``x * s`` on CuPy would be C-ordered).
        return xp.multiply(x, s[:, :, None, None], out=xp.empty_like(x))

    def backward(self, dout: Any) -> Any:
        x, s = self.cached()
        xp = check_float_input("SqueezeExcite", dout)
        ds = xp.einsum("nchw,nchw->nc", dout, x)                      # Σ_{h,w} dout ⊙ x
        dz = self.fc1.backward(self.relu.backward(self.fc2.backward(self.gate.backward(ds))))
        if not self.input_grad:
            return None
        dx = xp.multiply(dout, s[:, :, None, None], out=xp.empty_like(x))  # the direct path
        dx += self.squeeze.backward(dz)                               # the path through s
        return dx

    def extra_repr(self) -> str:
        return f"{self.channels}, reduction={self.reduction}"
