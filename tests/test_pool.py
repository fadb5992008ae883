"""Pooling layers and functional/pooling.py: gradient checks, values and gradients against the
loop twins of minicnn.functional.reference, ties, layouts, dtypes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.backend import to_numpy
from minicnn.functional import reference as ref
from minicnn.functional.im2col import col2im, normalize_padding, pad_channels_last, window_view
from minicnn.functional.pooling import (
    first_max,
    first_max_mask,
    max_pool_input_grad,
    window_max,
)
from minicnn.gradcheck import assert_gradients


def pool_reference(x, kernel, stride, padding, mode):
    """reference.max_pool2d or reference.avg_pool2d."""
    return (ref.max_pool2d if mode == "max" else ref.avg_pool2d)(x, kernel, stride, padding)


def channels_last(x):
    return x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)


def distinct_values(shape, rng):
    """Well-separated distinct values (gaps of 0.1 >> h = 1e-6): the argmax never flips."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) - size / 2) * 0.1


@st.composite
def pool_cases(draw, max_size=8):
    """(kernel, stride, padding, input shape): strides < kernel (overlap) and > kernel too."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    H = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), max_size))
    W = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), max_size))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), H, W)
    return kernel, stride, padding, shape


@settings(max_examples=100)
@given(case=pool_cases(), seed=st.integers(0, 2**31 - 1))
def test_maxpool_gradcheck(case, seed):
    kernel, stride, padding, shape = case
    x = distinct_values(shape, np.random.default_rng(seed))
    assert_gradients(L.MaxPool2d(kernel, stride, padding), x, seed=seed)


@settings(max_examples=100)
@given(case=pool_cases(), seed=st.integers(0, 2**31 - 1))
def test_avgpool_gradcheck(case, seed):
    kernel, stride, padding, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(L.AvgPool2d(kernel, stride, padding), x, seed=seed)


@settings(max_examples=100)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 6),
                       st.integers(1, 6)), seed=st.integers(0, 2**31 - 1))
def test_global_avgpool_gradcheck(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(L.GlobalAvgPool2d(), x, seed=seed)


@settings(max_examples=100)
@given(case=pool_cases(), mode=st.sampled_from(["max", "avg"]), seed=st.integers(0, 2**31 - 1))
def test_pool_values_match_naive_loops(case, mode, seed):
    kernel, stride, padding, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    layer = (L.MaxPool2d if mode == "max" else L.AvgPool2d)(kernel, stride, padding)
    y = layer(x)
    expected = pool_reference(x, kernel, stride, padding, mode)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


def test_global_avgpool_values():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    layer = L.GlobalAvgPool2d()
    np.testing.assert_allclose(layer(x), x.mean(axis=(2, 3)), rtol=1e-12)
    dout = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(layer.backward(dout),
                               np.broadcast_to(dout[:, :, None, None] / 20, x.shape))


def test_maxpool_ties_give_the_gradient_to_the_first_max():
    x = np.zeros((1, 1, 2, 2))
    layer = L.MaxPool2d(2)
    layer(x)
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 1, 1))),
                                  [[[[1.0, 0.0], [0.0, 0.0]]]])


@settings(max_examples=100)
@given(case=pool_cases(), seed=st.integers(0, 2**31 - 1), layout=st.booleans())
def test_maxpool_backward_with_many_ties_matches_naive_loop(case, seed, layout):
    # Values from {0, 1, 2}: most windows hold tied maxima (as zeros after a ReLU do).
    kernel, stride, padding, shape = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, shape).astype(np.float64)
    x = channels_last(x) if layout else x
    layer = L.MaxPool2d(kernel, stride, padding)
    dout = rng.standard_normal(layer(x).shape)
    # allclose, not equal: where windows overlap the two add a pixel's shares in other orders.
    np.testing.assert_allclose(layer.backward(dout),
                               ref.max_pool2d_backward(x, dout, kernel, stride, padding),
                               rtol=1e-12, atol=1e-15)


@settings(max_examples=60)
@given(case=pool_cases(), seed=st.integers(0, 2**31 - 1))
def test_avgpool_backward_matches_naive_loop(case, seed):
    kernel, stride, padding, shape = case
    rng = np.random.default_rng(seed)
    layer = L.AvgPool2d(kernel, stride, padding)
    dout = rng.standard_normal(layer(rng.standard_normal(shape)).shape)
    np.testing.assert_allclose(layer.backward(dout),
                               ref.avg_pool2d_backward(dout, shape, kernel, stride, padding),
                               rtol=1e-12, atol=1e-15)


def pooling_windows(x, kernel, stride, padding):
    """What MaxPool2d.forward hands to the functions of functional/pooling.py."""
    pads = normalize_padding(padding, kernel, stride)
    return window_view(pad_channels_last(x, pads, value=-np.inf), kernel, stride), pads


@settings(max_examples=100)
@given(case=pool_cases(), seed=st.integers(0, 2**31 - 1), layout=st.booleans())
def test_pooling_functions_match_the_loops(case, seed, layout):
    """window_max = reference.max_pool2d; max_pool_input_grad(first_max_mask(...)) =
    reference.max_pool2d_backward, on inputs full of ties (values from {0, 1, 2})."""
    kernel, stride, padding, shape = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, shape).astype(np.float64)
    windows, pads = pooling_windows(channels_last(x) if layout else x, kernel, stride, padding)
    out = window_max(windows)
    np.testing.assert_array_equal(out.transpose(0, 3, 1, 2),
                                  ref.max_pool2d(x, kernel, stride, padding))
    is_max = first_max_mask(windows, out)
    assert is_max.shape == (kernel[0] * kernel[1],) + out.shape
    np.testing.assert_array_equal(is_max.sum(axis=0), 1)         # one max per window
    dout = rng.standard_normal(out.transpose(0, 3, 1, 2).shape)
    np.testing.assert_allclose(max_pool_input_grad(dout, is_max, shape, kernel, stride, pads),
                               ref.max_pool2d_backward(x, dout, kernel, stride, padding),
                               rtol=1e-12, atol=1e-15)


@settings(max_examples=100)
@given(case=pool_cases(), seed=st.integers(0, 2**31 - 1))
def test_max_pool_input_grad_is_col2im_of_dout_times_the_mask(case, seed):
    """For any mask (the tiled one-pass branch and the overlapping loop alike):
    max_pool_input_grad = col2im(dout · is_max)."""
    kernel, stride, padding, (N, C, H, W) = case
    rng = np.random.default_rng(seed)
    pads = normalize_padding(padding, kernel, stride)
    Ho = (H + 2 * padding[0] - kernel[0]) // stride[0] + 1
    Wo = (W + 2 * padding[1] - kernel[1]) // stride[1] + 1
    kh, kw = kernel
    is_max = rng.random((kh * kw, N, Ho, Wo, C)) < 0.4
    dout = rng.standard_normal((N, C, Ho, Wo))
    dcols = dout.transpose(0, 2, 3, 1)[:, :, :, None, None, :] * \
        is_max.reshape(kh, kw, N, Ho, Wo, C).transpose(2, 3, 4, 0, 1, 5)
    np.testing.assert_allclose(max_pool_input_grad(dout, is_max, (N, C, H, W), kernel, stride,
                                                   pads),
                               col2im(dcols, (N, C, H, W), kernel, stride, pads),
                               rtol=1e-12, atol=1e-15)


def test_first_max_keeps_the_first_true_of_each_window():
    is_max = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=bool)  # (K=3, 4 windows)
    np.testing.assert_array_equal(first_max(is_max.copy()),
                                  [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]])


def test_maxpool_overlapping_windows_accumulate():
    # The center is the max of all four 2×2 windows (stride 1): it collects every dout.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    x[0, 0, 1, 1] = 100.0
    layer = L.MaxPool2d(2, stride=1)
    np.testing.assert_array_equal(layer(x), np.full((1, 1, 2, 2), 100.0))
    dout = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 10.0
    np.testing.assert_array_equal(layer.backward(dout), expected)


def test_avgpool_counts_padding_and_spreads_gradient():
    x = np.ones((1, 1, 2, 2))
    layer = L.AvgPool2d(2, stride=2, padding=1)  # each window holds one 1 and three padded 0
    np.testing.assert_array_equal(layer(x), np.full((1, 1, 2, 2), 0.25))
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 2, 2))),
                                  np.full((1, 1, 2, 2), 0.25))


@pytest.mark.parametrize("layer", [L.MaxPool2d((3, 2), stride=1, padding=1),
                                   L.AvgPool2d(3, stride=2, padding=1), L.GlobalAvgPool2d()])
def test_channels_last_input_gives_identical_results(layer):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    y = layer(x)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dout)
    # Max pooling picks the same elements; means may be summed in another order.
    tol = 0 if isinstance(layer, L.MaxPool2d) else 1e-6
    np.testing.assert_allclose(layer(channels_last(x)), y, rtol=tol, atol=tol)
    dout_cl = channels_last(dout) if dout.ndim == 4 else dout
    np.testing.assert_allclose(layer.backward(dout_cl), dx, rtol=tol, atol=tol)


@pytest.mark.parametrize("make", [lambda: L.MaxPool2d((3, 2), stride=(1, 2)),
                                  lambda: L.AvgPool2d((3, 2), padding=1),
                                  lambda: L.GlobalAvgPool2d()])
def test_float32_is_preserved_and_dout_untouched(make, xp):
    layer = make()
    x = xp.asarray(np.random.default_rng(2).standard_normal((2, 3, 6, 5)), dtype=xp.float32)
    y = layer(x)
    dout = xp.ones(y.shape, dtype=xp.float32)
    dx = layer.backward(dout)
    assert y.dtype == dx.dtype == xp.float32
    assert dx.shape == x.shape
    assert bool(xp.all(dout == 1))


def test_backend_values_match_reference(xp):
    x_np = np.random.default_rng(3).standard_normal((2, 3, 7, 6))
    for mode, cls in [("max", L.MaxPool2d), ("avg", L.AvgPool2d)]:
        y = cls((3, 2), stride=(2, 1), padding=1)(xp.asarray(x_np))
        np.testing.assert_allclose(to_numpy(y), pool_reference(x_np, (3, 2), (2, 1), (1, 1),
                                                               mode), rtol=1e-12)


def test_stride_defaults_to_kernel_and_repr():
    layer = L.MaxPool2d((3, 2))
    assert layer.stride == (3, 2)
    assert layer(np.zeros((1, 1, 7, 7))).shape == (1, 1, 2, 3)
    assert repr(L.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(L.AvgPool2d((3, 2), 1, (1, 0))) == \
        "AvgPool2d(kernel_size=(3, 2), stride=1, padding=(1, 0))"
    assert repr(L.GlobalAvgPool2d()) == "GlobalAvgPool2d()"
    assert L.MaxPool2d(2).parameters() == []


@pytest.mark.parametrize("cls", [L.MaxPool2d, L.AvgPool2d])
def test_bad_input_errors(cls):
    name = cls.__name__
    layer = cls(3)
    with pytest.raises(ValueError, match=rf"{name}.*\(N, C, H, W\)"):
        layer(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(TypeError, match=rf"{name}.*floating-point"):
        layer(np.zeros((1, 1, 5, 5), np.int32))
    with pytest.raises(ValueError, match=rf"{name}.*smaller than the kernel 3×3"):
        layer(np.zeros((1, 1, 5, 2), np.float32))
    with pytest.raises(ValueError, match=rf"{name}.*at most half"):
        cls(3, padding=2)
    with pytest.raises(ValueError, match=rf"{name}.*kernel_size"):
        cls(0)
    with pytest.raises(RuntimeError, match=rf"{name}.backward.*before forward"):
        cls(2).backward(np.zeros((1, 1, 1, 1)))


def test_global_avgpool_errors():
    with pytest.raises(ValueError, match=r"GlobalAvgPool2d.*\(N, C, H, W\)"):
        L.GlobalAvgPool2d()(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="GlobalAvgPool2d.*floating-point"):
        L.GlobalAvgPool2d()(np.zeros((1, 1, 2, 2), np.int64))
