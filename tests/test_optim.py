"""Optimizers, EMA and LR schedules against reference loops written from PyTorch's pseudo-code.

PyTorch is not used: each ``ref_*`` function below transcribes the algorithm box of PyTorch's
documentation for that optimizer, one step at a time, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import optim
from minicnn.layers.base import Parameter

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


def make_problem(seed, shapes_, n_steps, dtype=np.float64):
    """Random initial parameters and one random gradient per parameter per step."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes_]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes_] for _ in range(n_steps)]
    return init, grads


def run_optimizer(make_opt, init, grads):
    """Parameters after ``len(grads)`` steps of the optimizer on the given gradients."""
    params = [Parameter(x.copy()) for x in init]
    opt = make_opt(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.copy()
        opt.step()
    return [p.data for p in params]


# -- reference algorithms (PyTorch documentation, torch.optim.SGD / Adam / AdamW) --------------

def ref_sgd(theta, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    theta = theta.copy()
    b = None
    for t, g in enumerate(grads, start=1):
        if weight_decay != 0:
            g = g + weight_decay * theta
        if momentum != 0:
            if t > 1:
                b = momentum * b + (1 - dampening) * g
            else:
                b = g
            if nesterov:
                g = g + momentum * b
            else:
                g = b
        theta = theta - lr * g
    return theta


def ref_adam(theta, grads, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False):
    theta = theta.copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        if decoupled:                        # AdamW
            theta = theta - lr * weight_decay * theta
        elif weight_decay != 0:              # Adam
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def per_param(grads, i):
    return [step[i] for step in grads]


# -- update rules ---------------------------------------------------------------------------

@settings(max_examples=100)
@given(seed=st.integers(0, 2**31 - 1), shapes_=st.lists(shapes, min_size=1, max_size=3),
       n_steps=st.integers(1, 6), lr=st.floats(1e-4, 1.0),
       momentum=st.sampled_from([0.0, 0.5, 0.9]) | st.floats(0.0, 0.99),
       dampening=st.sampled_from([0.0, 0.3]) | st.floats(0.0, 1.0),
       nesterov=st.booleans(), weight_decay=st.sampled_from([0.0, 1e-2]) | st.floats(0.0, 0.5))
def test_sgd_matches_reference(seed, shapes_, n_steps, lr, momentum, dampening, nesterov,
                               weight_decay):
    if nesterov:  # PyTorch's precondition: momentum > 0 and no dampening
        momentum, dampening = max(momentum, 0.1), 0.0
    init, grads = make_problem(seed, shapes_, n_steps)
    got = run_optimizer(lambda ps: optim.SGD(ps, lr=lr, momentum=momentum, nesterov=nesterov,
                                             weight_decay=weight_decay, dampening=dampening),
                        init, grads)
    for i, theta in enumerate(got):
        want = ref_sgd(init[i], per_param(grads, i), lr, momentum, dampening, nesterov,
                       weight_decay)
        np.testing.assert_allclose(theta, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    {}, {"momentum": 0.9}, {"momentum": 0.9, "dampening": 0.5},
    {"momentum": 0.9, "nesterov": True}, {"weight_decay": 0.1},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05},
])
def test_sgd_variants_match_reference(kwargs):
    init, grads = make_problem(0, [(3, 4), (4,)], 5)
    got = run_optimizer(lambda ps: optim.SGD(ps, lr=0.1, **kwargs), init, grads)
    for i, theta in enumerate(got):
        np.testing.assert_allclose(theta, ref_sgd(init[i], per_param(grads, i), 0.1, **kwargs),
                                   rtol=1e-12, atol=1e-12)


def test_sgd_momentum_differs_from_plain():
    # Guards the reference comparison itself: the options must change the trajectory.
    init, grads = make_problem(1, [(5,)], 4)
    plain = run_optimizer(lambda ps: optim.SGD(ps, lr=0.1), init, grads)[0]
    heavy = run_optimizer(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), init, grads)[0]
    nest = run_optimizer(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                         init, grads)[0]
    assert not np.allclose(plain, heavy) and not np.allclose(heavy, nest)


@settings(max_examples=100)
@given(seed=st.integers(0, 2**31 - 1), shapes_=st.lists(shapes, min_size=1, max_size=3),
       n_steps=st.integers(1, 6), lr=st.floats(1e-4, 0.5), beta1=st.floats(0.0, 0.99),
       beta2=st.floats(0.5, 0.9999), eps=st.sampled_from([1e-8, 1e-3, 0.1]),
       weight_decay=st.sampled_from([0.0, 0.0, 1e-2]) | st.floats(0.0, 0.5),
       kind=st.sampled_from(["Adam", "AdamW"]))
def test_adam_and_adamw_match_reference(seed, shapes_, n_steps, lr, beta1, beta2, eps,
                                        weight_decay, kind):
    init, grads = make_problem(seed, shapes_, n_steps)
    cls = getattr(optim, kind)
    got = run_optimizer(lambda ps: cls(ps, lr=lr, betas=(beta1, beta2), eps=eps,
                                       weight_decay=weight_decay), init, grads)
    for i, theta in enumerate(got):
        want = ref_adam(init[i], per_param(grads, i), lr, beta1, beta2, eps, weight_decay,
                        decoupled=(kind == "AdamW"))
        np.testing.assert_allclose(theta, want, rtol=1e-10, atol=1e-12)


def test_adam_weight_decay_coupled_vs_decoupled():
    init, grads = make_problem(2, [(6,)], 5)
    adam = run_optimizer(lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.1), init, grads)[0]
    adamw = run_optimizer(lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.1), init, grads)[0]
    np.testing.assert_allclose(adam, ref_adam(init[0], per_param(grads, 0), 0.1, 0.9, 0.999,
                                              1e-8, 0.1), rtol=1e-10)
    np.testing.assert_allclose(adamw, ref_adam(init[0], per_param(grads, 0), 0.1, 0.9, 0.999,
                                               1e-8, 0.1, decoupled=True), rtol=1e-10)
    assert not np.allclose(adam, adamw)


def test_adamw_default_decay_and_adam_default_none():
    assert optim.AdamW([Parameter(np.zeros(1))]).weight_decay == 0.01
    adam = optim.Adam([Parameter(np.zeros(1))])
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)


def test_first_adam_step_is_lr_times_sign():
    # With bias correction, m̂ = g and sqrt(v̂) = |g| at t = 1, so the step is ≈ lr·sign(g).
    p = Parameter(np.zeros(4))
    p.grad = np.array([3.0, -0.2, 1e-3, -50.0])
    optim.Adam([p], lr=0.01, eps=0.0).step()
    np.testing.assert_allclose(p.data, -0.01 * np.sign(p.grad), rtol=1e-12)


# -- convergence ------------------------------------------------------------------------------

@pytest.mark.parametrize("make_opt, n_steps", [
    (lambda ps: optim.SGD(ps, lr=0.1), 300),
    (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True), 300),
    (lambda ps: optim.Adam(ps, lr=0.05), 1000),
    (lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.0), 1000),
])
def test_minimizes_a_quadratic(make_opt, n_steps):
    # f(θ) = ½ Σ a (θ - c)², ∇f = a (θ - c), minimum at c; curvatures a between 0.5 and 2.
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 2.0, size=(5, 3))
    c = rng.standard_normal((5, 3))
    p = Parameter(rng.standard_normal((5, 3)) * 3)
    opt = make_opt([p])
    f0 = 0.5 * np.sum(a * (p.data - c) ** 2)
    for _ in range(n_steps):
        p.grad = a * (p.data - c)
        opt.step()
    assert 0.5 * np.sum(a * (p.data - c) ** 2) < 1e-6 * f0
    np.testing.assert_allclose(p.data, c, atol=1e-3)


# -- which parameters are updated ------------------------------------------------------------

@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_frozen_and_gradless_parameters_are_skipped(cls):
    frozen, gradless, live = (Parameter(np.ones(3)) for _ in range(3))
    frozen.requires_grad = False
    frozen.grad = np.ones(3)
    live.grad = np.ones(3)
    opt = cls([frozen, gradless, live], lr=0.1, weight_decay=0.1)
    opt.step()
    np.testing.assert_array_equal(frozen.data, np.ones(3))
    np.testing.assert_array_equal(gradless.data, np.ones(3))
    assert not np.allclose(live.data, np.ones(3))
    assert opt.state[0] == {} and opt.state[1] == {}


def test_adam_step_count_is_per_parameter():
    # A parameter without a gradient for a while starts its bias correction at t = 1 when it
    # gets one, as in PyTorch (its state is created lazily).
    init, grads = make_problem(4, [(3,), (3,)], 5)
    ps = [Parameter(x.copy()) for x in init]
    opt = optim.Adam(ps, lr=0.1)
    for t, step_grads in enumerate(grads):
        ps[0].grad = step_grads[0]
        ps[1].grad = step_grads[1] if t >= 2 else None
        opt.step()
    assert opt.state[0]["t"] == 5 and opt.state[1]["t"] == 3
    np.testing.assert_allclose(ps[1].data, ref_adam(init[1], per_param(grads, 1)[2:], 0.1, 0.9,
                                                    0.999, 1e-8), rtol=1e-12)


def test_zero_grad_sets_none_and_updates_are_in_place():
    p = Parameter(np.ones(3))
    p.grad = np.ones(3)
    opt = optim.SGD([p], lr=0.5, momentum=0.9)
    data = p.data
    opt.step()
    assert p.data is data          # layers holding the array see the update
    opt.zero_grad()
    assert p.grad is None
    opt.step()                     # nothing to do
    np.testing.assert_array_equal(p.data, np.full(3, 0.5))


def test_lr_attribute_is_read_at_each_step():
    p = Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=1.0)
    p.grad = np.ones(2)
    opt.step()
    opt.lr = 0.25
    opt.step()
    np.testing.assert_allclose(p.data, -1.25 * np.ones(2))


# -- dtypes and backends --------------------------------------------------------------------

@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    lambda ps: optim.AdamW(ps, lr=1e-2),
])
def test_float32_stays_float32(xp, make_opt):
    rng = np.random.default_rng(5)
    ps = [Parameter(xp.asarray(rng.standard_normal(s), dtype=xp.float32)) for s in [(4, 3), (3,)]]
    opt = make_opt(ps)
    ema = optim.EMA(ps, decay=0.9)
    for _ in range(3):
        for p in ps:
            p.grad = xp.asarray(rng.standard_normal(p.shape), dtype=xp.float32)
        opt.lr = np.float64(opt.lr)  # a schedule computed with NumPy must not promote
        opt.step()
        ema.update()
    for p, state in zip(ps, opt.state, strict=True):
        assert p.data.dtype == xp.float32
        assert type(p.data) is type(xp.zeros(1))
        for value in state.values():
            if hasattr(value, "dtype"):
                assert value.dtype == xp.float32
    assert all(s.dtype == xp.float32 for s in ema.shadow)
    sd = opt.state_dict()
    assert all(v.dtype == np.float32 for v in sd.values() if isinstance(v, np.ndarray))


def test_gradient_in_another_dtype_is_cast():
    p = Parameter(np.zeros(3, dtype=np.float32))
    p.grad = np.ones(3, dtype=np.float64)
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    assert p.data.dtype == np.float32 and opt.state[0]["m"].dtype == np.float32


def test_state_follows_parameter_dtype_change():
    p = Parameter(np.zeros(3, dtype=np.float32))
    p.grad = np.ones(3, dtype=np.float32)
    opt = optim.Adam([p], lr=0.1)
    opt.step()
    p.data = p.data.astype(np.float64)
    p.grad = np.ones(3)
    opt.step()
    assert opt.state[0]["m"].dtype == np.float64 and p.data.dtype == np.float64


# -- checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1),
    lambda ps: optim.Adam(ps, lr=0.05, weight_decay=0.01),
    lambda ps: optim.AdamW(ps, lr=0.05),
])
def test_state_dict_round_trip_through_npz(tmp_path, make_opt):
    init, grads = make_problem(6, [(3, 2), (2,), (4,)], 7)
    ps_a = [Parameter(x.astype(np.float32)) for x in init]
    opt_a = make_opt(ps_a)

    def step(ps, opt, g):
        for p, gi in zip(ps, g, strict=True):
            p.grad = gi.astype(np.float32)
        opt.step()

    for g in grads[:3]:
        step(ps_a, opt_a, g)
    opt_a.lr *= 0.5  # as a schedule would
    np.savez(tmp_path / "opt.npz", **opt_a.state_dict())

    # A fresh optimizer on copies of the parameters, loaded from disk without pickle.
    ps_b = [Parameter(p.data.copy()) for p in ps_a]
    opt_b = make_opt(ps_b)
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as d:
        opt_b.load_state_dict(d)
    assert opt_b.lr == opt_a.lr and opt_b.num_steps == 3
    for g in grads[3:]:
        step(ps_a, opt_a, g)
        step(ps_b, opt_b, g)
    for pa, pb in zip(ps_a, ps_b, strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert pb.data.dtype == np.float32


def test_state_dict_is_a_copy_and_holds_only_numbers_and_arrays():
    p = Parameter(np.zeros(2))
    p.grad = np.ones(2)
    opt = optim.Adam([p])
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"lr", "step", "num_params", "m.0", "v.0", "t.0"}
    assert all(isinstance(v, (int, float, np.ndarray)) for v in sd.values())
    before = sd["m.0"].copy()
    opt.step()
    np.testing.assert_array_equal(sd["m.0"], before)


def test_load_state_dict_rejects_mismatches():
    p = Parameter(np.zeros(2))
    p.grad = np.ones(2)
    adam = optim.Adam([p])
    adam.step()
    sd = adam.state_dict()
    with pytest.raises(ValueError, match=r"for 1 parameter.*has 2"):
        optim.Adam([Parameter(np.zeros(2)), Parameter(np.zeros(1))]).load_state_dict(sd)
    with pytest.raises(ValueError, match="shape"):
        optim.Adam([Parameter(np.zeros(3))]).load_state_dict(sd)
    with pytest.raises(ValueError, match="unexpected key"):
        optim.SGD([Parameter(np.zeros(2))], lr=0.1, momentum=0.9).load_state_dict(sd)


def test_load_state_dict_refuses_damaged_entries_and_changes_nothing():
    """A complex, boolean or text entry (a damaged checkpoint) is a ValueError naming it, and
    nothing is loaded: the checks all run before the first assignment."""
    p = Parameter(np.zeros(2, np.float32))
    p.grad = np.ones(2, np.float32)
    adam = optim.Adam([p], lr=0.01)
    adam.step()
    sd = adam.state_dict()
    fresh = optim.Adam([Parameter(np.zeros(2, np.float32))], lr=0.5)
    damaged = [("m.0", np.zeros(2, np.complex64), "'m.0' has dtype complex64"),
               ("lr", np.array("abc"), "real number"),
               ("step", np.array(True), "real number")]
    for key, value, message in damaged:
        with pytest.raises(ValueError, match=message):
            fresh.load_state_dict({**sd, key: value})
        assert fresh.lr == 0.5 and fresh.num_steps == 0 and fresh.state == [{}]
    sched = optim.StepLR(fresh, step_size=2)
    with pytest.raises(ValueError, match="real number"):
        sched.load_state_dict({**sched.state_dict(), "last_epoch": np.array(3 + 1j)})
    assert sched.last_epoch == 0


# -- argument checks --------------------------------------------------------------------------

def test_bad_arguments_raise():
    ps = [Parameter(np.zeros(2))]
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(ps, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD(ps, lr=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        optim.SGD(ps, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(ps, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="weight_decay"):
        optim.AdamW(ps, weight_decay=-1.0)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(TypeError, match="Parameter"):
        optim.Adam([np.zeros(2)])
    with pytest.raises(TypeError, match="model.parameters"):
        optim.SGD(mc.layers.ReLU(), lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD(ps + ps, lr=0.1)


def test_gradient_of_wrong_shape_names_the_parameter():
    p = Parameter(np.zeros((2, 3)), name="W")
    p.grad = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"W.*\(3, 2\).*\(2, 3\)"):
        optim.SGD([p], lr=0.1).step()


def test_regularizers_are_reexported():
    assert optim.L1 is mc.regularizers.L1
    assert optim.L2 is mc.regularizers.L2
    assert optim.L1L2 is mc.regularizers.L1L2
    for name in ("SGD", "Adam", "AdamW", "EMA", "StepLR", "CosineAnnealingLR", "OneCycleLR",
                 "ReduceLROnPlateau", "LambdaLR", "LinearLR", "L1", "L2", "L1L2"):
        assert name in optim.__all__


# -- EMA --------------------------------------------------------------------------------------

@settings(max_examples=20)
@given(seed=st.integers(0, 2**31 - 1), decay=st.floats(0.0, 1.0), n=st.integers(1, 6),
       warmup=st.booleans())
def test_ema_matches_reference(seed, decay, n, warmup):
    rng = np.random.default_rng(seed)
    p = Parameter(rng.standard_normal(4))
    ema = optim.EMA([p], decay=decay, warmup=warmup)
    want = p.data.copy()
    for k in range(n):
        p.data = rng.standard_normal(4)
        d = min(decay, (1 + k) / (10 + k)) if warmup else decay
        want = d * want + (1 - d) * p.data
        ema.update()
    np.testing.assert_allclose(ema.shadow[0], want, rtol=1e-12, atol=1e-14)


def test_ema_closed_form_for_constant_weights():
    # Starting at θ0 with the weights held at θ1: θ_ema = d^n θ0 + (1 - d^n) θ1.
    p = Parameter(np.zeros(3))
    ema = optim.EMA([p], decay=0.9)
    p.data[...] = 1.0
    for _ in range(10):
        ema.update()
    np.testing.assert_allclose(ema.shadow[0], (1 - 0.9**10) * np.ones(3), rtol=1e-12)


def test_ema_apply_restore_swap_in_place(tmp_path):
    p = Parameter(np.zeros(3, dtype=np.float32))
    ema = optim.EMA([p], decay=0.5)
    data = p.data
    p.data[...] = 4.0
    ema.update()                                        # shadow = 2
    with ema.averaged():
        np.testing.assert_array_equal(p.data, np.full(3, 2.0))
        assert p.data is data
        with pytest.raises(RuntimeError, match="restore"):
            ema.apply()
    np.testing.assert_array_equal(p.data, np.full(3, 4.0))
    assert p.data is data and p.data.dtype == np.float32
    with pytest.raises(RuntimeError, match="apply"):
        ema.restore()
    np.savez(tmp_path / "ema.npz", **ema.state_dict())
    other = optim.EMA([Parameter(np.zeros(3, dtype=np.float32))], decay=0.1)
    with np.load(tmp_path / "ema.npz", allow_pickle=False) as d:
        other.load_state_dict(d)
    assert other.decay == 0.5 and other.num_updates == 1
    np.testing.assert_array_equal(other.shadow[0], np.full(3, 2.0))


def test_ema_bad_arguments():
    with pytest.raises(ValueError, match="decay"):
        optim.EMA([Parameter(np.zeros(1))], decay=1.5)
    with pytest.raises(ValueError, match="empty"):
        optim.EMA([])


# -- schedules --------------------------------------------------------------------------------

def sgd(lr=1.0):
    return optim.SGD([Parameter(np.zeros(1))], lr=lr)


def lrs_of(scheduler, opt, n):
    """The lr at epochs 0 .. n-1 (the constructor sets epoch 0's)."""
    out = [opt.lr]
    for _ in range(n - 1):
        scheduler.step()
        out.append(opt.lr)
    return out


def test_step_lr_values():
    opt = sgd(0.8)
    got = lrs_of(optim.StepLR(opt, step_size=3, gamma=0.5), opt, 8)
    assert got == pytest.approx([0.8, 0.8, 0.8, 0.4, 0.4, 0.4, 0.2, 0.2], rel=1e-12)


def test_cosine_closed_form():
    opt = sgd(0.5)
    sched = optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.01)
    got = lrs_of(sched, opt, 11)
    want = [0.01 + 0.49 * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(11)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(0.5) and got[5] == pytest.approx(0.255)
    assert got[10] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(got, got[1:], strict=False))


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_one_cycle_start_peak_end(strategy):
    opt = sgd(123.0)  # ignored: OneCycle starts at max_lr / div_factor
    sched = optim.OneCycleLR(opt, max_lr=0.4, total_steps=100, pct_start=0.3, div_factor=25,
                             final_div_factor=1e4, anneal_strategy=strategy)
    got = lrs_of(sched, opt, 100)
    assert got[0] == pytest.approx(0.4 / 25, rel=1e-12)
    peak = int(np.argmax(got))
    assert peak == 29                          # pct_start * total_steps - 1
    assert got[peak] == pytest.approx(0.4, rel=1e-12)
    assert got[-1] == pytest.approx(0.4 / 25 / 1e4, rel=1e-9)
    assert all(a < b for a, b in zip(got[:peak], got[1:peak + 1], strict=True))
    assert all(a > b for a, b in zip(got[peak:-1], got[peak + 1:], strict=True))
    # Midpoint of the warm-up: the cosine and the line both pass through the average.
    mid = (0.4 / 25 + 0.4) / 2
    if strategy == "linear":
        assert got[10] == pytest.approx(0.4 / 25 + (0.4 - 0.4 / 25) * 10 / 29, rel=1e-12)
    else:
        assert got[10] < mid < got[20]  # cosine: slow start, fast middle
    sched.step()                               # step 100 == total_steps is allowed (PyTorch)
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


def test_one_cycle_cycles_momentum_when_asked():
    opt = optim.SGD([Parameter(np.zeros(1))], lr=0.1, momentum=0.9)
    sched = optim.OneCycleLR(opt, max_lr=1.0, total_steps=11, pct_start=6 / 11,
                             cycle_momentum=True)
    assert opt.momentum == pytest.approx(0.95)
    for _ in range(5):
        sched.step()
    assert opt.momentum == pytest.approx(0.85) and opt.lr == pytest.approx(1.0)
    for _ in range(5):
        sched.step()
    assert opt.momentum == pytest.approx(0.95)
    adam = optim.Adam([Parameter(np.zeros(1))], betas=(0.9, 0.99))
    optim.OneCycleLR(adam, max_lr=1.0, total_steps=10, cycle_momentum=True)
    assert adam.betas == (pytest.approx(0.95), 0.99)
    plain = sgd()
    optim.OneCycleLR(plain, max_lr=1.0, total_steps=10)
    assert plain.momentum == 0.0


def test_plateau_patience_and_cooldown():
    opt = sgd(1.0)
    sched = optim.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=2, cooldown=1,
                                    threshold=0.1, threshold_mode="abs")
    # epoch:    1    2    3     4     5     6     7    8    9    10   11
    metrics = [1.0, 0.5, 0.45, 0.45, 0.45, 0.45, 0.5, 0.5, 0.5, 0.5, 0.3]
    # 0.45 is not better than 0.5 - 0.1: bad epochs 3, 4, 5 -> 3 > patience at epoch 5: halve.
    # Epoch 6 is in the cooldown (not counted); bad epochs 7, 8, 9 -> halve at epoch 9.
    want = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    got = []
    for metric in metrics:
        sched.step(metric)
        got.append(opt.lr)
    assert got == want
    assert sched.best == 0.3 and sched.num_bad_epochs == 0


def test_plateau_max_mode_rel_threshold_and_min_lr():
    opt = sgd(1.0)
    sched = optim.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=0, threshold=0.01,
                                    min_lr=0.05)
    sched.step(0.5)               # best = 0.5
    sched.step(0.504)             # < 0.5 * 1.01: bad, > patience 0 -> lr 0.1
    assert opt.lr == pytest.approx(0.1)
    sched.step(0.6)               # better
    assert opt.lr == pytest.approx(0.1)
    sched.step(0.6)               # bad -> max(0.01, min_lr) = 0.05
    assert opt.lr == pytest.approx(0.05)
    sched.step(0.1)               # bad, but already at min_lr
    assert opt.lr == pytest.approx(0.05)


def test_plateau_state_dict_round_trip():
    opt = sgd(1.0)
    a = optim.ReduceLROnPlateau(opt, patience=1)
    for m in [3.0, 2.0, 2.5]:
        a.step(m)
    b = optim.ReduceLROnPlateau(sgd(1.0), patience=1)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert (b.best, b.num_bad_epochs, b.last_epoch) == (2.0, 1, 3)


def test_plateau_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        optim.ReduceLROnPlateau(sgd(), factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        optim.ReduceLROnPlateau(sgd(), mode="up")


def test_lambda_and_linear_lr():
    opt = sgd(2.0)
    got = lrs_of(optim.LambdaLR(opt, lambda e: 1.0 / (e + 1)), opt, 4)
    assert got == pytest.approx([2.0, 1.0, 2.0 / 3.0, 0.5], rel=1e-12)
    opt = sgd(1.0)
    got = lrs_of(optim.LinearLR(opt, start_factor=0.1, end_factor=1.0, total_iters=4), opt, 7)
    assert got == pytest.approx([0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 1.0], rel=1e-12)


@pytest.mark.parametrize("make_sched", [
    lambda o: optim.StepLR(o, step_size=2, gamma=0.3),
    lambda o: optim.CosineAnnealingLR(o, T_max=7, eta_min=0.001),
    lambda o: optim.OneCycleLR(o, max_lr=0.5, total_steps=20),
    lambda o: optim.LinearLR(o, start_factor=0.2, total_iters=6),
])
def test_schedule_state_dict_round_trip(tmp_path, make_sched):
    opt_a = sgd(0.1)
    a = make_sched(opt_a)
    for _ in range(5):
        a.step()
    np.savez(tmp_path / "s.npz", **a.state_dict())
    opt_b = sgd(0.1)
    b = make_sched(opt_b)
    with np.load(tmp_path / "s.npz", allow_pickle=False) as d:
        b.load_state_dict(d)
    assert opt_b.lr == opt_a.lr and b.last_epoch == 5
    for _ in range(3):
        a.step()
        b.step()
        assert opt_b.lr == opt_a.lr


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match="step_size"):
        optim.StepLR(sgd(), step_size=0)
    with pytest.raises(ValueError, match="anneal_strategy"):
        optim.OneCycleLR(sgd(), max_lr=1.0, total_steps=10, anneal_strategy="exp")
    with pytest.raises(TypeError, match="lr"):
        optim.StepLR(object(), step_size=1)


def test_schedule_drives_training_lr():
    # The schedule sets opt.lr; the optimizer uses it at the next step.
    p = Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad = np.ones(1)
        opt.step()
        sched.step()
    np.testing.assert_allclose(p.data, [-(1.0 + 0.5 + 0.25)])


# -- parameter groups, decoupled SGD weight decay, Lookahead (issue 25) ----------------------

GROUP_OPTS = [
    lambda ps, lr, wd: optim.SGD(ps, lr=lr, momentum=0.85, nesterov=True, weight_decay=wd),
    lambda ps, lr, wd: optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd,
                                 decoupled_weight_decay=True),
    lambda ps, lr, wd: optim.Adam(ps, lr=lr, weight_decay=wd),
    lambda ps, lr, wd: optim.AdamW(ps, lr=lr, weight_decay=wd),
]


@pytest.mark.parametrize("make", GROUP_OPTS)
def test_groups_equal_separate_optimizers(make):
    init, grads = make_problem(11, [(3, 2), (2,), (4,)], 6)
    lrs = [0.5, 1.0, 0.25, 0.125, 0.5, 0.0625]  # a schedule, applied to opt.lr only
    a = [Parameter(x.copy()) for x in init]
    opt = make([{"params": a[:2]}, {"params": [a[2]], "lr_scale": 64.0, "weight_decay": 0.0}],
               0.01, 5e-3)
    b = [Parameter(x.copy()) for x in init]
    opt1, opt2 = make(b[:2], 0.01, 5e-3), make([b[2]], 0.01 * 64.0, 0.0)
    for lr, step_grads in zip(lrs, grads, strict=True):
        for p, q, g in zip(a, b, step_grads, strict=True):
            p.grad, q.grad = g.copy(), g.copy()
        opt.lr, opt1.lr, opt2.lr = 0.01 * lr, 0.01 * lr, 0.01 * 64.0 * lr
        opt.step()
        opt1.step()
        opt2.step()
    for p, q in zip(a, b, strict=True):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-13, atol=1e-15)


def test_plain_list_is_one_group_and_bit_identical():
    init, grads = make_problem(3, [(3,), (2, 2)], 4)
    a = run_optimizer(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
                      init, grads)
    b = run_optimizer(lambda ps: optim.SGD([{"params": ps}], lr=0.1, momentum=0.9,
                                           weight_decay=1e-2), init, grads)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr_scale"] == 1.0
    assert set(opt.state_dict()) == {"lr", "step", "num_params"}


def test_schedule_scales_all_groups():
    p, q = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    opt = optim.SGD([{"params": [p]}, {"params": [q], "lr_scale": 4.0}], lr=1.0)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        p.grad, q.grad = np.ones(1), np.ones(1)
        opt.step()
        sched.step()
    np.testing.assert_allclose(p.data, [-(1 + 0.5 + 0.25)])
    np.testing.assert_allclose(q.data, [-4 * (1 + 0.5 + 0.25)])


@pytest.mark.parametrize("groups, exc, match", [
    ([{"params": [Parameter(np.zeros(1))], "lr": 0.1}], ValueError, "lr_scale"),
    ([{"params": [Parameter(np.zeros(1))], "momentum": 0.9}], ValueError, "unknown key"),
    ([{"lr_scale": 2.0}], ValueError, "no 'params'"),
    ([{"params": [Parameter(np.zeros(1))], "lr_scale": -1.0}], ValueError, "lr_scale"),
    ([{"params": [Parameter(np.zeros(1))], "lr_scale": "2"}], ValueError, "lr_scale"),
    ([{"params": [Parameter(np.zeros(1))], "weight_decay": -1.0}], ValueError, "weight_decay"),
    ([{"params": [np.zeros(1)]}], TypeError, "Parameter"),
    ([{"params": 3}], TypeError, "Parameter"),
    ([Parameter(np.zeros(1)), {"params": [Parameter(np.zeros(1))]}], TypeError, "mixes"),
    ({"params": [Parameter(np.zeros(1))]}, TypeError, "list of dicts"),
    ([{"params": []}], ValueError, "empty"),
])
def test_malformed_groups(groups, exc, match):
    with pytest.raises(exc, match=match):
        optim.SGD(groups, lr=0.1)
    p = Parameter(np.zeros(1))
    with pytest.raises(ValueError, match="more than once"):
        optim.Adam([{"params": [p]}, {"params": [p]}])


def test_group_state_dict_round_trip_and_mismatch(tmp_path):
    init, grads = make_problem(4, [(3,), (2,), (2, 2)], 5)
    def make(ps):
        return optim.Adam([{"params": ps[:1], "lr_scale": 8.0},
                           {"params": ps[1:], "weight_decay": 0.1}], lr=1e-2)
    full = run_optimizer(make, init, grads)
    params = [Parameter(x.copy()) for x in init]
    opt = make(params)
    for step_grads in grads[:2]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.copy()
        opt.step()
    np.savez(tmp_path / "o.npz", **opt.state_dict())
    opt2 = optim.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    opt2.load_state_dict(np.load(tmp_path / "o.npz", allow_pickle=False))
    assert opt2.param_groups[0]["lr_scale"] == 8.0 and opt2.param_groups[1]["weight_decay"] == 0.1
    assert opt2.param_groups[0]["weight_decay"] is None
    for step_grads in grads[2:]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.copy()
        opt2.step()
    for p, x in zip(params, full, strict=True):
        np.testing.assert_array_equal(p.data, x)
    other = optim.Adam([{"params": params[:2]}, {"params": params[2:]}])
    before = other.state_dict()
    with pytest.raises(ValueError, match="group 0"):
        other.load_state_dict(opt.state_dict())
    assert other.state_dict().keys() == before.keys()
    with pytest.raises(ValueError, match="group"):
        optim.Adam(params).load_state_dict(opt.state_dict())


def test_group_checkpoint_round_trip(tmp_path):
    from minicnn.training import checkpoint
    model = mc.layers.Sequential(mc.layers.Linear(3, 2))
    ps = model.parameters()
    opt = optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "lr_scale": 64.0,
                                          "weight_decay": 0.0}],
                    lr=0.1, momentum=0.9, weight_decay=5e-4, decoupled_weight_decay=True)
    for p in ps:
        p.grad = np.ones_like(p.data)
    opt.step()
    checkpoint.save(tmp_path / "c.npz", model, opt)
    opt2 = optim.SGD([{"params": ps[:1]}, {"params": ps[1:]}], lr=1.0, momentum=0.9,
                     decoupled_weight_decay=True)
    checkpoint.load(tmp_path / "c.npz", model, opt2)
    assert opt2.param_groups[1]["lr_scale"] == 64.0 and opt2.lr == 0.1
    for key, value in opt.state_dict().items():
        np.testing.assert_array_equal(opt2.state_dict()[key], value)


def ref_sgd_decoupled(theta, grads, lr, mu, wd, nesterov=False):
    theta, b = np.array(theta, dtype=np.float64), None
    for g in grads:
        theta = theta - lr * wd * theta
        b = g.copy() if b is None else mu * b + g
        theta = theta - lr * (g + mu * b if nesterov else b)
    return theta


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_decoupled_weight_decay_formula(nesterov):
    init, grads = make_problem(8, [(5,)], 6)
    got = run_optimizer(lambda ps: optim.SGD(ps, lr=0.2, momentum=0.85, nesterov=nesterov,
                                             weight_decay=0.05, decoupled_weight_decay=True),
                        init, grads)[0]
    want = ref_sgd_decoupled(init[0], [g[0] for g in grads], 0.2, 0.85, 0.05, nesterov)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    coupled = run_optimizer(lambda ps: optim.SGD(ps, lr=0.2, momentum=0.85, nesterov=nesterov,
                                                 weight_decay=0.05), init, grads)[0]
    assert not np.allclose(got, coupled, rtol=1e-6)
    # Without momentum the two agree (up to rounding).
    a = run_optimizer(lambda ps: optim.SGD(ps, lr=0.2, weight_decay=0.05,
                                           decoupled_weight_decay=True), init, grads)[0]
    b = run_optimizer(lambda ps: optim.SGD(ps, lr=0.2, weight_decay=0.05), init, grads)[0]
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert "decoupled_weight_decay=True" in repr(optim.SGD([Parameter(np.zeros(1))], lr=1.0,
                                                           decoupled_weight_decay=True))


def ref_lookahead_sgd(theta, grads, lr, mu, k, alpha):
    theta, b = np.array(theta, dtype=np.float64), None
    slow = theta.copy()
    for t, g in enumerate(grads, start=1):
        b = g.copy() if b is None else mu * b + g
        theta = theta - lr * b
        if t % k == 0:
            slow = slow + alpha * (theta - slow)
            theta = slow.copy()
    return theta


def test_lookahead_matches_hand_loop():
    init, grads = make_problem(9, [(4,)], 12)
    got = run_optimizer(lambda ps: optim.Lookahead(optim.SGD(ps, lr=0.1, momentum=0.9),
                                                   k=5, alpha=0.5), init, grads)[0]
    want = ref_lookahead_sgd(init[0], [g[0] for g in grads], 0.1, 0.9, 5, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    # alpha = 1 is the inner optimizer alone.
    a = run_optimizer(lambda ps: optim.Lookahead(optim.Adam(ps, lr=0.1), k=3, alpha=1.0),
                      init, grads)[0]
    b = run_optimizer(lambda ps: optim.Adam(ps, lr=0.1), init, grads)[0]
    np.testing.assert_array_equal(a, b)


def test_lookahead_lr_schedule_and_state_dict(tmp_path):
    init, grads = make_problem(10, [(3,), (2,)], 9)
    def make(ps):
        return optim.Lookahead(optim.SGD(ps, lr=0.1, momentum=0.9), k=4, alpha=0.5)
    full = run_optimizer(make, init, grads)
    params = [Parameter(x.copy()) for x in init]
    la = make(params)
    sched = optim.StepLR(la, step_size=1, gamma=0.5)
    sched.step()
    assert la.lr == la.optimizer.lr == 0.05
    la.lr = 0.1
    for step_grads in grads[:6]:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.copy()
        la.step()
    np.savez(tmp_path / "la.npz", **la.state_dict())
    params2 = [Parameter(p.data.copy()) for p in params]
    la2 = make(params2)
    la2.load_state_dict(np.load(tmp_path / "la.npz", allow_pickle=False))
    assert la2.num_steps == 6
    for step_grads in grads[6:]:
        for p, g in zip(params2, step_grads, strict=True):
            p.grad = g.copy()
        la2.step()
    for p, x in zip(params2, full, strict=True):
        np.testing.assert_array_equal(p.data, x)
    bad = dict(la.state_dict())
    bad["slow.0"] = np.zeros(7)
    with pytest.raises(ValueError, match="slow.0"):
        la2.load_state_dict(bad)
    with pytest.raises(ValueError):
        la2.load_state_dict({**la.state_dict(), "extra": 1})


@pytest.mark.parametrize("args, exc", [
    (dict(k=0), ValueError), (dict(k=2.5), ValueError), (dict(alpha=1.5), ValueError),
])
def test_lookahead_bad_arguments(args, exc):
    with pytest.raises(exc):
        optim.Lookahead(optim.SGD([Parameter(np.zeros(1))], lr=0.1), **args)
    with pytest.raises(TypeError):
        optim.Lookahead([Parameter(np.zeros(1))])


def test_groups_and_lookahead_on_device(xp):
    rng = np.random.default_rng(2)
    ps = [Parameter(xp.asarray(rng.standard_normal(s), dtype=xp.float32)) for s in [(4, 3), (3,)]]
    opt = optim.Lookahead(optim.SGD([{"params": ps[:1]}, {"params": ps[1:], "lr_scale": 64.0,
                                                          "weight_decay": 0.0}],
                                    lr=0.01, momentum=0.85, nesterov=True, weight_decay=5e-4,
                                    decoupled_weight_decay=True), k=2)
    ref = [np.array(mc.backend.to_numpy(p.data), dtype=np.float64) for p in ps]
    for _ in range(4):
        for p in ps:
            p.grad = xp.asarray(rng.standard_normal(p.shape), dtype=xp.float32)
        opt.step()
    for p, r in zip(ps, ref, strict=True):
        assert p.data.dtype == xp.float32 and type(p.data) is type(xp.zeros(1))
        assert not np.allclose(mc.backend.to_numpy(p.data), r)
    assert all(type(s) is type(xp.zeros(1)) and s.dtype == xp.float32 for s in opt.slow)
    sd = opt.state_dict()
    assert all(isinstance(v, (int, float, np.ndarray)) for v in sd.values())
