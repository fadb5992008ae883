"""Callbacks: hooks ``fit`` calls around epochs and steps, and the ``FitState`` they see.

``EarlyStopping``, ``ModelCheckpoint``, ``LearningRateScheduler`` and ``TerminateOnNaN`` (which
``fit`` adds on its own) cover what a run needs; subclass ``Callback`` for more.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..layers.base import Layer
from .checkpoint import save
from .console import write_line
from .history import History

__all__ = ["FitState", "Callback", "NonFiniteLossError", "TerminateOnNaN", "EarlyStopping",
           "ModelCheckpoint", "LearningRateScheduler"]


@dataclass
class FitState:
    """What callbacks can see and change during ``fit`` (as ``self.state``).

    ``stop(reason, by=self)`` ends training after the current step or epoch; ``stopped_by``
    (the stopping callback's class name) and ``diverged`` (the weights are broken: the epoch
    is not recorded) are what code branches on, ``stop_reason`` is the message for people.
    """

    model: Layer
    loss: Any
    optimizer: Any
    train_loader: Any
    val_loader: Any = None
    scheduler: Any = None
    history: History = field(default_factory=History)
    epochs: int = 1
    epoch: int = 0
    steps_per_epoch: int | None = None
    stop_training: bool = False
    stop_reason: str | None = None
    stopped_by: str | None = None
    diverged: bool = False
    verbose: int = 1

    def stop(self, reason: str, by: Any = None, diverged: bool = False) -> None:
        """Stop training, and say why.

        Parameters
        ----------
        reason : str
            The message: printed, and kept in ``history.stop_reason``.
        by : Callback, class or str, optional
            Who stopped: kept as a class name in ``stopped_by`` (and ``history.stopped_by``).
        diverged : bool
            The loss became non-finite: the current epoch is dropped, not recorded.
        """
        if by is not None and not isinstance(by, str):
            by = (by if isinstance(by, type) else type(by)).__name__
        self.stop_training = True
        self.stop_reason, self.stopped_by, self.diverged = reason, by, bool(diverged)
        self.history.stop_reason, self.history.stopped_by = reason, by
        self.history.diverged = bool(diverged)
        if self.verbose:
            write_line(reason)


class Callback:
    """Base class: override the hooks you need. ``self.state`` is the ``FitState``.

    Order of the calls::

        on_train_begin()
        for each epoch:  on_epoch_begin(epoch)
            for each batch:  on_step_end(epoch, step)          right after optimizer.step()
                             on_batch_end(epoch, step, loss)   loss as a float; on the GPU
                                                               delayed by < sync_every steps
            on_epoch_end(epoch, logs)                          logs: the History entry
        on_train_end()

    In data-parallel training (``fit(..., comm=...)``) every rank runs its callbacks, except
    those with ``rank_zero_only = True`` (``ModelCheckpoint``), which run on rank 0 alone;
    set it on a callback that writes files. Messages go through ``console.write_line``.
    """

    state: FitState
    rank_zero_only: bool = False

    def set_state(self, state: FitState) -> None:
        self.state = state

    def on_train_begin(self) -> None: ...
    def on_epoch_begin(self, epoch: int) -> None: ...
    def on_step_end(self, epoch: int, step: int) -> None: ...
    def on_batch_end(self, epoch: int, step: int, loss: float) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None: ...
    def on_train_end(self) -> None: ...


class NonFiniteLossError(FloatingPointError):
    """Raised by ``TerminateOnNaN(raise_error=True)`` when the loss becomes NaN or inf."""


class TerminateOnNaN(Callback):
    """Stop as soon as a batch loss is NaN or ±inf, with a message naming the epoch and step.

    ``fit`` adds one automatically unless ``callbacks`` already holds one. With
    ``raise_error=True`` it raises ``NonFiniteLossError`` instead of stopping quietly. A loss
    with ``check_labels()`` (``CrossEntropyLoss``) is asked first: an out-of-range label on
    the GPU shows up as a NaN loss, and it raises ``ValueError`` naming that label.
    """

    def __init__(self, raise_error: bool = False):
        self.raise_error = raise_error

    def on_batch_end(self, epoch: int, step: int, loss: float) -> None:
        if math.isfinite(loss) or self.state.stop_training:
            return
        # Labels on the GPU are range-checked on the device (no per-step sync): a bad one
        # makes its batch loss NaN, and the loss names it here, a clearer error than ours.
        check_labels = getattr(self.state.loss, "check_labels", None)
        if check_labels is not None:
            check_labels()
        of = f" of {self.state.steps_per_epoch}" if self.state.steps_per_epoch else ""
        message = (f"TerminateOnNaN: the loss became {loss} at epoch {epoch}, step {step}{of}; "
                   f"training stopped (the weights are no longer usable). Try a lower learning "
                   f"rate (it was {float(self.state.optimizer.lr):g}), check that the inputs "
                   f"are normalised, or add BatchNorm.")
        if self.raise_error:
            raise NonFiniteLossError(message)
        self.state.stop(message, by=self, diverged=True)


def _resolve_monitor(monitor: str | None, logs: dict[str, Any], owner: str,
                     state: FitState | None = None) -> str:
    """``monitor``, or val_loss/loss when None; a clear error when the key has no value.

    The default is val_loss when ``fit`` has validation data (``state.val_loader``) or the
    logs have a val_loss. A val_* monitor without a value is an error only where no epoch
    is validated: with ``fit(validation_freq=n)`` the epochs in between have none, and
    ``_unvalidated`` tells the callbacks to skip them.
    """
    if monitor is None:
        return "val_loss" if _has_validation(state, logs) else "loss"
    if logs.get(monitor) is None and not (_has_validation(state, logs)
                                          and monitor.startswith("val_")):
        available = [k for k, v in logs.items() if v is not None]
        raise ValueError(f"{owner}: monitor={monitor!r} has no value this epoch (no validation "
                         f"data?); available: {available}")
    return monitor


def _has_validation(state: FitState | None, logs: dict[str, Any]) -> bool:
    """Whether the run validates: ``fit`` got validation data, or these logs have a score."""
    return getattr(state, "val_loader", None) is not None or logs.get("val_loss") is not None


def _unvalidated(key: str, logs: dict[str, Any]) -> bool:
    """An epoch that ``fit(validation_freq=...)`` did not validate, for a val_* monitor."""
    return key.startswith("val_") and logs.get(key) is None


def _mode_for(monitor: str, mode: str) -> str:
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    return mode


class _Monitor(Callback):
    """Shared bookkeeping: the best value of a metric so far and whether it just improved."""

    def __init__(self, monitor: str | None, mode: str, min_delta: float):
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best: float | None = None
        self.best_epoch: int | None = None

    def _improved(self, epoch: int, logs: dict[str, Any]) -> bool | None:
        """Whether ``monitor`` improved this epoch; None if it has no value (not validated)."""
        key = _resolve_monitor(self.monitor, logs, type(self).__name__,
                               getattr(self, "state", None))
        self.monitor = key
        if _unvalidated(key, logs):
            return None
        value = float(logs[key])
        mode = _mode_for(key, self.mode)
        better = (self.best is None or
                  (value < self.best - self.min_delta if mode == "min"
                   else value > self.best + self.min_delta))
        if better:
            self.best, self.best_epoch = value, epoch
        return better


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Parameters
    ----------
    monitor : str, optional
        A History key; default "val_loss" (or "loss" without validation data).
    mode : "auto", "min" or "max"
        "auto": max for accuracies, min otherwise.
    restore_best_weights : bool
        At the end of training, put back the parameters and buffers of the best epoch.
    """

    def __init__(self, monitor: str | None = None, patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False):
        super().__init__(monitor, mode, min_delta)
        self.patience = int(patience)
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch: int | None = None
        self._best_weights: dict[str, Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        improved = self._improved(epoch, logs)
        if improved is None:
            return                      # not validated this epoch: patience waits too
        if improved:
            self.wait = 0
            if self.restore_best_weights:  # copies: training goes on updating in place
                self._best_weights = {k: v.copy()
                                      for k, v in self.state.model.state_dict().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.state.stop(f"EarlyStopping: {self.monitor} has not improved for {self.wait} "
                            f"epochs (best {self.best:.4g} at epoch {self.best_epoch}); "
                            f"stopped after epoch {epoch}.", by=self)

    def on_train_end(self) -> None:
        if self.restore_best_weights and self._best_weights is not None:
            self.state.model.load_state_dict(self._best_weights)


class ModelCheckpoint(_Monitor):
    """Save a checkpoint (``save``) at the end of an epoch: the best one so far, or every one.

    Parameters
    ----------
    path : str
        May contain ``{epoch}`` and History keys, e.g. ``"ckpt-{epoch:03d}.npz"``.
    monitor, mode, min_delta : as in ``EarlyStopping`` (default monitor "val_acc" when there
        is validation data, else "loss").
    save_best_only : bool
        Save only when ``monitor`` improved; otherwise after every epoch.
    **meta
        Extra JSON-serialisable values stored in every checkpoint.

    The checkpoint holds the optimizer, scheduler and data-loader RNG states too, so training
    can be resumed from it exactly. In data-parallel training only rank 0 writes
    (``rank_zero_only``).
    """

    rank_zero_only = True

    def __init__(self, path: str | os.PathLike, monitor: str | None = None, mode: str = "auto",
                 save_best_only: bool = True, min_delta: float = 0.0, **meta: Any):
        super().__init__(monitor, mode, min_delta)
        self.path = str(path)
        self.save_best_only = save_best_only
        self.meta = meta
        self.last_path: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.monitor is None:
            has_val = _has_validation(getattr(self, "state", None), logs)
            self.monitor = "val_acc" if has_val else "loss"
        if not self._improved(epoch, logs) and self.save_best_only:
            return                      # no better, or not validated this epoch (None)
        values = {k: v for k, v in logs.items() if v is not None}
        path = self.path.format(epoch=epoch, **values)
        s = self.state
        save(path, s.model, s.optimizer, scheduler=s.scheduler, loader=s.train_loader,
             epoch=epoch, history=s.history, **self.meta)
        self.last_path = path


class LearningRateScheduler(Callback):
    """Step a learning-rate schedule from ``minicnn.optim`` when the schedule says.

    Each schedule declares its own ``interval``: ``"step"`` (``OneCycleLR``: after every
    optimizer step) or ``"epoch"`` (StepLR, CosineAnnealingLR, ...: at the end of each epoch).
    A schedule that reacts to a metric (``needs_metric = True``: ``ReduceLROnPlateau``) gets
    ``logs[monitor]`` at the end of each epoch (default val_loss, or loss without validation
    data). ``interval=`` overrides the schedule's own: "step" (or "batch") or "epoch" (or
    "plateau", kept as an older name).

    ``fit(..., scheduler=s)`` wraps ``s`` in this callback.
    """

    _ALIASES = {"batch": "step", "plateau": "epoch"}

    def __init__(self, scheduler: Any, interval: str = "auto", monitor: str | None = None):
        if interval == "auto":
            interval = getattr(scheduler, "interval", "epoch")
        interval = self._ALIASES.get(interval, interval)
        if interval not in ("step", "epoch"):
            raise ValueError(f"LearningRateScheduler: interval must be 'auto', 'step' ('batch') "
                             f"or 'epoch', got {interval!r}")
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor
        self.needs_metric = bool(getattr(scheduler, "needs_metric", False))
        if self.needs_metric and interval == "step":
            raise ValueError(f"LearningRateScheduler: {type(scheduler).__name__} steps on a "
                             f"metric, which exists once per epoch: use interval='epoch'")

    def on_step_end(self, epoch: int, step: int) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.interval != "epoch":
            return
        if self.needs_metric:
            key = _resolve_monitor(self.monitor, logs, "LearningRateScheduler",
                                   getattr(self, "state", None))
            if not _unvalidated(key, logs):          # no metric this epoch: no step
                self.scheduler.step(logs[key])
        else:
            self.scheduler.step()
