"""ResNet (He et al., 2015) of basic blocks: identity shortcuts inside a stage, 1x1 projections
where the shape changes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import layers as L
from .registry import register

__all__ = ["basic_block", "resnet"]


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


@register("resnet")
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
