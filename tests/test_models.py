"""The lectures' models: shapes, parameter counts, options, configs, summaries, gradients."""

from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn import models
from minicnn.gradcheck import assert_gradients
from tests.conftest import count, forward_shape


@pytest.mark.parametrize("name, kwargs, shape", [
    ("simple_cnn", dict(widths=(4, 8), hidden=16), (1, 28, 28)),
    ("simple_cnn", dict(in_channels=3, image_size=32, widths=(4, 8), hidden=16), (3, 32, 32)),
    ("vgg", dict(widths=(4, 8, 8), depth=(1, 2, 1), hidden=16), (3, 32, 32)),
    ("vgg", dict(in_channels=1, image_size=28, widths=(4, 8), residual=True, batchnorm=True,
                 hidden=None, global_pool=True), (1, 28, 28)),
    ("vgg", dict(in_channels=1, image_size=28, widths=(4, 8), depth=(2, 1), batchnorm=True,
                 pool_first=True), (1, 28, 28)),
    ("vgg16", dict(cifar=True, width=1 / 16), (3, 32, 32)),
    ("lenet5", dict(), (1, 28, 28)),
    ("lenet5", dict(in_channels=3, image_size=32, activation="relu", pool="max"), (3, 32, 32)),
    ("resnet", dict(widths=(4, 8, 16), blocks=1), (3, 32, 32)),
])
def test_builders_output_logits_and_record_their_config(name, kwargs, shape):
    model = models.MODELS[name](**kwargs)
    assert forward_shape(model, shape) == (2, 10)
    assert model.config["builder"] == name
    rebuilt = models.build(**model.config)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    assert rebuilt.config == model.config


def test_published_parameter_counts():
    # LeNet-5 (with 28x28 inputs padded to 32x32 in the first conv): 61,706.
    assert models.lenet5().num_parameters() == 61_706
    # VGG16's 13 convs hold 14,714,688 parameters; the CIFAR-10 head 512-256-256-10 adds
    # 131,328 + 65,792 + 2,570.
    assert models.vgg16(cifar=True).num_parameters() == 14_714_688 + 131_328 + 65_792 + 2_570


def test_vgg16_imagenet_head_without_building_it():
    # Building the 138M-parameter ImageNet model takes half a gigabyte; a width of 1/64 keeps
    # the topology: 5 poolings of 224 -> 7, Flatten 7*7*8, 64, 64, 1000.
    model = models.vgg16(width=1 / 64)
    linears = [m for m in model.modules() if isinstance(m, L.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7 * 7 * 8, 64), (64, 64),
                                                                  (64, 1000)]
    assert count(model, L.Conv2d) == 13 and count(model, L.MaxPool2d) == 5
    assert count(model, L.Dropout) == 2


def test_vgg_ladder_options():
    plain = models.vgg(widths=(4, 8), depth=2, activation="sigmoid", init="glorot_uniform")
    assert count(plain, L.Conv2d) == 4 and count(plain, L.Sigmoid) == 5  # 4 convs + dense
    assert count(plain, L.BatchNorm2d) == 0 and count(plain, L.MaxPool2d) == 2
    assert all(m.b is not None for m in plain.modules() if isinstance(m, L.Conv2d))

    bn = models.vgg(widths=(4, 8), depth=2, batchnorm=True, activation="silu")
    assert count(bn, L.BatchNorm2d) == 4 and count(bn, L.SiLU) == 5
    # A bias right before BatchNorm is cancelled by its mean subtraction: none is created.
    assert all(m.b is None for m in bn.modules() if isinstance(m, L.Conv2d))

    inorm = models.vgg(widths=(4, 8), depth=1, norm="instance")
    assert count(inorm, L.InstanceNorm2d) == 2

    res = models.vgg(widths=(4, 4, 8), depth=2, batchnorm=True, residual=True)
    blocks = [m for m in res.layers if isinstance(m, L.Residual)]
    assert len(blocks) == 3
    # Projection shortcut (1x1 conv) where the channels change (3->4, 4->8), identity where
    # they do not (4->4).
    kinds = [type(b.shortcut).__name__ for b in blocks]
    assert kinds == ["Sequential", "Identity", "Sequential"]
    assert blocks[0].shortcut[0].kernel_size == (1, 1)

    drop = models.vgg(widths=(4,), depth=1, dropout=0.5)
    assert [m.p for m in drop.modules() if isinstance(m, L.Dropout)] == [0.5, 0.5]
    with pytest.raises(ValueError, match="activation"):
        models.vgg(activation="swishy")
    with pytest.raises(ValueError, match="depth"):
        models.vgg(widths=(4, 8), depth=(1, 2, 3))


def test_init_option_sets_the_weight_scale():
    mc.init.set_seed(0)
    glorot = models.vgg(widths=(64,), depth=2, init="glorot_uniform")
    he = models.vgg(widths=(64,), depth=2, init="he_normal")
    W_g, W_h = glorot[2].W.data, he[2].W.data  # the 64 -> 64 3x3 conv
    fan_in, fan_out = 64 * 9, 64 * 9
    assert W_g.std() == pytest.approx(np.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    assert W_h.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)


def test_resnet_blocks_and_shortcuts():
    model = models.resnet()  # ResNet-20: 3 stages of 3 basic blocks
    blocks = [m for m in model.layers if isinstance(m, L.Residual)]
    assert len(blocks) == 9
    projections = [b for b in blocks if not isinstance(b.shortcut, L.Identity)]
    assert len(projections) == 2  # at 16 -> 32 and 32 -> 64, with stride 2
    assert [b.shortcut[0].stride for b in projections] == [(2, 2), (2, 2)]
    assert forward_shape(model, (3, 16, 16)) == (2, 10)  # any input size (global pooling)


def test_seeded_builds_are_identical_dropout_included():
    def build():
        mc.init.set_seed(7)
        return models.vgg(widths=(4,), depth=1, hidden=8, image_size=8, dropout=0.5)

    a, b = build(), build()
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(a.forward(x), b.forward(x))  # same weights, same masks


def test_summary_table_counts_and_leaves_the_model_untouched():
    model = models.vgg(widths=(4, 8), depth=1, batchnorm=True, hidden=16, image_size=16)
    bn = model[1]
    running = bn.running_mean.copy()
    lines = []
    text = models.summary(model, (3, 16, 16), print_fn=lines.append)
    assert lines == [text]
    assert "(None, 4, 16, 16)" in text and "(None, 8, 4, 4)" in text and "(None, 10)" in text
    assert f"Total params: {model.num_parameters():,}" in text
    assert "0: Conv2d" in text and "Linear" in text
    assert all(m.training for m in model.modules())
    np.testing.assert_array_equal(bn.running_mean, running)
    assert model.input_shape == (3, 16, 16)
    assert model.summary(print_fn=None) == text  # the builders know their input shape
    assert models.resnet(in_channels=1).input_shape == (1, 32, 32)
    assert models.vgg16(width=1 / 64).input_shape == (3, 224, 224)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("simple_cnn", dict(widths=(2, 3), hidden=4, image_size=8), (1, 8, 8)),
    ("vgg", dict(widths=(2, 3), depth=1, hidden=4, image_size=8, batchnorm=True,
                 residual=True, activation="silu"), (3, 8, 8)),
    ("vgg", dict(widths=(2, 3), depth=(2, 1), hidden=4, image_size=8, batchnorm=True,
                 pool_first=True), (3, 8, 8)),
    ("lenet5", dict(), (1, 28, 28)),
    ("resnet", dict(widths=(2, 3), blocks=1), (3, 6, 6)),
])
def test_whole_models_pass_the_gradient_check(name, kwargs, shape):
    mc.init.set_seed(1)
    model = models.MODELS[name](**kwargs)
    x = np.random.default_rng(1).standard_normal((3, *shape))
    assert_gradients(model, x, seed=1, max_entries=8)


def test_vgg_pool_first_pools_right_after_each_stages_first_conv():
    """airbench's ConvGroup: conv -> pool -> norm -> act, then the stage's other convs at
    the pooled size."""
    model = models.vgg(widths=(4, 8), depth=(2, 1), batchnorm=True, pool_first=True,
                       image_size=8, hidden=None)
    kinds = [type(m).__name__ for m in model.layers[:11]]
    assert kinds == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d",
                     "ReLU", "Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert model.forward(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 10)
    # Without the norm (or with gamma > 0) it is the same function as pooling at the end:
    # max pooling commutes with ReLU.
    mc.init.set_seed(3)
    first = models.vgg(widths=(4, 8), depth=1, pool_first=True, image_size=8, hidden=None)
    mc.init.set_seed(3)
    last = models.vgg(widths=(4, 8), depth=1, image_size=8, hidden=None)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(first.forward(x), last.forward(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pool_first"):
        models.vgg(residual=True, pool_first=True)


def test_summary_of_a_hand_built_model_without_an_input_shape():
    """``Layer.summary()`` works on any model: without an input shape it lists the layers
    and parameter counts (no forward pass, so no shapes)."""
    from minicnn import layers as L

    model = L.Sequential(L.Conv2d(3, 4, 3), L.ReLU(), L.Flatten(), L.Linear(4 * 6 * 6, 2))
    text = model.summary()
    assert "0: Conv2d" in text and "3: Linear" in text
    assert f"Total params: {model.num_parameters():,}" in text
    assert "Input" not in text  # no forward ran
    shaped = models.summary(model, (3, 8, 8), print_fn=None)
    assert "(None, 2)" in shaped


def test_a_built_model_summary_takes_an_input_shape_or_uses_its_own():
    # build() records the input shape; summary() with another one must still work (it once
    # replaced model.summary by a function with the shape already filled in: a TypeError).
    model = models.build("vgg", {"widths": [4, 8], "depth": 1, "hidden": None,
                                 "image_size": 8})
    table = model.summary((3, 8, 8), print_fn=None)
    assert "(None, 4, 8, 8)" in table and model.summary(print_fn=None) == table
