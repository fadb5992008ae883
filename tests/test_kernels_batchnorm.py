"""The BatchNorm kernels (minicnn/kernels/batchnorm.cu) on the CuPy path.

On the strict CPU stand-in (``pytest -m cupy --strict-device``), where a launch runs the
kernel's NumPy twin: BatchNorm1d/2d on the device equal the NumPy path (plain array code)
over random shapes, memory layouts, both float dtypes, both modes, several steps (running
statistics), freeze_gamma and the fused ReLU; a training forward is 3 launches, an evaluation
forward 1, a backward 2, with no host sync or copy; outputs keep the input's layout; the
gradients pass a central-difference check.
With g++ (tests/cuda_emulation.py): the real CUDA C of every entry point equals its twin, for
grids smaller than the work, and the float32 statistics of data with a large mean are as
accurate as the NumPy path's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.functional.normalization import batch_norm_backward, batch_norm_forward, center
from minicnn.kernels import batchnorm as bn
from tests.conftest import on_device
from tests.cuda_emulation import check_against_twin, emulated, skip_without_gxx, stored_as

TOL = {np.float32: 5e-5, np.float64: 1e-10}
on_the_stand_in = settings(max_examples=40, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])

# Memory orders of an (N, C, *spatial) array: C order, channels-last, channel-major, and one
# whose spatial axes do not flatten into one stride (W outside H: copied once).
ORDERS = {2: [(0, 1), (1, 0)],
          3: [(0, 1, 2), (0, 2, 1), (1, 0, 2), (2, 0, 1)],
          4: [(0, 1, 2, 3), (0, 2, 3, 1), (1, 0, 2, 3), (0, 3, 2, 1)]}


host = mc.to_numpy


def same_layout(a: object, b: object) -> bool:
    """Same shape and the same strides on every axis longer than 1."""
    return a.shape == b.shape and all(
        n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.strides, b.strides, strict=True))


def close(got: object, expected: np.ndarray, dtype: type, what: str) -> None:
    """Within the dtype's tolerance, relative to the largest magnitude of ``expected``."""
    tol = TOL[dtype]
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(host(got), expected, rtol=tol, atol=tol * scale, err_msg=what)


# -- layouts ----------------------------------------------------------------------------------

def test_channel_layout_reads_nchw_channels_last_and_transposes_in_place():
    x = np.zeros((2, 3, 4, 5), np.float32)
    lay = bn.channel_layout(x)
    assert lay.base is not None and lay.S == 20 and lay.strides == (60, 1, 20)
    nhwc = np.zeros((2, 4, 5, 3), np.float32).transpose(0, 3, 1, 2)
    lay = bn.channel_layout(nhwc)
    assert np.shares_memory(lay.base, nhwc) and lay.strides == (60, 3, 1)
    assert lay.base.flags.c_contiguous and lay.order == (0, 2, 3, 1)
    features_t = np.zeros((3, 7), np.float64).T                    # (N, C) stored (C, N)
    lay = bn.channel_layout(features_t)
    assert np.shares_memory(lay.base, features_t) and (lay.S, lay.strides) == (1, (1, 1, 7))
    ncl = np.zeros((2, 6, 3), np.float32)
    assert bn.channel_layout(ncl).strides == (18, 1, 3)
    # Size-1 axes: their strides say nothing and never force a copy.
    assert bn.reads_in_place(np.zeros((1, 3, 1, 1), np.float32).transpose(0, 2, 3, 1)
                             .reshape(1, 1, 1, 3).transpose(0, 3, 1, 2))
    # W outside H, or a strided slice: copied once into C order.
    odd = np.zeros((2, 5, 4, 3), np.float32).transpose(0, 3, 2, 1)
    assert not bn.reads_in_place(odd) and not bn.reads_in_place(x[:, :, ::2])
    lay = bn.channel_layout(odd)
    assert not np.shares_memory(lay.base, odd) and lay.strides == (60, 1, 20)
    y, y_base = lay.empty()
    assert y.shape == odd.shape and y_base.flags.c_contiguous


def test_layout_empty_keeps_the_strides():
    nhwc = np.zeros((2, 4, 5, 3), np.float32).transpose(0, 3, 1, 2)
    y, y_base = bn.channel_layout(nhwc).empty()
    assert y.strides == nhwc.strides and np.shares_memory(y, y_base)


def test_reduction_chunks_is_about_sqrt_m():
    assert [bn.reduction_chunks(M) for M in (1, 2, 4, 5, 100, 131072)] == [1, 2, 2, 3, 10, 363]
    assert bn.apply_chunks(1) == 1 and bn.apply_chunks(17) == 3


# -- the layers on the device == on NumPy -----------------------------------------------------

@st.composite
def batchnorm_cases(draw):
    """A BatchNorm1d/2d input shape, x's and dout's memory orders, and the layer options."""
    ndim = draw(st.sampled_from([2, 3, 4]))
    N = draw(st.integers(1, 4))
    C = draw(st.integers(1, 5))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim - 2, max_size=ndim - 2)))
    shape = (N, C) + spatial
    training = draw(st.booleans()) if N * int(np.prod(spatial)) > 1 else False
    return dict(shape=shape, x_order=draw(st.sampled_from(ORDERS[ndim])),
                dout_order=draw(st.sampled_from(ORDERS[ndim])), training=training,
                relu=draw(st.booleans()), freeze_gamma=draw(st.booleans()),
                momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.37])),
                eps=draw(st.sampled_from([1e-5, 1e-3])), steps=draw(st.integers(1, 3)),
                mean=draw(st.sampled_from([0.0, 5.0])))


def _pair(case: dict, dtype: type, seed: int) -> tuple[L.Layer, L.Layer]:
    """The same BatchNorm on NumPy and on the device: random gamma, beta, running stats."""
    rng = np.random.default_rng(seed)
    C = case["shape"][1]
    kind = L.BatchNorm2d if len(case["shape"]) == 4 else L.BatchNorm1d
    values = [rng.standard_normal(C) * 0.5 + 1, rng.standard_normal(C),
              rng.standard_normal(C), rng.uniform(0.5, 2, C)]
    layers = []
    for backend in ("numpy", "cupy"):
        mc.set_backend(backend)
        layer = kind(C, eps=case["eps"], momentum=case["momentum"],
                     freeze_gamma=case["freeze_gamma"]).astype(dtype)
        layer.gamma.data, layer.beta.data = (mc.to_device(v.astype(dtype)) for v in values[:2])
        layer.running_mean, layer.running_var = (mc.to_device(v.astype(dtype))
                                                 for v in values[2:])
        layers.append(layer if case["training"] else layer.eval())
    return layers[0], layers[1]


@pytest.mark.cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@on_the_stand_in
@given(case=batchnorm_cases(), seed=st.integers(0, 2**31 - 1))
def test_batchnorm_on_the_device_equals_numpy(strict_cupy, dtype, case, seed):
    reference, layer = _pair(case, dtype, seed)
    mc.set_backend("cupy")
    rng = np.random.default_rng(seed + 1)
    shape = case["shape"]
    for step in range(case["steps"]):
        x = (rng.standard_normal(shape) * 2 + case["mean"]).astype(dtype)
        dout = rng.standard_normal(shape).astype(dtype)
        forward = "forward_relu" if case["relu"] else "forward"
        y_ref = getattr(reference, forward)(x)
        dx_ref = reference.backward(dout)

        x_dev = on_device(x, case["x_order"])
        dout_dev = on_device(dout, case["dout_order"])
        with strict_cupy.record() as fwd:
            y = getattr(layer, forward)(x_dev)
        with strict_cupy.record() as bwd:
            dx = layer.backward(dout_dev)
        # 3 launches (training) or 1 (evaluation) forward, 2 backward; one more per array
        # the kernels cannot read in place (copied once into C order).
        x_copy = 0 if bn.reads_in_place(x_dev) else 1
        dout_copy = 0 if bn.reads_in_place(dout_dev) else 1
        assert fwd.launches == (3 if case["training"] else 1) + x_copy, fwd.report("launch")
        assert bwd.launches == 2 + x_copy + dout_copy, bwd.report("launch")
        assert fwd.events == [] and bwd.events == [], (fwd.report(), bwd.report())
        # Outputs in the input's layout.
        assert y.dtype == dtype and dx.dtype == dtype
        if not x_copy:
            assert same_layout(y, x_dev) and same_layout(dx, x_dev)
        where = f"step {step}"
        close(y, y_ref, dtype, f"y, {where}")
        close(dx, dx_ref, dtype, f"dx, {where}")
        close(layer.beta.grad, reference.beta.grad, dtype, f"dbeta, {where}")
        if case["freeze_gamma"]:
            assert layer.gamma.grad is None and reference.gamma.grad is None
        else:
            close(layer.gamma.grad, reference.gamma.grad, dtype, f"dgamma, {where}")
        close(layer.inv_std, reference.inv_std, dtype, f"inv_std, {where}")
        assert layer.inv_std.shape == reference.inv_std.shape
    for name in ("running_mean", "running_var"):
        got, expected = getattr(layer, name), getattr(reference, name)
        assert got.dtype == expected.dtype == dtype
        close(got, expected, dtype, name)


@pytest.mark.cupy
def test_benchmark_shaped_step_is_five_launches_without_syncs(strict_cupy):
    """A BatchNorm2d of a conv net (channels-last input, as Conv2d writes it on the device):
    3 launches forward, 2 backward, channels-last out, nothing read back by the host."""
    rng = np.random.default_rng(0)
    layer = L.BatchNorm2d(16)
    for _ in range(2):
        x = on_device(rng.standard_normal((4, 16, 6, 6)).astype(np.float32), (0, 2, 3, 1))
        dout = on_device(rng.standard_normal((4, 16, 6, 6)).astype(np.float32), (0, 2, 3, 1))
        with strict_cupy.record() as rec:
            y = layer.forward(x)
            forward = rec.launches
            dx = layer.backward(dout)
        assert (forward, rec.launches - forward) == (3, 2), rec.report("launch")
        assert rec.events == [], rec.report()
        assert same_layout(y, x) and same_layout(dx, x)
        assert y._a.transpose(0, 2, 3, 1).flags.c_contiguous
    layer.eval()
    with strict_cupy.record() as rec:
        layer.forward(x)
    assert rec.launches == 1 and rec.events == [], rec.report()


@pytest.mark.cupy
def test_float32_input_with_float64_buffers_and_the_reverse(strict_cupy):
    """Running buffers in another dtype than the input: the statistics are computed in the
    input's dtype and stored in the buffers' own, as on NumPy."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 2, 2))
    for x_dtype, buffers in [(np.float64, np.float32), (np.float32, np.float64)]:
        layers = []
        for backend in ("numpy", "cupy"):
            mc.set_backend(backend)
            layer = L.BatchNorm2d(3)
            layer.running_mean = layer.running_mean.astype(buffers)
            layer.running_var = layer.running_var.astype(buffers)
            y = layer.forward(mc.to_device(x.astype(x_dtype)))
            layers.append((layer, y))
        (ref, y_ref), (dev, y) = layers
        assert y.dtype == x_dtype and dev.running_mean.dtype == buffers
        close(y, host(y_ref), np.float32, "y")
        close(dev.running_var, host(ref.running_var), np.float32, "running_var")


@pytest.mark.cupy
def test_fused_relu_equals_batchnorm_then_relu(strict_cupy):
    """forward_relu / backward == BatchNorm2d then ReLU (both on the device), in both modes."""
    rng = np.random.default_rng(2)
    x = on_device(rng.standard_normal((3, 4, 5, 5)).astype(np.float32), (0, 2, 3, 1))
    dout = mc.to_device(rng.standard_normal((3, 4, 5, 5)).astype(np.float32))
    fused, plain, relu = L.BatchNorm2d(4), L.BatchNorm2d(4), L.ReLU()
    for training in (True, False):
        fused.train(training)
        plain.train(training)
        with strict_cupy.record() as rec:
            y = fused.forward_relu(x)
            dx = fused.backward(dout)
        assert rec.launches == (5 if training else 3), rec.report("launch")
        y_plain = relu.forward(plain.forward(x))
        dx_plain = plain.backward(relu.backward(dout))
        close(y, host(y_plain), np.float32, "y")
        close(dx, host(dx_plain), np.float32, "dx")
        close(fused.gamma.grad, host(plain.gamma.grad), np.float32, "dgamma")
        close(fused.beta.grad, host(plain.beta.grad), np.float32, "dbeta")
        assert bool((y >= 0).all())


def test_fused_relu_on_numpy_equals_batchnorm_then_relu():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 4, 5, 5))
    dout = rng.standard_normal(x.shape)
    fused, plain, relu = (L.BatchNorm2d(4).astype(np.float64),
                          L.BatchNorm2d(4).astype(np.float64), L.ReLU())
    np.testing.assert_allclose(fused.forward_relu(x), relu.forward(plain.forward(x)),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.backward(dout), plain.backward(relu.backward(dout)),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.gamma.grad, plain.gamma.grad, rtol=1e-12, atol=1e-12)


def test_sync_batchnorm_refuses_the_fused_relu():
    with pytest.raises(TypeError, match="SyncBatchNorm2d.forward_relu"):
        L.SyncBatchNorm2d(3).forward_relu(np.zeros((2, 3, 2, 2), np.float32))


@pytest.mark.cupy
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_on_the_device(strict_cupy, training, relu):
    """The kernels' backward is the derivative of their forward: float64 central differences
    of L = Σ dout * y through the device path, on a channels-last input."""
    rng = np.random.default_rng(7)
    layer = L.BatchNorm2d(3).astype(np.float64)
    layer.gamma.data = mc.to_device(rng.standard_normal(3) + 1.5)
    layer.beta.data = mc.to_device(rng.standard_normal(3) * 0.3)
    layer.train(training)
    x = rng.standard_normal((2, 3, 3, 2))
    dout = rng.standard_normal(x.shape)
    forward = layer.forward_relu if relu else layer.forward

    def loss(a: np.ndarray) -> float:
        saved = layer.running_mean, layer.running_var
        value = float(np.sum(dout * host(forward(on_device(a, (0, 2, 3, 1))))))
        layer.running_mean, layer.running_var = saved
        return value

    forward(on_device(x, (0, 2, 3, 1)))
    dx = host(layer.backward(mc.to_device(dout)))
    dgamma, dbeta = host(layer.gamma.grad), host(layer.beta.grad)
    h = 1e-6
    for index in [(0, 0, 0, 0), (1, 2, 2, 1), (0, 1, 1, 0), (1, 0, 2, 1)]:
        e = np.zeros_like(x)
        e[index] = h
        numeric = (loss(x + e) - loss(x - e)) / (2 * h)
        assert abs(numeric - dx[index]) < 1e-6 * max(1.0, abs(numeric)), (index, numeric)
    for param, grad in ((layer.gamma, dgamma), (layer.beta, dbeta)):
        for c in range(3):
            value = host(param.data)
            for sign in (1, -1):
                shifted = value.copy()
                shifted[c] += sign * h
                param.data = mc.to_device(shifted)
                if sign == 1:
                    plus = loss(x)
                else:
                    minus = loss(x)
            param.data = mc.to_device(value)
            numeric = (plus - minus) / (2 * h)
            assert abs(numeric - grad[c]) < 1e-6 * max(1.0, abs(numeric)), (param.name, c)


def test_numpy_functional_keeps_its_cache_and_running_stats():
    """On NumPy the named functions are the plain array code: training keeps x - mu (no x),
    evaluation keeps x and the running mean; the running stats follow PyTorch's rule."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 2, 3))
    gamma, beta = np.array([1.5, 0.5]), np.array([0.1, -0.2])
    rm, rv = np.zeros(2), np.ones(2)
    y, cache, rm2, rv2 = batch_norm_forward(x, gamma, beta, rm, rv, training=True,
                                            momentum=0.25, eps=1e-5)
    x_c, _, mu, var = center(x, (0, 2), 1e-5)
    np.testing.assert_allclose(cache.x_c, x_c)
    assert cache.x is None and cache.y is None and cache.batch_stats
    np.testing.assert_allclose(rm2, 0.25 * mu.ravel())
    np.testing.assert_allclose(rv2, 0.75 + 0.25 * var.ravel() * 15 / 14)
    assert rm is not rm2 and np.all(rm == 0)                       # new arrays
    y_eval, cache_eval, rm3, _ = batch_norm_forward(x, gamma, beta, rm2, rv2, training=False,
                                                    momentum=0.25, eps=1e-5)
    assert rm3 is rm2 and cache_eval.x is x and not cache_eval.batch_stats
    dx, dgamma, dbeta = batch_norm_backward(np.ones_like(x), cache_eval, gamma,
                                            need_dgamma=False)
    assert dgamma is None and dbeta.shape == (2,)
    np.testing.assert_allclose(dbeta, [15.0, 15.0])


# -- the CUDA C itself (g++ emulation) against the twins --------------------------------------

def _case(rng: np.random.Generator, dtype: type, shape: tuple[int, ...],
          order: tuple[int, ...], mean: float = 0.0) -> dict:
    """Random kernel arguments for an (N, C, *spatial) input stored in ``order``."""
    x = stored_as((rng.standard_normal(shape) * 2 + mean).astype(dtype), order)
    lay = bn.channel_layout(x)
    M = shape[0] * int(np.prod(shape[2:]))
    C = shape[1]
    return dict(lay=lay, M=np.int64(M), C=np.int32(C), S=np.int64(lay.S), x=lay.base,
                vec=lambda low=-1.0, high=1.0: rng.uniform(low, high, C).astype(dtype))


EMULATION_CASES = [((3, 4, 5, 3), (0, 2, 3, 1)), ((3, 4, 5, 3), (0, 1, 2, 3)),
                   ((7, 5), (0, 1)), ((2, 3, 7), (0, 2, 1)), ((1, 1, 1, 2), (0, 1, 2, 3)),
                   ((4, 6, 1, 1), (1, 0, 2, 3))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,order", EMULATION_CASES)
@pytest.mark.parametrize("grid,block", [(1, 32), (2, 8), (3, 64)])
def test_emulated_forward_kernels_equal_their_twins(dtype, shape, order, grid, block):
    skip_without_gxx()
    rng = np.random.default_rng(hash((shape, order, grid)) % 2**32)
    k = _case(rng, dtype, shape, order, mean=3.0)
    M, C, S, lay = k["M"], k["C"], k["S"], k["lay"]
    real = np.dtype(dtype).type
    P = np.int64(bn.reduction_chunks(int(M)))
    part = np.empty((2, int(P), int(C)), dtype)
    emu, _ = check_against_twin("batchnorm", "bn_forward_partials", dtype, grid, block,
                                (k["x"], part, M, C, S, *lay.strides, P), outputs=(1,))
    part = emu[1]
    check_against_twin("batchnorm", "bn_forward_finalize", dtype, grid, block,
                       (k["x"], part, k["vec"](), k["vec"](0.5, 2),
                        *(np.empty(C, dtype) for _ in range(4)), M, C, lay.strides[2], P,
                        real(1e-3), real(0.3)),
                       outputs=(4, 5, 6, 7))
    for Q in (np.int64(1), np.int64(bn.apply_chunks(int(M))), np.int64(M)):
        for relu in (np.int32(0), np.int32(1)):
            check_against_twin("batchnorm", "bn_forward_apply", dtype, grid, block,
                               (k["x"], k["vec"](), k["vec"](0.5, 2), k["vec"](), k["vec"](),
                                np.empty_like(k["x"]), M, C, S, *lay.strides, Q, relu),
                               outputs=(5,))
            check_against_twin("batchnorm", "bn_eval_apply", dtype, grid, block,
                               (k["x"], k["vec"](), k["vec"](0.5, 2), k["vec"](), k["vec"](),
                                np.empty_like(k["x"]), np.empty(C, dtype), M, C, S,
                                *lay.strides, Q, real(1e-5), relu),
                               outputs=(5, 6))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,order", EMULATION_CASES)
@pytest.mark.parametrize("dout_order", ["same", "c"])
@pytest.mark.parametrize("grid,block", [(1, 32), (2, 8)])
def test_emulated_backward_kernels_equal_their_twins(dtype, shape, order, dout_order, grid,
                                                      block):
    skip_without_gxx()
    rng = np.random.default_rng(hash((shape, order, dout_order, grid)) % 2**32)
    k = _case(rng, dtype, shape, order)
    g = _case(rng, dtype, shape, order if dout_order == "same" else tuple(range(len(shape))))
    M, C, S, lay = k["M"], k["C"], k["S"], k["lay"]
    y = np.ascontiguousarray(rng.standard_normal(k["x"].shape).astype(dtype))
    P = np.int64(bn.reduction_chunks(int(M)))
    sizes = (M, C, S, *g["lay"].strides, *lay.strides)
    mean, inv_std, gamma = k["vec"](), k["vec"](0.5, 2), k["vec"]()
    for relu in (np.int32(0), np.int32(1)):
        part = np.empty((2, int(P), int(C)), dtype)
        emu, _ = check_against_twin(
            "batchnorm", "bn_backward_partials", dtype, grid, block,
            (g["x"], k["x"], y, mean, inv_std, part, *sizes, P, relu), outputs=(5,))
        for batch_stats in (np.int32(1), np.int32(0)):
            check_against_twin(
                "batchnorm", "bn_backward_dx", dtype, grid, block,
                (g["x"], k["x"], y, mean, inv_std, gamma, emu[5], np.empty_like(k["x"]),
                 np.empty(C, dtype), np.empty(C, dtype), *sizes, P, relu, batch_stats),
                outputs=(7, 8, 9))


def test_emulated_float32_statistics_of_a_large_mean_are_accurate():
    """Data with mean 100 and std 1 in float32: the kernels' shifted one-pass sums give mu and
    inv_std as accurate as NumPy's two passes (the unshifted E[x²] - E[x]² would lose about
    four digits of the variance)."""
    skip_without_gxx()
    rng = np.random.default_rng(0)
    N, C, H, W = 32, 4, 16, 16
    x64 = 100 + rng.standard_normal((N, H, W, C)) + rng.standard_normal(C)
    x = x64.astype(np.float32).transpose(0, 3, 1, 2)                # channels-last
    truth = x.astype(np.float64)
    mu_true = truth.mean(axis=(0, 2, 3))
    inv_std_true = 1 / np.sqrt(truth.var(axis=(0, 2, 3)) + 1e-5)
    lay = bn.channel_layout(x)
    M = N * H * W
    P = np.int64(bn.reduction_chunks(M))
    emu = emulated("batchnorm", np.float32)
    part = np.empty((2, int(P), C), np.float32)
    emu.bn_forward_partials(4, 64, lay.base, part, np.int64(M), np.int32(C), np.int64(H * W),
                            *lay.strides, P)
    mean, inv_std, rm, rv = (np.empty(C, np.float32) for _ in range(4))
    emu.bn_forward_finalize(1, 32, lay.base, part, np.zeros(C, np.float32),
                            np.ones(C, np.float32), mean, inv_std, rm, rv, np.int64(M),
                            np.int32(C), lay.strides[2], P, np.float32(1e-5), np.float32(0.1))
    _, inv_std_np, mu_np, _ = center(x, (0, 2, 3), 1e-5)
    err_mu = np.abs(mean - mu_true).max()
    err_inv = np.abs(inv_std / inv_std_true - 1).max()
    assert err_mu <= max(2 * np.abs(mu_np.ravel() - mu_true).max(), 1e-5), err_mu
    assert err_inv <= 2e-6, err_inv
    # The same sums without the shift lose the variance: the check can fail.
    flat = x64.astype(np.float32).reshape(-1, C)
    naive = (flat * flat).mean(axis=0, dtype=np.float32) - flat.mean(axis=0) ** 2
    assert np.abs(1 / np.sqrt(np.maximum(naive, 0) + 1e-5) / inv_std_true - 1).max() > 1e-4


def _bn_relu_net() -> L.Sequential:
    mc.init.set_seed(0)
    return L.Sequential(L.Conv2d(3, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(),
                        L.Conv2d(4, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(),
                        L.GlobalAvgPool2d(), L.Linear(4, 3))


@pytest.mark.cupy
def test_sequential_fuses_batchnorm_relu_on_the_device_only(strict_cupy):
    """Sequential runs BatchNorm2d + ReLU as forward_relu on CuPy: the NumPy model's outputs
    and gradients, two launches fewer per pair each way; on NumPy, and when a layer is tapped
    (explain replaces its forward on the instance), the layers run one by one."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    dout = rng.standard_normal((2, 3)).astype(np.float32)
    cpu = _bn_relu_net().to("cpu")
    y_cpu = cpu.forward(x)
    dx_cpu = cpu.backward(dout)
    assert cpu._fused == set()
    counts = {}
    for tapped in (False, True):
        dev = _bn_relu_net().to("gpu")
        if tapped:
            relu = dev.layers[2]
            relu.forward = relu.forward                   # an instance attribute, as a tap
        xd, doutd = mc.to_device(x), mc.to_device(dout)
        with strict_cupy.record() as rec:
            y = dev.forward(xd)
            dx = dev.backward(doutd)
        counts[tapped] = rec.launches
        assert dev._fused == ({4} if tapped else {1, 4})
        np.testing.assert_allclose(mc.to_numpy(y), y_cpu, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mc.to_numpy(dx), dx_cpu, rtol=1e-5, atol=1e-6)
        for p, q in zip(dev.parameters(), cpu.parameters(), strict=True):
            np.testing.assert_allclose(mc.to_numpy(p.grad), q.grad, rtol=1e-4, atol=1e-6)
    assert counts[False] == counts[True] - 2               # one pair fewer fused: +2 launches
