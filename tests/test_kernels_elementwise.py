"""The element-wise kernels (minicnn/kernels/elementwise.cu): activations, dropout, Residual's
add and softmax cross-entropy on the CuPy path.

On the strict CPU stand-in (``pytest -m cupy --strict-device``), where a launch runs the
kernel's NumPy twin: the CuPy path equals the NumPy path (plain array code) over random
shapes, memory layouts and both float dtypes; each layer forward and backward is exactly one
launch and the loss three, with no host sync or copy; outputs keep their input's layout.
With g++ (tests/cuda_emulation.py): the real CUDA C of every entry point equals its twin,
for grids smaller than the work.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.functional.random_bits import random_bits, random_seed
from minicnn.kernels import elementwise as ew
from minicnn.kernels import entry_points
from tests.cuda_emulation import check_against_twin, skip_without_gxx

ACTIVATIONS = {
    "relu": lambda: L.ReLU(),
    "leaky_relu": lambda: L.LeakyReLU(0.1),
    "leaky_relu_steep": lambda: L.LeakyReLU(2.5),
    "sigmoid": lambda: L.Sigmoid(),
    "tanh": lambda: L.Tanh(),
    "silu": lambda: L.SiLU(),
    "gelu": lambda: L.GELU(),
    "gelu_tanh": lambda: L.GELU(approximate="tanh"),
}
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}
on_the_stand_in = settings(max_examples=30, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])


def on_device(a: np.ndarray, order: tuple[int, ...]) -> object:
    """``a`` on the device, its memory holding the axes in ``order`` (e.g. (0, 2, 3, 1):
    channels-last), viewed in ``a``'s logical shape."""
    stored = mc.to_device(np.ascontiguousarray(a.transpose(order)))
    return stored.transpose(tuple(int(k) for k in np.argsort(order)))


def host(a: object) -> np.ndarray:
    return mc.to_numpy(a)


def same_layout(a: object, b: object) -> bool:
    """Same shape and the same strides on every axis longer than 1 (a size-1 axis's stride
    says nothing about the memory)."""
    return a.shape == b.shape and all(
        n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.strides, b.strides, strict=True))


@st.composite
def shape_and_orders(draw, min_dims=1):
    """A shape of 1-4 axes and two memory orders of its axes (x's and dout's)."""
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=min_dims, max_size=4)))
    orders = st.permutations(range(len(shape))).map(tuple)
    return shape, draw(orders), draw(st.sampled_from(["same", "other"])), draw(orders)


# -- layouts ----------------------------------------------------------------------------------

def test_storage_order_and_flat_views():
    x = np.zeros((2, 3, 4, 5), np.float32)
    assert ew.storage_order(x) == (0, 1, 2, 3)
    nhwc = np.zeros((2, 4, 5, 3), np.float32).transpose(0, 3, 1, 2)
    assert ew.storage_order(nhwc) == (0, 2, 3, 1)
    assert ew.storage_order(np.asfortranarray(x)) == (3, 2, 1, 0)
    flat = ew.flat(nhwc, (0, 2, 3, 1))
    assert flat.shape == (120,) and np.shares_memory(flat, nhwc)
    assert ew.flat(x[:, :, ::2], (0, 1, 2, 3)) is None            # not dense: no view


# -- activations: CuPy path == NumPy path, one launch each way --------------------------------

@pytest.mark.cupy
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@on_the_stand_in
@given(case=shape_and_orders(), seed=st.integers(0, 2**31 - 1))
def test_activation_on_the_device_equals_numpy(strict_cupy, name, dtype, case, seed):
    shape, x_order, dout_layout, other = case
    dout_order = x_order if dout_layout == "same" else other
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    reference = ACTIVATIONS[name]()
    y_ref, dx_ref = reference.forward(x), reference.backward(dout)

    layer = ACTIVATIONS[name]()
    x_dev, dout_dev = on_device(x, x_order), on_device(dout, dout_order)
    with strict_cupy.record() as fwd:
        y = layer.forward(x_dev)
    with strict_cupy.record() as bwd:
        dx = layer.backward(dout_dev)
    assert fwd.launches == 1, fwd.report("launch")
    # A gradient that arrives in another layout than forward's array costs one copy.
    same = ew.flat(x_dev, ew.storage_order(dout_dev)) is not None
    assert bwd.launches == (1 if same else 2), bwd.report("launch")
    assert fwd.events == [] and bwd.events == [], (fwd.report(), bwd.report())
    assert y.dtype == dtype and dx.dtype == dtype
    assert same_layout(y, x_dev) and same_layout(dx, dout_dev)
    np.testing.assert_allclose(host(y), y_ref, **TOL[dtype])
    np.testing.assert_allclose(host(dx), dx_ref, **TOL[dtype])


@pytest.mark.cupy
def test_activation_of_a_sliced_view_copies_it_once(strict_cupy):
    """An input that is not dense in any order (a strided slice) is copied first: two
    launches, the same numbers."""
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    x_dev = mc.to_device(x)[:, ::2]
    with strict_cupy.record() as rec:
        y = L.SiLU().forward(x_dev)
    assert rec.launches == 2, rec.report("launch")
    np.testing.assert_allclose(host(y), L.SiLU().forward(x[:, ::2]), rtol=1e-6)


@pytest.mark.cupy
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_gradcheck_on_the_device(strict_cupy, name):
    """The kernels' backward is the derivative of their forward (float64 central differences,
    on a channels-last input)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 2)) * 2
    x = np.where(np.abs(x) < 0.05, 0.1, x)          # away from ReLU's kink
    layer = ACTIVATIONS[name]()
    x_dev = on_device(x, (0, 2, 3, 1))
    y = layer.forward(x_dev)
    dout = rng.standard_normal(x.shape)
    dx = host(layer.backward(mc.to_device(dout)))
    h = 1e-6
    for index in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 1, 2, 0), (1, 0, 1, 1)]:
        e = np.zeros_like(x)
        e[index] = h
        plus = host(ACTIVATIONS[name]().forward(on_device(x + e, (0, 2, 3, 1))))
        minus = host(ACTIVATIONS[name]().forward(on_device(x - e, (0, 2, 3, 1))))
        numeric = ((plus - minus) * dout).sum() / (2 * h)
        np.testing.assert_allclose(dx[index], numeric, rtol=1e-6, atol=1e-8)
    assert y.strides == x_dev.strides


@pytest.mark.cupy
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_float16_on_the_device_takes_the_array_code(strict_cupy, name):
    """The kernels are compiled for float32 and float64 only: a float16 array on CuPy takes
    the plain array code of functional/activation.py (no kernel), as on NumPy."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 4, 5)) * 3).astype(np.float16)
    dout = rng.standard_normal(x.shape).astype(np.float16)
    reference = ACTIVATIONS[name]()
    y_ref, dx_ref = reference.forward(x), reference.backward(dout)
    layer = ACTIVATIONS[name]()
    x_dev, dout_dev = mc.to_device(x), mc.to_device(dout)
    with strict_cupy.record() as rec:
        y = layer.forward(x_dev)
        dx = layer.backward(dout_dev)
    kernels = [e.what for e in rec.of("launch") if e.what.startswith("RawKernel")]
    assert rec.launches >= 1 and not kernels, kernels
    assert rec.events == [], rec.report()
    assert y.dtype == np.float16 and dx.dtype == np.float16
    # The same array code (GELU's erfc aside: CuPy's own there), rounded to float16.
    np.testing.assert_allclose(host(y), y_ref, rtol=4e-3, atol=4e-3)
    np.testing.assert_allclose(host(dx), dx_ref, rtol=4e-3, atol=4e-3)


# -- dropout and Residual's add --------------------------------------------------------------

@pytest.mark.cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_on_the_device_is_one_launch_each_way(strict_cupy, dtype, p):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    layer = L.Dropout(p, seed=7)
    seed = random_seed(np.random.default_rng(7))    # the seed the layer's first forward draws
    x_dev, dout_dev = on_device(x, (0, 1, 2, 3)), mc.to_device(dout)
    with strict_cupy.record() as fwd:
        y = layer.forward(x_dev)
    with strict_cupy.record() as bwd:
        dx = layer.backward(dout_dev)
    assert fwd.launches == 1 and bwd.launches == 1, (fwd.report("launch"), bwd.report("launch"))
    assert fwd.events == [] and bwd.events == []
    # The mask is functional.random_bits' draw of that seed (on a C-ordered input).
    keep = random_bits(np, x.shape, seed) >= np.uint32(min(round(p * 2**32), 2**32 - 1))
    mask = keep.astype(dtype) * dtype(1.0 / (1.0 - p))
    np.testing.assert_array_equal(host(layer.mask), mask)
    np.testing.assert_array_equal(host(y), x * mask)
    np.testing.assert_array_equal(host(dx), dout * mask)
    assert abs(keep.mean() - (1 - p)) < 0.1
    layer.eval()
    with strict_cupy.record() as rec:
        assert layer.backward(layer.forward(x_dev)) is x_dev
    assert rec.launches == 0


@pytest.mark.cupy
def test_dropout_float16_on_the_device_draws_the_kernels_bits(strict_cupy):
    """float16 has no kernel: the array code draws the same ``random_bits`` mask."""
    x = np.random.default_rng(3).standard_normal((4, 50)).astype(np.float16)
    layer = L.Dropout(0.3, seed=11)
    seed = random_seed(np.random.default_rng(11))
    x_dev = mc.to_device(x)
    with strict_cupy.record() as rec:
        y = layer.forward(x_dev)
    assert not [e for e in rec.of("launch") if e.what.startswith("RawKernel")]
    assert rec.events == [], rec.report()
    keep = random_bits(np, x.shape, seed) >= np.uint32(round(0.3 * 2**32))
    mask = keep.astype(np.float16) * np.float16(1 / 0.7)
    assert y.dtype == np.float16 and layer.mask.dtype == np.float16
    np.testing.assert_array_equal(host(layer.mask), mask)
    np.testing.assert_array_equal(host(y), x * mask)


@pytest.mark.cupy
def test_dropout_keeps_channels_last(strict_cupy):
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x_dev = on_device(x, (0, 2, 3, 1))
    layer = L.Dropout(0.5, seed=1)
    y = layer.forward(x_dev)
    assert y.strides == x_dev.strides and layer.mask.strides == x_dev.strides
    np.testing.assert_array_equal(host(y), x * host(layer.mask))


@pytest.mark.cupy
def test_residual_add_is_one_launch_and_keeps_the_layout(strict_cupy):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    block = L.Residual(L.ReLU())
    x_dev, dout_dev = on_device(x, (0, 2, 3, 1)), on_device(dout, (0, 2, 3, 1))
    with strict_cupy.record() as fwd:
        y = block.forward(x_dev)
    with strict_cupy.record() as bwd:
        dx = block.backward(dout_dev)
    assert fwd.launches == 2 and bwd.launches == 2, (fwd.report("launch"), bwd.report("launch"))
    assert y.strides == x_dev.strides and dx.strides == dout_dev.strides
    np.testing.assert_array_equal(host(y), np.maximum(x, 0) + x)
    np.testing.assert_array_equal(host(dx), dout * (x > 0) + dout)
    assert host(dout_dev).tolist() == dout.tolist()       # dout untouched


# -- softmax cross-entropy -------------------------------------------------------------------

@pytest.mark.cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@on_the_stand_in
@given(N=st.integers(1, 20), C=st.sampled_from([1, 2, 3, 10, 37, 100, 1000]),
       eps=st.sampled_from([0.0, 0.1, 1.0]), scale=st.sampled_from([1.0, 30.0]),
       seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_on_the_device_equals_numpy(strict_cupy, dtype, N, C, eps, scale, seed):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((N, C)) * scale).astype(dtype)
    y = rng.integers(0, C, N)
    reference = mc.losses.CrossEntropyLoss(label_smoothing=eps)
    loss_ref = reference.forward(z, y)
    dz_ref = reference.backward()

    loss_fn = mc.losses.CrossEntropyLoss(label_smoothing=eps)
    z_dev, y_dev = mc.to_device(z), mc.to_device(y)
    loss_fn.forward(z_dev, y_dev)                     # first call: the label-check buffer
    with strict_cupy.record() as fwd:
        loss = loss_fn.forward(z_dev, y_dev)
    with strict_cupy.record() as bwd:
        dz = loss_fn.backward()
    assert fwd.launches == 2 and bwd.launches == 1, (fwd.report("launch"), bwd.report("launch"))
    assert fwd.events == [] and bwd.events == [], (fwd.report(), bwd.report())
    assert loss.shape == () and loss.dtype == dtype and dz.dtype == dtype
    tol = TOL[dtype]
    np.testing.assert_allclose(float(loss), float(loss_ref), rtol=tol["rtol"] * 10,
                               atol=tol["atol"] * 10)
    np.testing.assert_allclose(host(loss_fn.probs), reference.probs, **tol)
    np.testing.assert_allclose(host(dz), dz_ref, **tol)
    np.testing.assert_allclose(host(loss_fn.target), reference.target, **tol)
    loss_fn.check_labels()                            # all labels were in range


@pytest.mark.cupy
def test_cross_entropy_bad_label_in_the_kernels(strict_cupy):
    """A label outside [0, C) on the device: NaN loss, finite gradient, and the first bad
    label of the earliest bad batch is named by check_labels (one read)."""
    cp = strict_cupy.cupy
    z = cp.asarray(np.random.default_rng(0).standard_normal((4, 3)), dtype=cp.float32)
    loss_fn = mc.losses.CrossEntropyLoss(label_smoothing=0.1)
    assert np.isnan(float(loss_fn.forward(z, cp.asarray(np.array([0, 7, -2, 1])))))
    assert np.isfinite(host(loss_fn.backward())).all()
    assert np.isnan(float(loss_fn.forward(z, cp.asarray(np.array([5, 0, 0, 0])))))
    good = loss_fn.forward(z, cp.asarray(np.array([2, 0, 1, 1])))
    assert np.isfinite(float(good))
    with strict_cupy.record() as rec, pytest.raises(ValueError, match=r"range \[0, 3\).*got 7"):
        loss_fn.check_labels()
    assert rec.syncs == 1
    loss_fn.forward(z, cp.asarray(np.array([2, 0, 1, 1])))
    loss_fn.check_labels()                            # cleared: nothing to report


# -- the CUDA C itself, on the CPU (tests/cuda_emulation.py) ---------------------------------

UNARY = ["ew_sigmoid_forward", "ew_silu_forward", "ew_gelu_forward", "ew_gelu_tanh_forward"]
BINARY = ["ew_relu_backward", "ew_sigmoid_backward", "ew_tanh_backward", "ew_silu_backward",
          "ew_gelu_backward", "ew_gelu_tanh_backward"]


def test_every_entry_point_is_emulated_here():
    emulated = {*UNARY, *BINARY, "ew_leaky_relu_forward", "ew_leaky_relu_backward",
                "ew_dropout_forward", "ce_rows", "ce_finalize", "ce_backward"}
    assert set(entry_points("elementwise")) == emulated


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 700), grid=st.integers(1, 3), block=st.sampled_from([1, 32, 64]),
       seed=st.integers(0, 2**31 - 1))
def test_emulated_activation_kernels_equal_their_twins(dtype, n, grid, block, seed):
    skip_without_gxx()
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 4).astype(dtype)
    x[: n // 10] *= 10                                   # some far in the tails
    dout = rng.standard_normal(n).astype(dtype)
    out = np.empty(n, dtype)
    size = np.int64(n)
    for name in UNARY:
        check_against_twin("elementwise", name, dtype, grid, block, (x, out, size), outputs=(1,))
    for name in BINARY:
        check_against_twin("elementwise", name, dtype, grid, block, (x, dout, out, size),
                           outputs=(2,))
    alpha = dtype(0.1)
    check_against_twin("elementwise", "ew_leaky_relu_forward", dtype, grid, block,
                       (x, alpha, out, size), outputs=(2,))
    check_against_twin("elementwise", "ew_leaky_relu_backward", dtype, grid, block,
                       (x, dout, alpha, out, size), outputs=(3,))
    seed64 = int(rng.integers(0, 2**63))
    check_against_twin("elementwise", "ew_dropout_forward", dtype, grid, block,
                       (x, np.uint32(seed64 & 0xFFFFFFFF), np.uint32(seed64 >> 32),
                        np.uint32(2**31), dtype(2.0), out, np.empty(n, dtype), size),
                       outputs=(5, 6))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=10, deadline=None)
@given(N=st.integers(1, 80), C=st.sampled_from([1, 2, 10, 100]), grid=st.integers(1, 2),
       block=st.sampled_from([1, 16, 32]), eps=st.sampled_from([0.0, 0.1]), bad=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_emulated_cross_entropy_kernels_equal_their_twins(dtype, N, C, grid, block, eps, bad,
                                                          seed):
    skip_without_gxx()
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((N, C)) * 5).astype(dtype)
    y = rng.integers(0, C, N)
    if bad:
        y[rng.integers(0, N)] = C + 3
    s = np.dtype(dtype).type
    p, rows, loss = np.empty((N, C), dtype), np.empty(N, dtype), np.empty((), dtype)
    check_against_twin("elementwise", "ce_rows", dtype, grid, block,
                       (z, y, s(1 - eps), s(eps / C), p, rows, np.int64(N), np.int64(C)),
                       outputs=(4, 5))
    _, twin = check_against_twin("elementwise", "ce_rows", dtype, grid, block,
                                 (z, y, s(1 - eps), s(eps / C), p, rows, np.int64(N),
                                  np.int64(C)), outputs=(4, 5), vary=False)
    p, rows = twin[4], twin[5]
    for state in (np.zeros(2, np.int64), np.array([1, -9], np.int64)):   # unseen, seen
        check_against_twin("elementwise", "ce_finalize", dtype, 1, block,
                           (rows, y, state, loss, np.int64(N), np.int64(C)), outputs=(3,))
    check_against_twin("elementwise", "ce_backward", dtype, grid, block,
                       (p, y, s(1 - eps + eps / C), s(eps / C), s(1 / N), np.empty((N, C), dtype),
                        np.int64(N), np.int64(C)), outputs=(5,))
