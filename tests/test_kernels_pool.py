"""The pooling kernels (minicnn/kernels/pool.cu): max pooling with a one-byte argmax and average
pooling, one launch per pass, on the CuPy path of MaxPool2d and AvgPool2d.

On the strict CPU stand-in (``pytest -m cupy --strict-device``), where a launch runs the
kernel's NumPy twin: both layers' forward and backward on the device equal the NumPy path over
random shapes, kernels, strides, paddings, memory layouts and both float dtypes, ties included
(the first max of a window takes the gradient); one launch per pass, no host sync or copy,
outputs channels-last. With g++ (tests/cuda_emulation.py): the real CUDA C of every entry point
equals its twin, for grids smaller than the work, with ties and NaNs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.functional import reference as ref
from minicnn.functional.im2col import output_size
from minicnn.gradcheck import assert_gradients
from minicnn.kernels import pool as k
from minicnn.kernels.im2col import geometry, storage
from tests.conftest import channels_last, on_device
from tests.cuda_emulation import check_against_twin, skip_without_gxx, stored_as

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
on_the_stand_in = settings(max_examples=40, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])
NHWC, NCHW = (0, 2, 3, 1), (0, 1, 2, 3)
POOLS = {"max": L.MaxPool2d, "avg": L.AvgPool2d}


host = mc.to_numpy


@st.composite
def pool_cases(draw):
    """Layer arguments PyTorch accepts (padding at most half the kernel) and an input shape
    with at least one window."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    N, C, H, W = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 8)),
                  draw(st.integers(1, 8)))
    assume(H + 2 * padding[0] >= kernel[0] and W + 2 * padding[1] >= kernel[1])
    return dict(kernel_size=kernel, stride=stride, padding=padding), (N, C, H, W)


# -- the layers on the device == on NumPy -------------------------------------------------------

@pytest.mark.cupy
@on_the_stand_in
@given(kind=st.sampled_from(sorted(POOLS)), case=pool_cases(),
       x_order=st.sampled_from([NHWC, NCHW]), dout_order=st.sampled_from([NHWC, NCHW]),
       dtype=st.sampled_from([np.float32, np.float64]), ties=st.booleans(),
       seed=st.integers(0, 2**16))
def test_pooling_on_the_device_equals_the_numpy_path(strict_cupy, kind, case, x_order,
                                                     dout_order, dtype, ties, seed):
    """y and dx of MaxPool2d / AvgPool2d on the device equal NumPy's (ties: small integers,
    so windows hold equal maxima and the first must take the gradient); one launch per pass,
    no sync or copy, y and dx channels-last."""
    kwargs, shape = case
    rng = np.random.default_rng(seed)
    x = (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    plain, dev = POOLS[kind](**kwargs), POOLS[kind](**kwargs)
    y = plain.forward(x)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx = plain.backward(dout)
    x_d, dout_d = on_device(x, x_order), on_device(dout, dout_order)
    with strict_cupy.record() as rec_f:
        y_d = dev.forward(x_d)
    with strict_cupy.record() as rec_b:
        dx_d = dev.backward(dout_d)
    assert (rec_f.launches, rec_b.launches) == (1, 1)
    assert rec_f.events == [] and rec_b.events == []
    assert y_d.dtype == dx_d.dtype == dtype and channels_last(y_d) and channels_last(dx_d)
    np.testing.assert_allclose(host(y_d), y, **TOL[dtype])
    np.testing.assert_allclose(host(dx_d), dx, **TOL[dtype])


@pytest.mark.cupy
def test_maxpool_ties_on_the_device_give_the_gradient_to_the_first_max(strict_cupy):
    """A window of equal values sends dout to its first (row-major) entry, as
    ``reference.max_pool2d_backward`` (argmax) does; overlapping windows add up."""
    x = np.zeros((1, 1, 3, 3))
    pool = L.MaxPool2d(2, stride=1)
    pool.forward(on_device(x, NHWC))
    dx = host(pool.backward(mc.to_device(np.ones((1, 1, 2, 2)))))
    expected = ref.max_pool2d_backward(x, np.ones((1, 1, 2, 2)), (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(dx, expected)
    assert dx[0, 0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


@pytest.mark.cupy
def test_maxpool_keeps_one_byte_per_output_on_the_device(strict_cupy):
    """The forward keeps the argmax (uint8, N·Ho·Wo·C bytes), not x and y."""
    pool = L.MaxPool2d(3, stride=2, padding=1)
    x = on_device(np.random.default_rng(0).standard_normal((2, 4, 9, 9)).astype(np.float32),
                  NHWC)
    y = pool.forward(x)
    x_shape, argmax = pool.cache
    assert x_shape == x.shape and argmax.dtype == np.uint8 and argmax.size == y.size


@pytest.mark.cupy
@pytest.mark.parametrize("layer", [lambda: L.MaxPool2d(3, stride=2, padding=1),
                                   lambda: L.MaxPool2d((2, 3), stride=1, padding=(1, 1)),
                                   lambda: L.AvgPool2d(3, stride=2, padding=1)])
def test_pool_gradients_on_the_device(strict_cupy, layer):
    """Central differences (float64) through the device kernels (distinct values: no ties)."""
    x = np.random.default_rng(4).permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0
    assert_gradients(layer(), on_device(x, NHWC), seed=4)


def test_max_pool_fits_a_one_byte_argmax():
    assert k.max_pool_fits((16, 16)) and not k.max_pool_fits((16, 17))


@pytest.mark.cupy
def test_a_window_too_large_for_the_argmax_takes_the_array_code(strict_cupy):
    x = np.random.default_rng(1).standard_normal((1, 2, 17, 17))
    plain, dev = L.MaxPool2d(17), L.MaxPool2d(17)
    y = plain.forward(x)
    np.testing.assert_allclose(host(dev.forward(on_device(x, NHWC))), y)
    dout = np.ones(y.shape)
    np.testing.assert_allclose(host(dev.backward(mc.to_device(dout))), plain.backward(dout))


# -- the CUDA C itself (g++ emulation) == the twins ----------------------------------------------

EMULATED = [  # (N, C, H, W, KH, KW, sh, sw, ph, pw)
    (2, 3, 5, 7, 3, 2, 2, 1, 1, 1),
    (1, 5, 6, 6, 2, 2, 2, 2, 0, 0),
    (2, 2, 7, 5, 3, 3, 1, 2, 1, 0),
    (1, 1, 4, 4, 4, 4, 3, 3, 2, 2),
]


def _args(N, C, H, W, KH, KW, sh, sw, ph, pw):
    """The kernels' int arguments of an EMULATED row, and (Ho, Wo)."""
    Ho, Wo = output_size((N, C, H, W), (KH, KW), (sh, sw), ((ph, ph), (pw, pw)))
    return geometry((N, C, H, W), (KH, KW), (sh, sw), (ph, pw), (Ho, Wo)), (Ho, Wo)


def _stored(shape, order, dtype, rng, ties=False):
    """(the buffer, its element strides) of an (N, C, ., .) array stored in ``order``."""
    a = rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)
    return storage(stored_as(a.astype(dtype), order))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", EMULATED, ids=str)
@pytest.mark.parametrize("order", [NHWC, NCHW], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("values", ["normal", "ties", "nan"])
def test_emulated_max_pool_kernels_equal_their_twins(dtype, geometry, order, values):
    skip_without_gxx()
    rng = np.random.default_rng(sum(geometry))
    N, C, H, W = geometry[:4]
    args, (Ho, Wo) = _args(*geometry)
    x, x_strides = _stored((N, C, H, W), order, dtype, rng, ties=values == "ties")
    if values == "nan":
        x.reshape(-1)[rng.integers(0, x.size, 3)] = np.nan
    y, argmax = np.empty((N, Ho, Wo, C), dtype), np.empty((N, Ho, Wo, C), np.uint8)
    _, (_, _, argmax, *_) = check_against_twin(
        "pool", "pool_max_forward", dtype, 2, 32,
        (x, y, argmax, *x_strides, *args, dtype(-np.inf)), outputs=(1, 2))
    dout, d_strides = _stored((N, C, Ho, Wo), order, dtype, rng)
    check_against_twin("pool", "pool_max_backward", dtype, 2, 32,
                       (dout, argmax, np.empty((N, H, W, C), dtype), *d_strides, *args),
                       outputs=(2,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", EMULATED, ids=str)
@pytest.mark.parametrize("order", [NHWC, NCHW], ids=["nhwc", "nchw"])
def test_emulated_avg_pool_kernels_equal_their_twins(dtype, geometry, order):
    skip_without_gxx()
    rng = np.random.default_rng(sum(geometry))
    N, C, H, W = geometry[:4]
    args, (Ho, Wo) = _args(*geometry)
    x, x_strides = _stored((N, C, H, W), order, dtype, rng)
    check_against_twin("pool", "pool_avg_forward", dtype, 2, 32,
                       (x, np.empty((N, Ho, Wo, C), dtype), *x_strides, *args), outputs=(1,))
    dout, d_strides = _stored((N, C, Ho, Wo), order, dtype, rng)
    check_against_twin("pool", "pool_avg_backward", dtype, 2, 32,
                       (dout, np.empty((N, H, W, C), dtype), *d_strides, *args), outputs=(1,))
