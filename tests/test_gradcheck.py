"""The gradient checker itself: it must pass correct backward passes and catch wrong ones."""

from __future__ import annotations

import numpy as np
import pytest

from minicnn.backend import to_numpy
from minicnn.gradcheck import assert_gradients, check_gradients, numerical_gradient
from minicnn.layers.base import Layer, Parameter


class Scale(Layer):
    """y = x * w (per-feature), with a deliberately switchable bug in backward."""

    def __init__(self, n, bug=None):
        super().__init__()
        self.w = Parameter(np.linspace(0.5, 1.5, n).astype(np.float32), name="w")
        self.bug = bug

    def forward(self, x):
        self.x = x
        return x * self.w.data.astype(x.dtype) ** 2

    def backward(self, dout):
        w = self.w.data.astype(dout.dtype)
        dw = (dout * self.x * 2 * w).sum(axis=0)
        if self.bug == "param":
            dw = dw * 1.01
        self.w.set_grad(dw)
        dx = dout * w**2
        if self.bug == "input":
            dx = dx + 1e-3
        return dx


def test_correct_backward_passes():
    x = np.random.default_rng(0).standard_normal((4, 5))
    result = assert_gradients(Scale(5), x)
    assert result.max_error < 1e-8
    assert set(result.errors) == {"x", "0:w"}


@pytest.mark.parametrize("bug,key", [("param", "0:w"), ("input", "x")])
def test_wrong_backward_is_caught(bug, key):
    x = np.random.default_rng(1).standard_normal((4, 5))
    with pytest.raises(AssertionError, match=key):
        assert_gradients(Scale(5, bug=bug), x)


def test_mutating_dout_is_caught():
    x = np.random.default_rng(2).standard_normal((3, 5))

    class Mutates(Scale):
        def backward(self, dout):
            dx = super().backward(dout)
            dout[...] = 0
            return dx

    with pytest.raises(AssertionError, match="modified its input dout"):
        check_gradients(Mutates(5), x)


def test_layer_is_restored_after_check():
    layer = Scale(5)
    before = layer.w.data
    check_gradients(layer, np.ones((2, 5)))
    assert layer.w.data is before and layer.w.data.dtype == np.float32


def test_model_given_is_untouched_and_dropout_masks_are_replayed(xp):
    """Linear -> BatchNorm (training mode) -> Dropout: the check passes (same masks at every
    forward), and afterwards the model has the running statistics, Dropout generator and
    gradients it had before (the check works on a copy)."""
    import minicnn as mc
    from minicnn import layers as L

    mc.init.set_seed(0)
    # No bias before BatchNorm: its gradient is exactly 0 there, all rounding noise.
    model = L.Sequential(L.Linear(6, 5, bias=False), L.BatchNorm1d(5), L.Dropout(0.5, seed=3))
    x = xp.asarray(np.random.default_rng(3).standard_normal((8, 6)).astype(np.float32))
    model.forward(x)  # a forward first: the copy must not need (or keep) its cache
    before = {k: to_numpy(v).copy() for k, v in model.state_dict().items()}
    rngs = model.rng_states()
    assert rngs, "Dropout should hold a seeded NumPy generator"
    assert_gradients(model, x, tol=1e-6)
    assert model.rng_states() == rngs
    for key, value in model.state_dict().items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(to_numpy(value), before[key])
    assert all(p.grad is None for p in model.parameters())


def test_numerical_gradient_of_a_known_function():
    a = np.array([1.0, -2.0, 3.0])
    g = numerical_gradient(lambda: float((a**3).sum()), a)
    np.testing.assert_allclose(g, 3 * np.array([1.0, 4.0, 9.0]), rtol=1e-8)
    np.testing.assert_array_equal(a, [1.0, -2.0, 3.0])  # restored exactly


def test_max_entries_subsamples():
    x = np.random.default_rng(3).standard_normal((10, 50))
    result = check_gradients(Scale(50), x, max_entries=20)
    assert result.max_error < 1e-8
