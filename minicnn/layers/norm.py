"""Normalization layers: LayerNorm, GroupNorm and InstanceNorm2d (and BatchNorm1d/2d).

All of them compute the same thing, over a different set of axes ("the reduced axes", m
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

So they share one forward helper (``normalize``) and one backward helper
(``normalize_backward``, the closed form derived in docs/derivations/batchnorm.md), both in
``minicnn.functional.normalization``; the step-by-step twin the tests compare with is
``minicnn.functional.reference.batchnorm_backward_stepwise``. BatchNorm alone keeps running
statistics for evaluation mode and lives in its own file, ``batchnorm.py`` (re-exported here,
its former home); the layers here normalise every sample by its own statistics, the same way
in training and evaluation.

The reductions and the element-wise operations work on any memory layout, so a
channels-last input (a transposed view) is normalised without being copied first, and the
outputs and dx keep the input's layout on NumPy and CuPy alike: every full-size result is
written into an array allocated like x (``empty_as``, ``scale_shift``), where a CuPy ufunc
would allocate a C-ordered (NCHW) one.

Derivation: docs/derivations/normalization.md, docs/derivations/batchnorm.md
Tests: tests/test_norm.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from ..functional.normalization import (
    empty_as,
    normalize,
    normalize_backward,
    per_channel,
    scale_shift,
)
from ._checks import check_eps, check_positive_int
from .base import Layer, Parameter, check_channels, check_float_input, check_ndim, new_array
from .batchnorm import BatchNorm1d, BatchNorm2d

__all__ = ["BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "InstanceNorm2d"]


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
        shape = tuple(check_positive_int("LayerNorm", "normalized_shape entries", d)
                      for d in normalized_shape)
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.normalized_shape = shape
        self.eps = check_eps("LayerNorm", eps)
        self.gamma = Parameter(new_array(np.ones(shape)), name="gamma")
        self.beta = Parameter(new_array(np.zeros(shape)), name="beta")

    def forward(self, x: Any) -> Any:
        check_float_input("LayerNorm", x)
        k = len(self.normalized_shape)
        if x.ndim < k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            expected = "(*, " + ", ".join(map(str, self.normalized_shape)) + ")"
            raise ValueError(f"LayerNorm: expected input of shape {expected}, got shape "
                             f"{tuple(x.shape)}")
        axes = tuple(range(x.ndim - k, x.ndim))
        x_hat, inv_std, _, _ = normalize(x, axes, self.eps)
        self.cache = (x_hat, inv_std)
        gamma = self.gamma.data.astype(x.dtype, copy=False)
        beta = self.beta.data.astype(x.dtype, copy=False)
        return scale_shift(x_hat, gamma, beta)    # x_hat * gamma + beta, in x's memory layout

    def backward(self, dout: Any) -> Any:
        x_hat, inv_std = self.cached()
        k = len(self.normalized_shape)
        axes = tuple(range(x_hat.ndim - k, x_hat.ndim))
        batch_axes = tuple(range(x_hat.ndim - k))
        gamma = self.gamma.data.astype(x_hat.dtype, copy=False)
        # gamma varies over the normalised axes, so it stays inside dx_hat.
        dx, _, _ = normalize_backward(dout * gamma, x_hat, inv_std, axes)
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
        self.num_groups = check_positive_int("GroupNorm", "num_groups", num_groups)
        self.num_channels = check_positive_int("GroupNorm", "num_channels", num_channels)
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.eps = check_eps("GroupNorm", eps)
        C = self.num_channels
        self.gamma = Parameter(new_array(np.ones(C)), name="gamma")
        self.beta = Parameter(new_array(np.zeros(C)), name="beta")

    def _grouped_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """(N, C, *) -> (N, G, C/G, *): splitting an axis never needs a copy."""
        G = self.num_groups
        return (shape[0], G, shape[1] // G) + tuple(shape[2:])

    def forward(self, x: Any) -> Any:
        check_float_input("GroupNorm", x)
        C = self.num_channels
        expected = f"(N, {C}, *)"
        if x.ndim < 2:
            check_ndim("GroupNorm", x, tuple(range(2, 9)), expected)
        check_channels("GroupNorm", x, C, expected)
        xg = x.reshape(self._grouped_shape(x.shape))
        axes = tuple(range(2, xg.ndim))
        x_hat, inv_std, _, _ = normalize(xg, axes, self.eps)
        x_hat = x_hat.reshape(x.shape)            # merges the axes it split: a view
        self.cache = (x_hat, inv_std)
        gamma = per_channel(self.gamma.data.astype(x.dtype, copy=False), x.ndim)
        beta = per_channel(self.beta.data.astype(x.dtype, copy=False), x.ndim)
        return scale_shift(x_hat, gamma, beta)    # x_hat * gamma + beta, in x's memory layout

    def backward(self, dout: Any) -> Any:
        x_hat, inv_std = self.cached()
        grouped = self._grouped_shape(x_hat.shape)
        axes = tuple(range(2, len(grouped)))
        gamma = per_channel(self.gamma.data.astype(x_hat.dtype, copy=False), x_hat.ndim)
        # gamma varies over the channels of a group, so it stays inside dx_hat; written in
        # x_hat's memory layout, so that the passes below read both in the same order.
        dx_hat = get_array_module(dout).multiply(dout, gamma, out=empty_as(x_hat, dout, gamma))
        dx, _, _ = normalize_backward(
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
        self.num_features = check_positive_int("InstanceNorm2d", "num_features", num_features)
        self.eps = check_eps("InstanceNorm2d", eps)
        self.affine = bool(affine)
        if self.affine:
            C = self.num_features
            self.gamma = Parameter(new_array(np.ones(C)), name="gamma")
            self.beta = Parameter(new_array(np.zeros(C)), name="beta")

    def forward(self, x: Any) -> Any:
        C = self.num_features
        expected = f"(N, {C}, H, W)"
        check_float_input("InstanceNorm2d", x)
        check_ndim("InstanceNorm2d", x, 4, expected)
        check_channels("InstanceNorm2d", x, C, expected)
        if self.training and x.shape[2] * x.shape[3] <= 1:
            raise ValueError(
                f"InstanceNorm2d: expected more than 1 spatial element when training, got "
                f"input of shape {tuple(x.shape)}")
        x_hat, inv_std, _, _ = normalize(x, (2, 3), self.eps)
        self.cache = (x_hat, inv_std)
        if not self.affine:
            return x_hat  # no copy: layers never modify their input in place
        gamma = per_channel(self.gamma.data.astype(x.dtype, copy=False), 4)
        beta = per_channel(self.beta.data.astype(x.dtype, copy=False), 4)
        return scale_shift(x_hat, gamma, beta)    # x_hat * gamma + beta, in x's memory layout

    def backward(self, dout: Any) -> Any:
        x_hat, inv_std = self.cached()
        if not self.affine:
            dx, _, _ = normalize_backward(dout, x_hat, inv_std, (2, 3))
            return dx
        gamma = per_channel(self.gamma.data.astype(x_hat.dtype, copy=False), 4)
        dx, sum_dout_x_hat, sum_dout = normalize_backward(
            dout, x_hat, gamma * inv_std, (2, 3))
        # The sums are per (n, c); the parameters are shared by the samples.
        self.gamma.set_grad(sum_dout_x_hat.sum(axis=0).reshape(self.num_features))
        self.beta.set_grad(sum_dout.sum(axis=0).reshape(self.num_features))
        return dx

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps:g}, affine={self.affine}"
