"""The model registry: every builder registers here under its name, and ``build`` makes a model
from a ``model.config`` (``{"builder": name, "kwargs": {...}}``) so that a checkpoint can rebuild
its architecture. Also the small pieces the builders share: ``activation`` (a layer from its
name), ``norm_layers``, ``seeded_dropout``, and ``fit_whitening``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .. import init as initializers
from .. import layers as L

__all__ = ["MODELS", "register", "build", "activation", "act", "norm_layers", "seeded_dropout",
           "fit_whitening"]

MODELS: dict[str, Callable[..., L.Sequential]] = {}

_ACTIVATIONS: dict[str, Callable[[], L.Layer]] = {
    "relu": L.ReLU, "sigmoid": L.Sigmoid, "tanh": L.Tanh, "silu": L.SiLU, "swish": L.SiLU,
    "gelu": L.GELU, "leaky_relu": L.LeakyReLU,
}


def activation(name: str) -> L.Layer:
    """A new activation layer from its name ("relu", "sigmoid", "tanh", "silu", "gelu", ...)."""
    try:
        return _ACTIVATIONS[str(name).lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of "
                         f"{sorted(_ACTIVATIONS)}") from None


def _jsonable(value: Any) -> Any:
    """Tuples become lists, so that a config survives a JSON round trip unchanged."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# Builder arguments added after checkpoint format 1: left out of ``model.config`` at their
# default, so that a checkpoint of a model without them still loads in older versions.
_NEWER_ARGS = frozenset({"whiten"})


def register(name: str) -> Callable[[Callable[..., L.Sequential]], Callable[..., L.Sequential]]:
    """Register a builder under ``name`` and make it record ``model.config``."""

    def decorate(builder: Callable[..., L.Sequential]) -> Callable[..., L.Sequential]:
        signature = inspect.signature(builder)

        @functools.wraps(builder)
        def build_and_record(*args: Any, **kwargs: Any) -> L.Sequential:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            model = builder(*bound.args, **bound.kwargs)
            kwargs = {k: v for k, v in bound.arguments.items()
                      if not (k in _NEWER_ARGS and v == signature.parameters[k].default)}
            model.config = {"builder": name, "kwargs": _jsonable(kwargs)}
            # The input the builder was made for: ``model.summary()`` uses it when given none.
            size = kwargs.get("image_size") or (224 if name == "vgg16" and
                                                not kwargs.get("cifar") else 32)
            model.input_shape = (int(kwargs.get("in_channels", 3)), int(size), int(size))
            return model

        MODELS[name] = build_and_record
        return build_and_record

    return decorate


def build(builder: str, kwargs: dict[str, Any] | None = None) -> L.Sequential:
    """Build a registered model from its name and keyword arguments (a ``model.config``).

    >>> model = build(**other_model.config)   # the same architecture, fresh weights
    """
    if builder not in MODELS:
        raise ValueError(f"unknown model {builder!r}; expected one of {sorted(MODELS)}")
    return MODELS[builder](**(kwargs or {}))


def fit_whitening(model: L.Layer, images: Any) -> int:
    """Fit every ``PatchWhitening`` of ``model`` to ``images`` (N, C, H, W), normalised as
    the training batches are (a few thousand are plenty). Returns how many were fitted (0
    for a model without one). Call it once, before training."""
    layers = [m for m in model.modules() if isinstance(m, L.PatchWhitening)]
    for layer in layers:
        layer.fit(images)
    return len(layers)


def seeded_dropout(p: float) -> L.Dropout:
    """Dropout seeded from the initialisers' generator, so ``set_seed`` fixes its masks too."""
    return L.Dropout(p, seed=int(initializers.get_rng().integers(2**63)))


def norm_layers(kind: str | None, channels: int) -> list[L.Layer]:
    if kind in (None, "none", False):
        return []
    if kind in ("batch", "batchnorm", True):
        return [L.BatchNorm2d(channels)]
    if kind in ("instance", "instancenorm"):
        return [L.InstanceNorm2d(channels, affine=True)]
    raise ValueError(f"unknown norm {kind!r}; expected None, 'batch' or 'instance'")


act = activation  # the builders take an argument called ``activation``
