"""The math every normalization layer shares: normalise over some axes, and its backward.

BatchNorm, LayerNorm, GroupNorm and InstanceNorm all compute, over their own set of axes
("the reduced axes", m elements each)::

    mu    = (1/m) Σ x
    var   = (1/m) Σ (x - mu)²               biased: divided by m, not m - 1
    x_hat = (x - mu) / sqrt(var + eps)      = (x - mu) * inv_std

``normalize`` is that forward step, ``normalize_backward`` its closed-form gradient (derived
step by step in ``batchnorm_backward_stepwise``, kept as the reference the tests compare
against). ``reduce_sum`` is the one reduction they use: a single pass over memory, in any
layout (a channels-last view included), so the layers never copy their input first and their
outputs keep the input's layout (NumPy's element-wise default order 'K').

The layers: ``minicnn.layers.batchnorm`` (BatchNorm1d/2d) and ``minicnn.layers.norm``
(LayerNorm, GroupNorm, InstanceNorm2d).
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import get_array_module

__all__ = ["reduce_sum", "center", "normalize", "normalize_backward",
           "normalize_backward_centered", "batchnorm_backward_stepwise", "per_channel"]


def reduce_sum(x: Any, axes: tuple[int, ...], other: Any = None) -> Any:
    """Σ x (or Σ x * other, without forming that product) over ``axes``, kept with size 1.

    ``einsum`` multiplies and adds in a single pass over the data, in whatever order the
    memory is laid out (a channels-last view included): about 3-4 times faster than
    ``(x * other).sum(axis=axes)``, which first writes the full-size product.

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
    in float32 when |mu| >> std). One full-size array is written: x - mu.
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
    one full-size array written).
    """
    x_hat, inv_std, mu, var = center(x, axes, eps)
    x_hat *= inv_std                                      # in place: saves a full-size array
    return x_hat, inv_std, mu, var


def normalize_backward(dx_hat: Any, x_hat: Any, scale: Any,
                       axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """dL/dx of ``x_hat = (x - mu) * inv_std`` with mu, var taken over ``axes`` (closed form).

    With m the number of reduced elements and the sums Σ over ``axes``
    (derivation: ``batchnorm_backward_stepwise``)::

        dx = (inv_std / m) * (m * dx_hat - Σ dx_hat - x_hat * Σ (dx_hat * x_hat))
           = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))

    Parameters
    ----------
    dx_hat : array, shape of x
        dL/dx_hat. Usually ``dout * gamma``. When gamma is constant over the reduced axes
        (BatchNorm, InstanceNorm) pass ``dout`` itself and fold gamma into ``scale``: it
        factors out of the bracket, and the two sums are then exactly dbeta and dgamma.
    x_hat : array, shape of x
        The normalised input cached by forward.
    scale : array, broadcastable to x
        ``inv_std`` (or ``gamma * inv_std``, see above).
    axes : tuple of int
        The reduced axes.

    Returns
    -------
    dx : array, shape of x
    sum_dx_hat, sum_dx_hat_x_hat : arrays with the reduced axes kept (size 1)
        Σ dx_hat and Σ dx_hat * x_hat, returned so callers can reuse them for dbeta, dgamma.
    """
    m = math.prod(x_hat.shape[a] for a in axes)
    sum_dx_hat = reduce_sum(dx_hat, axes)
    sum_dx_hat_x_hat = reduce_sum(dx_hat, axes, x_hat)
    # The mean form: the 1/m lands on the small reduced arrays, not on full-size ones.
    dx = x_hat * (sum_dx_hat_x_hat * (-1.0 / m))
    dx += dx_hat
    dx -= sum_dx_hat * (1.0 / m)
    dx *= scale
    return dx, sum_dx_hat, sum_dx_hat_x_hat


def normalize_backward_centered(dout: Any, x_c: Any, inv_std: Any, scale: Any,
                                axes: tuple[int, ...]) -> tuple[Any, Any, Any]:
    """``normalize_backward`` from the centred input x_c = x - mu instead of x_hat.

    BatchNorm's training forward needs only y = x_c * (gamma * inv_std) + beta, so it keeps
    x_c and never writes x_hat = x_c * inv_std (one full-size pass fewer). With
    x_hat = x_c * inv_std the sums and dx of ``normalize_backward`` become::

        Σ dout * x_hat = inv_std * Σ dout * x_c
        dx = scale * (dout - mean(dout) - x_c * inv_std² * mean(dout * x_c))

    the same number of passes over the data as from x_hat. ``dout`` plays the role of
    ``dx_hat`` with gamma folded into ``scale`` (see ``normalize_backward``).

    Returns
    -------
    dx : array, shape of x
    sum_dout, sum_dout_x_hat : arrays with the reduced axes kept (size 1)
        Σ dout and Σ dout * x_hat: dbeta and dgamma of a BatchNorm.
    """
    m = math.prod(x_c.shape[a] for a in axes)
    sum_dout = reduce_sum(dout, axes)
    sum_dout_x_hat = reduce_sum(dout, axes, x_c) * inv_std
    dx = x_c * (sum_dout_x_hat * inv_std * (-1.0 / m))
    dx += dout
    dx -= sum_dout * (1.0 / m)
    dx *= scale
    return dx, sum_dout, sum_dout_x_hat


def per_channel(v: Any, ndim: int) -> Any:
    """Reshape a (C,) vector to (1, C, 1, ...) so it broadcasts over an ndim-array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batchnorm_backward_stepwise(dout: Any, x: Any, gamma: Any,
                                eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """BatchNorm's backward pass, step by step by the chain rule (reference, not used).

    Statistics are over all axes except the channel axis 1, as in training mode; m is the
    number of elements per channel (N for (N, C), N*H*W for (N, C, H, W)). The forward pass,
    as a chain of small steps::

        (1) mu    = (1/m) Σ x
        (2) xmu   = x - mu
        (3) var   = (1/m) Σ xmu²
        (4) std   = sqrt(var + eps)
        (5) x_hat = xmu / std
        (6) y     = gamma * x_hat + beta

    The backward pass walks the steps in reverse, each time multiplying the upstream
    gradient by the local derivative and summing over every path a variable feeds into:

        from (6):  dbeta  = Σ dout
                   dgamma = Σ dout * x_hat
                   dx_hat = dout * gamma
        from (5), (4) to var:
                   dvar   = Σ dx_hat * xmu * (-1/2) (var + eps)^(-3/2)
        from (5) and (3) to mu (through xmu directly, and through var):
                   dmu    = Σ dx_hat * (-1/std)  +  dvar * (1/m) Σ -2 xmu
                          = -(1/std) Σ dx_hat       (Σ xmu = 0: the second term vanishes)
        from (2), (3) and (1) to x (three paths: xmu, var, mu):
                   dx     = dx_hat / std  +  dvar * 2 xmu / m  +  dmu / m

    The compact form: write inv_std = 1/std, so xmu = x_hat * std and
    dvar = -(1/2) inv_std² Σ dx_hat * x_hat. Substituting dvar and dmu::

        dx = inv_std * dx_hat - (inv_std / m) x_hat Σ dx_hat * x_hat - (inv_std / m) Σ dx_hat
           = (inv_std / m) * (m dx_hat - Σ dx_hat - x_hat Σ dx_hat * x_hat)

    and with dx_hat = gamma * dout (gamma is constant over the reduced axes)::

        dx = (gamma / (m sqrt(var + eps))) * (m dout - Σ dout - x_hat Σ dout * x_hat)

    which is what ``BatchNorm2d.backward`` computes (via ``normalize_backward``): one pass
    over the data for the two sums and one for dx, and only x_hat and inv_std cached.

    Parameters
    ----------
    dout : array, shape of x
        dL/dy.
    x : array, (N, C) or (N, C, *)
        The forward input.
    gamma : array, (C,)
    eps : float

    Returns
    -------
    dx : array, shape of x
    dgamma, dbeta : arrays, (C,)
    """
    xp = get_array_module(x)
    axes = (0,) + tuple(range(2, x.ndim))
    m = x.size // x.shape[1]
    gamma = per_channel(gamma, x.ndim)
    # forward, keeping every intermediate
    mu = x.mean(axis=axes, keepdims=True)                                     # (1)
    xmu = x - mu                                                              # (2)
    var = (xmu ** 2).mean(axis=axes, keepdims=True)                           # (3)
    std = xp.sqrt(var + eps)                                                  # (4)
    x_hat = xmu / std                                                         # (5)
    # backward, in reverse order
    dbeta = dout.sum(axis=axes)                                               # (6)
    dgamma = (dout * x_hat).sum(axis=axes)                                    # (6)
    dx_hat = dout * gamma                                                     # (6)
    dvar = (dx_hat * xmu).sum(axis=axes, keepdims=True) * -0.5 * (var + eps) ** -1.5  # (5)(4)
    dmu = ((-dx_hat / std).sum(axis=axes, keepdims=True)
           + dvar * (-2.0 * xmu).sum(axis=axes, keepdims=True) / m)           # (5)(3)
    dx = dx_hat / std + dvar * 2.0 * xmu / m + dmu / m                        # (2)(3)(1)
    return dx, dgamma, dbeta
