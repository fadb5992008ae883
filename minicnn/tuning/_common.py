"""What the tuning tools share: default loss and optimizer, accuracy counts, and
``restored(model)``, which puts a model back as it was after a tool trained it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..backend import to_device
from ..layers.base import Layer, Parameter


def default_loss(loss: Any) -> Any:
    if loss is None:
        from ..losses import CrossEntropyLoss

        return CrossEntropyLoss()
    return loss


@contextlib.contextmanager
def restored(model: Layer, training: bool, params: bool = True) -> Iterator[Layer]:
    """Run a block in mode ``training``; afterwards put back everything training changes:
    the parameters and their gradients, the buffers (BatchNorm's running statistics), every
    module's own mode and the Dropout generators.

    ``params=False`` saves the buffers only, for forward passes that cannot change the
    parameters (and skips copying them).
    """
    state = model.state_dict() if params else dict(model.named_buffers())
    saved = {name: value.copy() for name, value in state.items()}
    grads = [(p, p.grad) for p in model.parameters()] if params else []
    rngs = model.rng_states()
    try:
        with model.mode(training=training):  # gives every module its own mode back
            yield model
    finally:
        model.load_state_dict(saved, strict=params)
        for p, g in grads:
            p.grad = g
        model.set_rng_states(rngs)


def make_optimizer(optimizer: Any, params: list[Parameter], lr: float) -> Any:
    """``optimizer``: None (Adam) or a factory ``(params, lr) -> optimizer``."""
    if optimizer is None:
        from ..optim import Adam

        return Adam(params, lr=lr)
    if not callable(optimizer):
        raise TypeError(f"expected optimizer=None (Adam) or a factory (params, lr) -> optimizer "
                        f"such as mc.optim.SGD or functools.partial(mc.optim.SGD, momentum=0.9)"
                        f", got {type(optimizer).__name__}")
    return optimizer(params, lr)


def trainable_parameters(model: Layer, owner: str) -> list[Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{owner}: the model has no trainable parameters")
    return params


def count_correct(logits: Any, y: Any) -> int:
    """Σ_n [argmax_k logits_nk = y_n] (soft targets: their top class), read back as an int.

    The labels are brought to the logits' device first: a loader may yield NumPy labels
    while the logits live on the GPU, and CuPy refuses mixed operands.
    """
    labels = to_device(y, like=logits)
    if labels.ndim != 1:
        labels = labels.argmax(axis=1)
    return int((logits.argmax(axis=1) == labels).sum())
