"""Worked-example check of docs/derivations/conv2d_im2col.md's "Grouped and depthwise
convolution" section (the ``conv2d_grouped`` example).

``check_conv2d_grouped(ex)`` recomputes the block with ``Conv2d(2, 2, 2, groups=2)`` in float64
(``ex[name]`` reads an input, ``ex.check(name, value)`` compares with the printed value), and
the page's claims: both routes of ``minicnn.functional.grouped_conv`` give the same numbers,
and so does a dense convolution with the block-diagonal kernel.
"""

from __future__ import annotations

import numpy as np

from minicnn.functional.grouped_conv import (
    grouped_conv2d,
    grouped_conv2d_backward,
    grouped_im2col,
)
from minicnn.layers.conv import Conv2d

NO_PAD = ((0, 0), (0, 0))


def check_conv2d_grouped(ex) -> None:
    x, W, b, dout = ex["x"][None], ex["W"][:, None], ex["b"], ex["dout"][None]   # NCHW
    conv = Conv2d(2, 2, 2, groups=2).astype(np.float64)
    conv.W.data, conv.b.data = W, b
    ex.check("cols_g", grouped_im2col(x, (2, 2), (1, 1), NO_PAD, 2))
    ex.check("y", conv(x)[0])
    ex.check("dx", conv.backward(dout)[0])
    ex.check("dW", conv.W.grad[:, 0])
    ex.check("db", conv.b.grad)
    for method in ("batched", "direct"):
        ex.check("y", grouped_conv2d(x, W, 2, (1, 1), NO_PAD, method=method)[0]
                 + b[:, None, None])
        dx, dW = grouped_conv2d_backward(dout, x, W, 2, (1, 1), NO_PAD, method=method)
        ex.check("dx", dx[0])
        ex.check("dW", dW[:, 0])
    dense = Conv2d(2, 2, 2).astype(np.float64)                 # the block-diagonal kernel
    dense.W.data = np.zeros((2, 2, 2, 2))
    dense.W.data[0, 0], dense.W.data[1, 1] = W[0, 0], W[1, 0]
    dense.b.data = b
    ex.check("y", dense(x)[0])
    ex.check("dx", dense.backward(dout)[0])
    ex.check("dW", np.stack([dense.W.grad[0, 0], dense.W.grad[1, 1]]))
