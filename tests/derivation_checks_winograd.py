"""Worked-example check of the derivation page winograd.md.

``check_winograd_f23(ex)`` recomputes the block ``<!-- example: winograd_f23 -->``: the 1-D
F(2, 3) from the page's matrices, the 2-D tile step by step (V, U, M, then the transposed
maps of the backward), and the same y, dW and dx from ``winograd_conv2d`` /
``winograd_conv2d_backward`` (whose cache must hold the page's V and U) and from the
definition (``reference.conv2d_forward`` / ``conv2d_backward``); tests/test_derivations.py
collects it.
"""

from __future__ import annotations

import numpy as np

from minicnn.functional import reference as ref
from minicnn.functional import winograd as wg


def check_winograd_f23(ex) -> None:
    BT, G, AT = wg.BT[2], wg.G[2], wg.AT[2]
    # 1-D: four multiplies for two outputs
    d1, g1 = ex["d1"], ex["g1"]
    ex.check("BTd1", BT @ d1)
    ex.check("Gg1", G @ g1)
    ex.check("m1", (BT @ d1) * (G @ g1))
    ex.check("y1", AT @ ex["m1"])
    ex.check("y1", np.correlate(d1, g1, mode="valid"))
    # 2-D: one 4×4 tile, step by step
    d, g, dY = ex["d"], ex["g"], ex["dY"]
    V, U = BT @ d @ BT.T, G @ g @ G.T
    ex.check("V", V)
    ex.check("U", U)
    ex.check("M", U * V)
    ex.check("y", AT @ ex["M"] @ AT.T)
    dM = AT.T @ dY @ AT
    ex.check("dM", dM)
    ex.check("dU", dM * V)
    ex.check("dW", G.T @ ex["dU"] @ G)
    ex.check("dV", dM * U)
    ex.check("dx", BT.T @ ex["dV"] @ BT)
    # the functions of minicnn/functional/winograd.py compute the same, through the same V, U
    x, W, pads = d[None, None], g[None, None], ((0, 0), (0, 0))
    y, cache = wg.winograd_conv2d(x, W, pads, m=2)
    ex.check("V", cache["V"].reshape(4, 4))
    ex.check("U", cache["U"].reshape(4, 4))
    ex.check("y", y)
    dx, dW = wg.winograd_conv2d_backward(dY[None, None], cache)
    ex.check("dW", dW)
    ex.check("dx", dx)
    # ... and the definition of the convolution
    ex.check("y", ref.conv2d_forward(x, W, None, (1, 1), pads))
    dx_ref, dW_ref, _ = ref.conv2d_backward(x, W, dY[None, None], (1, 1), pads)
    ex.check("dW", dW_ref)
    ex.check("dx", dx_ref)
