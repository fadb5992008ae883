"""Launchers and NumPy twins of ``optimizer.cu``: SGD, Adam/AdamW and EMA over flat buffers.

On CuPy, minicnn's optimizers keep the parameters of one (device, dtype) in one flat buffer
``theta`` (``minicnn.optim.flat``), the gradients in ``grad``, the state in buffers of the same
layout, and update them in one launch per parameter group. What changes per step is read from
a small float64 device array ``hyper``::

    hyper[0]                       the learning rate γ (the launcher writes it when it changes)
    hyper[slot], hyper[slot + 1]   a step counter: the launch reads cell ``parity`` and writes
                                   the count + 1 into the other cell (for the next launch)

so a step needs no host synchronisation and no copy from the host: the bias corrections
1 - β1ᵗ, 1 - β2ᵗ and EMA's warm-up decay are computed on the device from the counter.

Each ``@twin`` below is the vectorised NumPy of exactly what its kernel computes (the
reference the tests compare the kernel with; the strict CPU stand-in runs it as the kernel).
The readable per-parameter code in ``minicnn/optim/sgd.py``, ``adam.py`` and ``ema.py`` is the
NumPy path and computes the same numbers (up to the rounding of β^t).

Tests: tests/test_kernels_optimizer.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from . import launch, twin

__all__ = ["sgd_step", "adam_step", "ema_update", "power"]

FAMILY = "optimizer"


def power(beta: float, t: Any) -> Any:
    """β^t as the kernels compute it, exp(t · log β) in float64 (0 for β = 0)."""
    with np.errstate(divide="ignore"):
        return np.exp(np.float64(t) * np.log(np.float64(beta)))


# -- launchers ---------------------------------------------------------------------------------

def sgd_step(theta: Any, grad: Any, b: Any, hyper: Any, *, lr_scale: float, momentum: float,
             dampening: float, weight_decay: float, nesterov: bool, decoupled: bool,
             first: bool) -> None:
    """One SGD step over the flat ``theta`` (n,) with ``grad`` (n,) and momentum ``b`` (n,)
    (``theta`` itself when momentum is 0: not touched then); γ = hyper[0] · lr_scale. One
    launch."""
    xp = get_array_module(theta)
    n = int(theta.size)
    launch(xp, FAMILY, "optim_sgd_step", theta.dtype, n,
           (np.int64(n), theta, grad, b, hyper, np.float64(lr_scale), np.float64(momentum),
            np.float64(dampening), np.float64(weight_decay), np.int32(bool(nesterov)),
            np.int32(bool(decoupled)), np.int32(bool(first))))


def adam_step(theta: Any, grad: Any, m: Any, v: Any, hyper: Any, slot: int, parity: int, *,
              lr_scale: float, betas: tuple[float, float], eps: float, weight_decay: float,
              decoupled: bool) -> None:
    """One Adam (``decoupled`` False) or AdamW step over the flat ``theta`` (n,), with the
    moments ``m``, ``v`` (n,); the step count is read from hyper[slot + parity] and the next
    one written to hyper[slot + 1 - parity]. One launch."""
    xp = get_array_module(theta)
    n = int(theta.size)
    launch(xp, FAMILY, "optim_adam_step", theta.dtype, n,
           (np.int64(n), theta, grad, m, v, hyper, np.int32(slot), np.int32(parity),
            np.float64(lr_scale), np.float64(betas[0]), np.float64(betas[1]),
            np.float64(eps), np.float64(weight_decay), np.int32(bool(decoupled))))


def ema_update(shadow: Any, theta: Any, hyper: Any, slot: int, parity: int, *, decay: float,
               warmup: bool) -> None:
    """θ_ema = θ_ema - (1 - d)(θ_ema - θ) over the flat ``shadow`` (n,); the update count is
    read from hyper[slot + parity], the next one written to hyper[slot + 1 - parity]. One
    launch."""
    xp = get_array_module(shadow)
    n = int(shadow.size)
    launch(xp, FAMILY, "optim_ema_update", shadow.dtype, n,
           (np.int64(n), shadow, theta, hyper, np.int32(slot), np.int32(parity),
            np.float64(decay), np.int32(bool(warmup))))


# -- twins: what each kernel computes, vectorised ---------------------------------------------

@twin("optim_sgd_step")
def optim_sgd_step_twin(n: np.int64, theta: np.ndarray, grad: np.ndarray, b: np.ndarray,
                        hyper: np.ndarray, lr_scale: np.float64, momentum: np.float64,
                        dampening: np.float64, weight_decay: np.float64, nesterov: np.int32,
                        decoupled: np.int32, first: np.int32) -> None:
    """SGD on theta[:n], as the kernel computes it (per-launch scalars in float64)."""
    s = theta.dtype.type
    n = int(n)
    lr = float(hyper[0]) * float(lr_scale)
    th, g = theta[:n].copy(), grad[:n].copy()
    if weight_decay != 0.0:
        if decoupled:
            th = th - s(lr * float(weight_decay)) * th           # θ = θ - γλθ
        else:
            g = g + s(weight_decay) * th                         # g = ∇θ + λθ
    if momentum != 0.0:
        mu = s(momentum)
        bi = g.copy() if first else mu * b[:n] + s(1.0 - float(dampening)) * g
        b[:n] = bi                                               # b = μ b + (1 - τ) g
        g = g + mu * bi if nesterov else bi
    theta[:n] = th - s(lr) * g                                   # θ = θ - γ g


@twin("optim_adam_step")
def optim_adam_step_twin(n: np.int64, theta: np.ndarray, grad: np.ndarray, m: np.ndarray,
                         v: np.ndarray, hyper: np.ndarray, slot: np.int32, parity: np.int32,
                         lr_scale: np.float64, beta1: np.float64, beta2: np.float64,
                         eps: np.float64, weight_decay: np.float64, decoupled: np.int32
                         ) -> None:
    """Adam / AdamW on theta[:n] at step t = hyper[slot + parity] + 1; writes t for the next
    launch."""
    s = theta.dtype.type
    n = int(n)
    t = float(hyper[slot + parity]) + 1.0
    hyper[slot + 1 - parity] = t                                 # the next launch's count
    lr = float(hyper[0]) * float(lr_scale)
    step_size = s(lr / (1.0 - power(beta1, t)))                  # γ / (1 - β1ᵗ)
    root_c2 = s(np.sqrt(1.0 - power(beta2, t)))                  # sqrt(1 - β2ᵗ)
    th, g = theta[:n].copy(), grad[:n].copy()
    if weight_decay != 0.0:
        if decoupled:
            th = th * s(1.0 - lr * float(weight_decay))          # θ = θ (1 - γλ)
        else:
            g = g + s(weight_decay) * th                         # g = ∇θ + λθ
    a1, a2 = s(1.0 - float(beta1)), s(1.0 - float(beta2))
    if t == 1.0:                                                 # m = v = 0 before step 1
        mi, vi = a1 * g, a2 * g * g
    else:
        mi = s(beta1) * m[:n] + a1 * g                           # m = β1 m + (1 - β1) g
        vi = s(beta2) * v[:n] + a2 * g * g                       # v = β2 v + (1 - β2) g²
    m[:n], v[:n] = mi, vi
    denom = np.sqrt(vi) / root_c2 + s(eps)                       # sqrt(v̂) + ε
    theta[:n] = th - mi / denom * step_size                      # θ -= γ m̂ / (sqrt(v̂) + ε)


@twin("optim_ema_update")
def optim_ema_update_twin(n: np.int64, shadow: np.ndarray, theta: np.ndarray,
                          hyper: np.ndarray, slot: np.int32, parity: np.int32,
                          decay: np.float64, warmup: np.int32) -> None:
    """θ_ema -= (1 - d)(θ_ema - θ) on shadow[:n] after update k = hyper[slot + parity];
    writes k + 1 for the next launch."""
    s = shadow.dtype.type
    n = int(n)
    k = float(hyper[slot + parity])
    hyper[slot + 1 - parity] = k + 1.0
    d = min(float(decay), (1.0 + k) / (10.0 + k)) if warmup else float(decay)
    shadow[:n] = shadow[:n] - s(1.0 - d) * (shadow[:n] - theta[:n])   # θ_ema -= (1-d)(θ_ema-θ)
