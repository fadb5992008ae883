"""MobileNet v1 (Howard et al., 2017) and v2 (Sandler et al., 2018), sized for CIFAR-10:
depthwise separable convolutions (a depthwise 3x3 ``Conv2d(c, c, 3, groups=c)`` then a
pointwise 1x1) and, in v2, inverted residual blocks with linear bottlenecks."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .. import layers as L
from .registry import register, seeded_dropout

__all__ = ["mobilenet_v1", "mobilenet_v2", "depthwise_separable", "inverted_residual",
           "make_divisible", "check_image_size", "stages_stride"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never
    more than 10 % below ``value``: the channel rounding of the MobileNet v2 / EfficientNet
    reference code. ``divisor=1`` rounds to the nearest integer (at least 1)."""
    divisor = int(divisor)
    if divisor < 1:
        raise ValueError(f"divisor must be a positive integer, got {divisor!r}")
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def stages_stride(stages: Sequence[Sequence[int]]) -> int:
    """The product of the stages' strides (the last field of each stage row)."""
    return math.prod(int(row[-1]) for row in stages)


def check_image_size(name: str, image_size: int, total_stride: int) -> None:
    """A clear ValueError when ``image_size`` cannot survive the network's downsampling."""
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"{name}: image_size must be a positive integer, got {image_size!r}")
    if image_size < total_stride:
        raise ValueError(f"{name}: image_size {image_size} is too small for the total stride "
                         f"{total_stride} of its stages (the last feature map would be empty); "
                         f"use image_size >= {total_stride} or fewer stride-2 stages")


def check_width(name: str, width_mult: float) -> None:
    if not width_mult > 0:
        raise ValueError(f"{name}: width_mult must be > 0, got {width_mult!r}")


def check_stages(name: str, stages: Sequence[Sequence[int]], arity: int, fields: str) -> None:
    if len(stages) == 0:
        raise ValueError(f"{name}: stages must not be empty")
    for stage in stages:
        if len(stage) != arity or any(int(v) != v or v < 1 for v in stage):
            raise ValueError(f"{name}: every stage must be {arity} positive integers "
                             f"({fields}), got {stage!r}")


def depthwise_separable(c_in: int, c_out: int, stride: int = 1) -> L.Sequential:
    """MobileNet v1's block: depthwise 3x3 (stride ``stride``) -> BN -> ReLU, then pointwise
    1x1 (c_in -> c_out) -> BN -> ReLU."""
    return L.Sequential(
        L.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
        L.BatchNorm2d(c_in), L.ReLU(),
        L.Conv2d(c_in, c_out, 1, bias=False), L.BatchNorm2d(c_out), L.ReLU())


# MobileNet v1's 13 depthwise separable blocks as stages of (channels, blocks, stride): the
# first block of a stage has the stride. ImageNet's stem stride 2 is 1 here (32x32 input).
V1_STAGES = ((64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2))


@register("mobilenet_v1")
def mobilenet_v1(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 width_mult: float = 0.5, stem_channels: int = 32,
                 stages: Sequence[Sequence[int]] = V1_STAGES, divisor: int = 1,
                 dropout: float = 0.0) -> L.Sequential:
    """MobileNet v1, CIFAR-sized.

    Howard, Zhu, Chen, Kalenichenko, Wang, Weyand, Andreetto and Adam, "MobileNets: Efficient
    Convolutional Neural Networks for Mobile Vision Applications", 2017, arXiv:1704.04861.

    Stem: conv3x3 (``stem_channels``) -> BN -> ReLU, then the paper's 13 depthwise separable
    blocks (``depthwise_separable``: depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN ->
    ReLU), global average pooling, (dropout,) dense. Every width is multiplied by the width
    multiplier alpha (``width_mult``) and rounded to a multiple of ``divisor``.

    Kept from the paper: the block, the 13-block layout (64, 128x2, 256x2, 512x6, 1024x2),
    the width multiplier. Changed for 32x32 CIFAR-10: the stem has stride 1 (not 2), so the
    total stride is 16 (32x32 -> 2x2 before pooling) instead of 32; alpha = 0.5 by default
    (the paper's 1.0 gives 3.2 M parameters, too many to train on a CPU). Dropped: the
    resolution multiplier rho (pass a smaller ``image_size`` and images instead).

    The default (alpha = 0.5) has 823,722 parameters.

    Parameters
    ----------
    width_mult : float
        alpha, multiplies every width (stem and blocks).
    stages : sequence of (channels, blocks, stride)
        The blocks, stage by stage; a stage's first block has its stride.
    divisor : int
        Widths are rounded to a multiple of it (1: to the nearest integer, as in the paper).
    dropout : float
        Dropout before the dense layer (0: none).
    """
    check_width("mobilenet_v1", width_mult)
    check_stages("mobilenet_v1", stages, 3, "channels, blocks, stride")
    check_image_size("mobilenet_v1", image_size, stages_stride(stages))
    c = make_divisible(stem_channels * width_mult, divisor)
    layers: list[L.Layer] = [L.Conv2d(in_channels, c, 3, padding=1, bias=False),
                             L.BatchNorm2d(c), L.ReLU()]
    for channels, n, stride in stages:
        width = make_divisible(channels * width_mult, divisor)
        for i in range(int(n)):
            layers.append(depthwise_separable(c, width, int(stride) if i == 0 else 1))
            c = width
    layers.append(L.GlobalAvgPool2d())
    if dropout:
        layers.append(seeded_dropout(dropout))
    layers.append(L.Linear(c, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)


def inverted_residual(c_in: int, c_out: int, stride: int = 1, expand: int = 6) -> L.Layer:
    """MobileNet v2's inverted residual block with a linear bottleneck.

    1x1 expand (c_in -> expand * c_in) -> BN -> ReLU (left out when expand == 1), depthwise
    3x3 (stride ``stride``) -> BN -> ReLU, 1x1 project (-> c_out) -> BN, no activation (the
    linear bottleneck). Wrapped in ``Residual`` (identity shortcut) when stride == 1 and
    c_in == c_out; a plain ``Sequential`` otherwise (the paper has no projection shortcut).
    The paper's ReLU6 is ReLU here: minicnn has no ReLU6 (the clip at 6 only matters for
    low-precision inference).
    """
    hidden = c_in * int(expand)
    layers: list[L.Layer] = []
    if expand != 1:
        layers += [L.Conv2d(c_in, hidden, 1, bias=False), L.BatchNorm2d(hidden), L.ReLU()]
    layers += [L.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
               L.BatchNorm2d(hidden), L.ReLU(),
               L.Conv2d(hidden, c_out, 1, bias=False), L.BatchNorm2d(c_out)]
    body = L.Sequential(*layers)
    return L.Residual(body) if stride == 1 and c_in == c_out else body


# The paper's Table 2 as (expansion t, channels c, blocks n, stride s). For 32x32 inputs the
# second stage's stride is 1 (not 2), as is the stem's: total stride 8 instead of 32.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))


@register("mobilenet_v2")
def mobilenet_v2(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 width_mult: float = 0.5, stem_channels: int = 32,
                 stages: Sequence[Sequence[int]] = V2_STAGES, last_channels: int = 1280,
                 divisor: int = 8, dropout: float = 0.2) -> L.Sequential:
    """MobileNet v2, CIFAR-sized.

    Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear
    Bottlenecks", 2018, arXiv:1801.04381.

    Stem: conv3x3 (``stem_channels``) -> BN -> ReLU; the paper's 17 inverted residual blocks
    (``inverted_residual``: 1x1 expand -> depthwise 3x3 -> 1x1 linear projection, identity
    shortcut when stride 1 and the channels are kept); conv1x1 (``last_channels``) -> BN ->
    ReLU; global average pooling, dropout, dense. Widths are multiplied by ``width_mult`` and
    rounded to a multiple of ``divisor`` (8, as in the reference code); as in the paper, the
    last 1x1 conv is not narrowed when ``width_mult`` < 1.

    Kept: the blocks, Table 2's expansions, widths and depths, the linear bottleneck, the
    1280-wide last conv, dropout 0.2. Changed for 32x32 CIFAR-10: the stem and the second
    stage have stride 1 (total stride 8: 32x32 -> 4x4 before pooling, not 224 -> 7);
    ``width_mult`` = 0.5 by default (1.0 gives 2.2 M parameters); ReLU instead of ReLU6
    (minicnn has no ReLU6; the clip only matters for low-precision inference).

    The default (``width_mult`` = 0.5) has 700,490 parameters.

    Parameters
    ----------
    stages : sequence of (expansion, channels, blocks, stride)
        Table 2's rows; a stage's first block has its stride.
    last_channels : int
        Width of the 1x1 conv before pooling (scaled only when ``width_mult`` > 1).
    dropout : float
        Dropout before the dense layer (0: none).
    """
    check_width("mobilenet_v2", width_mult)
    check_stages("mobilenet_v2", stages, 4, "expansion, channels, blocks, stride")
    check_image_size("mobilenet_v2", image_size, stages_stride(stages))
    c = make_divisible(stem_channels * width_mult, divisor)
    layers: list[L.Layer] = [L.Conv2d(in_channels, c, 3, padding=1, bias=False),
                             L.BatchNorm2d(c), L.ReLU()]
    for t, channels, n, stride in stages:
        width = make_divisible(channels * width_mult, divisor)
        for i in range(int(n)):
            layers.append(inverted_residual(c, width, int(stride) if i == 0 else 1, int(t)))
            c = width
    last = make_divisible(last_channels * max(1.0, width_mult), divisor)
    layers += [L.Conv2d(c, last, 1, bias=False), L.BatchNorm2d(last), L.ReLU(),
               L.GlobalAvgPool2d()]
    if dropout:
        layers.append(seeded_dropout(dropout))
    layers.append(L.Linear(last, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)
