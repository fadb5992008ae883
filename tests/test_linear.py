"""Linear: gradient checks, the y = x W + b layout, regularizer, dtypes and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.gradcheck import assert_gradients, numerical_gradient, relative_error
from minicnn.regularizers import L2


@settings(max_examples=100)
@given(n=st.integers(1, 5), d_in=st.integers(1, 7), d_out=st.integers(1, 7), bias=st.booleans(),
       lead=st.sampled_from([(), (2,), (2, 3)]), seed=st.integers(0, 2**31 - 1))
def test_linear_gradcheck(n, d_in, d_out, bias, lead, seed):
    layer = L.Linear(d_in, d_out, bias=bias)
    x = np.random.default_rng(seed).standard_normal((n, *lead, d_in))
    result = assert_gradients(layer, x, seed=seed)
    assert len(result.errors) == (3 if bias else 2)


@settings(max_examples=25)
@given(n=st.integers(1, 4), d_in=st.integers(1, 5), d_out=st.integers(1, 5),
       lam=st.floats(1e-3, 1.0), seed=st.integers(0, 2**31 - 1))
def test_linear_l2_regularizer_in_grad(n, d_in, d_out, lam, seed):
    rng = np.random.default_rng(seed)
    plain = L.Linear(d_in, d_out)
    reg = L.Linear(d_in, d_out, kernel_regularizer=L2(lam))
    reg.W.data = plain.W.data.copy()
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    dout = rng.standard_normal((n, d_out)).astype(np.float32)
    plain(x)
    plain.backward(dout)
    reg(x)
    reg.backward(dout)
    np.testing.assert_allclose(reg.W.grad, plain.W.grad + 2 * lam * reg.W.data, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(reg.b.grad, plain.b.grad)  # the bias is not penalised
    np.testing.assert_allclose(reg.regularization_loss(), lam * np.sum(reg.W.data.astype(float)
                                                                         ** 2), rtol=1e-5)


def test_linear_regularizer_gradient_of_full_objective():
    # W.grad must be the gradient of sum(y * G) + R(W), R(W) = λ Σ W²: check it numerically.
    rng = np.random.default_rng(0)
    reg = L2(0.3)
    layer = L.Linear(4, 3, kernel_regularizer=reg).astype(np.float64)
    x = rng.standard_normal((5, 4))
    G = rng.standard_normal((5, 3))
    layer(x)
    layer.backward(G)
    W = layer.W.data
    num = numerical_gradient(lambda: float((layer(x) * G).sum() + reg.loss(W)), W)
    assert relative_error(layer.W.grad, num) < 1e-7


def test_linear_layout_and_values():
    layer = L.Linear(3, 2)
    assert layer.W.shape == (3, 2) and layer.b.shape == (2,)
    assert [p.name for p in layer.parameters()] == ["W", "b"]
    layer.W.data = np.arange(6, dtype=np.float32).reshape(3, 2)
    layer.b.data = np.array([10.0, 20.0], dtype=np.float32)
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(layer(x), [[1 * 0 + 2 * 2 + 3 * 4 + 10, 1 + 2 * 3 + 3 * 5 + 20]])
    assert L.Linear(3, 2, bias=False).parameters()[0].name == "W"
    assert len(L.Linear(3, 2, bias=False).parameters()) == 1


def test_linear_init_fan_in():
    # he_normal: std = sqrt(2 / fan_in) with fan_in = in_features.
    W = L.Linear(400, 300).W.data
    assert W.dtype == np.float32
    assert abs(W.std() / np.sqrt(2.0 / 400) - 1.0) < 0.02
    W = L.Linear(400, 300, init="glorot_uniform").W.data
    assert abs(W.max() / np.sqrt(6.0 / 700) - 1.0) < 0.01


def test_linear_float32_everywhere(xp):
    rng = np.random.default_rng(1)
    layer = L.Linear(5, 4)
    x = xp.asarray(rng.standard_normal((3, 5)), dtype=xp.float32)
    dout = xp.asarray(rng.standard_normal((3, 4)), dtype=xp.float32)
    dout_before = dout.copy()
    y = layer(x)
    dx = layer.backward(dout)
    assert y.dtype == dx.dtype == layer.W.grad.dtype == layer.b.grad.dtype == xp.float32
    assert bool(xp.all(dout == dout_before))


def test_linear_errors():
    layer = L.Linear(4, 3)
    with pytest.raises(ValueError, match=r"Linear: expected input of shape \(N, 4\).*\(2, 5\)"):
        layer(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="Flatten"):
        layer(np.zeros((2, 1, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="Linear.*floating-point"):
        layer(np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="Linear: in_features"):
        L.Linear(0, 3)
    with pytest.raises(ValueError, match="unknown initializer"):
        L.Linear(2, 3, init="nope")
