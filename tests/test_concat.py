"""Concat: gradients over random branches, the forward formula, DenseNet / Inception blocks,
parameter names, the input_grad rule, errors and the CuPy stand-in."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.backend import to_numpy
from minicnn.gradcheck import assert_gradients
from minicnn.layers.container import Concat

# A branch body that keeps H and W: (kind, its output channels) -> a factory taking C_in.
BODIES = {
    "identity": lambda c, k: L.Identity(),
    "conv1": lambda c, k: L.Conv2d(c, k, 1, init="glorot_normal"),
    "conv3": lambda c, k: L.Sequential(L.Conv2d(c, k, 3, padding=1, init="glorot_normal"),
                                       L.Tanh()),
    "pool": lambda c, k: L.Sequential(L.MaxPool2d(3, stride=1, padding=1),
                                      L.Conv2d(c, k, 1, init="glorot_normal")),
}


def _out_channels(kind: str, c: int, k: int) -> int:
    return c if kind == "identity" else k


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(sorted(BODIES)), min_size=1, max_size=4),
       ks=st.lists(st.integers(1, 3), min_size=4, max_size=4),
       n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_concat_gradcheck(kinds, ks, n, c, h, w, seed):
    mc.init.set_seed(seed + 1)
    ks = ks[:len(kinds)]
    layer = Concat(*[BODIES[kind](c, k) for kind, k in zip(kinds, ks, strict=True)])
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    y = layer(x)
    assert y.shape == (n, sum(_out_channels(kd, c, k) for kd, k in zip(kinds, ks, strict=True)),
                       h, w)
    assert_gradients(layer, x, seed=seed)


def _by_formula(outputs, dout, dxs_of):
    """y and dx by the page's formula: y = concatenation, dx = Σ_b F_b.backward(dout_b)."""
    y = np.concatenate(outputs, axis=1)
    ends = np.cumsum([o.shape[1] for o in outputs])
    starts = np.concatenate([[0], ends[:-1]])
    dx = sum(dxs_of(b, dout[:, s:e]) for b, (s, e) in enumerate(zip(starts, ends, strict=True)))
    return y, dx


def test_forward_and_backward_match_the_formula():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    branches = [L.Identity(), L.Conv2d(3, 2, 3, padding=1), L.AvgPool2d(3, 1, padding=1)]
    layer = Concat(*branches)
    y = layer(x)
    dout = rng.standard_normal(y.shape)
    dout_copy = dout.copy()
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dout, dout_copy)  # dout never modified
    # The same branches run one by one.
    outputs = [b(x) for b in branches]
    y_ref, dx_ref = _by_formula(outputs, dout, lambda b, d: branches[b].backward(d))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    # Identity's block of y is x itself, and its share of dx is its block of dout.
    np.testing.assert_array_equal(y[:, :3], x)


def test_dout_is_split_into_views():
    seen = []

    class Spy(L.Identity):
        def backward(self, dout):
            seen.append(dout)
            return super().backward(dout)

    x = np.ones((2, 3, 2, 2))
    layer = Concat(Spy(), Spy())
    dout = np.arange(2 * 6 * 4, dtype=np.float64).reshape(2, 6, 2, 2)
    layer(x)
    dx = layer.backward(dout)
    assert all(np.shares_memory(d, dout) for d in seen)
    np.testing.assert_array_equal(dx, dout[:, :3] + dout[:, 3:])


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), k=st.integers(1, 3), h=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1))
def test_densenet_layer_gradcheck(n, c, k, h, seed):
    """DenseNet's layer: the input's channels, then k new ones."""
    mc.init.set_seed(seed + 1)
    layer = Concat(L.Identity(), L.Sequential(L.Conv2d(c, k, 3, padding=1), L.ReLU()))
    x = np.random.default_rng(seed).standard_normal((n, c, h, h))
    assert layer(x).shape == (n, c + k, h, h)
    assert_gradients(layer, x, seed=seed)


def test_inception_block_gradcheck():
    mc.init.set_seed(3)
    c = 3
    block = Concat(
        L.Conv2d(c, 2, 1),
        L.Sequential(L.Conv2d(c, 2, 1), L.ReLU(), L.Conv2d(2, 3, 3, padding=1)),
        L.Sequential(L.MaxPool2d(3, stride=1, padding=1), L.Conv2d(c, 1, 1)))
    x = np.random.default_rng(3).standard_normal((2, c, 5, 5))
    assert block(x).shape == (2, 6, 5, 5)
    result = assert_gradients(block, x, seed=3)
    assert len(result.errors) == 1 + 2 + 4 + 2  # x, then the branches' W, b in order


def test_nested_unet_style_long_skip_gradcheck():
    mc.init.set_seed(5)
    inner = L.Sequential(L.Conv2d(2, 3, 3, padding=1), L.Tanh(), L.Conv2d(3, 2, 1))
    layer = L.Sequential(Concat(L.Identity(), inner), L.Conv2d(4, 2, 1))
    assert_gradients(layer, np.random.default_rng(5).standard_normal((2, 2, 4, 4)), seed=5)


def test_parameter_names_order_and_state_dict_round_trip():
    mc.init.set_seed(0)
    layer = Concat(L.Identity(), L.Sequential(L.Conv2d(3, 2, 3, padding=1), L.BatchNorm2d(2)),
                   L.Conv2d(3, 1, 1, bias=False))
    names = [name for name, _ in layer.named_parameters()]
    assert names == ["branches.1.layers.0.W", "branches.1.layers.0.b",
                     "branches.1.layers.1.gamma", "branches.1.layers.1.beta", "branches.2.W"]
    assert layer.parameters() == [p for _, p in layer.named_parameters()]
    sd = layer.state_dict()
    assert set(sd) == set(names) | {"branches.1.layers.1.running_mean",
                                    "branches.1.layers.1.running_var"}
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    layer(x)
    mc.init.set_seed(1)
    other = Concat(L.Identity(), L.Sequential(L.Conv2d(3, 2, 3, padding=1), L.BatchNorm2d(2)),
                   L.Conv2d(3, 1, 1, bias=False))
    other.load_state_dict(layer.state_dict())
    layer.eval()
    other.eval()
    np.testing.assert_array_equal(other(x), layer(x))
    assert [type(m).__name__ for m in layer.children()] == ["Identity", "Sequential", "Conv2d"]
    layer.train(False)
    assert all(not m.training for m in layer.modules())


def test_a_branch_without_input_grad_adds_nothing_and_input_grad_off_returns_none():
    mc.init.set_seed(0)
    conv = L.Conv2d(2, 3, 1)
    layer = Concat(L.Identity(), conv)
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3))
    dout = np.random.default_rng(1).standard_normal((2, 5, 3, 3))
    layer(x)
    full = layer.backward(dout)
    conv.input_grad = False
    layer(x)
    np.testing.assert_array_equal(layer.backward(dout), dout[:, :2])  # the identity's only
    dW = conv.W.grad.copy()
    layer.input_grad = False
    layer(x)
    assert layer.backward(dout) is None
    np.testing.assert_array_equal(conv.W.grad, dW)  # the branches' parameters still get theirs
    conv.input_grad = layer.input_grad = True
    layer(x)
    np.testing.assert_array_equal(layer.backward(dout), full)
    # Every branch without input grad: None.
    only = L.Conv2d(2, 1, 1)
    only.input_grad = False
    single = Concat(only)
    single(x)
    assert single.backward(np.ones((2, 1, 3, 3))) is None


def test_float32_kept():
    x = np.ones((2, 3, 4, 4), dtype=np.float32)
    layer = Concat(L.Identity(), L.Conv2d(3, 2, 1))
    y = layer(x)
    assert y.dtype == np.float32
    assert layer.backward(np.ones_like(y)).dtype == np.float32


def test_errors():
    with pytest.raises(ValueError, match="Concat: expected at least one branch"):
        Concat()
    with pytest.raises(TypeError, match="Concat: branch 1 must be a Layer, got list"):
        Concat(L.Identity(), [L.Identity()])
    with pytest.raises(RuntimeError, match="Concat.backward called before forward"):
        Concat(L.Conv2d(1, 1, 1)).backward(np.ones((1, 1, 2, 2)))
    layer = Concat(L.Identity(), L.Conv2d(3, 2, 3))  # no padding: 4x4 -> 2x2
    with pytest.raises(ValueError, match=r"Concat: the branches' outputs must have the same "
                                         r"shape \(N, C_b, H, W\) but for the channels C_b; got "
                                         r"shapes \[\(2, 3, 4, 4\), \(2, 2, 2, 2\)\]"):
        layer(np.ones((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="Concat: the branches' outputs"):
        Concat(L.Identity(), L.Flatten())(np.ones((2, 3, 4, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="Concat: expected a floating-point array"):
        Concat(L.Identity())(np.ones((2, 3, 4, 4), dtype=np.int64))


def test_on_the_backend(xp):
    """NumPy and CuPy (the strict stand-in: `pytest -m cupy --strict-device`): same numbers."""
    mc.init.set_seed(0)
    layer = Concat(L.Identity(), L.Sequential(L.Conv2d(3, 2, 3, padding=1), L.ReLU()),
                   L.MaxPool2d(3, stride=1, padding=1))  # parameters on the backend under test
    on_cpu = copy.deepcopy(layer).to("cpu")
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    dout_np = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    y_np, dx_np = on_cpu(x_np), on_cpu.backward(dout_np)
    y = layer(xp.asarray(x_np))
    dx = layer.backward(xp.asarray(dout_np))
    assert mc.backend.get_array_module(y) is xp and y.dtype == np.float32
    assert mc.backend.get_array_module(dx) is xp and dx.dtype == np.float32
    np.testing.assert_allclose(to_numpy(y), y_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(dx), dx_np, rtol=1e-5, atol=1e-6)


def test_no_host_sync_on_the_strict_stand_in(strict_cupy):
    layer = Concat(L.Identity(), L.Sequential(L.Conv2d(3, 2, 3, padding=1), L.ReLU()))
    x = mc.backend.to_device(np.ones((2, 3, 4, 4), dtype=np.float32))
    with strict_cupy.record() as rec:
        y = layer(x)
        layer.backward(mc.backend.get_xp().ones_like(y))
    assert rec.syncs == 0, rec.report("sync")
    assert rec.h2d_bytes == 0, rec.report("h2d")
