"""Conv2d, im2col/col2im and functional/conv.py: gradient checks, values and gradients against
the loop twins of minicnn.functional.reference and scipy, layouts, dtypes and errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.backend import to_numpy
from minicnn.functional import reference as ref
from minicnn.functional.conv import (
    BackwardPatches,
    backward_from_dout,
    conv2d_backward_patches,
    conv2d_input_grad,
    conv2d_weight_grad,
    conv2d_weight_matrix,
)
from minicnn.functional.im2col import (
    col2im,
    col2im_matmul,
    conv_input_grad,
    flipped_pads,
    flipped_patches,
    im2col,
    normalize_padding,
    output_size,
)
from minicnn.functional.scratch import scratch_nbytes, scratch_workspace
from minicnn.gradcheck import assert_gradients
from minicnn.regularizers import L2
from tests.conftest import dirty_workspace


def channels_last(x):
    """The same logical (N, C, H, W) array, stored NHWC in memory."""
    return x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)


@st.composite
def conv_cases(draw, max_size=7):
    """Random (layer arguments, input shape) with an input at least as large as the kernel."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = draw(st.one_of(
        st.integers(0, 2),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.sampled_from(["same", "valid"])))
    stride = (1, 1) if padding == "same" else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    (top, bottom), (left, right) = normalize_padding(padding, (kh, kw), stride)
    H = draw(st.integers(max(1, kh - top - bottom), max_size))
    W = draw(st.integers(max(1, kw - left - right), max_size))
    N, C_in, C_out = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    bias = draw(st.booleans())
    kwargs = dict(kernel_size=(kh, kw), stride=stride, padding=padding, bias=bias)
    return (C_in, C_out, kwargs), (N, C_in, H, W)


def make_conv(args, seed):
    C_in, C_out, kwargs = args
    conv = L.Conv2d(C_in, C_out, **kwargs)
    if conv.b is not None:  # nonzero bias, so a wrong bias path shows
        conv.b.data = np.random.default_rng(seed).standard_normal(C_out).astype(np.float32)
    return conv


@settings(max_examples=100)
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1))
def test_conv_gradcheck(case, seed):
    args, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(make_conv(args, seed), x, seed=seed)


@settings(max_examples=30)
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1), grow=st.integers(8, 10))
def test_conv_gradcheck_with_gradients_from_douts_patches(case, seed, grow):
    """Inputs of 8x8 and more, C_out <= C_in: the stride-1 layers read dW and dx from dout's
    patch matrix (dx by conv_input_grad), the others from x's (dx by col2im_matmul)."""
    (C_in, C_out, kwargs), (N, _, H, W) = case
    C_out = min(C_out, C_in)
    conv = make_conv((C_in, C_out, kwargs), seed)
    shape = (N, C_in, max(H, grow), max(W, grow))
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(conv, x, seed=seed)


@settings(max_examples=50)
@given(case=conv_cases(max_size=6), seed=st.integers(0, 2**31 - 1))
def test_conv_forward_matches_naive_loops(case, seed):
    args, shape = case
    conv = make_conv(args, seed)
    x = np.random.default_rng(seed).standard_normal(shape)
    y = conv.forward(x)
    W = conv.W.data.astype(np.float64)
    b = None if conv.b is None else conv.b.data.astype(np.float64)
    expected = ref.conv2d_forward(x, W, b, conv.stride, conv.pads)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=40)
@given(case=conv_cases(max_size=6), seed=st.integers(0, 2**31 - 1), grow=st.sampled_from([0, 8]))
def test_conv_backward_matches_naive_loops(case, seed, grow):
    """dx, dW, db of Conv2d.backward = reference.conv2d_backward, read from x's patches or
    (stride 1, C_out <= C_in) from dout's; also grown to 8x8 with C_out <= C_in."""
    (C_in, C_out, kwargs), (N, _, H, W) = case
    if grow:
        C_out, H, W = min(C_out, C_in), max(H, grow), max(W, grow)
    conv = make_conv((C_in, C_out, kwargs), seed).astype(np.float64)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C_in, H, W))
    dout = rng.standard_normal(conv.forward(x).shape)
    dx = conv.backward(dout)
    dx_ref, dW_ref, db_ref = ref.conv2d_backward(x, conv.W.data, dout, conv.stride, conv.pads)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(conv.W.grad, dW_ref, rtol=1e-10, atol=1e-10)
    if conv.b is not None:
        np.testing.assert_allclose(conv.b.grad, db_ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=60)
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1), grow=st.sampled_from([0, 8, 10]))
def test_conv2d_input_grad_is_the_reference_dx(case, seed, grow):
    """conv2d_input_grad, by either of its ways and with or without a (dirty, reused)
    workspace, equals col2im(dout_mat @ W_mat) and the dx of reference.conv2d_backward."""
    (C_in, C_out, kwargs), (N, _, H, W) = case
    shape = (N, C_in, max(H, grow), max(W, grow))
    k = kwargs["kernel_size"]
    stride = kwargs["stride"]
    pads = normalize_padding(kwargs["padding"], k, stride)
    rng = np.random.default_rng(seed)
    Ho, Wo = output_size(shape, k, stride, pads)
    Wt = rng.standard_normal((C_out, C_in) + k)
    dout = rng.standard_normal((N, C_out, Ho, Wo))
    dout_mat, W_mat = dout.transpose(0, 2, 3, 1).reshape(-1, C_out), conv2d_weight_matrix(Wt)
    expected = ref.conv2d_backward(np.zeros(shape), Wt, dout, stride, pads)[0]
    np.testing.assert_allclose(col2im(dout_mat @ W_mat, shape, k, stride, pads), expected,
                               rtol=1e-12, atol=1e-12)
    workspace = dirty_workspace()
    for ws in (None, workspace, workspace):   # the third call finds the second one's buffers
        got = conv2d_input_grad(dout_mat, W_mat, shape, k, stride, pads, workspace=ws)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        assert got.transpose(0, 2, 3, 1).flags.c_contiguous      # stored channels-last


@settings(max_examples=60)
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["nchw", "nhwc"]))
def test_backward_patches_and_weight_grad_match_the_loops(case, seed, layout):
    """conv2d_backward_patches builds reference.im2col of x, or (stride 1, dx wanted, the rule
    says so) of dout with the flipped padding; conv2d_weight_grad reads the dW of
    reference.conv2d_backward from either (patches of x and, where they exist, of dout), for x
    in either memory layout and a dirty, reused workspace; conv2d_input_grad reads its dx from
    them. And im2col(x) @ conv2d_weight_matrix(W)ᵀ = reference.conv2d_forward (without b)."""
    (C_in, C_out, kwargs), shape = case
    k, stride = kwargs["kernel_size"], kwargs["stride"]
    pads = normalize_padding(kwargs["padding"], k, stride)
    rng = np.random.default_rng(seed)
    x, Wt = rng.standard_normal(shape), rng.standard_normal((C_out, C_in) + k)
    x_in = channels_last(x) if layout == "nhwc" else x
    cols, (Ho, Wo) = im2col(x, k, stride, pads)
    dout = rng.standard_normal((shape[0], C_out, Ho, Wo))
    dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, C_out)
    dx_ref, dW_ref, _ = ref.conv2d_backward(x, Wt, dout, stride, pads)
    workspace = dirty_workspace()
    candidates = [BackwardPatches("x", cols)]
    if stride == (1, 1) and flipped_pads(k, pads) is not None:
        dcols = flipped_patches(dout, shape, k, pads)
        np.testing.assert_array_equal(dcols, ref.im2col(dout, k, (1, 1), flipped_pads(k, pads)))
        candidates.append(BackwardPatches("dout", dcols))
    for weight_grad, input_grad in [(True, True), (True, False), (False, True)]:
        built = conv2d_backward_patches(dout_mat, x_in, k, stride, pads, weight_grad,
                                        input_grad, workspace=workspace)
        from_dout = input_grad and backward_from_dout(shape, C_out, k, stride, pads)
        if not from_dout and not weight_grad:
            assert built is None
            continue
        assert built.of == ("dout" if from_dout else "x")
        expected = next(c.cols for c in candidates if c.of == built.of)
        # (built.cols is the workspace's: the next call overwrites it, so it is checked now)
        np.testing.assert_array_equal(built.cols, expected)
    for patches in candidates:
        dW = conv2d_weight_grad(dout_mat, x_in, patches, k)
        assert dW.shape == Wt.shape and dW.flags.c_contiguous
        np.testing.assert_allclose(dW, dW_ref, rtol=1e-12, atol=1e-12)
        dx = conv2d_input_grad(dout_mat, conv2d_weight_matrix(Wt), shape, k, stride, pads,
                               patches=patches, workspace=workspace)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    y = (cols @ conv2d_weight_matrix(Wt).T).reshape(shape[0], Ho, Wo, C_out)
    np.testing.assert_allclose(y.transpose(0, 3, 1, 2),
                               ref.conv2d_forward(x, Wt, None, stride, pads),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=40)
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1))
def test_im2col_and_col2im_match_the_loops(case, seed):
    (_, _, kwargs), shape = case
    k, stride = kwargs["kernel_size"], kwargs["stride"]
    pads = normalize_padding(kwargs["padding"], k, stride)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    cols, _ = im2col(channels_last(x), k, stride, pads)
    np.testing.assert_array_equal(cols, ref.im2col(x, k, stride, pads))
    G = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(col2im(G, shape, k, stride, pads),
                               ref.col2im(G, shape, k, stride, pads), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride, pad", [(1, 0), (1, 1), (2, 1)])
def test_textbook_conv_matches_the_loops(stride, pad):
    """The benchmarks' textbook baseline computes the same convolution (so its timings compare
    like with like)."""
    rng = np.random.default_rng(6)
    x, W, b = (rng.standard_normal(s) for s in [(2, 3, 6, 5), (4, 3, 3, 3), (4,)])
    pads = ((pad, pad), (pad, pad))
    tb = ref.TextbookConv(W, b, stride, pad)
    y = tb.forward(x)
    np.testing.assert_allclose(y, ref.conv2d_forward(x, W, b, (stride, stride), pads),
                               rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    dx = tb.backward(dout)
    for got, expected in zip((dx, tb.dW, tb.db),
                             ref.conv2d_backward(x, W, dout, (stride, stride), pads),
                             strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=30)
@given(N=st.integers(1, 3), C_in=st.integers(1, 4), C_out=st.integers(1, 4),
       kh=st.integers(1, 4), kw=st.integers(1, 4), extra=st.tuples(st.integers(0, 5),
       st.integers(0, 5)), seed=st.integers(0, 2**31 - 1))
def test_conv_forward_matches_scipy_correlate(N, C_in, C_out, kh, kw, extra, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C_in, kh + extra[0], kw + extra[1]))
    conv = L.Conv2d(C_in, C_out, (kh, kw))
    conv.b.data = rng.standard_normal(C_out).astype(np.float32)
    W = conv.W.data.astype(np.float64)
    y = conv.forward(x)
    for n in range(N):
        for o in range(C_out):
            # A 2-D cross-correlation per channel pair, summed over the input channels.
            expected = sum(scipy.signal.correlate(x[n, c], W[o, c], mode="valid")
                           for c in range(C_in)) + conv.b.data[o]
            np.testing.assert_allclose(y[n, o], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), ((1, 2), (2, 0)), (1, "same")])
def test_channels_last_input_gives_identical_results(stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    conv = L.Conv2d(3, 5, (3, 2), stride=stride, padding=padding)
    conv.b.data = rng.standard_normal(5).astype(np.float32)
    y = conv.forward(x)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv.backward(dout)
    dW, db = conv.W.grad, conv.b.grad

    x_cl = channels_last(x)
    assert not x_cl.flags.c_contiguous
    y_cl = conv.forward(x_cl)
    dx_cl = conv.backward(channels_last(dout))
    np.testing.assert_array_equal(y_cl, y)
    np.testing.assert_array_equal(dx_cl, dx)
    np.testing.assert_array_equal(conv.W.grad, dW)
    np.testing.assert_array_equal(conv.b.grad, db)


def test_output_is_stored_channels_last():
    """The GEMM result is returned as a view: logically NCHW, physically NHWC."""
    y = L.Conv2d(2, 4, 3)(np.ones((2, 2, 5, 5), np.float32))
    assert y.shape == (2, 4, 3, 3)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous


def test_float32_is_preserved(xp):
    conv = L.Conv2d(3, 4, 3, padding=1, kernel_regularizer=L2(1e-3))
    x = xp.asarray(np.random.default_rng(1).standard_normal((2, 3, 5, 5)), dtype=xp.float32)
    y = conv(x)
    dout = xp.ones(y.shape, dtype=xp.float32)
    dx = conv.backward(dout)
    assert y.dtype == dx.dtype == conv.W.grad.dtype == conv.b.grad.dtype == xp.float32
    assert dx.shape == x.shape and conv.W.grad.shape == conv.W.shape
    assert bool(xp.all(dout == 1))  # dout not modified


def test_backend_values_match_reference(xp):
    rng = np.random.default_rng(2)
    x_np = rng.standard_normal((2, 3, 6, 5))
    conv = L.Conv2d(3, 2, (3, 2), stride=(2, 1), padding=1)
    y = conv(xp.asarray(x_np))
    W = to_numpy(conv.W.data).astype(np.float64)
    b = to_numpy(conv.b.data).astype(np.float64)
    np.testing.assert_allclose(to_numpy(y), ref.conv2d_forward(x_np, W, b, (2, 1), conv.pads),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, (2, 3)])
def test_same_padding_keeps_height_and_width(k):
    x = np.random.default_rng(3).standard_normal((1, 2, 7, 6))
    conv = L.Conv2d(2, 3, k, padding="same")
    assert conv(x).shape == (1, 3, 7, 6)
    assert conv.backward(np.ones((1, 3, 7, 6))).shape == x.shape


def test_same_padding_puts_the_extra_at_bottom_right():
    conv = L.Conv2d(1, 1, (4, 2), padding="same")
    assert conv.pads == ((1, 2), (0, 1))


@settings(max_examples=50)
@given(H=st.integers(1, 12), W=st.integers(1, 12), k=st.integers(1, 5), s=st.integers(1, 4),
       p=st.integers(0, 3))
def test_output_shape_formula(H, W, k, s, p):
    assume(H + 2 * p >= k and W + 2 * p >= k)
    y = L.Conv2d(1, 2, k, stride=s, padding=p)(np.zeros((1, 1, H, W), np.float32))
    assert y.shape == (1, 2, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)


def test_im2col_layout_and_col2im_is_its_adjoint():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 4))
    pads = ((1, 0), (2, 1))
    cols, (Ho, Wo) = im2col(x, (2, 3), (2, 1), pads)
    assert cols.shape == (2 * Ho * Wo, 2 * 3 * 3)
    x_p = np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 1)))
    # Row (n, i, j), column (a, b, c) holds x_padded[n, c, 2i + a, j + b].
    n, i, j, a, b, c = 1, Ho - 1, 1, 1, 2, 2
    assert cols[(n * Ho + i) * Wo + j, (a * 3 + b) * 3 + c] == x_p[n, c, 2 * i + a, j + b]
    # <im2col(x), G> == <x, col2im(G)> for any G: col2im is the transpose of im2col.
    G = rng.standard_normal(cols.shape)
    dx = col2im(G, x.shape, (2, 3), (2, 1), pads)
    np.testing.assert_allclose((cols * G).sum(), (x * dx).sum(), rtol=1e-12)


@settings(max_examples=60)
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1))
def test_col2im_matmul_is_col2im_of_the_product(case, seed):
    """The docstring's claim, checked: col2im_matmul(dout_mat, W_mat) = col2im(dout_mat @ W_mat),
    with and without a workspace (a reused, dirty one included)."""
    (C_in, C_out, kwargs), shape = case
    k = kwargs["kernel_size"]
    stride = kwargs["stride"] if isinstance(kwargs["stride"], tuple) else (1, 1)
    pads = normalize_padding(kwargs["padding"], k, stride)
    rng = np.random.default_rng(seed)
    Ho, Wo = output_size(shape, k, stride, pads)
    dout_mat = rng.standard_normal((shape[0] * Ho * Wo, C_out))
    W_mat = rng.standard_normal((C_out, k[0] * k[1] * C_in))
    expected = col2im(dout_mat @ W_mat, shape, k, stride, pads)
    np.testing.assert_allclose(col2im_matmul(dout_mat, W_mat, shape, k, stride, pads),
                               expected, rtol=1e-12, atol=1e-12)
    buffers = {}

    def workspace(name, shape_, dtype):
        buf = buffers.setdefault(name, np.full(shape_, np.nan, dtype))
        return buf

    for _ in range(2):  # the second call finds the first one's block in the buffer
        got = col2im_matmul(dout_mat, W_mat, shape, k, stride, pads, workspace=workspace)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert list(buffers) == ["dcols_block"]


@settings(max_examples=60)
@given(case=conv_cases(), seed=st.integers(0, 2**31 - 1))
def test_conv_input_grad_is_col2im_matmul_for_stride_1(case, seed):
    """The flipped-kernel convolution gives col2im_matmul's dx for every stride-1 case whose
    padding fits (at most K - 1), in float64, with a channels-last or NCHW dout."""
    (C_in, C_out, kwargs), shape = case
    k = kwargs["kernel_size"]
    pads = normalize_padding(kwargs["padding"], k, (1, 1))
    assume(flipped_pads(k, pads) is not None)
    rng = np.random.default_rng(seed)
    Ho, Wo = output_size(shape, k, (1, 1), pads)
    dout = rng.standard_normal((shape[0], C_out, Ho, Wo))
    W_mat = rng.standard_normal((C_out, k[0] * k[1] * C_in))
    expected = col2im_matmul(dout.transpose(0, 2, 3, 1).reshape(-1, C_out), W_mat, shape, k,
                             (1, 1), pads)
    for d in (dout, channels_last(dout)):
        got = conv_input_grad(d, W_mat, shape, k, pads)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
        assert got.transpose(0, 2, 3, 1).flags.c_contiguous  # stored channels-last


def test_flipped_pads_refuses_a_padding_beyond_the_kernel():
    assert flipped_pads((3, 3), ((1, 1), (1, 1))) == ((1, 1), (1, 1))
    assert flipped_pads((3, 2), ((0, 2), (1, 0))) == ((2, 0), (0, 1))
    assert flipped_pads((3, 3), ((3, 0), (0, 0))) is None
    with pytest.raises(ValueError, match="flipped_patches: padding"):
        conv_input_grad(np.zeros((1, 1, 5, 3)), np.zeros((1, 1)), (1, 1, 3, 3), (1, 1),
                        ((1, 1), (0, 0)))


def test_conv_keeps_its_input_not_the_patch_matrix_and_backward_can_run_twice():
    """The cache holds x itself (a reference, no copy) and the weights; cols, dout's patches
    and the padded copies are the arena's scratch. So a second backward after one forward
    computes the same gradients again (the first one overwrote nothing the cache needs)."""
    rng = np.random.default_rng(0)
    conv = L.Conv2d(6, 4, 3, padding=1, algorithm="im2col")
    x = rng.standard_normal((2, 6, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    conv.forward(x)
    cached_x, cached_W, winograd = conv.cache
    assert cached_x is x and cached_W is conv.W.data and winograd is None
    assert backward_from_dout(x.shape, 4, (3, 3), (1, 1), conv.pads)   # dout's patches
    dx = conv.backward(dout)
    dW, db = conv.W.grad.copy(), conv.b.grad.copy()
    expected = col2im_matmul(dout.transpose(0, 2, 3, 1).reshape(-1, 4),
                             conv.W.data.transpose(0, 2, 3, 1).reshape(4, -1), x.shape, (3, 3),
                             (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(conv.backward(dout), dx)              # again: the same
    np.testing.assert_array_equal(conv.W.grad, dW)
    np.testing.assert_array_equal(conv.b.grad, db)
    assert not hasattr(conv, "_workspaces")                             # no per-layer buffers


def test_the_backward_route_rule():
    same = ((1, 1), (1, 1))
    assert backward_from_dout((2, 6, 8, 8), 4, (3, 3), (1, 1), same)
    assert backward_from_dout((2, 6, 4, 4), 6, (3, 3), (1, 1), same)            # small images too
    # A layer that widens reads x's patches and takes col2im_matmul (RGB: 21 times narrower)
    assert not backward_from_dout((2, 32, 16, 16), 64, (3, 3), (1, 1), same)
    assert not backward_from_dout((2, 3, 32, 32), 64, (3, 3), (1, 1), same)
    assert not backward_from_dout((2, 6, 9, 9), 4, (3, 3), (2, 2), same)        # stride 2
    assert not backward_from_dout((2, 6, 8, 8), 4, (3, 3), (1, 1), ((3, 0), (0, 0)))  # pad > K-1


def test_layers_sharing_the_arena_do_not_disturb_each_other():
    """Two convolutions of different shapes, interleaved as in a model (forward A, forward B,
    backward B, backward A), give the gradients each gives alone: B's scratch overwrote A's
    patch matrix, which A's backward builds again from its input."""
    rng = np.random.default_rng(1)
    a, b = L.Conv2d(3, 5, 3, padding=1), L.Conv2d(5, 5, (2, 3), stride=(1, 2))
    for conv in (a, b):
        conv.b.data = rng.standard_normal(5).astype(np.float32)
    a, b = a.astype(np.float64), b.astype(np.float64)
    x = rng.standard_normal((2, 3, 9, 9))
    h = a.forward(x)
    y = b.forward(h)
    dy = rng.standard_normal(y.shape)
    dh = b.backward(dy)
    dx = a.backward(dh)
    for conv, inp, d, grad in [(a, x, dh, dx), (b, h, dy, dh)]:
        dx_ref, dW_ref, db_ref = ref.conv2d_backward(inp, conv.W.data, d, conv.stride, conv.pads)
        np.testing.assert_allclose(grad, dx_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(conv.W.grad, dW_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(conv.b.grad, db_ref, rtol=1e-10, atol=1e-10)


def test_the_patch_buffer_is_the_arenas_sized_for_the_largest_patch_matrix():
    """After one step the arena's "cols" buffer holds the largest patch matrix of the step (a
    'valid' 3x3 conv on 10x10: dout's patches (N·10·10, 9·C_out) outgrow x's (N·8·8, 9·C_in)),
    and the next step reuses it: the same memory, nothing allocated."""
    xp = np
    workspace = scratch_workspace(xp)
    workspace("cols", (1,), np.float32)   # make sure the buffer exists, then read its size
    x, dout = np.ones((2, 6, 10, 10), np.float32), np.ones((2, 6, 8, 8), np.float32)
    conv = L.Conv2d(6, 6, 3)
    conv.forward(x)
    conv.backward(dout)
    cols = workspace("cols", (1,), np.float32)
    assert cols.base.size >= 4 * 2 * 10 * 10 * 9 * 6
    held = scratch_nbytes(xp)
    conv.forward(x)
    conv.backward(dout)
    assert workspace("cols", (1,), np.float32).base is cols.base     # no new allocation
    assert scratch_nbytes(xp) == held


@settings(max_examples=60)
@given(H=st.integers(1, 9), W=st.integers(1, 9), kh=st.integers(1, 5), kw=st.integers(1, 5),
       sh=st.integers(1, 3), sw=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 2)] * 4))
def test_output_size_is_the_window_count_or_a_clear_error(H, W, kh, kw, sh, sw, pads):
    top, bottom, left, right = pads
    padding = ((top, bottom), (left, right))
    Hp, Wp = H + top + bottom, W + left + right
    if Hp < kh or Wp < kw:
        with pytest.raises(ValueError, match=rf"MyLayer: input of shape \(1, 1, {H}, {W}\) "
                                             rf"\(padded to H×W = {Hp}×{Wp}\) is smaller than "
                                             rf"the kernel {kh}×{kw}"):
            output_size((1, 1, H, W), (kh, kw), (sh, sw), padding, "MyLayer")
        return
    Ho, Wo = output_size((1, 1, H, W), (kh, kw), (sh, sw), padding, "MyLayer")
    # Count the window positions directly: top-left corners i·s with i·s + K <= padded size.
    assert Ho == len([i for i in range(Hp) if i * sh + kh <= Hp])
    assert Wo == len([j for j in range(Wp) if j * sw + kw <= Wp])


def test_a_frozen_weight_gets_no_gradient_but_dx_is_unchanged():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6))
    dout = rng.standard_normal((2, 4, 6, 6))
    conv = L.Conv2d(3, 4, 3, padding=1).astype(np.float64)
    conv.forward(x)
    dx = conv.backward(dout)
    conv.W.requires_grad, conv.W.grad = False, None
    conv.forward(x)
    np.testing.assert_array_equal(conv.backward(dout), dx)
    assert conv.W.grad is None and conv.b.grad is not None


def test_weight_gradient_includes_regularizer():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    plain = L.Conv2d(2, 3, 3)
    reg = L.Conv2d(2, 3, 3, kernel_regularizer=L2(0.1))
    reg.W.data = plain.W.data.copy()
    dout = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    plain(x)
    plain.backward(dout)
    reg(x)
    reg.backward(dout)
    np.testing.assert_allclose(reg.W.grad, plain.W.grad + 0.2 * plain.W.data, rtol=1e-5)
    np.testing.assert_array_equal(reg.b.grad, plain.b.grad)  # bias not regularised


def test_parameters_init_and_repr():
    calls = []

    def init(shape, fan_in, fan_out):
        calls.append((shape, fan_in, fan_out))
        return np.full(shape, 0.5, np.float32)

    conv = L.Conv2d(3, 8, (3, 2), stride=2, padding=1, init=init)
    assert calls == [((8, 3, 3, 2), 3 * 3 * 2, 8 * 3 * 2)]
    assert [p.name for p in conv.parameters()] == ["W", "b"]
    assert conv.W.shape == (8, 3, 3, 2) and conv.b.shape == (8,)
    assert conv.W.data.dtype == np.float32 and not conv.b.data.any()
    assert repr(conv) == "Conv2d(3, 8, kernel_size=(3, 2), stride=(2, 2), padding=(1, 1))"
    no_bias = L.Conv2d(3, 8, 3, padding="same", bias=False)
    assert no_bias.b is None and len(no_bias.parameters()) == 1
    assert repr(no_bias) == ("Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=same, "
                             "bias=False)")


def test_he_normal_scale():
    conv = L.Conv2d(64, 64, 3)
    std = float(conv.W.data.std())
    assert abs(std - np.sqrt(2.0 / (64 * 9))) < 0.05 * np.sqrt(2.0 / (64 * 9))


def test_bad_input_errors():
    conv = L.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"Conv2d.*\(N, 3, H, W\).*3 dimensions"):
        conv(np.zeros((3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*3 channels"):
        conv(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match=r"Conv2d.*floating-point"):
        conv(np.zeros((1, 3, 5, 5), np.int64))
    with pytest.raises(ValueError, match=r"Conv2d.*smaller than the kernel 3×3"):
        conv(np.zeros((1, 3, 2, 5), np.float32))
    L.Conv2d(3, 4, 3, padding=1)(np.zeros((1, 3, 1, 1), np.float32))  # padded to 3×3: fine


def test_bad_arguments():
    with pytest.raises(ValueError, match="Conv2d.*same.*stride 1"):
        L.Conv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Conv2d.*padding"):
        L.Conv2d(1, 1, 3, padding="full")
    with pytest.raises(ValueError, match="Conv2d.*kernel_size"):
        L.Conv2d(1, 1, (3, 3, 3))
    with pytest.raises(ValueError, match="Conv2d.*>= 1"):
        L.Conv2d(1, 1, 0)
    with pytest.raises(ValueError, match="Conv2d.*padding"):
        L.Conv2d(1, 1, 3, padding=-1)
    with pytest.raises(RuntimeError, match="Conv2d.backward.*before forward"):
        L.Conv2d(1, 1, 3).backward(np.zeros((1, 1, 1, 1)))


@pytest.mark.parametrize("Layer, shape", [(lambda: L.Conv2d(3, 4, 3, padding=1), (2, 3, 5, 5)),
                                          (lambda: L.Linear(6, 4), (5, 6))])
def test_input_grad_off_keeps_parameter_gradients_and_returns_none(Layer, shape):
    rng = np.random.default_rng(0)
    layer = Layer()
    x = rng.standard_normal(shape).astype(np.float32)
    dout = rng.standard_normal(layer.forward(x).shape).astype(np.float32)
    dx = layer.backward(dout)
    full = [p.grad.copy() for p in layer.parameters()]
    layer.input_grad = False
    layer.forward(x)
    assert dx is not None and layer.backward(dout) is None
    for g, p in zip(full, layer.parameters(), strict=True):
        np.testing.assert_array_equal(p.grad, g)
