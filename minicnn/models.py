"""The lectures' models, one builder each (and ``summary``, re-exported from ``layers``).

Every builder returns a ``Sequential`` whose ``config`` attribute records how it was built,
``{"builder": name, "kwargs": {...}}``, so a checkpoint can rebuild the same model
(``build(**model.config)``) before loading its weights. ``model.summary()`` prints the
Keras-style table (``minicnn.layers.summary``) for the input the model was built for
(``model.input_shape``)::

    model = mc.models.vgg(widths=(32, 64, 128), depth=2, batchnorm=True)
    model.summary()                              # = mc.models.summary(model, (3, 32, 32))

The builders:

- ``simple_cnn``: the 2-conv sigmoid net of the first Fashion-MNIST / CIFAR-10 lectures.
- ``vgg``: the VGG-style ladder. Stages of (3x3 conv 'same', stride 1) blocks with 2x2 max
  pooling after each stage, then dense 512, dense 10. Every rung of the lectures is one call:
  depth, widths, activation (sigmoid / ReLU / SiLU), BatchNorm on/off (or InstanceNorm),
  init (Glorot / He), residual connections (a projection shortcut per stage), dropout.
- ``vgg16``: VGG16 for ImageNet (224x224, 4096-4096-1000 head) or its CIFAR-10 variant
  (``cifar=True``: 32x32 input and a 512 -> 256 -> 256 -> 10 head).
- ``lenet5``: LeNet-5 (LeCun et al., 1998): 6 and 16 5x5 filters, 120-84-10.
- ``resnet``: a ResNet of basic blocks (two 3x3 convs), with identity shortcuts inside a
  stage and 1x1 projection shortcuts where the shape changes (ResNet-20 by default).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import init as initializers
from . import layers as L
from .layers.summary import summary  # public here too: mc.models.summary(model, shape)

__all__ = ["simple_cnn", "vgg", "vgg16", "lenet5", "resnet", "build", "MODELS", "summary",
           "activation", "fit_whitening"]

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


def _register(name: str) -> Callable[[Callable[..., L.Sequential]], Callable[..., L.Sequential]]:
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


def _dropout(p: float) -> L.Dropout:
    """Dropout seeded from the initialisers' generator, so ``set_seed`` fixes its masks too."""
    return L.Dropout(p, seed=int(initializers.get_rng().integers(2**63)))


def _norm(kind: str | None, channels: int) -> list[L.Layer]:
    if kind in (None, "none", False):
        return []
    if kind in ("batch", "batchnorm", True):
        return [L.BatchNorm2d(channels)]
    if kind in ("instance", "instancenorm"):
        return [L.InstanceNorm2d(channels, affine=True)]
    raise ValueError(f"unknown norm {kind!r}; expected None, 'batch' or 'instance'")


# -- the builders ------------------------------------------------------------------------------

@_register("simple_cnn")
def simple_cnn(in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
               widths: Sequence[int] = (32, 64), hidden: int = 128,
               activation: str = "sigmoid", init: str = "glorot_uniform") -> L.Sequential:
    """The lectures' first CNN: two (3x3 conv -> activation -> 2x2 max pool) stages, a hidden
    dense layer and the classifier.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, num_classes).
    With sigmoid activations and Glorot init it trains, slowly: the starting point of the
    ladder that ``vgg`` climbs.
    """
    layers: list[L.Layer] = []
    c, size = in_channels, image_size
    for width in widths:
        layers += [L.Conv2d(c, width, 3, padding="same", init=init), _act(activation),
                   L.MaxPool2d(2)]
        c, size = width, size // 2
    layers += [L.Flatten(), L.Linear(c * size * size, hidden, init=init), _act(activation),
               L.Linear(hidden, num_classes, init="glorot_uniform")]
    return L.Sequential(*layers)


_act = activation  # the builders take an argument called ``activation``


@_register("vgg")
def vgg(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
        widths: Sequence[int] = (64, 128, 256), depth: int | Sequence[int] = 2,
        activation: str = "relu", batchnorm: bool = False, norm: str | None = None,
        init: str = "he_normal", residual: bool = False, hidden: int | None = 512,
        dropout: float = 0.0, global_pool: bool = False,
        pool_first: bool = False, whiten: int = 0) -> L.Sequential:
    """The VGG-style ladder of the lectures.

    Each stage s is ``depth[s]`` blocks of (3x3 conv 'same', stride 1 -> norm -> activation)
    with ``widths[s]`` channels, followed by 2x2 max pooling; then Flatten (or global average
    pooling), dense ``hidden`` (if not None), dropout, dense ``num_classes``.

    Parameters
    ----------
    depth : int or sequence of int
        Conv blocks per stage (one number for all stages).
    activation : "sigmoid", "relu", "silu", ...
    batchnorm : bool
        BatchNorm2d after every conv (same as ``norm="batch"``).
    norm : None, "batch" or "instance"
        The normalisation after every conv; overrides ``batchnorm`` when given.
    init : "glorot_uniform", "he_normal", ...
        The initialiser of every conv and dense layer.
    residual : bool
        Wrap each stage's convs in ``Residual``: y = act(F(x) + S(x)), where F is the
        stage's blocks without the last activation and S a 1x1 conv projection (the identity
        when the stage keeps the channel count).
    hidden : int or None
        Units of the hidden dense layer (the lectures' 512); None for none.
    dropout : float
        Dropout probability before each dense layer (0: none).
    global_pool : bool
        Global average pooling instead of Flatten before the dense layers.
    pool_first : bool
        Pool right after each stage's first conv: conv -> max pool -> norm -> activation,
        then the stage's other blocks at the pooled size. With one block per stage this is
        nearly the same network: max pooling commutes with any increasing function (ReLU,
        SiLU on most of its range, BatchNorm's per-channel map while gamma > 0), but the norm
        and the activation run on a quarter of the pixels. With more blocks, the later convs
        also run at a quarter of the pixels: a different, much cheaper network (airbench's
        "ConvGroup", the fastest CIFAR-10 training script, is built this way). Not with
        ``residual``.
    whiten : int
        If > 0: start with a fixed ``PatchWhitening`` of ``whiten`` x ``whiten`` patches
        (2·C·whiten² channels, no padding, so the image shrinks by whiten - 1) and the
        activation, as airbench does. Its filters come from the training images:
        ``minicnn train`` calls ``fit_whitening(model, images)`` before training.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, num_classes).
    """
    depths = [int(depth)] * len(widths) if isinstance(depth, (int, np.integer)) else list(depth)
    if len(depths) != len(widths):
        raise ValueError(f"vgg: depth has {len(depths)} entries but widths has {len(widths)}")
    kind = norm if norm is not None else ("batch" if batchnorm else None)
    if pool_first and residual:
        raise ValueError("vgg: pool_first applies to plain stages, not with residual=True")
    bias = kind is None  # a bias before a normalisation layer is cancelled by its mean
    layers: list[L.Layer] = []
    c, size = in_channels, image_size
    if whiten:
        layers += [L.PatchWhitening(c, whiten), _act(activation)]
        c, size = 2 * c * whiten * whiten, size - whiten + 1
    for width, n in zip(widths, depths, strict=True):
        stage: list[L.Layer] = []
        for i in range(n):
            pool = [L.MaxPool2d(2)] if pool_first and i == 0 else []
            stage += [L.Conv2d(c if i == 0 else width, width, 3, padding="same", bias=bias,
                               init=init), *pool, *_norm(kind, width), _act(activation)]
        if residual:
            body = L.Sequential(*stage[:-1])  # the activation comes after the sum
            shortcut = None if c == width else L.Sequential(
                L.Conv2d(c, width, 1, bias=bias, init=init), *_norm(kind, width))
            layers += [L.Residual(body, shortcut), _act(activation)]
        else:
            layers += stage
        if not pool_first:
            layers.append(L.MaxPool2d(2))
        c, size = width, size // 2
    if global_pool:
        layers.append(L.GlobalAvgPool2d())
        features = c
    else:
        layers.append(L.Flatten())
        features = c * size * size
    if hidden:
        if dropout:
            layers.append(_dropout(dropout))
        layers += [L.Linear(features, hidden, init=init), _act(activation)]
        features = hidden
    if dropout:
        layers.append(_dropout(dropout))
    layers.append(L.Linear(features, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)


_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@_register("vgg16")
def vgg16(num_classes: int | None = None, in_channels: int = 3, image_size: int | None = None,
          cifar: bool = False, batchnorm: bool = False, dropout: float = 0.5,
          init: str = "he_normal", width: float = 1.0) -> L.Sequential:
    """VGG16 (Simonyan & Zisserman, 2015): 13 3x3 convs in 5 stages (64, 128, 256, 512, 512
    channels; 2, 2, 3, 3, 3 convs), max pooling after each stage, then the dense head.

    ImageNet (default): 224x224 input, 7x7x512 -> 4096 -> 4096 -> 1000, dropout 0.5.
    CIFAR-10 (``cifar=True``): 32x32 input, 1x1x512 -> 256 -> 256 -> 10.
    ``num_classes`` and ``image_size`` default to these (1000 and 224, or 10 and 32).
    ``width`` scales every layer's channels and units (e.g. 1/16 for a quick gradient check
    of the same topology).
    """
    if num_classes is None:
        num_classes = 10 if cifar else 1000
    if image_size is None:
        image_size = 32 if cifar else 224
    layers: list[L.Layer] = []
    c, size = in_channels, image_size
    for channels, n in _VGG16_STAGES:
        channels = max(1, round(channels * width))
        for _ in range(n):
            layers += [L.Conv2d(c, channels, 3, padding="same", bias=not batchnorm, init=init),
                       *_norm("batch" if batchnorm else None, channels), L.ReLU()]
            c = channels
        layers.append(L.MaxPool2d(2))
        size //= 2
    if size < 1:
        raise ValueError(f"vgg16: image_size {image_size} is too small for 5 poolings "
                         f"(need at least 32)")
    hidden = [max(1, round(units * width)) for units in ((256, 256) if cifar else (4096, 4096))]
    features = c * size * size
    layers.append(L.Flatten())
    for units in hidden:
        layers += [L.Linear(features, units, init=init), L.ReLU()]
        if dropout:
            layers.append(_dropout(dropout))
        features = units
    layers.append(L.Linear(features, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)


@_register("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
           activation: str = "tanh", pool: str = "avg") -> L.Sequential:
    """LeNet-5: conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> 120 -> 84 -> num_classes.

    A 28x28 input (MNIST) is padded by 2 in the first conv so that the feature maps have the
    sizes of the original 32x32 design: 28x28x6 -> 14x14x6 -> 10x10x16 -> 5x5x16.
    ``pool="max"`` and ``activation="relu"`` give the modern variant.
    """
    Pool = {"avg": L.AvgPool2d, "max": L.MaxPool2d}[pool]
    pad = 2 if image_size == 28 else 0
    size = ((image_size + 2 * pad - 4) // 2 - 4) // 2
    if size < 1:
        raise ValueError(f"lenet5: image_size {image_size} is too small (need at least 28)")
    return L.Sequential(
        L.Conv2d(in_channels, 6, 5, padding=pad, init="glorot_uniform"), _act(activation),
        Pool(2),
        L.Conv2d(6, 16, 5, init="glorot_uniform"), _act(activation), Pool(2),
        L.Flatten(),
        L.Linear(16 * size * size, 120, init="glorot_uniform"), _act(activation),
        L.Linear(120, 84, init="glorot_uniform"), _act(activation),
        L.Linear(84, num_classes, init="glorot_uniform"))


def basic_block(c_in: int, c_out: int, stride: int = 1) -> L.Residual:
    """ResNet's basic block: y = F(x) + S(x) with F = conv3x3 -> BN -> ReLU -> conv3x3 -> BN.

    S is the identity when the shape is kept, else a 1x1 conv projection (stride ``stride``)
    followed by BatchNorm. The ReLU after the sum is added by the caller.
    """
    body = L.Sequential(
        L.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), L.BatchNorm2d(c_out),
        L.ReLU(),
        L.Conv2d(c_out, c_out, 3, padding=1, bias=False), L.BatchNorm2d(c_out))
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = L.Sequential(L.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                L.BatchNorm2d(c_out))
    return L.Residual(body, shortcut)


@_register("resnet")
def resnet(in_channels: int = 3, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64),
           blocks: int | Sequence[int] = 3) -> L.Sequential:
    """A CIFAR-style ResNet of basic blocks (He et al., 2016); the defaults give ResNet-20.

    Stem: conv3x3 (widths[0]) -> BN -> ReLU. Stage s: ``blocks[s]`` basic blocks of
    ``widths[s]`` channels, each followed by ReLU; every stage after the first starts with a
    stride-2 block and a projection shortcut. Then global average pooling and a dense layer.
    Works for any input size.
    """
    counts = [int(blocks)] * len(widths) if isinstance(blocks, (int, np.integer)) \
        else list(blocks)
    layers: list[L.Layer] = [L.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                             L.BatchNorm2d(widths[0]), L.ReLU()]
    c = widths[0]
    for s, (width, n) in enumerate(zip(widths, counts, strict=True)):
        for i in range(n):
            stride = 2 if (s > 0 and i == 0) else 1
            layers += [basic_block(c, width, stride), L.ReLU()]
            c = width
    layers += [L.GlobalAvgPool2d(), L.Linear(c, num_classes, init="glorot_uniform")]
    return L.Sequential(*layers)
