"""Resampling as two small matrices: upsampling (nearest, bilinear) and adaptive average pooling.

Each of these maps is separable and linear: every output row mixes input rows with the same
weights, whatever the column, and every output column mixes input columns the same way. So,
channel by channel,

    y = R_h · x · R_wᵀ          R_h (Ho, H), R_w (Wo, W)

and the backward pass is the transposed (adjoint) map,

    dx = R_hᵀ · dy · R_w

Only the 1-D matrices differ:

- ``nearest_matrix``: one 1 per row, at src = floor(dst · n_in / n_out) (PyTorch's "nearest");
- ``linear_matrix``: linear interpolation with align_corners=False (PyTorch's default): output
  sample i sits at s = (i + 0.5)·n_in/n_out − 0.5 (clamped to [0, n_in − 1]) and takes
  1 − λ of floor(s) and λ = s − floor(s) of the next sample;
- ``adaptive_avg_matrix``: row i averages the window [floor(i·n_in/n_out), ceil((i+1)·n_in/n_out)).

The matrices are built with the input's array module and dtype (elementwise comparisons, no
host-to-device copy) and kept in a small cache per (kind, sizes, dtype, device).
``resample`` and ``resample_backward`` are the GEMM pair, one batched product per axis over
the whole batch. The loop twins are ``reference.upsample2d`` and ``reference.adaptive_avg_pool2d``.

Derivation: docs/derivations/resampling.md
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module

__all__ = ["nearest_matrix", "linear_matrix", "adaptive_avg_matrix", "resampling_matrices",
           "resample", "resample_backward"]


def _grid(xp: Any, n_in: int, n_out: int) -> tuple[Any, Any]:
    """dst indices as a column (n_out, 1), src indices as a row (1, n_in), both int64."""
    return (xp.arange(n_out, dtype=xp.int64)[:, None], xp.arange(n_in, dtype=xp.int64)[None, :])


def nearest_matrix(xp: Any, n_in: int, n_out: int, dtype: Any) -> Any:
    """R (n_out, n_in) of nearest-neighbour resampling: R[i, floor(i·n_in/n_out)] = 1.

    For an integer scale s = n_out / n_in that is src = floor(i / s), PyTorch's "nearest".
    """
    dst, src = _grid(xp, n_in, n_out)
    nearest = xp.minimum((dst * n_in) // n_out, n_in - 1)    # exact integer floor
    return (src == nearest).astype(dtype)


def linear_matrix(xp: Any, n_in: int, n_out: int, dtype: Any) -> Any:
    """R (n_out, n_in) of linear interpolation, align_corners=False (PyTorch's default).

    s_i = (i + 0.5)·n_in/n_out − 0.5, clamped to [0, n_in − 1]; lo = floor(s_i),
    hi = min(lo + 1, n_in − 1), λ = s_i − lo: R[i, lo] = 1 − λ, R[i, hi] += λ.
    """
    dst, src = _grid(xp, n_in, n_out)
    s = xp.clip((dst + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)  # (n_out, 1) float64
    lo = xp.floor(s).astype(xp.int64)
    hi = xp.minimum(lo + 1, n_in - 1)
    lam = s - lo
    return ((1.0 - lam) * (src == lo) + lam * (src == hi)).astype(dtype)


def adaptive_avg_matrix(xp: Any, n_in: int, n_out: int, dtype: Any) -> Any:
    """P (n_out, n_in) of adaptive average pooling: P[i, h] = 1/(end_i − start_i) on the window
    start_i = floor(i·n_in/n_out) <= h < end_i = ceil((i+1)·n_in/n_out) (PyTorch's rule)."""
    dst, src = _grid(xp, n_in, n_out)
    start = (dst * n_in) // n_out
    end = -((-(dst + 1) * n_in) // n_out)                     # ceil, in integers
    inside = (src >= start) & (src < end)
    return (inside / (end - start)).astype(dtype)


_CACHE: dict[tuple, tuple[Any, Any]] = {}
_CACHE_SIZE = 64


def resampling_matrices(like: Any, in_hw: tuple[int, int], out_hw: tuple[int, int],
                        kind: str) -> tuple[Any, Any]:
    """(R_h, R_w) taking (H, W) = ``in_hw`` to (Ho, Wo) = ``out_hw`` for ``kind`` ("nearest",
    "bilinear", "adaptive_avg"), on the device and in the dtype of the array ``like`` (x in
    forward, dout in backward); cached (at most 64 pairs)."""
    xp = get_array_module(like)
    (H, W), (Ho, Wo) = in_hw, out_hw
    device = getattr(getattr(like, "device", None), "id", None)
    key = (kind, H, W, Ho, Wo, str(like.dtype), xp.__name__, device)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        build = {"nearest": nearest_matrix, "bilinear": linear_matrix,
                 "adaptive_avg": adaptive_avg_matrix}[kind]
        _CACHE[key] = (build(xp, H, Ho, like.dtype), build(xp, W, Wo, like.dtype))
    return _CACHE[key]


def resample(x: Any, R_h: Any, R_w: Any) -> Any:
    """y = R_h · x · R_wᵀ for every (n, c): (N, C, H, W) -> (N, C, Ho, Wo).

    Two batched GEMMs over the whole batch (``@`` broadcasts the small matrices over N and C):
    the columns first, t = x · R_wᵀ (N, C, H, Wo), then the rows, R_h · t. No transposed
    copies of x or y are made.
    """
    return R_h @ (x @ R_w.T)


def resample_backward(dy: Any, R_h: Any, R_w: Any) -> Any:
    """dx = R_hᵀ · dy · R_w for every (n, c): (N, C, Ho, Wo) -> (N, C, H, W), the adjoint of
    ``resample``: each input pixel collects dy times every weight it was used with."""
    return R_h.T @ (dy @ R_w)
