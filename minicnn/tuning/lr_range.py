"""Step 3 of the recipe: the learning-rate range test (Smith, 2015; fastai's ``lr_find``)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import plot
from ..layers.base import Layer
from ._common import default_loss, make_optimizer, restored, trainable_parameters

__all__ = ["LRRangeResult", "lr_range_test", "plot_lr_range"]


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
    loss_fn = default_loss(loss)
    schedule = lr_min * (lr_max / lr_min) ** (np.arange(int(steps)) / (int(steps) - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, diverged = 0.0, math.inf, False
    with restored(model, training=True):  # the model given comes back unchanged
        params = trainable_parameters(model, "lr_range_test")
        opt = make_optimizer(optimizer, params, float(schedule[0]))
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
    plt = plot.pyplot()
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
    return plot.save_figure(fig, path)
