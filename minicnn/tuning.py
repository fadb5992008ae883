"""Tuning tools: the lectures' recipe for getting a new network to train.

Four steps, in this order (each one cheap, each one catching a different mistake)::

    check_initial_loss(model, loader)              # 1. loss before training ≈ ln C ?
    overfit_small_batch(model, x_few, y_few)       # 2. can it learn 20 samples by heart?
    lr_range_test(model, loader)                   # 3. which learning rate?
    random_search(objective, space, trials=20)     # 4. then search the rest, briefly each

1. With logits ≈ 0 the softmax is uniform, p = 1/C, so the cross-entropy starts at
   L₀ = -ln(1/C) = ln C (2.303 for 10 classes). Far above: the initial weights are too large,
   softmax is applied twice, or the inputs are not normalised.
2. A model that cannot reach 100 % training accuracy on a handful of samples has a bug
   (a wrong backward, a frozen or disconnected layer, labels that do not match the inputs).
3. The learning-rate range test (Leslie Smith, 2015; fastai's ``lr_find``) trains for a
   few hundred steps while the learning rate grows exponentially, and reads the right value
   off the loss curve.
4. Random search (Bergstra & Bengio, 2012) samples configurations instead of walking a grid:
   with the same number of trials it tries many more values of the hyperparameters that matter.

``overfit_small_batch`` and ``lr_range_test`` train; by default neither changes the model given
(the first works on a deep copy, the second puts the initial weights back).
"""

from __future__ import annotations

import copy as copylib
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import init as initializers
from .backend import get_array_module, to_numpy
from .layers.base import Layer, Parameter

__all__ = [
    "InitialLossWarning", "InitialLossCheck", "check_initial_loss",
    "OverfitResult", "overfit_small_batch",
    "LRRangeResult", "lr_range_test", "plot_lr_range",
    "LogUniform", "Uniform", "IntUniform", "Choice", "sample_configs",
    "SearchResult", "random_search", "FitObjective",
]


# -- shared helpers ----------------------------------------------------------------------------

def _default_loss(loss: Any) -> Any:
    if loss is None:
        from .losses import CrossEntropyLoss

        return CrossEntropyLoss()
    return loss


def _modes(model: Layer) -> list[tuple[Layer, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list[tuple[Layer, bool]]) -> None:
    for m, mode in modes:
        m.training = mode


def _save_state(model: Layer, params: bool = True) -> dict[str, Any]:
    """Everything training changes: parameters (and grads), buffers, modes, Dropout RNGs.

    ``params=False`` skips the parameters, for a forward pass that cannot change them.
    """
    return {
        "params": [(p, p.data.copy(), p.grad) for p in model.parameters()] if params else [],
        "buffers": [(m, name, None if getattr(m, name) is None else getattr(m, name).copy())
                    for m in model.modules() for name in getattr(m, "_buffer_names", ())],
        "modes": _modes(model),
        "rngs": [(g, copylib.deepcopy(g.bit_generator.state)) for m in model.modules()
                 for g in vars(m).values() if isinstance(g, np.random.Generator)],
    }


def _load_state(state: dict[str, Any]) -> None:
    for p, data, grad in state["params"]:
        p.data, p.grad = data, grad
    for m, name, value in state["buffers"]:
        setattr(m, name, value)
    _restore_modes(state["modes"])
    for g, s in state["rngs"]:
        g.bit_generator.state = s


def _make_optimizer(optimizer: Any, params: list[Parameter], lr: float) -> Any:
    """``optimizer``: None (Adam) or a factory ``(params, lr) -> optimizer``."""
    if optimizer is None:
        from .optim import Adam

        return Adam(params, lr=lr)
    if not callable(optimizer):
        raise TypeError(f"expected optimizer=None (Adam) or a factory (params, lr) -> optimizer "
                        f"such as mc.optim.SGD or functools.partial(mc.optim.SGD, momentum=0.9)"
                        f", got {type(optimizer).__name__}")
    return optimizer(params, lr)


def _trainable(model: Layer, owner: str) -> list[Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{owner}: the model has no trainable parameters")
    return params


def _correct(logits: Any, y: Any) -> int:
    labels = y if y.ndim == 1 else y.argmax(axis=1)
    return int((logits.argmax(axis=1) == labels).sum())


# -- 1. the initial loss -----------------------------------------------------------------------

class InitialLossWarning(UserWarning):
    """``check_initial_loss`` found a loss far from ln C."""


@dataclass
class InitialLossCheck:
    """What ``check_initial_loss`` measured.

    Attributes
    ----------
    loss : float
        Mean loss over the batches looked at.
    expected : float
        ln C, the loss of a uniform prediction over C classes.
    ratio : float
        loss / expected.
    ok : bool
        ``1 / factor <= ratio <= factor``.
    num_classes : int
        C, read from the logits' shape.
    num_samples : int
    """

    loss: float
    expected: float
    ratio: float
    ok: bool
    num_classes: int
    num_samples: int

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAR OFF"
        return (f"initial loss {self.loss:.4f} vs ln({self.num_classes}) = {self.expected:.4f} "
                f"(ratio {self.ratio:.2f}, {verdict}; {self.num_samples} samples)")


def check_initial_loss(model: Layer, loader: Iterable, loss: Any = None, num_batches: int = 4,
                       factor: float = 2.0, warn: bool = True) -> InitialLossCheck:
    """Compare the loss of an untrained model with ln C, the loss of a uniform guess.

    With logits ≈ 0 every class gets p = 1/C, so the cross-entropy is

        L₀ = -(1/N) Σ_n ln p_{n, y_n} = -ln(1/C) = ln C        (2.303 for C = 10).

    A fresh model should start close to it. Far above means confident wrong answers at step 0:
    usually the initial weights are too large (a wrong init scale), softmax is applied both in
    the model and in the loss (pass logits to ``CrossEntropyLoss``), or the inputs are not
    normalised (0..255 instead of 0..1). Far below means the labels leak into the inputs, or
    the model was trained already.

    Parameters
    ----------
    model : Layer
        Run as in the first training step, but without Dropout: BatchNorm normalises with
        the batch's statistics (its running statistics are still the initial 0 and 1, which
        would not normalise anything). Modes, running statistics and random generators are
        put back afterwards: the model is unchanged.
    loader : iterable of (x, y) batches
        E.g. a ``DataLoader``; only the first ``num_batches`` batches are used.
    loss : loss object, optional
        Default ``CrossEntropyLoss()``.
    factor : float
        ``ok`` when ``1 / factor <= loss / ln C <= factor``. Exactly ln C needs logits of 0;
        fresh He-initialised networks start somewhat higher (minicnn's ``resnet()`` at about
        1.8 ln C) and train fine, so only a factor of 2 or more counts as far off.
    warn : bool
        Emit an ``InitialLossWarning`` naming the numbers and the usual causes when not ok.

    Returns
    -------
    InitialLossCheck
        ``loss``, ``expected`` (ln C), ``ratio``, ``ok``, ``num_classes``, ``num_samples``.
    """
    from .layers import Dropout

    loss_fn = _default_loss(loss)
    saved = _save_state(model, params=False)
    # The loss the first training step sees: BatchNorm with batch statistics (its running
    # statistics are not estimated yet), but without Dropout's noise.
    model.train()
    for m in model.modules():
        if isinstance(m, Dropout):
            m.eval()
    total, seen, num_classes = 0.0, 0, None
    try:
        for x, y in itertools.islice(loader, int(num_batches)):
            logits = model.forward(x)
            total += float(loss_fn.forward(logits, y)) * int(x.shape[0])  # a per-sample mean
            seen += int(x.shape[0])
            num_classes = int(logits.shape[1])
    finally:
        _load_state(saved)  # BatchNorm's running statistics moved: put them back
    if seen == 0 or num_classes is None:
        raise ValueError("check_initial_loss: the loader yielded no batches")
    if num_classes < 2:
        raise ValueError(f"check_initial_loss: the model gives {num_classes} logit per sample; "
                         f"expected logits of shape (N, C) with C >= 2 classes")
    mean_loss = total / seen
    expected = math.log(num_classes)
    ratio = mean_loss / expected
    if not factor > 1.0:
        raise ValueError(f"check_initial_loss: factor must be > 1, got {factor}")
    ok = bool(1.0 / factor <= ratio <= factor)
    result = InitialLossCheck(mean_loss, expected, ratio, ok, num_classes, seen)
    if warn and not ok:
        if ratio > 1.0:
            causes = ("the initial weights are too large (check the init scale, especially of "
                      "the last layer), softmax is applied in the model and again in the loss "
                      "(give CrossEntropyLoss the logits), or the inputs are not normalised")
        else:
            causes = ("the labels leak into the inputs, or the model is already trained")
        warnings.warn(f"check_initial_loss: the loss before training is {mean_loss:.4g}, "
                      f"expected about ln({num_classes}) = {expected:.4g} (ratio {ratio:.2f}, "
                      f"more than a factor {factor:g} off). Usual causes: {causes}.",
                      InitialLossWarning, stacklevel=2)
    return result


# -- 2. overfit a small sample -----------------------------------------------------------------

@dataclass
class OverfitResult:
    """What ``overfit_small_batch`` reached.

    Attributes
    ----------
    reached : bool
        The training accuracy (eval mode) reached ``target_acc``.
    steps : int
        Optimizer steps taken (fewer than asked when ``reached`` early).
    loss : float
        Final loss on the small sample, in eval mode.
    acc : float
        Final accuracy on the small sample, in eval mode.
    losses : list of float
        The training loss at every step.
    num_samples : int
    model : Layer
        The trained model (the copy when ``copy=True``).
    """

    reached: bool
    steps: int
    loss: float
    acc: float
    losses: list[float]
    num_samples: int
    model: Layer = field(repr=False)

    def __str__(self) -> str:
        verdict = "reached" if self.reached else "did NOT reach"
        return (f"overfit {self.num_samples} samples: {verdict} {self.acc:.0%} accuracy "
                f"after {self.steps} steps (loss {self.loss:.4g})")


def _small_sample(x: Any, y: Any, num_batches: int) -> tuple[Any, Any]:
    """(x, y) arrays, or the first ``num_batches`` batches of a loader joined into one."""
    if y is not None:
        if not hasattr(x, "shape") or not hasattr(y, "shape") or len(x) != len(y):
            raise ValueError("overfit_small_batch: expected arrays x (N, ...) and y (N,) of the "
                             "same length, or a loader as x and y=None")
        return x, y
    batches = list(itertools.islice(x, int(num_batches)))
    if not batches:
        raise ValueError("overfit_small_batch: the loader yielded no batches")
    xp = get_array_module(batches[0][0])
    return (xp.concatenate([b[0] for b in batches]),
            xp.concatenate([xp.asarray(b[1]) for b in batches]))


def overfit_small_batch(model: Layer, x: Any, y: Any = None, *, loss: Any = None,
                        steps: int = 300, lr: float = 1e-2, optimizer: Any = None,
                        target_acc: float = 1.0, num_batches: int = 2,
                        copy: bool = True) -> OverfitResult:
    """Train on a few samples only and check that the model can learn them by heart.

    A working network with enough parameters drives the training loss towards 0 and the
    accuracy to 100 % on, say, 20 samples within a few hundred steps. If it cannot, look for
    a bug before tuning anything: a wrong backward pass, a frozen or disconnected layer,
    labels that do not belong to the inputs, or a learning rate far off. Regularisation
    (Dropout, weight decay, augmentation) works against this test: switch it off (here
    Dropout is off for the accuracy check, which runs in eval mode).

    The whole small sample is one batch: every step is a full-batch step with Adam.

    Parameters
    ----------
    model : Layer
    x, y : arrays (N, ...) and (N,), or a loader as ``x`` and ``y=None``
        A loader gives its first ``num_batches`` batches (fixed from then on). Arrays must be
        on the model's backend, float (the model's input dtype).
    loss : loss object, optional
        Default ``CrossEntropyLoss()``.
    steps : int
        The most optimizer steps; training stops as soon as ``target_acc`` is reached.
    lr : float
        Learning rate (1e-2 suits Adam on a tiny sample).
    optimizer : factory ``(params, lr) -> optimizer``, optional
        Default Adam.
    target_acc : float
        The accuracy to reach, in eval mode (1.0: every sample right).
    copy : bool
        True (default): train a deep copy, the model given is not changed (the trained copy
        is ``result.model``). False: train the model given, in place.

    Returns
    -------
    OverfitResult
        ``reached``, ``steps``, ``loss``, ``acc``, ``losses`` (per step), ``num_samples``,
        ``model``.
    """
    loss_fn = _default_loss(loss)
    x, y = _small_sample(x, y, num_batches)
    net = copylib.deepcopy(model) if copy else model
    opt = _make_optimizer(optimizer, _trainable(net, "overfit_small_batch"), lr)
    modes = _modes(net)

    def evaluate() -> tuple[float, float]:
        net.eval()
        try:
            logits = net.forward(x)
            return float(loss_fn.forward(logits, y)), _correct(logits, y) / len(y)
        finally:
            _restore_modes(modes)

    losses: list[float] = []
    step = 0
    final_loss, acc = evaluate()
    try:
        while acc < target_acc and step < int(steps):
            net.train()
            logits = net.forward(x)
            batch_loss = loss_fn.forward(logits, y)
            net.backward(loss_fn.backward())
            opt.step()
            step += 1
            losses.append(float(batch_loss))
            # Check in eval mode only when the training batch looks right (or at the end):
            # a second forward per step would double the cost.
            if _correct(logits, y) / len(y) >= target_acc or step == int(steps):
                final_loss, acc = evaluate()
    finally:
        _restore_modes(modes)
    return OverfitResult(bool(acc >= target_acc), step, final_loss, acc, losses, len(y), net)


# -- 3. the learning-rate range test -----------------------------------------------------------

@dataclass
class LRRangeResult:
    """The learning-rate range test's record, one entry per step taken.

    Attributes
    ----------
    lrs, losses, smoothed : lists of float
        The learning rate, the batch loss and its smoothed value at every step.
    suggestion : float or None
        The suggested learning rate (see ``method``); None when the loss never went down.
    lr_steepest : float or None
        Where the smoothed loss falls fastest against log(lr), before its minimum.
    lr_min_loss : float
        Where the smoothed loss is lowest.
    method : str
        "steepest" or "min/10": which of the two ``suggestion`` is.
    diverged : bool
        Stopped early because the smoothed loss exceeded ``diverge`` times its best.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    lr_steepest: float | None
    lr_min_loss: float
    method: str
    diverged: bool

    @property
    def steps(self) -> int:
        return len(self.lrs)

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """``plot_lr_range(self, path)``."""
        return plot_lr_range(self, path)

    def __str__(self) -> str:
        suggestion = "none" if self.suggestion is None else f"{self.suggestion:.3g}"
        stop = "diverged" if self.diverged else "ran to lr_max"
        return (f"lr range test: {self.steps} steps from {self.lrs[0]:.3g} to "
                f"{self.lrs[-1]:.3g} ({stop}); suggested lr {suggestion} ({self.method}); "
                f"lowest loss at lr {self.lr_min_loss:.3g}")


def _suggest(lrs: np.ndarray, smoothed: np.ndarray, skip_start: int) -> tuple[float | None, int]:
    """The lr of steepest descent of the smoothed loss vs log(lr), before its minimum."""
    i_min = int(np.argmin(smoothed))
    start = min(skip_start, i_min)
    if i_min - start < 2:
        return None, i_min
    # d(loss)/d(log lr) by central differences over [start, i_min].
    slope = np.gradient(smoothed[start:i_min + 1], np.log(lrs[start:i_min + 1]))
    i = start + int(np.argmin(slope))
    if slope[i - start] >= 0.0:
        return None, i_min  # the loss never went down
    return float(lrs[i]), i_min


def lr_range_test(model: Layer, loader: Iterable, loss: Any = None, optimizer: Any = None, *,
                  lr_min: float = 1e-7, lr_max: float = 10.0, steps: int = 100,
                  beta: float = 0.98, diverge: float = 4.0, method: str = "steepest",
                  skip_start: int = 5) -> LRRangeResult:
    """Find a learning rate: train while it grows exponentially and watch the loss.

    Step k (0-based, of ``steps``) trains one batch with

        lr_k = lr_min · (lr_max / lr_min)^(k / (steps - 1)).

    The batch losses are noisy, so they are smoothed (an exponential moving average with the
    bias correction of Adam, as fastai does):

        avg_k = β avg_{k-1} + (1 - β) loss_k,     smoothed_k = avg_k / (1 - β^(k+1)).

    The test stops when the smoothed loss exceeds ``diverge`` times the best so far (or is
    not finite): beyond that the learning rate is far too large.

    The suggestion (fastai's convention) is, with ``method="steepest"``, the lr where the
    smoothed loss falls fastest against log(lr), searched before the minimum of the curve;
    with ``method="min/10"``, the lr of the lowest smoothed loss divided by 10 (one order of
    magnitude below the point where the loss starts to blow up). Both are in the result.

    Parameters
    ----------
    model : Layer
        Trained during the test; its parameters, buffers, modes and Dropout generators are put
        back afterwards, so the model is unchanged (the loader's shuffling has advanced).
    loader : iterable of (x, y) batches
        Iterated again from the start when it runs out before ``steps``.
    loss : loss object, optional
        Default ``CrossEntropyLoss()``.
    optimizer : factory ``(params, lr) -> optimizer``, optional
        Default Adam; e.g. ``functools.partial(mc.optim.SGD, momentum=0.9)``. A fresh one is
        made for the test; its ``lr`` is set before every step.
    lr_min, lr_max : float
        The range swept, ``0 < lr_min < lr_max``.
    steps : int
        Steps of the sweep (100 to 300 is usual), at least 2.
    beta : float
        Smoothing factor β in [0, 1).
    diverge : float
        Stop when smoothed > diverge · best smoothed.
    skip_start : int
        Steps at the start not considered for the steepest slope (the average is still
        settling there).

    Returns
    -------
    LRRangeResult
        ``lrs``, ``losses``, ``smoothed``, ``suggestion``, ``lr_steepest``, ``lr_min_loss``,
        ``method``, ``diverged``; ``result.plot(path)`` draws the curve.
    """
    if not 0.0 < lr_min < lr_max:
        raise ValueError(f"lr_range_test: need 0 < lr_min < lr_max, got lr_min={lr_min}, "
                         f"lr_max={lr_max}")
    if int(steps) < 2:
        raise ValueError(f"lr_range_test: steps must be >= 2, got {steps}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"lr_range_test: beta must be in [0, 1), got {beta}")
    if method not in ("steepest", "min/10"):
        raise ValueError(f"lr_range_test: method must be 'steepest' or 'min/10', got {method!r}")
    loss_fn = _default_loss(loss)
    schedule = lr_min * (lr_max / lr_min) ** (np.arange(int(steps)) / (int(steps) - 1))
    saved = _save_state(model)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    try:
        opt = _make_optimizer(optimizer, _trainable(model, "lr_range_test"), float(schedule[0]))
        model.train()
        batches = iter(loader)
        for k, lr in enumerate(schedule):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                try:
                    x, y = next(batches)
                except StopIteration:
                    raise ValueError("lr_range_test: the loader yielded no batches") from None
            opt.lr = float(lr)
            logits = model.forward(x)
            value = float(loss_fn.forward(logits, y))
            model.backward(loss_fn.backward())
            opt.step()
            avg = beta * avg + (1.0 - beta) * value
            smooth = avg / (1.0 - beta ** (k + 1))
            lrs.append(float(lr))
            losses.append(value)
            smoothed.append(smooth)
            if not math.isfinite(smooth) or smooth > diverge * best:
                diverged = True
                break
            best = min(best, smooth)
    finally:
        _load_state(saved)
    # The divergent last point would hide the minimum; it stays in the record for the plot.
    usable = len(smoothed) - 1 if diverged and len(smoothed) > 1 else len(smoothed)
    lrs_a = np.array(lrs[:usable])
    smooth_a = np.nan_to_num(np.array(smoothed[:usable]), nan=np.inf)
    lr_steepest, i_min = _suggest(lrs_a, smooth_a, int(skip_start))
    lr_min_loss = float(lrs_a[i_min])
    if method == "steepest":
        suggestion = lr_steepest
    else:
        suggestion = lr_min_loss / 10.0 if i_min > 0 else None
    return LRRangeResult(lrs, losses, smoothed, suggestion, lr_steepest, lr_min_loss, method,
                         diverged)


def plot_lr_range(result: LRRangeResult, path: str | os.PathLike | None = None) -> Any:
    """Draw the loss (raw and smoothed) against the learning rate on a log axis.

    The suggestion is marked with a dot. Needs matplotlib; saves to ``path`` when given and
    returns the figure.
    """
    from . import plot

    plt = plot._pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="batch loss")
    ax.plot(result.lrs, result.smoothed, color="C0", linewidth=2, label="smoothed")
    if result.suggestion is not None:
        k = int(np.argmin(np.abs(np.log(result.lrs) - math.log(result.suggestion))))
        ax.plot([result.suggestion], [result.smoothed[k]], "o", color="C3",
                label=f"suggestion {result.suggestion:.2g} ({result.method})")
    ax.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # keep the divergent tail from squashing the interesting part
        top = 1.5 * max(finite[0], min(finite))
        ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), max(top, min(finite) + 1e-6))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("learning-rate range test")
    ax.legend()
    return plot._finish(fig, path)


# -- 4. random search --------------------------------------------------------------------------

@dataclass(frozen=True)
class LogUniform:
    """log x ~ U(log low, log high): every decade gets the same share (learning rates,
    weight decay)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0.0 < self.low <= self.high:
            raise ValueError(f"LogUniform: need 0 < low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclass(frozen=True)
class Uniform:
    """x ~ U(low, high) (dropout rates, momentum)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Uniform: need low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class IntUniform:
    """An integer in low..high, both included, each equally likely (widths, depths)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not int(self.low) <= int(self.high):
            raise ValueError(f"IntUniform: need low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(int(self.low), int(self.high) + 1))


@dataclass(frozen=True)
class Choice:
    """One of ``options``, each equally likely (batch sizes, activations, optimizers)."""

    options: Sequence[Any]

    def __post_init__(self) -> None:
        if len(self.options) == 0:
            raise ValueError("Choice: needs at least one option")
        object.__setattr__(self, "options", tuple(self.options))

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]


def sample_configs(space: Mapping[str, Any], n: int, seed: int | None = 0) -> list[dict]:
    """``n`` configurations drawn from ``space``, reproducibly.

    ``space`` maps a name to a distribution (``LogUniform``, ``Uniform``, ``IntUniform``,
    ``Choice``: anything with ``sample(rng)``) or to a fixed value, which every configuration
    gets as it is. The same ``seed`` gives the same list.
    """
    rng = np.random.default_rng(seed)
    return [{name: (d.sample(rng) if hasattr(d, "sample") else d) for name, d in space.items()}
            for _ in range(int(n))]


def _limit_blas_threads() -> None:
    """Run in each worker: one BLAS thread, so that the workers do not fight over the cores.

    The environment variables only matter to libraries loaded later; NumPy's BLAS is already
    loaded in a forked worker, which only threadpoolctl (when installed) can change.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1)


def _run_trial(objective: Callable, index: int, params: dict, budget: Any, seed: int,
               metric: str) -> dict[str, Any]:
    """One trial: the objective's numbers (or its error) plus the bookkeeping columns."""
    start = time.perf_counter()
    record: dict[str, Any] = {"trial": index, "seed": seed, **params}
    try:
        out = objective(dict(params), budget, seed)
        if isinstance(out, Mapping):
            if metric not in out:
                raise KeyError(f"the objective returned {sorted(out)}, without the metric "
                               f"{metric!r}")
            record.update({k: (float(v) if isinstance(v, (int, float, np.number)) else v)
                           for k, v in out.items()})
        else:
            record[metric] = float(out)
        record["error"] = None
    except Exception as e:  # one broken configuration should not end the search
        record[metric] = math.nan
        record["error"] = f"{type(e).__name__}: {e}"
    record["time"] = time.perf_counter() - start
    return record


class SearchResult:
    """The trials of ``random_search``, best first.

    Attributes
    ----------
    trials : list of dict
        One per trial: ``trial`` (its index in sampling order), ``seed``, the sampled
        hyperparameters, the metric and whatever else the objective returned, ``error``
        (None, or the exception's message) and ``time`` (seconds). Sorted by the metric,
        best first; failed or non-finite trials last.
    metric, mode : str
        What the trials are ranked by, and whether lower ("min") or higher ("max") is better.
    """

    def __init__(self, trials: list[dict[str, Any]], space: Mapping[str, Any], metric: str,
                 mode: str):
        self.space, self.metric, self.mode = dict(space), metric, mode
        sign = 1.0 if mode == "min" else -1.0

        def key(t: dict[str, Any]) -> tuple[int, float, int]:
            value = t.get(metric)
            bad = value is None or not math.isfinite(value)
            return (int(bad), 0.0 if bad else sign * value, t["trial"])

        self.trials = sorted(trials, key=key)

    @property
    def best(self) -> dict[str, Any]:
        return self.trials[0]

    @property
    def best_params(self) -> dict[str, Any]:
        """The best trial's hyperparameters only (the keys of ``space``)."""
        return {k: self.best[k] for k in self.space}

    def __len__(self) -> int:
        return len(self.trials)

    def __iter__(self):
        return iter(self.trials)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.trials[i]

    def table(self, digits: int = 4, time: bool = False) -> str:
        """The trials as a text table, best first (``time=True`` adds the seconds taken)."""
        keys = ["trial", *self.space]
        for t in self.trials:
            keys += [k for k in t if k not in keys and k not in ("seed", "error", "time")]
        if any(t.get("error") for t in self.trials):
            keys.append("error")
        if time:
            keys.append("time")

        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.{digits}g}"
            return "" if v is None else str(v)

        rows = [["rank", *keys]] + [[str(r), *(fmt(t.get(k)) for k in keys)]
                                    for r, t in enumerate(self.trials, start=1)]
        widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
        lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        if not self.trials:
            return "SearchResult(no trials)"
        return (f"SearchResult({len(self)} trials, best {self.metric}="
                f"{self.best.get(self.metric)!r}: {self.best_params})")


def random_search(objective: Callable[[dict, Any, int], float | Mapping[str, Any]],
                  space: Mapping[str, Any], trials: int = 20, budget: Any = 1, *,
                  seed: int | None = 0, workers: int | None = None, metric: str = "score",
                  mode: str = "min") -> SearchResult:
    """Random search: sample ``trials`` configurations from ``space``, train each briefly.

    Example space::

        space = {"lr": LogUniform(1e-4, 1e-1), "weight_decay": LogUniform(1e-6, 1e-3),
                 "dropout": Uniform(0.0, 0.5), "batch_size": Choice([64, 128])}

    Parameters
    ----------
    objective : callable ``(params, budget, seed) -> float or dict``
        Trains one configuration and says how good it is: a float (the ``metric``, lower is
        better by default), or a dict of numbers that holds ``metric`` (e.g. ``{"val_loss":
        .., "val_acc": ..}`` with ``metric="val_acc", mode="max"``). It must seed its own
        randomness from ``seed`` (``mc.init.set_seed(seed)``, the loader's ``seed=``) so that
        trials are reproducible. With ``workers > 1`` it goes to other processes and must be
        picklable: a function defined at the top level of a module, or a ``FitObjective``.
    space : dict
        name -> distribution (``LogUniform``, ``Uniform``, ``IntUniform``, ``Choice``) or a
        fixed value.
    trials : int
    budget : any
        Passed unchanged to every trial: what one trial may spend, in the objective's unit
        (``FitObjective`` reads it as epochs). Keep it small: a search ranks configurations
        by a short run, then the best few get a full training.
    seed : int
        Fixes the configurations (drawn in the parent, in trial order) and each trial's
        ``seed`` (from ``np.random.SeedSequence(seed)``): the same seed gives the same table,
        whatever ``workers``.
    workers : int, optional
        Processes to run trials in; default ``min(trials, os.cpu_count())``. 1 runs them one
        after the other in this process. Each worker is limited to one BLAS thread when
        threadpoolctl is installed (otherwise set ``OMP_NUM_THREADS=1`` before starting
        Python, or NumPy's threads and the workers compete for the cores).
    metric, mode : str
        The key to rank by, and "min" or "max".

    Returns
    -------
    SearchResult
        ``.trials`` best first, ``.best``, ``.best_params``, ``.table()``.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"random_search: mode must be 'min' or 'max', got {mode!r}")
    if int(trials) < 1:
        raise ValueError(f"random_search: trials must be >= 1, got {trials}")
    if not callable(objective):
        raise TypeError(f"random_search: objective must be callable (params, budget, seed), "
                        f"got {type(objective).__name__}")
    trials = int(trials)
    configs = sample_configs(space, trials, seed)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(trials)]
    workers = min(trials, os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"random_search: workers must be >= 1, got {workers}")
    jobs = [(objective, i, c, budget, s, metric)
            for i, (c, s) in enumerate(zip(configs, seeds, strict=True))]
    if workers == 1:
        records = [_run_trial(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_limit_blas_threads) as pool:
            futures = [pool.submit(_run_trial, *job) for job in jobs]
            records = [f.result() for f in futures]
    return SearchResult(records, space, metric, mode)


class FitObjective:
    """A ready-made objective for ``random_search``: build a model, ``fit`` it, validate.

    One trial (``objective(params, budget, seed)``):

    1. ``mc.init.set_seed(seed)``, then ``model = builder(**model_kwargs, **model_params)``;
    2. an optimizer from ``params["optimizer"]`` ("adam" by default, "adamw" or "sgd") with
       ``lr``, ``weight_decay`` and, for SGD, ``momentum`` (default 0.9);
    3. ``fit`` for ``budget`` epochs on a ``DataLoader(x_train, y_train, batch_size,
       seed=seed)``, quietly;
    4. returns ``{"val_loss", "val_acc", "loss", "acc"}`` (the last epoch), so use
       ``metric="val_loss"`` or ``metric="val_acc", mode="max"``. A run whose loss became
       NaN returns val_loss = inf.

    The keys ``lr``, ``weight_decay``, ``momentum``, ``optimizer``, ``batch_size`` and
    ``label_smoothing`` of ``params`` configure the training; all other keys go to the
    builder (e.g. ``dropout``, ``widths``).

    Parameters
    ----------
    builder : str or callable
        A name registered in ``minicnn.models`` ("vgg", "resnet", ...) or a function defined
        at the top level of a module (it must be picklable for ``workers > 1``). For
        reproducible trials, a custom builder must take all its randomness from
        ``mc.init``'s generator, e.g. ``Dropout(p, seed=int(mc.init.get_rng().integers(2**63)))``
        as the builders of ``minicnn.models`` do (an unseeded Dropout draws new masks on
        every run).
    x_train, y_train, x_val, y_val : arrays
        Images (N, C, H, W) (uint8 or float) and integer labels, NumPy: they are copied to
        every worker process.
    model_kwargs : dict, optional
        Fixed builder arguments.
    loader_kwargs : dict, optional
        Extra ``DataLoader`` arguments (``normalize``, ``transform``, ...), for both loaders.
    """

    TRAINING_KEYS = ("lr", "weight_decay", "momentum", "optimizer", "batch_size",
                     "label_smoothing")

    def __init__(self, builder: str | Callable[..., Layer], x_train: Any, y_train: Any,
                 x_val: Any, y_val: Any, model_kwargs: Mapping[str, Any] | None = None,
                 loader_kwargs: Mapping[str, Any] | None = None):
        self.builder = builder
        self.x_train, self.y_train = to_numpy(x_train), to_numpy(y_train)
        self.x_val, self.y_val = to_numpy(x_val), to_numpy(y_val)
        self.model_kwargs = dict(model_kwargs or {})
        self.loader_kwargs = dict(loader_kwargs or {})

    def _build(self, kwargs: dict[str, Any]) -> Layer:
        if isinstance(self.builder, str):
            from .models import build

            return build(self.builder, kwargs)
        return self.builder(**kwargs)

    def __call__(self, params: Mapping[str, Any], budget: Any, seed: int) -> dict[str, float]:
        from . import optim
        from .data.loader import DataLoader
        from .losses import CrossEntropyLoss
        from .training import fit

        params = dict(params)
        initializers.set_seed(seed)
        model = self._build({**self.model_kwargs,
                             **{k: v for k, v in params.items() if k not in self.TRAINING_KEYS}})
        lr = float(params.get("lr", 1e-3))
        wd = float(params.get("weight_decay", 0.0))
        name = str(params.get("optimizer", "adam")).lower()
        if name == "adam":
            opt = optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
        elif name == "adamw":
            opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        elif name == "sgd":
            opt = optim.SGD(model.parameters(), lr=lr, weight_decay=wd,
                            momentum=float(params.get("momentum", 0.9)))
        else:
            raise ValueError(f"FitObjective: optimizer must be 'adam', 'adamw' or 'sgd', "
                             f"got {name!r}")
        batch_size = int(params.get("batch_size", 64))
        train = DataLoader(self.x_train, self.y_train, batch_size, seed=seed,
                           **self.loader_kwargs)
        val = DataLoader(self.x_val, self.y_val, max(batch_size, 256), shuffle=False,
                         **self.loader_kwargs)
        loss = CrossEntropyLoss(label_smoothing=float(params.get("label_smoothing", 0.0)))
        history = fit(model, loss, opt, train, val, epochs=int(budget), verbose=0)
        if history.stop_reason and history.stop_reason.startswith("TerminateOnNaN"):
            return {"val_loss": math.inf, "val_acc": 0.0, "loss": math.inf, "acc": 0.0}
        return {key: float(history[key][-1]) for key in ("val_loss", "val_acc", "loss", "acc")}

    def __repr__(self) -> str:
        name = self.builder if isinstance(self.builder, str) else self.builder.__name__
        return (f"FitObjective({name}, {len(self.x_train)} training / {len(self.x_val)} "
                f"validation samples)")
