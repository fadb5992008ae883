"""The architecture timeline's Concat families: Inception (GoogLeNet), DenseNet-BC, U-Net.

Shapes, configs, published parameter counts, gradient checks of tiny versions, a few Adam
steps, clear errors. Tiny widths and 8x8..16x16 images keep the file fast.
"""

from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn import models
from minicnn.gradcheck import assert_gradients, numerical_gradient, relative_error
from minicnn.models.densenet import dense_layer, densenet
from minicnn.models.inception import inception, inception_block
from minicnn.models.unet import unet
from tests.conftest import adam_losses, count, forward_shape

TINY = {
    # width 1/8: every branch has 2+ channels. A 1-channel BatchNorm followed by ReLU -> conv
    # -> BatchNorm has a gradient that is exactly 0 at init (the second BN cancels a scaling
    # of its only input channel), which a relative-error check cannot judge.
    "inception": dict(width=1 / 8, stages=(1, 1), stem=16, dropout=0.0, image_size=8),
    "densenet": dict(growth_rate=2, blocks=(2, 1), bottleneck=2, image_size=8),
    "unet": dict(width=2, depth=2, image_size=8, head="classification"),
}


@pytest.mark.parametrize("name, kwargs, shape", [
    ("inception", dict(), (3, 32, 32)),
    ("inception", TINY["inception"], (3, 8, 8)),
    ("inception", dict(width=1 / 16, factorize_5x5=True, stages=(2, 1, 1), in_channels=1,
                       num_classes=7, image_size=16), (1, 16, 16)),
    ("densenet", dict(), (3, 32, 32)),
    ("densenet", TINY["densenet"], (3, 8, 8)),
    ("densenet", dict(growth_rate=3, blocks=(1, 1, 1), compression=1.0, dropout=0.2,
                      in_channels=1, num_classes=7, image_size=16), (1, 16, 16)),
    ("unet", dict(head="classification"), (3, 32, 32)),
    ("unet", TINY["unet"], (3, 8, 8)),
    ("unet", dict(width=2, depth=1, up="bilinear", head="classification", in_channels=1,
                  num_classes=7, image_size=16), (1, 16, 16)),
])
def test_builders_output_logits_and_rebuild_from_their_config(name, kwargs, shape):
    model = models.MODELS[name](**kwargs)
    classes = kwargs.get("num_classes", 10)
    assert forward_shape(model, shape) == (2, classes)
    assert model.config["builder"] == name
    assert model.input_shape == shape
    rebuilt = models.build(**model.config)
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == \
        [(n, p.shape) for n, p in model.named_parameters()]
    assert rebuilt.config == model.config


def test_default_parameter_counts_match_the_docstrings():
    assert inception().num_parameters() == 236_022
    assert inception(width=0.5).num_parameters() == 931_586
    assert densenet().num_parameters() == 176_122
    # The paper's DenseNet-BC (L=100, k=12): 0.8 M in its Table 2.
    assert densenet(blocks=(16, 16, 16)).num_parameters() == 769_162
    assert unet().num_parameters() == 482_890
    assert unet(head="classification").num_parameters() == 482_890  # pooling adds none
    for builder, text in ((inception, "236,022"), (densenet, "176,122"), (unet, "482,890")):
        assert text in builder.__doc__


def test_inception_block_branches():
    block = inception_block(8, 2, 3, 4, 1, 2, 3)
    assert isinstance(block, L.Concat) and len(block.branches) == 4
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32)
    assert block.forward(x).shape == (2, 2 + 4 + 2 + 3, 6, 6)
    kernels = sorted(m.kernel_size for m in block.modules() if isinstance(m, L.Conv2d))
    assert kernels == [(1, 1)] * 4 + [(3, 3), (5, 5)]
    pool = block.branches[3][0]
    assert isinstance(pool, L.MaxPool2d) and pool.stride == (1, 1)
    assert count(block, L.BatchNorm2d) == count(block, L.Conv2d) == 6
    factorized = inception_block(8, 2, 3, 4, 1, 2, 3, factorize_5x5=True)
    kernels = sorted(m.kernel_size for m in factorized.modules() if isinstance(m, L.Conv2d))
    assert kernels == [(1, 1)] * 4 + [(3, 3)] * 3
    model = inception()
    assert count(model, L.Concat) == 6 and count(model, L.Dropout) == 1
    # 3a 3b | pool | 4a 4b | pool | 5a 5b: 5b at width 1/4 has 96+96+32+32 channels.
    assert count(model, L.MaxPool2d) == 6 + 2 and model[-1].in_features == 256


def test_densenet_layers_grow_by_k_and_transitions_compress():
    layer = dense_layer(6, growth_rate=4)
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 5)).astype(np.float32)
    y = layer.forward(x)
    assert y.shape == (2, 10, 5, 5)
    np.testing.assert_array_equal(y[:, :6], x)  # the input's channels come through unchanged
    assert [m.out_channels for m in layer.modules() if isinstance(m, L.Conv2d)] == [16, 4]
    model = densenet()
    # stem 24; block 1: 24 + 6*12 = 96 -> 48; block 2: 120 -> 60; block 3: 132.
    transitions = [m for m in model.modules()
                   if isinstance(m, L.Sequential) and isinstance(m[-1], L.AvgPool2d)]
    assert [t[2].out_channels for t in transitions] == [48, 60]
    assert count(model, L.Concat) == 18 and model[-1].in_features == 132
    assert all(m.b is None for m in model.modules() if isinstance(m, L.Conv2d))


def test_unet_segmentation_head_maps_every_pixel():
    model = unet()
    assert forward_shape(model, (3, 32, 32)) == (2, 10, 32, 32)
    assert count(model, L.ConvTranspose2d) == 3 and count(model, L.MaxPool2d) == 3
    assert count(model, L.Concat) == 3  # one long skip per level
    bilinear = unet(width=2, depth=2, up="bilinear", num_classes=3, image_size=16)
    assert count(bilinear, L.Upsample) == 2 and count(bilinear, L.ConvTranspose2d) == 0
    assert forward_shape(bilinear, (3, 16, 16)) == (2, 3, 16, 16)
    plain = unet(width=2, depth=1, batchnorm=False, image_size=8)
    assert count(plain, L.BatchNorm2d) == 0
    assert forward_shape(plain, (3, 8, 8)) == (2, 10, 8, 8)


@pytest.mark.parametrize("up", ["transpose", "nearest"])
def test_unet_segmentation_gradients_of_a_scalar_loss(up):
    """L = sum(y * r) for a fixed r: dL/dx = model.backward(r), dL/dθ = θ.grad, against
    central differences (float64, training mode)."""
    mc.init.set_seed(2)
    model = unet(in_channels=2, num_classes=3, width=2, depth=2, up=up, image_size=8)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 8, 8))
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    y = model.forward(x)
    assert y.shape == (2, 3, 8, 8)
    r = rng.standard_normal(y.shape)
    dx = model.backward(r)

    def loss():
        return float((model.forward(x) * r).sum())

    idx = rng.choice(x.size, 12, replace=False)
    num = numerical_gradient(loss, x, indices=idx)
    assert relative_error(dx.ravel()[idx], num.ravel()[idx]) < 1e-6
    for p in model.parameters()[:: 5]:
        idx = rng.choice(p.data.size, min(4, p.data.size), replace=False)
        grad = p.grad.copy()
        num = numerical_gradient(loss, p.data, indices=idx)
        assert relative_error(grad.ravel()[idx], num.ravel()[idx]) < 1e-6
    assert_gradients(model, x, seed=3, max_entries=8)  # the library's check agrees


@pytest.mark.parametrize("name", sorted(TINY))
def test_whole_models_pass_the_gradient_check(name):
    mc.init.set_seed(1)
    model = models.MODELS[name](**TINY[name])
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8))
    assert_gradients(model, x, seed=1, max_entries=8)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_few_adam_steps_lower_the_loss(name):
    mc.init.set_seed(0)
    model = models.MODELS[name](**TINY[name])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    losses = adam_losses(model, x, y, steps=8)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name, kwargs, match", [
    ("inception", dict(stages=(2, 2, 2), image_size=2), "image_size"),
    ("inception", dict(stages=(3,)), "stages"),
    ("inception", dict(stages=()), "stages"),
    ("inception", dict(width=0), "width"),
    ("densenet", dict(blocks=(1, 1, 1), image_size=3), "image_size"),
    ("densenet", dict(compression=0), "compression"),
    ("densenet", dict(growth_rate=0), "growth_rate"),
    ("unet", dict(depth=3, image_size=12), "multiple of 2 \\*\\* depth"),
    ("unet", dict(depth=2, image_size=2), "image_size"),
    ("unet", dict(up="deconv"), "up must be"),
    ("unet", dict(head="detection"), "head must be"),
])
def test_impossible_arguments_raise_clear_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.MODELS[name](**kwargs)


def test_the_timeline_recipes_name_every_timeline_model_with_flags_the_cli_takes():
    # benchmarks/recipes_timeline.json trains the timeline side by side (benchmarks/recipes.py):
    # every recipe must parse as `minicnn train` flags and build its model.
    import json
    from pathlib import Path

    from minicnn import cli, presets

    recipes = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" /
                          "recipes_timeline.json").read_text())
    assert sorted(recipes) == sorted(models.TIMELINE)
    parser = cli.build_parser()
    for name, flags in recipes.items():
        args = parser.parse_args(["train", "--dataset", "cifar10", *flags])
        cfg = presets.resolve("cifar10", "cpu", {"model": args.model,
                                                 "model_kwargs": args.model_kwargs or {}})
        model = models.build(cfg["model"], cfg["model_kwargs"])
        assert model.config["builder"] == name
