"""Normalization layers (layers/batchnorm.py, layers/sync_batchnorm.py, layers/norm.py,
functional/normalization.py): the lecture's BatchNorm example, gradient checks in train and
eval mode over random shapes, running statistics, values and gradients against direct NumPy
formulas and the stepwise twins of minicnn.functional.reference, the
GroupNorm/LayerNorm/InstanceNorm equivalences, dtypes, memory layout and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.functional.normalization import (
    center,
    normalize,
    normalize_backward,
    normalize_backward_centered,
    normalize_backward_from_sums,
    reduce_sum,
)
from minicnn.functional.reference import batchnorm_backward_stepwise, batchnorm_forward
from minicnn.gradcheck import assert_gradients

seeds = st.integers(0, 2**31 - 1)
sizes = st.integers(1, 4)


def to_np(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def data_rng(seed):
    """The generator for a gradient check's data: not ``seed`` itself, from which
    check_gradients draws the upstream gradient G (G = x would make dx vanish)."""
    return np.random.default_rng([seed, 1])


def random_affine(layer, rng):
    """Give gamma and beta random values (|gamma| in [0.5, 2], either sign), float32."""
    for p in layer.parameters():
        shape = p.shape
        if p.name == "gamma":
            v = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        else:
            v = rng.standard_normal(shape)
        p.data = np.asarray(v, dtype=np.float32)
    return layer


def numpy_norm(x, axes, eps=1e-5):
    """(x - mean) / sqrt(biased var + eps) over ``axes``, straight from the formula."""
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def per_channel(v, ndim):
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


# -- the lecture's worked example ---------------------------------------------------------

def test_batchnorm_lecture_example():
    # three 1x2x2 samples; one channel, so m = 12 values per channel
    x = np.array([[[[7, 5], [0, 4]]],
                  [[[0, 7], [3, 1]]],
                  [[[2, 0], [0, 1]]]], dtype=np.float32)
    bn = L.BatchNorm2d(1, eps=1e-5, momentum=1.0)  # momentum 1: running = this batch
    y = bn(x)
    assert float(bn.running_mean[0]) == pytest.approx(2.5)
    biased_var = float(bn.running_var[0]) * 11 / 12  # running_var holds the unbiased one
    assert round(biased_var, 2) == 6.58
    expected = np.array([[1.75, 0.97, -0.97, 0.58],
                         [-0.97, 1.75, 0.19, -0.58],
                         [-0.19, -0.97, -0.97, -0.58]])
    np.testing.assert_allclose(np.round(y.reshape(3, 4).astype(np.float64), 2), expected,
                               rtol=0, atol=1e-12)


# -- gradient checks ----------------------------------------------------------------------

def warm_up_running_stats(bn, shape, rng, steps=3):
    """A few training forwards on shifted, scaled data: running stats far from 0 and 1."""
    C = shape[1]
    for _ in range(steps):
        x = (rng.standard_normal(shape) * per_channel(rng.uniform(0.5, 3.0, C), len(shape))
             + per_channel(rng.standard_normal(C) * 2, len(shape)))
        bn(x.astype(np.float32))
    assert not np.allclose(bn.running_mean, 0) and not np.allclose(bn.running_var, 1)


@settings(max_examples=100)
@given(N=sizes, C=sizes, H=sizes, W=sizes, training=st.booleans(), seed=seeds)
def test_batchnorm2d_gradcheck(N, C, H, W, training, seed):
    # m >= 3: with 2 values per channel x_hat = ±1 and dx is ~eps-small, below the
    # resolution of central differences.
    assume(N * H * W >= 3)
    rng = data_rng(seed)
    bn = random_affine(L.BatchNorm2d(C), rng)
    warm_up_running_stats(bn, (max(N, 2), C, H, W), rng)
    bn.train(training)
    x = rng.standard_normal((N, C, H, W)) * 2 + 1
    assert_gradients(bn, x, seed=seed)


@settings(max_examples=100)
@given(N=st.integers(1, 6), C=sizes, L_=st.one_of(st.none(), sizes), training=st.booleans(),
       seed=seeds)
def test_batchnorm1d_gradcheck(N, C, L_, training, seed):
    shape = (N, C) if L_ is None else (N, C, L_)
    assume(N * (L_ or 1) >= 3)
    rng = data_rng(seed)
    bn = random_affine(L.BatchNorm1d(C), rng)
    warm_up_running_stats(bn, (max(N, 2),) + shape[1:], rng)
    bn.train(training)
    x = rng.standard_normal(shape) * 2 - 1
    assert_gradients(bn, x, seed=seed)


@settings(max_examples=100)
@given(batch=st.lists(sizes, min_size=0, max_size=2),
       normalized=st.lists(sizes, min_size=1, max_size=3),
       as_int=st.booleans(), training=st.booleans(), seed=seeds)
def test_layernorm_gradcheck(batch, normalized, as_int, training, seed):
    if as_int:
        normalized = normalized[-1:]
    m = int(np.prod(normalized))
    assume(m >= 3 or m == 1)  # m = 1: x_hat = 0 exactly, dx = 0 both ways
    rng = data_rng(seed)
    ln = random_affine(L.LayerNorm(normalized[0] if as_int else tuple(normalized)), rng)
    ln.train(training)
    x = rng.standard_normal(tuple(batch) + tuple(normalized))
    assert_gradients(ln, x, seed=seed)


@settings(max_examples=100)
@given(N=sizes, G=st.integers(1, 3), per_group=st.integers(1, 3),
       spatial=st.lists(sizes, min_size=0, max_size=2), training=st.booleans(), seed=seeds)
def test_groupnorm_gradcheck(N, G, per_group, spatial, training, seed):
    C = G * per_group
    m = per_group * int(np.prod(spatial))
    assume(m >= 3 or m == 1)
    rng = data_rng(seed)
    gn = random_affine(L.GroupNorm(G, C), rng)
    gn.train(training)
    x = rng.standard_normal((N, C) + tuple(spatial))
    assert_gradients(gn, x, seed=seed)


@settings(max_examples=100)
@given(N=sizes, C=sizes, H=sizes, W=st.integers(1, 5), affine=st.booleans(),
       training=st.booleans(), seed=seeds)
def test_instancenorm2d_gradcheck(N, C, H, W, affine, training, seed):
    assume(H * W >= 3)
    rng = data_rng(seed)
    inorm = random_affine(L.InstanceNorm2d(C, affine=affine), rng)
    inorm.train(training)
    x = rng.standard_normal((N, C, H, W)) * 3
    assert_gradients(inorm, x, seed=seed)


# -- BatchNorm: statistics, eval mode, the stepwise reference -----------------------------

@pytest.mark.parametrize("shape", [(5, 3, 4, 2), (6, 4), (3, 2, 5)])
def test_batchnorm_running_stats_follow_pytorch_rule(shape):
    rng = np.random.default_rng(0)
    layer = L.BatchNorm2d if len(shape) == 4 else L.BatchNorm1d
    C, momentum = shape[1], 0.3
    bn = layer(C, momentum=momentum)
    axes = (0,) + tuple(range(2, len(shape)))
    mean, var = np.zeros(C), np.ones(C)
    for step in range(3):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(np.float32)
        bn(x)
        x64 = x.astype(np.float64)
        mean = (1 - momentum) * mean + momentum * x64.mean(axis=axes)
        var = (1 - momentum) * var + momentum * x64.var(axis=axes, ddof=1)  # unbiased
    assert bn.running_mean.dtype == np.float32 and bn.running_var.dtype == np.float32
    np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, var, rtol=1e-5)
    assert set(bn.buffers()) == {"running_mean", "running_var"}


def test_batchnorm_normalizes_with_batch_stats_in_training():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5, 2)) * 3 + 2
    bn = random_affine(L.BatchNorm2d(3), rng)
    y = bn(x)
    gamma, beta = per_channel(bn.gamma.data, 4), per_channel(bn.beta.data, 4)
    np.testing.assert_allclose(y, gamma * numpy_norm(x, (0, 2, 3)) + beta, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 4, 2, 5), (7, 3), (2, 3, 4)])
def test_batchnorm_eval_uses_running_stats(shape):
    rng = np.random.default_rng(2)
    C = shape[1]
    bn = random_affine((L.BatchNorm2d if len(shape) == 4 else L.BatchNorm1d)(C), rng)
    bn.running_mean = rng.standard_normal(C).astype(np.float32)
    bn.running_var = rng.uniform(0.5, 2.0, C).astype(np.float32)
    before = (bn.running_mean.copy(), bn.running_var.copy())
    x = rng.standard_normal(shape)
    y_eval = bn.eval()(x)
    nd = len(shape)
    expected = (per_channel(bn.gamma.data, nd) * (x - per_channel(before[0], nd))
                / np.sqrt(per_channel(before[1], nd) + 1e-5) + per_channel(bn.beta.data, nd))
    np.testing.assert_allclose(y_eval, expected, rtol=1e-6, atol=1e-6)
    # eval does not touch the running statistics, and differs from the training output
    np.testing.assert_array_equal(bn.running_mean, before[0])
    np.testing.assert_array_equal(bn.running_var, before[1])
    assert not np.allclose(bn.train()(x), y_eval)
    # a single sample is fine in eval mode
    assert bn.eval()(x[:1]).shape == (1,) + shape[1:]


def test_batchnorm_eval_backward_is_affine():
    rng = np.random.default_rng(3)
    bn = random_affine(L.BatchNorm2d(3), rng).eval()
    bn.running_mean = rng.standard_normal(3).astype(np.float32)
    bn.running_var = rng.uniform(0.5, 2.0, 3).astype(np.float32)
    x = rng.standard_normal((2, 3, 4, 4))
    dout = rng.standard_normal(x.shape)
    bn(x)
    dx = bn.backward(dout)
    scale = per_channel(bn.gamma.data, 4) / np.sqrt(per_channel(bn.running_var, 4) + 1e-5)
    np.testing.assert_allclose(dx, dout * scale, rtol=1e-6)
    x_hat = (x - per_channel(bn.running_mean, 4)) / np.sqrt(per_channel(bn.running_var, 4)
                                                             + 1e-5)
    np.testing.assert_allclose(bn.gamma.grad, (dout * x_hat).sum(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bn.beta.grad, dout.sum(axis=(0, 2, 3)), rtol=1e-5)


def test_batchnorm_backward_uses_the_mode_of_its_forward():
    rng = np.random.default_rng(4)
    x, dout = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal((4, 2, 3, 3))
    bn = L.BatchNorm2d(2)
    bn(x)
    dx_train = bn.backward(dout)
    bn(x)
    bn.eval()  # switched between forward and backward: the cached forward decides
    np.testing.assert_array_equal(bn.backward(dout), dx_train)


@settings(max_examples=60)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), seed=seeds)
def test_batchnorm_train_step_equals_the_stepwise_twins(shape, seed):
    """BatchNorm1d/2d in training mode, forward and backward, against
    reference.batchnorm_forward and reference.batchnorm_backward_stepwise (float64)."""
    assume(np.prod(shape) // shape[1] >= 2)
    rng = np.random.default_rng(seed)
    C = shape[1]
    bn = random_affine((L.BatchNorm2d if len(shape) == 4 else L.BatchNorm1d)(C), rng)
    bn.astype(np.float64)
    x = rng.standard_normal(shape) * 3 + rng.standard_normal()
    dout = rng.standard_normal(shape)
    np.testing.assert_allclose(bn(x), batchnorm_forward(x, bn.gamma.data, bn.beta.data, bn.eps),
                               rtol=1e-10, atol=1e-10)
    dx = bn.backward(dout)
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward_stepwise(dout, x, bn.gamma.data, bn.eps)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bn.gamma.grad, dgamma_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.beta.grad, dbeta_ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=60)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), seed=seeds)
def test_normalize_backward_returns_dx_dgamma_dbeta_as_the_stepwise_twin(shape, seed):
    """Both closed forms return (dx, Σ dout·x_hat, Σ dout) = the twin's (dx, dgamma, dbeta)
    for BatchNorm's axes; normalize_backward_from_sums gives the same dx from the sums."""
    assume(np.prod(shape) // shape[1] >= 2)
    rng = np.random.default_rng(seed)
    axes = (0,) + tuple(range(2, len(shape)))
    x, dout = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
    gamma = rng.uniform(0.5, 2.0, shape[1])
    g = gamma.reshape((1, -1) + (1,) * (len(shape) - 2))
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward_stepwise(dout, x, gamma, 1e-5)
    x_hat, inv_std, _, _ = normalize(x, axes, 1e-5)
    x_c, _, _, _ = center(x, axes, 1e-5)
    m = x.size // shape[1]
    for dx, dgamma, dbeta in (normalize_backward(dout, x_hat, g * inv_std, axes),
                              normalize_backward_centered(dout, x_c, inv_std, g * inv_std, axes)):
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(dgamma.ravel(), dgamma_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dbeta.ravel(), dbeta_ref, rtol=1e-10, atol=1e-10)
    dx, dgamma, dbeta = normalize_backward(dout, x_hat, g * inv_std, axes)
    np.testing.assert_array_equal(
        normalize_backward_from_sums(dout, x_hat, g * inv_std, dgamma, dbeta, m), dx)


class MirrorComm:
    """A stand-in communicator of two ranks whose other rank holds the same batch: every
    allreduce doubles. SyncBatchNorm2d on x then is BatchNorm2d on the batch [x; x]."""

    size = 2

    def allreduce(self, array, op="sum"):
        array *= 2

    def allreduce_numbers(self, values):
        return [2 * v for v in values]


def test_sync_batchnorm_synced_path_is_batchnorm_of_the_whole_batch():
    rng = np.random.default_rng(16)
    x, dout = rng.standard_normal((3, 4, 5, 2)) * 2 + 1, rng.standard_normal((3, 4, 5, 2))
    sbn = random_affine(L.SyncBatchNorm2d(4, comm=MirrorComm()), rng).astype(np.float64)
    bn = L.BatchNorm2d(4).astype(np.float64)
    for p, q in zip(sbn.parameters(), bn.parameters(), strict=True):
        q.data = p.data.copy()
    y, y_all = sbn(x), bn(np.concatenate([x, x]))
    np.testing.assert_allclose(y, y_all[:3], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sbn.running_mean, bn.running_mean, rtol=1e-12)
    np.testing.assert_allclose(sbn.running_var, bn.running_var, rtol=1e-12)
    dx, dx_all = sbn.backward(dout), bn.backward(np.concatenate([dout, dout]))
    np.testing.assert_allclose(dx, dx_all[:3], rtol=1e-10, atol=1e-12)
    # gamma.grad and beta.grad are this rank's own sums: half the whole batch's.
    np.testing.assert_allclose(sbn.gamma.grad, bn.gamma.grad / 2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sbn.beta.grad, bn.beta.grad / 2, rtol=1e-10, atol=1e-12)
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward_stepwise(
        np.concatenate([dout, dout]), np.concatenate([x, x]), sbn.gamma.data, sbn.eps)
    np.testing.assert_allclose(dx, dx_ref[:3], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sbn.gamma.grad, dgamma_ref / 2, rtol=1e-10, atol=1e-10)


@pytest.mark.cupy
def test_sync_batchnorm_on_the_device_reads_nothing_back(strict_cupy):
    """On CuPy the synced path takes the count from the host path and always the exact second
    pass, so a step makes no device read (sync), and it is still BatchNorm of the whole batch
    (here float32, with a mean of 40 sigmas, where the shifted one-pass formula alone would
    lose the variance at the first step: K = 0)."""
    import minicnn as mc

    rng = np.random.default_rng(17)
    x = (rng.standard_normal((3, 4, 5, 2)) * 0.5 + 20).astype(np.float32)
    dout = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    sbn = random_affine(L.SyncBatchNorm2d(4, comm=MirrorComm()).to("cpu"), rng)
    bn = L.BatchNorm2d(4).to("cpu").astype(np.float64)   # the reference, on the host
    for p, q in zip(sbn.parameters(), bn.parameters(), strict=True):
        q.data = p.data.astype(np.float64)
    sbn.to("gpu")
    x_dev, dout_dev = mc.backend.to_device(x), mc.backend.to_device(dout)
    with strict_cupy.record() as rec:
        for _ in range(2):
            y = sbn(x_dev)
            dx = sbn.backward(dout_dev)
    assert rec.syncs == 0, rec.report("sync")
    x64, dout64 = x.astype(np.float64), dout.astype(np.float64)
    for _ in range(2):
        y_all = bn(np.concatenate([x64, x64]))
        dx_all = bn.backward(np.concatenate([dout64, dout64]))
    np.testing.assert_allclose(mc.backend.to_numpy(y), y_all[:3], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mc.backend.to_numpy(dx), dx_all[:3], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(mc.backend.to_numpy(sbn.running_var), bn.running_var,
                               rtol=1e-4)


@settings(max_examples=60)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4), seed=seeds,
       mean=st.floats(-50, 50), std=st.floats(0.01, 20))
def test_backward_from_centered_input_equals_backward_from_x_hat(shape, seed, mean, std):
    """BatchNorm keeps x - mu instead of x_hat: its backward (``normalize_backward_centered``)
    equals ``normalize_backward`` from x_hat, in float64, for any shape and offset."""
    rng = np.random.default_rng(seed)
    axes = (0,) + tuple(range(2, len(shape)))
    x = rng.standard_normal(shape) * std + mean
    dout = rng.standard_normal(shape)
    scale = rng.uniform(-2, 2, (1, shape[1]) + (1,) * (len(shape) - 2))
    x_hat, inv_std, mu, var = normalize(x, axes, 1e-5)
    x_c, inv_std_c, mu_c, var_c = center(x, axes, 1e-5)
    np.testing.assert_allclose(x_c * inv_std_c, x_hat, rtol=1e-12, atol=1e-12)
    expected = normalize_backward(dout, x_hat, scale * inv_std, axes)
    got = normalize_backward_centered(dout, x_c, inv_std_c, scale * inv_std_c, axes)
    for g, e, name in zip(got, expected, ("dx", "sum_dout_x_hat", "sum_dout"), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-9, err_msg=name)


# -- LayerNorm, GroupNorm, InstanceNorm values --------------------------------------------

@pytest.mark.parametrize("normalized_shape", [5, (5,), (4, 5), (3, 4, 5)])
def test_layernorm_values(normalized_shape):
    rng = np.random.default_rng(6)
    ln = random_affine(L.LayerNorm(normalized_shape), rng)
    k = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    assert ln.gamma.shape == ln.beta.shape == (3, 4, 5)[3 - k:]
    x = rng.standard_normal((2, 3, 4, 5)) * 2 + 1
    y = ln(x)
    expected = ln.gamma.data * numpy_norm(x, tuple(range(4 - k, 4))) + ln.beta.data
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ln.eval()(x), y)  # no running statistics


@pytest.mark.parametrize("shape, G", [((2, 6, 3, 4), 3), ((3, 4), 2), ((2, 6, 5), 2)])
def test_groupnorm_values(shape, G):
    rng = np.random.default_rng(7)
    C = shape[1]
    gn = random_affine(L.GroupNorm(G, C), rng)
    x = rng.standard_normal(shape) * 2 + 1
    y = gn(x)
    grouped = x.reshape(shape[0], G, -1)                       # (N, G, C/G * spatial)
    x_hat = numpy_norm(grouped, (2,)).reshape(shape)
    expected = per_channel(gn.gamma.data, len(shape)) * x_hat + per_channel(gn.beta.data,
                                                                           len(shape))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(gn.eval()(x), y)


@pytest.mark.parametrize("affine", [False, True])
def test_instancenorm_values(affine):
    rng = np.random.default_rng(8)
    inorm = random_affine(L.InstanceNorm2d(3, affine=affine), rng)
    assert len(inorm.parameters()) == (2 if affine else 0)
    x = rng.standard_normal((2, 3, 4, 5)) * 2 + 1
    y = inorm(x)
    expected = numpy_norm(x, (2, 3))
    if affine:
        expected = per_channel(inorm.gamma.data, 4) * expected + per_channel(inorm.beta.data, 4)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(inorm.eval()(x), y)


def _forward_backward(layer, x, dout):
    y = layer(x)
    return y, layer.backward(dout)


def test_groupnorm_one_group_equals_layernorm_over_chw():
    rng = np.random.default_rng(9)
    N, C, H, W = 3, 4, 3, 5
    gn = random_affine(L.GroupNorm(1, C), rng).astype(np.float64)
    ln = L.LayerNorm((C, H, W)).astype(np.float64)
    ln.gamma.data = np.broadcast_to(gn.gamma.data[:, None, None], (C, H, W)).copy()
    ln.beta.data = np.broadcast_to(gn.beta.data[:, None, None], (C, H, W)).copy()
    x, dout = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, C, H, W))
    y_gn, dx_gn = _forward_backward(gn, x, dout)
    y_ln, dx_ln = _forward_backward(ln, x, dout)
    np.testing.assert_allclose(y_gn, y_ln, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx_gn, dx_ln, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gn.gamma.grad, ln.gamma.grad.sum(axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(gn.beta.grad, ln.beta.grad.sum(axis=(1, 2)), rtol=1e-10)


def test_groupnorm_one_channel_per_group_equals_instancenorm():
    rng = np.random.default_rng(10)
    N, C, H, W = 2, 3, 4, 4
    gn = random_affine(L.GroupNorm(C, C), rng).astype(np.float64)
    inorm = L.InstanceNorm2d(C, affine=True).astype(np.float64)
    inorm.gamma.data, inorm.beta.data = gn.gamma.data.copy(), gn.beta.data.copy()
    x, dout = rng.standard_normal((N, C, H, W)), rng.standard_normal((N, C, H, W))
    y_gn, dx_gn = _forward_backward(gn, x, dout)
    y_in, dx_in = _forward_backward(inorm, x, dout)
    np.testing.assert_allclose(y_gn, y_in, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx_gn, dx_in, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gn.gamma.grad, inorm.gamma.grad, rtol=1e-10)
    np.testing.assert_allclose(gn.beta.grad, inorm.beta.grad, rtol=1e-10)


# -- every layer: dtype, dout untouched, memory layout, parameters -------------------------

def all_layers():
    """(name, factory, input shape): one of each layer and input kind."""
    return [
        ("BatchNorm2d", lambda: L.BatchNorm2d(3), (4, 3, 5, 6)),
        ("BatchNorm1d", lambda: L.BatchNorm1d(3), (8, 3)),
        ("BatchNorm1d-L", lambda: L.BatchNorm1d(3), (4, 3, 5)),
        ("LayerNorm", lambda: L.LayerNorm((5, 6)), (4, 3, 5, 6)),
        ("GroupNorm", lambda: L.GroupNorm(3, 6), (4, 6, 5, 3)),
        ("InstanceNorm2d", lambda: L.InstanceNorm2d(3), (4, 3, 5, 6)),
        ("InstanceNorm2d-affine", lambda: L.InstanceNorm2d(3, affine=True), (4, 3, 5, 6)),
    ]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name, factory, shape", all_layers(), ids=[c[0] for c in all_layers()])
def test_float32_preserved_and_dout_not_mutated(xp, name, factory, shape, training):
    layer = factory().train(training)
    rng = np.random.default_rng(11)
    x = xp.asarray(rng.standard_normal(shape), dtype=xp.float32)
    dout = xp.asarray(rng.standard_normal(shape), dtype=xp.float32)
    dout_before = dout.copy()
    y = layer(x)
    dx = layer.backward(dout)
    assert y.dtype == xp.float32 and dx.dtype == xp.float32
    assert y.shape == dx.shape == shape
    assert bool(xp.all(dout == dout_before))
    for p in layer.parameters():
        assert p.data.dtype == xp.float32 and p.grad.dtype == xp.float32
        assert p.grad.shape == p.shape
    for value in layer.buffers().values():
        assert value.dtype == xp.float32


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name, factory, shape",
                         [c for c in all_layers() if len(c[2]) == 4],
                         ids=[c[0] for c in all_layers() if len(c[2]) == 4])
def test_channels_last_input_matches_contiguous(name, factory, shape, training):
    rng = np.random.default_rng(12)
    N, C, H, W = shape
    x_nhwc = rng.standard_normal((N, H, W, C))
    x_view = x_nhwc.transpose(0, 3, 1, 2)                       # (N, C, H, W), NHWC in memory
    assert not x_view.flags.c_contiguous
    x = np.ascontiguousarray(x_view)
    dout = rng.standard_normal(shape)
    a, b = random_affine(factory(), rng), factory()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        q.data = p.data.copy()
    y_a, dx_a = _forward_backward(a.train(training), x, dout)
    y_b, dx_b = _forward_backward(b.train(training), x_view, dout)
    np.testing.assert_allclose(y_b, y_a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx_b, dx_a, rtol=1e-10, atol=1e-12)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-10, atol=1e-12)


def stored_nhwc(a) -> bool:
    """The (N, C, H, W) array ``a`` is stored NHWC (channels fastest)."""
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def nhwc_view(xp, a):
    """The host array ``a`` (N, C, H, W) on ``xp``, stored NHWC and viewed as (N, C, H, W)."""
    return xp.asarray(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("dout_layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name, factory, shape",
                         [c for c in all_layers() if len(c[2]) == 4],
                         ids=[c[0] for c in all_layers() if len(c[2]) == 4])
def test_channels_last_stays_channels_last(xp, name, factory, shape, training, dout_layout):
    # The next convolution relies on its input keeping the NHWC memory order. On CuPy (and
    # the strict stand-in) a ufunc allocates its output C-ordered, so a layer keeps the
    # layout only by writing into arrays allocated like x: y follows x, and dx follows x
    # whatever dout's layout (a Flatten's dout is NCHW). The numbers are NumPy's on an NCHW
    # copy of the same data.
    rng = np.random.default_rng(13)
    x_np = rng.standard_normal(shape).astype(np.float32)
    dout_np = rng.standard_normal(shape).astype(np.float32)
    reference = random_affine(factory(), np.random.default_rng(3)).train(training).to("cpu")
    y_ref, dx_ref = reference(x_np), reference.backward(dout_np)
    layer = random_affine(factory(), np.random.default_rng(3)).train(training)
    layer.to("cpu" if xp is np else "gpu")
    dout = nhwc_view(xp, dout_np) if dout_layout == "nhwc" else xp.asarray(dout_np)
    y = layer(nhwc_view(xp, x_np))
    dx = layer.backward(dout)
    assert stored_nhwc(y), f"{name}: channels-last x, NCHW y"
    assert stored_nhwc(dx), f"{name}: channels-last x, {dout_layout} dout, NCHW dx"
    np.testing.assert_allclose(to_np(y), y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_np(dx), dx_ref, rtol=1e-4, atol=1e-5)
    for p, q in zip(layer.parameters(), reference.parameters(), strict=True):
        np.testing.assert_allclose(to_np(p.grad), q.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape, axes", [
    ((4, 3, 5, 6), (0, 2, 3)), ((4, 3, 5, 6), (2, 3)), ((4, 3, 5, 6), (1, 2, 3)),
    ((4, 3, 5, 6), (3,)), ((6, 5), (0,)), ((6, 5), (1,)), ((2, 2, 3, 5, 4), (2, 3, 4))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reduce_sum_matches_numpy(shape, axes, channels_last):
    rng = np.random.default_rng(14)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    if channels_last and len(shape) == 4:
        a = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(reduce_sum(a, axes), a.sum(axis=axes, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(reduce_sum(a, axes, b), (a * b).sum(axis=axes, keepdims=True),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_float32_statistics_accurate(channels_last):
    # 65536 values per channel around 5: one running float32 sum per channel would be off by
    # ~1e-5 relative; the statistics must stay within a few float32 ulps of the float64 ones.
    rng = np.random.default_rng(15)
    N, C, H, W = 64, 4, 32, 32
    x64 = rng.standard_normal((N, H, W, C)) + 5.0
    x = x64.astype(np.float32).transpose(0, 3, 1, 2)
    if not channels_last:
        x = np.ascontiguousarray(x)
    bn = L.BatchNorm2d(C, momentum=1.0)    # momentum 1: the running stats are this batch's
    bn(x)
    xd = x.astype(np.float64)
    m = N * H * W
    mu = xd.mean(axis=(0, 2, 3))
    var = xd.var(axis=(0, 2, 3)) * m / (m - 1)
    np.testing.assert_allclose(bn.running_mean, mu, rtol=2e-6)
    np.testing.assert_allclose(bn.running_var, var, rtol=4e-6)


def test_batchnorm_old_import_paths_still_work():
    """BatchNorm moved to layers/batchnorm.py; its old names stay importable."""
    from minicnn.layers import batchnorm, norm

    assert norm.BatchNorm2d is batchnorm.BatchNorm2d is L.BatchNorm2d
    assert norm.BatchNorm1d is batchnorm.BatchNorm1d is L.BatchNorm1d


def test_parameters_in_order():
    for layer in (L.BatchNorm2d(4), L.BatchNorm1d(4), L.LayerNorm(4), L.GroupNorm(2, 4),
                  L.InstanceNorm2d(4, affine=True)):
        params = layer.parameters()
        assert [p.name for p in params] == ["gamma", "beta"]
        np.testing.assert_array_equal(params[0].data, np.ones(4, np.float32))
        np.testing.assert_array_equal(params[1].data, np.zeros(4, np.float32))
    bn = L.BatchNorm2d(4)
    np.testing.assert_array_equal(bn.running_mean, np.zeros(4))
    np.testing.assert_array_equal(bn.running_var, np.ones(4))
    assert L.InstanceNorm2d(4).parameters() == []


# -- errors -------------------------------------------------------------------------------

def test_batchnorm_errors():
    with pytest.raises(ValueError, match=r"BatchNorm2d.*\(N, 3, H, W\).*\(2, 3, 4\)"):
        L.BatchNorm2d(3)(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"BatchNorm2d.*\(N, 3, H, W\).*3 channels"):
        L.BatchNorm2d(3)(np.zeros((2, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"BatchNorm1d.*\(N, 3\) or \(N, 3, L\)"):
        L.BatchNorm1d(3)(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"BatchNorm1d.*3 channels"):
        L.BatchNorm1d(3)(np.zeros((2, 5)))
    with pytest.raises(TypeError, match="BatchNorm2d.*floating-point"):
        L.BatchNorm2d(3)(np.zeros((2, 3, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="BatchNorm2d.*more than 1 value per channel"):
        L.BatchNorm2d(3)(np.zeros((1, 3, 1, 1)))
    with pytest.raises(ValueError, match="BatchNorm1d.*more than 1 value per channel"):
        L.BatchNorm1d(3)(np.zeros((1, 3)))
    L.BatchNorm2d(3)(np.ones((1, 3, 2, 1)))             # m = 2 per channel: fine
    L.BatchNorm1d(3).eval()(np.ones((1, 3)))            # eval: running stats, fine
    with pytest.raises(ValueError, match="BatchNorm2d.*num_features"):
        L.BatchNorm2d(0)
    with pytest.raises(ValueError, match="BatchNorm2d.*momentum"):
        L.BatchNorm2d(3, momentum=1.5)


def test_layernorm_errors():
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\*, 4, 5\).*\(2, 5, 4\)"):
        L.LayerNorm((4, 5))(np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(\*, 4, 5\)"):
        L.LayerNorm((4, 5))(np.zeros(5))
    with pytest.raises(TypeError, match="LayerNorm.*floating-point"):
        L.LayerNorm(4)(np.zeros((2, 4), dtype=np.int32))
    with pytest.raises(ValueError, match="LayerNorm.*empty"):
        L.LayerNorm(())


def test_groupnorm_errors():
    with pytest.raises(ValueError, match=r"GroupNorm.*divisible"):
        L.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm.*\(N, 6, \*\).*6 channels"):
        L.GroupNorm(3, 6)(np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"GroupNorm.*\(N, 6, \*\)"):
        L.GroupNorm(3, 6)(np.zeros(6))
    with pytest.raises(TypeError, match="GroupNorm.*floating-point"):
        L.GroupNorm(3, 6)(np.zeros((2, 6), dtype=bool))


def test_instancenorm_errors():
    with pytest.raises(ValueError, match=r"InstanceNorm2d.*\(N, 3, H, W\).*\(3, 4, 4\)"):
        L.InstanceNorm2d(3)(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"InstanceNorm2d.*3 channels"):
        L.InstanceNorm2d(3)(np.zeros((2, 2, 4, 4)))
    with pytest.raises(TypeError, match="InstanceNorm2d.*floating-point"):
        L.InstanceNorm2d(3)(np.zeros((2, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="InstanceNorm2d.*more than 1 spatial element"):
        L.InstanceNorm2d(3)(np.zeros((2, 3, 1, 1)))
