"""DenseNet-BC (Huang et al., 2016): every layer takes the concatenation of all the feature maps
before it in its block, through a 1x1 bottleneck; transitions compress and pool."""

from __future__ import annotations

from collections.abc import Sequence

from .. import layers as L
from .registry import register, seeded_dropout

__all__ = ["dense_layer", "transition", "densenet"]


def dense_layer(c_in: int, growth_rate: int, bottleneck: int = 4,
                dropout: float = 0.0) -> L.Concat:
    """DenseNet-BC's composite layer: ``Concat(Identity(), H)`` with
    H = BN -> ReLU -> 1x1 conv (bottleneck * k) -> BN -> ReLU -> 3x3 conv (k), so the block's
    feature maps grow by k = ``growth_rate`` channels: (N, c_in, H, W) -> (N, c_in + k, H, W).
    ``dropout`` > 0 adds dropout after each conv, as the paper does without augmentation."""
    c_mid = bottleneck * growth_rate
    body: list[L.Layer] = [L.BatchNorm2d(c_in), L.ReLU(), L.Conv2d(c_in, c_mid, 1, bias=False)]
    if dropout > 0:
        body.append(seeded_dropout(dropout))
    body += [L.BatchNorm2d(c_mid), L.ReLU(),
             L.Conv2d(c_mid, growth_rate, 3, padding=1, bias=False)]
    if dropout > 0:
        body.append(seeded_dropout(dropout))
    return L.Concat(L.Identity(), L.Sequential(*body))


def transition(c_in: int, c_out: int, dropout: float = 0.0) -> L.Sequential:
    """A transition layer: BN -> ReLU -> 1x1 conv (c_out) -> 2x2 average pooling (stride 2)."""
    layers: list[L.Layer] = [L.BatchNorm2d(c_in), L.ReLU(), L.Conv2d(c_in, c_out, 1, bias=False)]
    if dropout > 0:
        layers.append(seeded_dropout(dropout))
    return L.Sequential(*layers, L.AvgPool2d(2))


@register("densenet")
def densenet(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
             growth_rate: int = 12, blocks: Sequence[int] = (6, 6, 6),
             compression: float = 0.5, bottleneck: int = 4, dropout: float = 0.0) -> L.Sequential:
    """DenseNet-BC for CIFAR (Huang, Liu, van der Maaten & Weinberger, 2016, "Densely Connected
    Convolutional Networks", arXiv:1608.06993); the defaults give DenseNet-BC-40 (k = 12), and
    ``blocks=(16, 16, 16)`` the paper's smallest DenseNet-BC, L = 100, k = 12.

    Stem: a 3x3 conv of 2k channels (the paper's choice for DenseNet-BC). Dense block b:
    ``blocks[b]`` dense layers (``dense_layer``: ``Concat(Identity(), BN-ReLU-1x1 conv 4k-
    BN-ReLU-3x3 conv k)``), each adding k = ``growth_rate`` channels. Between blocks a
    transition (BN-ReLU-1x1 conv to floor(compression * c) channels, then 2x2 average pooling).
    Then BN-ReLU, global average pooling and a Linear classifier.

    Kept from the paper: the whole CIFAR architecture (three blocks at 32, 16 and 8 pixels,
    bottlenecks of 4k, compression 0.5, no conv biases). Changed: the default depth, cut from
    the paper's L = 100 to L = 40 (``blocks=(6, 6, 6)``: 3 x 6 dense layers x 2 convs, the stem,
    2 transitions and the classifier), about 3x faster to train on a CPU; and ``dropout``
    (0.2 in the paper, only for its runs without data augmentation) defaults to 0. With the
    defaults: 132 channels before the classifier and 176,122 parameters; ``blocks=(16, 16,
    16)`` gives 342 channels and 769,162 parameters (the 0.8 M of the paper's Table 2). Any
    input size works (global pooling); ``image_size`` only records it (and must be at least
    2 ** (len(blocks) - 1)).

    Memory: each Concat copies its block's features so far, so activations grow as
    O(L^2) per block in the naive implementation the paper's memory-efficient follow-up
    (Pleiss et al., 2017) avoids; minicnn keeps the naive, readable one.
    """
    if not blocks or any(int(n) != n or n < 1 for n in blocks):
        raise ValueError(f"densenet: blocks must list positive layer counts, got {blocks!r}")
    if int(growth_rate) != growth_rate or growth_rate < 1 or int(bottleneck) != bottleneck \
            or bottleneck < 1:
        raise ValueError(f"densenet: growth_rate and bottleneck must be positive integers, got "
                         f"{growth_rate!r} and {bottleneck!r}")
    if not 0 < compression <= 1:
        raise ValueError(f"densenet: compression must be in (0, 1], got {compression!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"densenet: dropout must be in [0, 1), got {dropout!r}")
    pools = len(blocks) - 1
    if image_size < 2 ** pools:
        raise ValueError(f"densenet: image_size {image_size} is too small for {pools} 2x2 "
                         f"average poolings; need at least {2 ** pools}")
    c = 2 * growth_rate
    layers: list[L.Layer] = [L.Conv2d(in_channels, c, 3, padding=1, bias=False)]
    for b, n in enumerate(blocks):
        if b > 0:
            c_out = max(1, int(compression * c))
            layers.append(transition(c, c_out, dropout))
            c = c_out
        for _ in range(int(n)):
            layers.append(dense_layer(c, growth_rate, bottleneck, dropout))
            c += growth_rate
    layers += [L.BatchNorm2d(c), L.ReLU(), L.GlobalAvgPool2d(),
               L.Linear(c, num_classes, init="glorot_uniform")]
    return L.Sequential(*layers)
