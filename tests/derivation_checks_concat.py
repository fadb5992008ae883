"""Worked-example checks of the derivation pages containers.md (the ``concat`` example) and
squeeze_excite.md.

Each ``check_<id>(ex)`` recomputes the block ``<!-- example: <id> -->`` with the minicnn layer
in float64 (``ex[name]`` reads an input of the block, ``ex.check(name, value)`` compares a
computed value with the printed one); tests/test_derivations.py collects them. The pages'
formulas are evaluated too, from the exact inputs.
"""

from __future__ import annotations

import numpy as np

from minicnn import layers as L
from minicnn.layers.attention import SqueezeExcite
from minicnn.layers.container import Concat

# -- containers.md: Concat --------------------------------------------------------------------


def check_concat(ex) -> None:
    # One sample, one pixel (H = W = 1): the channels are a vector.
    x, dout = ex["x"][None, :, None, None], ex["dout"][None, :, None, None]
    conv = L.Conv2d(2, 3, 1).astype(np.float64)
    conv.W.data, conv.b.data = ex["W"][:, :, None, None], ex["b"]
    layer = Concat(L.Identity(), conv)
    ex.check("y", layer(x))
    ex.check("dx", layer.backward(dout))
    ex.check("dW", conv.W.grad)
    ex.check("db", conv.b.grad)
    # The page's steps: the branches' outputs, the split of dout, each branch's dx, their sum.
    ex.check("F1", x)
    ex.check("F2", ex["W"] @ ex["x"] + ex["b"])
    ex.check("dout1", dout[:, :2])
    ex.check("dout2", dout[:, 2:])
    ex.check("dx1", ex["dout"][:2])
    ex.check("dx2", ex["W"].T @ ex["dout"][2:])
    ex.check("dx", ex["dout"][:2] + ex["W"].T @ ex["dout"][2:])
    ex.check("dW", np.outer(ex["dout"][2:], ex["x"]))


# -- squeeze_excite.md ------------------------------------------------------------------------


def _sigma(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t))


def check_squeeze_excite(ex) -> None:
    # x is printed as (C, W) with N = H = 1: channel c is row c.
    x, dout = ex["x"][None, :, None, :], ex["dout"][None, :, None, :]
    layer = SqueezeExcite(2, 2).astype(np.float64)
    layer.fc1.W.data, layer.fc1.b.data = ex["W1"], ex["b1"]
    layer.fc2.W.data, layer.fc2.b.data = ex["W2"], ex["b2"]
    ex.check("y", layer(x))
    ex.check("dx", layer.backward(dout))
    ex.check("dW1", layer.fc1.W.grad)
    ex.check("db1", layer.fc1.b.grad)
    ex.check("dW2", layer.fc2.W.grad)
    ex.check("db2", layer.fc2.b.grad)
    # The page's steps, from the formulas.
    X, D = ex["x"], ex["dout"]
    z = X.mean(axis=1)
    ex.check("z", z)
    a = z @ ex["W1"] + ex["b1"]
    ex.check("a", a)
    t = np.maximum(a, 0) @ ex["W2"] + ex["b2"]
    ex.check("t", t)
    s = _sigma(t)
    ex.check("s", s)
    ex.check("y", X * s[:, None])
    ds = (D * X).sum(axis=1)
    ex.check("ds", ds)
    dt = ds * s * (1 - s)
    ex.check("dt", dt)
    da = (dt @ ex["W2"].T) * (a > 0)
    ex.check("da", da)
    dz = da @ ex["W1"].T
    ex.check("dz", dz)
    direct = D * s[:, None]
    ex.check("dx_direct", direct)
    through_gate = np.repeat(dz[:, None] / X.shape[1], X.shape[1], axis=1)
    ex.check("dx_gate", through_gate)
    ex.check("dx", direct + through_gate)
    ex.check("dW2", np.outer(np.maximum(a, 0), dt))
    ex.check("dW1", np.outer(z, da))
