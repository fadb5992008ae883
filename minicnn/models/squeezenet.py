"""SqueezeNet (Iandola et al., 2016): Fire modules, a 1x1 conv to the classes, global pooling."""

from __future__ import annotations

from .. import layers as L
from .registry import norm_layers, register, seeded_dropout

__all__ = ["fire", "squeezenet"]


def _conv(c_in: int, c_out: int, k: int, batchnorm: bool) -> L.Sequential:
    return L.Sequential(L.Conv2d(c_in, c_out, k, padding=k // 2, bias=not batchnorm),
                        *norm_layers("batch" if batchnorm else None, c_out), L.ReLU())


def fire(c_in: int, squeeze: int, expand1x1: int, expand3x3: int,
         batchnorm: bool = False) -> L.Sequential:
    """A Fire module: squeeze 1x1 (``squeeze`` channels) -> ReLU, then two expand branches
    side by side, 1x1 (``expand1x1``) and 3x3 (``expand3x3``, 'same' padding), each with
    ReLU, concatenated along the channels: ``expand1x1 + expand3x3`` output channels."""
    return L.Sequential(
        _conv(c_in, squeeze, 1, batchnorm),
        L.Concat(_conv(squeeze, expand1x1, 1, batchnorm), _conv(squeeze, expand3x3, 3,
                                                                 batchnorm)))


@register("squeezenet")
def squeezenet(in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
               stem: int = 96, base_e: int = 128, incr_e: int = 128, freq: int = 2,
               squeeze_ratio: float = 0.125, pct_3x3: float = 0.5, fires: int = 8,
               pool_after: tuple[int, ...] = (0, 4, 8), bypass: bool = False,
               dropout: float = 0.5, batchnorm: bool = False) -> L.Sequential:
    """SqueezeNet for CIFAR-10: a conv stem, eight Fire modules, a 1x1 conv to the classes.

    Iandola, Han, Moskewicz, Ashraf, Dally and Keutzer, "SqueezeNet: AlexNet-level accuracy
    with 50x fewer parameters and <0.5MB model size", 2016, arXiv:1602.07360. A Fire module
    squeezes the channels with 1x1 convs, then expands them with 1x1 and 3x3 convs side by
    side (``L.Concat``). The widths follow the paper's metaparameters: Fire module i
    (i = 0 .. fires - 1) expands to ``e_i = base_e + incr_e * (i // freq)`` channels, a
    fraction ``pct_3x3`` of them 3x3, and squeezes to ``squeeze_ratio * e_i``. The defaults
    (128, 128, 2, 0.125, 0.5) give SqueezeNet v1.0's fire2 .. fire9: squeeze 16, 16, 32, 32,
    48, 48, 64, 64 and expand 128, 128, 256, 256, 384, 384, 512, 512. After the last Fire
    module: dropout 0.5, a 1x1 conv to ``num_classes`` channels, global average pooling --
    no dense layers.

    What this CIFAR-sized version changes:

    - the stem is a 3x3 conv with stride 1 (``stem`` = 96 channels, as v1.0) instead of
      7x7 stride 2, and the 3x3 stride-2 max poolings (after the stem, fire4 and fire8, as
      v1.0: ``pool_after`` counts Fire modules, 0 = the stem) are padded by 1: 32 -> 16 ->
      8 -> 4;
    - the final 1x1 conv has no ReLU, so the logits can be negative (the paper's has one);
    - with 10 classes the final conv holds 5,130 parameters instead of 513,000: the defaults
      have 729,034 parameters (v1.0 for ImageNet: 1,248,424, of which the 7x7 stem
      holds 11,520 more than a 3x3 one);
    - ``bypass=True`` adds the paper's "simple bypass" (a residual connection) around every
      Fire module whose input and output channels match (fire3, 5, 7 and 9 by default);
    - ``batchnorm=True`` adds BatchNorm after every conv but the last (an option; the paper
      has none).

    Parameters
    ----------
    in_channels, num_classes, image_size : int
        Input channels, classes and image side (any size: the poolings are padded and the
        head is global).
    stem : int
        Channels of the first (3x3) conv.
    base_e, incr_e, freq, squeeze_ratio, pct_3x3 : numbers
        The paper's metaparameters for the Fire modules' widths (see above).
    fires : int
        The number of Fire modules.
    pool_after : tuple of ints
        Where the 3x3 stride-2 max poolings go: after the stem (0) and after Fire module i.
    bypass : bool
        Residual connections around the Fire modules that keep the channel count.
    dropout : float
        Dropout probability before the final conv (0 leaves Dropout out).
    batchnorm : bool
        BatchNorm after every conv except the last.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, num_classes).
    """
    if int(fires) < 1 or int(stem) < 1 or int(freq) < 1:
        raise ValueError(f"squeezenet: fires, stem and freq must be >= 1, got fires={fires}, "
                         f"stem={stem}, freq={freq}")
    if not 0.0 < pct_3x3 < 1.0 or not 0.0 < squeeze_ratio:
        raise ValueError(f"squeezenet: pct_3x3 must be in (0, 1) and squeeze_ratio > 0, got "
                         f"{pct_3x3} and {squeeze_ratio}")
    if any(not 0 <= int(p) <= fires for p in pool_after):
        raise ValueError(f"squeezenet: pool_after entries must be in 0..{fires} (0 = after the "
                         f"stem, i = after Fire module i), got {tuple(pool_after)}")
    if int(image_size) < 1:
        raise ValueError(f"squeezenet: image_size must be positive, got {image_size}")
    pools = {int(p) for p in pool_after}
    layers: list[L.Layer] = [*_conv(in_channels, stem, 3, batchnorm).layers]
    if 0 in pools:
        layers.append(L.MaxPool2d(3, 2, padding=1))
    c = stem
    for i in range(fires):
        e = base_e + incr_e * (i // freq)
        e3 = int(round(e * pct_3x3))
        e1, s = e - e3, int(round(e * squeeze_ratio))
        if min(e1, e3, s) < 1:
            raise ValueError(f"squeezenet: Fire module {i + 1} would have squeeze {s}, "
                             f"expand 1x1 {e1} and 3x3 {e3} channels; each must be >= 1 "
                             f"(raise base_e or squeeze_ratio)")
        module = fire(c, s, e1, e3, batchnorm)
        layers.append(L.Residual(module) if bypass and c == e else module)
        c = e
        if i + 1 in pools:
            layers.append(L.MaxPool2d(3, 2, padding=1))
    if dropout:
        layers.append(seeded_dropout(dropout))
    layers += [L.Conv2d(c, num_classes, 1), L.GlobalAvgPool2d()]
    return L.Sequential(*layers)
