"""LeNet-5 (LeCun et al., 1998), the first row of the architecture timeline."""

from __future__ import annotations

from .. import layers as L
from .registry import act, register

__all__ = ["lenet5"]


@register("lenet5")
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
        L.Conv2d(in_channels, 6, 5, padding=pad, init="glorot_uniform"), act(activation),
        Pool(2),
        L.Conv2d(6, 16, 5, init="glorot_uniform"), act(activation), Pool(2),
        L.Flatten(),
        L.Linear(16 * size * size, 120, init="glorot_uniform"), act(activation),
        L.Linear(120, 84, init="glorot_uniform"), act(activation),
        L.Linear(84, num_classes, init="glorot_uniform"))

