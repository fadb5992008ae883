"""Inception (GoogLeNet, Szegedy et al., 2014): blocks of four parallel branches joined along
the channel axis, a CIFAR-sized version with BatchNorm after every convolution."""

from __future__ import annotations

from collections.abc import Sequence

from .. import layers as L
from .registry import register, seeded_dropout

__all__ = ["GOOGLENET_BLOCKS", "conv_bn_relu", "inception_block", "inception"]

# GoogLeNet's Table 1, one row per Inception block: (#1x1, #3x3 reduce, #3x3, #5x5 reduce,
# #5x5, pool proj), grouped by stage (3a-3b, 4a-4e, 5a-5b).
GOOGLENET_BLOCKS: tuple[tuple[tuple[int, ...], ...], ...] = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
     (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),
)


def conv_bn_relu(c_in: int, c_out: int, kernel_size: int) -> L.Sequential:
    """conv (k x k, stride 1, 'same' padding, no bias: BatchNorm's beta replaces it) -> BN ->
    ReLU."""
    return L.Sequential(L.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                        L.BatchNorm2d(c_out), L.ReLU())


def inception_block(c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int,
                    factorize_5x5: bool = False) -> L.Concat:
    """One Inception block (GoogLeNet's Figure 2b): ``Concat`` of four branches,

    1. 1x1 conv (c1);
    2. 1x1 conv (c3r) -> 3x3 conv (c3);
    3. 1x1 conv (c5r) -> 5x5 conv (c5), or two 3x3 convs when ``factorize_5x5`` (the same
       receptive field with fewer weights, Inception-v2's factorisation);
    4. 3x3 max pooling (stride 1, padding 1) -> 1x1 conv (pool_proj);

    every conv followed by BatchNorm and ReLU. Output: c1 + c3 + c5 + pool_proj channels at the
    input's size.
    """
    branch5 = ([conv_bn_relu(c5r, c5, 3), conv_bn_relu(c5, c5, 3)] if factorize_5x5
               else [conv_bn_relu(c5r, c5, 5)])
    return L.Concat(
        conv_bn_relu(c_in, c1, 1),
        L.Sequential(conv_bn_relu(c_in, c3r, 1), conv_bn_relu(c3r, c3, 3)),
        L.Sequential(conv_bn_relu(c_in, c5r, 1), *branch5),
        L.Sequential(L.MaxPool2d(3, stride=1, padding=1), conv_bn_relu(c_in, pool_proj, 1)))


@register("inception")
def inception(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
              width: float = 0.25, stages: Sequence[int] = (2, 2, 2), stem: int = 192,
              factorize_5x5: bool = False, dropout: float = 0.4) -> L.Sequential:
    """A CIFAR-sized GoogLeNet (Szegedy et al., 2014, "Going deeper with convolutions",
    arXiv:1409.4842).

    Kept: the Inception block (four branches -- 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max pool ->
    1x1 -- joined by ``L.Concat``) with the paper's Table 1 channel counts, 3x3 stride-2 max
    pooling between stages, global average pooling, dropout (0.4, as in the paper) and a single
    Linear classifier.

    Changed for 32x32 CIFAR-10:

    - the ImageNet stem (7x7/2 conv, max pool, 1x1 and 3x3 convs, max pool: 224 -> 28) becomes
      one 3x3 conv of ``stem`` channels at stride 1 (the 192 channels of the paper's stem
      output, scaled by ``width``);
    - BatchNorm + ReLU after every conv (the BN-Inception habit of Ioffe & Szegedy, 2015; the
      original has no normalisation), and so no conv biases;
    - stage s keeps the first ``stages[s]`` blocks of the paper's stage (3a-3b, 4a-4e,
      5a-5b; default 2, 2, 2: blocks 3a 3b | 4a 4b | 5a 5b), every channel count multiplied
      by ``width`` (default 0.25, for CPU training; rounded, at least 1);
    - the two auxiliary classifiers are dropped (the paper's own ablation found them worth
      about 0.5 %; they only matter for the 22-layer ImageNet net);
    - ``factorize_5x5=True`` replaces each 5x5 conv by two 3x3 convs (Inception-v2).

    With the defaults: 32 -> 16 -> 8 pixels over the three stages, 256 channels before the
    classifier, 236,022 parameters (``width=0.5``: 931,586). Any input size works (global
    pooling); ``image_size`` only records it (and must be at least 2 ** (len(stages) - 1)).
    """
    if not stages or any(int(n) != n or not 1 <= n <= len(table)
                         for n, table in zip(stages, GOOGLENET_BLOCKS, strict=False)) \
            or len(stages) > len(GOOGLENET_BLOCKS):
        raise ValueError(f"inception: stages must list 1 to 3 block counts, stage s at most "
                         f"{[len(t) for t in GOOGLENET_BLOCKS]}[s], got {stages!r}")
    if not width > 0:
        raise ValueError(f"inception: width must be positive, got {width!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"inception: dropout must be in [0, 1), got {dropout!r}")
    pools = len(stages) - 1
    if image_size < 2 ** pools:
        raise ValueError(f"inception: image_size {image_size} is too small for {pools} "
                         f"stride-2 poolings; need at least {2 ** pools}")

    def scaled(c: int) -> int:
        return max(1, round(c * width))

    c = scaled(stem)
    layers: list[L.Layer] = [conv_bn_relu(in_channels, c, 3)]
    for s, n in enumerate(stages):
        if s > 0:
            layers.append(L.MaxPool2d(3, stride=2, padding=1))
        for row in GOOGLENET_BLOCKS[s][:int(n)]:
            c1, c3r, c3, c5r, c5, pp = (scaled(v) for v in row)
            layers.append(inception_block(c, c1, c3r, c3, c5r, c5, pp, factorize_5x5))
            c = c1 + c3 + c5 + pp
    layers += [L.GlobalAvgPool2d()]
    if dropout > 0:
        layers.append(seeded_dropout(dropout))
    layers.append(L.Linear(c, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)
