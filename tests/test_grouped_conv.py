"""Conv2d(..., groups=G): grouped and depthwise convolution (minicnn.functional.grouped_conv).

Gradient checks over random shapes and groups in {1, 2, C_in}, values and gradients against the
per-group loop twins of minicnn.functional.reference (and torch, when it imports), both
routes of a depthwise layer, float32, errors, the array-module fixture and the cache."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.backend import to_numpy
from minicnn.functional import reference as ref
from minicnn.functional.conv import conv2d_algorithm
from minicnn.functional.grouped_conv import (
    grouped_conv2d,
    grouped_conv2d_backward,
    grouped_im2col,
    grouped_weight_matrices,
)
from minicnn.functional.im2col import im2col, normalize_padding
from minicnn.gradcheck import assert_gradients


@st.composite
def grouped_cases(draw, max_size=7):
    """Random (C_in, C_out, layer kwargs), input shape; groups 1, 2 or C_in (depthwise)."""
    kind = draw(st.sampled_from(["one", "two", "depthwise"]))
    G = {"one": 1, "two": 2, "depthwise": draw(st.integers(1, 4))}[kind]
    C_in = G * (1 if kind == "depthwise" else draw(st.integers(1, 2)))
    C_out = G * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                             st.sampled_from(["same", "valid"])))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    (top, bottom), (left, right) = normalize_padding(padding, (kh, kw), stride)
    H = draw(st.integers(max(1, kh - top - bottom), max_size))
    W = draw(st.integers(max(1, kw - left - right), max_size))
    kwargs = dict(kernel_size=(kh, kw), stride=stride, padding=padding,
                  bias=draw(st.booleans()), groups=G)
    return (C_in, C_out, kwargs), (draw(st.integers(1, 3)), C_in, H, W)


def make_conv(args, seed, dtype=np.float64):
    C_in, C_out, kwargs = args
    conv = L.Conv2d(C_in, C_out, **kwargs).astype(dtype)
    if conv.b is not None:  # nonzero bias, so a wrong bias path shows
        conv.b.data = np.random.default_rng(seed).standard_normal(C_out).astype(dtype)
    return conv


@settings(max_examples=80, deadline=None)
@given(case=grouped_cases(), seed=st.integers(0, 2**31 - 1))
def test_grouped_conv_gradcheck(case, seed):
    args, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(make_conv(args, seed), x, seed=seed)


@settings(max_examples=60, deadline=None)
@given(case=grouped_cases(max_size=6), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(["auto", "batched"]))
def test_grouped_conv_matches_the_per_group_loops(case, seed, method):
    """y, dx, dW, db = reference.conv2d_grouped_forward / _backward (conv2d_forward /
    conv2d_backward per group), by the layer and by each route of the functions."""
    args, shape = case
    conv = make_conv(args, seed)
    G = conv.groups
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    W, b = conv.W.data, None if conv.b is None else conv.b.data
    y = conv.forward(x)
    y_ref = ref.conv2d_grouped_forward(x, W, b, conv.stride, conv.pads, G)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(y.shape)
    dout_before = dout.copy()
    dx = conv.backward(dout)
    dx_ref, dW_ref, db_ref = ref.conv2d_grouped_backward(x, W, dout, conv.stride, conv.pads, G)
    np.testing.assert_array_equal(dout, dout_before)                    # dout not modified
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.W.grad, dW_ref, rtol=1e-10, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(conv.b.grad, db_ref, rtol=1e-10, atol=1e-10)
    if G > 1 and G == shape[1]:
        method = "direct" if method == "auto" else method   # both depthwise routes
    if G > 1:
        y_m = grouped_conv2d(x, W, G, conv.stride, conv.pads, method=method)
        dx_m, dW_m = grouped_conv2d_backward(dout, x, W, G, conv.stride, conv.pads,
                                             method=method)
        np.testing.assert_allclose(y_m, y_ref - (0 if b is None else b[:, None, None]),
                                   rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx_m, dx_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dW_m, dW_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["batched", "direct"])
def test_depthwise_routes_agree_with_a_channel_multiplier(method):
    """Depthwise with C_out = 3·C_in, stride 2, asymmetric padding: both routes = the loops."""
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((12, 1, 3, 3))
    dout = rng.standard_normal((2, 12, 3, 3))
    pads = ((1, 0), (0, 1))
    y = grouped_conv2d(x, W, 4, (2, 2), pads, method=method)
    dx, dW = grouped_conv2d_backward(dout, x, W, 4, (2, 2), pads, method=method)
    dx_ref, dW_ref, _ = ref.conv2d_grouped_backward(x, W, dout, (2, 2), pads, 4)
    np.testing.assert_allclose(y, ref.conv2d_grouped_forward(x, W, None, (2, 2), pads, 4),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dW, dW_ref, rtol=1e-12, atol=1e-12)


def test_grouped_im2col_is_im2col_split_by_group():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 4))
    cols, _ = im2col(x, (2, 3), (1, 2), ((1, 0), (1, 1)))
    cols_g = grouped_im2col(x, (2, 3), (1, 2), ((1, 0), (1, 1)), 3)
    assert cols_g.shape == (3, cols.shape[0], 2 * 3 * 2)
    split = cols.reshape(cols.shape[0], 2 * 3, 3, 2).transpose(2, 0, 1, 3)
    np.testing.assert_array_equal(cols_g, split.reshape(3, cols.shape[0], -1))
    W = rng.standard_normal((6, 2, 2, 3))
    W_g = grouped_weight_matrices(W, 3)
    assert W_g.shape == (3, 12, 2)
    assert W_g[1, (1 * 3 + 2) * 2 + 1, 0] == W[2, 1, 1, 2]     # W_g[g, (a, b, c), o]


@pytest.mark.parametrize("groups,C_in,C_out", [(2, 4, 6), (4, 4, 4), (4, 4, 8), (3, 3, 3)])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, "same"), ((2, 1), (0, 2))])
def test_matches_torch(groups, C_in, C_out, stride, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(groups + C_out)
    conv = L.Conv2d(C_in, C_out, 3, stride=stride, padding=padding, groups=groups)
    conv = conv.astype(np.float64)
    conv.b.data = rng.standard_normal(C_out)
    x = rng.standard_normal((2, C_in, 7, 8))
    y = conv.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = conv.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    Wt = torch.tensor(conv.W.data, requires_grad=True)
    bt = torch.tensor(conv.b.data, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, Wt, bt, stride=stride, padding=padding, groups=groups)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.W.grad, Wt.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.b.grad, bt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups,C_out", [(2, 4), (4, 4), (4, 8)])
def test_float32_is_preserved(xp, groups, C_out):
    conv = L.Conv2d(4, C_out, 3, padding=1, groups=groups)
    x_np = np.random.default_rng(1).standard_normal((2, 4, 5, 5))
    x = xp.asarray(x_np, dtype=xp.float32)
    y = conv(x)
    dout = xp.ones(y.shape, dtype=xp.float32)
    dx = conv.backward(dout)
    assert y.dtype == dx.dtype == conv.W.grad.dtype == conv.b.grad.dtype == xp.float32
    assert dx.shape == x.shape and conv.W.grad.shape == conv.W.shape == (C_out, 4 // groups, 3, 3)
    assert bool(xp.all(dout == 1))  # dout not modified
    W, b = to_numpy(conv.W.data).astype(np.float64), to_numpy(conv.b.data).astype(np.float64)
    np.testing.assert_allclose(to_numpy(y), ref.conv2d_grouped_forward(
        x_np, W, b, (1, 1), conv.pads, groups), rtol=1e-4, atol=1e-4)
    dx_ref, dW_ref, _ = ref.conv2d_grouped_backward(x_np, W, np.ones(y.shape), (1, 1),
                                                    conv.pads, groups)
    np.testing.assert_allclose(to_numpy(dx), dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(conv.W.grad), dW_ref, rtol=1e-4, atol=1e-3)


def test_the_cache_holds_x_and_W_only_and_backward_can_run_twice():
    rng = np.random.default_rng(0)
    conv = L.Conv2d(6, 6, 3, padding=1, groups=6)
    x = rng.standard_normal((2, 6, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((2, 6, 8, 8)).astype(np.float32)
    conv.forward(x)
    cached_x, cached_W, winograd = conv.cache
    assert cached_x is x and cached_W is conv.W.data and winograd is None
    dx = conv.backward(dout)
    dW = conv.W.grad.copy()
    np.testing.assert_array_equal(conv.backward(dout), dx)
    np.testing.assert_array_equal(conv.W.grad, dW)


def test_input_grad_off_and_frozen_W():
    rng = np.random.default_rng(0)
    conv = L.Conv2d(4, 4, 3, padding=1, groups=2).astype(np.float64)
    x = rng.standard_normal((2, 4, 5, 5))
    dout = rng.standard_normal((2, 4, 5, 5))
    _, dW_ref, _ = ref.conv2d_grouped_backward(x, conv.W.data, dout, (1, 1), conv.pads, 2)
    conv.input_grad = False
    conv.forward(x)
    assert conv.backward(dout) is None
    np.testing.assert_allclose(conv.W.grad, dW_ref, rtol=1e-10, atol=1e-10)


def test_shapes_init_repr_and_the_winograd_rule():
    conv = L.Conv2d(8, 16, 3, groups=4)
    assert conv.W.data.shape == (16, 2, 3, 3) and conv.groups == 4
    assert "groups=4" in repr(conv) and "groups" not in repr(L.Conv2d(8, 16, 3))
    # he_normal with fan_in = C_in/groups·KH·KW = 18
    big = L.Conv2d(64, 64, 3, groups=64)
    assert abs(float(big.W.data.std()) - np.sqrt(2 / 9)) < 0.05
    assert conv2d_algorithm("auto", (64, 64, 32, 32), 64, (3, 3), (1, 1), ((1, 1), (1, 1)),
                            groups=64) is None
    assert conv2d_algorithm("winograd", (1, 4, 8, 8), 4, (3, 3), (1, 1), ((1, 1), (1, 1)),
                            groups=2) is None
    with pytest.raises(ValueError, match="Conv2d.*winograd.*groups=1"):
        L.Conv2d(4, 4, 3, padding=1, groups=2, algorithm="winograd")


@pytest.mark.parametrize("C_in,C_out,groups", [(4, 6, 4), (6, 4, 4), (4, 4, 0), (4, 4, -2),
                                               (3, 6, 2)])
def test_groups_must_divide_both_channel_counts(C_in, C_out, groups):
    with pytest.raises(ValueError, match="Conv2d: groups must be >= 1 and divide"):
        L.Conv2d(C_in, C_out, 3, groups=groups)


def test_wrong_input_channels_is_a_clear_error():
    conv = L.Conv2d(4, 4, 3, groups=4)
    with pytest.raises(ValueError, match=r"Conv2d.*\(N, 4, H, W\)"):
        conv.forward(np.zeros((1, 2, 5, 5), np.float32))


def test_grouped_method_errors():
    x, W = np.zeros((1, 4, 5, 5)), np.zeros((4, 2, 3, 3))
    with pytest.raises(ValueError, match="depthwise"):
        grouped_conv2d(x, W, 2, (1, 1), ((0, 0), (0, 0)), method="direct")
    with pytest.raises(ValueError, match="method must be one of"):
        grouped_conv2d(x, W, 2, (1, 1), ((0, 0), (0, 0)), method="loop")


@pytest.mark.cupy
@pytest.mark.parametrize("groups,C_out", [(2, 4), (4, 4), (4, 8)])
def test_no_host_sync_on_the_strict_stand_in(strict_cupy, groups, C_out):
    import minicnn as mc

    conv = L.Conv2d(4, C_out, 3, stride=(1, 2), padding=1, groups=groups)
    x = mc.backend.to_device(np.ones((2, 4, 5, 6), dtype=np.float32))
    with strict_cupy.record() as rec:
        y = conv(x)
        dx = conv.backward(mc.backend.get_xp().ones_like(y))
    assert rec.syncs == 0, rec.report("sync")
    assert rec.h2d_bytes == 0, rec.report("h2d")
    assert mc.backend.get_array_module(dx) is mc.backend.get_xp() and dx.dtype == np.float32


@pytest.mark.parametrize("groups,C_out", [(2, 8), (8, 8), (8, 16)])
def test_memory_the_cache_holds_the_input_only(groups, C_out):
    """Nothing KH·KW times larger stays from forward to backward (tests/test_memory.py's rule)."""
    from tests.test_memory import held_bytes

    x = np.random.default_rng(0).standard_normal((4, 8, 12, 12)).astype(np.float32)
    conv = L.Conv2d(8, C_out, 3, padding=1, groups=groups)
    conv(x)
    assert held_bytes(conv) == x.nbytes and conv.cache[0] is x


def test_state_dict_and_pickle_round_trip():
    import pickle

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    conv = L.Conv2d(6, 12, 3, padding=1, groups=3)
    y = conv(x)
    other = L.Conv2d(6, 12, 3, padding=1, groups=3)
    other.load_state_dict(conv.state_dict())
    np.testing.assert_array_equal(other(x), y)
    copy = pickle.loads(pickle.dumps(conv))
    assert copy.groups == 3
    np.testing.assert_array_equal(copy(x), y)
    with pytest.raises(Exception, match="W"):
        L.Conv2d(6, 12, 3, groups=1).load_state_dict(conv.state_dict())
