"""Upsample and functional/resample.py: gradient checks, values and gradients against the loop
twins of minicnn.functional.reference (and PyTorch when it imports), the matrices, dtypes,
the device path, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.backend import to_numpy
from minicnn.functional import reference as ref
from minicnn.functional.resample import (
    linear_matrix,
    nearest_matrix,
    resample,
    resample_backward,
)
from minicnn.gradcheck import assert_gradients
from minicnn.layers.upsample import Upsample

MODES = ["nearest", "bilinear"]


@st.composite
def upsample_cases(draw):
    """(scale (sh, sw), mode, input shape): scales 1-4, non-square too."""
    scale = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    mode = draw(st.sampled_from(MODES))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
             draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return scale, mode, shape


@settings(max_examples=25, deadline=None)
@given(upsample_cases(), st.integers(0, 2**31 - 1))
def test_upsample_gradcheck(case, seed):
    scale, mode, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(Upsample(scale, mode), x, seed=seed)


@settings(max_examples=25, deadline=None)
@given(upsample_cases(), st.integers(0, 2**31 - 1))
def test_upsample_matches_the_loop_twins(case, seed):
    scale, mode, shape = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    layer = Upsample(scale, mode)
    y = layer(x)
    np.testing.assert_allclose(y, ref.upsample2d(x, scale, mode), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout),
                               ref.upsample2d_backward(dout, shape, scale, mode),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scale", [1, 2, 3, 4, (2, 3), (1, 4)])
def test_upsample_matches_pytorch(mode, scale):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4))
    layer = Upsample(scale, mode)
    y = layer(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.interpolate(xt, scale_factor=scale, mode=mode)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_nearest_repeats_pixels_and_bilinear_by_hand():
    x = np.arange(4.0).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(Upsample(2)(x)[0, 0], np.repeat(np.repeat(x[0, 0], 2, 0), 2, 1))
    # 1-D, scale 2: outputs sit at -0.25 (clamped to 0), 0.25, 0.75, 1.25 (hi clamped)
    np.testing.assert_allclose(linear_matrix(np, 2, 4, np.float64),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_array_equal(nearest_matrix(np, 2, 6, np.float64),
                                  [[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]])
    # The rows of both matrices sum to 1: a constant image stays constant.
    y = Upsample((3, 2), "bilinear")(np.full((1, 2, 3, 5), 7.0))
    np.testing.assert_allclose(y, 7.0)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6),
       st.integers(0, 2**31 - 1))
def test_resample_backward_is_the_adjoint(H, W, Ho, Wo, seed):
    """<R x, g> = <x, Rᵀ g>: the backward is the transposed map, for any matrices."""
    rng = np.random.default_rng(seed)
    R_h, R_w = rng.standard_normal((Ho, H)), rng.standard_normal((Wo, W))
    x, g = rng.standard_normal((2, 3, H, W)), rng.standard_normal((2, 3, Ho, Wo))
    y = resample(x, R_h, R_w)
    np.testing.assert_allclose(y, np.einsum("ih,nchw,jw->ncij", R_h, x, R_w), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, resample_backward(g, R_h, R_w)),
                               rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_float32_is_preserved_and_dout_untouched(mode, xp):
    layer = Upsample((2, 3), mode)
    x = xp.asarray(np.random.default_rng(2).standard_normal((2, 3, 4, 5)), dtype=xp.float32)
    y = layer(x)
    dout = xp.ones(y.shape, dtype=xp.float32)
    dx = layer.backward(dout)
    assert y.dtype == dx.dtype == xp.float32
    assert y.shape == (2, 3, 8, 15) and dx.shape == x.shape
    assert bool(xp.all(dout == 1))
    # The matrices are built in x's dtype: no float64 detour.
    for R in (linear_matrix(xp, 4, 8, xp.float32), nearest_matrix(xp, 4, 8, xp.float32)):
        assert R.dtype == xp.float32


@pytest.mark.parametrize("mode", MODES)
def test_backend_values_match_reference(mode, xp):
    x_np = np.random.default_rng(3).standard_normal((2, 3, 4, 3))
    layer = Upsample((3, 2), mode)
    y = layer(xp.asarray(x_np))
    np.testing.assert_allclose(to_numpy(y), ref.upsample2d(x_np, (3, 2), mode), rtol=1e-12)
    dout = np.random.default_rng(4).standard_normal(y.shape)
    np.testing.assert_allclose(to_numpy(layer.backward(xp.asarray(dout))),
                               ref.upsample2d_backward(dout, x_np.shape, (3, 2), mode),
                               rtol=1e-12)


@pytest.mark.cupy
@pytest.mark.parametrize("mode", MODES)
def test_no_host_sync_or_copy_on_the_device(strict_cupy, mode):
    """The matrices are built on the device (no host->device copy), nothing syncs."""
    import minicnn as mc
    x = mc.backend.to_device(np.random.default_rng(5).standard_normal((2, 3, 5, 6)))
    layer = Upsample((2, 3), mode)
    with strict_cupy.record() as rec:
        for _ in range(2):
            y = layer(x)
            layer.backward(mc.backend.get_xp().ones_like(y))
    assert rec.syncs == 0, rec.report("sync")
    assert rec.h2d_bytes == 0, rec.report("h2d")


def test_repr_and_no_parameters():
    assert repr(Upsample(2)) == "Upsample(scale_factor=2, mode='nearest')"
    assert repr(Upsample((2, 3), "bilinear")) == "Upsample(scale_factor=(2, 3), mode='bilinear')"
    assert Upsample(2).parameters() == []


def test_errors():
    with pytest.raises(ValueError, match=r"Upsample.*\(N, C, H, W\)"):
        Upsample(2)(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(TypeError, match="Upsample.*floating-point"):
        Upsample(2)(np.zeros((1, 1, 2, 2), np.int32))
    for bad in (0, -1, 1.5, True, (2,), (2, 0), "2"):
        with pytest.raises(ValueError, match="Upsample.*scale_factor"):
            Upsample(bad)
    with pytest.raises(ValueError, match="Upsample.*mode"):
        Upsample(2, mode="bicubic")
    with pytest.raises(RuntimeError, match=r"Upsample\.backward.*before forward"):
        Upsample(2).backward(np.zeros((1, 1, 2, 2)))
    layer = Upsample(2)
    layer(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match=r"Upsample\.backward.*\(1, 2, 6, 6\)"):
        layer.backward(np.zeros((1, 2, 3, 3)))


def test_the_mode_argument_does_not_hide_the_train_eval_switch():
    # Upsample's mode ("nearest") is kept as `interpolation`: layer.mode() is Layer's switch.
    layer = Upsample(2, "bilinear")
    assert layer.interpolation == "bilinear"
    with layer.mode(training=False):
        assert not layer.training
    assert layer.training
