"""Softmax and log-softmax, stable for logits of any size.

softmax(z)_c = e^{z_c} / Σ_k e^{z_k}. Computed literally, e^{1000} overflows. Softmax is
unchanged by subtracting a constant from every z_k, so we subtract m = max_k z_k first: every
exponent is then <= 0 (no overflow) and the largest term is e^0 = 1 (the sum is >= 1, so its
log is finite). This is the log-sum-exp trick:

    logsumexp(z) = m + log Σ_k e^{z_k - m}
    log_softmax(z)_c = z_c - logsumexp(z) = (z_c - m) - log Σ_k e^{z_k - m}

``softmax_cross_entropy`` and its backward are ``CrossEntropyLoss``'s arithmetic for integer
labels: plain array code on NumPy, three kernel launches per step on CuPy (forward two,
backward one; ``kernels/elementwise.py``) where they were some twenty. With an
``ignore_index`` (positions whose label is that value count for nothing) they are plain
array code on both backends (``masked_softmax_cross_entropy``). ``positions_as_rows`` and
``rows_as_positions`` turn segmentation logits (N, C, d1, ..., dk) into the (N·d, C) rows
these functions take and back, without a copy when the channels are stored last.

Derivation: docs/derivations/softmax_cross_entropy.md
Tests: tests/test_losses.py, tests/test_kernels_elementwise.py
"""

from __future__ import annotations

from typing import Any

from ..backend import get_array_module
from ..kernels import elementwise as kernels
from ..kernels import uses_kernels

__all__ = ["softmax", "log_softmax", "logsumexp", "smoothed_one_hot", "softmax_cross_entropy",
           "softmax_cross_entropy_backward", "masked_softmax_cross_entropy",
           "masked_softmax_cross_entropy_backward", "positions_as_rows", "rows_as_positions"]


def logsumexp(z: Any, axis: int = -1, keepdims: bool = False) -> Any:
    """log Σ_k e^{z_k} along ``axis``, computed as m + log Σ_k e^{z_k - m}."""
    xp = get_array_module(z)
    m = z.max(axis=axis, keepdims=True)
    out = m + xp.log(xp.exp(z - m).sum(axis=axis, keepdims=True))
    return out if keepdims else out.squeeze(axis)


def log_softmax(z: Any, axis: int = -1) -> Any:
    """log softmax(z) along ``axis``: z_c - logsumexp(z). Same shape and dtype as ``z``."""
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(z: Any, axis: int = -1) -> Any:
    """softmax(z)_c = e^{z_c - m} / Σ_k e^{z_k - m}, m = max_k z_k. Rows sum to 1."""
    xp = get_array_module(z)
    e = xp.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def smoothed_one_hot(y: Any, C: int, label_smoothing: float, dtype: Any) -> Any:
    """t = (1 - ε) onehot(y) + ε / C, shape (N, C): the cross-entropy's target for labels y."""
    xp = get_array_module(y)
    N = y.shape[0]
    t = xp.zeros((N, C), dtype=dtype)
    t[xp.arange(N), y] = 1.0
    if label_smoothing > 0.0:
        t = (1.0 - label_smoothing) * t + label_smoothing / C
    return t


def softmax_cross_entropy(z: Any, y: Any, label_smoothing: float = 0.0,
                          bad_labels: Any = None) -> tuple[Any, Any]:
    """(L, p): the mean softmax cross-entropy of logits z (N, C) against integer labels y (N,),
    and p = softmax(z).

        L = -(1/N) Σ_n [(1 - ε) log p_{n, y_n} + (ε / C) Σ_c log p_nc]

    (ε the label smoothing: the cross-entropy against t = (1 - ε) onehot(y) + ε / C). L is a
    0-d array of z's dtype. NumPy: log_softmax, then the true classes' entries picked.
    CuPy: two kernels (``kernels/elementwise.py``: p and each row's loss, then the mean),
    where labels outside [0, C) are read as the nearest class, make L NaN, and the first of
    them is written to ``bad_labels`` (an int64 (2,) device array [seen, label], unless it
    has seen one already): the caller checks the labels later, without a per-step sync.
    On NumPy the labels must be valid (the caller checks them on the host).
    """
    xp = get_array_module(z)
    if uses_kernels(z):
        return kernels.cross_entropy(z, y, label_smoothing, bad_labels)
    N, C = z.shape
    log_p = log_softmax(z, axis=1)
    # -log p of the true class, picked directly: reads as the lecture's formula.
    loss = -log_p[xp.arange(N), y].mean()
    if label_smoothing > 0.0:
        loss = (1.0 - label_smoothing) * loss - (label_smoothing / C) * log_p.sum(axis=1).mean()
    return xp.asarray(loss, dtype=z.dtype), xp.exp(log_p)


def softmax_cross_entropy_backward(p: Any, y: Any, label_smoothing: float = 0.0) -> Any:
    """dL/dz = (p - t) / N, t = (1 - ε) onehot(y) + ε / C (softmax's Jacobian times the
    cross-entropy's gradient collapses to p - t). One kernel on CuPy."""
    if uses_kernels(p):
        return kernels.cross_entropy_backward(p, y, label_smoothing)
    N, C = p.shape
    return (p - smoothed_one_hot(y, C, label_smoothing, p.dtype)) * (1.0 / N)


def positions_as_rows(a: Any) -> Any:
    """(N, C, d1, ..., dk) -> (N·d1·…·dk, C): one row of C class scores per position.

    The channel axis moved last, then the positions flattened. A view when ``a`` is stored
    channels-last (NHWC after a convolution on CuPy); one copy otherwise. (N, C) is kept."""
    if a.ndim == 2:
        return a
    return a.transpose(0, *range(2, a.ndim), 1).reshape(-1, a.shape[1])


def rows_as_positions(r: Any, shape: tuple[int, ...]) -> Any:
    """The inverse of ``positions_as_rows``: rows r (N·d, C) viewed as ``shape`` (N, C, d...),
    a view whose memory is channels-last (no copy)."""
    if len(shape) == 2:
        return r
    N, C, *d = shape
    k = len(d)
    return r.reshape(N, *d, C).transpose(0, k + 1, *range(1, k + 1))


def masked_softmax_cross_entropy(z: Any, y: Any, label_smoothing: float, ignore_index: int,
                                 bad_labels: Any = None) -> tuple[Any, Any]:
    """(L, p) as ``softmax_cross_entropy``, where rows whose label is ``ignore_index`` count
    for nothing, in the sum or in the mean (PyTorch's ``ignore_index``):

        keep_n = [y_n ≠ ignore_index],   K = Σ_n keep_n
        L = -(1/K) Σ_n keep_n [(1 - ε) log p_{n, y_n} + (ε / C) Σ_c log p_nc]

    K = 0 (every label ignored) gives NaN, as in PyTorch. Plain array code on both backends
    (no kernel, no host sync). ``bad_labels`` (CuPy): an int64 (2,) device array [seen,
    label] that gets the first label outside [0, C) that is not ``ignore_index``, which also
    makes L NaN, as the kernels do; on NumPy the caller checks the labels first.
    """
    xp = get_array_module(z)
    N, C = z.shape
    keep = y != ignore_index
    label = xp.clip(xp.where(keep, y, 0), 0, C - 1)     # a valid class at every row
    log_p = log_softmax(z, axis=1)
    rows = -log_p[xp.arange(N), label]
    if label_smoothing > 0.0:
        rows = (1.0 - label_smoothing) * rows - (label_smoothing / C) * log_p.sum(axis=1)
    K = keep.sum(dtype=z.dtype)
    with_rows = xp.where(keep, rows, 0).sum(dtype=z.dtype)
    loss = xp.where(K > 0, with_rows / xp.maximum(K, 1), xp.nan).astype(z.dtype)
    if bad_labels is not None:
        bad = keep & ((y < 0) | (y >= C))
        seen = bad.any()
        first = xp.take(y, bad.argmax()).astype(xp.int64)
        record = xp.stack([xp.ones((), dtype=xp.int64), first])
        bad_labels[...] = xp.where(seen & (bad_labels[0] == 0), record, bad_labels)
        loss = xp.where(seen, xp.nan, loss).astype(z.dtype)
    return loss, xp.exp(log_p)


def masked_softmax_cross_entropy_backward(p: Any, y: Any, label_smoothing: float,
                                          ignore_index: int) -> Any:
    """dL/dz = keep_n (p - t) / K: the ignored rows get zero, the others (p - t) over the
    number K of kept rows (zero everywhere when K = 0, as in PyTorch)."""
    xp = get_array_module(p)
    N, C = p.shape
    keep = y != ignore_index
    label = xp.clip(xp.where(keep, y, 0), 0, C - 1)
    K = keep.sum(dtype=p.dtype)
    weight = keep.astype(p.dtype) / xp.maximum(K, 1)     # (N,): 1/K or 0
    return (p - smoothed_one_hot(label, C, label_smoothing, p.dtype)) * weight[:, None]
