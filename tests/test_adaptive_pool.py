"""AdaptiveAvgPool2d (minicnn/layers/pool.py) and functional/resample.py's averaging matrices:
gradient checks, values and gradients against the loop twins (and PyTorch when it imports),
GlobalAvgPool2d equivalence, dtypes, the device path, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.backend import to_numpy
from minicnn.functional import reference as ref
from minicnn.functional.resample import adaptive_avg_matrix
from minicnn.gradcheck import assert_gradients
from minicnn.layers.pool import AdaptiveAvgPool2d, GlobalAvgPool2d


@st.composite
def adaptive_cases(draw):
    """(output_size, input shape): outputs smaller and larger than the input, not dividing
    it, and None entries."""
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
             draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    size = st.one_of(st.integers(1, 9), st.none())
    return (draw(size), draw(size)), shape


def resolved(output_size, shape):
    return tuple(shape[2 + k] if s is None else s for k, s in enumerate(output_size))


@settings(max_examples=30, deadline=None)
@given(adaptive_cases(), st.integers(0, 2**31 - 1))
def test_adaptive_avgpool_gradcheck(case, seed):
    output_size, shape = case
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_gradients(AdaptiveAvgPool2d(output_size), x, seed=seed)


@settings(max_examples=30, deadline=None)
@given(adaptive_cases(), st.integers(0, 2**31 - 1))
def test_adaptive_avgpool_matches_the_loop_twins(case, seed):
    output_size, shape = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    layer = AdaptiveAvgPool2d(output_size)
    y = layer(x)
    expected = ref.adaptive_avg_pool2d(x, resolved(output_size, shape))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), ref.adaptive_avg_pool2d_backward(dout, shape),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("output_size", [1, 2, 3, (2, 5), (7, 3), (None, 2), (4, None), 9])
def test_adaptive_avgpool_matches_pytorch(output_size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 5))
    layer = AdaptiveAvgPool2d(output_size)
    y = layer(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, output_size)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_output_size_one_is_global_average_pooling():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 6))
    layer, gap = AdaptiveAvgPool2d(1), GlobalAvgPool2d()
    y = layer(x)
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y, gap(x).reshape(2, 3, 1, 1), rtol=1e-12)
    dout = rng.standard_normal((2, 3))
    np.testing.assert_allclose(layer.backward(dout.reshape(2, 3, 1, 1)), gap.backward(dout),
                               rtol=1e-12)


def test_the_windows_and_matrix_by_hand():
    # H = 5 to 3 outputs: windows [0, 2), [1, 4), [3, 5) — overlapping, of sizes 2, 3, 2.
    np.testing.assert_allclose(adaptive_avg_matrix(np, 5, 3, np.float64),
                               [[1 / 2, 1 / 2, 0, 0, 0],
                                [0, 1 / 3, 1 / 3, 1 / 3, 0],
                                [0, 0, 0, 1 / 2, 1 / 2]])
    # Larger than the input: rows repeat (2 -> 4: windows [0,1), [0,1), [1,2), [1,2)).
    np.testing.assert_allclose(adaptive_avg_matrix(np, 2, 4, np.float64),
                               [[1, 0], [1, 0], [0, 1], [0, 1]])
    # Same size: the identity.
    x = np.random.default_rng(2).standard_normal((1, 2, 4, 3))
    np.testing.assert_array_equal(AdaptiveAvgPool2d((None, None))(x), x)


def test_float32_is_preserved_and_dout_untouched(xp):
    layer = AdaptiveAvgPool2d((3, 2))
    x = xp.asarray(np.random.default_rng(2).standard_normal((2, 3, 7, 5)), dtype=xp.float32)
    y = layer(x)
    dout = xp.ones(y.shape, dtype=xp.float32)
    dx = layer.backward(dout)
    assert y.dtype == dx.dtype == xp.float32
    assert y.shape == (2, 3, 3, 2) and dx.shape == x.shape
    assert bool(xp.all(dout == 1))
    assert adaptive_avg_matrix(xp, 7, 3, xp.float32).dtype == xp.float32


def test_backend_values_match_reference(xp):
    x_np = np.random.default_rng(3).standard_normal((2, 3, 7, 5))
    layer = AdaptiveAvgPool2d((3, 8))
    y = layer(xp.asarray(x_np))
    np.testing.assert_allclose(to_numpy(y), ref.adaptive_avg_pool2d(x_np, (3, 8)), rtol=1e-12)
    dout = np.random.default_rng(4).standard_normal(y.shape)
    np.testing.assert_allclose(to_numpy(layer.backward(xp.asarray(dout))),
                               ref.adaptive_avg_pool2d_backward(dout, x_np.shape), rtol=1e-12)


@pytest.mark.cupy
def test_no_host_sync_or_copy_on_the_device(strict_cupy):
    import minicnn as mc
    x = mc.backend.to_device(np.random.default_rng(5).standard_normal((2, 3, 7, 6)))
    layer = AdaptiveAvgPool2d((3, 4))
    with strict_cupy.record() as rec:
        for _ in range(2):
            y = layer(x)
            layer.backward(mc.backend.get_xp().ones_like(y))
    assert rec.syncs == 0, rec.report("sync")
    assert rec.h2d_bytes == 0, rec.report("h2d")


def stored_nhwc(a) -> bool:
    """The (N, C, H, W) array ``a`` is stored NHWC (channels fastest)."""
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def nhwc_view(xp, a):
    """The host array ``a`` (N, C, H, W) on ``xp``, stored NHWC and viewed as (N, C, H, W)."""
    return xp.asarray(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("dout_layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("output_size", [1, (3, 2), (9, None), (2, 7)])
def test_channels_last_in_channels_last_out(xp, output_size, dout_layout):
    # On CuPy (and the strict stand-in) a matmul writes C-ordered in its logical shape, so
    # the NCHW products would turn a channels-last x into an NCHW y; a channels-last x is
    # pooled on its NHWC view instead, and dx follows x whatever dout's layout. The numbers
    # are the loop twins'.
    rng = np.random.default_rng(6)
    x_np = rng.standard_normal((2, 4, 7, 5)).astype(np.float32)
    layer = AdaptiveAvgPool2d(output_size)
    y = layer(nhwc_view(xp, x_np))
    out_hw = resolved(output_size if isinstance(output_size, tuple) else (output_size,) * 2,
                      x_np.shape)
    assert y.shape == (2, 4, *out_hw) and stored_nhwc(y)
    np.testing.assert_allclose(to_numpy(y), ref.adaptive_avg_pool2d(x_np, out_hw),
                               rtol=1e-5, atol=1e-6)
    dout_np = rng.standard_normal(y.shape).astype(np.float32)
    dout = nhwc_view(xp, dout_np) if dout_layout == "nhwc" else xp.asarray(dout_np)
    dx = layer.backward(dout)
    assert dx.dtype == xp.float32 and stored_nhwc(dx)
    np.testing.assert_allclose(to_numpy(dx), ref.adaptive_avg_pool2d_backward(dout_np, x_np.shape),
                               rtol=1e-5, atol=1e-6)


def test_nchw_in_nchw_out(xp):
    x = xp.asarray(np.random.default_rng(7).standard_normal((2, 4, 7, 5)), dtype=xp.float32)
    layer = AdaptiveAvgPool2d((3, 2))
    y = layer(x)
    assert y.flags.c_contiguous and layer.backward(xp.ones_like(y)).flags.c_contiguous


@pytest.mark.cupy
def test_two_launches_each_way_in_either_layout(strict_cupy):
    # Two GEMMs per pass, as the NCHW products: the NHWC view costs no copy.
    import minicnn as mc
    x_np = np.random.default_rng(8).standard_normal((2, 4, 7, 5)).astype(np.float32)
    xp = mc.backend.get_xp()
    for x in (xp.asarray(x_np), nhwc_view(xp, x_np)):
        layer = AdaptiveAvgPool2d((3, 2))
        layer(x)                                    # the matrices: built once, then cached
        with strict_cupy.record() as forward:
            y = layer(x)
        dout = xp.ones_like(y)
        with strict_cupy.record() as backward:
            layer.backward(dout)
        assert (forward.launches, backward.launches) == (2, 2), \
            forward.report("launch") + backward.report("launch")


def test_repr_and_no_parameters():
    assert repr(AdaptiveAvgPool2d(1)) == "AdaptiveAvgPool2d(output_size=1)"
    assert repr(AdaptiveAvgPool2d((2, None))) == "AdaptiveAvgPool2d(output_size=(2, None))"
    assert AdaptiveAvgPool2d(1).parameters() == []


def test_errors():
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d.*\(N, C, H, W\)"):
        AdaptiveAvgPool2d(1)(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(TypeError, match="AdaptiveAvgPool2d.*floating-point"):
        AdaptiveAvgPool2d(1)(np.zeros((1, 1, 2, 2), np.int32))
    for bad in (0, -2, 1.5, True, (2,), (2, 0), (1, 2, 3), "1"):
        with pytest.raises(ValueError, match="AdaptiveAvgPool2d.*output_size"):
            AdaptiveAvgPool2d(bad)
    with pytest.raises(RuntimeError, match=r"AdaptiveAvgPool2d\.backward.*before forward"):
        AdaptiveAvgPool2d(1).backward(np.zeros((1, 1, 1, 1)))
    layer = AdaptiveAvgPool2d(2)
    layer(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d\.backward.*\(1, 2, 2, 2\)"):
        layer.backward(np.zeros((1, 2, 5, 5)))
