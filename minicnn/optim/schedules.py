"""Learning-rate schedules: they set the optimizer's plain attribute ``opt.lr``.

Closed forms lr = f(base_lr, epoch), PyTorch's formulas: ``StepLR``, ``CosineAnnealingLR``,
``LambdaLR``, ``LinearLR``; the per-batch ``OneCycleLR``; and ``ReduceLROnPlateau``, which
reacts to a metric. ``fit(..., scheduler=s)`` steps them when their ``interval`` says
(``minicnn.training.LearningRateScheduler``).

Tests: tests/test_optim.py
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from .optimizer import Optimizer, as_number

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "LambdaLR", "LinearLR",
           "OneCycleLR", "ReduceLROnPlateau"]


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
        values = {key: type(getattr(self, key))(as_number(d[key])) for key in self._state_keys}
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
        best, bad = float(as_number(d["best"])), int(as_number(d["num_bad_epochs"]))
        cooldown, last = int(as_number(d["cooldown_counter"])), int(as_number(d["last_epoch"]))
        self.best, self.num_bad_epochs, self.cooldown_counter, self.last_epoch = \
            best, bad, cooldown, last

    def __repr__(self) -> str:
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor:g}, "
                f"patience={self.patience}, best={self.best:g}, lr={self.get_lr():g})")
