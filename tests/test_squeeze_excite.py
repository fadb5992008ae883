"""SqueezeExcite: gradients over shapes and reductions, the forward formula, parameter names,
input_grad, errors, dtype, and the CuPy stand-in."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.gradcheck import assert_gradients
from minicnn.layers.attention import SqueezeExcite
from tests.conftest import assert_same_on_backend


def _by_formula(layer, x, dout):
    """y and dx from the docstring's formulas, in plain NumPy (float64)."""
    W1, b1 = layer.fc1.W.data, layer.fc1.b.data
    W2, b2 = layer.fc2.W.data, layer.fc2.b.data
    z = x.mean(axis=(2, 3))
    a = z @ W1 + b1
    r = np.maximum(a, 0)
    s = 1 / (1 + np.exp(-(r @ W2 + b2)))
    y = x * s[:, :, None, None]
    ds = (dout * x).sum(axis=(2, 3))
    dt = ds * s * (1 - s)
    dz = ((dt @ W2.T) * (a > 0)) @ W1.T
    H, W = x.shape[2:]
    dx = dout * s[:, :, None, None] + dz[:, :, None, None] / (H * W)
    return y, dx


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 8), reduction=st.integers(1, 10),
       h=st.integers(1, 4), w=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_squeeze_excite_gradcheck(n, c, reduction, h, w, seed):
    mc.init.set_seed(seed + 1)
    layer = SqueezeExcite(c, reduction)
    assert layer.hidden == max(1, c // reduction)
    layer.fc1.b.data = 0.1 * np.random.default_rng(seed + 2).standard_normal(layer.hidden)
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    # Away from ReLU's kink: a hidden pre-activation a ≈ 0 makes fc2.W's gradient (∝ ReLU(a))
    # so small that central differences' rounding dominates its relative error.
    a = x.mean(axis=(2, 3)) @ layer.fc1.W.data + layer.fc1.b.data
    assume(np.abs(a).min() > 0.05)
    result = assert_gradients(layer, x, seed=seed)
    assert len(result.errors) == 5  # x, fc1.W, fc1.b, fc2.W, fc2.b


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 6), reduction=st.integers(1, 4),
       h=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_forward_and_backward_match_the_formula(n, c, reduction, h, seed):
    mc.init.set_seed(seed)
    layer = SqueezeExcite(c, reduction).astype(np.float64)
    rng = np.random.default_rng(seed)
    layer.fc1.b.data = 0.1 * rng.standard_normal(layer.hidden)
    layer.fc2.b.data = 0.1 * rng.standard_normal(c)
    x = rng.standard_normal((n, c, h, h + 1))
    dout = rng.standard_normal(x.shape)
    dout_copy = dout.copy()
    y = layer(x)
    dx = layer.backward(dout)
    y_ref, dx_ref = _by_formula(layer, x, dout)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(dout, dout_copy)  # dout never modified


def test_matches_the_same_block_built_from_the_sub_layers():
    """Two paths to x: the direct one (x ⊙ s) and the gate's; dx is their sum."""
    mc.init.set_seed(0)
    layer = SqueezeExcite(4, 2).astype(np.float64)
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((2, 4, 3, 3)), rng.standard_normal((2, 4, 3, 3))
    y = layer(x)
    dx = layer.backward(dout)
    gate = L.Sequential(L.GlobalAvgPool2d(), layer.fc1, L.ReLU(), layer.fc2, L.Sigmoid())
    s = gate(x)
    np.testing.assert_allclose(y, x * s[:, :, None, None])
    dx_gate = gate.backward((dout * x).sum(axis=(2, 3)))
    np.testing.assert_allclose(dx, dout * s[:, :, None, None] + dx_gate, rtol=1e-12)


def test_parameter_names_shapes_and_state_dict_round_trip():
    mc.init.set_seed(0)
    layer = SqueezeExcite(10, 4)  # 10 // 4 = 2 hidden units (C need not be a multiple of r)
    assert [(name, p.shape) for name, p in layer.named_parameters()] == [
        ("fc1.W", (10, 2)), ("fc1.b", (2,)), ("fc2.W", (2, 10)), ("fc2.b", (10,))]
    assert list(layer.state_dict()) == ["fc1.W", "fc1.b", "fc2.W", "fc2.b"]
    assert SqueezeExcite(3, 16).hidden == 1
    x = np.random.default_rng(0).standard_normal((2, 10, 3, 3)).astype(np.float32)
    mc.init.set_seed(1)
    other = SqueezeExcite(10, 4)
    assert not np.array_equal(other(x), layer(x))
    other.load_state_dict(layer.state_dict())
    np.testing.assert_array_equal(other(x), layer(x))
    assert repr(layer) == "SqueezeExcite(10, reduction=4)"
    inside = L.Sequential(L.Conv2d(10, 10, 1), SqueezeExcite(10, 4))
    assert [n for n, _ in inside.named_parameters()][2:] == [
        "layers.1.fc1.W", "layers.1.fc1.b", "layers.1.fc2.W", "layers.1.fc2.b"]


def test_float32_kept_and_cache_small():
    layer = SqueezeExcite(6, 3)
    x = np.random.default_rng(0).standard_normal((2, 6, 4, 4)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32
    kept_x, s = layer.cache
    assert kept_x is x and s.shape == (2, 6)  # the input by reference, the (N, C) gate
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert all(p.grad.dtype == np.float32 for p in layer.parameters())


def test_input_grad_off_returns_none_but_fills_the_parameter_gradients():
    mc.init.set_seed(0)
    layer = SqueezeExcite(4, 2)
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    dout = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    layer(x)
    layer.backward(dout)
    grads = [p.grad.copy() for p in layer.parameters()]
    layer.input_grad = False
    layer(x)
    assert layer.backward(dout) is None
    for p, g in zip(layer.parameters(), grads, strict=True):
        np.testing.assert_array_equal(p.grad, g)


def test_errors():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="SqueezeExcite: channels must be a positive"):
            SqueezeExcite(bad, 2)
        with pytest.raises(ValueError, match="SqueezeExcite: reduction must be a positive"):
            SqueezeExcite(4, bad)
    layer = SqueezeExcite(4, 2)
    with pytest.raises(RuntimeError, match="SqueezeExcite.backward called before forward"):
        layer.backward(np.ones((1, 4, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"SqueezeExcite: expected input of shape "
                                         r"\(N, 4, H, W\), got shape \(2, 4\)"):
        layer(np.ones((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"SqueezeExcite: expected input of shape "
                                         r"\(N, 4, H, W\) with 4 channels"):
        layer(np.ones((2, 3, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="SqueezeExcite: expected a floating-point array"):
        layer(np.ones((2, 4, 2, 2), dtype=np.int32))


def test_on_the_backend(xp):
    """NumPy and CuPy (the strict stand-in: `pytest -m cupy --strict-device`): same numbers."""
    mc.init.set_seed(0)
    layer = SqueezeExcite(6, 3)  # parameters on the backend under test
    on_cpu = copy.deepcopy(layer).to("cpu")
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((2, 6, 4, 4)).astype(np.float32)
    dout_np = rng.standard_normal(x_np.shape).astype(np.float32)
    assert_same_on_backend(layer, on_cpu, xp, x_np, dout_np)


def test_no_host_sync_on_the_strict_stand_in(strict_cupy):
    layer = SqueezeExcite(6, 3)
    x = mc.backend.to_device(np.ones((2, 6, 4, 4), dtype=np.float32))
    with strict_cupy.record() as rec:
        y = layer(x)
        layer.backward(mc.backend.get_xp().ones_like(y))
    assert rec.syncs == 0, rec.report("sync")
    assert rec.h2d_bytes == 0, rec.report("h2d")


def test_torch_conventions():
    """Same outputs and gradients as torchvision's SqueezeExcitation with the same weights."""
    torch = pytest.importorskip("torch")
    mc.init.set_seed(0)
    layer = SqueezeExcite(6, 2).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 4))
    dout = np.random.default_rng(1).standard_normal(x.shape)
    y, dx = layer(x), layer.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    W1, b1 = torch.tensor(layer.fc1.W.data), torch.tensor(layer.fc1.b.data)
    W2, b2 = torch.tensor(layer.fc2.W.data), torch.tensor(layer.fc2.b.data)
    s = torch.sigmoid(torch.relu(xt.mean(dim=(2, 3)) @ W1 + b1) @ W2 + b2)
    yt = xt * s[:, :, None, None]
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
