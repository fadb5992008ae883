"""Network in Network (Lin, Chen and Yan, 2013): mlpconv blocks and global average pooling."""

from __future__ import annotations

from collections.abc import Sequence

from .. import layers as L
from .registry import norm_layers, register, seeded_dropout

__all__ = ["mlpconv", "nin"]


def mlpconv(c_in: int, widths: Sequence[int], kernel_size: int, batchnorm: bool = False,
            last_relu: bool = True) -> list[L.Layer]:
    """An mlpconv block: a k x k conv, then 1x1 convs, each followed by ReLU.

    The 1x1 convs are the "micro network": a small MLP shared across positions, applied to
    the k x k conv's features at every pixel ('same' padding keeps the size). With
    ``batchnorm`` every conv is followed by BatchNorm (and has no bias). ``last_relu=False``
    leaves the final conv linear (NiN's logits).
    """
    layers: list[L.Layer] = []
    c = c_in
    for i, width in enumerate(widths):
        k = kernel_size if i == 0 else 1
        last = i == len(widths) - 1
        norm = batchnorm and not (last and not last_relu)
        layers += [L.Conv2d(c, width, k, padding=k // 2, bias=not norm),
                   *norm_layers("batch" if norm else None, width)]
        if last_relu or not last:
            layers.append(L.ReLU())
        c = width
    return layers


@register("nin")
def nin(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
        widths: Sequence[Sequence[int]] = ((192, 160, 96), (192, 192, 192), (192, 192)),
        kernel_sizes: Sequence[int] = (5, 5, 3), dropout: float = 0.5,
        batchnorm: bool = False) -> L.Sequential:
    """Network in Network for CIFAR-10: three mlpconv blocks and global average pooling.

    Lin, Chen and Yan, "Network In Network", ICLR 2014, arXiv:1312.4400. Each mlpconv block
    is a k x k convolution followed by two 1x1 convolutions (a per-pixel MLP), all with
    ReLU; blocks are separated by 3x3 stride-2 max pooling and dropout 0.5; the last block
    has ``num_classes`` channels, one confidence map per class, and global average pooling
    turns them into the logits: no dense layers at all.

    The defaults are the paper's CIFAR-10 model (its Caffe definition): blocks of
    (5x5: 192, 1x1: 160, 1x1: 96), (5x5: 192, 192, 192), (3x3: 192, 192, num_classes),
    32 -> 16 -> 8 between them, 966,986 parameters. What changes:

    - both poolings between blocks are max pooling (the Caffe model's second is average
      pooling), 3x3 stride 2 with padding 1 (Caffe rounds its output size up: the same
      16 and 8);
    - the last 1x1 conv has no ReLU, so the logits can be negative (the Caffe model has one
      before the global pooling);
    - ``batchnorm=True`` adds BatchNorm after every conv but the last (an option; the paper
      predates BatchNorm);
    - no data preprocessing (the paper uses global contrast normalisation and ZCA whitening;
      see ``minicnn.data`` and ``PatchWhitening`` for those).

    Parameters
    ----------
    in_channels, num_classes, image_size : int
        Input channels, classes and image side (any size: the pooling is padded and the head
        is global).
    widths : sequence of sequences of ints
        The channels of each block's convs; the last block's list leaves out its final conv,
        which has ``num_classes`` channels.
    kernel_sizes : sequence of ints
        The (odd) side of each block's first conv, one per block.
    dropout : float
        Dropout probability after each pooling (0 leaves Dropout out).
    batchnorm : bool
        BatchNorm after every conv except the last.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, num_classes).
    """
    blocks = [[int(w) for w in block] for block in widths]
    kernels = [int(k) for k in kernel_sizes]
    if not blocks or len(blocks) != len(kernels):
        raise ValueError(f"nin: widths has {len(blocks)} blocks but kernel_sizes has "
                         f"{len(kernels)} entries; give one kernel size per block")
    if any(not block for block in blocks[:-1]) or any(min(b, default=1) < 1 for b in blocks):
        raise ValueError(f"nin: every block needs positive channel counts, got {blocks}")
    if any(k < 1 or k % 2 == 0 for k in kernels):
        raise ValueError(f"nin: kernel_sizes must be odd ('same' padding), got {kernels}")
    if int(image_size) < 1:
        raise ValueError(f"nin: image_size must be positive, got {image_size}")
    blocks[-1] = blocks[-1] + [num_classes]
    layers: list[L.Layer] = []
    c = in_channels
    for i, (block, k) in enumerate(zip(blocks, kernels, strict=True)):
        last = i == len(blocks) - 1
        layers += mlpconv(c, block, k, batchnorm=batchnorm, last_relu=not last)
        c = block[-1]
        if not last:
            layers.append(L.MaxPool2d(3, 2, padding=1))
            if dropout:
                layers.append(seeded_dropout(dropout))
    layers.append(L.GlobalAvgPool2d())
    return L.Sequential(*layers)
