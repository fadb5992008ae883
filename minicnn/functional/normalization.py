"""The math every normalization layer shares: normalise over some axes, and its backward.

BatchNorm, LayerNorm, GroupNorm and InstanceNorm all compute, over their own set of axes
("the reduced axes", m elements each)::

    mu    = (1/m) Σ x
    var   = (1/m) Σ (x - mu)²               biased: divided by m, not m - 1
    x_hat = (x - mu) / sqrt(var + eps)      = (x - mu) * inv_std

``normalize`` (or ``center``, which stops at x - mu) is that forward step,
``normalize_backward`` its closed-form gradient, ``normalize_backward_from_sums`` the same
from two sums computed elsewhere (SyncBatchNorm's, over all ranks), and
``normalize_backward_centered`` the same from x - mu (BatchNorm's). ``reduce_sum`` is the one
reduction they use: a single pass over memory, in any layout (a channels-last view included),
so the layers never copy their input first and their outputs keep the input's layout (NumPy's
element-wise default order 'K').

The backward helpers return ``dx, Σ dx_hat·x_hat, Σ dx_hat``: with dx_hat = dout (gamma
folded into the scale) the two sums are dgamma and dbeta, in the order of the parameters.

The step-by-step chain rule these closed forms come from, and the twins the tests compare
them with, are ``minicnn.functional.reference``'s ``batchnorm_forward`` and
``batchnorm_backward_stepwise``. The derivation: docs/derivations/batchnorm.md.

The layers: ``minicnn.layers.batchnorm`` (BatchNorm1d/2d), ``minicnn.layers.sync_batchnorm``
(SyncBatchNorm2d) and ``minicnn.layers.norm`` (LayerNorm, GroupNorm, InstanceNorm2d).
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module

__all__ = ["reduce_sum", "center", "normalize", "normalize_backward",
           "normalize_backward_from_sums", "normalize_backward_centered", "per_channel"]


def reduce_sum(x: Any, axes: tuple[int, ...], other: Any = None) -> Any:
    """Σ x (or Σ x * other, without forming that product) over ``axes``, kept with size 1.

    Equals ``(x * other).sum(axis=axes, keepdims=True)``. ``einsum`` multiplies and adds in a
    single pass over the data, in whatever order the memory is laid out (a channels-last view
    included), where that expression first writes the full-size product (measured faster,
    see docs/benchmarks.md).

    Accuracy: a float32 sum is pairwise (error ~ log n) only along the innermost memory axis.
    For BatchNorm on channels-last data that axis is the channel one, so each channel would
    be one running sum over N*H*W numbers (relative error ~1e-5 for 64K of them). When
    several axes are reduced, the first one (the batch) is therefore kept in the einsum
    output: per-sample partial sums, added up afterwards in a second, small sum.
    """
    xp = get_array_module(x)
    letters = "abcdefghijklmnopqrstuvwxyz"[:x.ndim]
    # The first reduced axis, reduced in a second step; the axes before it are all kept, so
    # it has the same position in the einsum output as in x.
    partial = min(axes) if len(axes) > 1 else None
    kept = "".join(c for i, c in enumerate(letters) if i not in axes or i == partial)
    spec = letters if other is None else f"{letters},{letters}"
    operands = (x,) if other is None else (x, other)
    s = xp.einsum(f"{spec}->{kept}", *operands)
    if partial is not None:
        s = s.sum(axis=partial)
    shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    return s.reshape(shape)


def center(x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """The statistics of ``x`` over ``axes``, and x centred: x - mu.

    Returns ``x - mu, inv_std, mu, var``; the last three keep the reduced axes (size 1), so
    they broadcast against ``x``. ``inv_std = 1 / sqrt(var + eps)``; ``var`` is biased, and
    computed in two passes (from x - mu, not as E[x²] - mu², which cancels catastrophically
    in float32 when |mu| >> std). One full-size array is written: x - mu. Steps (1) to (4) of
    ``reference.batchnorm_forward``, over any axes.
    """
    xp = get_array_module(x)
    m = math.prod(x.shape[a] for a in axes)
    mu = reduce_sum(x, axes) * (1.0 / m)
    x_c = x - mu
    var = reduce_sum(x_c, axes, x_c) * (1.0 / m)
    inv_std = 1.0 / xp.sqrt(var + eps)
    return x_c, inv_std, mu, var


def normalize(x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """Normalise ``x`` over ``axes``: x_hat = (x - mu) / sqrt(var + eps).

    Returns ``x_hat, inv_std, mu, var`` (as ``center``, with x - mu scaled in place to x_hat:
    one full-size array written). Steps (1) to (5) of ``reference.batchnorm_forward``, over
    any axes.
    """
    x_hat, inv_std, mu, var = center(x, axes, eps)
    x_hat *= inv_std                                      # in place: saves a full-size array
    return x_hat, inv_std, mu, var


def normalize_backward(dx_hat: Any, x_hat: Any, scale: Any,
                       axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """dL/dx of ``x_hat = (x - mu) * inv_std`` with mu, var taken over ``axes`` (closed form).

    With m the number of reduced elements and the sums Σ over ``axes``
    (derivation: docs/derivations/batchnorm.md)::

        dx = (inv_std / m) * (m * dx_hat - Σ dx_hat - x_hat * Σ (dx_hat * x_hat))
           = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))

    For BatchNorm's axes (all but the channel axis 1), with dx_hat = dout and
    scale = gamma * inv_std, it equals ``reference.batchnorm_backward_stepwise`` (dx, dgamma,
    dbeta).

    Parameters
    ----------
    dx_hat : array, shape of x
        dL/dx_hat. Usually ``dout * gamma``. When gamma is constant over the reduced axes
        (BatchNorm, InstanceNorm) pass ``dout`` itself and fold gamma into ``scale``: it
        factors out of the bracket, and the two sums are then exactly dgamma and dbeta.
    x_hat : array, shape of x
        The normalised input cached by forward.
    scale : array, broadcastable to x
        ``inv_std`` (or ``gamma * inv_std``, see above).
    axes : tuple of int
        The reduced axes.

    Returns
    -------
    dx : array, shape of x
    sum_dx_hat_x_hat, sum_dx_hat : arrays with the reduced axes kept (size 1)
        Σ dx_hat * x_hat and Σ dx_hat, returned so callers can reuse them for dgamma, dbeta.
    """
    m = math.prod(x_hat.shape[a] for a in axes)
    sum_dx_hat = reduce_sum(dx_hat, axes)
    sum_dx_hat_x_hat = reduce_sum(dx_hat, axes, x_hat)
    dx = normalize_backward_from_sums(dx_hat, x_hat, scale, sum_dx_hat_x_hat, sum_dx_hat, m)
    return dx, sum_dx_hat_x_hat, sum_dx_hat


def normalize_backward_from_sums(dx_hat: Any, x_hat: Any, scale: Any, sum_dx_hat_x_hat: Any,
                                 sum_dx_hat: Any, m: float) -> Any:
    """``normalize_backward``'s dx from its two sums, given::

        dx = scale * (dx_hat - x_hat * Σ (dx_hat * x_hat) / m - Σ dx_hat / m)

    The sums may come from elsewhere: ``SyncBatchNorm2d`` adds them up over all ranks (and m
    over all ranks' elements) first. The 1/m lands on the small reduced arrays, not on
    full-size ones; one full-size array is written.

    Parameters
    ----------
    dx_hat, x_hat : arrays, shape of x
    scale : array, broadcastable to x (``inv_std`` or ``gamma * inv_std``)
    sum_dx_hat_x_hat, sum_dx_hat : arrays broadcastable to x (the reduced axes of size 1)
    m : number of elements each sum ran over
    """
    dx = x_hat * (sum_dx_hat_x_hat * (-1.0 / m))
    dx += dx_hat
    dx -= sum_dx_hat * (1.0 / m)
    dx *= scale
    return dx


def normalize_backward_centered(dout: Any, x_c: Any, inv_std: Any, scale: Any,
                                axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """``normalize_backward`` from the centred input x_c = x - mu instead of x_hat.

    BatchNorm's training forward needs only y = x_c * (gamma * inv_std) + beta, so it keeps
    x_c and never writes x_hat = x_c * inv_std (one full-size pass fewer). With
    x_hat = x_c * inv_std the sums and dx of ``normalize_backward`` become::

        Σ dout * x_hat = inv_std * Σ dout * x_c
        dx = scale * (dout - mean(dout) - x_c * inv_std² * mean(dout * x_c))

    the same number of passes over the data as from x_hat. ``dout`` plays the role of
    ``dx_hat`` with gamma folded into ``scale`` (see ``normalize_backward``). For
    BatchNorm's axes and scale = gamma * inv_std it equals
    ``reference.batchnorm_backward_stepwise`` (dx, dgamma, dbeta).

    Returns
    -------
    dx : array, shape of x
    sum_dout_x_hat, sum_dout : arrays with the reduced axes kept (size 1)
        Σ dout * x_hat and Σ dout: dgamma and dbeta of a BatchNorm.
    """
    m = math.prod(x_c.shape[a] for a in axes)
    sum_dout = reduce_sum(dout, axes)
    sum_dout_x_hat = reduce_sum(dout, axes, x_c) * inv_std
    # x_hat * Σ dout·x_hat = x_c * (inv_std * Σ dout·x_hat): x_c in the place of x_hat.
    dx = normalize_backward_from_sums(dout, x_c, scale, sum_dout_x_hat * inv_std, sum_dout, m)
    return dx, sum_dout_x_hat, sum_dout


def per_channel(v: Any, ndim: int) -> Any:
    """Reshape a (C,) vector to (1, C, 1, ...) so it broadcasts over an ndim-array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))
