"""Activations: gradient checks over random shapes, dtype preservation, values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.gradcheck import assert_gradients
from tests.conftest import away_from_zero

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@settings(max_examples=30)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_relu_gradcheck(shape, seed):
    x = away_from_zero(np.random.default_rng(seed).standard_normal(shape))
    assert_gradients(L.ReLU(), x, seed=seed)


def test_relu_values_and_dtype(xp):
    x = xp.asarray([[-2.0, 0.0, 3.0]], dtype=xp.float32)
    y = L.ReLU()(x)
    assert y.dtype == xp.float32
    np.testing.assert_array_equal(np.asarray(y.get() if hasattr(y, "get") else y), [[0, 0, 3]])


def test_relu_rejects_integer_input():
    with pytest.raises(TypeError, match="ReLU.*floating-point"):
        L.ReLU()(np.arange(3))
