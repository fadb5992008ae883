"""PatchWhitening: the fitted filters whiten the patches, stay fixed in training, and its
input gradient is Conv2d's (gradient-checked); the vgg option and minicnn train fit it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn import losses, models, optim
from minicnn.functional.im2col import im2col
from minicnn.gradcheck import assert_gradients
from minicnn.training import fit
from minicnn.training.loop import no_input_grad


def correlated_images(n: int, c: int, hw: int, seed: int = 0) -> np.ndarray:
    """Images whose neighbouring pixels and channels are strongly correlated (like photos),
    so that whitening has something to undo."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 1, hw + 1, hw + 1))
    x = base[:, :, 1:, 1:] + 0.8 * base[:, :, :-1, :-1] + 0.5 * base[:, :, 1:, :-1]
    x = np.repeat(x, c, axis=1) + 0.3 * rng.standard_normal((n, c, hw, hw))
    return (x - x.mean(axis=(0, 2, 3), keepdims=True)).astype(np.float32)


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 3), k=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_fitted_filters_whiten_the_patches(c, k, seed):
    """The first d = C·K·K outputs have the identity as second-moment matrix (up to eps),
    and the other d are their negatives."""
    x = correlated_images(64, c, 9, seed)
    layer = L.PatchWhitening(c, k, eps=1e-8).fit(x)
    d = c * k * k
    y = layer.forward(x)
    assert y.shape == (64, 2 * d, 10 - k, 10 - k)
    z = y[:, :d].transpose(0, 2, 3, 1).reshape(-1, d).astype(np.float64)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(d), atol=2e-3)
    np.testing.assert_array_equal(y[:, d:], -y[:, :d])


def test_filters_are_the_scaled_eigenvectors_largest_first():
    x = correlated_images(32, 3, 8)
    layer = L.PatchWhitening(3, 2, eps=5e-4).fit(x)
    patches = im2col(x, (2, 2), (1, 1), ((0, 0), (0, 0)))[0].astype(np.float64)
    lam, V = np.linalg.eigh(patches.T @ patches / len(patches))
    W_mat = layer.W.data.transpose(0, 2, 3, 1).reshape(24, 12)  # (kh, kw, c) columns
    # row i is ±v_i / sqrt(λ_i + eps), λ descending (an eigenvector's sign is arbitrary)
    for i, j in enumerate(range(11, -1, -1)):
        expected = V[:, j] / np.sqrt(lam[j] + 5e-4)
        sign = np.sign(W_mat[i] @ expected)
        np.testing.assert_allclose(W_mat[i], sign * expected, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 3), k=st.integers(1, 3), hw=st.integers(3, 9),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck_dx(c, k, hw, seed):
    """dL/dx is checked; the fixed filters have no gradient to check."""
    layer = L.PatchWhitening(c, k).fit(correlated_images(8, c, max(hw, k), seed))
    x = np.random.default_rng(seed).standard_normal((2, c, max(hw, k), max(hw, k)))
    assert_gradients(layer, x, seed=seed)


def test_the_filters_stay_fixed_in_training_and_get_no_gradient():
    model = models.vgg(widths=[4], depth=1, batchnorm=True, image_size=8, hidden=None,
                       whiten=2)
    x = correlated_images(16, 3, 8)
    assert models.fit_whitening(model, x) == 1
    W = model.layers[0].W.data.copy()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    y = np.arange(16) % 10
    fit(model, losses.CrossEntropyLoss(), opt, [(x, y)] * 3, epochs=2, verbose=0)
    np.testing.assert_array_equal(model.layers[0].W.data, W)
    assert model.layers[0].W.grad is None


def test_fit_skips_dx_before_the_first_trainable_layer():
    """With a fixed first layer, the conv after it is the first that needs no dL/dx: fit
    switches its input_grad off, and Sequential.backward stops there."""
    model = models.vgg(widths=[4], depth=1, image_size=8, hidden=None, whiten=2)
    conv = model.layers[2]
    assert isinstance(model.layers[0], L.PatchWhitening) and isinstance(conv, L.Conv2d)
    with no_input_grad(model):
        assert conv.input_grad is False and model.layers[0].input_grad is True
        model.forward(correlated_images(2, 3, 8))
        assert model.backward(np.ones((2, 10), np.float32)) is None
    assert conv.input_grad is True


def test_vgg_whiten_shapes_and_state_dict_round_trip():
    model = models.vgg(widths=[8, 16], depth=1, batchnorm=True, image_size=32, hidden=None,
                       pool_first=True, whiten=2)
    assert [type(m).__name__ for m in model.layers[:3]] == ["PatchWhitening", "ReLU", "Conv2d"]
    models.fit_whitening(model, correlated_images(8, 3, 32))
    x = correlated_images(2, 3, 32, seed=1)
    assert model.forward(x).shape == (2, 10)   # 32 -> 31 -> 15 -> 7: Flatten of 16·7·7
    other = models.vgg(widths=[8, 16], depth=1, batchnorm=True, image_size=32, hidden=None,
                       pool_first=True, whiten=2)
    other.load_state_dict(model.state_dict())
    model.eval()
    other.eval()
    np.testing.assert_array_equal(other.forward(x), model.forward(x))
    assert other.layers[0].W.requires_grad is False  # the builder freezes it again


def test_bad_input_errors():
    layer = L.PatchWhitening(3, 2)
    with pytest.raises(ValueError, match=r"PatchWhitening.fit.*\(N, 3, H, W\)"):
        layer.fit(np.zeros((4, 1, 8, 8), np.float32))
    x = correlated_images(4, 3, 8)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="PatchWhitening.fit: the images hold NaN"):
        layer.fit(x)
    with pytest.raises(ValueError, match="eps must be > 0"):
        L.PatchWhitening(3, 2, eps=0)
    with pytest.raises(TypeError, match="PatchWhitening.fit"):
        layer.fit(np.zeros((4, 3, 8, 8), np.int64))
