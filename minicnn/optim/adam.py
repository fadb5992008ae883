"""Adam and AdamW: per-weight step sizes from running means of g and g².

PyTorch's update rules, line for line (see ``Adam`` and ``AdamW``)::

    Adam   g = ∇θ + λθ;  m = β1 m + (1 - β1) g;  v = β2 v + (1 - β2) g²;
           θ = θ - γ m̂ / (sqrt(v̂) + ε)  with m̂ = m / (1 - β1ᵗ), v̂ = v / (1 - β2ᵗ)
    AdamW  θ = θ (1 - γλ) (decoupled weight decay), then the Adam step without λ

Derivation: docs/derivations/optimizers.md
Tests: tests/test_optim.py
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..backend import get_array_module
from ..kernels import optimizer as kernels
from ..layers.base import Parameter
from .flat import Bucket, FlatState
from .optimizer import Optimizer

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with PyTorch's L2-style weight decay.

    Per parameter θ, at its t-th update (t counts the steps at which θ had a gradient)::

        g = ∇θ + λ θ
        m = β1 m + (1 - β1) g          (first moment: a running mean of g)
        v = β2 v + (1 - β2) g²         (second moment: a running mean of g²)
        m̂ = m / (1 - β1ᵗ),  v̂ = v / (1 - β2ᵗ)      (bias correction: m, v start at 0)
        θ = θ - γ m̂ / (sqrt(v̂) + ε)

    The code folds the two bias corrections into scalars,
    θ -= (γ / (1 - β1ᵗ)) · m / (sqrt(v) / sqrt(1 - β2ᵗ) + ε), as PyTorch does, and updates
    m, v and θ in place.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        γ, default 1e-3.
    betas : (float, float)
        (β1, β2) in [0, 1), default (0.9, 0.999).
    eps : float
        ε >= 0, added after the square root, default 1e-8.
    weight_decay : float
        λ >= 0, added to the gradient (so it is scaled by Adam's per-weight step size; see
        ``AdamW`` for the decoupled version).
    """

    _array_state = ("m", "v")
    _count_state = ("t",)

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        name = type(self).__name__
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"{name}: betas must be in [0, 1), got {tuple(betas)}")
        if not eps >= 0.0:
            raise ValueError(f"{name}: eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"{name}: weight_decay must be >= 0, got {weight_decay}")
        self.betas = (float(beta1), float(beta2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)

    def _update(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        wd = self._weight_decay()
        if wd != 0.0:
            g = g + wd * p.data
        self._adam_step(p, g, state, lr)

    def _adam_step(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        xp = get_array_module(p.data)
        beta1, beta2 = (float(b) for b in self.betas)
        if "m" not in state:
            state["m"] = xp.zeros_like(p.data)
            state["v"] = xp.zeros_like(p.data)
            state["t"] = 0
        m, v = state["m"], state["v"]
        state["t"] = t = state["t"] + 1

        m *= beta1
        m += (1.0 - beta1) * g                   # m = β1 m + (1 - β1) g
        v *= beta2
        v += (1.0 - beta2) * g * g               # v = β2 v + (1 - β2) g²

        step_size = lr / (1.0 - beta1 ** t)      # γ / (1 - β1ᵗ)
        denom = xp.sqrt(v, out=xp.empty_like(v))  # out=: a 0-d v stays an array
        denom /= math.sqrt(1.0 - beta2 ** t)     # sqrt(v̂)
        denom += float(self.eps)                 # sqrt(v̂) + ε
        xp.divide(m, denom, out=denom)           # reuse the buffer: denom = m / (sqrt(v̂) + ε)
        denom *= step_size
        p.data -= denom                          # θ -= γ m̂ / (sqrt(v̂) + ε)

    _decoupled = False   # AdamW: θ = θ (1 - γλ) instead of g = ∇θ + λθ

    def _run_key(self, state: dict[str, Any]) -> Any:
        return state.get("t", 0)       # one launch per step count (bias corrections)

    def _launch(self, bucket: Bucket, fs: FlatState, j0: int, j1: int,
                lr_scale: float) -> None:
        # _update and _adam_step above, over members j0 .. j1 - 1 of the flat buffers at
        # once; t is counted on the device (hyper) and mirrored in self.state.
        t = self.state[bucket.members[j0]].get("t", 0)
        slot = 1 + 2 * j0
        parity = fs.counter(slot, t)
        kernels.adam_step(bucket.span(bucket.data, j0, j1), bucket.span(bucket.grad, j0, j1),
                          bucket.span(fs.flat("m"), j0, j1),
                          bucket.span(fs.flat("v"), j0, j1), fs.hyper, slot, parity,
                          lr_scale=lr_scale, betas=self.betas, eps=float(self.eps),
                          weight_decay=self._weight_decay(), decoupled=self._decoupled)
        for j in range(j0, j1):
            state = self.state[bucket.members[j]]
            state["m"], state["v"], state["t"] = fs.view("m", j), fs.view("v", j), t + 1

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr:g}, betas={self.betas}, eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g})")


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), PyTorch's rule::

        θ = θ (1 - γ λ)        (decay first, independent of the gradient's scale)
        then the Adam step of ``Adam`` on ∇θ (no λθ added to the gradient)

    Same parameters as ``Adam``; ``weight_decay`` defaults to 0.01.
    """

    _decoupled = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _update(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        wd = self._weight_decay()
        if wd != 0.0:
            p.data *= 1.0 - lr * wd
        self._adam_step(p, g, state, lr)
