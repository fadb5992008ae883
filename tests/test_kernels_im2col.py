"""The convolution's kernels (minicnn/kernels/im2col.cu): im2col and col2im as one gather each,
and the two-launch bias gradient, on the CuPy path of Conv2d.

On the strict CPU stand-in (``pytest -m cupy --strict-device``), where a launch runs the
kernel's NumPy twin: im2col, col2im and Conv2d's forward and backward on the device equal the
NumPy path over random shapes, strides, paddings, kernel sizes, memory layouts and both float
dtypes; the output and dx stay channels-last; each conv forward and backward takes an exact
number of launches, with no host sync or copy; "auto" takes im2col on CuPy. With g++
(tests/cuda_emulation.py): the real CUDA C of every entry point equals its twin, for grids
smaller than the work.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.functional.conv import conv2d_algorithm, conv2d_bias_grad
from minicnn.functional.im2col import col2im, im2col, output_size
from minicnn.gradcheck import assert_gradients
from minicnn.kernels import im2col as k
from tests.conftest import channels_last, on_device
from tests.cuda_emulation import check_against_twin, skip_without_gxx, stored_as

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-11, atol=1e-12)}
on_the_stand_in = settings(max_examples=30, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])
NHWC, NCHW = (0, 2, 3, 1), (0, 1, 2, 3)


host = mc.to_numpy


@st.composite
def geometries(draw):
    """(x shape, kernel, stride, pads) with at least one window position."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    assume(H + sum(pads[0]) >= kernel[0] and W + sum(pads[1]) >= kernel[1])
    return (N, C, H, W), kernel, stride, pads


# -- storage: the buffer a kernel reads, and x's strides in it ---------------------------------

def test_storage_is_the_buffer_of_a_transposed_view_and_a_copy_otherwise():
    nhwc = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    x = nhwc.transpose(0, 3, 1, 2)
    base, strides = k.storage(x)
    assert base.flags.c_contiguous and np.shares_memory(base, nhwc)
    assert strides == (60, 1, 15, 3)
    stepped = x[:, :, ::2]
    base, strides = k.storage(stepped)
    assert base.flags.c_contiguous and not np.shares_memory(base, nhwc)
    flat = base.reshape(-1)
    n, c, h, w = 1, 2, 1, 3
    assert flat[n * strides[0] + c * strides[1] + h * strides[2] + w * strides[3]] == \
        stepped[n, c, h, w]


# -- im2col / col2im on the device == on NumPy -------------------------------------------------

@pytest.mark.cupy
@on_the_stand_in
@given(geometry=geometries(), order=st.sampled_from([NHWC, NCHW]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_im2col_and_col2im_equal_the_numpy_path(strict_cupy, geometry, order, dtype, seed):
    shape, kernel, stride, pads = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    cols, out_size = im2col(x, kernel, stride, pads)
    x_d = on_device(x, order)
    with strict_cupy.record() as rec:
        cols_d, out_size_d = im2col(x_d, kernel, stride, pads)
    assert rec.launches == 1 and rec.events == []
    assert out_size_d == out_size
    np.testing.assert_array_equal(host(cols_d), cols)        # a copy: the same bits

    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = col2im(dcols, shape, kernel, stride, pads)
    dcols_d = mc.to_device(dcols)
    with strict_cupy.record() as rec:
        dx_d = col2im(dcols_d, shape, kernel, stride, pads)
    assert rec.launches == 1 and rec.events == []
    assert dx_d.shape == shape and dx_d.dtype == dtype and channels_last(dx_d)
    np.testing.assert_allclose(host(dx_d), dx, **TOL[dtype])


@pytest.mark.cupy
def test_im2col_writes_the_workspace_buffer(strict_cupy):
    """With a workspace the patch matrix is its "cols" buffer, and nothing else is asked for
    (no "x_pad": the kernel pads by bounds tests)."""
    asked = {}

    def workspace(name, shape, dtype):
        asked[name] = mc.backend.get_xp().empty(shape, dtype=dtype)
        return asked[name]

    x = on_device(np.ones((2, 3, 5, 5), np.float32), NHWC)
    cols, _ = im2col(x, (3, 3), (1, 1), ((1, 1), (1, 1)), workspace=workspace)
    assert list(asked) == ["cols"] and cols is asked["cols"]


# -- Conv2d on the device == on NumPy ----------------------------------------------------------

@st.composite
def conv_cases(draw):
    C_in, C_out = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from([0, 1, 2, (1, 0), "same"] if stride == (1, 1)
                                   else [0, 1, 2, (0, 1)]))
    N, H, W = draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    ph, pw = (0, 0) if padding == "same" else (padding if isinstance(padding, tuple)
                                               else (padding, padding))
    assume(padding == "same" or (H + 2 * ph >= kernel[0] and W + 2 * pw >= kernel[1]))
    return dict(C_in=C_in, C_out=C_out, kernel=kernel, stride=stride, padding=padding,
                shape=(N, C_in, H, W), bias=draw(st.booleans()),
                input_grad=draw(st.booleans()))


def conv_pair(case, dtype, seed):
    """The same Conv2d twice: weights on the host (NumPy run) and on the device."""
    rng = np.random.default_rng(seed)
    pair = []
    for _ in range(2):
        conv = L.Conv2d(case["C_in"], case["C_out"], case["kernel"], stride=case["stride"],
                        padding=case["padding"], bias=case["bias"])
        conv.input_grad = case["input_grad"]
        pair.append(conv)
    W = rng.standard_normal(pair[0].W.shape).astype(dtype)
    b = rng.standard_normal(case["C_out"]).astype(dtype)
    for conv, to in zip(pair, (np.asarray, mc.to_device), strict=True):
        conv.W.data = to(W)
        if conv.b is not None:
            conv.b.data = to(b)
    return pair


@pytest.mark.cupy
@on_the_stand_in
@given(case=conv_cases(), x_order=st.sampled_from([NHWC, NCHW]),
       dout_order=st.sampled_from([NHWC, NCHW]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16))
def test_conv2d_on_the_device_equals_the_numpy_path(strict_cupy, case, x_order, dout_order,
                                                    dtype, seed):
    """y, dx, dW and db of Conv2d on the device equal NumPy's; y and dx stored channels-last."""
    rng = np.random.default_rng(seed)
    plain, dev = conv_pair(case, dtype, seed)
    x = rng.standard_normal(case["shape"]).astype(dtype)
    y = plain.forward(x)
    y_d = dev.forward(on_device(x, x_order))
    assert y_d.dtype == dtype and channels_last(y_d)
    np.testing.assert_allclose(host(y_d), y, **TOL[dtype])
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = plain.backward(dout)
    dx_d = dev.backward(on_device(dout, dout_order))
    if case["input_grad"]:
        assert dx_d.shape == x.shape and channels_last(dx_d)
        np.testing.assert_allclose(host(dx_d), dx, **TOL[dtype])
    else:
        assert dx_d is None
    np.testing.assert_allclose(host(dev.W.grad), plain.W.grad, **TOL[dtype])
    if case["bias"]:
        np.testing.assert_allclose(host(dev.b.grad), plain.b.grad, **TOL[dtype])


@pytest.mark.cupy
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 3), (2, 0)])
def test_conv2d_gradients_on_the_device(strict_cupy, stride, padding):
    """Central differences (float64) through the device path: the flipped-kernel dx (stride
    1), the gather col2im (stride 2, or a padding beyond K - 1), the bias kernels."""
    conv = L.Conv2d(3, 2, 3, stride=stride, padding=padding).astype(np.float64)
    conv.b.data = mc.to_device(np.array([0.5, -0.25]))
    x = on_device(np.random.default_rng(3).standard_normal((2, 3, 5, 6)), NHWC)
    assert_gradients(conv, x, seed=3)


# -- launches per Conv2d pass -------------------------------------------------------------------

# (name, Conv2d kwargs, x shape, input_grad, launches forward, launches backward). Forward:
# W_mat (one reorder copy; a view for 1×1), im2col, the GEMM, the bias add. Backward: one
# patch matrix (im2col of x, or of dout for stride 1 when the layer does not widen), the dW
# GEMM (its reorder is the optimizer's gradient copy), db in two, then dx: the flipped W and
# one GEMM (from dout's patches), or W_mat, the dcols GEMM and col2im (from x's).
LAUNCHES = [
    ("stride 1, from dout's patches", dict(in_channels=4, out_channels=4, kernel_size=3,
                                           padding=1), (2, 4, 6, 6), True, 4, 6),
    ("auto where NumPy takes Winograd", dict(in_channels=8, out_channels=8, kernel_size=3,
                                             padding=1), (8, 8, 16, 16), True, 4, 6),
    ("widening: x's patches, col2im", dict(in_channels=3, out_channels=8, kernel_size=3,
                                           padding=1), (2, 3, 6, 6), True, 4, 7),
    ("stride 2", dict(in_channels=4, out_channels=4, kernel_size=3, stride=2, padding=1),
     (2, 4, 7, 7), True, 4, 7),
    ("first layer: no dx", dict(in_channels=3, out_channels=8, kernel_size=3, padding=1),
     (2, 3, 6, 6), False, 4, 4),
    ("1×1 stride 2, no bias", dict(in_channels=4, out_channels=8, kernel_size=1, stride=2,
                                   bias=False), (2, 4, 6, 6), True, 2, 4),
    ("'same', no bias", dict(in_channels=4, out_channels=4, kernel_size=3, padding="same",
                             bias=False), (2, 4, 6, 6), True, 3, 4),
]


@pytest.mark.cupy
@pytest.mark.parametrize("name, kwargs, shape, input_grad, forward, backward", LAUNCHES,
                         ids=[c[0] for c in LAUNCHES])
def test_launches_per_conv2d_pass(strict_cupy, name, kwargs, shape, input_grad, forward,
                                  backward):
    """Exact launches per forward and backward (channels-last x and dout, as in a network),
    no host sync, no copy; the output and dx channels-last."""
    conv = L.Conv2d(**kwargs)
    conv.input_grad = input_grad
    rng = np.random.default_rng(0)
    x = on_device(rng.standard_normal(shape).astype(np.float32), NHWC)
    for _ in range(2):                                  # the second step is the one counted
        with strict_cupy.record() as rec_f:
            y = conv.forward(x)
        dout = on_device(rng.standard_normal(y.shape).astype(np.float32), NHWC)
        with strict_cupy.record() as rec_b:
            dx = conv.backward(dout)
    assert conv.cache[2] is None                        # the im2col route, also for "auto"
    assert rec_f.events == [] and rec_b.events == [], rec_f.report() + rec_b.report()
    assert (rec_f.launches, rec_b.launches) == (forward, backward), (
        rec_f.report("launch") + "\n--\n" + rec_b.report("launch"))
    assert channels_last(y) and (dx is None if not input_grad else channels_last(dx))


@pytest.mark.cupy
def test_auto_takes_im2col_on_the_device(strict_cupy):
    """Winograd where the NumPy rule says so, but im2col on CuPy (launches, not multiplies)."""
    import cupy

    args = ("auto", (64, 64, 32, 32), 64, (3, 3), (1, 1), ((1, 1), (1, 1)))
    assert conv2d_algorithm(*args) == 4
    assert conv2d_algorithm(*args, xp=cupy) is None
    assert conv2d_algorithm("winograd", *args[1:], xp=cupy) == 4       # asked for: taken


# -- the bias gradient ---------------------------------------------------------------------------

@pytest.mark.cupy
@on_the_stand_in
@given(rows=st.integers(1, 3000), C=st.integers(1, 70),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_bias_grad_is_the_row_sum_in_two_launches(strict_cupy, rows, C, dtype, seed):
    dout_mat = np.random.default_rng(seed).standard_normal((rows, C)).astype(dtype)
    dout_mat_d = mc.to_device(dout_mat)
    with strict_cupy.record() as rec:
        db = conv2d_bias_grad(dout_mat_d)
    assert rec.launches == 2 and rec.events == []
    assert db.shape == (C,) and db.dtype == dtype
    eps = np.finfo(dtype).eps                  # a sum of `rows` terms: rounding grows with it
    np.testing.assert_allclose(host(db), dout_mat.astype(np.float64).sum(axis=0), rtol=0,
                               atol=4 * eps * rows)


def test_bias_chunks_fill_the_gpu_and_stay_within_the_rows():
    assert k.bias_chunks(1, 64) == 1
    assert k.bias_chunks(131072, 64) == 1024                 # 64 K (chunk, channel) threads
    assert k.bias_chunks(131072, 100000) == 1
    assert k.bias_chunks(100, 3) == 4                        # chunks of at least 32 rows


# -- the CUDA C itself (g++ emulation) == the twins ----------------------------------------------

EMULATED = [  # (N, C, H, W, KH, KW, sh, sw, (top, bottom), (left, right))
    (2, 3, 5, 7, 3, 2, 2, 1, (1, 2), (0, 1)),
    (1, 5, 6, 6, 3, 3, 1, 1, (1, 1), (1, 1)),
    (2, 2, 4, 5, 2, 3, 3, 2, (0, 0), (2, 1)),
    (1, 1, 3, 3, 4, 4, 1, 1, (2, 1), (1, 2)),
]


def _emulated_case(geometry):
    """(x shape, the kernels' int arguments, (Ho, Wo), a generator) of an EMULATED row."""
    N, C, H, W, KH, KW, sh, sw, pads_h, pads_w = geometry
    Ho, Wo = output_size((N, C, H, W), (KH, KW), (sh, sw), (pads_h, pads_w))
    ints = k.geometry((N, C, H, W), (KH, KW), (sh, sw), (pads_h[0], pads_w[0]), (Ho, Wo))
    return (N, C, H, W), ints, (Ho, Wo), np.random.default_rng(sum(geometry[:8]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", EMULATED, ids=str)
@pytest.mark.parametrize("order", [NHWC, NCHW], ids=["nhwc", "nchw"])
def test_emulated_im2col_gather_equals_its_twin(dtype, geometry, order):
    skip_without_gxx()
    (N, C, H, W), ints, (Ho, Wo), rng = _emulated_case(geometry)
    KH, KW = geometry[4:6]
    base, strides = k.storage(stored_as(rng.standard_normal((N, C, H, W)).astype(dtype), order))
    cols = np.empty((N * Ho * Wo, KH * KW * C), dtype)
    check_against_twin("im2col", "im2col_gather", dtype, 2, 32, (base, cols, *strides, *ints),
                       outputs=(1,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", EMULATED, ids=str)
def test_emulated_col2im_gather_equals_its_twin(dtype, geometry):
    skip_without_gxx()
    (N, C, H, W), ints, (Ho, Wo), rng = _emulated_case(geometry)
    KH, KW = geometry[4:6]
    dcols = rng.standard_normal((N * Ho * Wo, KH * KW * C)).astype(dtype)
    check_against_twin("im2col", "col2im_gather", dtype, 2, 32,
                       (dcols, np.empty((N, H, W, C), dtype), *ints), outputs=(1,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, C", [(1, 1), (37, 3), (300, 5), (64, 33)])
def test_emulated_bias_grad_kernels_equal_their_twins(dtype, rows, C):
    skip_without_gxx()
    chunks = k.bias_chunks(rows, C)
    dout = np.random.default_rng(rows + C).standard_normal((rows, C)).astype(dtype)
    partial = np.empty((chunks, C), dtype)
    args = (dout, partial, np.int64(rows), np.int32(C), np.int32(chunks))
    _, (_, partial, *_) = check_against_twin("im2col", "conv_bias_grad_partial", dtype, 1, 32,
                                             args, outputs=(1,))
    args = (partial, np.empty(C, dtype), np.int32(C), np.int32(chunks))
    check_against_twin("im2col", "conv_bias_grad_finish", dtype, 1, 32, args, outputs=(1,))


def _floats_for_16_bits(rng, n: int) -> np.ndarray:
    """float32 values that test a 16-bit rounding: random bit patterns (every exponent, NaNs
    and infinities), values spread over fp16's range and below it (log-uniform from 2^-27 to
    2^17), and the edges: ties at the last kept bit of bf16 and fp16, fp16's largest value
    65504 and the tie 65520 above it, its subnormal ties, 2^-25 and the values around it."""
    bits = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    spread = (2.0 ** rng.uniform(-27, 17, n) * rng.choice([-1, 1], n)).astype(np.float32)
    edges = np.array([65504, 65519.99, 65520, 65536, 2.0**-14, 2.0**-24, 1.5 * 2.0**-24,
                      2.5 * 2.0**-24, 2.0**-25, 1.0000001 * 2.0**-25, 0.99999994 * 2.0**-25,
                      1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, -0.0, 0.0,
                      np.inf, -np.inf, np.nan], np.float32)
    nan_low = np.array([0x7F800001, 0xFF801000, 0x7FC00000], np.uint32).view(np.float32)
    return np.concatenate([bits, spread, edges, nan_low])


@pytest.mark.parametrize("name", ["im2col_gather_bf16", "im2col_gather_fp16"])
@pytest.mark.parametrize("geometry", EMULATED[:2], ids=str)
def test_emulated_16bit_im2col_equals_its_twin(name, geometry):
    """The patches rounded to bf16 or fp16 in the gather: the CUDA C's bit patterns equal
    the twin's (ml_dtypes-exact bf16 rounding, NumPy's float16 conversion) on every edge."""
    skip_without_gxx()
    (N, C, H, W), ints, (Ho, Wo), rng = _emulated_case(geometry)
    KH, KW = geometry[4:6]
    values = _floats_for_16_bits(rng, 4000)
    cols = np.empty((N * Ho * Wo, KH * KW * C), np.uint16)
    for start in range(0, values.size, N * C * H * W):    # every value through the kernel
        x = np.resize(np.roll(values, -start), (N, C, H, W)).astype(np.float32)
        base, strides = k.storage(x)
        check_against_twin("im2col", name, np.float32, 2, 32, (base, cols, *strides, *ints),
                           outputs=(1,))


def test_fp16_twin_is_numpys_conversion_and_bf16_twin_is_ml_dtypes():
    import ml_dtypes

    from minicnn.kernels import twin_of

    x = _floats_for_16_bits(np.random.default_rng(5), 3000).reshape(1, 1, 1, -1)
    base, strides = k.storage(x)
    ints = k.geometry(x.shape, (1, 1), (1, 1), (0, 0), x.shape[2:])
    finite = ~np.isnan(x.reshape(-1))
    with np.errstate(over="ignore", invalid="ignore"):
        for fmt, expected in (("fp16", x.astype(np.float16).view(np.uint16)),
                              ("bf16", x.astype(ml_dtypes.bfloat16).view(np.uint16))):
            cols = np.empty((x.size, 1), np.uint16)
            twin_of(f"im2col_gather_{fmt}")(base, cols, *strides, *ints)
            np.testing.assert_array_equal(cols.reshape(-1)[finite], expected.reshape(-1)[finite])
            widened = (cols.astype(np.uint32) << 16).view(np.float32) if fmt == "bf16" else \
                cols.view(np.float16).astype(np.float32)
            assert np.isnan(widened.reshape(-1)[~finite]).all()
