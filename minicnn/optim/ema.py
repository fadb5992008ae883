"""Exponential moving average of the weights (``EMA``), for evaluation.

Not an optimizer: it keeps a shadow copy θ_ema = d θ_ema + (1 - d) θ, updated after each
optimizer step, and swaps it into the model for evaluation.

Tests: tests/test_optim.py
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..layers.base import Parameter
from .optimizer import as_number, to_like

__all__ = ["EMA"]


class EMA:
    """Exponential moving average of the weights, for evaluation.

    After every optimizer step, ``update()`` moves a shadow copy towards the weights::

        θ_ema = d θ_ema + (1 - d) θ         (decay d, e.g. 0.999: an average over ~1/(1-d) steps)

    The averaged weights often generalise better than the last ones. ``apply()`` copies them
    into the parameters (keeping a backup) and ``restore()`` puts the training weights back;
    ``with ema.averaged(): ...`` does both. Copies are in place, so the parameters keep their
    array objects.

    With ``warmup=True`` the decay is min(d, (1 + n) / (10 + n)) at the n-th update (as in
    TensorFlow's ExponentialMovingAverage), so the average forgets the random initial weights
    quickly early in training.

    Only ``Parameter`` values are averaged: buffers such as BatchNorm's running statistics are
    not (they are themselves running averages of the training weights' activations).
    """

    def __init__(self, params: Iterable[Parameter], decay: float = 0.999,
                 warmup: bool = False):
        self.params = list(params)
        if not self.params:
            raise ValueError("EMA: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"EMA: expected Parameter objects (model.parameters()), "
                                f"got {type(p).__name__}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = [p.data.copy() for p in self.params]
        self._backup: list[Any] | None = None

    def current_decay(self) -> float:
        """The decay the next ``update`` uses."""
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    def update(self) -> None:
        """θ_ema = d θ_ema + (1 - d) θ, for every parameter (call after ``opt.step()``)."""
        if self._backup is not None:
            raise RuntimeError("EMA.update: the averaged weights are applied; restore() first")
        d = self.current_decay()
        for i, p in enumerate(self.params):
            shadow = self.shadow[i]
            if type(shadow) is not type(p.data) or shadow.dtype != p.data.dtype:
                shadow = self.shadow[i] = to_like(shadow, p.data)   # the model moved or changed
            shadow -= (1.0 - d) * (shadow - p.data)   # = d θ_ema + (1 - d) θ, in place
        self.num_updates += 1

    def apply(self) -> None:
        """Copy the averaged weights into the parameters, keeping the current ones."""
        if self._backup is not None:
            raise RuntimeError("EMA.apply: already applied; call restore() first")
        self._backup = [p.data.copy() for p in self.params]
        for p, shadow in zip(self.params, self.shadow, strict=True):
            p.data[...] = to_like(shadow, p.data)

    def restore(self) -> None:
        """Put back the weights that ``apply`` replaced."""
        if self._backup is None:
            raise RuntimeError("EMA.restore: nothing to restore; call apply() first")
        for p, saved in zip(self.params, self._backup, strict=True):
            p.data[...] = saved
        self._backup = None

    @contextmanager
    def averaged(self) -> Iterator[EMA]:
        """``with ema.averaged(): evaluate(model)`` uses the averaged weights inside."""
        self.apply()
        try:
            yield self
        finally:
            self.restore()

    def state_dict(self) -> dict[str, Any]:
        """Numbers and NumPy arrays: ``decay``, ``num_updates``, ``shadow.<i>``."""
        d: dict[str, Any] = {"decay": self.decay, "num_updates": self.num_updates}
        for i, shadow in enumerate(self.shadow):
            d[f"shadow.{i}"] = np.array(to_numpy(shadow))
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        shadow = []
        for i, p in enumerate(self.params):
            value = np.asarray(d[f"shadow.{i}"])
            if tuple(value.shape) != p.shape:
                raise ValueError(f"EMA.load_state_dict: 'shadow.{i}' has shape "
                                 f"{tuple(value.shape)}, but {p!r} has shape {p.shape}")
            shadow.append(to_like(value, p.data))
        decay, num_updates = float(as_number(d["decay"])), int(as_number(d["num_updates"]))
        self.shadow, self.decay, self.num_updates = shadow, decay, num_updates

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay:g}, {len(self.params)} parameters)"
