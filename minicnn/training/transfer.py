"""Transfer learning: freeze and unfreeze layers, put a new classifier head on a model."""

from __future__ import annotations

from ..layers.base import Layer

__all__ = ["freeze", "unfreeze", "replace_head"]


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
    from ..layers import Linear, Sequential

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

