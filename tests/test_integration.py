"""Whole-network checks: the lectures' sanity checks and the promises every layer shares.

- initial loss of a fresh 10-class classifier is ln 10 (± 0.1): the net starts unbiased;
- a small CNN overfits a batch of 32 random images to 100 % training accuracy;
- float32 in -> float32 everywhere (activations, gradients, parameters after a step);
- a whole model passes the gradient check in train and eval mode;
- backward never mutates the gradient it is given.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn.gradcheck import assert_gradients


def small_cnn(in_ch=3, classes=10, width=8, hidden=32):
    # Convs that feed BatchNorm have no bias: BatchNorm subtracts the batch mean, so such a
    # bias has exactly zero gradient in training mode (and is wasted work).
    return L.Sequential(
        L.Conv2d(in_ch, width, 3, padding="same", bias=False), L.BatchNorm2d(width), L.ReLU(),
        L.MaxPool2d(2),
        L.Residual(L.Sequential(L.Conv2d(width, width, 3, padding=1, bias=False),
                                L.BatchNorm2d(width),
                                L.SiLU())),
        L.Conv2d(width, 2 * width, (3, 2), stride=(1, 2), padding=(1, 0)), L.GELU(),
        L.AvgPool2d(2),
        L.Flatten(), L.Dropout(0.25), L.Linear(2 * width * 2 * 1, hidden), L.Tanh(),
        L.Linear(hidden, classes))


def test_initial_loss_is_ln_10():
    mc.init.set_seed(0)
    rng = np.random.default_rng(0)
    model = L.Sequential(
        L.Conv2d(3, 16, 3, padding="same"), L.BatchNorm2d(16), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(16 * 8 * 8, 64), L.ReLU(),
        L.Linear(64, 10, init="glorot_uniform"))
    # The last layer's scale sets the initial logits: shrink it as the lectures advise
    # ("small last-layer weights"), so the softmax starts near uniform.
    last = model.parameters()[-2]
    last.data *= 0.01
    x = rng.standard_normal((256, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    loss = float(mc.losses.CrossEntropyLoss().forward(model.forward(x), y))
    assert abs(loss - math.log(10)) < 0.1


def test_small_cnn_overfits_32_random_images():
    mc.init.set_seed(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    model = small_cnn()
    loss_fn = mc.losses.CrossEntropyLoss()
    opt = mc.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model.forward(x)
        loss = loss_fn.forward(logits, y)
        model.backward(loss_fn.backward())
        opt.step()
    model.eval()
    acc = float((model.forward(x).argmax(axis=1) == y).mean())
    assert acc == 1.0, f"training accuracy {acc:.2%} after 150 steps, loss {float(loss):.3f}"


def test_float32_stays_float32_through_a_training_step():
    rng = np.random.default_rng(2)
    model = small_cnn()
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    loss_fn = mc.losses.CrossEntropyLoss()
    logits = model.forward(x)
    assert logits.dtype == np.float32
    loss = loss_fn.forward(logits, y)
    assert loss.dtype == np.float32
    dx = model.backward(loss_fn.backward())
    assert dx.dtype == np.float32
    opt = mc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                       weight_decay=1e-4)
    opt.step()
    for p in model.parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32, p
    for m in model.modules():
        for name, buf in m.buffers().items():
            assert buf.dtype == np.float32, (m, name)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_whole_model_gradient_check(mode):
    mc.init.set_seed(3)
    model = small_cnn(width=3, hidden=5, classes=4)
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8))
    model.train()
    model.forward(x.astype(np.float32))  # non-trivial BatchNorm running statistics
    getattr(model, mode)()
    assert_gradients(model, x, max_entries=40, seed=3)


def test_backward_does_not_mutate_dout():
    model = small_cnn()
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = model.forward(x)
    dout = np.random.default_rng(5).standard_normal(out.shape).astype(np.float32)
    copy = dout.copy()
    model.backward(dout)
    np.testing.assert_array_equal(dout, copy)


def test_parameters_are_listed_in_definition_order():
    model = L.Sequential(L.Conv2d(1, 2, 3), L.BatchNorm2d(2),
                         L.Residual(L.Linear(4, 4), shortcut=L.Linear(4, 4, bias=False)))
    names = [p.name for p in model.parameters()]
    assert names == ["W", "b", "gamma", "beta", "W", "b", "W"]
    shapes = [p.shape for p in model.parameters()]
    assert shapes[0] == (2, 1, 3, 3) and shapes[4] == (4, 4)
