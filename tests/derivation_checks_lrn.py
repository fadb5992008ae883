"""Worked-example check of the derivation page local_response_norm.md.

``check_local_response_norm(ex)`` recomputes the block ``<!-- example: local_response_norm -->``
with the minicnn layer in float64 (``ex[name]`` reads an input of the block, ``ex.check(name,
value)`` compares a computed value with the printed one); tests/test_derivations.py collects
it. The page's steps are evaluated too, from the formulas, with plain loops over channels.
"""

from __future__ import annotations

import numpy as np

from minicnn.layers.local_response_norm import LocalResponseNorm


def check_local_response_norm(ex) -> None:
    n, alpha, beta, k = int(ex["size"]), float(ex["alpha"]), float(ex["beta"]), float(ex["k"])
    X, D = ex["x"], ex["dout"]
    # One sample, one pixel: the channels are a vector, (C,) -> (1, C, 1, 1).
    layer = LocalResponseNorm(n, alpha=alpha, beta=beta, k=k)
    ex.check("y", layer(X[None, :, None, None]))
    ex.check("s", layer.cache[1])
    ex.check("dx", layer.backward(D[None, :, None, None]))
    # The page's steps: W(c) = [c - n//2, c + (n-1)//2], the mirrored one for the backward.
    C = len(X)

    def window(c: int) -> list[int]:
        return [j for j in range(c - n // 2, c + (n - 1) // 2 + 1) if 0 <= j < C]

    s = np.array([k + alpha / n * sum(X[j] ** 2 for j in window(c)) for c in range(C)])
    ex.check("s", s)
    ex.check("scale", s ** -beta)
    ex.check("y", X * s ** -beta)
    t = D * X * s ** (-beta - 1)
    ex.check("t", t)
    back = np.array([sum(t[c] for c in range(C) if j in window(c)) for j in range(C)])
    ex.check("back", back)
    mirrored = np.array([sum(t[c] for c in range(j - (n - 1) // 2, j + n // 2 + 1)
                             if 0 <= c < C) for j in range(C)])
    ex.check("back", mirrored)
    ex.check("dx", D * s ** -beta - 2 * alpha * beta / n * X * back)
