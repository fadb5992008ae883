"""Launchers and NumPy twins of ``elementwise.cu``: the activations' forward and backward,
dropout, and softmax cross-entropy, one kernel launch each.

Why kernels: on CuPy every ufunc is one launch, so SiLU's backward written as five in-place
updates is five launches, and a ufunc allocates its output C-ordered in the *logical* shape,
so an activation after a channels-last convolution wrote NCHW and the next layer read it
with stride C. Each launcher here allocates its outputs in its input's memory layout and
runs one kernel over the flat storage.

Layouts. A kernel sees 1-D arrays: each array's memory in storage order (``flat``), so that
the same index is the same logical element of every array of a launch. That needs the arrays
*dense* (contiguous in some order of their axes: C order, channels-last, ...) and in the same
order: a launcher copies an input that is not (one launch, rare: a sliced view, or a
gradient that arrives in another layout than the cached forward array).

Entry points (``ew_`` element-wise, ``ce_`` cross-entropy): see ``elementwise.cu``. The
functions that choose them on CuPy and keep the plain array code on NumPy are in
``functional/activation.py`` (one launcher here per formula: ``sigmoid``, ``relu_backward``,
...), ``functional/dropout.py`` and ``functional/softmax.py`` (the loss).

Tests: tests/test_kernels_elementwise.py, tests/test_channels_last.py
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import get_array_module
from ..functional.random_bits import random_bits
from ..functional.special import normal_cdf
from . import SCALAR_TYPES, launch, twin, uses_kernels

__all__ = ["uses_kernels", "storage_order", "flat", "unary", "binary", "relu_backward",
           "leaky_relu", "leaky_relu_backward", "sigmoid", "sigmoid_backward", "tanh_backward",
           "silu", "silu_backward", "gelu", "gelu_backward", "dropout_forward", "cross_entropy",
           "cross_entropy_backward"]

FAMILY = "elementwise"


# --------------------------------------------------------------------------------------------
# Layouts: arrays as their flat storage
# --------------------------------------------------------------------------------------------

def storage_order(a: Any) -> tuple[int, ...]:
    """``a``'s axes from the slowest-varying in memory to the fastest: (0, 1, 2, 3) for C
    order, (0, 2, 3, 1) for a channels-last (N, C, H, W) array (ties keep the axis order)."""
    return tuple(sorted(range(a.ndim), key=lambda k: -abs(a.strides[k])))


def flat(a: Any, order: tuple[int, ...]) -> Any:
    """The 1-D view of ``a``'s memory, its axes taken in ``order``; None when that is not a
    view (``a`` is not dense in that order)."""
    v = a.transpose(order)
    return v.reshape(-1) if v.flags.c_contiguous else None


def _empty_in_order(shape: tuple[int, ...], dtype: Any, order: tuple[int, ...], xp: Any) -> Any:
    """An uninitialised array of ``shape`` whose memory holds its axes in ``order``."""
    inverse = tuple(int(k) for k in np.argsort(order))
    return xp.empty(tuple(shape[k] for k in order), dtype=dtype).transpose(inverse)


def _in_order(a: Any, order: tuple[int, ...]) -> Any:
    """``a`` itself when it is dense in ``order``; else a copy that is (one launch)."""
    if flat(a, order) is not None:
        return a
    xp = get_array_module(a)
    out = _empty_in_order(tuple(a.shape), a.dtype, order, xp)
    out[...] = a
    return out


def _dense_order(a: Any) -> tuple[Any, tuple[int, ...]]:
    """(``a`` or a dense copy of it, the order of its axes in memory)."""
    order = storage_order(a)
    return _in_order(a, order), order


def _n(a: Any) -> np.int64:
    return np.int64(a.size)


def unary(name: str, x: Any, *scalars: Any) -> Any:
    """y = f(x) with the entry point ``name(x, *scalars, y, n)``; y in x's memory layout."""
    xp = get_array_module(x)
    x, order = _dense_order(x)
    y = _empty_in_order(tuple(x.shape), x.dtype, order, xp)
    launch(xp, FAMILY, name, x.dtype, x.size, (flat(x, order), *scalars, flat(y, order), _n(x)))
    return y


def binary(name: str, a: Any, dout: Any, *scalars: Any) -> Any:
    """dx = g(a, dout) with ``name(a, dout, *scalars, dx, n)``; dx in dout's memory layout
    (``a``, the array forward kept, is copied into it first if it differs)."""
    xp = get_array_module(dout)
    if tuple(a.shape) != tuple(dout.shape):
        raise ValueError(f"kernels.elementwise.{name}: dout of shape {tuple(dout.shape)} for an "
                         f"output of shape {tuple(a.shape)}")
    dout, order = _dense_order(dout)
    a = _in_order(a.astype(dout.dtype, copy=False), order)
    dx = _empty_in_order(tuple(dout.shape), dout.dtype, order, xp)
    launch(xp, FAMILY, name, dout.dtype, dout.size,
           (flat(a, order), flat(dout, order), *scalars, flat(dx, order), _n(dout)))
    return dx


# -- the activations: one launcher per formula (functional/activation.py) ----------------------

def relu_backward(y: Any, dout: Any) -> Any:
    """dx = dout * [y > 0] (``ew_relu_backward``)."""
    return binary("ew_relu_backward", y, dout)


def leaky_relu(x: Any, alpha: float) -> Any:
    """y = x (x > 0), α x (otherwise) (``ew_leaky_relu_forward``)."""
    return unary("ew_leaky_relu_forward", x, x.dtype.type(alpha))


def leaky_relu_backward(x: Any, dout: Any, alpha: float) -> Any:
    """dx = dout * (1 if x > 0 else α) (``ew_leaky_relu_backward``)."""
    return binary("ew_leaky_relu_backward", x, dout, dout.dtype.type(alpha))


def sigmoid(x: Any) -> Any:
    """y = σ(x) (``ew_sigmoid_forward``)."""
    return unary("ew_sigmoid_forward", x)


def sigmoid_backward(y: Any, dout: Any) -> Any:
    """dx = dout * y (1 - y) (``ew_sigmoid_backward``)."""
    return binary("ew_sigmoid_backward", y, dout)


def tanh_backward(y: Any, dout: Any) -> Any:
    """dx = dout * (1 - y²) (``ew_tanh_backward``)."""
    return binary("ew_tanh_backward", y, dout)


def silu(x: Any) -> Any:
    """y = x σ(x) (``ew_silu_forward``)."""
    return unary("ew_silu_forward", x)


def silu_backward(x: Any, dout: Any) -> Any:
    """dx = dout * σ(x) (1 + x (1 - σ(x))), σ recomputed from x (``ew_silu_backward``)."""
    return binary("ew_silu_backward", x, dout)


def gelu(x: Any, approximate: str) -> Any:
    """y = x Φ(x) (``ew_gelu_forward``) or x σ(2u) (``approximate="tanh"``:
    ``ew_gelu_tanh_forward``)."""
    return unary("ew_gelu_tanh_forward" if approximate == "tanh" else "ew_gelu_forward", x)


def gelu_backward(x: Any, dout: Any, approximate: str) -> Any:
    """dx = dout * (Φ + x φ) (``ew_gelu_backward``) or dout * (s + 2 x s (1 - s) du/dx)
    (``ew_gelu_tanh_backward``), Φ or s recomputed from x."""
    return binary("ew_gelu_tanh_backward" if approximate == "tanh" else "ew_gelu_backward",
                  x, dout)


# -- dropout and the loss ----------------------------------------------------------------------

def dropout_forward(x: Any, seed: int, threshold: int, scale: float) -> tuple[Any, Any]:
    """(y, mask): mask = [bits >= threshold] · scale, y = x · mask, both in x's layout; the
    bits are ``random_bits`` of ``seed`` over x's storage (one launch)."""
    xp = get_array_module(x)
    x, order = _dense_order(x)
    y = _empty_in_order(tuple(x.shape), x.dtype, order, xp)
    mask = _empty_in_order(tuple(x.shape), x.dtype, order, xp)
    args = (flat(x, order), np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32),
            np.uint32(threshold), x.dtype.type(scale), flat(y, order), flat(mask, order), _n(x))
    launch(xp, FAMILY, "ew_dropout_forward", x.dtype, x.size, args)
    return y, mask


def _labels(y: Any) -> Any:
    xp = get_array_module(y)
    return xp.ascontiguousarray(y.astype(xp.int64, copy=False))


def cross_entropy(z: Any, y: Any, label_smoothing: float, bad: Any) -> tuple[Any, Any]:
    """(loss, p) for logits z (N, C) and integer labels y (N,), two launches: ``ce_rows``
    (p and each row's loss, one thread per row) and ``ce_finalize`` (the mean; NaN and
    ``bad`` = [1, label] for a label outside [0, C)). ``bad``: an int64 (2,) device array."""
    xp = get_array_module(z)
    N, C = z.shape
    if C < 1:
        raise ValueError("softmax cross-entropy: logits with no class (shape (N, 0))")
    dtype = z.dtype
    if dtype not in SCALAR_TYPES:  # float16: computed in float32
        z = z.astype(np.float32)
    z, y = xp.ascontiguousarray(z), _labels(y)
    s, eps = z.dtype.type, float(label_smoothing)
    p = xp.empty_like(z)
    rows = xp.empty(N, dtype=z.dtype)
    loss = xp.empty((), dtype=z.dtype)
    launch(xp, FAMILY, "ce_rows", z.dtype, N,
           (z, y, s(1.0 - eps), s(eps / C), p, rows, np.int64(N), np.int64(C)))
    launch(xp, FAMILY, "ce_finalize", z.dtype, 1, (rows, y, bad, loss, np.int64(N), np.int64(C)))
    return loss.astype(dtype, copy=False), p.astype(dtype, copy=False)


def cross_entropy_backward(p: Any, y: Any, label_smoothing: float) -> Any:
    """dz = (p - t) / N, t = (1 - ε) onehot(y) + ε / C: one launch (``ce_backward``)."""
    xp = get_array_module(p)
    N, C = p.shape
    dtype = p.dtype
    if dtype not in SCALAR_TYPES:  # float16: computed in float32
        p = p.astype(np.float32)
    p = xp.ascontiguousarray(p)
    s, eps = p.dtype.type, float(label_smoothing)
    dz = xp.empty_like(p)
    launch(xp, FAMILY, "ce_backward", p.dtype, N * C,
           (p, _labels(y), s(1.0 - eps + eps / C), s(eps / C), s(1.0 / N), dz, np.int64(N),
            np.int64(C)))
    return dz.astype(dtype, copy=False)


# --------------------------------------------------------------------------------------------
# Twins: what each entry point computes, in NumPy, writing its outputs in place
# --------------------------------------------------------------------------------------------

def _sigmoid(v: np.ndarray) -> np.ndarray:
    """σ(v) = exp(min(v, 0)) / (1 + exp(-|v|)) (no overflow, accurate tails)."""
    return np.exp(np.minimum(v, 0)) / (1 + np.exp(-np.abs(v)))


def _normal_cdf(v: np.ndarray) -> np.ndarray:
    """Φ(v) = ½ erfc(-v/√2), evaluated in float64 (minicnn's erfc, good to ~1e-13 relative)
    and rounded to v's dtype."""
    return normal_cdf(v.astype(np.float64)).astype(v.dtype)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_A = 0.044715


def _gelu_tanh_s(v: np.ndarray) -> np.ndarray:
    """s = σ(2u), u = √(2/π) (v + 0.044715 v³): GELU's tanh form is y = v s."""
    return _sigmoid(2 * (_SQRT_2_OVER_PI * (v + _GELU_TANH_A * (v * v * v))))


@twin("ew_relu_backward")
def _relu_backward(y, dout, dx, n):
    dx[...] = dout * (y > 0)


@twin("ew_leaky_relu_forward")
def _leaky_relu_forward(x, alpha, y, n):
    y[...] = np.where(x > 0, x, alpha * x)


@twin("ew_leaky_relu_backward")
def _leaky_relu_backward(x, dout, alpha, dx, n):
    dx[...] = dout * np.where(x > 0, x.dtype.type(1), alpha)


@twin("ew_sigmoid_forward")
def _sigmoid_forward(x, y, n):
    y[...] = _sigmoid(x)


@twin("ew_sigmoid_backward")
def _sigmoid_backward(y, dout, dx, n):
    dx[...] = dout * (y * (1 - y))


@twin("ew_tanh_backward")
def _tanh_backward(y, dout, dx, n):
    dx[...] = dout * (1 - y * y)


@twin("ew_silu_forward")
def _silu_forward(x, y, n):
    y[...] = x * _sigmoid(x)


@twin("ew_silu_backward")
def _silu_backward(x, dout, dx, n):
    s = _sigmoid(x)
    dx[...] = dout * (s * (1 + x * (1 - s)))


@twin("ew_gelu_forward")
def _gelu_forward(x, y, n):
    y[...] = x * _normal_cdf(x)


@twin("ew_gelu_backward")
def _gelu_backward(x, dout, dx, n):
    xc = np.clip(x, -40, 40)
    phi = (1 / math.sqrt(2 * math.pi)) * np.exp(-0.5 * (xc * xc))
    dx[...] = dout * (_normal_cdf(x) + x * phi)


@twin("ew_gelu_tanh_forward")
def _gelu_tanh_forward(x, y, n):
    y[...] = x * _gelu_tanh_s(x)


@twin("ew_gelu_tanh_backward")
def _gelu_tanh_backward(x, dout, dx, n):
    s = _gelu_tanh_s(x)
    du_dx = _SQRT_2_OVER_PI * (1 + (3 * _GELU_TANH_A) * (x * x))
    dx[...] = dout * (s + 2 * x * s * (1 - s) * du_dx)


@twin("ew_dropout_forward")
def _dropout_forward(x, k0, k1, threshold, scale, y, mask, n):
    keep = random_bits(np, (int(n),), int(k0) | int(k1) << 32) >= threshold
    mask[...] = np.where(keep, scale, x.dtype.type(0))
    y[...] = x * mask


@twin("ce_rows")
def _ce_rows(z, y, keep, spread, p, loss_rows, N, C):
    z = z.reshape(N, C)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    p.reshape(N, C)[...] = np.exp(log_p)
    label = np.clip(y, 0, C - 1)
    loss_rows[...] = -(keep * log_p[np.arange(N), label] + spread * log_p.sum(axis=1))


@twin("ce_finalize")
def _ce_finalize(loss_rows, y, bad, loss, N, C):
    out_of_range = (y < 0) | (y >= C)
    if out_of_range.any():
        loss[...] = np.nan
        if not bad[0]:
            bad[...] = 1, y[out_of_range.argmax()]
    else:
        loss[...] = loss_rows.sum() / loss_rows.dtype.type(N)


@twin("ce_backward")
def _ce_backward(p, y, hit, miss, inv_n, dz, N, C):
    label = np.clip(y, 0, C - 1)
    t = np.where(np.arange(C) == label[:, None], hit, miss)
    dz.reshape(N, C)[...] = (p.reshape(N, C) - t) * inv_n
