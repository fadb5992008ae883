"""The fused optimizer kernels (minicnn/kernels/optimizer.cu) and the flat buffers behind them.

On the strict CPU stand-in for CuPy (``--strict-device``): SGD (momentum, Nesterov, coupled
and decoupled weight decay, dampening), Adam, AdamW, EMA and Lookahead over flat buffers give
the numbers of the per-parameter NumPy code, in float32 and float64, over several steps with a
changing learning rate and parameter groups; one step is one launch per group plus nothing
(the gradients are already in the flat buffer: ``set_grad`` copies them there), with no host
sync and no host->device copy; a rebound ``p.data``, a restored state, a parameter without a
gradient and a gradient assigned by hand all train the right values. With g++, the real CUDA
C (tests/cuda_emulation.py) equals the twins.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn.kernels import optimizer as ko
from minicnn.optim.flat import FlatLayout, layout_of
from tests.cuda_emulation import check_against_twin, skip_without_gxx

SHAPES = [(3, 2, 3, 3), (3,), (4, 5), (5,), (1,)]
TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}

OPTIMIZERS = {
    "sgd": lambda p: mc.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: mc.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1),
    "sgd-nesterov-wd": lambda p: mc.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                              weight_decay=0.05),
    "sgd-decoupled": lambda p: mc.optim.SGD(p, lr=0.1, momentum=0.8, weight_decay=0.05,
                                            decoupled_weight_decay=True),
    "adam": lambda p: mc.optim.Adam(p, lr=0.01),
    "adam-wd": lambda p: mc.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
    "adamw": lambda p: mc.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "adam-beta0": lambda p: mc.optim.Adam(p, lr=0.01, betas=(0.0, 0.9)),
}


def host_values(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def make_params(values, backend):
    to = mc.to_device if backend == "cupy" else np.array
    return [mc.Parameter(to(v.copy()), name=f"p{i}") for i, v in enumerate(values)]


def grads_for(step, shapes, dtype):
    """The fixed gradients of ``step``: standard normal, one per shape."""
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def set_grads(params, step, dtype, to=mc.to_device):
    """Give every parameter its gradient of ``step`` (``grads_for``), moved by ``to``."""
    for p, g in zip(params, grads_for(step, [p.shape for p in params], dtype), strict=True):
        p.set_grad(to(g))


def one_zero_grad_sgd_step():
    """Device parameters after one SGD step with zero gradients, and the optimizer."""
    params = make_params(host_values(SHAPES, np.float32), "cupy")
    opt = mc.optim.SGD(params, lr=0.1)
    for p in params:
        p.set_grad(p.data * 0)
    opt.step()
    return params, opt


def train(backend, make_opt, values, steps=4, grouped=False, lrs=None, skip=None, ema=None,
          lookahead=None):
    """``steps`` optimizer steps on parameters made from ``values`` with fixed gradients;
    returns the parameters (host arrays), the optimizer and the EMA (if any)."""
    dtype = values[0].dtype.type
    params = make_params(values, backend)
    spec = params
    if grouped:  # two groups: the first two parameters at 3x the step and no weight decay
        spec = [{"params": params[:2], "lr_scale": 3.0, "weight_decay": 0.0},
                {"params": params[2:]}]
    opt = make_opt(spec)
    if lookahead:
        opt = mc.optim.Lookahead(opt, k=2, alpha=0.5)
    avg = mc.optim.EMA(params, decay=0.9, warmup=(ema == "warmup")) if ema else None
    for step in range(steps):
        if lrs is not None:
            opt.lr = lrs[step]
        to = mc.to_device if backend == "cupy" else np.asarray
        for i, (p, g) in enumerate(zip(params, grads_for(step, [v.shape for v in values],
                                                         dtype), strict=True)):
            if skip is not None and (step, i) in skip:
                p.grad = None                        # not used in this backward pass
            else:
                p.set_grad(to(g))
        opt.step()
        if avg is not None:
            avg.update()
    out = [mc.to_numpy(p.data) for p in params]
    return out, opt, avg, params


def assert_same(a, b, dtype):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, **TOL[dtype])


# -- CuPy (flat buffers, one kernel) equals NumPy (per parameter) -----------------------------

@pytest.mark.cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("grouped", [False, True])
def test_flat_step_equals_the_numpy_step(strict_cupy, name, dtype, grouped):
    values = host_values(SHAPES, dtype)
    lrs = [1.0 * OPTIMIZERS[name]([mc.Parameter(np.zeros(1))]).lr * f
           for f in (1.0, 1.0, 0.5, 0.25, 0.25)]                     # a schedule at work
    want, opt_np, _, _ = train("numpy", OPTIMIZERS[name], values, 5, grouped, lrs)
    got, opt_cp, _, params = train("cupy", OPTIMIZERS[name], values, 5, grouped, lrs)
    assert opt_cp._layout is not None and all(layout_of(p) for p in params)
    assert_same(got, want, dtype)
    # The state, saved as NumPy, is the per-parameter state of the NumPy path.
    sd_np, sd_cp = opt_np.state_dict(), opt_cp.state_dict()
    assert sorted(sd_np) == sorted(sd_cp)
    for key, value in sd_np.items():
        assert type(sd_cp[key]) is type(value), key
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(sd_cp[key], value, **TOL[dtype], err_msg=key)
        else:
            assert sd_cp[key] == value or (np.isnan(value) and np.isnan(sd_cp[key])), key


@pytest.mark.cupy
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       name=st.sampled_from(sorted(OPTIMIZERS)))
def test_random_shapes(strict_cupy, sizes, name):
    values = host_values([(n,) for n in sizes], np.float32, seed=len(sizes))
    want = train("numpy", OPTIMIZERS[name], values, 3)[0]
    got = train("cupy", OPTIMIZERS[name], values, 3)[0]
    assert_same(got, want, np.float32)


@pytest.mark.cupy
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_over_flat_buffers_equals_numpy(strict_cupy, dtype, warmup):
    values = host_values(SHAPES, dtype)
    ema = "warmup" if warmup else "plain"
    _, _, avg_np, _ = train("numpy", OPTIMIZERS["adam"], values, 4, ema=ema)
    _, _, avg_cp, params = train("cupy", OPTIMIZERS["adam"], values, 4, ema=ema)
    assert avg_cp._flat is not None                     # the fused path ran
    assert_same([mc.to_numpy(s) for s in avg_cp.shadow], avg_np.shadow, dtype)
    with avg_cp.averaged():
        assert_same([mc.to_numpy(p.data) for p in params], avg_np.shadow, dtype)
    assert all(layout_of(p) for p in params)            # apply/restore copied in place


@pytest.mark.cupy
@pytest.mark.parametrize("name", ["sgd-momentum", "adamw"])
def test_lookahead_on_top(strict_cupy, name):
    values = host_values(SHAPES, np.float64)
    want = train("numpy", OPTIMIZERS[name], values, 5, lookahead=True)[0]
    got = train("cupy", OPTIMIZERS[name], values, 5, lookahead=True)[0]
    assert_same(got, want, np.float64)


@pytest.mark.cupy
@pytest.mark.parametrize("name", ["sgd-nesterov-wd", "adam-wd"])
def test_parameters_without_a_gradient_are_left_alone(strict_cupy, name):
    # Parameter 1 has no gradient at steps 1 and 2, parameter 4 at step 0: its value and
    # Adam's t stand still, so the launch is cut into runs of equal t (and equal SGD state).
    skip = {(1, 1), (2, 1), (0, 4)}
    values = host_values(SHAPES, np.float64)
    want, opt_np, _, _ = train("numpy", OPTIMIZERS[name], values, 5, skip=skip)
    got, opt_cp, _, _ = train("cupy", OPTIMIZERS[name], values, 5, skip=skip)
    assert_same(got, want, np.float64)
    assert [s.get("t") for s in opt_cp.state] == [s.get("t") for s in opt_np.state]


# -- launches, syncs, copies -----------------------------------------------------------------

@pytest.mark.cupy
@pytest.mark.parametrize("name", ["sgd", "sgd-nesterov-wd", "adam", "adamw"])
@pytest.mark.parametrize("grouped", [False, True])
def test_one_launch_per_group_no_sync_no_copy(strict_cupy, name, grouped):
    values = host_values(SHAPES, np.float32) + host_values([(2, 2)], np.float64)
    params = make_params(values, "cupy")
    spec = [{"params": params[:2], "lr_scale": 2.0}, {"params": params[2:]}] if grouped \
        else params
    opt = OPTIMIZERS[name](spec)
    grads = [mc.to_device(g.astype(v.dtype))
             for g, v in zip(grads_for(0, [v.shape for v in values], np.float32), values,
                             strict=True)]
    buckets = 2                                          # float32 and float64
    groups = buckets + (1 if grouped else 0)             # group 0 holds float32 only
    for step in range(4):
        with strict_cupy.record() as backward:           # what the layers' backward adds
            for p, g in zip(params, grads, strict=True):
                p.set_grad(g)
        if step == 3:
            opt.lr = 0.5 * opt.lr                        # a schedule: one fill per bucket
        with strict_cupy.record() as rec:
            opt.step()
        assert rec.syncs == 0, rec.report()
        assert rec.h2d_bytes == 0, rec.report("h2d")
        if step > 0:   # in place: the step's own launches only
            assert all(p.grad is opt._layout.buckets[0].grad_views[j] for j, p in
                       enumerate(params[:len(SHAPES)]))
            assert backward.launches == len(params), backward.report("launch")
            assert rec.launches == groups + (buckets if step == 3 else 0), \
                rec.report("launch")


@pytest.mark.cupy
def test_ema_update_is_one_launch_per_dtype(strict_cupy):
    params = make_params(host_values(SHAPES, np.float32), "cupy")
    opt = mc.optim.Adam(params)
    avg = mc.optim.EMA(params, decay=0.99, warmup=True)
    for _ in range(3):
        set_grads(params, 0, np.float32)
        opt.step()
        with strict_cupy.record() as rec:
            avg.update()
        assert rec.syncs == 0 and rec.h2d_bytes == 0, rec.report()
    assert rec.launches == 1, rec.report("launch")


# -- the flat buffers stay right when things are rebound -------------------------------------

@pytest.mark.cupy
def test_rebinding_data_trains_the_new_values(strict_cupy):
    values = host_values(SHAPES, np.float32)
    runs = {}
    for backend in ("numpy", "cupy"):
        mc.set_backend(backend)
        params = make_params(values, backend)
        opt = mc.optim.Adam(params, lr=0.01)
        to = mc.to_device if backend == "cupy" else np.asarray
        for step in range(4):
            if step == 2:   # a user assigns new weights, as load_state_dict does
                params[0].data = to(np.full(SHAPES[0], 0.5, np.float32))
                params[3].data = to(np.arange(5, dtype=np.float32))
            set_grads(params, step, np.float32, to)
            opt.step()
        runs[backend] = [mc.to_numpy(p.data) for p in params]
    assert_same(runs["cupy"], runs["numpy"], np.float32)
    assert all(layout_of(p) for p in params)


@pytest.mark.cupy
def test_model_state_and_checkpoints_keep_training(strict_cupy, tmp_path):
    from minicnn import layers as L

    mc.set_backend("numpy")
    mc.init.set_seed(3)
    model = L.Sequential(L.Linear(6, 5), L.ReLU(), L.Linear(5, 3))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)), rng.integers(0, 3, 8)

    def steps(model, opt, n, xp_x, xp_y):
        loss = mc.losses.CrossEntropyLoss()
        for _ in range(n):
            loss.forward(model.forward(xp_x), xp_y)
            model.backward(loss.backward())
            opt.step()

    host = copy.deepcopy(model)
    opt_host = mc.optim.AdamW(host.parameters(), lr=0.01)
    steps(host, opt_host, 3, x.astype(np.float32), y)
    mc.set_backend("cupy")
    dev = copy.deepcopy(model).to("gpu")
    opt_dev = mc.optim.AdamW(dev.parameters(), lr=0.01)
    xd, yd = mc.to_device(x.astype(np.float32)), mc.to_device(y)
    steps(dev, opt_dev, 3, xd, yd)
    # Save and restore both the model and the optimizer (load_state_dict rebinds p.data and
    # the state's arrays): training goes on with exactly the numbers of the uninterrupted run.
    saved_model = {k: mc.to_numpy(v).copy() for k, v in dev.state_dict().items()}
    saved_opt = opt_dev.state_dict()
    steps(dev, opt_dev, 2, xd, yd)
    after = [mc.to_numpy(p.data) for p in dev.parameters()]
    dev.load_state_dict(saved_model)
    opt_dev.load_state_dict(saved_opt)
    steps(dev, opt_dev, 2, xd, yd)
    for a, b in zip(after, [mc.to_numpy(p.data) for p in dev.parameters()], strict=True):
        np.testing.assert_array_equal(a, b)
    # A fresh optimizer from the saved state (as a checkpoint resume builds it).
    fresh = mc.optim.AdamW(dev.parameters(), lr=0.01)
    dev.load_state_dict(saved_model)
    fresh.load_state_dict(saved_opt)
    steps(dev, fresh, 2, xd, yd)
    for a, b in zip(after, [mc.to_numpy(p.data) for p in dev.parameters()], strict=True):
        np.testing.assert_array_equal(a, b)
    steps(host, opt_host, 2, x.astype(np.float32), y)
    for a, b in zip(after, [p.data for p in host.parameters()], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.cupy
def test_dtype_change_builds_a_new_layout(strict_cupy):
    values = host_values(SHAPES, np.float32)
    params = make_params(values, "cupy")
    opt = mc.optim.SGD(params, lr=0.1, momentum=0.9)
    set_grads(params, 0, np.float32)
    opt.step()
    first = opt._layout
    for p in params:                                   # model.astype(float64), by hand
        p.data = p.data.astype(np.float64)
        p.grad = None
    set_grads(params, 1, np.float64)
    opt.step()
    assert opt._layout is not first and opt._layout.buckets[0].dtype == np.float64
    host = make_params(values, "numpy")
    ref = mc.optim.SGD(host, lr=0.1, momentum=0.9)
    for step, dtype in ((0, np.float32), (1, np.float64)):
        for p, g in zip(host, grads_for(step, SHAPES, dtype), strict=True):
            p.data = p.data.astype(dtype)
            p.set_grad(g)
        ref.step()
    assert_same([mc.to_numpy(p.data) for p in params], [p.data for p in host], np.float32)


@pytest.mark.cupy
def test_gradients_assigned_by_hand_or_none(strict_cupy):
    values = host_values(SHAPES, np.float64)
    params = make_params(values, "cupy")
    opt = mc.optim.SGD(params, lr=0.5)
    opt.zero_grad()
    opt.step()                                         # nothing to do: no gradient
    assert_same([mc.to_numpy(p.data) for p in params], values, np.float64)
    for p in params:                                   # as DataParallel assigns its views
        p.grad = mc.to_device(np.ones(p.shape))
    opt.step()
    assert_same([mc.to_numpy(p.data) for p in params], [v - 0.5 for v in values], np.float64)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.cupy
def test_two_optimizers_share_one_layout(strict_cupy):
    params, a = one_zero_grad_sgd_step()
    b = mc.optim.Adam(params)
    b.step()
    assert a._layout is b._layout
    assert FlatLayout.of(params) is a._layout


def test_numpy_keeps_the_per_parameter_path():
    params = make_params(host_values(SHAPES, np.float32), "numpy")
    opt = mc.optim.Adam(params)
    for p in params:
        p.set_grad(np.ones(p.shape, np.float32))
    opt.step()
    assert opt._layout is None and all(layout_of(p) is None for p in params)
    assert all(p._grad_buffer is None for p in params)


@pytest.mark.cupy
def test_pickled_parameter_forgets_the_flat_gradient_buffer(strict_cupy):
    params, _ = one_zero_grad_sgd_step()
    clone = copy.deepcopy(params[0])
    assert params[0]._grad_buffer is not None and clone._grad_buffer is None


# -- the real CUDA C, run on the CPU ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("t0", [0.0, 4.0])
@pytest.mark.parametrize("variant", [(0.0, 0), (0.01, 0), (0.01, 1)])
def test_emulated_adam_equals_twin(dtype, t0, variant):
    skip_without_gxx()
    rng = np.random.default_rng(int(t0) + 7)
    n = 777
    theta, g, m = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(dtype)
    if t0 == 0.0:
        m[...] = np.nan                                # not read before the first step
        v[...] = np.nan
    hyper = np.array([0.0, 1e-3, t0, -1.0, 0.0], np.float64)
    hyper[0] = 0.03
    wd, decoupled = variant
    args = (np.int64(n), theta, g, m, v, hyper, np.int32(2), np.int32(0), np.float64(0.5),
            np.float64(0.9), np.float64(0.999), np.float64(1e-8), np.float64(wd),
            np.int32(decoupled))
    out, _ = check_against_twin("optimizer", "optim_adam_step", dtype, 3, 128, args)
    assert out[5][3] == t0 + 1 and out[5][2] == t0    # the next count, in the other cell
    assert np.isfinite(out[1]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", [
    dict(momentum=0.0, wd=0.0, nesterov=0, decoupled=0, first=0),
    dict(momentum=0.9, wd=0.01, nesterov=1, decoupled=0, first=1),
    dict(momentum=0.9, wd=0.01, nesterov=0, decoupled=1, first=0),
    dict(momentum=0.5, wd=0.0, nesterov=0, decoupled=0, first=0),
])
def test_emulated_sgd_equals_twin(dtype, variant):
    skip_without_gxx()
    rng = np.random.default_rng(3)
    n = 1000
    theta, g, b = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    if variant["first"]:
        b[...] = np.nan                                # written, never read, at step 1
    buf = b if variant["momentum"] else theta
    args = (np.int64(n), theta, g, buf, np.array([0.1], np.float64), np.float64(2.0),
            np.float64(variant["momentum"]), np.float64(0.1 if not variant["nesterov"] else 0),
            np.float64(variant["wd"]), np.int32(variant["nesterov"]),
            np.int32(variant["decoupled"]), np.int32(variant["first"]))
    out, _ = check_against_twin("optimizer", "optim_sgd_step", dtype, 2, 256, args)
    assert np.isfinite(out[1]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("warmup", [0, 1])
def test_emulated_ema_equals_twin(dtype, warmup):
    skip_without_gxx()
    rng = np.random.default_rng(5)
    n = 300
    shadow, theta = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    hyper = np.array([-1.0, 6.0], np.float64)
    args = (np.int64(n), shadow, theta, hyper, np.int32(0), np.int32(1), np.float64(0.99),
            np.int32(warmup))
    out, _ = check_against_twin("optimizer", "optim_ema_update", dtype, 2, 64, args)
    assert out[3][0] == 7.0


def test_twins_equal_the_readable_rules():
    # The twins (what the kernels compute) against the per-parameter code of optim/, on
    # NumPy: the same numbers but for the rounding of β^t (exp(t log β) vs β ** t).
    assert ko.power(0.0, 3.0) == 0.0 and np.isclose(ko.power(0.5, 3.0), 0.125, rtol=1e-15)
    rng = np.random.default_rng(1)
    theta, g = rng.standard_normal(50), rng.standard_normal(50)
    p = mc.Parameter(theta.copy())
    opt = mc.optim.Adam([p], lr=0.02, weight_decay=0.1)
    flat, m, v = theta.copy(), np.zeros(50), np.zeros(50)
    hyper = np.array([0.02, 0.0, 0.0])
    for step in range(3):
        p.set_grad(g * (step + 1))
        opt.step()
        ko.optim_adam_step_twin(np.int64(50), flat, g * (step + 1), m, v, hyper, np.int32(1),
                                np.int32(step % 2), np.float64(1.0), np.float64(0.9),
                                np.float64(0.999), np.float64(1e-8), np.float64(0.1),
                                np.int32(0))
    np.testing.assert_allclose(flat, p.data, rtol=1e-14)
    np.testing.assert_allclose(m, opt.state[0]["m"], rtol=1e-14)
