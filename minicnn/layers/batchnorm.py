"""Batch normalization: BatchNorm2d (images) and BatchNorm1d (features, sequences).

Each channel is normalised over all other axes (N, H, W for images: m values per channel)::

    mu    = (1/m) Σ x                     var = (1/m) Σ (x - mu)²       (biased)
    x_hat = (x - mu) / sqrt(var + eps)
    y     = gamma * x_hat + beta          gamma, beta (C,)

with the batch's own statistics in training mode and the running averages of them in
evaluation mode. The shared math (``batch_norm_forward`` / ``batch_norm_backward``, built on
``center``, ``normalize_backward_centered`` and ``reduce_sum``; fused CUDA kernels on CuPy)
is in ``minicnn.functional.normalization``; the step-by-step twins the tests compare with
(``batchnorm_forward``, ``batchnorm_backward_stepwise``) are in
``minicnn.functional.reference``. LayerNorm, GroupNorm and InstanceNorm2d, which normalise per
sample, are in ``norm.py``; SyncBatchNorm2d (statistics over all ranks) in
``sync_batchnorm.py``.

Derivation: docs/derivations/batchnorm.md
Tests: tests/test_norm.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..functional.normalization import batch_norm_backward, batch_norm_forward
from ._checks import check_eps, check_positive_int
from .base import Layer, Parameter, check_channels, check_float_input, check_ndim, new_array

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class _BatchNorm(Layer):
    """Batch normalization over all axes except the channel axis 1 (shared by 1d and 2d).

    Training mode normalises with the batch statistics (biased variance) and updates

        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

    (the *unbiased* batch variance, PyTorch's rule). Evaluation mode normalises with the
    running statistics instead, so y = gamma * (x - running_mean) / sqrt(running_var + eps)
    + beta is a fixed per-channel affine map, and its backward is
    dx = dout * gamma / sqrt(running_var + eps).

    Backward in training mode (derived step by step in docs/derivations/batchnorm.md and
    ``reference.batchnorm_backward_stepwise``), Σ over the m elements of a channel::

        dgamma = Σ dout * x_hat
        dbeta  = Σ dout
        dx     = (gamma / (m sqrt(var + eps))) * (m dout - Σ dout - x_hat Σ dout * x_hat)
               = (gamma / (m sqrt(var + eps))) * (m dout - dbeta - x_hat dgamma)

    computed on NumPy by ``normalize_backward_centered`` from the x - mu the forward kept (it
    never writes x_hat); on CuPy by two fused kernels from x itself
    (``minicnn.functional.normalization.batch_norm_backward``).

    Backward uses the mode of its forward (a mode switch in between changes nothing).

    Parameters: ``gamma`` (C,) ones, ``beta`` (C,) zeros. Buffers: ``running_mean`` (C,)
    zeros, ``running_var`` (C,) ones.

    ``freeze_gamma=True`` (airbench's BatchNorm, weight fixed at 1): ``gamma`` stays ones
    with ``requires_grad`` False, so optimizers, ``minicnn.gradcheck`` and data-parallel
    averaging skip it and backward leaves its ``grad`` None (dgamma is not reduced in
    evaluation mode); ``beta`` trains. The forward is unchanged (it still multiplies by
    ``gamma``, so a loaded non-unit ``gamma`` is honoured), and the state dict has the same
    keys. ``minicnn.training.transfer``'s unfreeze makes ``gamma`` trainable again.
    """

    _buffer_names = ("running_mean", "running_var")
    _ndims: tuple[int, ...] = ()
    _expected = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 freeze_gamma: bool = False):
        super().__init__()
        name = type(self).__name__
        self.num_features = check_positive_int(name, "num_features", num_features)
        self.eps = check_eps(name, eps)
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        C = self.num_features
        self.gamma = Parameter(new_array(np.ones(C)), name="gamma")
        self.beta = Parameter(new_array(np.zeros(C)), name="beta")
        if freeze_gamma:
            self.gamma.requires_grad = False  # fixed at 1: optimizers skip it
        self.running_mean = new_array(np.zeros(C))
        self.running_var = new_array(np.ones(C))

    def _check(self, x: Any) -> Any:
        name, C = type(self).__name__, self.num_features
        expected = self._expected.format(C=C)
        xp = check_float_input(name, x)
        check_ndim(name, x, self._ndims, expected)
        check_channels(name, x, C, expected)
        if self.training and x.size // C <= 1:
            raise ValueError(
                f"{name}: expected more than 1 value per channel when training, got input "
                f"of shape {tuple(x.shape)}; use a batch of 2 or more, or call .eval()")
        return xp

    def forward(self, x: Any) -> Any:
        return self._forward(x, relu=False)

    def forward_relu(self, x: Any) -> Any:
        """max(forward(x), 0) in the same pass, for a BatchNorm followed by a ReLU: backward
        then takes dL/d(the ReLU's output) and applies the ReLU's mask [y > 0] itself.

        Only for BatchNorm1d/2d's own forward: a subclass that overrides ``forward``
        (SyncBatchNorm2d) raises TypeError here rather than skip its own statistics."""
        if type(self).forward is not _BatchNorm.forward:
            raise TypeError(f"{type(self).__name__}.forward_relu: only BatchNorm1d/2d fuse "
                            f"the ReLU; call forward, then the ReLU")
        return self._forward(x, relu=True)

    def _forward(self, x: Any, relu: bool) -> Any:
        self._check(x)
        gamma = self.gamma.data.astype(x.dtype, copy=False)
        beta = self.beta.data.astype(x.dtype, copy=False)
        # Training: y = (x - mu) * (gamma * inv_std) + beta with this batch's mu, var, and the
        # running averages updated by PyTorch's rule (above). Evaluation: the same with the
        # running mu, var, which stay as they are.
        y, self.cache, self.running_mean, self.running_var = batch_norm_forward(
            x, gamma, beta, self.running_mean, self.running_var, training=self.training,
            momentum=self.momentum, eps=self.eps, relu=relu)
        return y

    def backward(self, dout: Any) -> Any:
        cache = self.cached()
        gamma = self.gamma.data.astype(cache.inv_std.dtype, copy=False)
        # dgamma = Σ dout * x_hat, dbeta = Σ dout and dx as in the class docstring; the mode
        # (batch or running statistics) is the forward's, kept in the cache.
        # On CuPy the sums are written straight into the optimizer's gradient buffer.
        out = (self.gamma.grad_out(dout) if self.gamma.requires_grad else None,
               self.beta.grad_out(dout))
        dx, dgamma, dbeta = batch_norm_backward(dout, cache, gamma,
                                                need_dgamma=self.gamma.requires_grad, out=out)
        if self.gamma.requires_grad:
            self.gamma.set_grad(dgamma)
        self.beta.set_grad(dbeta)
        return dx

    @property
    def inv_std(self) -> Any:
        """1 / sqrt(var + eps) of the last forward, shape (1, C, 1, ...) (batch statistics in
        training mode, running ones in evaluation mode)."""
        return self.cached().inv_std

    def extra_repr(self) -> str:
        frozen = "" if self.gamma.requires_grad else ", freeze_gamma=True"
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum:g}{frozen}"


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
    freeze_gamma : bool
        Keep gamma at 1, untrained (``requires_grad`` False); only beta learns (airbench).

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
