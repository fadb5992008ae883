"""Weight penalties (the lectures' L1/L2 "kernel regularisation"), set per layer.

``Conv2d(..., kernel_regularizer=L2(1e-4))`` attaches the penalty to the kernel ``W``.
The layer's backward then adds dR/dW to ``W.grad``, and ``model.regularization_loss()`` gives
R for reporting (add it to the data loss to see the full objective).

- L2:  R(w) = λ · Σ w²      dR/dw = 2λ w      (Keras' convention: no factor 1/2)
- L1:  R(w) = λ · Σ |w|     dR/dw = λ sign(w)  (sign(0) = 0, a subgradient)

L2 here is the penalty added to the loss; the optimizers' ``weight_decay`` argument is the
PyTorch-style decay applied in the update (for SGD, weight_decay = 2λ gives the same step).
"""

from __future__ import annotations

from typing import Any

from .backend import get_array_module

__all__ = ["L1", "L2", "L1L2"]


class L1L2:
    """R(w) = l1 · Σ|w| + l2 · Σ w²."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        if l1 < 0 or l2 < 0:
            raise ValueError(f"L1L2: penalties must be >= 0, got l1={l1}, l2={l2}")
        self.l1, self.l2 = float(l1), float(l2)

    def loss(self, w: Any) -> Any:
        xp = get_array_module(w)
        total = 0.0
        if self.l1:
            total = total + self.l1 * xp.abs(w).sum()
        if self.l2:
            total = total + self.l2 * (w * w).sum()
        return total

    def grad(self, w: Any) -> Any:
        xp = get_array_module(w)
        g = xp.zeros_like(w)
        if self.l1:
            g += self.l1 * xp.sign(w)
        if self.l2:
            g += (2.0 * self.l2) * w
        return g

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1:g}, l2={self.l2:g})"


class L1(L1L2):
    """R(w) = l1 · Σ|w|."""

    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)


class L2(L1L2):
    """R(w) = l2 · Σ w²."""

    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)
