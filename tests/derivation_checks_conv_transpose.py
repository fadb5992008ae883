"""Worked-example check of the derivation page conv_transpose.md.

``check_conv_transpose(ex)`` recomputes the block ``<!-- example: conv_transpose -->``: the
1-D example as the matrix Cᵀ of the page (y = Cᵀx, dx = C·dout) and through the layer, and the
2-D example through ``ConvTranspose2d``, its loop twin, and the Conv2d it is the adjoint of
(its forward is the transposed layer's dx); tests/test_derivations.py collects it.
"""

from __future__ import annotations

import numpy as np

from minicnn.functional import reference as ref
from minicnn.layers.conv import Conv2d
from minicnn.layers.conv_transpose import ConvTranspose2d


def check_conv_transpose(ex) -> None:
    # 1-D: kernel 3, stride 2, two inputs -> five outputs
    x1, w1, dout1 = ex["x1"], ex["w1"], ex["dout1"]
    C = np.zeros((2, 5))                         # the Conv1d (stride 2) as a matrix
    C[0, 0:3], C[1, 2:5] = w1, w1
    ex.check("C", C)
    ex.check("y1", C.T @ x1)
    ex.check("dx1", C @ dout1)
    layer = ConvTranspose2d(1, 1, (1, 3), stride=(1, 2), bias=False)
    layer.W.data = w1[None, None, None]
    ex.check("y1", layer(x1[None, None, None]))
    ex.check("dx1", layer.backward(dout1[None, None, None]))
    ex.check("dw1", layer.W.grad)
    # 2-D: kernel 3, stride 2, padding 1, output_padding 1: 2×2 -> 4×4
    x, W, dout = ex["x"], ex["W"], ex["dout"]
    layer = ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False)
    layer.W.data = W[None, None]
    ex.check("y", layer(x[None, None]))
    ex.check("dx", layer.backward(dout[None, None]))
    ex.check("dW", layer.W.grad)
    ex.check("y", ref.conv_transpose2d_forward(x[None, None], W[None, None], None, (2, 2),
                                               (1, 1), (1, 1)))
    dx_ref, dW_ref, _ = ref.conv_transpose2d_backward(x[None, None], W[None, None],
                                                      dout[None, None], (2, 2), (1, 1), (1, 1))
    ex.check("dx", dx_ref)
    ex.check("dW", dW_ref)
    # the adjoint Conv2d: its forward of dout is dx, its dx of x is y
    conv = Conv2d(1, 1, 3, stride=2, padding=1, bias=False, algorithm="im2col")
    conv.W.data = W[None, None]
    ex.check("dx", conv(dout[None, None]))
    ex.check("y", conv.backward(x[None, None]))
