"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), sized for 32x32 CIFAR images."""

from __future__ import annotations

from collections.abc import Sequence

from .. import layers as L
from .registry import norm_layers, register, seeded_dropout

__all__ = ["alexnet"]


def _pooled(size: int, kernel: int = 3, stride: int = 2) -> int:
    """Output side of AlexNet's overlapping max pooling (3x3, stride 2, no padding)."""
    return (size - kernel) // stride + 1


@register("alexnet")
def alexnet(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
            widths: Sequence[int] = (48, 128, 192, 192, 128), hidden: int = 256,
            first_kernel: int = 5, dropout: float = 0.5,
            batchnorm: bool = False, lrn: bool = False) -> L.Sequential:
    """AlexNet for CIFAR-10: five convolutions, overlapping max pooling, two dense layers.

    Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional
    Neural Networks", NeurIPS 2012 (no arXiv id). The original takes 224x224 images:
    conv 11x11/4 (96) -> pool -> conv 5x5 (256) -> pool -> conv 3x3 (384, 384, 256) -> pool
    -> dense 4096 -> dense 4096 -> 1000, with ReLU, local response normalisation (LRN),
    overlapping 3x3/2 max pooling and dropout 0.5 before both 4096-unit layers.

    This CIFAR-sized version keeps the topology: five ReLU convolutions with a large first
    kernel, overlapping 3x3 stride-2 max pooling after conv 1, conv 2 and conv 5, and a head of
    two dropout-regularised dense layers. It changes:

    - the first conv is ``first_kernel`` x ``first_kernel`` (5x5) with stride 1 ('same'
      padding) instead of 11x11 stride 4, which would leave almost nothing of a 32x32 image;
    - the widths are half of the original's or less (48, 128, 192, 192, 128 instead of 96,
      256, 384, 384, 256) and the dense layers have 256 units instead of 4096, so that the
      model has about 1.3 M parameters instead of 60 M and trains on a CPU;
    - local response normalisation is off by default (the paper's follow-ups found it adds
      little): ``lrn=True`` puts the paper's ``LocalResponseNorm(5, alpha=1e-4, beta=0.75,
      k=2)`` after the ReLU of conv 1 and conv 2, before their pooling (ReLU -> LRN -> pool,
      as in the paper). ``batchnorm=True`` puts BatchNorm after every conv (the convs then
      have no bias, which BatchNorm's mean subtraction cancels); the two may be combined;
    - one model on one device: the original's two-GPU split of the filters is dropped.

    Spatial sizes for 32x32: 32 -> pool 15 -> pool 7 -> pool 3, so the head sees
    ``widths[4] * 3 * 3`` features. The defaults have 1,295,562 parameters.

    Parameters
    ----------
    in_channels, num_classes, image_size : int
        Input channels, classes and image side (at least 15: three poolings 3x3/2 must fit).
    widths : sequence of 5 ints
        The channels of the five convolutions.
    hidden : int
        The units of each of the two hidden dense layers.
    first_kernel : int
        The (odd) side of the first convolution's kernel.
    dropout : float
        Dropout probability before each hidden dense layer (0 leaves Dropout out).
    batchnorm : bool
        BatchNorm after every convolution (the modern replacement for the paper's LRN).
    lrn : bool
        The paper's local response normalisation (size 5, alpha 1e-4, beta 0.75, k 2) after
        the ReLU of conv 1 and conv 2, before their max pooling. It has no parameters.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, num_classes).
    """
    widths = [int(w) for w in widths]
    if len(widths) != 5 or min(widths) < 1:
        raise ValueError(f"alexnet: widths must be 5 positive channel counts, got {widths}")
    if first_kernel < 1 or first_kernel % 2 == 0:
        raise ValueError(f"alexnet: first_kernel must be odd ('same' padding), got "
                         f"{first_kernel}")
    size = int(image_size)
    for _ in range(3):
        if size < 3:
            raise ValueError(f"alexnet: image_size {image_size} is too small for three 3x3 "
                             f"stride-2 max poolings; it must be at least 15")
        size = _pooled(size)

    def conv(c_in: int, c_out: int, k: int) -> list[L.Layer]:
        return [L.Conv2d(c_in, c_out, k, padding=k // 2, bias=not batchnorm),
                *norm_layers("batch" if batchnorm else None, c_out), L.ReLU()]

    def lrn_layers() -> list[L.Layer]:
        return [L.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)] if lrn else []

    c1, c2, c3, c4, c5 = widths
    layers: list[L.Layer] = [
        *conv(in_channels, c1, first_kernel), *lrn_layers(), L.MaxPool2d(3, 2),
        *conv(c1, c2, 5), *lrn_layers(), L.MaxPool2d(3, 2),
        *conv(c2, c3, 3), *conv(c3, c4, 3), *conv(c4, c5, 3), L.MaxPool2d(3, 2),
        L.Flatten()]
    features = c5 * size * size
    for n_in in (features, hidden):
        if dropout:
            layers.append(seeded_dropout(dropout))
        layers += [L.Linear(n_in, hidden), L.ReLU()]
    layers.append(L.Linear(hidden, num_classes, init="glorot_uniform"))
    return L.Sequential(*layers)
