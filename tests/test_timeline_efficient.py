"""The efficient-architecture part of the timeline: MobileNet v1 / v2, EfficientNet, ConvNeXt.

Shapes on the default (32x32) and a tiny config, config round trips, the documented
parameter counts, whole-model gradient checks (float64, tiny versions), a few Adam steps
that lower the loss, structure (depthwise convs, residuals, SE, GroupNorm) and clear errors.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn import models
from minicnn.gradcheck import check_gradients
from minicnn.models.convnext import convnext
from minicnn.models.efficientnet import efficientnet
from minicnn.models.mobilenet import make_divisible, mobilenet_v1, mobilenet_v2
from tests.conftest import adam_losses, count

BUILDERS = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2,
            "efficientnet": efficientnet, "convnext": convnext}

# The parameter counts the docstrings print for the defaults.
DEFAULT_PARAMS = {"mobilenet_v1": 823_722, "mobilenet_v2": 700_490,
                  "efficientnet": 931_178, "convnext": 1_176_906}

# Tiny versions for 8x8 inputs: every kind of block appears (strided, residual, SE, k=5).
TINY = {
    "mobilenet_v1": dict(image_size=8, width_mult=1.0, stem_channels=3,
                         stages=((4, 1, 1), (6, 2, 2)), divisor=1),
    "mobilenet_v2": dict(image_size=8, width_mult=1.0, stem_channels=4,
                         stages=((1, 3, 1, 1), (2, 4, 2, 2)), last_channels=6, divisor=1,
                         dropout=0.0),
    "efficientnet": dict(image_size=8, stem_channels=4, stages=((1, 3, 4, 1, 1),
                                                                (2, 5, 6, 2, 2)),
                         head_channels=6, divisor=1, dropout=0.0),
    "convnext": dict(image_size=8, dims=(3, 5), depths=(1, 1), kernel_size=3, mlp_ratio=2),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_default_builds_logits_and_has_the_documented_parameter_count(name):
    builder = BUILDERS[name]
    model = builder()
    assert model.num_parameters() == DEFAULT_PARAMS[name]
    assert f"{DEFAULT_PARAMS[name]:,} parameters" in " ".join(builder.__doc__.split())
    assert model.input_shape == (3, 32, 32)
    model.eval()
    assert model.forward(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_tiny_forward_and_config_round_trip(name):
    model = BUILDERS[name](in_channels=1, num_classes=4, **TINY[name])
    assert model.config["builder"] == name and model.input_shape == (1, 8, 8)
    out = model.forward(np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32))
    assert out.shape == (3, 4) and out.dtype == np.float32
    rebuilt = models.build(**model.config)
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == \
        [(n, p.shape) for n, p in model.named_parameters()]
    assert rebuilt.config == model.config


@pytest.mark.parametrize("name", list(BUILDERS))
def test_tiny_models_pass_the_gradient_check(name):
    mc.init.set_seed(1)
    model = BUILDERS[name](**TINY[name])
    # At init (gamma 1, beta 0) BN -> ReLU -> depthwise conv -> BN is invariant to each
    # channel's gamma, so its true gradient is exactly 0 and the relative error measures
    # rounding noise. A generic point: random gammas and betas.
    rng = np.random.default_rng(1)
    for pname, p in model.named_parameters():
        if pname.endswith(("gamma", "beta")):
            p.data = (p.data + 0.5 * rng.standard_normal(p.shape)).astype(p.data.dtype)
    x = rng.standard_normal((3, 3, 8, 8))
    result = check_gradients(model, x, seed=1, max_entries=6)
    bad = {k for k, v in result.errors.items() if not v < 1e-6}
    # A BN beta before a bias-free 1x1 conv -> BN (train mode) adds a constant per channel
    # that the next BN subtracts again: its exact gradient is 0, and both sides are noise.
    # Those (and only those) must come out as zeros from backward.
    work = copy.deepcopy(model).astype(np.float64)
    out = work.forward(x)
    work.backward(np.random.default_rng(1).standard_normal(out.shape))
    params = work.parameters()
    for key in bad:
        i, pname = key.split(":")
        assert pname == "beta", (key, result.errors)
        assert np.abs(params[int(i)].grad).max() < 1e-9, (key, result.errors)
    if name in ("mobilenet_v1", "convnext"):
        assert not bad, result.errors


@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_few_adam_steps_lower_the_loss(name):
    mc.init.set_seed(2)
    model = BUILDERS[name](**TINY[name])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    losses = adam_losses(model, x, y, steps=30)
    assert losses[-1] < losses[10] < losses[0] and losses[-1] < 0.7 * losses[0], losses


def test_mobilenet_v1_blocks_are_depthwise_separable():
    model = mobilenet_v1()
    depthwise = [m for m in model.modules() if isinstance(m, L.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13  # the paper's 13 blocks
    assert all(m.groups == m.in_channels == m.out_channels and m.kernel_size == (3, 3)
               for m in depthwise)
    assert [m.stride for m in depthwise].count((2, 2)) == 4  # total stride 16 on 32x32
    pointwise = [m for m in model.modules() if isinstance(m, L.Conv2d) and m.groups == 1]
    assert [m.out_channels for m in pointwise][-1] == 512  # 1024 * alpha 0.5
    assert count(model, L.Residual) == 0


def test_mobilenet_v2_inverted_residuals_and_linear_bottleneck():
    model = mobilenet_v2(width_mult=1.0)
    assert model.num_parameters() == 2_236_682  # the usual CIFAR MobileNetV2 count
    blocks = [m for m in model.modules() if isinstance(m, L.Residual)]
    assert len(blocks) == 10  # Table 2: one per stride-1, same-width repeat
    body = blocks[0].body.layers
    kinds = [type(m).__name__ for m in body]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU",
                     "Conv2d", "BatchNorm2d"]  # no activation after the projection
    assert body[0].out_channels == 6 * body[0].in_channels and body[3].groups == body[3].in_channels
    last_conv = [m for m in model.modules() if isinstance(m, L.Conv2d)][-1]
    assert last_conv.out_channels == 1280
    assert [m for m in mobilenet_v2().modules() if isinstance(m, L.Conv2d)][-1].out_channels \
        == 1280  # the last conv is not narrowed below 1.0
    assert make_divisible(12, 8) == 16 and make_divisible(3.0, 1) == 3


def test_efficientnet_mbconv_squeeze_excite_silu_and_kernels():
    model = efficientnet()
    se = [m for m in model.modules() if isinstance(m, L.SqueezeExcite)]
    assert len(se) == 11
    # SE bottleneck = 0.25 of the block's input channels: the first block's input is 32.
    assert se[0].hidden == 8 and se[1].hidden == 4
    assert count(model, L.ReLU) == 11 and count(model, L.SiLU) > 20  # ReLU only inside SE
    kernels = sorted({m.kernel_size for m in model.modules()
                      if isinstance(m, L.Conv2d) and m.groups > 1})
    assert kernels == [(3, 3), (5, 5)]
    assert count(model, L.Residual) == 6
    deeper = efficientnet(depth_mult=1.2, width_mult=1.1)
    # Blocks per stage: ceil(1.2 n) = 2 + 3 + 3 + 4 + 4.
    assert len([m for m in deeper.modules() if isinstance(m, L.SqueezeExcite)]) == 16
    assert count(efficientnet(dropout=0.0), L.Dropout) == 0


def test_convnext_uses_groupnorm_1_and_patchify_stem():
    model = convnext()
    assert count(model, L.BatchNorm2d) == 0
    norms = [m for m in model.modules() if isinstance(m, L.GroupNorm)]
    assert norms and all(m.num_groups == 1 for m in norms)
    assert len(norms) == 1 + 6 + 3  # stem, one per block, one per downsampling layer
    stem = model.layers[0]
    assert stem.kernel_size == (2, 2) and stem.stride == (2, 2)
    blocks = [m for m in model.modules() if isinstance(m, L.Residual)]
    assert len(blocks) == 6
    dw, _, up, act, down = blocks[0].body.layers
    assert dw.kernel_size == (7, 7) and dw.groups == 32
    assert up.out_channels == 4 * 32 and down.out_channels == 32 and isinstance(act, L.GELU)
    assert isinstance(model.layers[-2], L.LayerNorm)


@pytest.mark.parametrize("name, kwargs, match", [
    ("mobilenet_v1", dict(image_size=8), "too small"),
    ("mobilenet_v1", dict(width_mult=0), "width_mult"),
    ("mobilenet_v1", dict(stages=((64, 1),)), "stage"),
    ("mobilenet_v2", dict(image_size=4), "too small"),
    ("mobilenet_v2", dict(stages=()), "empty"),
    ("efficientnet", dict(image_size=2), "too small"),
    ("efficientnet", dict(se_ratio=2), "se_ratio"),
    ("efficientnet", dict(stages=((6, 3, 24, 0, 1),)), "stage"),
    ("convnext", dict(image_size=8), "too small"),
    ("convnext", dict(dims=(8, 16), depths=(1, 1, 1)), "same length"),
    ("convnext", dict(kernel_size=4), "odd"),
])
def test_impossible_arguments_raise_clear_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BUILDERS[name](**kwargs)
