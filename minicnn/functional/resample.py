"""Resampling as two small matrices: upsampling (nearest, bilinear) and adaptive average pooling.

Each of these maps is separable and linear: every output row mixes input rows with the same
weights, whatever the column, and every output column mixes input columns the same way. So,
channel by channel,

    y = R_h · x · R_wᵀ          R_h (Ho, H), R_w (Wo, W)

and the backward pass is the transposed (adjoint) map,

    dx = R_hᵀ · dy · R_w

Only the 1-D matrices differ. Output sample i of an axis sits at input coordinate i·r
(nearest) or (i + 0.5)·r − 0.5 (bilinear, pixel centres), with r = ``source_ratio``:
1/s when a scale s was given (PyTorch's default, ``recompute_scale_factor=False``; s need
not be an integer), n_in/n_out when an output size was;

- ``nearest_matrix``: one 1 per row, at src = min(floor(i·r), n_in − 1) (PyTorch's
  "nearest", float32 arithmetic included: ``nearest_source``);
- ``linear_matrix``: linear interpolation with align_corners=False (PyTorch's default):
  s = (i + 0.5)·r − 0.5 (raised to 0 where negative) takes 1 − λ of floor(s) and
  λ = s − floor(s) of the next sample (the last one at the far edge);
- ``adaptive_avg_matrix``: row i averages the window [floor(i·n_in/n_out), ceil((i+1)·n_in/n_out)).

The matrices are built with the input's array module and dtype (elementwise comparisons, no
host-to-device copy) and kept in a small cache per (kind, sizes, scales, dtype, device).
``resample`` and ``resample_backward`` are the GEMM pair, one batched product per axis over
the whole batch, in the input's memory layout (NCHW or channels-last). The loop twins are
``reference.upsample2d`` and ``reference.adaptive_avg_pool2d``.

Derivation: docs/derivations/resampling.md
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module

__all__ = ["source_ratio", "nearest_source", "nearest_matrix", "linear_matrix",
           "adaptive_avg_matrix", "resampling_matrices", "stored_channels_last", "resample",
           "resample_backward"]


def _grid(xp: Any, n_in: int, n_out: int) -> tuple[Any, Any]:
    """dst indices as a column (n_out, 1), src indices as a row (1, n_in), both int64."""
    return (xp.arange(n_out, dtype=xp.int64)[:, None], xp.arange(n_in, dtype=xp.int64)[None, :])


def source_ratio(n_in: int, n_out: int, scale_factor: float | None = None) -> float:
    """How far apart, in input samples, two neighbouring output samples sit: 1 / scale_factor
    when the scale was given (and kept, PyTorch's ``recompute_scale_factor=False``), else
    n_in / n_out (an output ``size``). PyTorch's ``compute_scales_value``."""
    return 1.0 / scale_factor if scale_factor else n_in / n_out


def nearest_source(xp: Any, n_in: int, n_out: int, scale_factor: float | None = None) -> Any:
    """src (n_out,) int64: the input sample that each output sample copies (PyTorch's
    "nearest", ``nearest_idx``).

    src_i = min(floor(i · r), n_in − 1) with r = ``source_ratio`` computed, like PyTorch, in
    float32 (also for float64 images: the index must be the same, and a float64 product
    picks another pixel where i · r lands just below an integer). Two sizes skip the product,
    as in PyTorch: n_out = n_in copies (src_i = i, even for a scale such as 1.2 that rounds
    back to n_in) and n_out = 2 n_in halves (src_i = ⌊i / 2⌋).
    """
    dst = xp.arange(n_out, dtype=xp.int64)
    if n_out == n_in:
        return dst
    if n_out == 2 * n_in:
        return dst // 2
    r = np.float32(source_ratio(n_in, n_out, scale_factor)) if scale_factor else \
        np.float32(n_in) / np.float32(n_out)          # float32 division, as PyTorch
    return xp.minimum(xp.floor(dst.astype(xp.float32) * r).astype(xp.int64), n_in - 1)


def nearest_matrix(xp: Any, n_in: int, n_out: int, dtype: Any,
                   scale_factor: float | None = None) -> Any:
    """R (n_out, n_in) of nearest-neighbour resampling: R[i, src_i] = 1, src_i from
    ``nearest_source`` (floor(i / s) for an integer scale s)."""
    src = xp.arange(n_in, dtype=xp.int64)[None, :]
    return (src == nearest_source(xp, n_in, n_out, scale_factor)[:, None]).astype(dtype)


def linear_matrix(xp: Any, n_in: int, n_out: int, dtype: Any,
                  scale_factor: float | None = None) -> Any:
    """R (n_out, n_in) of linear interpolation, align_corners=False (PyTorch's default).

    s_i = (i + 0.5)·r − 0.5 with r = ``source_ratio`` (1/scale_factor, or n_in/n_out for a
    size), raised to 0 where negative; lo = floor(s_i), hi = min(lo + 1, n_in − 1),
    λ = s_i − lo: R[i, lo] = 1 − λ, R[i, hi] += λ. Computed in ``dtype`` (float32 images:
    float32 coordinates, as PyTorch's kernel; float64: float64). An axis whose size does not
    change is copied (R = I), as in PyTorch, even for a scale such as 1.2 that rounds back.
    """
    dst, src = _grid(xp, n_in, n_out)
    if n_out == n_in:
        return (src == dst).astype(dtype)
    real = np.dtype(dtype).type if np.dtype(dtype).kind == "f" else np.float64
    r = real(source_ratio(n_in, n_out, scale_factor)) if scale_factor else \
        real(n_in) / real(n_out)
    s = xp.maximum(r * (dst.astype(real) + real(0.5)) - real(0.5), real(0))  # (n_out, 1)
    lo = xp.floor(s).astype(xp.int64)
    hi = xp.minimum(lo + 1, n_in - 1)
    lam = s - lo.astype(real)
    return ((1 - lam) * (src == lo) + lam * (src == hi)).astype(dtype)


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
                        kind: str, scale_factor: tuple[float, float] | None = None
                        ) -> tuple[Any, Any]:
    """(R_h, R_w) taking (H, W) = ``in_hw`` to (Ho, Wo) = ``out_hw`` for ``kind`` ("nearest",
    "bilinear", "adaptive_avg"), on the device and in the dtype of the array ``like`` (x in
    forward, dout in backward); cached (at most 64 pairs). ``scale_factor`` (sh, sw): the
    scales the sample positions come from (PyTorch's rule when a scale is given: r = 1/s);
    None: from the sizes (r = H/Ho), as for an output ``size``."""
    xp = get_array_module(like)
    (H, W), (Ho, Wo) = in_hw, out_hw
    sh, sw = scale_factor if scale_factor is not None else (None, None)
    device = getattr(getattr(like, "device", None), "id", None)
    key = (kind, H, W, Ho, Wo, sh, sw, str(like.dtype), xp.__name__, device)
    entry = _CACHE.get(key)      # one lookup: another thread-rank may clear the cache
    if entry is None:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.clear()
        if kind == "adaptive_avg":
            entry = (adaptive_avg_matrix(xp, H, Ho, like.dtype),
                     adaptive_avg_matrix(xp, W, Wo, like.dtype))
        else:
            build = {"nearest": nearest_matrix, "bilinear": linear_matrix}[kind]
            entry = (build(xp, H, Ho, like.dtype, sh), build(xp, W, Wo, like.dtype, sw))
        _CACHE[key] = entry
    return entry


def stored_channels_last(a: Any) -> bool:
    """True when the (N, C, H, W) array ``a`` is stored NHWC and not also NCHW (with C = 1,
    or 1×1 images, both orders describe the same memory: the plain path is taken)."""
    return not a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous


def _both_axes(a: Any, A_h: Any, A_w: Any, channels_last: bool | None) -> Any:
    """A_h · a[n, c] · A_wᵀ for every (n, c), written NCHW, or NHWC when ``channels_last``
    (None: ``a``'s own layout).

    NCHW: the columns first, t = a · A_wᵀ (N, C, H, Wo), then the rows, A_h · t; ``@``
    broadcasts the small matrices over N and C (one batched GEMM each on CuPy). NHWC: the
    same two products on the (N, H, W, C) view, the channels riding along as the last axis,
    t = A_w · a[n, h] ((Wo, W)·(W, C)), then A_h times the (H, Wo·C) matrix of each image;
    the result is NHWC memory viewed as (N, C, Ho, Wo). (A CuPy matmul writes C-ordered in
    its logical shape, so the NCHW products would turn a channels-last array into NCHW.)
    No transposed copy of the input or the output either way.
    """
    if channels_last is None:
        channels_last = stored_channels_last(a)
    if not channels_last:
        return A_h @ (a @ A_w.T)
    N, C, H, _ = a.shape
    t = A_w @ a.transpose(0, 2, 3, 1)                     # (N, H, Wo, C): the columns
    Wo = t.shape[2]
    u = A_h @ t.reshape(N, H, Wo * C)                     # (N, Ho, Wo·C): the rows
    return u.reshape(N, u.shape[1], Wo, C).transpose(0, 3, 1, 2)


def resample(x: Any, R_h: Any, R_w: Any) -> Any:
    """y = R_h · x · R_wᵀ for every (n, c): (N, C, H, W) -> (N, C, Ho, Wo), stored like x
    (NCHW, or NHWC when x is: ``stored_channels_last``).

    Two batched GEMMs over the whole batch: the columns first, then the rows (see
    ``_both_axes``). No transposed copies of x or y are made.
    """
    return _both_axes(x, R_h, R_w, None)


def resample_backward(dy: Any, R_h: Any, R_w: Any, channels_last: bool | None = None) -> Any:
    """dx = R_hᵀ · dy · R_w for every (n, c): (N, C, Ho, Wo) -> (N, C, H, W), the adjoint of
    ``resample``: each input pixel collects dy times every weight it was used with (for
    nearest, the scatter-add of dy onto the pixel each output copied). Stored NHWC when
    ``channels_last`` (pass the forward input's ``stored_channels_last``), NCHW when False,
    like dy when None."""
    return _both_axes(dy, R_h.T, R_w.T, channels_last)
