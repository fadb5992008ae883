"""Lookahead (Zhang et al., 2019, arXiv:1907.08610): slow weights that follow an optimizer.

``Lookahead(optimizer, k=5, alpha=0.5)`` wraps any optimizer (the "fast" one). It keeps a
copy φ of every trainable parameter (the slow weights, φ = θ at construction); every ``k``
calls to ``step``, after the inner step::

    φ = φ + α (θ - φ)        (the slow weights move a fraction α toward the fast ones)
    θ = φ                    (the fast weights restart from the slow ones)

It is a wrapper, not an ``Optimizer`` subclass: ``step`` calls the inner optimizer's
``step``; ``lr`` reads and sets the inner optimizer's ``lr``, so every schedule works on
the wrapper (``CosineAnnealingLR(Lookahead(SGD(...)), ...)``); ``zero_grad``, ``params`` and
``param_groups`` are the inner optimizer's. ``state_dict`` holds the inner state (keys
prefixed ``"inner."``), the slow weights (``"slow.<i>"``, the i-th parameter of
``params``) and the step counter, all NumPy arrays and numbers, so ``minicnn.training``
checkpoints save it like any optimizer.

Derivation: docs/derivations/optimizers.md (Lookahead)
Tests: tests/test_optim.py
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..backend import to_numpy
from .optimizer import as_number, to_like

__all__ = ["Lookahead"]


class Lookahead:
    """Lookahead on top of ``optimizer``: every ``k`` steps, φ += α (θ - φ) and θ = φ.

    Parameters
    ----------
    optimizer : Optimizer
        The inner ("fast") optimizer, e.g. ``SGD(model.parameters(), lr=0.1)``.
    k : int
        Inner steps between two synchronisations, >= 1.
    alpha : float
        α in [0, 1]: the slow weights' step toward the fast ones (1: plain inner optimizer).
    """

    def __init__(self, optimizer: Any, k: int = 5, alpha: float = 0.5):
        if isinstance(optimizer, Lookahead) or not hasattr(optimizer, "step") \
                or not hasattr(optimizer, "params"):
            raise TypeError(f"Lookahead: expected an optimizer such as SGD(...), got "
                            f"{type(optimizer).__name__}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"Lookahead: k must be an integer >= 1, got {k!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Lookahead: alpha must be in [0, 1], got {alpha}")
        self.optimizer = optimizer
        self.k = int(k)
        self.alpha = float(alpha)
        self.num_steps = 0  # calls to step()
        self.slow: list[Any] = [p.data.copy() for p in optimizer.params]

    # -- forwarding ------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The inner optimizer's learning rate (schedules set it through the wrapper)."""
        return self.optimizer.lr

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.lr = value

    @property
    def params(self) -> list[Any]:
        return self.optimizer.params

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    # -- the update ------------------------------------------------------------------------
    def step(self) -> None:
        """One inner step; every ``k``-th call, also pull the slow weights and reset θ = φ."""
        self.optimizer.step()
        self.num_steps += 1
        if self.num_steps % self.k != 0:
            return
        alpha = float(self.alpha)
        for i, p in enumerate(self.optimizer.params):
            if not p.requires_grad:
                continue
            slow = self.slow[i]
            if type(slow) is not type(p.data) or slow.dtype != p.data.dtype:  # model.to(...)
                slow = self.slow[i] = to_like(slow, p.data)
            slow += alpha * (p.data - slow)    # φ = φ + α (θ - φ)
            p.data[...] = slow                 # θ = φ (in place: p keeps its array)

    def _step_arrays(self, flat: bool | None) -> tuple[bool, dict[Any, Any]]:
        """The inner optimizer's ``_step_arrays`` and the slow weights (``LossScaler``)."""
        flat, arrays = self.optimizer._step_arrays(flat)
        for i, slow in enumerate(self.slow):
            arrays[("slow", i)] = slow
        return flat, arrays

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``"inner.<key>"`` for the inner state, ``"slow.<i>"``, ``"lookahead_step"``."""
        d: dict[str, Any] = {f"inner.{k}": v for k, v in self.optimizer.state_dict().items()}
        d["lookahead_step"] = int(self.num_steps)
        for i, slow in enumerate(self.slow):
            d[f"slow.{i}"] = np.array(to_numpy(slow))
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned; ValueError if it does not fit (nothing changed)."""
        params = self.optimizer.params
        slow = []
        for i, p in enumerate(params):
            key = f"slow.{i}"
            if key not in d:
                raise ValueError(f"Lookahead.load_state_dict: missing {key!r}")
            value = np.asarray(d[key])
            if value.dtype.kind not in "iuf" or tuple(value.shape) != tuple(p.data.shape):
                raise ValueError(f"Lookahead.load_state_dict: {key!r} has shape "
                                 f"{tuple(value.shape)} and dtype {value.dtype}, but {p!r} has "
                                 f"shape {tuple(p.data.shape)}")
            slow.append(to_like(value, p.data))
        for key in d:
            if not key.startswith("inner.") and key != "lookahead_step" and not (
                    key.startswith("slow.") and key[5:].isdigit() and int(key[5:]) < len(params)):
                raise ValueError(f"Lookahead.load_state_dict: unexpected key {key!r}")
        num_steps = int(as_number(d["lookahead_step"]))
        inner = {k[len("inner."):]: v for k, v in d.items() if k.startswith("inner.")}
        self.optimizer.load_state_dict(inner)  # raises before changing anything if it does not fit
        self.slow, self.num_steps = slow, num_steps

    def __repr__(self) -> str:
        return f"Lookahead({self.optimizer!r}, k={self.k}, alpha={self.alpha:g})"
