"""The lectures' own nets: ``simple_cnn`` (the first 2-conv sigmoid net), ``vgg`` (the VGG-style
ladder, every rung one call) and ``vgg16`` (ImageNet or its CIFAR-10 variant)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import layers as L
from .registry import act, norm_layers, register, seeded_dropout

__all__ = ["simple_cnn", "vgg", "vgg16"]


@register("simple_cnn")
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
        layers += [L.Conv2d(c, width, 3, padding="same", init=init), act(activation),
                   L.MaxPool2d(2)]
        c, size = width, size // 2
    layers += [L.Flatten(), L.Linear(c * size * size, hidden, init=init), act(activation),
               L.Linear(hidden, num_classes, init="glorot_uniform")]
    return L.Sequential(*layers)




@register("vgg")
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
        layers += [L.PatchWhitening(c, whiten), act(activation)]
        c, size = 2 * c * whiten * whiten, size - whiten + 1
    for width, n in zip(widths, depths, strict=True):
        stage: list[L.Layer] = []
        for i in range(n):
            pool = [L.MaxPool2d(2)] if pool_first and i == 0 else []
            stage += [L.Conv2d(c if i == 0 else width, width, 3, padding="same", bias=bias,
                               init=init), *pool, *norm_layers(kind, width), act(activation)]
        if residual:
            body = L.Sequential(*stage[:-1])  # the activation comes after the sum
            shortcut = None if c == width else L.Sequential(
                L.Conv2d(c, width, 1, bias=bias, init=init), *norm_layers(kind, width))
            layers += [L.Residual(body, shortcut), act(activation)]
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
            layers.append(seeded_dropout(dropout))
        layers += [L.Linear(features, hidden, init=init), act(activation)]
        features = hidden
    if dropout:
        layers.append(seeded_dropout(dropout))
    layers.append(L.Linear(features, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)


_VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@register("vgg16")
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
                       *norm_layers("batch" if batchnorm else None, channels), L.ReLU()]
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
            layers.append(seeded_dropout(dropout))
        features = units
    layers.append(L.Linear(features, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)
