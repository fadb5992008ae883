"""Upsample and functional/resample.py: gradient checks, values and gradients against the loop
twins of minicnn.functional.reference and this file's twin for any scale or size (and PyTorch
when it imports), the matrices, dtypes, the memory layout, the device path, errors."""

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
    nearest_source,
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
    for bad in (0, -1, -1.5, float("inf"), float("nan"), True, (2,), (2, 0), "2"):
        with pytest.raises(ValueError, match="Upsample.*scale_factor"):
            Upsample(bad)
    for bad in (0, 1.5, (2,), (4, 0), True):
        with pytest.raises(ValueError, match="Upsample.*size"):
            Upsample(size=bad)
    with pytest.raises(ValueError, match="Upsample: give exactly one of scale_factor and size"):
        Upsample()
    with pytest.raises(ValueError, match="Upsample: give exactly one of scale_factor and size"):
        Upsample(2, size=(4, 4))
    with pytest.raises(ValueError, match=r"Upsample: scale_factor 0\.3 takes a 3×4 input to 0×1"):
        Upsample(0.3)(np.zeros((1, 1, 3, 4)))
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


# -- any scale, or a size (PyTorch's F.interpolate rules) ----------------------------------------

def _ratio32_or_64(n_in, n_out, scale, dtype):
    """PyTorch's compute_scales_value: 1/scale when a scale is given, else n_in/n_out."""
    return dtype(1.0 / scale) if scale else dtype(n_in) / dtype(n_out)


def _taps(i, n_in, n_out, scale, mode, dtype):
    """(index, weight) pairs that output sample i reads: PyTorch's nearest_idx and
    compute_source_index_and_lambda, one sample at a time (no matrices)."""
    if n_out == n_in:
        return [(i, 1.0)]
    if mode == "nearest":
        if n_out == 2 * n_in:
            return [(i >> 1, 1.0)]
        r = _ratio32_or_64(n_in, n_out, scale, np.float32)      # float32, whatever the dtype
        return [(min(int(np.floor(np.float32(i) * r)), n_in - 1), 1.0)]
    r = _ratio32_or_64(n_in, n_out, scale, dtype)
    src = max(r * (dtype(i) + dtype(0.5)) - dtype(0.5), dtype(0))
    lo = min(int(src), n_in - 1)
    lam = min(max(src - lo, 0.0), 1.0)
    return [(lo, 1.0 - lam), (lo + 1 if lo < n_in - 1 else lo, lam)]


def twin(x, out_hw, scales, mode):
    """y of F.interpolate, one output pixel at a time; ``scales`` None: from the sizes."""
    N, C, H, W = x.shape
    Ho, Wo = out_hw
    sh, sw = scales or (None, None)
    y = np.zeros((N, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            for a, wa in _taps(i, H, Ho, sh, mode, np.float64):
                for b, wb in _taps(j, W, Wo, sw, mode, np.float64):
                    y[:, :, i, j] += wa * wb * x[:, :, a, b]
    return y


def twin_backward(dout, x_shape, scales, mode):
    """dx: each output pixel's dout handed back to the pixels it read, times their weights."""
    N, C, H, W = x_shape
    Ho, Wo = dout.shape[2:]
    sh, sw = scales or (None, None)
    dx = np.zeros(x_shape)
    for i in range(Ho):
        for j in range(Wo):
            for a, wa in _taps(i, H, Ho, sh, mode, np.float64):
                for b, wb in _taps(j, W, Wo, sw, mode, np.float64):
                    dx[:, :, a, b] += wa * wb * dout[:, :, i, j]
    return dx


SCALES = [0.5, 0.7, 1.2, 1.5, 1.7, 2, 2.5, 2.6, 3, 1 / 3]


@st.composite
def resize_cases(draw):
    """(layer kwargs, input shape): a scale (kept or recomputed) or a size, any mode."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
             draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    mode = draw(st.sampled_from(MODES))
    if draw(st.booleans()):
        H, W = shape[2:]
        scale = (draw(st.sampled_from(SCALES)), draw(st.sampled_from(SCALES)))
        if int(H * scale[0]) < 1 or int(W * scale[1]) < 1:
            scale = (2, 1.5)
        return dict(scale_factor=scale, mode=mode,
                    recompute_scale_factor=draw(st.booleans())), shape
    return dict(size=(draw(st.integers(1, 12)), draw(st.integers(1, 12))), mode=mode), shape


def _twin_scales(kwargs):
    if "size" in kwargs or kwargs.get("recompute_scale_factor"):
        return None
    return kwargs["scale_factor"]


@settings(max_examples=40, deadline=None)
@given(resize_cases(), st.integers(0, 2**31 - 1))
def test_any_scale_or_size_gradcheck(case, seed):
    kwargs, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(Upsample(**kwargs), x, seed=seed)


@settings(max_examples=40, deadline=None)
@given(resize_cases(), st.integers(0, 2**31 - 1))
def test_any_scale_or_size_matches_the_twin(case, seed):
    kwargs, shape = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    layer = Upsample(**kwargs)
    y = layer(x)
    np.testing.assert_allclose(y, twin(x, y.shape[2:], _twin_scales(kwargs), kwargs["mode"]),
                               rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout),
                               twin_backward(dout, shape, _twin_scales(kwargs), kwargs["mode"]),
                               rtol=1e-12, atol=1e-12)


def _torch_interpolate(torch, x, kwargs):
    xt = torch.tensor(x, requires_grad=True)
    if "size" in kwargs:
        yt = torch.nn.functional.interpolate(xt, size=kwargs["size"], mode=kwargs["mode"])
    else:
        yt = torch.nn.functional.interpolate(
            xt, scale_factor=kwargs["scale_factor"], mode=kwargs["mode"],
            recompute_scale_factor=kwargs.get("recompute_scale_factor", False))
    return xt, yt


@settings(max_examples=60, deadline=None)
@given(resize_cases(), st.integers(0, 2**31 - 1))
def test_any_scale_or_size_matches_pytorch(case, seed):
    torch = pytest.importorskip("torch")
    kwargs, shape = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    layer = Upsample(**kwargs)
    y = layer(x)
    xt, yt = _torch_interpolate(torch, x, kwargs)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(scale_factor=1.5), dict(scale_factor=(2.6, 0.5)), dict(size=(41, 9)),
    dict(scale_factor=2.6, recompute_scale_factor=True), dict(scale_factor=1.2)],
    ids=["1.5", "2.6x0.5", "size", "recompute", "1.2"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_images_match_pytorch(kwargs, mode, dtype):
    """16×19 images, float32 too: the float32 index arithmetic of nearest and the float32
    coordinates of bilinear, as PyTorch computes them."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 16, 19)).astype(dtype)
    kwargs = dict(kwargs, mode=mode)
    layer = Upsample(**kwargs)
    y = layer(x)
    xt, yt = _torch_interpolate(torch, x, kwargs)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert y.dtype == dtype and y.shape == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
    dout = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dout))
    dx = layer.backward(dout)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=tol, atol=tol)


def test_nearest_index_is_computed_in_float32_as_pytorch_does():
    """16 rows, scale 2.6: output row 39 sits at 39/2.6 = 15 exactly. In float64,
    39 · (1/2.6) = 14.999999999999998 and the floor picks row 14; PyTorch's float32 product
    rounds to 15.0 (and so do we)."""
    assert np.floor(39 * (1 / 2.6)) == 14
    src = nearest_source(np, 16, 41, 2.6)
    assert src[39] == 15
    # The sizes' rule (r = 16/41) instead of the scale's: another set of rows.
    assert not np.array_equal(nearest_source(np, 16, 41), src)
    # The copied axis: 3 rows scaled by 1.2 stay 3 rows, copied, not floor(i / 1.2).
    np.testing.assert_array_equal(nearest_source(np, 3, 3, 1.2), [0, 1, 2])
    np.testing.assert_array_equal(linear_matrix(np, 3, 3, np.float64, 1.2), np.eye(3))


def test_non_integer_scale_by_hand():
    """5 samples, scale 1.5 -> 7: nearest reads floor(i / 1.5); bilinear places sample i at
    (i + 0.5)/1.5 − 0.5."""
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    y = Upsample((1.5, 1))(x)[0, 0, :, 0]
    np.testing.assert_array_equal(y, [0, 0, 1, 2, 2, 3, 4])
    y = Upsample((1.5, 1), "bilinear")(x)[0, 0, :, 0]
    np.testing.assert_allclose(y, [0, 0.5, 7 / 6, 11 / 6, 2.5, 19 / 6, 23 / 6], rtol=1e-14)
    # Shrinking by 0.5 (no antialiasing, as PyTorch): bilinear reads between pairs.
    np.testing.assert_allclose(Upsample((0.5, 1), "bilinear")(x)[0, 0, :, 0], [0.5, 2.5])
    # A size: 5 -> 3 rows at r = 5/3.
    np.testing.assert_array_equal(Upsample(size=(3, 1))(x)[0, 0, :, 0], [0, 1, 3])


@pytest.mark.parametrize("kwargs", [dict(scale_factor=2), dict(scale_factor=(1.5, 2.5)),
                                    dict(size=(7, 3))], ids=["2", "1.5x2.5", "size"])
@pytest.mark.parametrize("mode", MODES)
def test_channels_last_in_channels_last_out(kwargs, mode, xp):
    """A channels-last x gives a channels-last y and dx (the products run on the NHWC memory),
    with NCHW's numbers; an NCHW x gives NCHW y and dx."""
    rng = np.random.default_rng(9)
    x_host = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer = Upsample(mode=mode, **kwargs)
    y_ref = layer(x_host)
    dout_host = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref = layer.backward(dout_host)

    def nhwc(a):
        return xp.asarray(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)

    y = layer(nhwc(x_host))
    dx = layer.backward(nhwc(dout_host))
    for a in (y, dx):
        assert a.transpose(0, 2, 3, 1).flags.c_contiguous and not a.flags.c_contiguous
    np.testing.assert_allclose(to_numpy(y), y_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(dx), dx_ref, rtol=1e-6, atol=1e-6)
    # dx follows x, not dout: an NCHW dout after a channels-last x still gives NHWC dx.
    layer(nhwc(x_host))
    dx = layer.backward(xp.asarray(dout_host))
    assert dx.transpose(0, 2, 3, 1).flags.c_contiguous and not dx.flags.c_contiguous
    np.testing.assert_allclose(to_numpy(dx), dx_ref, rtol=1e-6, atol=1e-6)
    y = layer(xp.asarray(x_host))
    assert y.flags.c_contiguous and layer.backward(nhwc(dout_host)).flags.c_contiguous


@pytest.mark.cupy
def test_non_integer_scales_make_no_sync_or_copy_on_the_device(strict_cupy):
    import minicnn as mc
    x = mc.backend.to_device(np.random.default_rng(5).standard_normal((2, 3, 5, 6)))
    for layer in (Upsample(1.5, "bilinear"), Upsample(size=(7, 4)),
                  Upsample(2.6, recompute_scale_factor=True)):
        with strict_cupy.record() as rec:
            for _ in range(2):
                y = layer(x)
                layer.backward(mc.backend.get_xp().ones_like(y))
        assert rec.syncs == 0, rec.report("sync")
        assert rec.h2d_bytes == 0, rec.report("h2d")


def test_repr_of_scales_and_sizes():
    assert repr(Upsample(1.5)) == "Upsample(scale_factor=1.5, mode='nearest')"
    assert repr(Upsample(size=(7, 9), mode="bilinear")) == \
        "Upsample(size=(7, 9), mode='bilinear')"
    assert repr(Upsample(size=8)) == "Upsample(size=8, mode='nearest')"
    assert repr(Upsample(2.5, recompute_scale_factor=True)) == \
        "Upsample(scale_factor=2.5, mode='nearest', recompute_scale_factor=True)"
