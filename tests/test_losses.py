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


# -- per-position (segmentation) cross-entropy and ignore_index ---------------------------------

def _ce_positions_numpy(z, y, eps=0.0, ignore=None):
    """The formula, NumPy, float64: softmax over axis 1 at every position, the mean over the
    positions whose label is not ``ignore``."""
    C = z.shape[1]
    log_p = sp.log_softmax(z.astype(np.float64), axis=1)        # (N, C, d...)
    keep = np.ones(y.shape, bool) if ignore is None else y != ignore
    label = np.where(keep, y, 0)
    picked = np.take_along_axis(log_p, label[:, None], axis=1)[:, 0]   # (N, d...)
    rows = -((1 - eps) * picked + eps / C * log_p.sum(axis=1))
    return rows[keep].sum() / keep.sum()


@st.composite
def segmentation_cases(draw):
    """(logits shape (N, C, d...), k = 1..3 spatial axes)."""
    d = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 4)), *d)


@settings(max_examples=60, deadline=None)
@given(shape=segmentation_cases(), eps=st.sampled_from([0.0, 0.1]),
       ignore=st.sampled_from([None, -100, 1]), seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_per_position_formula_and_gradient(shape, eps, ignore, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape)
    y = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    if ignore is not None:
        y[rng.random(y.shape) < 0.3] = ignore
        y.flat[0] = 0 if ignore != 0 else 1           # at least one position counts
    loss_fn = CE(label_smoothing=eps, ignore_index=ignore)
    np.testing.assert_allclose(float(loss_fn(logits, y)),
                               _ce_positions_numpy(logits, y, eps, ignore), rtol=1e-12)
    assert loss_fn.probs.shape == shape
    np.testing.assert_allclose(loss_fn.probs, sp.softmax(logits, axis=1), rtol=1e-12)
    _ce_gradcheck(loss_fn, logits, y)
    dz = loss_fn.backward()
    assert dz.shape == shape
    if ignore is not None:   # ignored positions get no gradient at all
        assert np.all(np.moveaxis(dz, 1, -1)[y == ignore] == 0)


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("ignore", [None, -100, 2])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 6), (2, 3, 2, 3, 2)])
def test_cross_entropy_per_position_matches_pytorch(shape, ignore, eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape)
    y = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    if ignore is not None:
        y[rng.random(y.shape) < 0.3] = ignore
    loss_fn = CE(label_smoothing=eps, ignore_index=ignore)
    loss = loss_fn(logits, y)
    zt = torch.tensor(logits, requires_grad=True)
    kwargs = {} if ignore is None else dict(ignore_index=ignore)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y), label_smoothing=eps, **kwargs)
    lt.backward()
    np.testing.assert_allclose(float(loss), lt.item(), rtol=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), zt.grad.numpy(), rtol=1e-10, atol=1e-15)
    # Soft targets of the logits' shape (PyTorch's class probabilities), too.
    t = sp.softmax(rng.standard_normal(shape), axis=1)
    soft = CE(label_smoothing=eps)
    zt.grad = None
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(t), label_smoothing=eps)
    lt.backward()
    np.testing.assert_allclose(float(soft(logits, t)), lt.item(), rtol=1e-12)
    np.testing.assert_allclose(soft.backward(), zt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_ignore_index_on_the_n_c_path_and_all_ignored():
    """(N, C) with ignore_index matches PyTorch's rule; every label ignored gives NaN and a
    zero gradient (PyTorch's); without ignore_index, -100 is refused with a hint."""
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((6, 4))
    y = np.array([0, -100, 3, 1, -100, 2])
    loss_fn = CE(ignore_index=-100)
    keep = y != -100
    expected = -np.mean(sp.log_softmax(logits, axis=1)[keep, y[keep]])
    np.testing.assert_allclose(float(loss_fn(logits, y)), expected, rtol=1e-13)
    dz = loss_fn.backward()
    assert np.all(dz[~keep] == 0)
    np.testing.assert_allclose(dz[keep], (sp.softmax(logits, 1)[keep] - np.eye(4)[y[keep]]) / 4,
                               atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(float(loss_fn(logits, np.full(6, -100))))
        assert np.all(loss_fn.backward() == 0)
    with pytest.raises(ValueError, match=r"got -100 \(PyTorch's ignore_index: pass "
                                         r"CrossEntropyLoss\(ignore_index=-100\)"):
        CE()(logits, y)
    with pytest.raises(ValueError, match=r"range \[0, 4\).*got 7"):
        CE(ignore_index=-100)(logits, np.array([0, 7, 1, 1, 1, 1]))
    assert repr(CE(0.1, ignore_index=-100)) == \
        "CrossEntropyLoss(label_smoothing=0.1, ignore_index=-100)"
    with pytest.raises(TypeError, match="CrossEntropyLoss: ignore_index must be an integer"):
        CE(ignore_index=1.5)


def test_per_position_keeps_float32_and_channels_last_without_copying():
    """float32 stays float32; logits stored channels-last are used as (M, C) rows without a
    copy, and p and dz come back stored channels-last (the layout a convolution gave)."""
    rng = np.random.default_rng(6)
    nhwc = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    logits = nhwc.transpose(0, 3, 1, 2)                      # (2, 3, 5, 6), channels-last
    y = rng.integers(0, 3, (2, 5, 6))
    loss_fn = CE()
    loss = loss_fn(logits, y)
    assert loss.dtype == np.float32 and loss.ndim == 0
    dz = loss_fn.backward()
    assert dz.dtype == np.float32 and dz.shape == logits.shape
    assert dz.transpose(0, 2, 3, 1).flags.c_contiguous
    assert np.shares_memory(loss_fn.probs, loss_fn._rows)
    from minicnn.functional.softmax import positions_as_rows
    assert np.shares_memory(positions_as_rows(logits), nhwc)   # a view, no copy
    np.testing.assert_allclose(float(loss), _ce_positions_numpy(logits, y), rtol=1e-6)
    # Equal to the (N·H·W, C) rows fed to the (N, C) loss.
    rows = CE()
    np.testing.assert_allclose(float(rows(nhwc.reshape(-1, 3), y.reshape(-1))), float(loss),
                               rtol=1e-6)
    np.testing.assert_allclose(rows.backward(), dz.transpose(0, 2, 3, 1).reshape(-1, 3),
                               rtol=1e-6)


def test_per_position_errors_name_the_loss():
    logits = np.zeros((2, 3, 4, 5), np.float32)
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: labels of shape \(2, 4, 6\) for "
                                         r"logits of shape \(2, 3, 4, 5\): expected integer "
                                         r"labels of shape \(2, 4, 5\)"):
        CE()(logits, np.zeros((2, 4, 6), np.int64))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: labels of shape \(2, 20\)"):
        CE()(logits, np.zeros((2, 20), np.int64))
    with pytest.raises(TypeError, match=r"CrossEntropyLoss: labels must be integers"):
        CE()(logits, np.zeros((2, 4, 5), np.float32))
    with pytest.raises(TypeError, match=r"CrossEntropyLoss: targets of the logits' shape .* "
                                        r"must be float class probabilities"):
        CE()(logits, np.zeros((2, 3, 4, 5), np.int64))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: labels must be in the range "
                                         r"\[0, 3\) for 3 classes, got 3"):
        CE()(logits, np.full((2, 4, 5), 3))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: empty batch"):
        CE()(np.zeros((2, 3, 0, 5), np.float32), np.zeros((2, 0, 5), np.int64))


@pytest.mark.cupy
@pytest.mark.parametrize("ignore", [None, -100])
def test_per_position_on_the_device_makes_no_sync(strict_cupy, ignore):
    """Device logits (N, C, H, W) stored channels-last and device labels: no host sync, no
    host-to-device copy; the rows are a view of the logits (the kernels' path without
    ignore_index, plain array code with it); values equal NumPy's; a bad label is still
    found by the deferred check, an ignored one is not bad."""
    cp = strict_cupy.cupy
    rng = np.random.default_rng(7)
    nhwc = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    y_host = rng.integers(0, 3, (2, 4, 5))
    if ignore is not None:
        y_host[0, 0, :2] = ignore
    logits = cp.asarray(nhwc).transpose(0, 3, 1, 2)
    y = cp.asarray(y_host)
    loss_fn = CE(label_smoothing=0.1, ignore_index=ignore)
    with strict_cupy.record() as rec:
        for _ in range(2):
            loss = loss_fn.forward(logits, y)
            dz = loss_fn.backward()
    assert rec.syncs == 0 and rec.h2d_bytes == 0, rec.report()
    assert dz.transpose(0, 2, 3, 1).flags.c_contiguous
    ref = CE(label_smoothing=0.1, ignore_index=ignore)
    np.testing.assert_allclose(float(loss), float(ref(nhwc.transpose(0, 3, 1, 2), y_host)),
                               rtol=1e-5)
    np.testing.assert_allclose(dz.get(), ref.backward(), rtol=1e-5, atol=1e-7)
    loss_fn.check_labels()                     # nothing bad so far (ignored labels are fine)
    bad = y_host.copy()
    bad[1, 2, 3] = 5
    with strict_cupy.record() as rec:
        loss = loss_fn.forward(logits, cp.asarray(bad))
    assert rec.syncs == 0, rec.report()
    assert math.isnan(float(loss))
    with pytest.raises(ValueError, match=r"range \[0, 3\).*got 5"):
        loss_fn.check_labels()
