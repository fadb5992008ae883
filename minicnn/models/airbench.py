"""airbench94's network (Jordan 2024, arXiv:2404.00498; KellerJordan/cifar10-airbench,
legacy/airbench94.py), built from minicnn's layers: the net of the CIFAR-10 GPU preset
(``minicnn.presets``, ``cifar10/gpu``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import init as initializers
from .. import layers as L
from .registry import register

__all__ = ["airbench94", "HEAD_SCALE"]

# The head's output is scaled by 1/9 in airbench (``Mul(1/9)`` after the bias-free Linear).
# minicnn has no scaling layer, so the scale lives in the weights: W' = W / 9 at init, and
# the optimizer steps W' at lr / 81 with weight decay x 81 (``presets.optimizer("airbench")``
# finds it by its name "W_head"), which is the same sequence of logits (derivation there).
HEAD_SCALE = 1.0 / 9.0


def _uniform_fan_in(shape: tuple[int, ...], fan_in: int, fan_out: int,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Conv2d and Linear weights
    (kaiming_uniform with a = sqrt(5))."""
    bound = 1.0 / math.sqrt(fan_in)
    return (rng or initializers.get_rng()).uniform(-bound, bound, size=shape).astype(np.float32)


def _dirac_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """airbench's conv init: PyTorch's default, then the first min(C_out, C_in) filters set
    to the identity (``torch.nn.init.dirac_``): filter i passes input channel i through."""
    W = _uniform_fan_in(shape, fan_in, fan_out, rng)
    c_out, c_in, kh, kw = shape
    k = min(c_out, c_in)
    W[:k] = 0.0
    W[np.arange(k), np.arange(k), kh // 2, kw // 2] = 1.0
    return W


def _head_init(shape: tuple[int, ...], fan_in: int, fan_out: int,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """PyTorch's default Linear init, times HEAD_SCALE (the scale folded into W)."""
    return (_uniform_fan_in(shape, fan_in, fan_out, rng) * HEAD_SCALE).astype(np.float32)


@register("airbench94")
def airbench94(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
               widths: Sequence[int] = (64, 256, 256), whiten: int = 2,
               bn_eps: float = 1e-12, bn_momentum: float = 0.4) -> L.Sequential:
    """airbench94's net: a fixed patch-whitening layer, three conv groups, a max-pool head.

    ::

        PatchWhitening(whiten x whiten, 2·C·whiten² channels, no padding) -> GELU
        3 x [conv3x3 -> MaxPool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU]   (widths)
        MaxPool(3) (global: 32 -> 31 -> 15 -> 7 -> 3 -> 1) -> Flatten -> Linear (no bias) / 9

    Convs have no bias and start as PyTorch's default with their first min(C_out, C_in)
    filters the identity (airbench's ``dirac_``); BatchNorm has eps 1e-12, momentum 0.4
    (PyTorch's convention: running = 0.6 running + 0.4 batch; airbench writes 0.6) and its
    weight frozen at 1 (``freeze_gamma``). The head's 1/9 is folded into its weight (named
    "W_head"; see HEAD_SCALE). 1.97 M parameters (the whitening filters are frozen).

    Not in minicnn (``presets.PRESETS["cifar10"]["gpu"]`` lists every deviation): the
    whitening layer's bias, which airbench trains for 3 epochs; half precision.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, num_classes).
    """
    widths = [int(w) for w in widths]
    c, size = int(in_channels), int(image_size)
    layers: list[L.Layer] = [L.PatchWhitening(c, whiten), L.GELU()]
    c, size = 2 * c * whiten * whiten, size - whiten + 1

    def norm(width: int) -> L.BatchNorm2d:
        return L.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum, freeze_gamma=True)

    for width in widths:
        layers += [L.Conv2d(c, width, 3, padding="same", bias=False, init=_dirac_uniform),
                   L.MaxPool2d(2), norm(width), L.GELU(),
                   L.Conv2d(width, width, 3, padding="same", bias=False, init=_dirac_uniform),
                   norm(width), L.GELU()]
        c, size = width, size // 2
    if size < 1:
        raise ValueError(f"airbench94: image_size {image_size} is too small for "
                         f"{len(widths)} poolings after a {whiten}x{whiten} whitening")
    head = L.Linear(c, num_classes, bias=False, init=_head_init)
    head.W.name = "W_head"  # presets.optimizer("airbench") steps it at lr * HEAD_SCALE²
    layers += [L.MaxPool2d(size), L.Flatten(), head]
    return L.Sequential(*layers)
