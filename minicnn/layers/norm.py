"""Normalization layers: BatchNorm1d/2d, LayerNorm, GroupNorm and InstanceNorm2d.

All five compute the same thing, over a different set of axes ("the reduced axes", m
elements each):

    mu    = (1/m) Σ x                       over the reduced axes
    var   = (1/m) Σ (x - mu)²               biased: divided by m, not m - 1
    x_hat = (x - mu) / sqrt(var + eps)
    y     = gamma * x_hat + beta

==============  =============  ==========================  ================  ==============
layer           input          reduced axes                one (mu, var) per gamma, beta
==============  =============  ==========================  ================  ==============
BatchNorm2d     (N, C, H, W)   N, H, W                     channel           (C,)
BatchNorm1d     (N, C[, L])    N[, L]                      channel           (C,)
LayerNorm       (*, *S)        the trailing dims S         sample            S
GroupNorm       (N, C, *)      the C/G channels of a       (sample, group)   (C,)
                               group, and *
InstanceNorm2d  (N, C, H, W)   H, W                        (sample, channel) (C,) if affine
==============  =============  ==========================  ================  ==============

So they share one forward helper (``_normalize``) and one backward helper
(``_normalization_backward``, the closed form derived in ``batchnorm_backward_stepwise``).
BatchNorm alone keeps running statistics for evaluation mode; the others normalise every
sample by its own statistics, the same way in training and evaluation.

The reductions (``_sum``, an ``einsum``) and the element-wise operations work on any memory
layout, so a channels-last input (a transposed view) is normalised without being copied
first, and the outputs keep the input's layout (NumPy's element-wise default order 'K').
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import get_array_module
from .base import Layer, Parameter, check_channels, check_float_input, check_ndim, new_array

__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "InstanceNorm2d"]


# -- the shared math ----------------------------------------------------------------------

def _sum(x: Any, axes: tuple[int, ...], other: Any = None) -> Any:
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


def _normalize(xp: Any, x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any, Any, Any]:
    """Normalise ``x`` over ``axes``.

    Returns ``x_hat, inv_std, mu, var``; the last three keep the reduced axes (size 1), so
    they broadcast against ``x``. ``inv_std = 1 / sqrt(var + eps)``; ``var`` is biased, and
    computed in two passes (from x - mu, not as E[x²] - mu², which cancels catastrophically
    in float32 when |mu| >> std).
    """
    m = int(np.prod([x.shape[a] for a in axes]))
    mu = _sum(x, axes) * (1.0 / m)
    x_hat = x - mu                                        # x - mu for now, x_hat below
    var = _sum(x_hat, axes, x_hat) * (1.0 / m)
    inv_std = 1.0 / xp.sqrt(var + eps)
    x_hat *= inv_std                                      # in place: saves a full-size array
    return x_hat, inv_std, mu, var


def _normalization_backward(dx_hat: Any, x_hat: Any, scale: Any,
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
    m = int(np.prod([x_hat.shape[a] for a in axes]))
    sum_dx_hat = _sum(dx_hat, axes)
    sum_dx_hat_x_hat = _sum(dx_hat, axes, x_hat)
    # The mean form: the 1/m lands on the small reduced arrays, not on full-size ones.
    dx = x_hat * (sum_dx_hat_x_hat * (-1.0 / m))
    dx += dx_hat
    dx -= sum_dx_hat * (1.0 / m)
    dx *= scale
    return dx, sum_dx_hat, sum_dx_hat_x_hat


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

    which is what ``BatchNorm2d.backward`` computes (via ``_normalization_backward``): one
    pass over the data for the two sums and one for dx, and only x_hat and inv_std cached.

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
    gamma = gamma.reshape((1, -1) + (1,) * (x.ndim - 2))
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


def _per_channel(v: Any, ndim: int) -> Any:
    """Reshape a (C,) vector to (1, C, 1, ...) so it broadcasts over an ndim-array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _check_positive_int(layer: str, name: str, value: Any) -> int:
    if int(value) != value or int(value) < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _check_eps(layer: str, eps: Any) -> float:
    if not float(eps) > 0:
        raise ValueError(f"{layer}: eps must be > 0, got {eps!r}")
    return float(eps)


# -- BatchNorm ----------------------------------------------------------------------------

class _BatchNormCache(NamedTuple):
    """What ``_BatchNorm.forward`` leaves for backward."""

    batch_stats: bool  # True: normalised by this batch's own mu, var (training mode)
    inv_std: Any       # 1 / sqrt(var + eps), (1, C, 1, ...)
    x_hat: Any         # batch statistics: the normalised input; else None
    x: Any             # running statistics: the input and the running mean, from which
    mu: Any            # backward recomputes x_hat for dgamma (evaluation forward skips it)


class _BatchNorm(Layer):
    """Batch normalization over all axes except the channel axis 1 (shared by 1d and 2d).

    Training mode normalises with the batch statistics (biased variance) and updates

        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    (the *unbiased* batch variance, PyTorch's rule). Evaluation mode normalises with the
    running statistics instead, so y = gamma * (x - running_mean) / sqrt(running_var + eps)
    + beta is a fixed per-channel affine map, and its backward is
    dx = dout * gamma / sqrt(running_var + eps).

    Backward in training mode (derivation: ``batchnorm_backward_stepwise``), Σ over the m
    elements of a channel::

        dbeta  = Σ dout
        dgamma = Σ dout * x_hat
        dx     = (gamma / (m sqrt(var + eps))) * (m dout - Σ dout - x_hat Σ dout * x_hat)

    Parameters: ``gamma`` (C,) ones, ``beta`` (C,) zeros. Buffers: ``running_mean`` (C,)
    zeros, ``running_var`` (C,) ones.
    """

    _buffer_names = ("running_mean", "running_var")
    _ndims: tuple[int, ...] = ()
    _expected = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        name = type(self).__name__
        self.num_features = _check_positive_int(name, "num_features", num_features)
        self.eps = _check_eps(name, eps)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        C = self.num_features
        self.gamma = Parameter(new_array(np.ones(C)), name="gamma")
        self.beta = Parameter(new_array(np.zeros(C)), name="beta")
        self.running_mean = new_array(np.zeros(C))
        self.running_var = new_array(np.ones(C))

    def forward(self, x: Any) -> Any:
        name = type(self).__name__
        C = self.num_features
        expected = self._expected.format(C=C)
        xp = check_float_input(name, x)
        check_ndim(name, x, self._ndims, expected)
        check_channels(name, x, C, expected)
        axes = (0,) + tuple(range(2, x.ndim))      # all but the channel axis
        m = x.size // C                             # elements per channel
        gamma = _per_channel(self.gamma.data.astype(x.dtype, copy=False), x.ndim)
        beta = _per_channel(self.beta.data.astype(x.dtype, copy=False), x.ndim)
        if self.training:
            if m <= 1:
                raise ValueError(
                    f"{name}: expected more than 1 value per channel when training, got input "
                    f"of shape {tuple(x.shape)}; use a batch of 2 or more, or call .eval()")
            x_hat, inv_std, mu, var = _normalize(xp, x, axes, self.eps)
            self._update_running_stats(mu.reshape(C), var.reshape(C), m)
            y = x_hat * gamma
            y += beta
        else:
            # Fixed statistics: y = (x - mu) * (gamma * inv_std) + beta, one affine map per
            # channel, in three passes over the data instead of the four through x_hat.
            # Only backward needs x_hat (for dgamma), so it keeps x and mu to recompute it.
            mu = _per_channel(self.running_mean.astype(x.dtype, copy=False), x.ndim)
            var = _per_channel(self.running_var.astype(x.dtype, copy=False), x.ndim)
            inv_std = 1.0 / xp.sqrt(var + self.eps)
            y = x - mu
            y *= gamma * inv_std
            y += beta
            x_hat = None
        # Backward needs x_hat (or x and mu), inv_std, and whether the statistics depended on x.
        self.cache = _BatchNormCache(self.training, inv_std, x_hat,
                                     None if self.training else x, None if self.training else mu)
        return y

    @property
    def inv_std(self) -> Any:
        """1 / sqrt(var + eps) of the last forward, shape (1, C, 1, ...) (batch statistics in
        training mode, running ones in evaluation mode)."""
        return self.cached().inv_std

    def _update_running_stats(self, mu: Any, var: Any, m: int) -> None:
        """PyTorch's rule, with the unbiased variance var * m / (m - 1)."""
        mom = self.momentum
        dtype = self.running_mean.dtype
        unbiased_var = var * (m / (m - 1))
        # New arrays (not in place), so a caller holding the old buffers keeps them intact.
        self.running_mean = ((1.0 - mom) * self.running_mean
                             + mom * mu.astype(dtype, copy=False))
        self.running_var = ((1.0 - mom) * self.running_var
                            + mom * unbiased_var.astype(self.running_var.dtype, copy=False))

    def backward(self, dout: Any) -> Any:
        cache = self.cached()
        inv_std = cache.inv_std                     # in the dtype of the forward input
        axes = (0,) + tuple(range(2, dout.ndim))
        gamma = _per_channel(self.gamma.data.astype(inv_std.dtype, copy=False), dout.ndim)
        if cache.batch_stats:
            # gamma is constant over the reduced axes: pass dout and fold gamma into the scale;
            # the two sums come back as dbeta and dgamma.
            dx, sum_dout, sum_dout_x_hat = _normalization_backward(
                dout, cache.x_hat, gamma * inv_std, axes)
            dbeta, dgamma = sum_dout, sum_dout_x_hat
        else:
            # Fixed statistics: y is an affine map of x.
            x_hat = cache.x - cache.mu
            x_hat *= inv_std
            dx = dout * (gamma * inv_std)
            dbeta = _sum(dout, axes)
            dgamma = _sum(dout, axes, x_hat)
        self.gamma.set_grad(dgamma.reshape(self.num_features))
        self.beta.set_grad(dbeta.reshape(self.num_features))
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}"


class BatchNorm2d(_BatchNorm):
    """Batch normalization of images: one (mean, variance) per channel over N, H, W.

    y = gamma * (x - mu) / sqrt(var + eps) + beta, with mu, var over the batch and the
    spatial axes in training mode, and the running statistics in evaluation mode.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance for numerical stability.
    momentum : float
        Weight of the batch statistic in the running average (PyTorch's convention).

    Shapes: input (N, C, H, W), output the same.
    """

    _ndims = (4,)
    _expected = "(N, {C}, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalization of features: one (mean, variance) per channel over N (and L).

    The same as ``BatchNorm2d`` (see there), for the output of a ``Linear`` layer (N, C) or a
    sequence (N, C, L).

    Shapes: input (N, C) or (N, C, L), output the same.
    """

    _ndims = (2, 3)
    _expected = "(N, {C}) or (N, {C}, L)"


# -- per-sample normalizations ------------------------------------------------------------

class LayerNorm(Layer):
    """Layer normalization: each sample normalised over its trailing ``normalized_shape`` dims.

    y = gamma * (x - mu) / sqrt(var + eps) + beta, with mu, var over the last
    len(normalized_shape) axes of each sample; gamma, beta have shape ``normalized_shape``
    (one value per normalised element, PyTorch's elementwise affine). Same in train and eval.

    Backward, with Σ over the normalised axes and over the leading (batch) axes for the
    parameters::

        dbeta  = Σ_batch dout
        dgamma = Σ_batch dout * x_hat
        dx     = (inv_std / m) * (m dx_hat - Σ dx_hat - x_hat Σ dx_hat * x_hat),
                 dx_hat = dout * gamma

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing shape S to normalise over, e.g. C or (C, H, W).
    eps : float

    Shapes: input (*, *S), output the same.
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)):
            normalized_shape = (normalized_shape,)
        shape = tuple(_check_positive_int("LayerNorm", "normalized_shape entries", d)
                      for d in normalized_shape)
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.normalized_shape = shape
        self.eps = _check_eps("LayerNorm", eps)
        self.gamma = Parameter(new_array(np.ones(shape)), name="gamma")
        self.beta = Parameter(new_array(np.zeros(shape)), name="beta")

    def forward(self, x: Any) -> Any:
        xp = check_float_input("LayerNorm", x)
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            expected = "(*, " + ", ".join(map(str, self.normalized_shape)) + ")"
            raise ValueError(f"LayerNorm: expected input of shape {expected}, got shape "
                             f"{tuple(x.shape)}")
        axes = tuple(range(x.ndim - k, x.ndim))
        x_hat, inv_std, _, _ = _normalize(xp, x, axes, self.eps)
        y = x_hat * self.gamma.data.astype(x.dtype, copy=False)
        y += self.beta.data.astype(x.dtype, copy=False)
        self.cache = (x_hat, inv_std)
        return y

    def backward(self, dout: Any) -> Any:
        x_hat, inv_std = self.cached()
        k = len(self.normalized_shape)
        axes = tuple(range(x_hat.ndim - k, x_hat.ndim))
        batch_axes = tuple(range(x_hat.ndim - k))
        gamma = self.gamma.data.astype(x_hat.dtype, copy=False)
        # gamma varies over the normalised axes, so it stays inside dx_hat.
        dx, _, _ = _normalization_backward(dout * gamma, x_hat, inv_std, axes)
        self.gamma.set_grad((dout * x_hat).sum(axis=batch_axes))
        self.beta.set_grad(dout.sum(axis=batch_axes))
        return dx

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps:g}"


class GroupNorm(Layer):
    """Group normalization: the channels split into groups, each (sample, group) normalised.

    The C channels are split into ``num_groups`` groups of C/G consecutive channels; mu, var
    are taken per sample and group over the group's channels and all spatial positions
    (m = C/G * H * W). gamma, beta are per channel (C,). Same in train and eval.
    G = 1 is LayerNorm over (C, H, W) (with per-channel affine); G = C is InstanceNorm.

    Backward: x viewed as (N, G, C/G, *), Σ over (C/G, *) per group::

        dx_hat = dout * gamma
        dx     = (inv_std / m) * (m dx_hat - Σ dx_hat - x_hat Σ dx_hat * x_hat)
        dbeta  = Σ_{N, *} dout,   dgamma = Σ_{N, *} dout * x_hat     (per channel)

    Parameters
    ----------
    num_groups : int
        G; must divide num_channels.
    num_channels : int
        C.
    eps : float

    Shapes: input (N, C, *), output the same.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.num_groups = _check_positive_int("GroupNorm", "num_groups", num_groups)
        self.num_channels = _check_positive_int("GroupNorm", "num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.eps = _check_eps("GroupNorm", eps)
        C = self.num_channels
        self.gamma = Parameter(new_array(np.ones(C)), name="gamma")
        self.beta = Parameter(new_array(np.zeros(C)), name="beta")

    def _grouped_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(N, C, *) -> (N, G, C/G, *): splitting an axis never needs a copy."""
        G = self.num_groups
        return (shape[0], G, shape[1] // G) + tuple(shape[2:])

    def forward(self, x: Any) -> Any:
        xp = check_float_input("GroupNorm", x)
        C = self.num_channels
        expected = f"(N, {C}, *)"
        if x.ndim < 2:
            check_ndim("GroupNorm", x, tuple(range(2, 9)), expected)
        check_channels("GroupNorm", x, C, expected)
        xg = x.reshape(self._grouped_shape(x.shape))
        axes = tuple(range(2, xg.ndim))
        x_hat, inv_std, _, _ = _normalize(xp, xg, axes, self.eps)
        x_hat = x_hat.reshape(x.shape)            # merges the axes it split: a view
        y = x_hat * _per_channel(self.gamma.data.astype(x.dtype, copy=False), x.ndim)
        y += _per_channel(self.beta.data.astype(x.dtype, copy=False), x.ndim)
        self.cache = (x_hat, inv_std)
        return y

    def backward(self, dout: Any) -> Any:
        x_hat, inv_std = self.cached()
        grouped = self._grouped_shape(x_hat.shape)
        axes = tuple(range(2, len(grouped)))
        gamma = _per_channel(self.gamma.data.astype(x_hat.dtype, copy=False), x_hat.ndim)
        # gamma varies over the channels of a group, so it stays inside dx_hat.
        dx_hat = dout * gamma
        dx, _, _ = _normalization_backward(
            dx_hat.reshape(grouped), x_hat.reshape(grouped), inv_std, axes)
        param_axes = (0,) + tuple(range(2, x_hat.ndim))
        self.gamma.set_grad((dout * x_hat).sum(axis=param_axes))
        self.beta.set_grad(dout.sum(axis=param_axes))
        return dx.reshape(x_hat.shape)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps:g}"


class InstanceNorm2d(Layer):
    """Instance normalization: each (sample, channel) normalised over its H x W pixels.

    y = x_hat = (x - mu) / sqrt(var + eps) with mu, var per (n, c) over H, W (m = H * W);
    with ``affine=True``, y = gamma * x_hat + beta, gamma and beta (C,). No running
    statistics (PyTorch's default track_running_stats=False): the same in train and eval.

    Backward, Σ over H, W (gamma is constant there, so it factors out)::

        dx     = (gamma / (m sqrt(var + eps))) * (m dout - Σ dout - x_hat Σ dout * x_hat)
        dbeta  = Σ_N Σ dout,   dgamma = Σ_N Σ dout * x_hat

    Parameters
    ----------
    num_features : int
        C.
    eps : float
    affine : bool
        Learn a per-channel gamma, beta.

    Shapes: input (N, C, H, W), output the same.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False):
        super().__init__()
        self.num_features = _check_positive_int("InstanceNorm2d", "num_features", num_features)
        self.eps = _check_eps("InstanceNorm2d", eps)
        self.affine = bool(affine)
        if self.affine:
            C = self.num_features
            self.gamma = Parameter(new_array(np.ones(C)), name="gamma")
            self.beta = Parameter(new_array(np.zeros(C)), name="beta")

    def forward(self, x: Any) -> Any:
        C = self.num_features
        expected = f"(N, {C}, H, W)"
        xp = check_float_input("InstanceNorm2d", x)
        check_ndim("InstanceNorm2d", x, 4, expected)
        check_channels("InstanceNorm2d", x, C, expected)
        if self.training and x.shape[2] * x.shape[3] <= 1:
            raise ValueError(
                f"InstanceNorm2d: expected more than 1 spatial element when training, got "
                f"input of shape {tuple(x.shape)}")
        x_hat, inv_std, _, _ = _normalize(xp, x, (2, 3), self.eps)
        self.cache = (x_hat, inv_std)
        if not self.affine:
            return x_hat  # no copy: layers never modify their input in place
        y = x_hat * _per_channel(self.gamma.data.astype(x.dtype, copy=False), 4)
        y += _per_channel(self.beta.data.astype(x.dtype, copy=False), 4)
        return y

    def backward(self, dout: Any) -> Any:
        x_hat, inv_std = self.cached()
        if not self.affine:
            dx, _, _ = _normalization_backward(dout, x_hat, inv_std, (2, 3))
            return dx
        gamma = _per_channel(self.gamma.data.astype(x_hat.dtype, copy=False), 4)
        dx, sum_dout, sum_dout_x_hat = _normalization_backward(
            dout, x_hat, gamma * inv_std, (2, 3))
        # The sums are per (n, c); the parameters are shared by the samples.
        self.gamma.set_grad(sum_dout_x_hat.sum(axis=0).reshape(self.num_features))
        self.beta.set_grad(sum_dout.sum(axis=0).reshape(self.num_features))
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, affine={self.affine}"
