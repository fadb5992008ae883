"""ConvNeXt (Liu et al., 2022), sized for CIFAR-10, in its GroupNorm(1, C) variant: minicnn's
LayerNorm normalises the trailing dims of NCHW, not the channels of each pixel."""

from __future__ import annotations

from collections.abc import Sequence

from .. import layers as L
from .mobilenet import check_image_size
from .registry import register

__all__ = ["convnext", "convnext_block"]


def convnext_block(channels: int, kernel_size: int = 7, mlp_ratio: int = 4) -> L.Residual:
    """ConvNeXt's block: y = x + F(x), F = depthwise k x k ('same') -> GroupNorm(1, C) ->
    1x1 (C -> mlp_ratio * C) -> GELU -> 1x1 (back to C).

    The paper's norm is a LayerNorm over the channels of each pixel; here GroupNorm(1, C)
    normalises each sample over (C, H, W) together (the "ConvNeXt with GroupNorm" variant),
    with per-channel gamma and beta as the paper's. No layer scale, no stochastic depth.
    """
    hidden = int(mlp_ratio) * channels
    return L.Residual(L.Sequential(
        L.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels),
        L.GroupNorm(1, channels),
        L.Conv2d(channels, hidden, 1), L.GELU(),
        L.Conv2d(hidden, channels, 1)))


@register("convnext")
def convnext(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
             dims: Sequence[int] = (32, 64, 128, 256), depths: int | Sequence[int] = (1, 1, 3, 1),
             kernel_size: int = 7, mlp_ratio: int = 4, stem_patch: int = 2) -> L.Sequential:
    """A ConvNeXt, CIFAR-sized, with GroupNorm(1, C) where the paper has LayerNorm.

    Liu, Mao, Wu, Feichtenhofer, Darrell and Xie, "A ConvNet for the 2020s", 2022,
    arXiv:2201.03545.

    Patchify stem: conv ``stem_patch`` x ``stem_patch``, stride ``stem_patch`` -> norm. Stage
    s: ``depths[s]`` ConvNeXt blocks (``convnext_block``: depthwise 7x7 -> norm -> 1x1 to 4C
    -> GELU -> 1x1 back to C, identity residual) of ``dims[s]`` channels; between stages a
    downsampling layer, norm -> conv 2x2 stride 2. Head: global average pooling -> LayerNorm
    -> dense.

    Kept from the paper: the block (7x7 depthwise, inverted bottleneck of ratio 4, one norm,
    one GELU), the separate downsampling layers, the patchify stem, the stage compute ratio
    1:1:3:1, the pooled-LayerNorm head. Changed for 32x32 CIFAR-10: the stem patch is 2x2
    (not 4x4: 32x32 -> 16x16 -> ... -> 2x2), widths 32-64-128-256 and depths 1-1-3-1 (not
    ConvNeXt-T's 96-192-384-768 and 3-3-9-3) to stay near 1.2 M parameters. The norm: the
    paper's LayerNorm over the channels of each pixel is not available (minicnn's LayerNorm
    normalises the trailing dims of NCHW), so every norm in the body is GroupNorm(1, C),
    which normalises each sample over (C, H, W) together, with per-channel gamma and beta:
    the "ConvNeXt with GroupNorm" variant, not the paper's per-pixel LayerNorm. The head's
    LayerNorm acts on the pooled (N, C) vector, so it is the paper's. Dropped: layer scale
    and stochastic depth (minicnn has neither layer), the truncated-normal init (He here).

    The default has 1,176,906 parameters.

    Parameters
    ----------
    dims : sequence of int
        Channels per stage.
    depths : int or sequence of int
        Blocks per stage (an int: the same for every stage).
    kernel_size : int
        The depthwise kernel (7 in the paper).
    stem_patch : int
        The stem's patch size and stride (2 for 32x32 inputs; the paper's 4 for 224x224).
    """
    dims = [int(d) for d in dims]
    counts = [int(depths)] * len(dims) if isinstance(depths, int) else [int(d) for d in depths]
    if not dims or len(counts) != len(dims):
        raise ValueError(f"convnext: dims and depths must be non-empty and of the same length, "
                         f"got dims={dims!r} and depths={depths!r}")
    if min(dims) < 1 or min(counts) < 1 or kernel_size < 1 or mlp_ratio < 1 or stem_patch < 1:
        raise ValueError(f"convnext: dims, depths, kernel_size, mlp_ratio and stem_patch must "
                         f"be positive, got dims={dims!r}, depths={depths!r}, kernel_size="
                         f"{kernel_size!r}, mlp_ratio={mlp_ratio!r}, stem_patch={stem_patch!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"convnext: kernel_size must be odd (the depthwise conv keeps the "
                         f"size), got {kernel_size!r}")
    check_image_size("convnext", image_size, stem_patch * 2 ** (len(dims) - 1))
    layers: list[L.Layer] = [L.Conv2d(in_channels, dims[0], stem_patch, stride=stem_patch),
                             L.GroupNorm(1, dims[0])]
    for s, (dim, n) in enumerate(zip(dims, counts, strict=True)):
        if s > 0:
            layers += [L.GroupNorm(1, dims[s - 1]), L.Conv2d(dims[s - 1], dim, 2, stride=2)]
        layers += [convnext_block(dim, kernel_size, mlp_ratio) for _ in range(n)]
    layers += [L.GlobalAvgPool2d(), L.LayerNorm(dims[-1]),
               L.Linear(dims[-1], num_classes, init="glorot_uniform")]
    return L.Sequential(*layers)
