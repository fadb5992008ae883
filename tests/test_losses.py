"""Losses: values against SciPy, gradients against central differences, stability, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn.functional.softmax import log_softmax, logsumexp, softmax
from minicnn.gradcheck import numerical_gradient, relative_error

CE, MSE = mc.losses.CrossEntropyLoss, mc.losses.MSELoss
H = 1e-6  # central-difference step of the gradient checks


def _ce_gradcheck(loss_fn, logits, y):
    loss_fn.forward(logits, y)
    analytic = loss_fn.backward()
    numeric = numerical_gradient(lambda: float(loss_fn.forward(logits, y)), logits, h=H)
    # The central difference itself is only exact to ~ eps64 · max|z| / h (the loss is
    # computed from logits z of size up to ~10): ~2e-9. When softmax nearly saturates, the
    # whole gradient is ~1e-5 and that rounding alone is a relative 1e-6 (a hypothesis find:
    # n=1, c=3, scale=4, seed=374 gave 1.4e-6 with every entry right to 3e-11).
    rounding = 2 * np.finfo(np.float64).eps * max(1.0, float(np.abs(logits).max())) / H
    error = np.abs(analytic - numeric).max()
    assert relative_error(analytic, numeric) < 1e-6 or error < 10 * rounding, \
        (analytic, numeric)


@settings(max_examples=100)
@given(n=st.integers(1, 6), c=st.integers(1, 7), eps=st.sampled_from([0.0, 0.1, 0.5]),
       scale=st.sampled_from([1.0, 4.0]), soft=st.booleans(), seed=st.integers(0, 2**31 - 1))
@example(n=1, c=3, eps=0.0, scale=4.0, soft=False, seed=374)  # a saturated softmax
def test_cross_entropy_gradient(n, c, eps, scale, soft, seed):
    rng = np.random.default_rng(seed)
    # Moderate logits: when softmax saturates, dL/dz is so small that the central difference's
    # rounding error dominates it (huge logits are tested for stability below).
    logits = scale * rng.standard_normal((n, c))
    y = sp.softmax(rng.standard_normal((n, c)), axis=1) if soft else rng.integers(0, c, n)
    _ce_gradcheck(CE(label_smoothing=eps), logits, y)


@settings(max_examples=100)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       seed=st.integers(0, 2**31 - 1))
def test_mse_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    y_hat, y = rng.standard_normal(shape), rng.standard_normal(shape)
    loss_fn = MSE()
    loss = loss_fn.forward(y_hat, y)
    np.testing.assert_allclose(float(loss), np.mean((y_hat - y) ** 2), rtol=1e-14)
    analytic = loss_fn.backward()
    numeric = numerical_gradient(lambda: float(loss_fn.forward(y_hat, y)), y_hat)
    assert relative_error(analytic, numeric) < 1e-7


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_matches_scipy(dtype):
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((32, 10))).astype(dtype)
    y = rng.integers(0, 10, 32)
    loss_fn = CE()
    loss = loss_fn.forward(logits, y)
    ref = -np.mean(sp.log_softmax(logits.astype(np.float64), axis=1)[np.arange(32), y])
    assert isinstance(loss, np.ndarray) and loss.ndim == 0 and loss.dtype == dtype
    np.testing.assert_allclose(float(loss), ref, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(loss_fn.probs, sp.softmax(logits.astype(np.float64), axis=1),
                               rtol=1e-5 if dtype == np.float32 else 1e-13)
    dlogits = loss_fn.backward()
    assert dlogits.dtype == dtype and dlogits.shape == logits.shape
    onehot = np.eye(10)[y]
    np.testing.assert_allclose(dlogits, (loss_fn.probs - onehot) / 32, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("c", [2, 10, 100])
def test_zero_logits_give_ln_c(c):
    loss = CE().forward(np.zeros((8, c), dtype=np.float32), np.arange(8) % c)
    np.testing.assert_allclose(float(loss), math.log(c), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    y = np.array([0, 2, 1])
    loss_fn = CE()
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        loss = float(loss_fn.forward(logits, y))
        dlogits = loss_fn.backward()
    # Rows: -log p = 0; log(2) + 1e4; log(3).
    np.testing.assert_allclose(loss, (0.0 + (1e4 + math.log(2)) + math.log(3)) / 3, rtol=1e-6)
    assert np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(dlogits[1], [0.5 / 3, 0.5 / 3, -1 / 3], rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 1.0])
def test_label_smoothing_formula(eps):
    rng = np.random.default_rng(1)
    n, c = 16, 5
    logits = rng.standard_normal((n, c))
    y = rng.integers(0, c, n)
    target = (1 - eps) * np.eye(c)[y] + eps / c
    log_p = sp.log_softmax(logits, axis=1)
    loss_fn = CE(label_smoothing=eps)
    np.testing.assert_allclose(float(loss_fn.forward(logits, y)),
                               -np.mean(np.sum(target * log_p, axis=1)), rtol=1e-13)
    np.testing.assert_allclose(loss_fn.backward(), (np.exp(log_p) - target) / n, atol=1e-15)


def test_soft_targets_equal_hard_labels_when_one_hot():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.integers(0, 4, 6)
    hard, soft = CE(0.1), CE(0.1)
    np.testing.assert_allclose(float(hard(logits, y)), float(soft(logits, np.eye(4)[y])),
                               rtol=1e-6)
    np.testing.assert_allclose(hard.backward(), soft.backward(), atol=1e-7)
    assert soft.backward().dtype == np.float32


def test_losses_on_backend(xp):
    logits = xp.asarray(np.random.default_rng(3).standard_normal((5, 3)), dtype=xp.float32)
    y = np.array([0, 1, 2, 1, 0])  # labels may come as NumPy arrays
    loss_fn = CE()
    loss = loss_fn.forward(logits, y)
    assert loss.ndim == 0 and loss.dtype == xp.float32 and type(loss) is type(logits)
    assert loss_fn.backward().dtype == xp.float32
    mse = MSE()
    loss = mse.forward(logits, xp.zeros((5, 3), dtype=xp.float64))
    assert loss.ndim == 0 and loss.dtype == xp.float32
    assert mse.backward().dtype == xp.float32
    np.testing.assert_allclose(float(loss), float((logits.astype(xp.float64) ** 2).mean()),
                               rtol=1e-6)


def test_cross_entropy_errors():
    logits = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(TypeError, match="labels must be integers"):
        CE()(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="labels must be integers"):
        CE()(logits, np.array([0, np.nan, 2]))
    with pytest.raises(ValueError, match=r"range \[0, 4\).*got 4"):
        CE()(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"range \[0, 4\).*got -1"):
        CE()(logits, np.array([0, 1, -1]))
    with pytest.raises(ValueError, match=r"2 labels for 3 rows"):
        CE()(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected logits of shape \(N, C\)"):
        CE()(np.zeros(4, dtype=np.float32), np.array([0]))
    with pytest.raises(ValueError, match="logits' shape"):
        CE()(logits, np.zeros((3, 5)))
    with pytest.raises(TypeError, match="float class probabilities"):
        CE()(logits, np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="label_smoothing"):
        CE(label_smoothing=1.5)
    with pytest.raises(RuntimeError, match="before forward"):
        CE().backward()


def test_mse_errors():
    with pytest.raises(ValueError, match=r"MSELoss.*\(2, 3\) and \(3, 2\)"):
        MSE()(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="MSELoss.*floating-point"):
        MSE()(np.zeros(3, dtype=np.int64), np.zeros(3))
    with pytest.raises(RuntimeError, match="before forward"):
        MSE().backward()


def test_functional_softmax_helpers():
    z = np.random.default_rng(4).standard_normal((3, 5, 2)) * 50
    for axis in (0, 1, -1):
        np.testing.assert_allclose(softmax(z, axis), sp.softmax(z, axis=axis), rtol=1e-12)
        np.testing.assert_allclose(log_softmax(z, axis), sp.log_softmax(z, axis=axis),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(logsumexp(z, axis), sp.logsumexp(z, axis=axis), rtol=1e-13)
    assert softmax(z.astype(np.float32)).dtype == np.float32


@pytest.mark.cupy
def test_cross_entropy_label_check_makes_no_device_sync(strict_cupy):
    """Device labels are range-checked without reading anything back per step."""
    cp = strict_cupy.cupy
    logits = cp.asarray(np.random.default_rng(0).standard_normal((6, 4)), dtype=cp.float32)
    y = cp.asarray(np.array([0, 1, 2, 3, 1, 0]))
    loss_fn = CE(label_smoothing=0.1)
    with strict_cupy.record() as rec:
        for _ in range(3):
            loss = loss_fn.forward(logits, y)
            loss_fn.backward()
        loss_fn.check_labels()  # the deferred check: one sync for all three steps
    assert rec.syncs == 1 and rec.h2d_bytes == 0, rec.report()
    expected = CE(label_smoothing=0.1).forward(logits.get(), y.get())
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)


@pytest.mark.cupy
def test_cross_entropy_refuses_bad_device_labels_naming_the_first(strict_cupy):
    """A bad device label poisons the loss (NaN: never a silently wrapped class) and the
    deferred check names it; host labels are still refused at once, on the host."""
    cp = strict_cupy.cupy
    logits = cp.zeros((3, 4), dtype=cp.float32)
    loss_fn = CE()
    loss_fn.forward(logits, cp.asarray(np.array([0, 1, 2])))
    with strict_cupy.record() as rec:
        loss = loss_fn.forward(logits, cp.asarray(np.array([0, 9, -1])))
        later = loss_fn.forward(logits, cp.asarray(np.array([1, 1, 5])))
    assert rec.syncs == 0, rec.report()
    assert math.isnan(float(loss)) and math.isnan(float(later))
    assert np.isfinite(loss_fn.backward().get()).all()  # no out-of-range write or gather
    with pytest.raises(ValueError, match=r"range \[0, 4\).*got 9"):
        loss_fn.check_labels()
    loss_fn.check_labels()  # reported once: the pending state is cleared
    with strict_cupy.record() as rec, pytest.raises(ValueError, match=r"range \[0, 4\).*got -3"):
        loss_fn.forward(logits, np.array([0, -3, 1]))  # host labels: checked on the host
    assert rec.syncs == 0, rec.report()


def test_cross_entropy_check_labels_on_numpy_is_immediate():
    """On NumPy the check costs nothing, so it stays in forward; check_labels is a no-op."""
    loss_fn = CE()
    loss_fn.forward(np.zeros((2, 3), dtype=np.float32), np.array([0, 2]))
    loss_fn.check_labels()
    with pytest.raises(ValueError, match=r"range \[0, 3\).*got 3"):
        loss_fn.forward(np.zeros((2, 3), dtype=np.float32), np.array([3, 0]))
