"""The small model and training loop of the data-parallel equivalence checks, shared by the
MPI ranks (checks.py) and the thread-ranks (tests/test_threads.py): W ranks of b samples
against one process of W·b samples, step by step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import minicnn as mc
from minicnn import layers as L


def build(kind: str) -> L.Sequential:
    """conv -> [norm] -> relu -> pool -> conv -> relu -> pool -> linear, on (3, 8, 8) images;
    the same init everywhere (seed 0). ``kind``: "plain" (no norm), "bn" or "syncbn" (a
    BatchNorm2d, converted to SyncBatchNorm2d by the caller for "syncbn")."""
    mc.init.set_seed(0)
    norm = {"plain": [], "bn": [L.BatchNorm2d(8)], "syncbn": [L.BatchNorm2d(8)]}[kind]
    return L.Sequential(L.Conv2d(3, 8, 3, padding=1, bias=not norm), *norm, L.ReLU(),
                        L.MaxPool2d(2), L.Conv2d(8, 8, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                        L.Flatten(), L.Linear(8 * 2 * 2, 10))


def train(model: Any, loader: Any, opt: Any, steps: int,
          check: Callable[[Any], None] | None = None) -> Any:
    """``steps`` steps of cross-entropy training; ``check(model)`` after each."""
    loss_fn = mc.losses.CrossEntropyLoss()
    for step, (x, y) in enumerate(loader, start=1):
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()
        if check is not None:
            check(model)
        if step == steps:
            break
    return model
