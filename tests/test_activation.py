"""Activations: gradient checks over random shapes, dtype preservation, values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.functional import special
from minicnn.functional.special import erf, erfc, normal_cdf
from minicnn.gradcheck import assert_gradients
from tests.conftest import away_from_zero

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)


@settings(max_examples=100)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_relu_gradcheck(shape, seed):
    x = away_from_zero(np.random.default_rng(seed).standard_normal(shape))
    assert_gradients(L.ReLU(), x, seed=seed)


def test_relu_values_and_dtype(xp):
    x = xp.asarray([[-2.0, 0.0, 3.0]], dtype=xp.float32)
    y = L.ReLU()(x)
    assert y.dtype == xp.float32
    np.testing.assert_array_equal(np.asarray(y.get() if hasattr(y, "get") else y), [[0, 0, 3]])


def test_relu_rejects_integer_input():
    with pytest.raises(TypeError, match="ReLU.*floating-point"):
        L.ReLU()(np.arange(3))


# -- the other activations ------------------------------------------------------------------
SMOOTH = {
    "sigmoid": lambda: L.Sigmoid(),
    "tanh": lambda: L.Tanh(),
    "silu": lambda: L.SiLU(),
    "gelu": lambda: L.GELU(),
    "gelu_tanh": lambda: L.GELU(approximate="tanh"),
}
ALL = {**SMOOTH, "relu": lambda: L.ReLU(), "leaky_relu": lambda: L.LeakyReLU(0.1)}


def _gelu_exact(x):
    return x * 0.5 * (1.0 + sp.erf(x / np.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


REFERENCE = {
    "sigmoid": sp.expit,
    "tanh": np.tanh,
    "silu": lambda x: x * sp.expit(x),
    "gelu": _gelu_exact,
    "gelu_tanh": _gelu_tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.1 * x),
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
@settings(max_examples=100)
@given(shape=shapes, scale=st.sampled_from([0.5, 2.0, 5.0]), seed=st.integers(0, 2**31 - 1))
def test_smooth_activation_gradcheck(name, shape, scale, seed):
    # Up to |x| = 5: into the tails, but not so far that f' (e.g. σ'(14) ≈ 1e-6) drowns in the
    # central difference's rounding error ε |f| / h ≈ 1e-10 (a limit of the check, not of f').
    x = np.random.default_rng(seed).uniform(-scale, scale, shape)
    assert_gradients(SMOOTH[name](), x, seed=seed)


@settings(max_examples=100)
@given(shape=shapes, slope=st.floats(-1.0, 3.0), seed=st.integers(0, 2**31 - 1))
def test_leaky_relu_gradcheck_random_slopes(shape, slope, seed):
    x = away_from_zero(np.random.default_rng(seed).standard_normal(shape))
    assert_gradients(L.LeakyReLU(negative_slope=slope), x, seed=seed)


@pytest.mark.parametrize("name", sorted(ALL))
def test_values_match_reference(name):
    x = np.linspace(-12.0, 12.0, 2001)
    np.testing.assert_allclose(ALL[name]()(x), REFERENCE[name](x), rtol=1e-13, atol=1e-15)
    # float32: computed in float32, accurate to float32 precision.
    y32 = ALL[name]()(x.astype(np.float32))
    np.testing.assert_allclose(y32, REFERENCE[name](x), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("name", sorted(ALL))
def test_float32_stays_float32_and_dout_untouched(name, xp):
    rng = np.random.default_rng(0)
    x = xp.asarray(away_from_zero(rng.standard_normal((4, 3, 5))), dtype=xp.float32)
    dout = xp.asarray(rng.standard_normal((4, 3, 5)), dtype=xp.float32)
    dout_before = dout.copy()
    layer = ALL[name]()
    y = layer(x)
    dx = layer.backward(dout)
    assert y.dtype == xp.float32 and dx.dtype == xp.float32
    assert y.shape == x.shape and dx.shape == x.shape
    assert bool(xp.all(dout == dout_before))


@pytest.mark.parametrize("name", sorted(ALL))
def test_channels_last_stays_channels_last(name):
    # Conv2d hands over NHWC memory viewed as (N, C, H, W); the next conv relies on it.
    rng = np.random.default_rng(1)
    x = away_from_zero(rng.standard_normal((2, 4, 5, 3))).astype(np.float32).transpose(0, 3, 1, 2)
    dout = rng.standard_normal((2, 4, 5, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    layer = ALL[name]()
    y = layer(x)
    dx = layer.backward(dout)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    assert dx.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_allclose(y, REFERENCE[name](x.astype(np.float64)), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("slope", [-0.5, 0.0, 1.0, 2.5])
def test_leaky_relu_any_slope(slope):
    x = np.array([-3.0, -0.5, 0.5, 3.0])
    layer = L.LeakyReLU(slope)
    np.testing.assert_array_equal(layer(x), np.where(x > 0, x, slope * x))
    dx = layer.backward(np.full(4, 2.0))
    np.testing.assert_array_equal(dx, np.where(x > 0, 2.0, 2.0 * slope))


@pytest.mark.parametrize("name", sorted(ALL))
def test_zero_dim_input(name):
    # The in-place steps must also work when NumPy turns a 0-d result into a scalar.
    for v in (-1.5, 2.0):
        layer = ALL[name]()
        y = layer(np.array(v))
        dx = layer.backward(np.array(3.0))
        np.testing.assert_allclose(y, REFERENCE[name](np.array([v]))[0], rtol=1e-12)
        assert np.shape(y) == () and np.shape(dx) == ()
        assert np.isfinite(dx)


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_inputs_no_overflow(name, dtype):
    x = np.array([-1e4, -1e3, -100.0, -30.0, 30.0, 100.0, 1e3, 1e4], dtype=dtype)
    layer = ALL[name]()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        y = layer(x)
        dx = layer.backward(np.ones_like(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    if name in ("sigmoid", "tanh"):
        lo = 0.0 if name == "sigmoid" else -1.0
        np.testing.assert_array_equal(y[[0, -1]], [lo, 1.0])
    else:  # ReLU-like: y -> 0 on the left, y -> x on the right
        np.testing.assert_allclose(y[-4:], x[-4:], rtol=1e-6)
        np.testing.assert_allclose(y[0], 0.0 if name != "leaky_relu" else -1e3, rtol=1e-6)


def test_erf_erfc_match_scipy_float64():
    x = np.concatenate([np.linspace(-26.0, 26.0, 100_001), np.geomspace(1e-300, 1.0, 500)])
    x = np.concatenate([x, -x])
    np.testing.assert_allclose(erf(x), sp.erf(x), rtol=2e-15, atol=0)
    # erfc keeps its relative accuracy in the right tail, where 1 - erf(x) would be 0.
    np.testing.assert_allclose(erfc(x), sp.erfc(x), rtol=1e-13, atol=0)
    assert erfc(np.array([10.0]))[0] > 0 and 1.0 - erf(np.array([10.0]))[0] == 0.0


def test_erf_float32_and_infinities():
    x = np.linspace(-8.0, 8.0, 10_001).astype(np.float32)
    assert erf(x).dtype == np.float32 and erfc(x).dtype == np.float32
    np.testing.assert_allclose(erf(x), sp.erf(x.astype(np.float64)), rtol=0, atol=3e-7)
    np.testing.assert_allclose(erfc(np.array([-np.inf, 0.0, np.inf])), [2.0, 1.0, 0.0])


def test_erf_erfc_float32_relative_accuracy_over_a_wide_range():
    # Every range of the approximation (|x| <= 0.5, 0.5 < |x| <= 4, |x| > 4), tiny |x| where
    # erf(x) ≈ 2x/√π, and erfc's right tail while it is a normal float32 number (x < 9.2).
    x = np.concatenate([np.linspace(-9.0, 9.0, 200_001), np.geomspace(1e-30, 1.0, 500)])
    x = np.concatenate([x, -x]).astype(np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(erf(x), sp.erf(x64), rtol=1e-6, atol=0)
    np.testing.assert_allclose(erfc(x), sp.erfc(x64), rtol=1e-6, atol=0)
    assert erf(x).dtype == np.float32 and erfc(x).dtype == np.float32
    np.testing.assert_array_equal(erf(np.array([np.nan, -np.inf, np.inf])), [np.nan, -1.0, 1.0])


def test_erf_erfc_float16_are_evaluated_in_float32():
    # Cody's sums reach 2e6 at |x| = 4, past float16's largest number (65504): in float16
    # they overflowed to NaN. A float16 input is computed in float32 and rounded back.
    x = np.linspace(-6.0, 6.0, 1001).astype(np.float16)
    with np.errstate(over="raise", invalid="raise"):    # (underflow to 0 is expected)
        e, c = erf(x), erfc(x)
        y = L.GELU()(x)
    assert e.dtype == c.dtype == y.dtype == np.float16
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(e, sp.erf(x64), rtol=1e-3, atol=1e-7)   # float16's rounding
    np.testing.assert_allclose(c, sp.erfc(x64), rtol=1e-3, atol=1e-7)
    # GELU: float16 rounds -x/√2, which Φ's left tail magnifies x²-fold: absolute accuracy.
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, x64 * sp.ndtr(x64), rtol=2e-3, atol=3e-4)


def _blocks_of_every_kind(rng, block):
    """Blocks of ``block`` numbers in one range of |x| each (<= 0.5, (0.5, 4], > 4), in two, in
    all three, with NaN and ±inf among them, all NaN, and a short last block."""
    sign = rng.choice([-1.0, 1.0], (2, block))
    one = [rng.uniform(-0.5, 0.5, block), rng.uniform(0.5, 4.0, block) * sign[0],
           rng.uniform(4.0, 9.0, block) * sign[1]]
    two = [rng.uniform(-1.0, 1.0, block), rng.uniform(3.0, 5.0, block),
           rng.uniform(-6.0, 0.0, block)]
    specials = rng.uniform(-9.0, 9.0, block)
    specials[[1, 4, 7, 8]] = [np.nan, np.inf, -np.inf, 0.0]
    parts = one + two + [rng.uniform(-9.0, 9.0, block), specials, np.full(block, np.nan),
                         rng.uniform(-9.0, 9.0, block // 2 + 1)]
    return np.concatenate(parts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_erfc_normal_cdf_blocks_of_every_kind(monkeypatch, dtype):
    # Evaluated block by block (special._BLOCK_BYTES), each block through only the ranges of
    # |x| it reaches: any mix must give the numbers of the default (larger) blocks, and scipy's.
    x = _blocks_of_every_kind(np.random.default_rng(0), 16).astype(dtype)
    x = x[:150].reshape(5, 5, 6).transpose(2, 0, 1)       # 3-d, not C-contiguous
    default = {f.__name__: f(x) for f in (erf, erfc, normal_cdf)}
    monkeypatch.setattr(special, "_BLOCK_BYTES", 16 * np.dtype(dtype).itemsize)
    rtol = 1e-13 if dtype == np.float64 else 1e-6
    x64 = x.astype(np.float64)
    for f, reference in ((erf, sp.erf), (erfc, sp.erfc), (normal_cdf, sp.ndtr)):
        y = f(x)
        assert y.shape == x.shape and y.dtype == dtype
        assert y.transpose(1, 2, 0).flags.c_contiguous           # x's memory layout
        np.testing.assert_array_equal(y, default[f.__name__])
        np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
        if f is not normal_cdf:       # (float32 Φ: see the left-tail test below)
            np.testing.assert_allclose(y, reference(x64), rtol=rtol, atol=1e-30)
    # Φ's -x/√2 and ½ are applied inside erfc's blocks: the same numbers as outside.
    np.testing.assert_array_equal(normal_cdf(x), 0.5 * erfc(x * -np.sqrt(0.5).astype(dtype)))
    np.testing.assert_allclose(normal_cdf(x64), sp.ndtr(x64), rtol=1e-13, atol=1e-300)


def test_erf_erfc_keep_zero_and_empty_shapes():
    for x in (np.array(0.3), np.zeros((0, 3))):
        for f, reference in ((erf, sp.erf), (erfc, sp.erfc), (normal_cdf, sp.ndtr)):
            y = f(x)
            assert y.shape == x.shape and y.dtype == x.dtype
            np.testing.assert_allclose(y, reference(x), rtol=1e-15)
    assert np.signbit(erf(np.array([-0.0]))[0])            # erf is odd, also at -0


def test_normal_cdf_matches_scipy_also_in_the_left_tail():
    # Φ(x) = ½ erfc(-x/√2): relative accuracy down to Φ(-37) ≈ 6e-300, where ½ (1 + erf)
    # would give 0 from x ≈ -8.3 on.
    x = np.linspace(-37.0, 8.0, 10_001)
    np.testing.assert_allclose(normal_cdf(x), sp.ndtr(x), rtol=1e-13, atol=0)
    # float32: a few units in the last place, times Φ's condition number in the left tail
    # (d log Φ / d log x ≈ x²: the rounding of -x/√2 alone costs x² · 6e-8 relative).
    x32 = np.linspace(-9.0, 5.0, 10_001).astype(np.float32)
    assert normal_cdf(x32).dtype == np.float32
    exact = sp.ndtr(x32.astype(np.float64))
    relative = np.abs(normal_cdf(x32) / exact - 1.0)
    assert np.all(relative <= 3e-7 * (1.0 + x32.astype(np.float64) ** 2)), relative.max()


def test_gelu_left_tail_keeps_relative_accuracy():
    # x Φ(x) for x = -20 is ~ -5.5e-88: computing 1 + erf(x/√2) would give exactly 0.
    x = np.array([-20.0, -30.0])
    np.testing.assert_allclose(L.GELU()(x), x * 0.5 * sp.erfc(-x / np.sqrt(2.0)), rtol=1e-12)


def test_activation_argument_errors():
    with pytest.raises(ValueError, match="GELU.*'none' or 'tanh'"):
        L.GELU(approximate="fast")
    for name in ("LeakyReLU", "Sigmoid", "Tanh", "SiLU", "GELU"):
        with pytest.raises(TypeError, match=f"{name}.*floating-point"):
            getattr(L, name)()(np.arange(3))


def test_gelu_tanh_keeps_relative_accuracy_in_the_left_tail():
    # ½ (1 + tanh u) cancels to 0 in float32 below x ≈ -3.9; σ(2u) does not.
    x = np.linspace(-7.0, -3.0, 41)
    u = np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
    expected = x * sp.expit(2 * u)                       # float64, no cancellation
    y = L.GELU(approximate="tanh").forward(x.astype(np.float32))
    assert y.dtype == np.float32 and np.all(y < 0)
    np.testing.assert_allclose(y, expected, rtol=1e-4)
