"""Dropout: gradient check in train mode (replayed mask), statistics, eval identity, errors;
its random state (one host generator: checkpoints, copies and gradcheck replay the masks on
both backends) and the counter-based bits of the device path."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.backend import to_numpy
from minicnn.functional.random_bits import random_bits
from minicnn.gradcheck import assert_gradients

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@settings(max_examples=100)
@given(shape=shapes, p=st.sampled_from([0.0, 0.1, 0.5, 0.9]), train=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_dropout_gradcheck(shape, p, train, seed):
    layer = L.Dropout(p, seed=seed).train(train)
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(layer, x, seed=seed)


def test_dropout_backward_uses_forward_mask():
    layer = L.Dropout(0.5, seed=3)
    x = np.ones((50, 40), dtype=np.float32)
    y = layer(x)
    dout = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, dout * y)  # y = mask / (1 - p) for x = 1
    assert set(np.unique(y)) == {0.0, 2.0}


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_dropout_statistics(p):
    x = np.random.default_rng(1).uniform(0.5, 1.5, size=(400, 1000)).astype(np.float32)
    y = L.Dropout(p, seed=123)(x)
    kept = float(np.mean(y != 0))
    # 4e5 Bernoulli draws: the std of the kept fraction is <= 0.0008.
    assert abs(kept - (1 - p)) < 0.005
    np.testing.assert_allclose(y[y != 0], (x / (1 - p))[y != 0], rtol=1e-6)
    # E[y] = x: the inverted scaling preserves the mean.
    assert abs(float(y.mean(dtype=np.float64)) / float(x.mean(dtype=np.float64)) - 1) < 0.02


def test_dropout_eval_and_p0_are_identity(xp):
    x = xp.asarray(np.random.default_rng(2).standard_normal((8, 6)), dtype=xp.float32)
    dout = xp.ones_like(x)
    layer = L.Dropout(0.5).eval()
    assert layer(x) is x and layer.backward(dout) is dout
    layer = L.Dropout(0.0)
    assert layer(x) is x and layer.backward(dout) is dout


def test_dropout_float32_seeded_and_dout_untouched(xp):
    x = xp.asarray(np.random.default_rng(2).standard_normal((16, 9)), dtype=xp.float32)
    dout = xp.asarray(np.random.default_rng(3).standard_normal((16, 9)), dtype=xp.float32)
    dout_before = dout.copy()
    a, b = L.Dropout(0.3, seed=7), L.Dropout(0.3, seed=7)
    ya, yb = a(x), b(x)
    assert ya.dtype == xp.float32 and a.mask.dtype == xp.float32
    assert bool(xp.all(ya == yb))  # same seed, same masks
    assert not bool(xp.all(a(x) == ya))  # a fresh mask at the next forward
    dx = a.backward(dout)
    assert dx.dtype == xp.float32
    assert bool(xp.all(dout == dout_before))


def test_dropout_errors():
    for p in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"Dropout: p .*\[0, 1\)"):
            L.Dropout(p)
    with pytest.raises(TypeError, match="Dropout.*floating-point"):
        L.Dropout(0.5)(np.arange(4))


# -- the random state: one host generator, replayable on both backends -------------------------

def _masks(layer, x, n=3):
    """The scaled masks of ``n`` training forwards, as host arrays."""
    out = []
    for _ in range(n):
        layer(x)
        out.append(to_numpy(layer.mask))
    return out


def test_dropout_rng_states_replay_the_same_masks(xp):
    """A checkpoint's rng_states() restores the masks on both backends (on CuPy the mask is
    built on the device from a seed drawn from the same host generator)."""
    model = L.Sequential(L.Linear(6, 7), L.Dropout(0.5, seed=11))
    x = xp.asarray(np.random.default_rng(0).standard_normal((9, 6)), dtype=xp.float32)
    states = model.rng_states()
    assert list(states) == ["layers.1.rng"]
    first = _masks(model.layers[1], model.layers[0](x))
    model.set_rng_states(states)
    again = _masks(model.layers[1], model.layers[0](x))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # but a fresh mask at every forward


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_dropout_copies_after_forward_continue_the_same_stream(xp, how):
    """No device state to copy: a deep copy or an unpickled layer, taken after a forward,
    draws the same next masks as the original."""
    layer = L.Dropout(0.3, seed=5)
    x = xp.asarray(np.random.default_rng(1).standard_normal((4, 50)), dtype=xp.float32)
    layer(x)
    clone = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert clone.cache is None  # the mask of the last forward is not carried over
    for a, b in zip(_masks(layer, x), _masks(clone, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dropout_gradcheck_replays_the_mask(xp):
    """Linear + Dropout in training mode: the gradient check replays the host generator, so
    every forward of the finite differences sees the backward's mask, on both backends."""
    model = L.Sequential(L.Linear(5, 8), L.Dropout(0.5, seed=2), L.Linear(8, 3))
    x = xp.asarray(np.random.default_rng(3).standard_normal((4, 5)))
    assert_gradients(model, x, seed=4)


def _lowbias32(v):
    """Chris Wellons' lowbias32, one Python int at a time (the reference for random_bits)."""
    m = 0xFFFFFFFF
    v ^= v >> 16
    v = (v * 0x7FEB352D) & m
    v ^= v >> 15
    v = (v * 0x846CA68B) & m
    return v ^ (v >> 16)


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 2**40 + 7, 2**64 - 1])
def test_random_bits_match_the_formula_on_both_backends(xp, seed):
    shape = (3, 4, 5)
    bits = random_bits(xp, shape, seed)
    assert bits.dtype == xp.uint32 and bits.shape == shape
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    expected = [_lowbias32(_lowbias32(i ^ k0) ^ k1) for i in range(60)]
    np.testing.assert_array_equal(to_numpy(bits).ravel(), np.array(expected, np.uint32))


def test_random_bits_look_uniform_and_seeds_independent():
    a = random_bits(np, (1000, 1000), 123).astype(np.float64) / 2**32
    b = random_bits(np, (1000, 1000), 124).astype(np.float64) / 2**32
    # 1e6 uniforms: mean 1/2 and variance 1/12 within ~6 standard errors.
    assert abs(a.mean() - 0.5) < 6 * np.sqrt(1 / 12 / a.size)
    assert abs(a.var() - 1 / 12) < 6 * np.sqrt(1 / 180 / a.size)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 6 / np.sqrt(a.size)
    counts = np.bincount((a.ravel() * 16).astype(np.int64), minlength=16)
    expected = a.size / 16
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50  # 15 degrees of freedom: P(chi2 > 50) ~ 1e-5


def test_random_bits_refuse_too_large_a_draw():
    with pytest.raises(ValueError, match=r"random_bits: at most 2\*\*32 - 1 elements"):
        random_bits(np, (2**16, 2**16), 0)


def test_dropout_statistics_on_the_device_path(xp):
    """The keep rate 1 - p holds on the device path too (the counter-based mask)."""
    x = xp.ones((200, 1000), dtype=xp.float32)
    for p in (0.1, 0.5, 0.8):
        kept = float((to_numpy(L.Dropout(p, seed=9)(x)) != 0).mean())
        assert abs(kept - (1 - p)) < 0.005
