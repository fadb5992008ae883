"""Optimizers, weight averaging and learning-rate schedules.

An optimizer changes the parameters using the gradients the backward pass left in ``p.grad``::

    opt = mc.optim.Adam(model.parameters(), lr=1e-3)
    sched = mc.optim.CosineAnnealingLR(opt, T_max=30)
    for epoch in range(30):
        for x, y in loader:
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        sched.step()                      # once per epoch: sets opt.lr

The update rules are PyTorch's, line for line, so results can be compared with it:

- ``SGD``    g = ∇θ + λθ;  b = μ b + (1 - τ) g  (b = g at the first step);
             g = g + μ b (Nesterov) or g = b;  θ = θ - γ g
- ``Adam``   g = ∇θ + λθ;  m = β1 m + (1 - β1) g;  v = β2 v + (1 - β2) g²;
             θ = θ - γ m̂ / (sqrt(v̂) + ε)  with m̂ = m / (1 - β1ᵗ), v̂ = v / (1 - β2ᵗ)
- ``AdamW``  θ = θ (1 - γλ) (decoupled weight decay), then the Adam step without λ

(γ learning rate, λ weight decay, μ momentum, τ dampening, t the step count.)

Simplifications compared with PyTorch: one learning rate for all parameters (``opt.lr``, a
plain attribute that schedules set), so there are no ``param_groups``; to train two parts of
a model at different rates, create two optimizers. Gradients are *assigned* by the layers'
backward passes, so ``zero_grad`` is optional. Parameters with ``requires_grad`` False
(frozen) or with ``grad`` None (not used in this backward pass) are skipped by ``step``.

Everything works on NumPy and CuPy arrays alike: the array module comes from the parameter
(``get_array_module(p.data)``). Parameters are updated in place (``p.data -= ...``), so they
keep their array object and dtype; the optimizer state (moments, momentum buffers) has the
parameter's dtype (float32 for a float32 model) and lives on the parameter's device.
``state_dict()`` holds only NumPy arrays and numbers, so it can be saved with ``np.savez`` and
read back with ``allow_pickle=False``.

The penalties ``L1``, ``L2`` and ``L1L2`` (added to the loss, set per layer) are re-exported
here from :mod:`minicnn.regularizers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from .backend import get_array_module, to_device, to_numpy
from .layers.base import Parameter
from .regularizers import L1, L1L2, L2

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "EMA",
    "LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "LambdaLR", "LinearLR",
    "ReduceLROnPlateau",
    "L1", "L2", "L1L2",
]


def _like(a: Any, ref: Any) -> Any:
    """``a`` on ``ref``'s device (NumPy or CuPy) and in its dtype, copying only if needed."""
    return to_device(a, ref.dtype, like=ref)


def _number(value: Any) -> Any:
    """A Python int/float from a number or a 0-d array (``np.load`` gives 0-d arrays)."""
    value = np.asarray(value)
    if value.ndim != 0:
        raise ValueError(f"expected a number, got an array of shape {value.shape}")
    if value.dtype.kind not in "iuf":  # a complex, bool or string entry is a damaged state
        raise ValueError(f"expected a real number, got {value.item()!r} of dtype {value.dtype}")
    return value.item()


# =============================================================================================
# Optimizers
# =============================================================================================

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
                state[key] = _like(buf, p.data)

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
        n = int(_number(d["num_params"]))
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
                new_state[int(index)][buf_name] = _like(value, p.data)
            else:
                new_state[int(index)][buf_name] = int(_number(d[key]))
        lr, num_steps = float(_number(d["lr"])), int(_number(d["step"]))
        self.state, self.lr, self.num_steps = new_state, lr, num_steps  # all checked: commit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr:g}, {len(self.params)} parameters)"


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
    """

    _array_state = ("b",)

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, dampening: float = 0.0):
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

    def _update(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        mu, wd = float(self.momentum), float(self.weight_decay)
        if wd != 0.0:
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

    def __repr__(self) -> str:
        return (f"SGD(lr={self.lr:g}, momentum={self.momentum:g}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay:g}, dampening={self.dampening:g})")


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
        if self.weight_decay != 0.0:
            g = g + float(self.weight_decay) * p.data
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

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(lr={self.lr:g}, betas={self.betas}, eps={self.eps:g}, "
                f"weight_decay={self.weight_decay:g})")


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), PyTorch's rule::

        θ = θ (1 - γ λ)        (decay first, independent of the gradient's scale)
        then the Adam step of ``Adam`` on ∇θ (no λθ added to the gradient)

    Same parameters as ``Adam``; ``weight_decay`` defaults to 0.01.
    """

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _update(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        if self.weight_decay != 0.0:
            p.data *= 1.0 - lr * float(self.weight_decay)
        self._adam_step(p, g, state, lr)


# =============================================================================================
# Weight averaging
# =============================================================================================

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
                shadow = self.shadow[i] = _like(shadow, p.data)   # the model moved or changed
            shadow -= (1.0 - d) * (shadow - p.data)   # = d θ_ema + (1 - d) θ, in place
        self.num_updates += 1

    def apply(self) -> None:
        """Copy the averaged weights into the parameters, keeping the current ones."""
        if self._backup is not None:
            raise RuntimeError("EMA.apply: already applied; call restore() first")
        self._backup = [p.data.copy() for p in self.params]
        for p, shadow in zip(self.params, self.shadow, strict=True):
            p.data[...] = _like(shadow, p.data)

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
            shadow.append(_like(value, p.data))
        decay, num_updates = float(_number(d["decay"])), int(_number(d["num_updates"]))
        self.shadow, self.decay, self.num_updates = shadow, decay, num_updates

    def __repr__(self) -> str:
        return f"EMA(decay={self.decay:g}, {len(self.params)} parameters)"


# =============================================================================================
# Learning-rate schedules
# =============================================================================================

class LRScheduler:
    """Base class of the closed-form schedules: lr = f(base_lr, epoch).

    ``base_lr`` is the optimizer's ``lr`` at construction. The constructor sets ``opt.lr``
    to the value at epoch 0; each ``step()`` advances ``last_epoch`` by one and sets
    ``opt.lr = get_lr()``. Subclasses implement ``get_lr()``, the value at ``last_epoch``.

    ``interval`` says when ``fit`` steps the schedule: ``"epoch"`` (at the end of each epoch,
    the default here) or ``"step"`` (after every optimizer step, ``OneCycleLR``).
    """

    interval = "epoch"
    _state_keys: tuple[str, ...] = ("last_epoch", "base_lr")

    def __init__(self, optimizer: Optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer with an 'lr' "
                            f"attribute, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if not hasattr(self, "base_lr"):
            self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self._set_lr()

    def get_lr(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _set_lr(self) -> None:
        self.optimizer.lr = float(self.get_lr())

    def step(self) -> None:
        """Advance one epoch (one batch for ``OneCycleLR``) and set the optimizer's lr."""
        self.last_epoch += 1
        self._set_lr()

    def state_dict(self) -> dict[str, Any]:
        """The schedule's position and settings, as numbers."""
        return {key: getattr(self, key) for key in self._state_keys}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``'s numbers and set the optimizer's lr to match (all are
        read and checked before any is set)."""
        values = {key: type(getattr(self, key))(_number(d[key])) for key in self._state_keys}
        for key, value in values.items():
            setattr(self, key, value)
        self._set_lr()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.get_lr():g})"


class StepLR(LRScheduler):
    """Decay by ``gamma`` every ``step_size`` epochs: lr = base_lr · γ^⌊epoch / step_size⌋."""

    _state_keys = ("last_epoch", "base_lr", "step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        if int(step_size) < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """Half a cosine from base_lr down to ``eta_min`` over ``T_max`` epochs (PyTorch's closed
    form; SGDR without restarts)::

        lr = η_min + (base_lr - η_min) · (1 + cos(π · epoch / T_max)) / 2

    Past T_max the cosine goes on, so the lr rises again; stop at T_max.
    """

    _state_keys = ("last_epoch", "base_lr", "T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):
        if int(T_max) < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        cos = math.cos(math.pi * self.last_epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1.0 + cos) / 2.0


class LambdaLR(LRScheduler):
    """lr = base_lr · fn(epoch), for any schedule written as a function.

    ``state_dict`` saves the position, not ``fn``: recreate the schedule with the same
    function, then load.
    """

    def __init__(self, optimizer: Optimizer, fn: Callable[[int], float]):
        if not callable(fn):
            raise TypeError(f"LambdaLR: fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        super().__init__(optimizer)

    def get_lr(self) -> float:
        return self.base_lr * float(self.fn(self.last_epoch))


class LinearLR(LRScheduler):
    """Linear change of the lr's factor from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, constant afterwards (PyTorch's LinearLR; a linear warm-up when
    start_factor < 1)::

        lr = base_lr · (start + (end - start) · min(epoch, total_iters) / total_iters)
    """

    _state_keys = ("last_epoch", "base_lr", "start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3.0,
                 end_factor: float = 1.0, total_iters: int = 5):
        if not (0.0 < start_factor <= 1.0 and 0.0 <= end_factor <= 1.0):
            raise ValueError("LinearLR: start_factor must be in (0, 1] and end_factor in "
                             f"[0, 1], got {start_factor}, {end_factor}")
        if int(total_iters) < 1:
            raise ValueError(f"LinearLR: total_iters must be >= 1, got {total_iters}")
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        frac = min(self.last_epoch, self.total_iters) / self.total_iters
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin, 2018), stepped once per *batch* (PyTorch's formula).

    Two phases over ``total_steps`` steps, starting at initial_lr = max_lr / div_factor::

        steps 0 … pct_start·total_steps - 1:   initial_lr → max_lr          (warm-up)
        then … total_steps - 1:                max_lr → initial_lr / final_div_factor

    Each phase anneals with ``anneal_strategy``: ``"cos"``,
    lr = end + (start - end) · (1 + cos(π · pct)) / 2, or ``"linear"``,
    lr = start + (end - start) · pct, where pct is the fraction of the phase done.
    The constructor sets ``opt.lr`` to initial_lr (the optimizer's own lr is not used).
    Stepping past ``total_steps`` raises ValueError.

    With ``cycle_momentum=True`` the momentum (SGD's ``momentum``, Adam's β1) runs the
    opposite way, max_momentum → base_momentum → max_momentum, as in PyTorch, where it is
    on by default; here it is off by default so an optimizer keeps the momentum it was given.
    """

    interval = "step"
    _state_keys = ("last_epoch", "max_lr", "total_steps", "pct_start", "div_factor",
                   "final_div_factor", "base_momentum", "max_momentum")

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int,
                 pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, anneal_strategy: str = "cos",
                 cycle_momentum: bool = False, base_momentum: float = 0.85,
                 max_momentum: float = 0.95):
        if int(total_steps) < 1:
            raise ValueError(f"OneCycleLR: total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError("OneCycleLR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        if cycle_momentum and not (hasattr(optimizer, "momentum")
                                   or hasattr(optimizer, "betas")):
            raise ValueError("OneCycleLR: cycle_momentum needs an optimizer with 'momentum' "
                             "(SGD) or 'betas' (Adam)")
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div_factor = float(div_factor)
        self.final_div_factor = float(final_div_factor)
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = float(base_momentum)
        self.max_momentum = float(max_momentum)
        self.base_lr = self.max_lr / self.div_factor     # initial_lr
        super().__init__(optimizer)

    @property
    def initial_lr(self) -> float:
        return self.max_lr / self.div_factor

    @property
    def min_lr(self) -> float:
        return self.initial_lr / self.final_div_factor

    @property
    def peak_step(self) -> float:
        """The step at which lr = max_lr: pct_start · total_steps - 1 (may be fractional)."""
        return self.pct_start * self.total_steps - 1.0

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)
        return start + (end - start) * pct

    def _phase(self) -> tuple[int, float]:
        """(phase index 0 or 1, fraction of that phase done) at ``last_epoch``."""
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times, but total_steps is "
                             f"{self.total_steps}")
        if step <= self.peak_step:
            start, end, phase = 0.0, self.peak_step, 0
        else:
            start, end, phase = self.peak_step, self.total_steps - 1.0, 1
        span = end - start
        return phase, (step - start) / span if span > 0 else 1.0

    def get_lr(self) -> float:
        phase, pct = self._phase()
        if phase == 0:
            return self._anneal(self.initial_lr, self.max_lr, pct)
        return self._anneal(self.max_lr, self.min_lr, pct)

    def get_momentum(self) -> float:
        """The momentum for the current step (used when ``cycle_momentum`` is on)."""
        phase, pct = self._phase()
        if phase == 0:
            return self._anneal(self.max_momentum, self.base_momentum, pct)
        return self._anneal(self.base_momentum, self.max_momentum, pct)

    def _set_lr(self) -> None:
        super()._set_lr()
        if self.cycle_momentum:
            mom = self.get_momentum()
            if hasattr(self.optimizer, "betas"):
                self.optimizer.betas = (mom, self.optimizer.betas[1])
            else:
                self.optimizer.momentum = mom


class ReduceLROnPlateau:
    """Multiply the lr by ``factor`` when a metric stops improving (PyTorch's semantics).

    Call ``step(metric)`` once per epoch with, e.g., the validation loss. The metric improves
    when it beats the best so far by more than ``threshold``:

    - mode "min", threshold_mode "rel":  metric < best · (1 - threshold)
    - mode "min", threshold_mode "abs":  metric < best - threshold
    - mode "max": metric > best · (1 + threshold)  or  metric > best + threshold

    After more than ``patience`` epochs in a row without improvement, lr = max(lr · factor,
    min_lr) (a change smaller than 1e-8 is skipped), then ``cooldown`` epochs pass during which
    bad epochs are not counted.
    """

    interval = "epoch"
    needs_metric = True  # step(metric): fit passes the monitored History value
    _state_keys = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float = 0.0, eps: float = 1e-8):
        if not hasattr(optimizer, "lr"):
            raise TypeError("ReduceLROnPlateau: expected an optimizer with an 'lr' attribute, "
                            f"got {type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError("ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1), got {factor}")
        if int(patience) < 0 or int(cooldown) < 0:
            raise ValueError("ReduceLROnPlateau: patience and cooldown must be >= 0, got "
                             f"{patience}, {cooldown}")
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor, self.threshold = float(factor), float(threshold)
        self.patience, self.cooldown = int(patience), int(cooldown)
        self.min_lr, self.eps = float(min_lr), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0

    def is_better(self, metric: float, best: float) -> bool:
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return metric < best * (1.0 - self.threshold)
            return metric < best - self.threshold
        if self.threshold_mode == "rel":
            return metric > best * (1.0 + self.threshold)
        return metric > best + self.threshold

    def get_lr(self) -> float:
        return float(self.optimizer.lr)

    def step(self, metric: float) -> None:
        """Record this epoch's metric; reduce the lr if it has plateaued."""
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:        # in cooldown: bad epochs do not count
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            old_lr = float(self.optimizer.lr)
            new_lr = max(old_lr * self.factor, self.min_lr)
            if old_lr - new_lr > self.eps:
                self.optimizer.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._state_keys}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        best, bad = float(_number(d["best"])), int(_number(d["num_bad_epochs"]))
        cooldown, last = int(_number(d["cooldown_counter"])), int(_number(d["last_epoch"]))
        self.best, self.num_bad_epochs, self.cooldown_counter, self.last_epoch = \
            best, bad, cooldown, last

    def __repr__(self) -> str:
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor:g}, "
                f"patience={self.patience}, best={self.best:g}, lr={self.get_lr():g})")
