"""ConvTranspose2d: gradient checks, values and gradients against the loop twins of
minicnn.functional.reference, the adjoint identity with Conv2d, PyTorch (when importable),
dtypes, the backends, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.backend import get_xp, to_numpy
from minicnn.functional import reference as ref
from minicnn.gradcheck import assert_gradients
from minicnn.layers.conv import Conv2d
from minicnn.layers.conv_transpose import ConvTranspose2d


@st.composite
def cases(draw, groups=True):
    """(layer arguments, input shape): strides 1–3, even and odd kernels, padding that crops
    up to a kernel's worth, output_padding < stride, groups dividing both channel counts."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0])), draw(st.integers(0, kernel[1])))
    output_padding = (draw(st.integers(0, stride[0] - 1)), draw(st.integers(0, stride[1] - 1)))
    g = draw(st.sampled_from([1, 1, 2, 3])) if groups else 1
    C_in, C_out = g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3))
    # H large enough that Ho = (H - 1)·s - 2p + K + op >= 1
    lo = [max(1, -(-(2 * p - k + 1) // s) + 1) for p, k, s in zip(padding, kernel, stride,
                                                                   strict=True)]
    H, W = draw(st.integers(lo[0], lo[0] + 3)), draw(st.integers(lo[1], lo[1] + 3))
    args = dict(in_channels=C_in, out_channels=C_out, kernel_size=kernel, stride=stride,
                padding=padding, output_padding=output_padding, groups=g)
    return args, (draw(st.integers(1, 2)), C_in, H, W)


def make(args, bias=True, seed=0):
    layer = ConvTranspose2d(**args, bias=bias)
    rng = np.random.default_rng(seed)
    xp = get_xp()                       # the backend current at construction (the xp fixture)
    layer.W.data = xp.asarray(rng.standard_normal(layer.W.shape))
    if bias:
        layer.b.data = xp.asarray(rng.standard_normal(layer.b.shape))
    return layer


def ref_args(args):
    return args["stride"], args["padding"], args["output_padding"], args["groups"]


@settings(max_examples=80, deadline=None)
@given(case=cases(), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_gradcheck(case, bias, seed):
    args, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(make(args, bias, seed), x, seed=seed)


@settings(max_examples=80, deadline=None)
@given(case=cases(), seed=st.integers(0, 2**31 - 1))
def test_matches_loop_twin(case, seed):
    args, shape = case
    rng = np.random.default_rng(seed)
    layer = make(args, seed=seed)
    x = rng.standard_normal(shape)
    y = layer(x)
    y_ref = ref.conv_transpose2d_forward(x, layer.W.data, layer.b.data, *ref_args(args))
    assert y.shape == y_ref.shape
    kh, kw = args["kernel_size"]
    (sh, sw), (ph, pw), (oph, opw) = args["stride"], args["padding"], args["output_padding"]
    assert y.shape == (shape[0], args["out_channels"], (shape[2] - 1) * sh - 2 * ph + kh + oph,
                       (shape[3] - 1) * sw - 2 * pw + kw + opw)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout)
    dx_ref, dW_ref, db_ref = ref.conv_transpose2d_backward(x, layer.W.data, dout,
                                                           *ref_args(args))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.W.grad, dW_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.b.grad, db_ref, rtol=1e-10, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(case=cases(groups=False), seed=st.integers(0, 2**31 - 1))
def test_adjoint_of_conv2d(case, seed):
    """<convT(x), y> = <x, conv2d(y)>: the transposed convolution is the adjoint of the Conv2d
    with the same W (read as (C_out_conv, C_in_conv, KH, KW) = (C_in, C_out, KH, KW)), stride and
    padding; and its backward is that Conv2d's forward, its forward that Conv2d's dx."""
    args, shape = case
    rng = np.random.default_rng(seed)
    convT = make(args, bias=False, seed=seed)
    conv = Conv2d(args["out_channels"], args["in_channels"], args["kernel_size"],
                  args["stride"], args["padding"], bias=False, algorithm="im2col")
    conv.W.data = convT.W.data                      # the same array: no transpose needed
    x = rng.standard_normal(shape)
    y_T = convT(x)
    y = rng.standard_normal(y_T.shape)
    conv_y = conv(y)
    assert conv_y.shape == x.shape
    np.testing.assert_allclose(np.vdot(y_T, y), np.vdot(x, conv_y), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(convT.backward(y), conv_y, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(conv.backward(x), y_T, rtol=1e-10, atol=1e-12)


def test_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for k, s, p, op, g in [(3, 2, 1, 1, 1), (4, 2, 1, 0, 1), (2, 3, 0, 2, 2), (3, 1, 2, 0, 3)]:
        args = dict(in_channels=6, out_channels=3 * g if g > 1 else 4, kernel_size=k, stride=s,
                    padding=p, output_padding=op, groups=g)
        layer = make(args, seed=k)
        x = rng.standard_normal((2, 6, 5, 4))
        y = layer(x)
        dout = rng.standard_normal(y.shape)
        dx = layer.backward(dout)
        xt = torch.tensor(x, requires_grad=True)
        Wt = torch.tensor(np.asarray(layer.W.data, np.float64), requires_grad=True)
        bt = torch.tensor(np.asarray(layer.b.data, np.float64), requires_grad=True)
        yt = torch.nn.functional.conv_transpose2d(xt, Wt, bt, s, p, op, g)
        yt.backward(torch.tensor(dout))
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.W.grad, Wt.grad.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.b.grad, bt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_output_shapes_like_pytorch():
    # Ho = (H - 1)·s - 2p + K + output_padding
    assert ConvTranspose2d(3, 2, 4, stride=2, padding=1)(np.zeros((1, 3, 8, 8))).shape \
        == (1, 2, 16, 16)
    assert ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1)(
        np.zeros((1, 3, 8, 5))).shape == (1, 2, 16, 10)
    assert ConvTranspose2d(3, 2, (3, 1), stride=(1, 2))(np.zeros((1, 3, 4, 4))).shape \
        == (1, 2, 6, 7)


def test_init_and_parameters():
    layer = ConvTranspose2d(4, 6, (3, 2), groups=2)
    assert layer.W.shape == (4, 3, 3, 2) and layer.b.shape == (6,)
    assert [p.name for p in layer.parameters()] == ["W", "b"]
    assert layer.W.data.dtype == np.float32 and not np.any(to_numpy(layer.b.data))
    # he_normal with fan_in = C_out/groups·KH·KW = 18: std sqrt(2/18)
    big = ConvTranspose2d(64, 64, 3)
    assert abs(float(np.std(to_numpy(big.W.data))) - np.sqrt(2 / (64 * 9))) < 0.01
    assert ConvTranspose2d(2, 2, 3, bias=False).b is None


def test_float32_kept_and_dout_untouched(xp):
    layer = ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
    x = xp.asarray(np.random.default_rng(2).standard_normal((2, 3, 5, 4)), dtype=xp.float32)
    y = layer(x)
    dout = xp.ones(y.shape, dtype=xp.float32)
    dx = layer.backward(dout)
    assert y.dtype == dx.dtype == layer.W.grad.dtype == xp.float32
    assert dx.shape == x.shape and y.shape == (2, 4, 10, 8)
    assert bool(xp.all(dout == 1))


@pytest.mark.parametrize("groups", [1, 2])
def test_backend_matches_reference(xp, groups):
    rng = np.random.default_rng(3)
    args = dict(in_channels=4, out_channels=2, kernel_size=(3, 2), stride=(2, 3),
                padding=(1, 0), output_padding=(1, 2), groups=groups)
    layer = make(args)
    x_np = rng.standard_normal((2, 4, 4, 3))
    x = xp.asarray(x_np)
    y = layer(x)
    W_np, b_np = to_numpy(layer.W.data), to_numpy(layer.b.data)
    np.testing.assert_allclose(to_numpy(y), ref.conv_transpose2d_forward(
        x_np, W_np, b_np, *ref_args(args)), rtol=1e-10, atol=1e-12)
    dout_np = rng.standard_normal(y.shape)
    dx = layer.backward(xp.asarray(dout_np))
    dx_ref, dW_ref, db_ref = ref.conv_transpose2d_backward(x_np, W_np, dout_np, *ref_args(args))
    np.testing.assert_allclose(to_numpy(dx), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.W.grad), dW_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_numpy(layer.b.grad), db_ref, rtol=1e-10, atol=1e-12)


def test_input_grad_off_returns_none():
    layer = make(dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=0,
                      output_padding=0, groups=1))
    x = np.random.default_rng(4).standard_normal((1, 2, 3, 3))
    y = layer(x)
    dout = np.ones_like(y)
    layer.backward(dout)
    dW = layer.W.grad.copy()
    layer(x)
    layer.input_grad = False
    assert layer.backward(dout) is None
    np.testing.assert_allclose(layer.W.grad, dW)


def test_repr():
    assert repr(ConvTranspose2d(3, 8, 4, stride=2, padding=1)) == \
        "ConvTranspose2d(3, 8, kernel_size=(4, 4), stride=(2, 2), padding=(1, 1))"
    assert repr(ConvTranspose2d(4, 8, 3, 2, 1, 1, groups=2, bias=False)) == \
        ("ConvTranspose2d(4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
         "output_padding=(1, 1), groups=2, bias=False)")


@pytest.mark.parametrize("kwargs, match", [
    (dict(output_padding=2, stride=2), "output_padding must be smaller than stride"),
    (dict(output_padding=1), "output_padding must be smaller than stride"),
    (dict(kernel_size=0), "kernel_size and stride must be >= 1"),
    (dict(stride=0), "kernel_size and stride must be >= 1"),
    (dict(padding=-1), "padding and output_padding must be >= 0"),
    (dict(in_channels=0), "must be >= 1"),
    (dict(groups=4), "divisible by groups"),
    (dict(kernel_size=(2, 2, 2)), "kernel_size must be an int or a pair"),
    (dict(groups=1.5), "groups must be an int"),
])
def test_bad_arguments(kwargs, match):
    args = dict(in_channels=2, out_channels=6, kernel_size=3) | kwargs
    with pytest.raises(ValueError, match=match):
        ConvTranspose2d(**args)


def test_bad_inputs():
    layer = ConvTranspose2d(3, 2, 3)
    with pytest.raises(ValueError,
                       match=r"ConvTranspose2d: expected input of shape \(N, 3, H, W\)"):
        layer(np.zeros((1, 4, 5, 5)))
    with pytest.raises(ValueError, match="ConvTranspose2d: expected input of shape"):
        layer(np.zeros((3, 5, 5)))
    with pytest.raises(TypeError, match="ConvTranspose2d"):
        layer(np.zeros((1, 3, 5, 5), dtype=np.int64))
    with pytest.raises(ValueError, match="padding .* is too large"):
        ConvTranspose2d(3, 2, 1, padding=1)(np.zeros((1, 3, 1, 1)))
    y = layer(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"expected dout of shape \(1, 2, 6, 6\)"):
        layer.backward(np.zeros((1, 2, 5, 6)))
    assert y.shape == (1, 2, 6, 6)
