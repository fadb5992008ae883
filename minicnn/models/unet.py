"""U-Net (Ronneberger et al., 2015): a contracting path, an expanding path, and long skip
connections that concatenate each encoder stage's features to the decoder stage of its size."""

from __future__ import annotations

from .. import layers as L
from .registry import register

__all__ = ["double_conv", "unet"]

UPSAMPLING = ("transpose", "nearest", "bilinear")
HEADS = ("segmentation", "classification")


def double_conv(c_in: int, c_out: int, batchnorm: bool = True) -> L.Sequential:
    """(3x3 conv, padding 1 -> BN -> ReLU) x 2; without ``batchnorm`` the convs keep biases."""
    layers: list[L.Layer] = []
    for c in (c_in, c_out):
        layers.append(L.Conv2d(c, c_out, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(L.BatchNorm2d(c_out))
        layers.append(L.ReLU())
    return L.Sequential(*layers)


def _up(c_in: int, c_out: int, mode: str) -> L.Sequential:
    """Double the size and halve the channels: a 2x2 stride-2 transposed conv (the paper's
    up-convolution), or ``Upsample(2, mode)`` followed by a 3x3 conv."""
    if mode == "transpose":
        return L.Sequential(L.ConvTranspose2d(c_in, c_out, 2, stride=2))
    return L.Sequential(L.Upsample(2, mode=mode), L.Conv2d(c_in, c_out, 3, padding=1))


def _level(widths: list[int], i: int, up: str, batchnorm: bool) -> L.Sequential:
    """Everything below the skip of level i, at half its size and back:
    pool -> double_conv(w_i -> w_{i+1}) -> [skip of level i+1 -> double_conv] -> up."""
    inner: list[L.Layer] = [L.MaxPool2d(2), double_conv(widths[i], widths[i + 1], batchnorm)]
    if i + 2 < len(widths):
        inner += [L.Concat(L.Identity(), _level(widths, i + 1, up, batchnorm)),
                  double_conv(2 * widths[i + 1], widths[i + 1], batchnorm)]
    inner.append(_up(widths[i + 1], widths[i], up))
    return L.Sequential(*inner)


@register("unet")
def unet(in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 16,
         depth: int = 3, up: str = "transpose", batchnorm: bool = True,
         head: str = "segmentation") -> L.Sequential:
    """A small U-Net (Ronneberger, Fischer & Brox, 2015, "U-Net: Convolutional Networks for
    Biomedical Image Segmentation", arXiv:1505.04597).

    Encoder: ``double_conv`` (3x3 conv -> BN -> ReLU, twice) of ``width`` channels, then
    ``depth`` times: 2x2 max pooling and a double conv doubling the channels. Decoder, at each
    level from the bottom: an up-step (``up="transpose"``: the paper's 2x2 stride-2
    up-convolution, ``L.ConvTranspose2d``; ``"nearest"`` or ``"bilinear"``: ``L.Upsample(2)``
    then a 3x3 conv) halving the channels, concatenated with the encoder's features of that
    size (the long skip), then a double conv. The skips are nested ``Concat``s::

        double_conv -> Concat(Identity(), Sequential(pool, double_conv,
                                 Concat(Identity(), Sequential(...)), double_conv, up))
                    -> double_conv -> 1x1 conv (num_classes)

    Output: (N, num_classes, H, W), one map of class scores per pixel (``head="segmentation"``),
    trained with the per-pixel cross-entropy: ``CrossEntropyLoss`` on these logits and
    (N, H, W) integer masks (softmax over the classes at every pixel, the mean over all
    pixels; ``ignore_index`` for unlabelled ones; tests/test_segmentation.py).
    ``head="classification"`` adds global average pooling of those maps, giving (N,
    num_classes) logits that train on CIFAR-10 like the other models.

    Kept: the symmetric encoder/decoder, channels doubling per level, 2x2 max pooling, the
    2x2 up-convolution halving the channels, skips by concatenation, the final 1x1 conv.
    Changed: 'same' padding (the paper's unpadded convs shrink 572 -> 388 and need the skips
    cropped; here output size = input size), BatchNorm after each conv (a later habit; the
    paper has none), depth 3 and width 16 instead of 4 and 64 (32 -> 4 pixels at the bottom;
    the paper's net has 31 M parameters), no dropout at the bottom. Defaults: 482,890
    parameters. ``image_size`` must be divisible by 2 ** depth, so that every pooled size
    comes back exactly.
    """
    if up not in UPSAMPLING:
        raise ValueError(f"unet: up must be one of {UPSAMPLING}, got {up!r}")
    if head not in HEADS:
        raise ValueError(f"unet: head must be one of {HEADS}, got {head!r}")
    if int(depth) != depth or depth < 1 or int(width) != width or width < 1:
        raise ValueError(f"unet: depth and width must be positive integers, got {depth!r} and "
                         f"{width!r}")
    if image_size < 2 ** depth or image_size % 2 ** depth:
        raise ValueError(f"unet: image_size {image_size} must be a multiple of 2 ** depth = "
                         f"{2 ** depth}, so that {depth} 2x2 poolings and up-steps give the "
                         f"size back for each skip")
    widths = [int(width) * 2 ** i for i in range(int(depth) + 1)]
    layers: list[L.Layer] = [
        double_conv(in_channels, widths[0], batchnorm),
        L.Concat(L.Identity(), _level(widths, 0, up, batchnorm)),
        double_conv(2 * widths[0], widths[0], batchnorm),
        L.Conv2d(widths[0], num_classes, 1)]
    if head == "classification":
        layers.append(L.GlobalAvgPool2d())
    return L.Sequential(*layers)
