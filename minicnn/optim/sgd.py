"""Stochastic gradient descent with momentum, Nesterov momentum and weight decay.

PyTorch's update rule, line for line (see ``SGD``)::

    g = ∇θ + λθ;  b = μ b + (1 - τ) g  (b = g at the first step);
    g = g + μ b (Nesterov) or g = b;  θ = θ - γ g

``decoupled_weight_decay=True`` replaces g = ∇θ + λθ by θ = θ - γλθ (applied apart from the
gradient, as in AdamW; airbench's rule).

Derivation: docs/derivations/optimizers.md
Tests: tests/test_optim.py
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..kernels import optimizer as kernels
from ..layers.base import Parameter
from .flat import Bucket, FlatState
from .optimizer import Optimizer

__all__ = ["SGD"]


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    PyTorch's rule, per parameter θ with gradient ∇θ::

        g = ∇θ + λ θ                                  (weight_decay λ, an L2 penalty λ/2·θ²)
        b = g                     at the first step   (momentum buffer)
        b = μ b + (1 - τ) g       afterwards          (momentum μ, dampening τ)
        g = g + μ b  if nesterov  else  g = b
        θ = θ - γ g

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        Learning rate γ.
    momentum : float
        μ >= 0; 0 gives plain SGD (no buffer is kept).
    nesterov : bool
        Nesterov momentum; needs momentum > 0 and dampening 0 (as in PyTorch).
    weight_decay : float
        λ >= 0. For SGD this equals an ``L2(λ / 2)`` regularizer on every parameter.
    dampening : float
        τ in [0, 1]: the fraction of the new gradient left out of the buffer.
    decoupled_weight_decay : bool
        If True, the decay is applied to the weights directly, θ = θ - γλθ, before (and apart
        from) the gradient step, as in ``AdamW`` and airbench; λθ then never enters the
        momentum buffer. With momentum this differs from the default (coupled) rule; without
        momentum the two agree up to rounding. (PyTorch's ``SGD`` has no such option.)

    ``params`` may also be a list of parameter groups, ``[{"params": [...], "lr_scale": s,
    "weight_decay": λ}, ...]`` (see ``Optimizer``): a group's parameters use the step size
    ``s · lr`` and their own λ.
    """

    _array_state = ("b",)

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, dampening: float = 0.0,
                 decoupled_weight_decay: bool = False):
        super().__init__(params, lr)
        if not momentum >= 0.0:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= dampening <= 1.0:
            raise ValueError(f"SGD: dampening must be in [0, 1], got {dampening}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.dampening = float(dampening)
        self.decoupled_weight_decay = bool(decoupled_weight_decay)

    def _update(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        mu, wd = float(self.momentum), self._weight_decay()
        if wd != 0.0:
            if self.decoupled_weight_decay:
                p.data -= (lr * wd) * p.data               # θ = θ - γλθ, outside the momentum
            else:
                g = g + wd * p.data
        if mu != 0.0:
            b = state.get("b")
            if b is None:
                b = state["b"] = g.copy()                  # b = g at the first step
            else:
                b *= mu
                b += (1.0 - float(self.dampening)) * g     # b = μ b + (1 - τ) g
            g = g + mu * b if self.nesterov else b
        p.data -= lr * g

    def _run_key(self, state: dict[str, Any]) -> Any:
        return "b" in state            # a first step (b = g) launches apart from the others

    def _launch(self, bucket: Bucket, fs: FlatState, j0: int, j1: int,
                lr_scale: float) -> None:
        # The rule of _update above, over members j0 .. j1 - 1 of the flat buffers at once.
        momentum = float(self.momentum)
        theta = bucket.span(bucket.data, j0, j1)
        # Without momentum no buffer is kept (as in _update): the kernel gets θ, unread.
        b = bucket.span(fs.flat("b"), j0, j1) if momentum != 0.0 else theta
        kernels.sgd_step(theta, bucket.span(bucket.grad, j0, j1), b, fs.hyper,
                         lr_scale=lr_scale, momentum=momentum,
                         dampening=float(self.dampening), weight_decay=self._weight_decay(),
                         nesterov=self.nesterov, decoupled=self.decoupled_weight_decay,
                         first="b" not in self.state[bucket.members[j0]])
        if momentum != 0.0:
            for j in range(j0, j1):
                self.state[bucket.members[j]]["b"] = fs.view("b", j)

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr:g}, momentum={self.momentum:g}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay:g}, dampening={self.dampening:g}"
                + (", decoupled_weight_decay=True" if self.decoupled_weight_decay else "") + ")")
