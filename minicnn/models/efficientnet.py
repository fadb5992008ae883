"""EfficientNet (Tan & Le, 2019), an EfficientNet-B0-like network sized for CIFAR-10: MBConv
blocks (1x1 expand -> depthwise k x k -> squeeze-and-excitation -> 1x1 linear projection)
with SiLU."""

from __future__ import annotations

from collections.abc import Sequence

from .. import layers as L
from .mobilenet import (
    check_image_size,
    check_stages,
    check_width,
    make_divisible,
    stages_stride,
)
from .registry import register, seeded_dropout

__all__ = ["efficientnet", "mbconv"]


def mbconv(c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, expand: int = 6,
           se_ratio: float = 0.25) -> L.Layer:
    """EfficientNet's MBConv block (MobileNet v2's inverted residual plus squeeze-excite).

    1x1 expand (c_in -> expand * c_in) -> BN -> SiLU (left out when expand == 1), depthwise
    k x k (stride ``stride``, 'same'-style padding k // 2) -> BN -> SiLU,
    ``SqueezeExcite`` with a bottleneck of max(1, se_ratio * c_in) units as in the paper's
    code (so reduction = expand / se_ratio on the expanded channels), 1x1 project (-> c_out)
    -> BN, no activation. ``Residual`` (identity) when stride 1 and c_in == c_out.

    minicnn's ``SqueezeExcite`` uses ReLU inside its bottleneck (the paper's code: SiLU).
    """
    hidden = c_in * int(expand)
    layers: list[L.Layer] = []
    if expand != 1:
        layers += [L.Conv2d(c_in, hidden, 1, bias=False), L.BatchNorm2d(hidden), L.SiLU()]
    layers += [L.Conv2d(hidden, hidden, kernel_size, stride=stride, padding=kernel_size // 2,
                        groups=hidden, bias=False),
               L.BatchNorm2d(hidden), L.SiLU()]
    if se_ratio:
        squeezed = max(1, int(c_in * se_ratio))
        layers.append(L.SqueezeExcite(hidden, reduction=max(1, hidden // squeezed)))
    layers += [L.Conv2d(hidden, c_out, 1, bias=False), L.BatchNorm2d(c_out)]
    body = L.Sequential(*layers)
    return L.Residual(body) if stride == 1 and c_in == c_out else body


# EfficientNet-B0's Table 1 as (expansion, kernel, channels, blocks, stride), cut to its first
# five stages (the 192- and 320-channel stages at 1x1 / 2x2 resolution are dropped) and with
# the second stage at stride 1 for 32x32 inputs: total stride 4 (32x32 -> 8x8 before pooling).
B0_CIFAR_STAGES = ((1, 3, 16, 1, 1), (6, 3, 24, 2, 1), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2),
                   (6, 5, 112, 3, 1))


@register("efficientnet")
def efficientnet(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 width_mult: float = 1.0, depth_mult: float = 1.0, stem_channels: int = 32,
                 stages: Sequence[Sequence[int]] = B0_CIFAR_STAGES, head_channels: int = 640,
                 se_ratio: float = 0.25, divisor: int = 8,
                 dropout: float = 0.2) -> L.Sequential:
    """An EfficientNet-B0-like network, CIFAR-sized.

    Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
    2019, arXiv:1905.11946.

    Stem: conv3x3 (``stem_channels``) -> BN -> SiLU; MBConv stages (``mbconv``: 1x1 expand ->
    depthwise 3x3 or 5x5 -> squeeze-and-excite -> 1x1 linear projection, identity shortcut
    when stride 1 and the channels are kept); conv1x1 (``head_channels``) -> BN -> SiLU;
    global average pooling, dropout, dense. Compound scaling: widths times ``width_mult``
    (rounded to a multiple of ``divisor``), blocks per stage times ``depth_mult`` (rounded
    up), as B1-B7 do from B0.

    Kept from B0: MBConv with SE (ratio 0.25 of the block's input) and SiLU, Table 1's first
    five stages (expansions, kernels 3/5, widths 16-24-40-80-112, depths 1-2-2-3-3), the 1x1
    head conv, dropout 0.2. Changed for 32x32 CIFAR-10: the stem and the second stage have
    stride 1 (total stride 4: 32x32 -> 8x8); the last two stages (192 and 320 channels, for
    7x7 maps of 224x224 images) are dropped and the head conv is 640 wide instead of 1280,
    to stay near 1 M parameters (B0 has 4 M without its ImageNet classifier). Dropped:
    stochastic depth (drop-connect; minicnn has no such layer); the SE bottleneck uses ReLU,
    not SiLU (minicnn's ``SqueezeExcite``).

    The default has 931,178 parameters.

    Parameters
    ----------
    stages : sequence of (expansion, kernel, channels, blocks, stride)
        Table 1's rows; a stage's first block has its stride.
    se_ratio : float
        SE bottleneck width as a fraction of the block's input channels (0: no SE).
    dropout : float
        Dropout before the dense layer (0: none).
    """
    check_width("efficientnet", width_mult)
    check_width("efficientnet", depth_mult)
    check_stages("efficientnet", stages, 5, "expansion, kernel, channels, blocks, stride")
    if not 0 <= se_ratio <= 1:
        raise ValueError(f"efficientnet: se_ratio must be in [0, 1], got {se_ratio!r}")
    check_image_size("efficientnet", image_size, stages_stride(stages))
    c = make_divisible(stem_channels * width_mult, divisor)
    layers: list[L.Layer] = [L.Conv2d(in_channels, c, 3, padding=1, bias=False),
                             L.BatchNorm2d(c), L.SiLU()]
    for t, k, channels, n, stride in stages:
        width = make_divisible(channels * width_mult, divisor)
        repeats = -int(-n * depth_mult // 1)  # ceil
        for i in range(repeats):
            layers.append(mbconv(c, width, int(k), int(stride) if i == 0 else 1, int(t),
                                 se_ratio))
            c = width
    head = make_divisible(head_channels * width_mult, divisor)
    layers += [L.Conv2d(c, head, 1, bias=False), L.BatchNorm2d(head), L.SiLU(),
               L.GlobalAvgPool2d()]
    if dropout:
        layers.append(seeded_dropout(dropout))
    layers.append(L.Linear(head, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)
