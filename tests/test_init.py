"""Weight initialisers: the variance formulas hold statistically, shapes, dtype, seeding, get()."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import init

# name -> the variance it must have for given (fan_in, fan_out)
VARIANCE = {
    "glorot_uniform": lambda fi, fo: 2.0 / (fi + fo),
    "glorot_normal": lambda fi, fo: 2.0 / (fi + fo),
    "he_uniform": lambda fi, fo: 2.0 / fi,
    "he_normal": lambda fi, fo: 2.0 / fi,
}
# Relative standard deviation of a sample variance of n draws: sqrt((κ - 1) / n), with the
# kurtosis κ = 3 for a normal and 9/5 for a uniform.
KURTOSIS = {"glorot_uniform": 1.8, "he_uniform": 1.8, "glorot_normal": 3.0, "he_normal": 3.0}
N_DRAWS = 20_000


@settings(max_examples=100)
@given(name=st.sampled_from(sorted(VARIANCE)), fan_in=st.integers(1, 5000),
       fan_out=st.integers(1, 5000), seed=st.integers(0, 2**31 - 1))
def test_variance_matches_formula(name, fan_in, fan_out, seed):
    w = init.get(name)((N_DRAWS,), fan_in, fan_out, np.random.default_rng(seed))
    want = VARIANCE[name](fan_in, fan_out)
    rel_sd = math.sqrt((KURTOSIS[name] - 1.0) / N_DRAWS)
    # 6 standard deviations: a wrong formula (a factor 2 or 3 off) is far outside.
    assert abs(np.var(w.astype(np.float64)) / want - 1.0) < 6 * rel_sd
    assert abs(np.mean(w.astype(np.float64))) < 6 * math.sqrt(want / N_DRAWS)


@pytest.mark.parametrize("name, bound", [
    ("glorot_uniform", lambda fi, fo: math.sqrt(6.0 / (fi + fo))),
    ("he_uniform", lambda fi, fo: math.sqrt(6.0 / fi)),
])
def test_uniform_bounds(name, bound):
    a = bound(27, 64)
    w = init.get(name)((64, 3, 3, 3), 27, 64, np.random.default_rng(0)).astype(np.float64)
    assert np.abs(w).max() <= a * (1 + 1e-6)
    assert np.abs(w).max() > 0.95 * a       # uses the whole interval
    assert (w < 0).any() and (w > 0).any()


def test_normal_draws_are_gaussian_shaped():
    # About 68.3 % of N(0, σ²) lies within one σ; a uniform of the same variance has 57.7 %.
    std = math.sqrt(2.0 / 300)
    w = init.he_normal((100_000,), 300, 10, np.random.default_rng(1))
    inside = np.mean(np.abs(w) < std)
    assert abs(inside - 0.6827) < 0.01


@pytest.mark.parametrize("name", sorted(init.INITIALIZERS))
@pytest.mark.parametrize("shape", [(5,), (4, 7), (8, 3, 3, 3), (2, 1, 5, 2)])
def test_shapes_and_dtype(name, shape):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    w = init.get(name)(shape, fan_in, shape[0])
    assert isinstance(w, np.ndarray)
    assert w.shape == shape
    assert w.dtype == np.float32


def test_zeros_and_ones():
    np.testing.assert_array_equal(init.zeros((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(init.ones((4,), 4, 4), np.ones(4))


def test_set_seed_reproducible():
    init.set_seed(123)
    a = [init.he_normal((3, 4), 4, 3), init.glorot_uniform((5,), 5, 5)]
    init.set_seed(123)
    b = [init.he_normal((3, 4), 4, 3), init.glorot_uniform((5,), 5, 5)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    init.set_seed(124)
    assert not np.array_equal(init.he_normal((3, 4), 4, 3), a[0])
    # Successive draws differ (the generator advances).
    init.set_seed(123)
    first, second = init.he_normal((3, 4), 4, 3), init.he_normal((3, 4), 4, 3)
    assert not np.array_equal(first, second)


def test_get_rng_is_the_module_generator():
    init.set_seed(7)
    rng = init.get_rng()
    state = rng.bit_generator.state
    w1 = init.he_uniform((6,), 6, 6)
    rng.bit_generator.state = state           # rewinding the module generator replays
    np.testing.assert_array_equal(init.he_uniform((6,), 6, 6), w1)
    init.set_seed(7)
    assert init.get_rng() is not rng


def test_explicit_rng_is_used_and_module_generator_untouched():
    init.set_seed(9)
    before = init.get_rng().bit_generator.state
    w = init.glorot_normal((10,), 10, 10, np.random.default_rng(42))
    w_again = init.glorot_normal((10,), 10, 10, np.random.default_rng(42))
    np.testing.assert_array_equal(w, w_again)
    assert init.get_rng().bit_generator.state == before


def test_get_by_name_alias_case_and_callable():
    assert init.get("he_normal") is init.he_normal
    assert init.get("kaiming_normal") is init.he_normal
    assert init.get("xavier_uniform") is init.glorot_uniform
    assert init.get("Glorot_Normal") is init.glorot_normal
    assert init.get("HE_UNIFORM") is init.he_uniform

    def custom(shape, fan_in, fan_out, rng=None):
        return np.full(shape, 0.5, dtype=np.float32)

    assert init.get(custom) is custom


@pytest.mark.parametrize("bad", ["he", "normal", "", None, 3])
def test_get_unknown_name_lists_choices(bad):
    with pytest.raises(ValueError, match="unknown initializer.*he_normal"):
        init.get(bad)
