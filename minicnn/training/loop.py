"""The training loop: ``fit``, ``evaluate``, ``predict`` (and the ``History`` they fill).

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

Data-parallel training (``fit(..., comm=...)``) adds no branch to this loop: ``fit`` asks a
strategy object (``strategy.py``) at three points, before the first epoch, at each read-back
of the metrics and at each epoch's end; in one process its answers change nothing.

Mixed precision (``fit(..., precision="bf16")``, docs/precision.md) runs the same loop
under a precision policy (``minicnn.functional.precision``): only the GEMMs' inputs change
format; with "fp16" the loss gradient is scaled and the step skipped on an overflow, on the
device (``minicnn.optim.LossScaler``).

Epochs are counted from 1 in messages, callbacks and ``History.epoch``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ..backend import get_array_module, get_xp, to_device, to_numpy
from ..functional.precision import autocast, check_precision, get_precision
from ..layers.base import Layer
from ..layers.container import Sequential
from ..optim.loss_scale import LossScaler
from .callbacks import Callback, FitState, LearningRateScheduler, TerminateOnNaN
from .console import write_line
from .history import History
from .strategy import LocalStrategy, strategy_for

__all__ = ["History", "fit", "evaluate", "predict"]


def _accuracy_count(logits: Any, y: Any) -> Any:
    """Number of correct predictions, Σ_n [argmax_k logits_nk = y_n], as a 0-d array on the
    logits' device (no sync).

    ``y`` holds class indices (N,) or soft targets (N, K) (their top class counts). A loader
    may yield NumPy labels while the logits live on the GPU (CrossEntropyLoss accepts that):
    the labels are brought to the logits' device first, since CuPy refuses mixed operands.
    """
    labels = to_device(y, like=logits)
    if labels.ndim != 1:
        labels = labels.argmax(axis=1)
    return (logits.argmax(axis=1) == labels).sum()


class _Meter:
    """Device-side running sums of one epoch, read back every ``sync_every`` steps.

    Every read-back goes through ``strategy.reduce_metrics``: data-parallel, that sums it over
    the ranks, so all ranks see the same losses and take the same decisions (NaN guard,
    early stopping).
    """

    def __init__(self, strategy: LocalStrategy) -> None:
        self.strategy = strategy
        self.pending: list[tuple[Any, Any, int]] = []  # (loss, correct, batch size) per step
        self.first_pending_step = 1
        self.loss_sum = 0.0
        self.correct = 0
        self.seen = 0

    def add(self, loss: Any, correct: Any, n: int) -> None:
        self.pending.append((loss, correct, n))

    def flush(self) -> list[tuple[int, float]]:
        """Read the pending values from the device in one copy; returns [(step, loss), ...]."""
        if not self.pending:
            return []
        xp = get_array_module(self.pending[0][1])
        # One (2, steps) float64 array: losses, then counts (exact below 2**53).
        both = to_numpy(xp.stack([xp.stack([xp.asarray(p[0], dtype=xp.float64),
                                             xp.asarray(p[1], dtype=xp.float64)])
                                   for p in self.pending], axis=1))
        losses, correct = both[0], both[1]
        sizes = np.array([p[2] for p in self.pending])
        losses, correct, sizes = self.strategy.reduce_metrics(losses, correct, sizes)
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
        history: History | None = None, sync_every: int | None = None,
        comm: Any = None, precision: str | None = None,
        loss_scaler: LossScaler | None = None,
        validation_freq: int | Container[int] = 1) -> History:
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
    comm : Communicator, optional
        Data-parallel training (``minicnn.distributed``, docs/distributed.md), through
        ``strategy.DataParallelStrategy``: rank 0's weights are broadcast first, the optimizer
        averages the gradients over the ranks before each step (``DistributedOptimizer``, in
        place), metrics and validation are summed over the ranks, per-rank BatchNorm
        statistics are averaged at each epoch's end, and only rank 0 prints and runs the
        callbacks with ``rank_zero_only = True`` (``ModelCheckpoint``). Give each rank its
        shard of the data (``DataLoader(..., rank=, world_size=)``, the same seed everywhere).
    precision : "fp32", "tf32", "bf16", "fp16" or None
        The format of every GEMM's inputs while fitting (validation included), with float32
        master weights, optimizer state, activations, BatchNorm statistics and loss
        (docs/precision.md, ``minicnn.functional.precision``); the previous policy is
        restored afterwards. None (default): the current policy (``set_precision``, "fp32"
        unless changed). "fp16" adds dynamic loss scaling (``loss_scaler``); it is not
        available with ``comm`` yet (use "bf16").
    loss_scaler : LossScaler, optional
        fp16's loss scaler (default ``LossScaler()``: S₀ = 2¹⁶, ×2 every 2000 good steps,
        ×0.5 after an overflow); ignored under the other policies.
    validation_freq : int or container of int
        When ``val_loader`` is run, as in Keras: an int n validates after every n-th epoch
        (1, the default: after each), a container (e.g. ``[5, 10]``) after the epochs it
        holds. Unlike Keras, the last epoch (``epochs``) is always validated, so a run ends
        with a validation score. The other epochs log ``val_loss = val_acc = None``; a
        callback that monitors a val_* metric skips them (``EarlyStopping``'s patience
        counts validated epochs only). Validating is a pass over ``val_loader``: a CIFAR-10
        test set costs 7 % of the CPU preset's epoch.
    """
    validates = _validation_epochs(validation_freq, int(epochs))
    policy = get_precision() if precision is None else check_precision(precision,
                                                                      "fit: precision")
    if policy == "fp16" and comm is not None:
        raise ValueError("fit: precision 'fp16' (loss scaling) is not supported with "
                         "data-parallel training yet; use 'bf16'")
    scaler = (loss_scaler or LossScaler()) if policy == "fp16" else None
    strategy = strategy_for(comm)  # one process, or data-parallel: see strategy.py
    optimizer, callbacks, verbose = strategy.prepare(model, optimizer, callbacks, verbose)
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

    with no_input_grad(model), autocast(policy):
        for epoch in range(int(initial_epoch) + 1, int(epochs) + 1):
            state.epoch = epoch
            lr = float(optimizer.lr)
            _train_mode(model)
            for c in all_callbacks:
                c.on_epoch_begin(epoch)
            meter = _Meter(strategy)
            bar = _progress_bar(verbose == 1, steps_per_epoch, f"epoch {epoch}/{epochs}")
            every = sync_every
            start = time.perf_counter()
            for step, (x, y) in enumerate(train_loader, start=1):
                logits = model.forward(x)
                batch_loss = loss.forward(logits, y)
                if scaler is None:
                    model.backward(loss.backward())
                    optimizer.step()
                else:  # fp16: S · dL/dlogits back, then unscale and step (or skip, on inf)
                    model.backward(scaler.scale(loss.backward()))
                    scaler.step(optimizer)
                    scaler.update()
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
            if state.diverged:
                break  # the epoch is not finished and its weights are broken: record nothing
            logs: dict[str, Any] = {"loss": meter.loss, "acc": meter.acc, "val_loss": None,
                                    "val_acc": None, "lr": lr}
            train_time = time.perf_counter() - start
            strategy.end_epoch(model)
            if val_loader is not None and validates(epoch):
                val = _evaluate(model, val_loader, loss, strategy)
                logs["val_loss"], logs["val_acc"] = val["loss"], val["acc"]
            logs["time"] = time.perf_counter() - start
            history.append(epoch, logs)
            if verbose:
                write_line(_format_logs(epoch, epochs, logs, meter.seen / max(train_time, 1e-9)))
            for c in all_callbacks:
                c.on_epoch_end(epoch, logs)
            if state.stop_training:
                break
    for c in all_callbacks:
        c.on_train_end()
    return history


def _validation_epochs(freq: Any, epochs: int) -> Callable[[int], bool]:
    """``fit``'s ``validation_freq`` as a test of an epoch (1-based): validate after it?"""
    if isinstance(freq, (int, np.integer)) and not isinstance(freq, bool):
        if freq < 1:
            raise ValueError(f"fit: validation_freq must be >= 1, got {freq}")
        return lambda epoch: epoch % int(freq) == 0 or epoch == epochs
    if isinstance(freq, Container) and not isinstance(freq, (str, bytes)):
        return lambda epoch: epoch in freq or epoch == epochs
    raise TypeError(f"fit: validation_freq must be an int or a container of epochs, got "
                    f"{type(freq).__name__}")


@contextlib.contextmanager
def no_input_grad(model: Layer) -> Iterator[None]:
    """Switch off dL/dx where no one needs it while fitting: at the first layer with
    trainable parameters (the one that sees the images, or the one after a fixed
    ``PatchWhitening`` and its activation). Its backward then returns None, and
    ``Sequential.backward`` stops there."""
    first = None
    for layer in _leading_layers(model):
        if any(p.requires_grad for p in layer.parameters()):
            first = layer
            break
    switch = getattr(first, "input_grad", False) is True
    if switch:
        first.input_grad = False
    try:
        yield
    finally:
        if switch:
            first.input_grad = True


def _leading_layers(model: Layer) -> Iterator[Layer]:
    """The layers a batch goes through, in order, looking inside (nested) Sequentials."""
    if isinstance(model, Sequential):
        for layer in model.layers:
            yield from _leading_layers(layer)
    else:
        yield model


def _train_mode(model: Layer) -> None:
    """Training mode, except for frozen normalisation layers: a BatchNorm whose parameters
    are all frozen keeps using (and keeping) its running statistics, as in Keras."""
    model.train()
    for m in model.modules():
        # Its own buffers (running statistics): dotless names, not a descendant's.
        own_buffers = [name for name, _ in m.named_buffers() if "." not in name]
        params = m.parameters()
        if own_buffers and params and not any(p.requires_grad for p in params):
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


def evaluate(model: Layer, loader: Iterable, loss: Any = None,
             comm: Any = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` over ``loader``, in eval mode.

    The model's modes are restored afterwards. ``loss`` defaults to ``CrossEntropyLoss()``.
    With a communicator (``minicnn.distributed``) the sums run over every rank's loader
    (sharded or not: a loader every rank reads whole gives the same means).
    Returns ``{"loss": ..., "acc": ...}``.
    """
    return _evaluate(model, loader, loss, strategy_for(comm))


def _evaluate(model: Layer, loader: Iterable, loss: Any,
              strategy: LocalStrategy) -> dict[str, float]:
    """``evaluate``, with the metrics summed through ``strategy`` (``fit`` passes its own)."""
    if loss is None:
        from ..losses import CrossEntropyLoss

        loss = CrossEntropyLoss()
    meter = _Meter(strategy)
    with model.mode(training=False):
        for x, y in loader:
            logits = model.forward(x)
            meter.add(loss.forward(logits, y), _accuracy_count(logits, y), int(x.shape[0]))
        meter.flush()  # one read-back at the end
    if meter.seen == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    if not math.isfinite(meter.loss) and hasattr(loss, "check_labels"):
        loss.check_labels()  # a NaN from a device label out of range: say which label
    return {"loss": meter.loss, "acc": meter.acc}


TTA_MODES = ("none", "flip", "flip+shift")


def tta_mode(tta: bool | str | None) -> str:
    """``predict``'s ``tta`` as one of ``TTA_MODES``: True is "flip", False / None "none"."""
    return "flip" if tta is True else "none" if tta is False or tta is None else str(tta)


def predict(model: Layer, data: Any, batch_size: int = 256, tta: bool | str = False) -> Any:
    """The model's logits, as NumPy, in eval mode.

    ``data`` is an array (N, C, H, W) (float32 NumPy, fed in batches) -> logits (N, K); or a
    loader of (x, y) batches -> (logits (N, K), labels (N,)).

    ``tta`` (test-time augmentation), for models trained with random flips (and crops):

    - False / "none": the logits f(x);
    - True / "flip": m(x) = (f(x) + f(mirror(x))) / 2, with the image mirrored left-right
      (2 forward passes; usually some tenths of a percent more accuracy);
    - "flip+shift": m(x) / 2 + (m(shift(x, +1)) + m(shift(x, -1))) / 4, the image also moved
      by one pixel down-right and up-left (reflecting the border), as airbench does
      (6 forward passes).
    """
    mode = tta_mode(tta)
    if mode not in TTA_MODES:
        raise ValueError(f"predict: tta must be one of {TTA_MODES} (or a bool), got {tta!r}")

    def mirrored(x: Any) -> Any:
        out = model.forward(x)
        if mode != "none":
            out = (out + model.forward(x[..., ::-1])) / 2
        return out

    def logits_of(x: Any) -> np.ndarray:
        out = mirrored(x)
        if mode == "flip+shift":
            xp = get_array_module(x)
            padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
            H, W = x.shape[2:]
            out = out / 2 + (mirrored(padded[:, :, :H, :W]) + mirrored(padded[:, :, 2:, 2:])) / 4
        return to_numpy(out)

    with model.mode(training=False):
        if hasattr(data, "shape"):
            xp = get_xp()
            out = [logits_of(xp.asarray(data[i:i + batch_size], dtype=np.float32))
                   for i in range(0, len(data), batch_size)]
            return np.concatenate(out)
        logits, labels = [], []
        for x, y in data:
            logits.append(logits_of(x))
            labels.append(to_numpy(y))
        return np.concatenate(logits), np.concatenate(labels)
