"""BatchNorm (+ ReLU) on CuPy in five launches per training step: the launchers of
``batchnorm.cu`` and their NumPy twins.

Per BatchNorm layer and step::

    training forward    bn_forward_partials  -> bn_forward_finalize -> bn_forward_apply     3
    evaluation forward  bn_eval_apply                                                        1
    backward            bn_backward_partials -> bn_backward_dx                               2

(the plain CuPy code took about 33). Each kernel reads its arrays as BatchNorm's (M, C)
matrix, M = N * S rows (S = H * W, L or 1 positions per sample) by C channels, through three
strides (``channel_layout``), so NCHW and channels-last storage are both read in place, and
the outputs are written in the input's layout. The formulas are those of
``minicnn.functional.normalization`` (docs/derivations/batchnorm.md); only the batch
statistics are summed differently: in one pass, shifted by each channel's first value
(``bn_forward_partials``), instead of two passes through x - mu.

The named functions that choose these kernels on CuPy (and plain array code on NumPy) are
``minicnn.functional.normalization.batch_norm_forward`` and ``batch_norm_backward``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..backend import get_array_module
from . import launch, twin

__all__ = ["Layout", "channel_layout", "reads_in_place", "reduction_chunks", "apply_chunks",
           "forward_train", "forward_eval", "backward"]

FAMILY = "batchnorm"
ROWS_PER_THREAD = 8     # rows each thread of an apply kernel walks (its setup is amortised)


# --------------------------------------------------------------------------------------------
# Layouts and work split
# --------------------------------------------------------------------------------------------

class Layout(NamedTuple):
    """Where element (row r = n * S + s, channel c) of an (N, C, *spatial) array lies."""

    base: Any                     # C-contiguous array over the same memory (no copy)
    order: tuple[int, ...]        # base = array.transpose(order)
    S: int                        # positions per sample: prod(spatial), 1 for (N, C)
    strides: tuple[Any, Any, Any]  # sN, sS, sC in elements, as np.int64

    def empty(self) -> tuple[Any, Any]:
        """A new array laid out as this one: (the array, its C-contiguous base)."""
        xp = get_array_module(self.base)
        base = xp.empty(self.base.shape, dtype=self.base.dtype)
        inverse = tuple(int(a) for a in np.argsort(self.order))
        return base.transpose(inverse), base


def channel_layout(x: Any) -> Layout:
    """The (M, C) view of ``x`` (N, C, *spatial) for the kernels: a C-contiguous base and
    the strides (sN, sS, sC) of sample, position and channel.

    Any dense storage order is read in place: NCHW (sN = C*S, sS = 1, sC = S), channels-last
    (sN = S*C, sS = C, sC = 1), (N, C) and its transpose. An array whose spatial axes do not
    flatten into one stride, or that is not dense (a slice, a broadcast), is copied once
    into C order."""
    order = _storage_order(x)
    strides = _strides(x)
    if strides is None or not x.transpose(order).flags.c_contiguous:
        x = get_array_module(x).ascontiguousarray(x)
        order, strides = tuple(range(x.ndim)), _strides(x)
    return Layout(x.transpose(order), order, math.prod(x.shape[2:]), strides)


def reads_in_place(x: Any) -> bool:
    """True when the kernels read ``x`` where it lies (``channel_layout`` makes no copy)."""
    return _strides(x) is not None and x.transpose(_storage_order(x)).flags.c_contiguous


def _storage_order(x: Any) -> tuple[int, ...]:
    """The axes of ``x`` from the outermost in memory to the innermost (ties: axis order)."""
    return tuple(sorted(range(x.ndim), key=lambda a: -x.strides[a]))


def _strides(x: Any) -> tuple[Any, Any, Any] | None:
    """(sN, sS, sC) in elements, or None when the spatial axes do not flatten into one."""
    item = x.itemsize
    elem = [st // item for st in x.strides]
    spatial = [a for a in range(2, x.ndim) if x.shape[a] > 1]
    sS = elem[spatial[-1]] if spatial else 1
    expected = sS
    for a in range(x.ndim - 1, 1, -1):          # innermost spatial axis outwards
        if x.shape[a] > 1 and elem[a] != expected:
            return None
        expected *= x.shape[a]
    return np.int64(elem[0]), np.int64(sS), np.int64(elem[1])


def reduction_chunks(M: int) -> int:
    """P, the chunks of rows a per-channel reduction is split into: about sqrt(M), so that a
    thread's walk over its chunk (M / P rows) and the loop over the P partial sums that
    follows are equally long (no shared memory: each loop is one thread's)."""
    return math.isqrt(max(M, 1) - 1) + 1                   # ceil(sqrt(M)), 1 <= P <= M


def apply_chunks(M: int) -> int:
    """Q, the chunks of an element-wise pass: ``ROWS_PER_THREAD`` rows per thread."""
    return max(1, -(-M // ROWS_PER_THREAD))


def _shape(x: Any) -> tuple[int, int, int]:
    """M, C, S of an (N, C, *spatial) array."""
    C = x.shape[1]
    S = math.prod(x.shape[2:])
    return x.shape[0] * S, C, S


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

def forward_train(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
                  momentum: float, eps: float, relu: bool = False
                  ) -> tuple[Any, Any, Any, Any, Any]:
    """Training forward, three launches: y (x's layout), mean, inv_std (C,) of the batch, and
    the new running mean and variance (new arrays, in the running buffers' dtype).

    ``gamma``, ``beta``: (C,) in x's dtype. ``relu``: y = max(y, 0) in the same pass."""
    xp = get_array_module(x)
    dtype = x.dtype
    M, C, S = _shape(x)
    lay = channel_layout(x)
    P = reduction_chunks(M)
    part = xp.empty((2, P, C), dtype=dtype)
    launch(xp, FAMILY, "bn_forward_partials", dtype, P * C,
           (lay.base, part, np.int64(M), np.int32(C), np.int64(S), *lay.strides, np.int64(P)))
    mean = xp.empty(C, dtype=dtype)
    inv_std = xp.empty(C, dtype=dtype)
    new_mean = xp.empty(C, dtype=dtype)
    new_var = xp.empty(C, dtype=dtype)
    launch(xp, FAMILY, "bn_forward_finalize", dtype, C,
           (lay.base, part, running_mean.astype(dtype, copy=False),
            running_var.astype(dtype, copy=False), mean, inv_std, new_mean, new_var,
            np.int64(M), np.int32(C), lay.strides[2], np.int64(P), dtype.type(eps),
            dtype.type(momentum)))
    y, y_base = lay.empty()
    Q = apply_chunks(M)
    launch(xp, FAMILY, "bn_forward_apply", dtype, Q * C,
           (lay.base, mean, inv_std, gamma, beta, y_base, np.int64(M), np.int32(C),
            np.int64(S), *lay.strides, np.int64(Q), np.int32(relu)))
    return (y, mean, inv_std, new_mean.astype(running_mean.dtype, copy=False),
            new_var.astype(running_var.dtype, copy=False))


def forward_eval(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
                 eps: float, relu: bool = False) -> tuple[Any, Any, Any]:
    """Evaluation forward, one launch: y (x's layout), and the mean and inv_std (C,) it used
    (the running mean in x's dtype, 1 / sqrt(running_var + eps))."""
    xp = get_array_module(x)
    dtype = x.dtype
    M, C, S = _shape(x)
    lay = channel_layout(x)
    mean = running_mean.astype(dtype, copy=False)
    inv_std = xp.empty(C, dtype=dtype)
    y, y_base = lay.empty()
    Q = apply_chunks(M)
    launch(xp, FAMILY, "bn_eval_apply", dtype, Q * C,
           (lay.base, mean, running_var.astype(dtype, copy=False), gamma, beta, y_base,
            inv_std, np.int64(M), np.int32(C), np.int64(S), *lay.strides, np.int64(Q),
            dtype.type(eps), np.int32(relu)))
    return y, mean, inv_std


def backward(dout: Any, x: Any, y: Any | None, mean: Any, inv_std: Any, gamma: Any,
             batch_stats: bool, dgamma: Any = None, dbeta: Any = None
             ) -> tuple[Any, Any, Any]:
    """Backward, two launches: dx (x's layout), dgamma = Σ g * x_hat, dbeta = Σ g (C,), with
    g = dout * [y > 0] when ``y`` (the output of a fused ReLU) is given, else dout.
    ``dgamma``, ``dbeta``: contiguous (C,) arrays to write the sums into (e.g. the
    optimizer's flat gradient buffer), or None for new ones.

    ``batch_stats``: x was normalised by its own batch's mean and inv_std (training), so dx
    has the two mean terms; otherwise dx = gamma * inv_std * g."""
    xp = get_array_module(dout)
    dtype = x.dtype
    M, C, S = _shape(x)
    lay = channel_layout(x)
    g_lay = channel_layout(dout)
    relu = y is not None
    if relu:
        y_lay = channel_layout(y)
        extents = (M // S, S, C)                # a stride along an extent of 1 is never used
        if any(n > 1 and a != b for n, a, b in zip(extents, y_lay.strides, lay.strides,
                                                   strict=True)):
            raise ValueError("batchnorm.backward: y must have the layout of x (the forward's "
                             "output)")
        y_base = y_lay.base
    else:
        y_base = lay.base                       # not read (relu == 0)
    P = reduction_chunks(M)
    part = xp.empty((2, P, C), dtype=dtype)
    sizes = (np.int64(M), np.int32(C), np.int64(S), *g_lay.strides, *lay.strides)
    launch(xp, FAMILY, "bn_backward_partials", dtype, P * C,
           (g_lay.base, lay.base, y_base, mean, inv_std, part, *sizes, np.int64(P),
            np.int32(relu)))
    dx, dx_base = lay.empty()
    dgamma = xp.empty(C, dtype=dtype) if dgamma is None else dgamma
    dbeta = xp.empty(C, dtype=dtype) if dbeta is None else dbeta
    launch(xp, FAMILY, "bn_backward_dx", dtype, P * C,
           (g_lay.base, lay.base, y_base, mean, inv_std, gamma, part, dx_base, dgamma, dbeta,
            *sizes, np.int64(P), np.int32(relu), np.int32(batch_stats)))
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------------------------
# Twins: the same computations on NumPy arrays (the reference for the kernels)
# --------------------------------------------------------------------------------------------

def _matrix(buf: np.ndarray, M: Any, C: Any, S: Any, sN: Any, sS: Any, sC: Any) -> np.ndarray:
    """The (N, S, C) strided view of the raw memory ``buf`` (writable: outputs go through it)."""
    item = buf.itemsize
    return np.lib.stride_tricks.as_strided(
        buf.reshape(-1), shape=(int(M) // int(S), int(S), int(C)),
        strides=(int(sN) * item, int(sS) * item, int(sC) * item))


def _rows(buf: np.ndarray, M: Any, C: Any, S: Any, sN: Any, sS: Any, sC: Any) -> np.ndarray:
    """The (M, C) matrix of ``buf`` (a copy where the layout needs one)."""
    return _matrix(buf, M, C, S, sN, sS, sC).reshape(int(M), int(C))


def _chunk_sums(a: np.ndarray, P: Any) -> np.ndarray:
    """(P, C): the sums of a's rows over each of P chunks of ceil(M / P) consecutive rows."""
    M, C = a.shape
    L = -(-M // int(P))
    padded = np.zeros((int(P) * L, C), a.dtype)
    padded[:M] = a
    return padded.reshape(int(P), L, C).sum(axis=1)


@twin("bn_forward_partials")
def bn_forward_partials_twin(x, part, M, C, S, sN, sS, sC, P):
    """part[0] = Σ (x - K), part[1] = Σ (x - K)² per chunk and channel, K = the channel's
    first value."""
    X = _rows(x, M, C, S, sN, sS, sC)
    d = X - X[0]                                   # shifted by each channel's first value
    part = part.reshape(2, int(P), int(C))
    part[0] = _chunk_sums(d, P)
    part[1] = _chunk_sums(d * d, P)


@twin("bn_forward_finalize")
def bn_forward_finalize_twin(x, part, running_mean, running_var, mean, inv_std,
                             new_running_mean, new_running_var, M, C, sC, P, eps, momentum):
    """mean, inv_std of the batch from the partial sums, and the new running averages."""
    real = x.dtype.type
    sum_d, sum_d2 = part.reshape(2, int(P), int(C)).sum(axis=1)
    m = real(M)
    mean_d = sum_d / m
    var = np.maximum(sum_d2 / m - mean_d * mean_d, 0)
    mean[:] = x.reshape(-1)[np.arange(int(C)) * int(sC)] + mean_d
    inv_std[:] = 1 / np.sqrt(var + eps)
    new_running_mean[:] = (1 - momentum) * running_mean + momentum * mean
    new_running_var[:] = (1 - momentum) * running_var + momentum * (var * (m / real(M - 1)))


@twin("bn_forward_apply")
def bn_forward_apply_twin(x, mean, inv_std, gamma, beta, y, M, C, S, sN, sS, sC, Q, relu):
    """y = (x - mean) * (gamma * inv_std) + beta, then max(y, 0) when relu; x's strides."""
    v = (_matrix(x, M, C, S, sN, sS, sC) - mean) * (gamma * inv_std) + beta
    _matrix(y, M, C, S, sN, sS, sC)[...] = np.maximum(v, 0) if relu else v


@twin("bn_eval_apply")
def bn_eval_apply_twin(x, running_mean, running_var, gamma, beta, y, inv_std, M, C, S, sN, sS,
                       sC, Q, eps, relu):
    """inv_std = 1 / sqrt(running_var + eps), then bn_forward_apply with the running stats."""
    inv_std[:] = 1 / np.sqrt(running_var + eps)
    bn_forward_apply_twin(x, running_mean, inv_std, gamma, beta, y, M, C, S, sN, sS, sC, Q,
                          relu)


def _g_and_x_hat(dout, x, y, mean, inv_std, M, C, S, gN, gS, gC, sN, sS, sC, relu):
    """g = dout (masked by y > 0 when relu) and x_hat = (x - mean) * inv_std, both (M, C)."""
    g = _rows(dout, M, C, S, gN, gS, gC)
    if relu:
        g = np.where(_rows(y, M, C, S, sN, sS, sC) > 0, g, 0)
    x_hat = (_rows(x, M, C, S, sN, sS, sC) - mean) * inv_std
    return g, x_hat


@twin("bn_backward_partials")
def bn_backward_partials_twin(dout, x, y, mean, inv_std, part, M, C, S, gN, gS, gC, sN, sS,
                              sC, P, relu):
    """part[0] = Σ g * x_hat, part[1] = Σ g per chunk and channel."""
    g, x_hat = _g_and_x_hat(dout, x, y, mean, inv_std, M, C, S, gN, gS, gC, sN, sS, sC, relu)
    part = part.reshape(2, int(P), int(C))
    part[0] = _chunk_sums(g * x_hat, P)
    part[1] = _chunk_sums(g, P)


@twin("bn_backward_dx")
def bn_backward_dx_twin(dout, x, y, mean, inv_std, gamma, part, dx, dgamma, dbeta, M, C, S,
                        gN, gS, gC, sN, sS, sC, P, relu, batch_stats):
    """dgamma, dbeta from the partial sums; dx = gamma * inv_std * (g - mean terms) with the
    batch statistics, gamma * inv_std * g with the running ones; x's strides."""
    g, x_hat = _g_and_x_hat(dout, x, y, mean, inv_std, M, C, S, gN, gS, gC, sN, sS, sC, relu)
    sum_g_x_hat, sum_g = part.reshape(2, int(P), int(C)).sum(axis=1)
    dgamma[:] = sum_g_x_hat
    dbeta[:] = sum_g
    m = x.dtype.type(M)
    scale = gamma * inv_std
    if batch_stats:
        value = scale * (g - sum_g / m - x_hat * (sum_g_x_hat / m))
    else:
        value = scale * g
    _matrix(dx, M, C, S, sN, sS, sC)[...] = value.reshape(int(M) // int(S), int(S), int(C))
