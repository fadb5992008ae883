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

from ..backend import get_array_module, to_numpy
from ..kernels import optimizer as kernels
from ..layers.base import Parameter
from .flat import runs
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
        self._flat: dict[str, Any] | None = None   # CuPy: see _flat_update

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
        if not self._flat_update():   # CuPy, parameters in flat buffers: one launch each
            d = self.current_decay()
            for i, p in enumerate(self.params):
                shadow = self.shadow[i]
                if type(shadow) is not type(p.data) or shadow.dtype != p.data.dtype:
                    shadow = self.shadow[i] = to_like(shadow, p.data)  # the model moved
                shadow -= (1.0 - d) * (shadow - p.data)   # = d θ_ema + (1 - d) θ, in place
        self.num_updates += 1

    def _flat_update(self) -> bool:
        """``update`` in one launch per run of parameters that lie back to back in an
        optimizer's flat buffer (``minicnn.optim.flat.runs``: one per dtype when the EMA
        follows the optimizer's parameters). The shadows are then views of flat buffers of
        the same runs, and the update count (for the warm-up decay) is counted on the device.
        False (nothing done) when the parameters are not in flat buffers (NumPy)."""
        found = runs(self.params)
        if found is None:
            return False
        flat = self._flat
        if flat is None or len(flat["runs"]) != len(found) or any(
                a[0] is not b[0] or a[1:3] != b[1:3]
                for a, b in zip(flat["runs"], found, strict=True)):
            flat = self._flat = _flat_shadows(found)    # new runs: new shadow buffers
        for i, view in enumerate(flat["views"]):
            if self.shadow[i] is not view:              # loaded, or the first time
                view[...] = to_like(self.shadow[i], view)
                self.shadow[i] = view
        for r, (bucket, j0, j1, _, _) in enumerate(found):
            slot = 2 * r
            parity, held = flat["counters"].get(slot, (0, None))
            if held != self.num_updates:                # written only when it differs
                flat["hyper"][slot + parity] = float(self.num_updates)
            flat["counters"][slot] = (1 - parity, self.num_updates + 1)
            kernels.ema_update(flat["shadows"][r], bucket.span(bucket.data, j0, j1),
                               flat["hyper"], slot, parity, decay=self.decay,
                               warmup=self.warmup)
        return True

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

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_flat"] = None                       # rebuilt at the next update
        return state

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay:g}, {len(self.params)} parameters)"


def _flat_shadows(found: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Flat shadow buffers for the runs ``found`` of ``flat.runs``: one per run, its views
    (in the parameters' order), a float64 device array of update counters (two cells per
    run, as ``minicnn/kernels/optimizer.cu`` reads them) and their host mirror."""
    shadows, views = [], []
    for bucket, j0, j1, _, _ in found:
        like = bucket.span(bucket.data, j0, j1)
        flat = get_array_module(like).empty(like.shape, dtype=like.dtype)
        shadows.append(flat)
        start = bucket.offsets[j0]
        for j in range(j0, j1):
            o = bucket.offsets[j] - start
            views.append(flat[o:o + bucket.sizes[j]].reshape(bucket.data_views[j].shape))
    xp = get_array_module(shadows[0])
    return {"runs": [r[:3] for r in found], "shadows": shadows, "views": views,
            "hyper": xp.zeros(2 * len(found), dtype=np.float64), "counters": {}}
