"""LocalResponseNorm: gradients over shapes and window sizes (even, odd, larger than C), the
formula written plainly, PyTorch's nn.LocalResponseNorm, float32, errors, the CuPy stand-in,
the ONNX LRN operator (ONNX Runtime, the round trip, the even-size error) and
``alexnet(lrn=True)``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn import models
from minicnn.backend import to_numpy
from minicnn.gradcheck import assert_gradients, check_gradients
from minicnn.layers.local_response_norm import LocalResponseNorm, channel_window_sum
from tests.conftest import assert_same_on_backend


def _by_formula(x, dout, size, alpha, beta, k):
    """y and dx from the docstring's formulas, channel by channel (float64)."""
    C = x.shape[1]

    def window(c):  # W(c) = [c - size//2, c + (size-1)//2], clipped to [0, C)
        return [j for j in range(c - size // 2, c + (size - 1) // 2 + 1) if 0 <= j < C]

    s = np.stack([k + alpha / size * sum(x[:, j] ** 2 for j in window(c))
                  for c in range(C)], axis=1)
    y = x * s ** -beta
    t = dout * x * s ** (-beta - 1)
    dx = np.empty_like(x)
    for j in range(C):
        into = sum((t[:, c] for c in range(C) if j in window(c)), np.zeros_like(x[:, j]))
        dx[:, j] = dout[:, j] * s[:, j] ** -beta - 2 * alpha * beta / size * x[:, j] * into
    return y, dx


sizes = st.integers(1, 8)
shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 3), st.integers(1, 3))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, ndim=st.sampled_from([2, 3, 4]), size=sizes,
       alpha=st.floats(0.0, 3.0), beta=st.floats(0.1, 2.0), k=st.floats(0.5, 3.0),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck(shape, ndim, size, alpha, beta, k, seed):
    """Even and odd sizes, sizes larger than C, and (N, C), (N, C, L), (N, C, H, W)."""
    layer = LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
    x = np.random.default_rng(seed).standard_normal(shape[:ndim])
    result = assert_gradients(layer, x, seed=seed)
    assert len(result.errors) == 1  # x only: no parameters


@settings(max_examples=40, deadline=None)
@given(shape=shapes, size=sizes, seed=st.integers(0, 2**31 - 1))
def test_forward_and_backward_match_the_formula(shape, size, seed):
    rng = np.random.default_rng(seed)
    alpha, beta, k = rng.uniform(0, 2), rng.uniform(0.2, 1.5), rng.uniform(0.5, 3)
    x = 2 * rng.standard_normal(shape)
    dout = rng.standard_normal(shape)
    dout_copy, x_copy = dout.copy(), x.copy()
    layer = LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)
    y = layer(x)
    dx = layer.backward(dout)
    y_ref, dx_ref = _by_formula(x, dout, size, alpha, beta, k)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(dout, dout_copy)  # neither dout nor x is modified
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_allclose(layer.backward(dout), dx, rtol=0, atol=0)  # backward twice


def test_the_window_and_its_mirror_image():
    """W(c) = [c - size//2, c + (size-1)//2]: size 4 reaches 2 down and 1 up; the backward's
    window {c : j in W(c)} = [j - (size-1)//2, j + size//2] reaches 1 down and 2 up."""
    a = np.zeros((1, 7))
    a[0, 3] = 1.0  # a one-hot channel: the window sum shows who sees channel 3
    np.testing.assert_array_equal(channel_window_sum(a, 2, 1)[0], [0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(channel_window_sum(a, 1, 2)[0], [0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(channel_window_sum(np.ones((1, 3)), 4, 4)[0], [3, 3, 3])
    # Channels outside [0, C) are zeros, and the divisor is always size (not the clipped count).
    layer = LocalResponseNorm(5, alpha=5.0, beta=1.0, k=1.0)
    x = np.array([[2.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(layer(x), [[2.0 / 5.0, 0, 0, 0]])


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (2, 3, 5), (1, 7, 2, 2)])
def test_torch_conventions(size, shape):
    """Same outputs and gradients as torch.nn.LocalResponseNorm (float64)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(size)
    x = 3 * rng.standard_normal(shape)
    dout = rng.standard_normal(shape)
    layer = LocalResponseNorm(size, alpha=0.7, beta=0.75, k=2.0)
    y, dx = layer(x), layer.backward(dout)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.LocalResponseNorm(size, alpha=0.7, beta=0.75, k=2.0)(xt)
    yt.backward(torch.tensor(dout))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    # The defaults are PyTorch's too.
    ref = torch.nn.LocalResponseNorm(size)
    assert (LocalResponseNorm(size).alpha, LocalResponseNorm(size).beta,
            LocalResponseNorm(size).k) == (ref.alpha, ref.beta, ref.k)


def test_float32_kept_cache_modes_repr_and_state():
    layer = LocalResponseNorm(5, k=2.0)
    assert repr(layer) == "LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)"
    assert layer.parameters() == [] and layer.state_dict() == {} and layer.buffers() == {}
    x = (10 * np.random.default_rng(0).standard_normal((2, 6, 4, 4))).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    kept_x, s = layer.cache
    assert kept_x is x and s.shape == x.shape and s.dtype == np.float32
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    ref = LocalResponseNorm(5, k=2.0)(x.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    layer.eval()
    np.testing.assert_array_equal(layer(x), y)  # evaluation computes the same
    inside = L.Sequential(L.Conv2d(6, 6, 1), layer)
    assert [n for n, _ in inside.named_parameters()] == ["layers.0.W", "layers.0.b"]


def test_input_grad_off_returns_none():
    layer = LocalResponseNorm(3)
    x = np.ones((1, 4, 2, 2), dtype=np.float32)
    layer(x)
    layer.input_grad = False
    assert layer.backward(np.ones_like(x)) is None


def test_errors():
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="LocalResponseNorm: size must be a positive"):
            LocalResponseNorm(bad)
    with pytest.raises(ValueError, match="LocalResponseNorm: alpha must be"):
        LocalResponseNorm(3, alpha=-1.0)
    with pytest.raises(ValueError, match="LocalResponseNorm: beta must be"):
        LocalResponseNorm(3, beta=float("nan"))
    for k in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="LocalResponseNorm: k must be a finite number > 0"):
            LocalResponseNorm(3, k=k)
    layer = LocalResponseNorm(3)
    with pytest.raises(RuntimeError, match="LocalResponseNorm.backward called before forward"):
        layer.backward(np.ones((1, 4, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"LocalResponseNorm: expected input of shape "
                                         r"\(N, C, H, W\) .*got shape \(4,\)"):
        layer(np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"LocalResponseNorm: .*got shape \(1, 2, 3, 4, 5\)"):
        layer(np.ones((1, 2, 3, 4, 5), dtype=np.float32))
    with pytest.raises(TypeError, match="LocalResponseNorm: expected a floating-point array"):
        layer(np.ones((2, 4, 2, 2), dtype=np.int32))
    layer(np.ones((2, 4, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"LocalResponseNorm.backward: dout has shape "
                                         r"\(2, 4, 2\), the output had \(2, 4, 2, 2\)"):
        layer.backward(np.ones((2, 4, 2), dtype=np.float32))


def test_on_the_backend(xp):
    """NumPy and CuPy (the strict stand-in: `pytest -m cupy --strict-device`): same numbers."""
    layer = LocalResponseNorm(4, alpha=0.5, beta=0.75, k=2.0)
    rng = np.random.default_rng(0)
    x_np = (2 * rng.standard_normal((2, 6, 4, 4))).astype(np.float32)
    dout_np = rng.standard_normal(x_np.shape).astype(np.float32)
    assert_same_on_backend(layer, LocalResponseNorm(4, alpha=0.5, beta=0.75, k=2.0), xp,
                           x_np, dout_np)


@pytest.mark.cupy
def test_no_host_sync_on_the_strict_stand_in(strict_cupy):
    layer = LocalResponseNorm(5, k=2.0)
    x = mc.backend.to_device(np.ones((2, 6, 4, 4), dtype=np.float32))
    with strict_cupy.record() as rec:
        y = layer(x)
        layer.backward(mc.backend.get_xp().ones_like(y))
    assert rec.syncs == 0, rec.report("sync")
    assert rec.h2d_bytes == 0, rec.report("h2d")


def _nhwc_view(xp, a):
    """The host array ``a`` (N, C, H, W) on ``xp``, stored NHWC and viewed as (N, C, H, W)."""
    return xp.asarray(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)


def _stored_nhwc(a):
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.parametrize("dout_layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("size", [1, 4, 5, 9])
def test_channels_last_in_channels_last_out(xp, size, dout_layout):
    # A CuPy ufunc allocates C-ordered in the logical shape, so x² or s^(-beta) written that
    # way would turn a channels-last x into an NCHW y; every full-size array is allocated
    # like x instead, and dx follows x whatever dout's layout. Numbers: NumPy's, on NCHW.
    layer = LocalResponseNorm(size, alpha=0.5, beta=0.75, k=2.0)
    rng = np.random.default_rng(1)
    x_np = (2 * rng.standard_normal((2, 6, 4, 3))).astype(np.float32)
    dout_np = rng.standard_normal(x_np.shape).astype(np.float32)
    y_np, dx_np = layer(x_np), layer.backward(dout_np)
    y = layer(_nhwc_view(xp, x_np))
    dout = _nhwc_view(xp, dout_np) if dout_layout == "nhwc" else xp.asarray(dout_np)
    dx = layer.backward(dout)
    assert _stored_nhwc(y) and _stored_nhwc(dx)
    assert y.dtype == dx.dtype == np.float32
    np.testing.assert_allclose(to_numpy(y), y_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(dx), dx_np, rtol=1e-5, atol=1e-6)


@pytest.mark.cupy
def test_one_launch_per_window_offset(strict_cupy):
    # Each offset of the channel window is one addition into a slice of the sum (``out=``;
    # ``w[:, lo:hi] += ...`` would copy the slice back onto itself: two launches), and the
    # rest of each pass is a fixed number of element-wise launches: 6 forward, 9 backward.
    xp = mc.backend.get_xp()
    x = _nhwc_view(xp, np.random.default_rng(2).standard_normal((2, 8, 3, 3)).astype(np.float32))
    counts = {}
    for size in (1, 3, 5):
        layer = LocalResponseNorm(size)
        with strict_cupy.record() as forward:
            y = layer(x)
        dout = xp.ones_like(y)
        with strict_cupy.record() as backward:
            layer.backward(dout)
        counts[size] = (forward.launches, backward.launches)
    assert counts == {size: (6 + size, 9 + size) for size in (1, 3, 5)}, counts


# -- ONNX: the LRN operator -------------------------------------------------------------------

def _onnx():
    pytest.importorskip("onnx", reason="pip install 'minicnn[onnx]'")
    return pytest.importorskip("onnxruntime", reason="pip install 'minicnn[onnx]'")


def _run_ort(ort, path, x):
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _round_trip(model, shape, tmp_path, seed=0):
    """Export, check ONNX Runtime and from_onnx against minicnn's evaluation output."""
    import onnx

    from minicnn.interop import from_onnx, to_onnx

    ort = _onnx()
    x = np.random.default_rng(seed).standard_normal((3, *shape)).astype(np.float32)
    with model.mode(training=False):
        expected = to_numpy(model.forward(3 * x))
    path = tmp_path / "model.onnx"
    to_onnx(model, path, shape)
    np.testing.assert_allclose(_run_ort(ort, path, 3 * x), expected, rtol=1e-4, atol=1e-5)
    imported = from_onnx(path)
    np.testing.assert_allclose(to_numpy(imported.forward(3 * x)), expected, rtol=1e-4,
                               atol=1e-5)
    return imported, onnx.load(str(path))


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_onnx_lrn_round_trip(size, tmp_path):
    """Odd sizes: ONNX's window [c - floor((size-1)/2), c + ceil((size-1)/2)] is PyTorch's."""
    layer = LocalResponseNorm(size, alpha=0.5, beta=0.6, k=1.5)
    imported, proto = _round_trip(L.Sequential(layer), (6, 3, 4), tmp_path)
    (node,) = proto.graph.node
    attrs = {a.name: a for a in node.attribute}
    assert node.op_type == "LRN" and attrs["size"].i == size
    assert (attrs["alpha"].f, attrs["beta"].f, attrs["bias"].f) == pytest.approx((0.5, 0.6, 1.5))
    back = imported.layers[0]
    assert type(back) is LocalResponseNorm and back.size == size
    assert (back.alpha, back.beta, back.k) == pytest.approx((0.5, 0.6, 1.5))


def test_onnx_even_size_and_non_images_are_errors(tmp_path):
    """An even size: ONNX's window is the mirror image of minicnn's (and ONNX Runtime refuses
    it), so to_onnx names the layer instead of writing a file that computes something else."""
    _onnx()
    from minicnn.interop import to_onnx

    model = L.Sequential(L.Conv2d(3, 4, 1), LocalResponseNorm(4))
    with pytest.raises(ValueError, match=r"layer 'layers.1' \(LocalResponseNorm\) has the "
                                         r"even size 4.*mirror image"):
        to_onnx(model, tmp_path / "m.onnx", (3, 5, 5))
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ValueError, match=r"\(LocalResponseNorm\) takes an input of shape "
                                         r"\(6, 5\).*\(N, C, H, W\) only"):
        to_onnx(L.Sequential(LocalResponseNorm(3)), tmp_path / "m.onnx", (6, 5))


def test_onnx_import_reads_lrn_defaults_and_refuses_even_sizes(tmp_path):
    _onnx()
    import onnx
    from onnx import TensorProto, helper

    from minicnn.interop import OnnxError, from_onnx

    def write(**attrs):
        node = helper.make_node("LRN", ["x"], ["y"], name="lrn", **attrs)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])])
        path = tmp_path / "lrn.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
        return path

    back = from_onnx(write(size=3)).layers[0]   # ONNX's defaults: alpha 1e-4, beta 0.75, bias 1
    assert (back.size, back.alpha, back.beta, back.k) == (3, 1e-4, 0.75, 1.0)
    with pytest.raises(OnnxError, match="size=2: minicnn's LocalResponseNorm reads LRN with "
                                        "an odd size only"):
        from_onnx(write(size=2))
    with pytest.raises(OnnxError, match="LocalResponseNorm: k must be"):
        from_onnx(write(size=3, bias=0.0))


# -- AlexNet with the paper's LRN -------------------------------------------------------------

TINY = dict(widths=(4, 6, 8, 8, 6), hidden=8, image_size=16)


def test_alexnet_with_lrn_builds_runs_and_round_trips(tmp_path):
    mc.init.set_seed(0)
    plain = models.build("alexnet", dict(TINY))
    mc.init.set_seed(0)
    model = models.build("alexnet", dict(TINY, lrn=True))
    lrns = [m for m in model.modules() if isinstance(m, LocalResponseNorm)]
    assert [(m.size, m.alpha, m.beta, m.k) for m in lrns] == [(5, 1e-4, 0.75, 2.0)] * 2
    kinds = [type(m).__name__ for m in model.layers]
    # ReLU -> LRN -> pool after conv 1 and conv 2, as in the paper; no parameters added.
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d",
                         "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"]
    assert model.num_parameters() == plain.num_parameters()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    y = model(x)
    assert y.shape == (2, 10) and y.dtype == np.float32
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and all(p.grad is not None for p in model.parameters())
    both = models.build("alexnet", dict(TINY, lrn=True, batchnorm=True))
    assert [type(m).__name__ for m in both.layers][:4] == [
        "Conv2d", "BatchNorm2d", "ReLU", "LocalResponseNorm"]
    imported, proto = _round_trip(model, (3, 16, 16), tmp_path)
    assert [n.op_type for n in proto.graph.node].count("LRN") == 2
    assert sum(isinstance(m, LocalResponseNorm) for m in imported.modules()) == 2
    assert [p.shape for p in imported.parameters()] == [p.shape for p in model.parameters()]


def test_alexnet_with_lrn_passes_the_gradient_check():
    """Large activations (alpha raised) so that the LRN's second term matters."""
    mc.init.set_seed(1)
    model = models.build("alexnet", dict(TINY, lrn=True, dropout=0))
    for m in model.modules():
        if isinstance(m, LocalResponseNorm):
            m.alpha = 2.0
    rng = np.random.default_rng(1)
    for p in model.parameters():
        if p.name == "b":  # off the ReLU kinks (see tests/test_timeline_early.py)
            p.data = rng.normal(0.0, 0.1, p.shape).astype(p.data.dtype)
    x = rng.standard_normal((2, 3, 16, 16))
    result = check_gradients(model, x, seed=1, max_entries=6)
    bad = {key: error for key, error in result.errors.items() if not error < 1e-6}
    assert not bad, bad
