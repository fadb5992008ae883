"""Steps 1 and 2 of the recipe: the loss before training, and overfitting a small sample."""

from __future__ import annotations

import copy as copylib
import itertools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..backend import get_array_module
from ..layers.base import Layer
from ._common import count_correct, default_loss, make_optimizer, restored, trainable_parameters

__all__ = ["InitialLossWarning", "InitialLossCheck", "check_initial_loss", "OverfitResult",
           "overfit_small_batch"]


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
    from ..layers import Dropout

    loss_fn = default_loss(loss)
    total, seen, num_classes = 0.0, 0, None
    # The loss the first training step sees: BatchNorm with batch statistics (its running
    # statistics are not estimated yet), but without Dropout's noise. The running statistics
    # move meanwhile: restored puts them (and the modes) back.
    with restored(model, training=True, params=False):
        for m in model.modules():
            if isinstance(m, Dropout):
                m.eval()
        for x, y in itertools.islice(loader, int(num_batches)):
            logits = model.forward(x)
            total += float(loss_fn.forward(logits, y)) * int(x.shape[0])  # a per-sample mean
            seen += int(x.shape[0])
            num_classes = int(logits.shape[1])
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
    loss_fn = default_loss(loss)
    x, y = _small_sample(x, y, num_batches)
    net = copylib.deepcopy(model) if copy else model
    opt = make_optimizer(optimizer, trainable_parameters(net, "overfit_small_batch"), lr)

    def evaluate() -> tuple[float, float]:
        with net.mode(training=False):
            logits = net.forward(x)
            return float(loss_fn.forward(logits, y)), count_correct(logits, y) / len(y)

    losses: list[float] = []
    step = 0
    final_loss, acc = evaluate()
    with net.mode(training=True):
        while acc < target_acc and step < int(steps):
            logits = net.forward(x)
            batch_loss = loss_fn.forward(logits, y)
            net.backward(loss_fn.backward())
            opt.step()
            step += 1
            losses.append(float(batch_loss))
            # Check in eval mode only when the training batch looks right (or at the end):
            # a second forward per step would double the cost.
            if count_correct(logits, y) / len(y) >= target_acc or step == int(steps):
                final_loss, acc = evaluate()
    return OverfitResult(bool(acc >= target_acc), step, final_loss, acc, losses, len(y), net)
