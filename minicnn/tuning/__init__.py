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

The package: ``checks.py`` (steps 1 and 2), ``lr_range.py`` (step 3), ``search.py`` (step 4),
``_common.py`` (what they share). Every public name is importable from ``minicnn.tuning``.
"""

from __future__ import annotations

from .checks import (
    InitialLossCheck,
    InitialLossWarning,
    OverfitResult,
    check_initial_loss,
    overfit_small_batch,
)
from .lr_range import LRRangeResult, lr_range_test, plot_lr_range
from .search import (
    Choice,
    FitObjective,
    IntUniform,
    LogUniform,
    SearchResult,
    Uniform,
    random_search,
    sample_configs,
)

__all__ = [
    "InitialLossWarning", "InitialLossCheck", "check_initial_loss",
    "OverfitResult", "overfit_small_batch",
    "LRRangeResult", "lr_range_test", "plot_lr_range",
    "LogUniform", "Uniform", "IntUniform", "Choice", "sample_configs",
    "SearchResult", "random_search", "FitObjective",
]
