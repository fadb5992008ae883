"""Dropout: gradient check in train mode (replayed mask), statistics, eval identity, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.gradcheck import assert_gradients

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@settings(max_examples=100)
@given(shape=shapes, p=st.sampled_from([0.0, 0.1, 0.5, 0.9]), train=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_dropout_gradcheck(shape, p, train, seed):
    layer = L.Dropout(p, seed=seed).train(train)
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(layer, x, seed=seed)


def test_dropout_backward_uses_forward_mask():
    layer = L.Dropout(0.5, seed=3)
    x = np.ones((50, 40), dtype=np.float32)
    y = layer(x)
    dout = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, dout * y)  # y = mask / (1 - p) for x = 1
    assert set(np.unique(y)) == {0.0, 2.0}


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_dropout_statistics(p):
    x = np.random.default_rng(1).uniform(0.5, 1.5, size=(400, 1000)).astype(np.float32)
    y = L.Dropout(p, seed=123)(x)
    kept = float(np.mean(y != 0))
    # 4e5 Bernoulli draws: the std of the kept fraction is <= 0.0008.
    assert abs(kept - (1 - p)) < 0.005
    np.testing.assert_allclose(y[y != 0], (x / (1 - p))[y != 0], rtol=1e-6)
    # E[y] = x: the inverted scaling preserves the mean.
    assert abs(float(y.mean(dtype=np.float64)) / float(x.mean(dtype=np.float64)) - 1) < 0.02


def test_dropout_eval_and_p0_are_identity(xp):
    x = xp.asarray(np.random.default_rng(2).standard_normal((8, 6)), dtype=xp.float32)
    dout = xp.ones_like(x)
    layer = L.Dropout(0.5).eval()
    assert layer(x) is x and layer.backward(dout) is dout
    layer = L.Dropout(0.0)
    assert layer(x) is x and layer.backward(dout) is dout


def test_dropout_float32_seeded_and_dout_untouched(xp):
    x = xp.asarray(np.random.default_rng(2).standard_normal((16, 9)), dtype=xp.float32)
    dout = xp.asarray(np.random.default_rng(3).standard_normal((16, 9)), dtype=xp.float32)
    dout_before = dout.copy()
    a, b = L.Dropout(0.3, seed=7), L.Dropout(0.3, seed=7)
    ya, yb = a(x), b(x)
    assert ya.dtype == xp.float32 and a.mask.dtype == xp.float32
    assert bool(xp.all(ya == yb))  # same seed, same masks
    assert not bool(xp.all(a(x) == ya))  # a fresh mask at the next forward
    dx = a.backward(dout)
    assert dx.dtype == xp.float32
    assert bool(xp.all(dout == dout_before))


def test_dropout_errors():
    for p in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"Dropout: p .*\[0, 1\)"):
            L.Dropout(p)
    with pytest.raises(TypeError, match="Dropout.*floating-point"):
        L.Dropout(0.5)(np.arange(4))
