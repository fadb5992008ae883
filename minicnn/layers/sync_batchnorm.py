"""Synchronised BatchNorm: batch statistics over the samples of *all* ranks.

In data-parallel training every rank sees b of the B = W·b samples of a global batch. A plain
``BatchNorm2d`` normalises with the mean and variance of its own b samples (PyTorch DDP's
default too): cheap, but it is not the single-process network at batch B, and with small b
the statistics get noisy. ``SyncBatchNorm2d`` computes them over all B samples by summing
per-channel partial sums across the ranks — a few (C,)-vectors per layer and step, never the
activations themselves.

Forward (training), with M = Σ_r m_r the global number of elements per channel (m_r = b·H·W
on rank r), Σ_all an allreduce-sum of per-rank sums, and K = ``running_mean``, a per-channel
*shift* that every rank holds bit for bit (``broadcast_parameters`` gives every rank rank 0's
buffers before training, and every step updates them from the same global statistics)::

    S1    = Σ_all Σ (x - K),  S2 = Σ_all Σ (x - K)²,    one allreduce (a (2C+1)-vector)
    M     = Σ_all m_r
    mu    = K + S1 / M
    var   = S2 / M - (S1 / M)²                          (shifted sums: var(x) = var(x - K))
    if (S1 / M)² > var for some channel:                (K more than a sigma from mu)
        var = (1/M) Σ_all Σ (x - mu)²                   a second allreduce (two passes)
    x_hat = (x - mu) / sqrt(var + eps)
    y     = gamma * x_hat + beta

One pass over x for each sum, and the statistics take one allreduce instead of three (the
count, Σ x, then Σ (x - mu)²). Without the shift, E[x²] - mu² cancels
catastrophically in float32 when |mu| is large against sigma: the relative error of var is
about eps_float32 · (1 + (mu - K)² / var). With K near mu (the running mean follows the
batch means) that is a few eps; where (mu - K)² > var (the first step, with K = 0, or a
jump of the batch mean) the layer falls back to the exact second pass. On CuPy, where
reading M and that decision back would be a sync per layer and step, M goes through the
host path (``allreduce_numbers``, from the shapes) and the second pass always runs. The running
statistics use the global mu and the unbiased var·M/(M-1), so they are the same on every
rank.

Backward: the global objective is J = Σ_r J_r and rank r holds dout_r = dJ/dy_r. BatchNorm's
closed form (docs/derivations/batchnorm.md) needs two sums over the whole batch, so both are
allreduced (one 2C-vector), and dx is ``normalize_backward_from_sums`` of them::

    S_gamma = Σ_all Σ dout * x_hat,   S_beta = Σ_all Σ dout
    dx = (gamma / sqrt(var + eps)) * (dout - x_hat * S_gamma / M - S_beta / M)

``gamma.grad`` and ``beta.grad`` are the rank's *own* sums Σ dout * x_hat and Σ dout: the
gradient allreduce that follows (``minicnn.distributed``) averages them like every other
parameter's gradient. In data-parallel training rank r's loss is its mean L_r and the
global one L = (1/W) Σ_r L_r, so dout_r = W dL/dy_r; dx then is W dL/dx_r, exactly the
scale of every other rank-local gradient, and the averaged gamma/beta gradients equal the
single-process ones.

With no communicator (or one rank), or in evaluation mode, it is exactly ``BatchNorm2d``.
It uses only BatchNorm2d's public attributes (gamma, beta, running_mean, running_var, eps,
momentum, num_features, training), so it follows any change to BatchNorm2d's internals.

Derivation: docs/derivations/batchnorm.md
Tests: tests/test_distributed.py, tests/test_layer_contract.py
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ..backend import get_array_module
from ..functional.normalization import normalize_backward_from_sums, reduce_sum
from .batchnorm import BatchNorm2d

__all__ = ["SyncBatchNorm2d"]


class _SyncCache(NamedTuple):
    d: Any            # (N, C, H, W) the shifted input x - K; x_hat = (d - mean_d) * inv_std
    mean_d: Any       # (1, C, 1, 1) mu - K (0 after the exact second pass, where K = mu)
    inv_std: Any      # (1, C, 1, 1) 1 / sqrt(var + eps), global statistics
    count: float      # M, elements per channel over all ranks


def _channel_sum(a: Any, b: Any = None) -> Any:
    """Σ a (or Σ a·b) over N, H, W -> a contiguous (C,) buffer to allreduce: BatchNorm's own
    ``reduce_sum`` (per-sample partial sums first, for float32 accuracy)."""
    return reduce_sum(a, (0, 2, 3), b).reshape(-1)


class SyncBatchNorm2d(BatchNorm2d):
    """``BatchNorm2d`` whose training statistics span every rank of a communicator.

    Parameters
    ----------
    num_features, eps, momentum
        As ``BatchNorm2d``.
    comm : Communicator, optional
        Anything with ``size``, ``allreduce(array, op="sum")`` (in place) and
        ``allreduce_numbers(values)`` (a few host numbers), e.g. from
        ``minicnn.distributed.create_communicator``. None behaves as ``BatchNorm2d``.
        ``minicnn.distributed.convert_sync_batchnorm(model, comm)`` converts a model's
        ``BatchNorm2d`` layers and sets it.

    Shapes: input (N, C, H, W), output the same. Every rank must call forward and backward
    the same number of times (they are collectives); ranks may hold different N.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 comm: Any = None):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.comm = comm

    def _synced(self) -> bool:
        comm = getattr(self, "comm", None)
        return self.training and comm is not None and int(comm.size) > 1

    def forward(self, x: Any) -> Any:
        if not self._synced():
            return super().forward(x)
        name = type(self).__name__
        C = self.num_features
        xp = get_array_module(x)
        if getattr(x, "ndim", None) != 4 or x.shape[1] != C:
            raise ValueError(f"{name}: expected input of shape (N, {C}, H, W), got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}")
        # Σ (x - K), Σ (x - K)² and the count in one pass each and one allreduce, K the
        # running mean. The buffer is a float64 (2C+1)-vector: the count stays an exact
        # integer, and the sums of the ranks' float32 partial sums lose nothing more.
        # On a GPU the count and the choice of the exact second pass would be device reads
        # (a sync per layer and step), so there the count goes through the host path and the
        # second pass always runs: Σ (x - K), then Σ (x - mu)², two allreduces, no sync.
        on_host = xp is np
        shift = xp.asarray(self.running_mean).astype(x.dtype, copy=False)
        d = x - shift.reshape(1, C, 1, 1)
        sums = xp.empty(2 * C + 1 if on_host else C, dtype=xp.float64)
        sums[:C] = _channel_sum(d)
        if on_host:
            sums[C:2 * C] = _channel_sum(d, d)
            sums[2 * C] = x.size // C
        self.comm.allreduce(sums, op="sum")
        count = float(sums[2 * C] if on_host else self.comm.allreduce_numbers([x.size // C])[0])
        if count <= 1:
            raise ValueError(f"{name}: expected more than 1 value per channel over all ranks "
                             f"when training, got {count:g}")
        mean_d = (sums[:C] * (1.0 / count)).astype(x.dtype)                   # mu - K
        if on_host:
            var = (sums[C:2 * C] * (1.0 / count)).astype(x.dtype) - mean_d * mean_d
        if not on_host or bool((mean_d * mean_d > var).any()):
            # K was more than a sigma from mu (the first step, a jump of the batch mean): the
            # subtraction lost digits, so take Σ (x - mu)² exactly, in a second pass and a
            # second allreduce. Every rank sees the same sums, so all take this branch.
            d -= mean_d.reshape(1, C, 1, 1)
            shift, mean_d = shift + mean_d, xp.zeros_like(mean_d)
            sq = _channel_sum(d, d)
            self.comm.allreduce(sq, op="sum")
            var = sq * (1.0 / count)
        var = xp.maximum(var, 0.0)
        mu = shift + mean_d
        inv_std = (1.0 / xp.sqrt(var + self.eps)).reshape(1, C, 1, 1)
        self._update_running(mu, var, count)
        # y = gamma * x_hat + beta = d * s + (beta - mean_d * s), s = gamma * inv_std: two
        # passes from d, which is kept (x_hat itself is never written).
        mean_d = mean_d.reshape(1, C, 1, 1)
        s = self.gamma.data.astype(x.dtype, copy=False).reshape(1, C, 1, 1) * inv_std
        y = d * s
        y += self.beta.data.astype(x.dtype, copy=False).reshape(1, C, 1, 1) - mean_d * s
        self.cache = _SyncCache(d, mean_d, inv_std, count)
        return y

    def _update_running(self, mu: Any, var: Any, count: float) -> None:
        """PyTorch's rule with the global statistics: the unbiased var · M / (M - 1)."""
        mom = self.momentum
        dtype = self.running_mean.dtype
        self.running_mean = (1.0 - mom) * self.running_mean + mom * mu.astype(dtype)
        self.running_var = ((1.0 - mom) * self.running_var
                            + mom * (var * (count / (count - 1.0))).astype(dtype))

    def backward(self, dout: Any) -> Any:
        cache = self.cached()
        if not isinstance(cache, _SyncCache):
            return super().backward(dout)
        C = self.num_features
        xp = get_array_module(dout)
        d, mean_d, inv_std, count = cache
        sums = xp.empty(2 * C, dtype=d.dtype)
        sums[:C] = _channel_sum(dout, d)              # Σ dout * d
        sums[C:] = _channel_sum(dout)                 # Σ dout         (this rank): dbeta
        # Σ dout * x_hat = inv_std * (Σ dout * d - mean_d * Σ dout)  (this rank): dgamma
        sums[:C] -= mean_d.reshape(C) * sums[C:]
        sums[:C] *= inv_std.reshape(C)
        # The parameter gradients are this rank's own sums (averaged later with the others).
        self.gamma.set_grad(sums[:C].copy())
        self.beta.set_grad(sums[C:].copy())
        self.comm.allreduce(sums, op="sum")           # now over all ranks
        S_gamma, S_beta = sums[:C].reshape(1, C, 1, 1), sums[C:].reshape(1, C, 1, 1)
        gamma = self.gamma.data.astype(d.dtype, copy=False).reshape(1, C, 1, 1)
        # x_hat * S_gamma = d * (inv_std S_gamma) - mean_d * inv_std S_gamma: d in the place
        # of x_hat, the constant term moved to the other sum.
        T = inv_std * S_gamma
        return normalize_backward_from_sums(dout, d, gamma * inv_std, T, S_beta - mean_d * T,
                                            count)

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the communicator behind (it belongs to this process)."""
        state = super().__getstate__()
        state["comm"] = None
        return state

    def extra_repr(self) -> str:
        size = getattr(getattr(self, "comm", None), "size", 1)
        return f"{super().extra_repr()}, ranks={size}"

