"""Flatten, Identity, Sequential and Residual: gradients, structure, shapes and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.gradcheck import assert_gradients


@settings(max_examples=100)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=5).map(tuple),
       transpose=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_flatten_gradcheck(shape, transpose, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    if transpose:  # a non-contiguous input
        x = x.transpose(0, *range(x.ndim - 1, 0, -1))
    layer = L.Flatten()
    y = layer(x)
    assert y.shape == (x.shape[0], int(np.prod(x.shape[1:])))
    np.testing.assert_array_equal(y, np.ascontiguousarray(x).reshape(x.shape[0], -1))
    dx = layer.backward(y)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx, x)  # backward undoes the reshape exactly
    # (gradcheck copies x keeping its memory order, and perturbs C-contiguous arrays only)
    assert_gradients(layer, np.ascontiguousarray(x), seed=seed)


def test_flatten_errors_and_dtype():
    with pytest.raises(ValueError, match=r"Flatten: expected input of shape \(N, d1, \.\.\.\)"):
        L.Flatten()(np.zeros(5, dtype=np.float32))
    x = np.zeros((2, 3, 4), dtype=np.float32)
    assert L.Flatten()(x).dtype == np.float32
    assert L.Flatten()(np.zeros((0, 3, 4), dtype=np.float32)).shape == (0, 12)


def _mlp(d_in, hidden, d_out, act):
    # Glorot weights and small inputs keep the activations out of saturation, where f' is tiny
    # and the central difference's rounding error (~1e-10) would dominate the gradient.
    return L.Sequential(L.Linear(d_in, hidden, init="glorot_normal"), act,
                        L.Linear(hidden, d_out, init="glorot_normal"))


@settings(max_examples=100)
@given(n=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 3), hidden=st.integers(1, 6),
       d_out=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_sequential_gradcheck(n, c, h, hidden, d_out, seed):
    mc.init.set_seed(seed + 1)  # reproducible weights, independent of x (seeded by seed)
    model = L.Sequential(L.Flatten(), L.Linear(c * h * h, hidden, init="glorot_normal"),
                         L.Tanh(), L.Dropout(0.3, seed=seed),
                         L.Linear(hidden, d_out, init="glorot_normal"))
    x = 0.5 * np.random.default_rng(seed).standard_normal((n, c, h, h))
    result = assert_gradients(model, x, seed=seed)
    assert len(result.errors) == 5  # x, W, b, W, b


@settings(max_examples=100)
@given(n=st.integers(1, 4), d=st.integers(1, 6), hidden=st.integers(1, 6),
       d_out=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_residual_gradcheck(n, d, hidden, d_out, seed):
    mc.init.set_seed(seed + 1)
    x = 0.5 * np.random.default_rng(seed).standard_normal((n, d))
    # Identity shortcut: body maps d -> d.
    assert_gradients(L.Residual(_mlp(d, hidden, d, L.Tanh())), x, seed=seed)
    # Projection shortcut: body maps d -> d_out, a Linear brings x to d_out too.
    block = L.Residual(_mlp(d, hidden, d_out, L.GELU()), shortcut=L.Linear(d, d_out))
    assert len(assert_gradients(block, x, seed=seed).errors) == 7


def test_residual_backward_sums_branches_and_keeps_dout():
    rng = np.random.default_rng(0)
    body, shortcut = L.Linear(3, 2), L.Linear(3, 2)
    block = L.Residual(body, shortcut)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    dout = rng.standard_normal((4, 2)).astype(np.float32)
    dout_before = dout.copy()
    y = block(x)
    np.testing.assert_allclose(y, body(x) + shortcut(x), rtol=1e-6)
    dx = block.backward(dout)
    np.testing.assert_array_equal(dout, dout_before)
    np.testing.assert_allclose(dx, dout @ body.W.data.T + dout @ shortcut.W.data.T, rtol=1e-5,
                               atol=1e-6)
    assert dx.dtype == y.dtype == np.float32
    # Identity shortcut: dx = body's dx + dout itself, and dout still untouched.
    block = L.Residual(L.Sequential(L.Linear(2, 2), L.ReLU()))
    block(x[:, :2])
    dx = block.backward(dout)
    np.testing.assert_array_equal(dout, dout_before)
    assert dx is not dout


def test_residual_shape_mismatch_error():
    block = L.Residual(L.Linear(3, 2))
    with pytest.raises(ValueError, match=r"Residual.*\(4, 2\).*\(4, 3\).*projection shortcut"):
        block(np.zeros((4, 3), dtype=np.float32))


def test_parameter_order_and_modes():
    body = L.Sequential(L.Linear(3, 4), L.ReLU(), L.Linear(4, 2, bias=False))
    shortcut = L.Linear(3, 2)
    block = L.Residual(body, shortcut)
    expected = [body[0].W, body[0].b, body[2].W, shortcut.W, shortcut.b]
    assert [id(p) for p in block.parameters()] == [id(p) for p in expected]
    model = L.Sequential(block, L.Dropout(0.5))
    model.eval()
    assert not model[1].training and not body[0].training
    model.train()
    assert all(m.training for m in model.modules())


def test_sequential_container_protocol():
    a, b, c = L.Linear(2, 3), L.ReLU(), L.Linear(3, 1)
    model = L.Sequential(a, b)
    assert len(model) == 2 and model[0] is a and model[-1] is b
    assert model.append(c) is model and len(model) == 3
    assert list(model) == [a, b, c]
    head = model[:2]
    assert isinstance(head, L.Sequential) and list(head) == [a, b]
    assert len(model.parameters()) == 4
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    np.testing.assert_allclose(model(x), c(b(a(x))), rtol=1e-6)
    assert "(2): Linear" in repr(model)
    empty = L.Sequential()
    assert empty(x) is x and empty.backward(x) is x and empty.parameters() == []


def test_identity():
    x = np.arange(6.0).reshape(2, 3)
    layer = L.Identity()
    assert layer(x) is x and layer.backward(x) is x and layer.parameters() == []


def test_container_errors():
    with pytest.raises(TypeError, match=r"Sequential: argument 1 must be a Layer.*int"):
        L.Sequential(L.ReLU(), 3)
    with pytest.raises(TypeError, match=r"Sequential\(\*layers\)"):
        L.Sequential([L.ReLU(), L.ReLU()])
    with pytest.raises(TypeError, match="Sequential.append"):
        L.Sequential().append("relu")
    with pytest.raises(TypeError, match="Residual: body must be a Layer"):
        L.Residual(None)
    with pytest.raises(TypeError, match="Residual: shortcut must be a Layer"):
        L.Residual(L.ReLU(), shortcut="proj")
