"""Training: ``fit``, ``evaluate``, the ``History``, callbacks, checkpoints, transfer learning.

The whole training loop is the four lines of the lectures, repeated::

    logits = model.forward(x)                  # forward pass
    loss = loss_fn.forward(logits, y)          # mean cross-entropy of the batch
    model.backward(loss_fn.backward())         # every layer fills its .grad
    optimizer.step()                           # θ ← θ - γ · update(∇θ)

``fit`` adds what a real run needs around it: a progress bar, per-epoch metrics in a
Keras-shaped ``History``, validation, callbacks (early stopping, best checkpoints, learning
rate schedules, a NaN guard) and exact resumption from a checkpoint.

On the GPU, reading a number back (``float(loss)``) waits for the device. So the loop keeps
the batch losses and correct counts on the device and reads them every ``sync_every``
steps (every step on the CPU, where reading is free).

Epochs are counted from 1 in messages, callbacks and ``History.epoch``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import tempfile
import time
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import init as initializers
from .backend import get_array_module, get_xp, to_numpy
from .layers.base import Layer, Parameter
from .layers.container import Sequential

__all__ = [
    "History", "fit", "evaluate", "predict",
    "Callback", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler", "TerminateOnNaN",
    "NonFiniteLossError", "FitState",
    "save", "load", "Checkpoint", "named_parameters", "named_buffers",
    "freeze", "unfreeze", "replace_head",
]

HISTORY_KEYS = ("loss", "acc", "val_loss", "val_acc", "lr", "time")
CHECKPOINT_FORMAT = "minicnn-checkpoint-1"


# -- History -----------------------------------------------------------------------------------

class History:
    """Per-epoch metrics, shaped like Keras' ``History``.

    Attributes
    ----------
    history : dict[str, list]
        ``loss``, ``acc`` (training, averaged over the epoch's batches as they were trained),
        ``val_loss``, ``val_acc`` (None when there is no validation data), ``lr`` (the learning
        rate at the start of the epoch) and ``time`` (seconds) -> one entry per epoch.
    epoch : list[int]
        The epoch numbers (1-based; a resumed run continues the count).
    stop_reason : str or None
        Why training stopped early (early stopping, a NaN loss), None if it ran to the end.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[Any]] = {key: [] for key in HISTORY_KEYS}
        self.epoch: list[int] = []
        self.stop_reason: str | None = None

    def append(self, epoch: int, logs: dict[str, Any]) -> None:
        self.epoch.append(int(epoch))
        for key in HISTORY_KEYS:
            value = logs.get(key)
            self.history[key].append(None if value is None else float(value))

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, key: str) -> list[Any]:
        return self.history[key]

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epoch), "history": copy.deepcopy(self.history),
                "stop_reason": self.stop_reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        h = cls()
        h.epoch = [int(e) for e in d.get("epoch", [])]
        for key, values in d.get("history", {}).items():
            h.history[key] = list(values)
        h.stop_reason = d.get("stop_reason")
        return h

    def save_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON (None for a missing value, never NaN)."""
        _atomic_write(path, lambda f: f.write(json.dumps(self.to_dict(), indent=1).encode()))

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> History:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def __repr__(self) -> str:
        if not self.epoch:
            return "History(no epochs)"
        last = {k: v[-1] for k, v in self.history.items() if v and v[-1] is not None}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items())
        return f"History({len(self)} epochs; last: {shown})"


# -- callbacks ---------------------------------------------------------------------------------

@dataclass
class FitState:
    """What callbacks can see and change during ``fit`` (as ``self.state``).

    Setting ``stop_training = True`` (with a ``stop_reason``) ends training after the current
    step or epoch.
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
    verbose: int = 1

    def stop(self, reason: str) -> None:
        """Stop training, and say why (printed, and kept in ``history.stop_reason``)."""
        self.stop_training = True
        self.stop_reason = reason
        self.history.stop_reason = reason
        if self.verbose:
            _write(reason)


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
    """

    state: FitState

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
    ``raise_error=True`` it raises ``NonFiniteLossError`` instead of stopping quietly.
    """

    def __init__(self, raise_error: bool = False):
        self.raise_error = raise_error

    def on_batch_end(self, epoch: int, step: int, loss: float) -> None:
        if math.isfinite(loss) or self.state.stop_training:
            return
        of = f" of {self.state.steps_per_epoch}" if self.state.steps_per_epoch else ""
        message = (f"TerminateOnNaN: the loss became {loss} at epoch {epoch}, step {step}{of}; "
                   f"training stopped (the weights are no longer usable). Try a lower learning "
                   f"rate (it was {float(self.state.optimizer.lr):g}), check that the inputs "
                   f"are normalised, or add BatchNorm.")
        if self.raise_error:
            raise NonFiniteLossError(message)
        self.state.stop(message)


def _resolve_monitor(monitor: str | None, logs: dict[str, Any], owner: str) -> str:
    """``monitor``, or val_loss/loss when None; a clear error when the key has no value."""
    if monitor is None:
        return "val_loss" if logs.get("val_loss") is not None else "loss"
    if logs.get(monitor) is None:
        available = [k for k, v in logs.items() if v is not None]
        raise ValueError(f"{owner}: monitor={monitor!r} has no value this epoch (no validation "
                         f"data?); available: {available}")
    return monitor


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

    def _improved(self, epoch: int, logs: dict[str, Any]) -> bool:
        key = _resolve_monitor(self.monitor, logs, type(self).__name__)
        self.monitor = key
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
        self._best_weights: list[Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self._improved(epoch, logs):
            self.wait = 0
            if self.restore_best_weights:
                self._best_weights = _snapshot(self.state.model)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.state.stop(f"EarlyStopping: {self.monitor} has not improved for {self.wait} "
                            f"epochs (best {self.best:.4g} at epoch {self.best_epoch}); "
                            f"stopped after epoch {epoch}.")

    def on_train_end(self) -> None:
        if self.restore_best_weights and self._best_weights is not None:
            _restore(self.state.model, self._best_weights)


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
    can be resumed from it exactly.
    """

    def __init__(self, path: str | os.PathLike, monitor: str | None = None, mode: str = "auto",
                 save_best_only: bool = True, min_delta: float = 0.0, **meta: Any):
        super().__init__(monitor, mode, min_delta)
        self.path = str(path)
        self.save_best_only = save_best_only
        self.meta = meta
        self.last_path: str | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.monitor is None:
            self.monitor = "val_acc" if logs.get("val_acc") is not None else "loss"
        if not self._improved(epoch, logs) and self.save_best_only:
            return
        values = {k: v for k, v in logs.items() if v is not None}
        path = self.path.format(epoch=epoch, **values)
        s = self.state
        save(path, s.model, s.optimizer, scheduler=s.scheduler, loader=s.train_loader,
             epoch=epoch, history=s.history, **self.meta)
        self.last_path = path


class LearningRateScheduler(Callback):
    """Step a learning-rate schedule from ``minicnn.optim`` at the right time.

    - ``OneCycleLR`` (or ``interval="batch"``): after every optimizer step;
    - ``ReduceLROnPlateau``: at the end of each epoch, with ``monitor`` (default val_loss,
      or loss without validation data);
    - any other schedule (StepLR, CosineAnnealingLR, ...): at the end of each epoch.

    ``fit(..., scheduler=s)`` wraps ``s`` in this callback.
    """

    def __init__(self, scheduler: Any, interval: str = "auto", monitor: str | None = None):
        name = type(scheduler).__name__
        if interval == "auto":
            if name == "ReduceLROnPlateau":
                interval = "plateau"
            elif name == "OneCycleLR" or getattr(scheduler, "per_batch", False):
                interval = "batch"
            else:
                interval = "epoch"
        if interval not in ("batch", "epoch", "plateau"):
            raise ValueError(f"LearningRateScheduler: interval must be 'auto', 'batch', 'epoch' "
                             f"or 'plateau', got {interval!r}")
        self.scheduler, self.interval, self.monitor = scheduler, interval, monitor

    def on_step_end(self, epoch: int, step: int) -> None:
        if self.interval == "batch":
            self.scheduler.step()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.interval == "epoch":
            self.scheduler.step()
        elif self.interval == "plateau":
            key = _resolve_monitor(self.monitor, logs, "LearningRateScheduler")
            self.scheduler.step(logs[key])


# -- the loop ----------------------------------------------------------------------------------

def _write(message: str) -> None:
    """Print a line without breaking a tqdm bar that may be on screen."""
    try:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stdout)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(message, flush=True)


def _accuracy_count(logits: Any, y: Any) -> Any:
    """Number of correct predictions, as a 0-d array on the device (no sync)."""
    labels = y if y.ndim == 1 else y.argmax(axis=1)  # soft targets: their top class
    return (logits.argmax(axis=1) == labels).sum()


class _Meter:
    """Device-side running sums of one epoch, read back every ``sync_every`` steps."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Any, int]] = []  # (loss, correct, batch size) per step
        self.first_pending_step = 1
        self.loss_sum = 0.0
        self.correct = 0
        self.seen = 0

    def add(self, loss: Any, correct: Any, n: int) -> None:
        self.pending.append((loss, correct, n))

    def flush(self) -> list[tuple[int, float]]:
        """Read the pending values from the device; returns [(step, loss), ...]."""
        if not self.pending:
            return []
        xp = get_array_module(self.pending[0][0])
        losses = to_numpy(xp.stack([p[0] for p in self.pending])).astype(np.float64)
        correct = to_numpy(xp.stack([p[1] for p in self.pending]))
        sizes = np.array([p[2] for p in self.pending])
        # Averaged per sample, so a smaller last batch weighs less.
        self.loss_sum += float((losses * sizes).sum())
        self.correct += int(correct.sum())
        self.seen += int(sizes.sum())
        steps = range(self.first_pending_step, self.first_pending_step + len(self.pending))
        self.first_pending_step += len(self.pending)
        self.pending = []
        return list(zip(steps, losses.tolist(), strict=True))

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        return self.correct / max(self.seen, 1)


def _format_logs(epoch: int, epochs: int, logs: dict[str, Any], images_per_s: float) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"loss {logs['loss']:.4f}", f"acc {logs['acc']:.2%}"]
    if logs.get("val_loss") is not None:
        parts += [f"val_loss {logs['val_loss']:.4f}", f"val_acc {logs['val_acc']:.2%}"]
    parts += [f"lr {logs['lr']:.3g}", f"{logs['time']:.1f}s ({images_per_s:,.0f} img/s)"]
    return " - ".join(parts)


def fit(model: Layer, loss: Any, optimizer: Any, train_loader: Iterable, val_loader:
        Iterable | None = None, epochs: int = 1, scheduler: Any = None,
        callbacks: Sequence[Callback] = (), verbose: int = 1, initial_epoch: int = 0,
        history: History | None = None, sync_every: int | None = None) -> History:
    """Train ``model`` for epochs ``initial_epoch + 1 .. epochs``; return the ``History``.

    Parameters
    ----------
    model : Layer
    loss : loss object
        E.g. ``CrossEntropyLoss()``: ``forward(logits, y)`` returns the mean batch loss,
        ``backward()`` returns dL/dlogits.
    optimizer : optimizer from ``minicnn.optim``
    train_loader, val_loader : iterables of (x, y) batches (``minicnn.data.DataLoader``)
    epochs : int
        The epoch to stop after (the total, as in Keras: resuming with ``initial_epoch=3``,
        ``epochs=10`` trains 7 more).
    scheduler : a schedule from ``minicnn.optim``, optional
        Stepped at the right time (see ``LearningRateScheduler``).
    callbacks : sequence of Callback
        A ``TerminateOnNaN`` is added unless one is given.
    verbose : 0, 1 or 2
        0 quiet; 1 a progress bar per epoch (running loss, accuracy, images/s) and a summary
        line; 2 the summary line only (for log files).
    initial_epoch, history
        To resume: the epoch already done and its History (from ``load``).
    sync_every : int, optional
        Read losses back from the device every this many steps (default: 1 on the CPU, 20 on
        the GPU).
    """
    history = history if history is not None else History()
    try:
        steps_per_epoch: int | None = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    state = FitState(model, loss, optimizer, train_loader, val_loader, scheduler, history,
                     int(epochs), int(initial_epoch), steps_per_epoch, verbose=verbose)
    all_callbacks: list[Callback] = []
    if scheduler is not None:  # first, so a checkpoint taken at epoch end sees the new lr
        all_callbacks.append(LearningRateScheduler(scheduler))
    if not any(isinstance(c, TerminateOnNaN) for c in callbacks):
        all_callbacks.append(TerminateOnNaN())
    all_callbacks += list(callbacks)
    for c in all_callbacks:
        c.set_state(state)
        c.on_train_begin()

    with _no_input_grad(model):
        for epoch in range(int(initial_epoch) + 1, int(epochs) + 1):
            state.epoch = epoch
            lr = float(optimizer.lr)
            _train_mode(model)
            for c in all_callbacks:
                c.on_epoch_begin(epoch)
            meter = _Meter()
            bar = _progress_bar(verbose == 1, steps_per_epoch, f"epoch {epoch}/{epochs}")
            every = sync_every
            start = time.perf_counter()
            for step, (x, y) in enumerate(train_loader, start=1):
                logits = model.forward(x)
                batch_loss = loss.forward(logits, y)
                model.backward(loss.backward())
                optimizer.step()
                meter.add(batch_loss, _accuracy_count(logits, y), int(x.shape[0]))
                for c in all_callbacks:
                    c.on_step_end(epoch, step)
                if every is None:
                    every = 1 if get_array_module(x) is np else 20
                if step % every == 0 or step == steps_per_epoch:
                    _flush(meter, all_callbacks, epoch, bar, start, state)
                if state.stop_training:
                    break
            _flush(meter, all_callbacks, epoch, bar, start, state)
            if bar is not None:
                bar.close()
            if state.stop_training and state.stop_reason and state.stop_reason.startswith(
                    "TerminateOnNaN"):
                break  # the epoch is not finished and its weights are broken: record nothing
            logs: dict[str, Any] = {"loss": meter.loss, "acc": meter.acc, "val_loss": None,
                                    "val_acc": None, "lr": lr}
            train_time = time.perf_counter() - start
            if val_loader is not None:
                val = evaluate(model, val_loader, loss)
                logs["val_loss"], logs["val_acc"] = val["loss"], val["acc"]
            logs["time"] = time.perf_counter() - start
            history.append(epoch, logs)
            if verbose:
                _write(_format_logs(epoch, epochs, logs, meter.seen / max(train_time, 1e-9)))
            for c in all_callbacks:
                c.on_epoch_end(epoch, logs)
            if state.stop_training:
                break
    for c in all_callbacks:
        c.on_train_end()
    return history


@contextlib.contextmanager
def _no_input_grad(model: Layer) -> Iterator[None]:
    """Switch off dL/dx of the layer that sees the images (no one needs it) while fitting."""
    first = model
    while isinstance(first, Sequential) and first.layers:
        first = first.layers[0]
    switch = getattr(first, "input_grad", False) is True
    if switch:
        first.input_grad = False
    try:
        yield
    finally:
        if switch:
            first.input_grad = True


def _train_mode(model: Layer) -> None:
    """Training mode, except for frozen normalisation layers: a BatchNorm whose parameters
    are all frozen keeps using (and keeping) its running statistics, as in Keras."""
    model.train()
    for m in model.modules():
        params = m.parameters()
        if getattr(m, "_buffer_names", ()) and params and \
                not any(p.requires_grad for p in params):
            m.eval()


def _progress_bar(enabled: bool, total: int | None, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                file=sys.stdout)


def _flush(meter: _Meter, callbacks: list[Callback], epoch: int, bar: Any, start: float,
           state: FitState) -> None:
    """Read the device-side values; run the per-batch callbacks; update the bar."""
    done = meter.flush()
    for step, value in done:
        if state.stop_training:
            break  # e.g. the NaN guard fired on an earlier step of this read-back
        for c in callbacks:
            c.on_batch_end(epoch, step, value)
    if bar is not None and done:
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(f"loss {meter.loss:.4f}, acc {meter.acc:.2%}, "
                            f"{meter.seen / elapsed:,.0f} img/s", refresh=False)
        bar.update(len(done))


def evaluate(model: Layer, loader: Iterable, loss: Any = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``loader``, in eval mode.

    The model's modes are restored afterwards. ``loss`` defaults to ``CrossEntropyLoss()``.
    Returns ``{"loss": ..., "acc": ...}``.
    """
    if loss is None:
        from .losses import CrossEntropyLoss

        loss = CrossEntropyLoss()
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    meter = _Meter()
    try:
        for x, y in loader:
            logits = model.forward(x)
            meter.add(loss.forward(logits, y), _accuracy_count(logits, y), int(x.shape[0]))
        meter.flush()  # one read-back at the end
    finally:
        for m, mode in modes:
            m.training = mode
    if meter.seen == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    return {"loss": meter.loss, "acc": meter.acc}


def predict(model: Layer, data: Any, batch_size: int = 256) -> Any:
    """The model's logits, as NumPy, in eval mode.

    ``data`` is an array (N, C, H, W) (float32 NumPy, fed in batches) -> logits (N, K); or a
    loader of (x, y) batches -> (logits (N, K), labels (N,)).
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if hasattr(data, "shape"):
            xp = get_xp()
            out = [to_numpy(model.forward(xp.asarray(data[i:i + batch_size], dtype=np.float32)))
                   for i in range(0, len(data), batch_size)]
            return np.concatenate(out)
        logits, labels = [], []
        for x, y in data:
            logits.append(to_numpy(model.forward(x)))
            labels.append(to_numpy(y))
        return np.concatenate(logits), np.concatenate(labels)
    finally:
        for m, mode in modes:
            m.training = mode


# -- checkpoints -------------------------------------------------------------------------------

def _named(layer: Layer, prefix: str = "") -> Iterable[tuple[str, Any, str, Layer]]:
    """(dotted name, value, attribute, owner) of every Parameter and buffer, in model order.

    Names follow the attributes, e.g. ``layers.0.W``, ``layers.3.body.layers.1.running_mean``.
    The order is that of ``Layer.parameters()``.
    """
    for key, value in vars(layer).items():
        if isinstance(value, Parameter):
            yield prefix + key, value, key, layer
        elif isinstance(value, Layer):
            yield from _named(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, Layer):
                    yield from _named(v, f"{prefix}{key}.{i}.")
    for name in getattr(layer, "_buffer_names", ()):
        yield prefix + name, getattr(layer, name), name, layer


def named_parameters(model: Layer) -> list[tuple[str, Parameter]]:
    """``(name, Parameter)`` pairs in ``model.parameters()`` order."""
    return [(n, v) for n, v, _, _ in _named(model) if isinstance(v, Parameter)]


def named_buffers(model: Layer) -> list[tuple[str, Any]]:
    """``(name, array)`` pairs of the non-trainable state (BatchNorm running statistics)."""
    return [(n, v) for n, v, attr, owner in _named(model)
            if attr in getattr(owner, "_buffer_names", ()) and not isinstance(v, Parameter)]


def _generators(obj: Any, prefix: str, depth: int = 3) -> list[tuple[str, np.random.Generator]]:
    """NumPy generators held by ``obj`` (a loader, its transforms, a model's Dropout layers)."""
    if isinstance(obj, Layer):
        return [(f"{prefix}{i}.{k}", v) for i, m in enumerate(obj.modules())
                for k, v in vars(m).items() if isinstance(v, np.random.Generator)]
    found: list[tuple[str, np.random.Generator]] = []
    if isinstance(obj, np.random.Generator):
        return [(prefix.rstrip("."), obj)]
    if depth == 0 or obj is None or isinstance(
            obj, (np.ndarray, str, bytes, int, float, type, types.ModuleType, types.FunctionType)):
        return found
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += _generators(v, f"{prefix}{i}.", depth - 1)
        return found
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in vars(obj).items():
            if hasattr(v, "shape") and not isinstance(v, np.random.Generator):
                continue  # arrays (the dataset itself): nothing to look for there
            found += _generators(v, f"{prefix}{k}.", depth - 1)
    return found


def _rng_states(model: Layer, loader: Any) -> dict[str, Any]:
    states = {"init": initializers.get_rng().bit_generator.state}
    for name, g in _generators(model, "model.") + _generators(loader, "loader."):
        states[name] = g.bit_generator.state
    return states


def _restore_rngs(states: dict[str, Any], model: Layer, loader: Any) -> None:
    if "init" in states:
        initializers.get_rng().bit_generator.state = states["init"]
    for name, g in _generators(model, "model.") + _generators(loader, "loader."):
        if name in states:
            g.bit_generator.state = states[name]


def _atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: never a half file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_array(value: Any) -> np.ndarray:
    """A 0-d str array holding JSON: loads with ``allow_pickle=False``."""
    return np.array(json.dumps(value))


def save(path: str | os.PathLike, model: Layer, optimizer: Any = None, *, scheduler: Any = None,
         loader: Any = None, epoch: int | None = None, history: History | None = None,
         **meta: Any) -> None:
    """Write a checkpoint ``.npz`` (readable with ``allow_pickle=False``), atomically.

    Contents: every parameter (``param/<name>``) and buffer (``buffer/<name>``), the
    optimizer's and the scheduler's ``state_dict()`` (``optim/...``, ``sched/...``), and JSON
    strings for the epoch, the model config (``model.config``, to rebuild it), the History,
    the RNG states (initialiser, Dropout layers, and the loader's shuffling/augmentation
    generators when ``loader`` is given) and any extra ``meta`` (JSON-serialisable).
    """
    arrays: dict[str, np.ndarray] = {}
    for name, p in named_parameters(model):
        arrays[f"param/{name}"] = to_numpy(p.data)
    for name, value in named_buffers(model):
        if value is not None:
            arrays[f"buffer/{name}"] = to_numpy(value)
    for prefix, obj in (("optim", optimizer), ("sched", scheduler)):
        if obj is not None:
            for key, value in obj.state_dict().items():
                arrays[f"{prefix}/{key}"] = np.asarray(to_numpy(value))
    info = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "config": getattr(model, "config", None),
        "optimizer": None if optimizer is None else type(optimizer).__name__,
        "scheduler": None if scheduler is None else type(scheduler).__name__,
        "history": None if history is None else history.to_dict(),
        "meta": meta,
    }
    arrays["info"] = _json_array(info)
    arrays["rng"] = _json_array(_rng_states(model, loader))
    _atomic_write(path, lambda f: np.savez(f, **arrays))


@dataclass
class Checkpoint:
    """What ``load`` returns: the model (built from the config if none was given) and the
    run's metadata."""

    model: Layer
    epoch: int | None
    history: History | None
    config: dict[str, Any] | None
    meta: dict[str, Any]


def _shape_error(path: str, what: str, name: str, saved: tuple, have: tuple) -> ValueError:
    return ValueError(f"load({path!r}): the checkpoint does not fit this model: {what} "
                      f"{name!r} has shape {saved} in the checkpoint but {have} in the model")


def load(path: str | os.PathLike, model: Layer | None = None, optimizer: Any = None, *,
         scheduler: Any = None, loader: Any = None, restore_rng: bool = True) -> Checkpoint:
    """Read a checkpoint written by ``save`` into ``model`` (and optimizer, scheduler, loader).

    With ``model=None`` the model is rebuilt from the config saved with it
    (``minicnn.models.build``). Everything is checked before anything is changed: a model of
    another shape raises ValueError naming the first mismatching parameter. Arrays go to the
    device and dtype of the model's current parameters.

    Returns a ``Checkpoint``: pass ``initial_epoch=ckpt.epoch, history=ckpt.history`` to
    ``fit`` to continue exactly where the saved run stopped.
    """
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    if "info" not in data:
        raise ValueError(f"load({path!r}): not a minicnn checkpoint (no 'info' entry)")
    info = json.loads(str(data["info"]))
    if model is None:
        if not info.get("config"):
            raise ValueError(f"load({path!r}): the checkpoint has no model config; build the "
                             f"model yourself and pass it as load(path, model)")
        from .models import build

        model = build(**info["config"])

    # Check everything first, so that a failed load leaves the model untouched.
    params = named_parameters(model)
    buffers = named_buffers(model)
    saved_params = [k[len("param/"):] for k in data if k.startswith("param/")]
    for name, p in params:
        key = f"param/{name}"
        if key not in data:
            raise ValueError(f"load({path!r}): the checkpoint does not fit this model: it has no "
                             f"parameter {name!r} (model: {len(params)} parameters, checkpoint: "
                             f"{len(saved_params)})")
        if tuple(data[key].shape) != p.shape:
            raise _shape_error(path, "parameter", name, tuple(data[key].shape), p.shape)
    model_names = {n for n, _ in params}
    extra = [n for n in saved_params if n not in model_names]
    if extra:
        raise ValueError(f"load({path!r}): the checkpoint does not fit this model: parameter "
                         f"{extra[0]!r} is not in the model (model: {len(params)} parameters, "
                         f"checkpoint: {len(saved_params)})")
    for name, value in buffers:
        key = f"buffer/{name}"
        if key in data and value is not None and tuple(data[key].shape) != tuple(value.shape):
            raise _shape_error(path, "buffer", name, tuple(data[key].shape), tuple(value.shape))
    if optimizer is not None and info.get("optimizer") not in (None, type(optimizer).__name__):
        raise ValueError(f"load({path!r}): the checkpoint holds {info['optimizer']} state, but "
                         f"the optimizer is {type(optimizer).__name__}")

    for name, p in params:
        xp = get_array_module(p.data)
        p.data = xp.asarray(data[f"param/{name}"], dtype=p.data.dtype)
        p.grad = None
    owners = {n: (owner, attr) for n, _, attr, owner in _named(model)}
    for name, value in buffers:
        key = f"buffer/{name}"
        if key in data:
            owner, attr = owners[name]
            xp = get_xp() if value is None else get_array_module(value)
            dtype = None if value is None else value.dtype
            setattr(owner, attr, xp.asarray(data[key], dtype=dtype))
    for prefix, obj in (("optim", optimizer), ("sched", scheduler)):
        if obj is not None:
            state = {k[len(prefix) + 1:]: v for k, v in data.items() if k.startswith(prefix + "/")}
            if not state:
                raise ValueError(f"load({path!r}): the checkpoint has no "
                                 f"{'optimizer' if prefix == 'optim' else 'scheduler'} state")
            obj.load_state_dict(state)
    if restore_rng and "rng" in data:
        _restore_rngs(json.loads(str(data["rng"])), model, loader)
    history = None if info.get("history") is None else History.from_dict(info["history"])
    return Checkpoint(model, info.get("epoch"), history, info.get("config"),
                      info.get("meta") or {})


# -- transfer learning -------------------------------------------------------------------------

def _snapshot(model: Layer) -> list[Any]:
    return [p.data.copy() for p in model.parameters()] + \
           [None if v is None else v.copy() for _, v in named_buffers(model)]


def _restore(model: Layer, snapshot: list[Any]) -> None:
    params = model.parameters()
    for p, value in zip(params, snapshot[:len(params)], strict=True):
        p.data = value
    owners = {n: (owner, attr) for n, _, attr, owner in _named(model)}
    for (name, _), value in zip(named_buffers(model), snapshot[len(params):], strict=True):
        owner, attr = owners[name]
        setattr(owner, attr, value)


def freeze(*layers: Layer) -> int:
    """Freeze the parameters of ``layers``: optimizers skip them. Returns how many.

    The backward pass still runs through frozen layers (earlier layers may need dx); only
    the update is skipped. During ``fit``, a frozen BatchNorm also runs in inference mode: it
    normalises with, and keeps, its running statistics (Keras' behaviour for fine-tuning).
    """
    params = [p for layer in layers for p in layer.parameters()]
    for p in params:
        p.requires_grad = False
    return len(params)


def unfreeze(*layers: Layer) -> int:
    """Make the parameters of ``layers`` trainable again. Returns how many."""
    params = [p for layer in layers for p in layer.parameters()]
    for p in params:
        p.requires_grad = True
    return len(params)


def replace_head(model: Layer, num_classes: int, init: str = "glorot_uniform") -> Layer:
    """Replace the last ``Linear`` of a ``Sequential`` by a fresh one with ``num_classes``
    outputs (same inputs); return the new layer.

    Typical transfer learning: ``replace_head(model, 5); freeze(*model[:-1])``; then create
    the optimizer (it must see the new head's parameters).
    """
    from .layers import Linear, Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"replace_head: expected a Sequential model, got {type(model).__name__}")
    for i in range(len(model.layers) - 1, -1, -1):
        old = model.layers[i]
        if isinstance(old, Linear):
            head = Linear(old.in_features, int(num_classes), bias=old.b is not None, init=init)
            model.layers[i] = head
            config = getattr(model, "config", None)
            if config and "num_classes" in config.get("kwargs", {}):
                config["kwargs"]["num_classes"] = int(num_classes)
            return head
    raise ValueError("replace_head: the model has no Linear layer to replace")
