"""Dynamic loss scaling for fp16 training (PyTorch's ``torch.cuda.amp.GradScaler``).

fp16 keeps 5 exponent bits: its smallest subnormal is 2⁻²⁴ ≈ 6e-8, and many gradients of a
network are smaller, so a backward pass whose GEMMs read fp16 loses them (they flush to
zero). Loss scaling multiplies the loss gradient by a large S before the backward pass
(every gradient is linear in it, so all come out S times larger, above fp16's floor), and
divides the parameter gradients by S before the optimizer step::

    dlogits ← S · dL/dlogits                        scaler.scale(dlogits)
    model.backward(dlogits)                         every gradient is S · ∇θ
    g ← g / S;  found_inf = any(g is inf or NaN)    scaler.step(optimizer): unscale, check,
    θ, state ← the optimizer's step, unless found_inf          and step, or skip
    S ← S / 2 if found_inf; S ← 2 S after 2000 good steps in a row    scaler.update()

Too large an S overflows fp16 (65504) somewhere in the backward: the gradients hold inf or
NaN, the step is skipped (the weights and the optimizer state stay as they were) and S is
halved; S doubles again after ``growth_interval`` steps without an overflow. The defaults
are PyTorch's: S₀ = 2¹⁶, growth 2 every 2000 steps, backoff 0.5.

Everything stays on the device: S, the count of good steps and the overflow flag are 0-d
device arrays, and the skip is taken without reading the flag: the step runs, and the
arrays it writes (the parameters and the optimizer state: on CuPy the flat buffers) are put
back from a copy taken before it, ``copyto(new, saved, where=found_inf)``. On NumPy the
same code runs (reading the flag would be free there, but one path is easier to trust).
Host counters are not put back: a skipped step still counts in ``optimizer.num_steps``, in
Adam's t (its bias correction) and in ``Lookahead``'s every-k counter, whereas PyTorch
does not count it; reading the flag to hold them back would be a host sync per step.

A parameter with a ``kernel_regularizer`` got its penalty's gradient added unscaled by
``Parameter.set_grad``; unscaling restores it: g = (S ∇θ + r) / S + r (1 - 1/S) = ∇θ + r.

Tests: tests/test_precision.py
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..backend import get_array_module
from ..layers.base import Parameter

__all__ = ["LossScaler"]


class LossScaler:
    """Dynamic loss scaling for fp16 (the module docstring), as PyTorch's ``GradScaler``.

    Use::

        scaler = LossScaler()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(scaler.scale(loss_fn.backward()))
        scaler.step(optimizer)      # unscale the gradients; step, or skip on inf/NaN
        scaler.update()             # halve S after an overflow, double it after 2000 good steps

    ``fit(..., precision="fp16")`` does this for you.

    Parameters
    ----------
    init_scale : float, default 2.0**16
    growth_factor : float, default 2.0
    backoff_factor : float, default 0.5
    growth_interval : int, default 2000
        Steps in a row without an overflow before S grows.

    Attributes
    ----------
    scale_value : float
        S, read from the device (a host sync: for logs and tests, not for every step).
    found_inf : bool
        Whether the last ``step`` found an overflow and skipped (a host sync).
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000):
        if not init_scale > 0 or not growth_factor > 1 or not 0 < backoff_factor < 1:
            raise ValueError(f"LossScaler: need init_scale > 0, growth_factor > 1 and "
                             f"0 < backoff_factor < 1, got {init_scale}, {growth_factor}, "
                             f"{backoff_factor}")
        if int(growth_interval) != growth_interval or growth_interval < 1:
            raise ValueError(f"LossScaler: growth_interval must be an integer >= 1, got "
                             f"{growth_interval!r}")
        self.init_scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self._scale: Any = None      # S, a float32 0-d array on the gradients' device
        self._good: Any = None       # good steps in a row, int32 0-d
        self._found: Any = None      # the last step's overflow flag, bool 0-d

    def _state(self, like: Any) -> None:
        """Make S and the counter on ``like``'s device the first time (fills, no copies)."""
        if self._scale is None or get_array_module(self._scale) is not get_array_module(like):
            xp = get_array_module(like)
            self._scale = xp.full((), self.init_scale, dtype=np.float32)
            self._good = xp.zeros((), dtype=np.int32)
            self._found = xp.zeros((), dtype=bool)

    def scale(self, dlogits: Any) -> Any:
        """S · dlogits: the loss gradient that the backward pass starts from (a new array)."""
        self._state(dlogits)
        return dlogits * self._scale.astype(dlogits.dtype, copy=False)

    def unscale(self, params: Iterable[Parameter]) -> Any:
        """Divide every gradient by S, in place where it is the optimizer's buffer; returns
        found_inf, a 0-d bool device array: whether any gradient holds an inf or a NaN."""
        params = [p for p in params if p.requires_grad and p.grad is not None]
        if not params:
            raise ValueError("LossScaler: no parameter has a gradient; call scale() and "
                             "model.backward() first")
        self._state(params[0].grad)
        xp = get_array_module(params[0].grad)
        inv = 1.0 / self._scale                                   # 0-d, on the device
        finite = xp.ones((), dtype=bool)
        for p in params:
            g = p.grad
            g_inv = inv.astype(g.dtype, copy=False)
            if p.regularizer is not None:          # its term went in unscaled: keep it so
                g = g * g_inv + p.regularizer.grad(p.data) * (1 - g_inv)
            elif g is p._grad_buffer:             # the optimizer's flat buffer: in place
                xp.multiply(g, g_inv, out=g)
            else:                                  # a layer's array: never write into it
                g = g * g_inv
            p.grad = g
            finite = finite & xp.isfinite(g).all()
        self._found = ~finite
        return self._found

    def step(self, optimizer: Any) -> None:
        """Unscale the gradients (``unscale``) and take ``optimizer.step()``, undone on the
        device when a gradient overflowed (the weights and the optimizer state put back from
        a copy, ``copyto(..., where=found_inf)``): no host sync."""
        arrays_of = getattr(optimizer, "_step_arrays", None)
        if arrays_of is None:
            raise TypeError(f"LossScaler.step: expected a minicnn.optim optimizer (SGD, Adam, "
                            f"AdamW, Lookahead), got {type(optimizer).__name__}")
        found = self.unscale(optimizer.params)
        xp = get_array_module(found)
        flat, before = arrays_of(None)
        saved = {key: a.copy() for key, a in before.items()}
        with np.errstate(all="ignore"):     # an overflowed step computes infs: undone below
            optimizer.step()
        _, after = arrays_of(flat)
        for key, a in after.items():
            # What the step wrote is put back where found_inf; a buffer the step made
            # (Adam's moments at the first step) goes back to its initial zeros.
            xp.copyto(a, saved[key] if key in saved else xp.zeros((), a.dtype), where=found)

    def update(self) -> None:
        """S ← S · backoff after an overflow, S ← S · growth after ``growth_interval`` good
        steps in a row (the count then restarts), else unchanged; on the device."""
        if self._scale is None:
            raise RuntimeError("LossScaler.update called before scale()")
        xp = get_array_module(self._scale)
        found = self._found
        good = xp.where(found, 0, self._good + 1).astype(np.int32)
        grow = good >= self.growth_interval
        factor = xp.where(found, np.float32(self.backoff_factor),
                          xp.where(grow, np.float32(self.growth_factor), np.float32(1.0)))
        self._scale = (self._scale * factor).astype(np.float32)
        self._good = xp.where(grow, 0, good).astype(np.int32)

    @property
    def scale_value(self) -> float:
        return self.init_scale if self._scale is None else float(self._scale)

    @property
    def found_inf(self) -> bool:
        return False if self._found is None else bool(self._found)

    def __repr__(self) -> str:
        return (f"LossScaler(init_scale={self.init_scale:g}, growth_factor="
                f"{self.growth_factor:g}, backoff_factor={self.backoff_factor:g}, "
                f"growth_interval={self.growth_interval})")
