"""Worked-example checks of the derivation page resampling.md.

``check_upsample_bilinear(ex)``, ``check_upsample_scale_1_5(ex)`` and
``check_adaptive_avg_pool(ex)`` recompute the blocks ``<!-- example: upsample_bilinear -->``,
``<!-- example: upsample_scale_1_5 -->`` and ``<!-- example: adaptive_avg_pool -->``: the 1-D
matrices of ``minicnn.functional.resample``, y = R_h x R_wᵀ and dx = R_hᵀ dout R_w by hand,
the same from the layers, and from the loop twins of ``minicnn.functional.reference``;
tests/test_derivations.py collects them.
"""

from __future__ import annotations

import numpy as np

from minicnn.functional import reference as ref
from minicnn.functional.resample import adaptive_avg_matrix, linear_matrix, nearest_matrix
from minicnn.layers.pool import AdaptiveAvgPool2d
from minicnn.layers.upsample import Upsample


def _nchw(a: np.ndarray) -> np.ndarray:
    return a[None, None]


def check_upsample_bilinear(ex) -> None:
    x, dout = ex["x"], ex["dout"]
    R = linear_matrix(np, 2, 4, np.float64)
    ex.check("R", R)
    R = ex["R"]
    ex.check("y", R @ x @ R.T)                       # y = R_h x R_wᵀ
    ex.check("dx", R.T @ dout @ R)                   # dx = R_hᵀ dout R_w
    layer = Upsample(2, mode="bilinear")
    ex.check("y", layer(_nchw(x)))
    ex.check("dx", layer.backward(_nchw(dout)))
    ex.check("y", ref.upsample2d(_nchw(x), (2, 2), "bilinear"))
    ex.check("dx", ref.upsample2d_backward(_nchw(dout), (1, 1, 2, 2), (2, 2), "bilinear"))


def check_upsample_scale_1_5(ex) -> None:
    """4 rows to 6, the columns kept: R from the scale (r = 1/1.5), y = R x, dx = Rᵀ dout."""
    x, dout = ex["x"], ex["dout"]
    R_nearest = nearest_matrix(np, 4, 6, np.float64, 1.5)
    R = linear_matrix(np, 4, 6, np.float64, 1.5)     # exact (the page rounds 5/6 and 1/6)
    ex.check("R_nearest", R_nearest)
    ex.check("R", R)
    ex.check("y", R @ x)
    ex.check("dx", R.T @ dout)
    ex.check("dx_nearest", R_nearest.T @ dout)       # the scatter-add of dout
    layer = Upsample((1.5, 1), mode="bilinear")
    ex.check("y", layer(_nchw(x)))
    ex.check("dx", layer.backward(_nchw(dout)))
    nearest = Upsample((1.5, 1))
    nearest(_nchw(x))
    ex.check("dx_nearest", nearest.backward(_nchw(dout)))
    np.testing.assert_array_equal(nearest(_nchw(x))[0, 0], R_nearest @ x)


def check_adaptive_avg_pool(ex) -> None:
    x, dout = ex["x"], ex["dout"]
    P_h, P_w = adaptive_avg_matrix(np, 5, 3, np.float64), adaptive_avg_matrix(np, 4, 2, np.float64)
    ex.check("P_h", P_h)
    ex.check("P_w", P_w)
    ex.check("y", P_h @ x @ P_w.T)                   # y = P_h x P_wᵀ
    ex.check("dx", P_h.T @ dout @ P_w)               # dx = P_hᵀ dout P_w
    layer = AdaptiveAvgPool2d((3, 2))
    ex.check("y", layer(_nchw(x)))
    ex.check("dx", layer.backward(_nchw(dout)))
    ex.check("y", ref.adaptive_avg_pool2d(_nchw(x), (3, 2)))
    ex.check("dx", ref.adaptive_avg_pool2d_backward(_nchw(dout), (1, 1, 5, 4)))
