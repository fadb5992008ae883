"""Winograd convolution (minicnn/functional/winograd.py): the transform matrices, forward and
backward against the loop twins of minicnn.functional.reference (float64, tight) and against
Conv2d's im2col path (float32, within the measured bound), gradient checks, layouts, buffers,
and the CuPy path (the strict stand-in: no host syncs, no copies after the first call).

The float32 bound. Over 3000 random small cases (C_in, C_out ≤ 5, H, W ≤ 13, paddings 0-2),
the normwise relative difference ||y_winograd - y_im2col|| / ||y_im2col|| (and the same for dx
and dW) was at most 7e-7 for F(2×2, 3×3) and 3.4e-6 for F(4×4, 3×3); against float64 at
the VGG sizes (C up to 512) im2col is 1-4e-7 off, F(2, 3) 1-6e-7 and F(4, 3) 1-4e-6
(docs/derivations/winograd.md). F(4, 3) is about ten times worse because its transforms have
entries up to 8 (Aᵀ) and 5 (Bᵀ) and the non-dyadic 1/6, 1/12, 1/24 (G, rounded in float32):
large terms that cancel in the output transform, each carrying its rounding error. The
tests allow about five times the largest difference seen: ``F32_BOUND``, measured against
the sizes of the terms (the sums of |x|, |dout| times the largest |W|), so that a result that
cancels to near 0 does not inflate a relative error.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.backend import to_numpy
from minicnn.functional import reference as ref
from minicnn.functional import winograd as wg
from minicnn.gradcheck import assert_gradients
from minicnn.layers.base import Layer, Parameter
from tests.conftest import dirty_workspace

# ||winograd - im2col|| / ||im2col|| in float32, for y, dx and dW (module docstring).
F32_BOUND = {2: 4e-6, 4: 2e-5}
POINTS = {2: [0, 1, -1], 4: [0, 1, -1, 2, -2]}


def channels_last(x):
    """The same logical (N, C, H, W) array, stored NHWC in memory."""
    return x.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30)


@st.composite
def winograd_cases(draw, max_size=13, max_batch=3):
    """(x shape, C_out, pads, m): 3×3 stride 1, any padding 0..2 per side (or "same" (1, 1)),
    H and W from 1 up (not multiples of the tile), at least one output pixel."""
    same = draw(st.booleans())
    pads = ((1, 1), (1, 1)) if same else tuple(
        (draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    (top, bottom), (left, right) = pads
    H = draw(st.integers(max(1, 3 - top - bottom), max_size))
    W = draw(st.integers(max(1, 3 - left - right), max_size))
    N, C_in, C_out = draw(st.integers(1, max_batch)), draw(st.integers(1, 5)), draw(
        st.integers(1, 5))
    return (N, C_in, H, W), C_out, pads, draw(st.sampled_from([2, 4]))


# -- the transform matrices ---------------------------------------------------------------------

@pytest.mark.parametrize("m", [2, 4])
def test_matrices_are_the_interpolation_construction(m):
    """Lavin & Gray's Bᵀ, G, Aᵀ are toom_cook_matrices of the points 0, ±1 (, ±2), ∞, up to
    one sign per point, shared so that the product of the three signs is +1."""
    BT_c, G_c, AT_c = wg.toom_cook_matrices(POINTS[m], m)
    for j in range(m + 2):
        s_b = np.sign(wg.BT[m][j] @ BT_c[j])
        s_g = np.sign(wg.G[m][j] @ G_c[j])
        s_a = np.sign(wg.AT[m][:, j] @ AT_c[:, j])
        np.testing.assert_allclose(wg.BT[m][j], s_b * BT_c[j], atol=1e-15)
        np.testing.assert_allclose(wg.G[m][j], s_g * G_c[j], atol=1e-15)
        np.testing.assert_allclose(wg.AT[m][:, j], s_a * AT_c[:, j], atol=1e-15)
        assert s_b * s_g * s_a == 1
    if m == 4:  # F(4, 3): exactly the construction
        for got, built in zip((wg.BT[4], wg.G[4], wg.AT[4]), (BT_c, G_c, AT_c), strict=True):
            np.testing.assert_allclose(got, built, atol=1e-15)


@settings(max_examples=30)
@given(m=st.sampled_from([2, 4]), seed=st.integers(0, 2**31 - 1))
def test_one_dimension_is_the_cross_correlation(m, seed):
    """y = Aᵀ [(G g) ⊙ (Bᵀ d)] = Σ_k d_{i+k} g_k, with α multiplies, for the published
    matrices and for the construction from other points."""
    rng = np.random.default_rng(seed)
    d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
    expected = np.correlate(d, g, mode="valid")
    y = wg.AT[m] @ ((wg.G[m] @ g) * (wg.BT[m] @ d))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    points = rng.permutation([0.0, 1.0, -1.0, 0.5, -0.5, 2.0])[:m + 1]
    BT_c, G_c, AT_c = wg.toom_cook_matrices(points, m)
    np.testing.assert_allclose(AT_c @ ((G_c @ g) * (BT_c @ d)), expected, rtol=1e-9, atol=1e-9)


def test_toom_cook_needs_distinct_points():
    with pytest.raises(ValueError, match="distinct"):
        wg.toom_cook_matrices([0, 1, 1], 2)
    with pytest.raises(ValueError, match="3 distinct"):
        wg.toom_cook_matrices([0, 1], 2)


@pytest.mark.parametrize("m", [2, 4])
def test_kronecker_transforms_act_on_flattened_tiles(m):
    """(Bᵀ⊗Bᵀ) d.ravel() = (Bᵀ d B).ravel(), (G⊗G) g.ravel() = (G g Gᵀ).ravel(), and so
    for Aᵀ; cast to the requested dtype."""
    rng = np.random.default_rng(m)
    a = m + 2
    d, g, M = rng.standard_normal((a, a)), rng.standard_normal((3, 3)), rng.standard_normal((a, a))
    BB, GG, AA = wg.winograd_transforms(np, np.float64, m)
    np.testing.assert_allclose(BB @ d.ravel(), (wg.BT[m] @ d @ wg.BT[m].T).ravel(), atol=1e-12)
    np.testing.assert_allclose(GG @ g.ravel(), (wg.G[m] @ g @ wg.G[m].T).ravel(), atol=1e-12)
    np.testing.assert_allclose(AA @ M.ravel(), (wg.AT[m] @ M @ wg.AT[m].T).ravel(), atol=1e-12)
    assert all(t.dtype == np.float32 for t in wg.winograd_transforms(np, np.float32, m))


def test_winograd_applies():
    assert wg.winograd_applies((3, 3), (1, 1), ((1, 1), (1, 1)))
    assert wg.winograd_applies((3, 3), (1, 1), ((0, 2), (2, 0)))
    assert not wg.winograd_applies((3, 3), (2, 2), ((1, 1), (1, 1)))
    assert not wg.winograd_applies((5, 5), (1, 1), ((2, 2), (2, 2)))
    assert not wg.winograd_applies((3, 1), (1, 1), ((1, 1), (0, 0)))
    assert not wg.winograd_applies((3, 3), (1, 1), ((3, 1), (1, 1)))


def test_bad_arguments_fail_with_a_clear_message():
    x, W = np.zeros((1, 2, 5, 5)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="m must be 2 or 4"):
        wg.winograd_conv2d(x, W, ((1, 1), (1, 1)), m=3)
    with pytest.raises(ValueError, match="3×3 kernel"):
        wg.winograd_conv2d(x, np.zeros((3, 2, 5, 5)), ((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="at most 2"):
        wg.winograd_conv2d(x, W, ((3, 3), (1, 1)))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        wg.winograd_conv2d(np.zeros((1, 2, 1, 1)), W, ((0, 0), (1, 1)))
    with pytest.raises(ValueError, match="keep must be"):
        wg.winograd_conv2d(x, W, ((1, 1), (1, 1)), keep="x")


# -- forward and backward against the loops (float64) -------------------------------------------

@settings(max_examples=80)
@given(case=winograd_cases(), seed=st.integers(0, 2**31 - 1),
       keep=st.sampled_from(["tiles", "input"]))
def test_forward_and_backward_match_the_loops(case, seed, keep):
    """y, dx, dW = reference.conv2d_forward / conv2d_backward (stride 1, no bias), 1e-10,
    whether the backward reads V and U from the cache or computes them again from x, W."""
    shape, C_out, pads, m = case
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal(shape), rng.standard_normal((C_out, shape[1], 3, 3))
    y, cache = wg.winograd_conv2d(x, W, pads, m=m, keep=keep)
    expected = ref.conv2d_forward(x, W, None, (1, 1), pads)
    assert y.shape == expected.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(y.shape)
    dx, dW = wg.winograd_conv2d_backward(dout, cache)
    dx_ref, dW_ref, _ = ref.conv2d_backward(x, W, dout, (1, 1), pads)
    assert dx.shape == x.shape and dW.shape == W.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dW, dW_ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=15)
@given(case=winograd_cases(max_size=9, max_batch=2), seed=st.integers(0, 2**31 - 1))
def test_the_tile_loop_twin_is_the_convolution(case, seed):
    """reference.winograd_conv2d_tiles (Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A per tile and channel pair)
    = winograd_conv2d = reference.conv2d_forward."""
    shape, C_out, pads, m = case
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal(shape), rng.standard_normal((C_out, shape[1], 3, 3))
    twin = ref.winograd_conv2d_tiles(x, W, pads, wg.BT[m], wg.G[m], wg.AT[m])
    np.testing.assert_allclose(twin, ref.conv2d_forward(x, W, None, (1, 1), pads),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(wg.winograd_conv2d(x, W, pads, m=m)[0], twin,
                               rtol=1e-10, atol=1e-10)


# -- against Conv2d's im2col path (float32) ------------------------------------------------------

@settings(max_examples=80)
@given(case=winograd_cases(), seed=st.integers(0, 2**31 - 1))
def test_float32_matches_conv2d_within_the_bound(case, seed):
    """Conv2d (im2col) and winograd with the same W, float32: y, dx, dW within F32_BOUND[m]
    (normwise, relative to the sums of the terms' magnitudes); the results keep float32."""
    shape, C_out, pads, m = case
    rng = np.random.default_rng(seed)
    conv = L.Conv2d(shape[1], C_out, 3, padding=0, bias=False, algorithm="im2col")
    conv.pads = pads
    conv.W.data = rng.standard_normal(conv.W.shape).astype(np.float32)  # from `seed` alone
    x = rng.standard_normal(shape).astype(np.float32)
    y_ref = conv.forward(x)
    dout = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx_ref = conv.backward(dout)
    y, cache = wg.winograd_conv2d(x, conv.W.data, pads, m=m)
    dx, dW = wg.winograd_conv2d_backward(dout, cache)
    assert y.dtype == dx.dtype == dW.dtype == np.float32
    # Relative to the sizes of the terms, not of a result that may cancel or miss most of the
    # kernel (a 1×1 input with padding 1 sees only W's centre, yet the transformed U = G W Gᵀ
    # mixes all nine weights and carries their rounding): the sums of |x|, |dout| times the
    # largest |W| over each window bound what the transforms round.
    W_max = np.full(conv.W.data.shape, np.abs(conv.W.data).max(), np.float64)
    x64, dout64 = np.abs(x).astype(np.float64), np.abs(dout).astype(np.float64)
    y_scale = ref.conv2d_forward(x64, W_max, None, (1, 1), pads)
    dx_scale, dW_scale, _ = ref.conv2d_backward(x64, W_max, dout64, (1, 1), pads)
    for got, expected, scale in ((y, y_ref, y_scale), (dx, dx_ref, dx_scale),
                                 (dW, conv.W.grad, dW_scale)):
        assert got.shape == expected.shape
        assert rel(got, expected) * np.linalg.norm(expected) <= \
            F32_BOUND[m] * max(np.linalg.norm(scale), 1e-30)


@pytest.mark.parametrize("m", [2, 4])
def test_float32_error_at_a_vgg_size(m):
    """64 -> 64 channels at 16×16, He-initialised W: the error against float64 is of the
    order measured (F(2, 3) like im2col's, F(4, 3) under ten times more)."""
    rng = np.random.default_rng(0)
    conv = L.Conv2d(64, 64, 3, padding=1, bias=False, algorithm="im2col")
    x = rng.standard_normal((2, 64, 16, 16)).astype(np.float32)
    exact = ref.conv2d_forward(x, conv.W.data, None, (1, 1), conv.pads)
    y, _ = wg.winograd_conv2d(x, conv.W.data, conv.pads, m=m)
    err, err_im2col = rel(y, exact), rel(conv.forward(x), exact)
    assert err_im2col < 1e-6
    assert err < {2: 2e-6, 4: 1e-5}[m]


# -- gradients, layouts, flags, buffers -----------------------------------------------------------

class WinogradConv(Layer):
    """Test harness: Conv2d's math with winograd_conv2d as its forward (no bias)."""

    def __init__(self, W, pads, m):
        super().__init__()
        self.W = Parameter(W, "W")
        self.pads, self.m = pads, m

    def forward(self, x):
        y, self.cache = wg.winograd_conv2d(x, self.W.data, self.pads, m=self.m)
        return y

    def backward(self, dout):
        dx, dW = wg.winograd_conv2d_backward(dout, self.cached())
        self.W.set_grad(dW)
        return dx


@settings(max_examples=40)
@given(case=winograd_cases(max_size=9, max_batch=2), seed=st.integers(0, 2**31 - 1))
def test_gradcheck(case, seed):
    """Central differences of L = Σ y ⊙ G in float64 agree with dx and dW."""
    shape, C_out, pads, m = case
    rng = np.random.default_rng(seed)
    layer = WinogradConv(rng.standard_normal((C_out, shape[1], 3, 3)), pads, m)
    assert_gradients(layer, rng.standard_normal(shape), seed=seed)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (1, 2))])
def test_memory_layouts_give_identical_results(m, pads):
    """NCHW-contiguous and NHWC-stored x and dout: bit-identical y, dx, dW. y is stored
    channels-last (a view of a C-contiguous NHWC array, like Conv2d's output), dx has the
    channel innermost, dW is C-contiguous."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 10)).astype(np.float32)
    W = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    y, cache = wg.winograd_conv2d(x, W, pads, m=m)
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx, dW = wg.winograd_conv2d_backward(dout, cache)
    x_cl = channels_last(x)
    assert not x_cl.flags.c_contiguous
    y_cl, cache_cl = wg.winograd_conv2d(x_cl, W, pads, m=m)
    dx_cl, dW_cl = wg.winograd_conv2d_backward(channels_last(dout), cache_cl)
    np.testing.assert_array_equal(y_cl, y)
    np.testing.assert_array_equal(dx_cl, dx)
    np.testing.assert_array_equal(dW_cl, dW)
    assert y.transpose(0, 2, 3, 1).flags.c_contiguous
    assert dx.strides[1] == dx.itemsize
    assert dW.flags.c_contiguous


@pytest.mark.parametrize("m", [2, 4])
def test_batch_one_and_single_pixel(m):
    """Batch 1 and a 1×1 image with "same" padding (one output, all but one tap on zeros)."""
    rng = np.random.default_rng(2)
    for shape in [(1, 2, 1, 1), (1, 1, 5, 3), (1, 4, 13, 13)]:
        x, W = rng.standard_normal(shape), rng.standard_normal((3, shape[1], 3, 3))
        pads = ((1, 1), (1, 1))
        y, cache = wg.winograd_conv2d(x, W, pads, m=m)
        np.testing.assert_allclose(y, ref.conv2d_forward(x, W, None, (1, 1), pads),
                                   rtol=1e-10, atol=1e-12)
        dout = rng.standard_normal(y.shape)
        dx_ref, dW_ref, _ = ref.conv2d_backward(x, W, dout, (1, 1), pads)
        dx, dW = wg.winograd_conv2d_backward(dout, cache)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dW, dW_ref, rtol=1e-10, atol=1e-12)


def test_need_dx_and_need_dW():
    rng = np.random.default_rng(3)
    x, W = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    pads = ((1, 1), (1, 1))
    y, cache = wg.winograd_conv2d(x, W, pads)
    dout = rng.standard_normal(y.shape)
    dx, dW = wg.winograd_conv2d_backward(dout, cache)
    dx_only = wg.winograd_conv2d_backward(dout, cache, need_dW=False)
    dW_only = wg.winograd_conv2d_backward(dout, cache, need_dx=False)
    assert dx_only[1] is None and dW_only[0] is None
    np.testing.assert_array_equal(dx_only[0], dx)
    np.testing.assert_array_equal(dW_only[1], dW)


@pytest.mark.parametrize("m", [2, 4])
def test_workspace_buffers_are_reused_and_give_the_same_numbers(m):
    """With a (dirty, reused) workspace: the same y, dx, dW as without, step after step; the
    returned arrays are never workspace buffers; a second backward after one forward raises
    (its tiles were overwritten by the first dx)."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    ws = dirty_workspace()
    for pads, shape in [(((1, 1), (1, 1)), (2, 3, 8, 8)), (((1, 1), (1, 1)), (2, 3, 8, 8)),
                        (((0, 2), (1, 0)), (1, 3, 7, 5))]:
        x = rng.standard_normal(shape).astype(np.float32)
        y0, cache0 = wg.winograd_conv2d(x, W, pads, m=m)
        dout = rng.standard_normal(y0.shape).astype(np.float32)
        dx0, dW0 = wg.winograd_conv2d_backward(dout, cache0)
        y, cache = wg.winograd_conv2d(x, W, pads, m=m, workspace=ws)
        np.testing.assert_array_equal(y, y0)
        dx, dW = wg.winograd_conv2d_backward(dout, cache, workspace=ws)
        np.testing.assert_array_equal(dx, dx0)
        np.testing.assert_array_equal(dW, dW0)
        for out in (y, dx, dW):
            assert not any(np.shares_memory(out, buf) for buf in ws.buffers.values())
        with pytest.raises(RuntimeError, match="second time"):
            wg.winograd_conv2d_backward(dout, cache, workspace=ws)
    # without a workspace, the cache stays valid
    wg.winograd_conv2d_backward(dout, cache0)
    np.testing.assert_array_equal(wg.winograd_conv2d_backward(dout, cache0)[0], dx0)
    # keep="input": the cache holds x and W (no buffer), so any number of backwards works
    y, cache = wg.winograd_conv2d(x, W, pads, m=m, workspace=ws, keep="input")
    assert cache["x"] is x and cache["W"] is W and "V" not in cache
    for _ in range(2):
        dx, dW = wg.winograd_conv2d_backward(dout, cache, workspace=ws)
        np.testing.assert_array_equal(dx, dx0)
        np.testing.assert_array_equal(dW, dW0)


@pytest.mark.parametrize("m", [2, 4])
def test_keep_input_shares_one_scratch_workspace_between_layers(m):
    """keep="input": every buffer is dead when a pass returns, so two layers may share one
    workspace (a scratch arena): forward A, forward B, backward B, backward A give each
    layer's own gradients."""
    rng = np.random.default_rng(7)
    shared = dirty_workspace()
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    WA = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    WB = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    yA, cA = wg.winograd_conv2d(x, WA, pads, m=m)
    yB, cB = wg.winograd_conv2d(yA, WB, pads, m=m)
    dout = rng.standard_normal(yB.shape).astype(np.float32)
    dyA, dWB = wg.winograd_conv2d_backward(dout, cB)
    dx, dWA = wg.winograd_conv2d_backward(dyA, cA)

    yA_s, cA_s = wg.winograd_conv2d(x, WA, pads, m=m, workspace=shared, keep="input")
    yB_s, cB_s = wg.winograd_conv2d(yA_s, WB, pads, m=m, workspace=shared, keep="input")
    dyA_s, dWB_s = wg.winograd_conv2d_backward(dout, cB_s, workspace=shared)
    dx_s, dWA_s = wg.winograd_conv2d_backward(dyA_s, cA_s, workspace=shared)
    for got, expected in ((yB_s, yB), (dWB_s, dWB), (dx_s, dx), (dWA_s, dWA)):
        np.testing.assert_array_equal(got, expected)


# (C_in, C_out, H=W, N, BLAS threads) -> the rule's answer, at the edges measured in
# docs/benchmarks.md (2026-12-08): the F(4×4) speed-up over im2col in brackets.
RULE_EDGES = [
    ((64, 64, 8, 8, 1), 4),        # 512 px a thread (1.25x)
    ((64, 64, 8, 8, 2), None),     # 256 px a thread (0.97x)
    ((64, 64, 8, 16, 2), 4),       # 512 (1.19x)
    ((160, 160, 4, 32, 1), 4),     # 512 (1.32x): the CIFAR-10 preset's last conv, a rank of 32
    ((160, 160, 4, 16, 1), None),  # 256 (1.08x, and 0.82x with 2 threads)
    ((256, 256, 8, 8, 1), 4),      # 512, 2^16 channel pairs (1.06x)
    ((256, 512, 4, 32, 1), None),  # 512, more channel pairs: needs 1024 (1.05x alone, slower
                                   # inside VGG-12's step)
    ((256, 512, 4, 64, 1), 4),     # 1024 (1.30x)
    ((512, 512, 4, 32, 1), None),  # 512 (0.81x)
    ((512, 512, 4, 64, 2), None),  # 512 a thread (0.92x)
    ((512, 512, 4, 64, 1), 4),     # 1024 (1.19x)
    ((3, 32, 32, 64, 1), None),    # an RGB first layer (0.75x)
    ((64, 64, 9, 64, 1), None),    # 9×9: 4×4 tiles half cut away (0.94x)
    ((64, 64, 12, 64, 2), 4),      # (1.54x)
]


@pytest.mark.parametrize("args, expected", RULE_EDGES)
def test_the_auto_rule_at_its_measured_edges(args, expected):
    cin, cout, hw, n, threads = args
    assert wg.winograd_is_faster(cin, cout, hw, hw, n, threads) == expected


def test_auto_follows_the_blas_threads_of_the_moment():
    """conv2d_algorithm asks the BLAS how many threads it has now (threadpool_limits, as in
    a thread-rank): 512 output pixels are enough for one thread, not for two."""
    from threadpoolctl import threadpool_limits

    from minicnn.backend import blas_threads
    from minicnn.functional.conv import conv2d_algorithm

    args = ("auto", (8, 64, 8, 8), 64, (3, 3), (1, 1), ((1, 1), (1, 1)))
    for threads, expected in ((1, 4), (2, None)):
        with threadpool_limits(limits=threads, user_api="blas"):
            assert blas_threads() == threads
            assert conv2d_algorithm(*args) == expected


# -- the CuPy path (real CuPy, or the strict stand-in: pytest -m cupy --strict-device) -----------

@pytest.mark.parametrize("m", [2, 4])
def test_same_numbers_on_every_backend(xp, m):
    """The device path computes what NumPy computes (float64, tight), with the output stored
    channels-last and no host array mixed in."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 6))
    W = rng.standard_normal((4, 3, 3, 3))
    pads = ((1, 2), (0, 1))
    y, cache = wg.winograd_conv2d(x, W, pads, m=m)
    dout = rng.standard_normal(y.shape)
    dx, dW = wg.winograd_conv2d_backward(dout, cache)
    y_d, cache_d = wg.winograd_conv2d(xp.asarray(channels_last(x)), xp.asarray(W), pads, m=m)
    dx_d, dW_d = wg.winograd_conv2d_backward(xp.asarray(dout), cache_d)
    for got, expected in ((y_d, y), (dx_d, dx), (dW_d, dW)):
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-12)
    assert y_d.transpose(0, 2, 3, 1).flags.c_contiguous


@pytest.mark.cupy
@pytest.mark.parametrize("m", [2, 4])
def test_no_host_syncs_or_copies_on_the_device(strict_cupy, m):
    """After the first call (which copies the three transform matrices to the device once),
    a forward and backward, with or without a workspace, make no host sync and no copy."""
    import cupy

    rng = np.random.default_rng(6)
    x = cupy.asarray(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    W = cupy.asarray(rng.standard_normal((3, 4, 3, 3)).astype(np.float32))
    dout = cupy.asarray(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    ws = {}

    def workspace(name, shape, dtype):
        if name not in ws or ws[name].shape != tuple(shape):
            ws[name] = cupy.empty(shape, dtype=dtype)
        return ws[name]

    pads = ((1, 1), (1, 1))
    wg.winograd_conv2d_backward(dout, wg.winograd_conv2d(x, W, pads, m=m)[1])   # warm-up
    for space, keep in [(None, "tiles"), (workspace, "tiles"), (workspace, "tiles"),
                        (workspace, "input")]:
        with strict_cupy.record() as rec:
            y, cache = wg.winograd_conv2d(x, W, pads, m=m, workspace=space, keep=keep)
            dx, dW = wg.winograd_conv2d_backward(dout, cache, workspace=space)
        assert rec.events == [], rec.report()
    assert dx.shape == x.shape and dW.shape == W.shape and y.shape == dout.shape


# -- Conv2d(algorithm=...): the layer takes the Winograd route ------------------------------------

def _conv_pair(C_in, C_out, padding, seed, dtype=np.float64):
    """Conv2d with algorithm "im2col" and "winograd", the same W and a nonzero b."""
    rng = np.random.default_rng(seed)
    pair = [L.Conv2d(C_in, C_out, 3, padding=padding, algorithm=a) for a in ("im2col", "winograd")]
    for conv in pair:
        conv.astype(dtype)
        conv.W.data = pair[0].W.data
        conv.b.data = rng.standard_normal(C_out).astype(dtype)
        pair[0].b.data = conv.b.data
    return pair


@settings(max_examples=25, deadline=None)
@given(N=st.integers(1, 3), C_in=st.integers(1, 4), C_out=st.integers(1, 4),
       H=st.integers(1, 9), W=st.integers(1, 9), padding=st.sampled_from([0, 1, 2, "same"]),
       seed=st.integers(0, 2**16))
def test_conv2d_winograd_route_equals_the_im2col_route(N, C_in, C_out, H, W, padding, seed):
    """Conv2d(algorithm="winograd") gives im2col's y, dx, dW and db (float64)."""
    pad = 1 if padding == "same" else padding
    assume(H + 2 * pad >= 3 and W + 2 * pad >= 3)
    rng = np.random.default_rng(seed)
    plain, wino = _conv_pair(C_in, C_out, padding, seed)
    x = rng.standard_normal((N, C_in, H, W))
    y = plain(x)
    np.testing.assert_allclose(wino(x), y, rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(wino.backward(dout), plain.backward(dout), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(wino.W.grad, plain.W.grad, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(wino.b.grad, plain.b.grad, rtol=1e-10, atol=1e-10)


def test_conv2d_winograd_gradcheck():
    conv = L.Conv2d(3, 2, 3, padding=1, algorithm="winograd").astype(np.float64)
    conv.b.data = np.array([0.5, -0.25])
    x = np.random.default_rng(3).standard_normal((2, 3, 5, 6))
    assert_gradients(conv, x, seed=3)


def test_conv2d_winograd_honours_input_grad_and_a_frozen_W():
    _, wino = _conv_pair(2, 3, 1, 0)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6))
    dout = np.ones((2, 3, 6, 6))
    wino.input_grad = False
    wino(x)
    assert wino.backward(dout) is None and wino.W.grad is not None
    np.testing.assert_allclose(wino.b.grad, [72.0, 72.0, 72.0])
    wino.input_grad, wino.W.grad = True, None
    wino.W.requires_grad = False
    wino(x)
    assert wino.backward(dout).shape == x.shape and wino.W.grad is None


def test_conv2d_auto_takes_winograd_where_the_rule_says_and_keeps_only_x_and_W():
    # 16 -> 16 channels at 16×16, batch 8: 2048 output pixels, full 4×4 tiles (the rule's edge).
    conv = L.Conv2d(16, 16, 3, padding=1)
    x = np.random.default_rng(1).standard_normal((8, 16, 16, 16)).astype(np.float32)
    y = conv(x)
    cached_x, cached_W, winograd = conv.cache
    assert winograd is not None and winograd["m"] == 4
    assert cached_x is x and winograd["x"] is x and "V" not in winograd      # no tile cache
    plain = L.Conv2d(16, 16, 3, padding=1, algorithm="im2col")
    plain.W.data, plain.b.data = conv.W.data, conv.b.data
    assert rel(y, plain(x)) < 1e-5            # F(4×4)'s float32, normwise: W is unseeded here
    small = L.Conv2d(16, 16, 3, padding=1)                                   # batch 1: 256 pixels
    small(x[:1])
    assert small.cache[2] is None
    for not_3x3 in (L.Conv2d(16, 16, 5, padding=2), L.Conv2d(16, 16, 3, stride=2, padding=1)):
        not_3x3(x)
        assert not_3x3.cache[2] is None                                      # auto: im2col
    assert "algorithm" not in repr(conv) and "algorithm='winograd'" in repr(
        L.Conv2d(2, 2, 3, algorithm="winograd"))


def test_conv2d_algorithm_errors():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        L.Conv2d(2, 2, 3, algorithm="fft")
    with pytest.raises(ValueError, match="algorithm='winograd' needs a 3×3 kernel, stride 1"):
        L.Conv2d(2, 2, 5, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm='winograd' needs"):
        L.Conv2d(2, 2, 3, stride=2, algorithm="winograd")


def test_conv2d_winograd_on_every_backend(xp):
    rng = np.random.default_rng(4)
    conv = L.Conv2d(3, 4, 3, padding=1, algorithm="winograd")
    x_np = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    dout_np = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    y = conv(xp.asarray(x_np))
    dx = conv.backward(xp.asarray(dout_np))
    assert y.dtype == dx.dtype == conv.W.grad.dtype == xp.float32
    W = to_numpy(conv.W.data).astype(np.float64)
    b = to_numpy(conv.b.data).astype(np.float64)
    np.testing.assert_allclose(to_numpy(y), ref.conv2d_forward(x_np, W, b, (1, 1), conv.pads),
                               rtol=2e-5, atol=2e-5)
    dx_ref, dW_ref, db_ref = ref.conv2d_backward(x_np, W, dout_np, (1, 1), conv.pads)
    np.testing.assert_allclose(to_numpy(dx), dx_ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(to_numpy(conv.W.grad), dW_ref, rtol=2e-5, atol=2e-4)
