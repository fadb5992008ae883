"""The architecture timeline, early nets: AlexNet, Network in Network, SqueezeNet.

Shapes, parameter counts (the ones the docstrings print), configs that rebuild the same
model, whole-model gradient checks on tiny versions, a few Adam steps, and the errors for
impossible arguments.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn import models
from minicnn.gradcheck import check_gradients, numerical_gradient
from minicnn.models.alexnet import alexnet
from minicnn.models.nin import nin
from minicnn.models.squeezenet import squeezenet
from tests.conftest import adam_losses, count

TINY = {
    "alexnet": dict(widths=(4, 6, 8, 8, 6), hidden=8, image_size=16),
    "nin": dict(widths=((4, 4, 3), (6, 6)), kernel_sizes=(3, 3), image_size=8),
    "squeezenet": dict(stem=4, base_e=4, incr_e=4, squeeze_ratio=0.5, fires=4,
                       pool_after=(0, 2), image_size=8),
}


def logits_shape(model, side, batch=2, channels=3):
    model.eval()
    return model.forward(np.zeros((batch, channels, side, side), np.float32)).shape


@pytest.mark.parametrize("builder, count_", [(alexnet, 1_295_562), (nin, 966_986),
                                             (squeezenet, 729_034)])
def test_defaults_give_cifar_logits_and_the_documented_parameter_count(builder, count_):
    model = builder()
    assert model.num_parameters() == count_
    assert f"{count_:,} parameters" in " ".join(builder.__doc__.split())
    assert model.input_shape == (3, 32, 32)
    assert logits_shape(model, 32) == (2, 10)


@pytest.mark.parametrize("name, kwargs", [
    ("alexnet", TINY["alexnet"]),
    ("alexnet", dict(TINY["alexnet"], batchnorm=True, first_kernel=3, num_classes=7,
                     in_channels=1)),
    ("nin", TINY["nin"]),
    ("nin", dict(TINY["nin"], batchnorm=True, num_classes=7, in_channels=1)),
    ("squeezenet", TINY["squeezenet"]),
    ("squeezenet", dict(TINY["squeezenet"], bypass=True, batchnorm=True, num_classes=7,
                        in_channels=1)),
])
def test_tiny_versions_rebuild_from_their_config(name, kwargs):
    model = models.MODELS[name](**kwargs)
    classes, channels = kwargs.get("num_classes", 10), kwargs.get("in_channels", 3)
    assert logits_shape(model, kwargs["image_size"], channels=channels) == (2, classes)
    assert model.config["builder"] == name
    config = json.loads(json.dumps(model.config))  # as a checkpoint stores it
    rebuilt = models.build(**config)
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == \
        [(n, p.shape) for n, p in model.named_parameters()]
    assert rebuilt.config == model.config


def test_alexnet_topology():
    model = alexnet()
    assert count(model, L.Conv2d) == 5 and count(model, L.MaxPool2d) == 3
    assert count(model, L.Dropout) == 2 and count(model, L.BatchNorm2d) == 0
    convs = [m for m in model.modules() if isinstance(m, L.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (5, 5), (3, 3), (3, 3), (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, L.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128 * 3 * 3, 256),
                                                                  (256, 256), (256, 10)]
    bn = alexnet(batchnorm=True, dropout=0)
    assert count(bn, L.BatchNorm2d) == 5 and count(bn, L.Dropout) == 0
    assert all(m.b is None for m in bn.modules() if isinstance(m, L.Conv2d))
    assert logits_shape(alexnet(**TINY["alexnet"]), 15) == (2, 10)  # the smallest size


def test_nin_has_mlpconv_blocks_and_no_dense_layer():
    model = nin()
    convs = [m for m in model.modules() if isinstance(m, L.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 1, 1, 5, 1, 1, 3, 1, 1]
    assert [c.out_channels for c in convs] == [192, 160, 96, 192, 192, 192, 192, 192, 10]
    assert count(model, L.Linear) == 0 and count(model, L.GlobalAvgPool2d) == 1
    assert count(model, L.MaxPool2d) == 2 and count(model, L.Dropout) == 2
    assert count(model, L.ReLU) == 8  # the logits (last 1x1 conv) are linear
    assert isinstance(model.layers[-2], L.Conv2d)


def test_squeezenet_fire_widths_follow_the_papers_metaparameters():
    model = squeezenet()
    fires = [m for m in model.layers if isinstance(m, L.Sequential)]  # the stem is not
    squeeze = [f[0][0].out_channels for f in fires]
    expand = [sum(b[0].out_channels for b in f[1].branches) for f in fires]
    assert squeeze == [16, 16, 32, 32, 48, 48, 64, 64]
    assert expand == [128, 128, 256, 256, 384, 384, 512, 512]
    assert count(model, L.Concat) == 8 and count(model, L.MaxPool2d) == 3
    assert count(model, L.Linear) == 0 and isinstance(model.layers[-2], L.Conv2d)
    # SqueezeNet v1.0 for ImageNet has 1,248,424 parameters; its 7x7 stem holds 11,520 more
    # than this 3x3 one (3 * 96 * (49 - 9)).
    assert squeezenet(num_classes=1000).num_parameters() == 1_248_424 - 11_520
    bypassed = squeezenet(bypass=True)
    assert count(bypassed, L.Residual) == 4  # fire3, 5, 7, 9: channels in == out
    assert bypassed.num_parameters() == model.num_parameters()
    assert logits_shape(squeezenet(**TINY["squeezenet"]), 5) == (2, 10)  # any size


@pytest.mark.parametrize("name, kwargs", [
    ("alexnet", dict(TINY["alexnet"], dropout=0)),
    ("alexnet", dict(TINY["alexnet"], dropout=0, batchnorm=True)),
    ("nin", dict(TINY["nin"], dropout=0)),
    ("nin", dict(TINY["nin"], dropout=0, batchnorm=True)),
    ("squeezenet", dict(TINY["squeezenet"], dropout=0, bypass=True)),
    ("squeezenet", dict(TINY["squeezenet"], dropout=0, batchnorm=True)),
])
def test_whole_models_pass_the_gradient_check(name, kwargs):
    mc.init.set_seed(1)
    model = models.MODELS[name](**kwargs)
    side = kwargs["image_size"]
    rng = np.random.default_rng(1)
    # Biases start at zero: a pixel whose inputs are all cut by ReLU would sit exactly on the
    # next ReLU's kink, where central differences are wrong. Random biases move it off.
    for p in model.parameters():
        if p.name in ("b", "beta"):
            p.data = rng.normal(0.0, 0.1, p.shape).astype(p.data.dtype)
    x = rng.standard_normal((3, 3, side, side))
    result = check_gradients(model, x, seed=1, max_entries=6)
    bad = {key: error for key, error in result.errors.items() if not error < 1e-6}
    for key in [k for k in bad if k.endswith(":beta")]:
        # The one exception: a BatchNorm beta before ReLU -> max pooling -> conv ->
        # BatchNorm has a zero gradient when every pooled maximum passes the ReLU (max pooling
        # commutes with the shift, the next BatchNorm subtracts it). The analytic and numerical
        # values are then both round-off, and their relative error meaningless.
        analytic, numeric = _gradient_norms(model, x, int(key.split(":")[0]))
        if analytic < 1e-12 and numeric < 1e-8:
            del bad[key]
    assert not bad, bad


def _gradient_norms(model, x, index):
    """The analytic and the numerical gradient norms of parameter ``index``."""
    work = copy.deepcopy(model).astype(np.float64)
    y = work.forward(x)
    G = np.random.default_rng(2).standard_normal(y.shape)
    work.backward(G)
    param = work.parameters()[index]
    param.data = np.ascontiguousarray(param.data)
    numeric = numerical_gradient(lambda: float((work.forward(x) * G).sum()), param.data)
    return float(np.linalg.norm(param.grad)), float(np.linalg.norm(numeric))


@pytest.mark.parametrize("name", ["alexnet", "nin", "squeezenet"])
def test_a_few_adam_steps_lower_the_loss(name):
    mc.init.set_seed(0)
    kwargs = dict(TINY[name], dropout=0)
    model = models.MODELS[name](**kwargs)
    side = kwargs["image_size"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, side, side)).astype(np.float32)
    y = rng.integers(0, 10, size=8)
    losses = adam_losses(model, x, y, steps=12)
    assert losses[-1] < 0.95 * losses[0] and losses[-1] < min(losses[:-1]), losses


@pytest.mark.parametrize("builder, kwargs, match", [
    (alexnet, dict(image_size=14), "too small"),
    (alexnet, dict(widths=(8, 8, 8, 8)), "widths"),
    (alexnet, dict(first_kernel=4), "first_kernel"),
    (nin, dict(kernel_sizes=(5, 3)), "kernel_sizes"),
    (nin, dict(kernel_sizes=(5, 4, 3)), "odd"),
    (nin, dict(widths=((8, 8), (), (8,))), "positive"),
    (squeezenet, dict(pct_3x3=1.0), "pct_3x3"),
    (squeezenet, dict(base_e=4, incr_e=0, squeeze_ratio=0.1), "Fire module 1"),
    (squeezenet, dict(pool_after=(0, 9)), "pool_after"),
])
def test_impossible_arguments_raise_clear_errors(builder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        builder(**kwargs)
