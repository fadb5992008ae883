"""``summary``: a Keras-style table of a model's layers, output shapes and parameter counts.

``model.summary()`` (``Layer.summary``) and ``minicnn.models.summary`` are this function.
It knows layers only through the layer contract (``forward``, ``mode``, ``parameters``,
``num_parameters``), so it imports no layer: ``base.py`` can import it without a circle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import get_xp

if TYPE_CHECKING:
    from .base import Layer

__all__ = ["summary"]


def summary(model: Layer, input_shape: Sequence[int] | None = None,
            print_fn: Callable[[str], Any] | None = print) -> str:
    """Print (and return) a Keras-style table: layer, output shape, parameter count.

    With an ``input_shape`` (no batch axis; default: the ``model.input_shape`` a builder
    recorded) one forward pass runs on a batch of zeros of shape (1, *input_shape) in eval
    mode, so BatchNorm's running statistics are untouched and the model's modes are restored
    after. Without one (a hand-built model) the table lists the parameter counts only. The
    top-level layers of a ``Sequential`` get one row each.
    """
    # A Sequential is the one layer that iterates over its layers: one row per layer.
    children = list(model) if isinstance(model, Iterable) else [model]
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    rows: list[tuple[str, str, int]] = []
    if input_shape is None:
        rows += [(f"{i}: {type(layer).__name__}", "?", layer.num_parameters())
                 for i, layer in enumerate(children)]
    else:
        with model.mode(training=False):
            x = get_xp().zeros((1, *input_shape), dtype=np.float32)
            rows.append(("Input", str((None, *input_shape)), 0))
            for i, layer in enumerate(children):
                x = layer.forward(x)
                rows.append((f"{i}: {type(layer).__name__}", str((None, *x.shape[1:])),
                             layer.num_parameters()))
    params = model.parameters()
    total = sum(math.prod(p.shape) for p in params)
    trainable = sum(math.prod(p.shape) for p in params if p.requires_grad)
    w0 = max(len("Layer (type)"), *(len(r[0]) for r in rows))
    w1 = max(len("Output Shape"), *(len(r[1]) for r in rows))
    name = (getattr(model, "config", None) or {}).get("builder", type(model).__name__)
    lines = [f'Model: "{name}"', "=" * (w0 + w1 + 16),
             f"{'Layer (type)':<{w0}}  {'Output Shape':<{w1}}  {'Param #':>10}",
             "=" * (w0 + w1 + 16)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c:>10,}" for a, b, c in rows]
    lines += ["=" * (w0 + w1 + 16), f"Total params: {total:,}",
              f"Trainable params: {trainable:,}", f"Non-trainable params: {total - trainable:,}"]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
