"""The optimizer base class: parameter bookkeeping, the ``step`` skeleton, checkpoints.

``Optimizer.step`` walks the parameters, skips the frozen ones (``requires_grad`` False) and
those without a gradient, casts the gradient to the parameter's dtype and hands it to the
subclass's ``_update(p, g, state, lr)``, which changes ``p.data`` in place (``sgd.py``,
``adam.py``). ``state_dict`` / ``load_state_dict`` turn the per-parameter buffers into a flat
dict of NumPy arrays and numbers and back.

``to_like`` and ``as_number`` are the two helpers the optimizers, ``EMA`` and the schedules
share for their state: a buffer on its parameter's device and dtype, and a number read back
from a checkpoint.

Derivation: docs/derivations/optimizers.md
Tests: tests/test_optim.py
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..backend import to_device, to_numpy
from ..layers.base import Parameter

__all__ = ["Optimizer", "to_like", "as_number"]


def to_like(a: Any, ref: Any) -> Any:
    """``a`` on ``ref``'s device (NumPy or CuPy) and in its dtype, copying only if needed."""
    return to_device(a, ref.dtype, like=ref)


def as_number(value: Any) -> Any:
    """A Python int/float from a number or a 0-d array (``np.load`` gives 0-d arrays).

    Raises ValueError for an array with dimensions, or a non-real entry (a damaged state).
    """
    value = np.asarray(value)
    if value.ndim != 0:
        raise ValueError(f"expected a number, got an array of shape {value.shape}")
    if value.dtype.kind not in "iuf":  # a complex, bool or string entry is a damaged state
        raise ValueError(f"expected a real number, got {value.item()!r} of dtype {value.dtype}")
    return value.item()


class Optimizer:
    """Base class: parameter bookkeeping, ``step`` skeleton, ``zero_grad`` and checkpoints.

    Parameters
    ----------
    params : iterable of Parameter
        Usually ``model.parameters()``. Frozen ones (``requires_grad`` False) are kept in the
        list but never updated.
    lr : float
        The learning rate γ. A plain attribute: schedules (or you) may set ``opt.lr`` at any
        time, and the next ``step`` uses it.

    Subclasses implement ``_update(p, g, state, lr)``: change ``p.data`` in place, given the
    gradient ``g`` (in ``p``'s dtype) and ``state``, this parameter's dict of buffers (arrays
    named in ``_array_state``, integer counters named in ``_count_state``).
    """

    _array_state: tuple[str, ...] = ()
    _count_state: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], lr: float):
        name = type(self).__name__
        try:
            self.params: list[Parameter] = list(params)
        except TypeError:
            raise TypeError(f"{name}: expected an iterable of Parameter such as "
                            f"model.parameters(), got {type(params).__name__}") from None
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: expected Parameter objects (model.parameters()), "
                                f"got {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(f"{name}: a parameter appears more than once; it would be "
                             "updated twice per step")
        if not lr >= 0.0:
            raise ValueError(f"{name}: learning rate must be >= 0, got {lr}")
        self.lr = float(lr)
        self.num_steps = 0          # calls to step()
        self.state: list[dict[str, Any]] = [{} for _ in self.params]

    # -- the update ----------------------------------------------------------------------------
    def step(self) -> None:
        """Update every trainable parameter that has a gradient."""
        lr = float(self.lr)  # a NumPy float64 here would turn float32 updates into float64
        self.num_steps += 1
        for p, state in zip(self.params, self.state, strict=True):
            if not p.requires_grad or p.grad is None:
                continue
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise ValueError(f"{type(self).__name__}: {p!r} has a gradient of shape "
                                 f"{tuple(p.grad.shape)}, expected {tuple(p.data.shape)}")
            self._follow_parameter(p, state)
            g = p.grad.astype(p.data.dtype, copy=False)
            self._update(p, g, state, lr)

    def _update(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def _follow_parameter(self, p: Parameter, state: dict[str, Any]) -> None:
        """Move the buffers to the parameter's device and dtype if it changed (``model.to``)."""
        for key in self._array_state:
            buf = state.get(key)
            if buf is not None and (type(buf) is not type(p.data) or buf.dtype != p.data.dtype):
                state[key] = to_like(buf, p.data)

    def zero_grad(self) -> None:
        """Set every gradient to None (optional: backward passes assign, not accumulate)."""
        for p in self.params:
            p.grad = None

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as a flat dict of numbers and NumPy arrays.

        Keys: ``"lr"``, ``"step"`` (calls to ``step``), ``"num_params"``, and per parameter
        ``"<buffer>.<i>"`` for the i-th parameter of ``params`` (e.g. ``"m.0"``, ``"t.0"``).
        Arrays are copies, so the dict can be kept while training goes on, and saved with
        ``np.savez``.
        """
        d: dict[str, Any] = {"lr": float(self.lr), "step": int(self.num_steps),
                             "num_params": len(self.params)}
        for i, state in enumerate(self.state):
            for key, value in state.items():
                if key in self._array_state:
                    d[f"{key}.{i}"] = np.array(to_numpy(value))
                else:
                    d[f"{key}.{i}"] = int(value)
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a dict, or the ``np.load`` of a ``.npz``).

        The buffers go to each parameter's device and dtype. Raises ValueError when the dict
        was made for a different list of parameters (count or shapes) or another optimizer.
        """
        name = type(self).__name__
        n = int(as_number(d["num_params"]))
        if n != len(self.params):
            raise ValueError(f"{name}.load_state_dict: state is for {n} parameter(s), "
                             f"this optimizer has {len(self.params)}")
        new_state: list[dict[str, Any]] = [{} for _ in self.params]
        for key in d:
            if key in ("lr", "step", "num_params"):
                continue
            buf_name, _, index = key.rpartition(".")
            known = buf_name in self._array_state or buf_name in self._count_state
            if not known or not index.isdigit() or int(index) >= n:
                raise ValueError(f"{name}.load_state_dict: unexpected key {key!r} (state of "
                                 "another optimizer?)")
            p = self.params[int(index)]
            if buf_name in self._array_state:
                value = np.asarray(d[key])
                if value.dtype.kind not in "iuf":
                    raise ValueError(f"{name}.load_state_dict: {key!r} has dtype {value.dtype}, "
                                     f"expected real numbers")
                if tuple(value.shape) != p.shape:
                    raise ValueError(f"{name}.load_state_dict: {key!r} has shape "
                                     f"{tuple(value.shape)}, but {p!r} has shape {p.shape}")
                new_state[int(index)][buf_name] = to_like(value, p.data)
            else:
                new_state[int(index)][buf_name] = int(as_number(d[key]))
        lr, num_steps = float(as_number(d["lr"])), int(as_number(d["step"]))
        self.state, self.lr, self.num_steps = new_state, lr, num_steps  # all checked: commit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr:g}, {len(self.params)} parameters)"
