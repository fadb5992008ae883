"""Mixed precision on the CPU twins: the rounding, the GEMM policy, fit, fp16 loss scaling.

``minicnn.functional.precision`` rounds each GEMM input to the policy's format (float32 math
on the rounded numbers is exactly what tensor cores compute); ``minicnn.optim.LossScaler``
scales fp16's loss gradient and skips an overflowing step on the device. See
docs/precision.md.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn.functional import precision as P
from minicnn.functional import winograd as wg
from minicnn.gradcheck import assert_gradients
from minicnn.init import set_seed
from minicnn.optim import SGD, Adam, Lookahead, LossScaler

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def bits(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def from_bits(*patterns: int) -> np.ndarray:
    return np.array(patterns, dtype=np.uint32).view(np.float32)


def wide_values(n: int = 200_000, seed: int = 0) -> np.ndarray:
    """float32 values over the whole range: normals from 1e-45 to 1e38, both signs, random
    bit patterns (subnormals, ties, NaNs, infinities) and the edge cases by hand."""
    rng = np.random.default_rng(seed)
    normal = (rng.standard_normal(n) * 10.0 ** rng.uniform(-44, 38, n)).astype(np.float32)
    patterns = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(np.float32).max,
                      -np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, 65504.0,
                      65520.0, 6e-8, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8], dtype=np.float32)
    return np.concatenate([normal, patterns, edges])


def rounded_reference(x: np.ndarray, significand_bits: int) -> np.ndarray:
    """Round-to-nearest-even of float32 x to a float32-range format whose significand has
    ``significand_bits`` bits (the implicit one included), in float64 arithmetic: the ulp is
    2^(e - p) for |x| in [2^(e-1), 2^e), and 2^(-126 - (p - 1)) for float32's subnormals."""
    with np.errstate(all="ignore"):      # NaN payloads and the overflow to inf
        x64 = x.astype(np.float64)
        finite = np.isfinite(x64) & (x64 != 0)
        _, e = np.frexp(np.where(finite, x64, 1.0))
        ulp = np.ldexp(1.0, np.maximum(e - significand_bits, -126 - (significand_bits - 1)))
        out = (np.rint(x64 / ulp) * ulp).astype(np.float32)
    return np.where(finite, out, x)


# -- the rounding -----------------------------------------------------------------------------

def test_bf16_equals_ml_dtypes_conversion():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = wide_values()
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    got = P.round_to(x, "bf16")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    ok = ~np.isnan(expected)
    np.testing.assert_array_equal(bits(got[ok]), bits(expected[ok]))


def test_fp16_equals_numpy_float16_conversion():
    x = wide_values()
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
    got = P.round_to(x, "fp16")
    ok = ~np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), ~ok)
    np.testing.assert_array_equal(bits(got[ok]), bits(expected[ok]))


@pytest.mark.parametrize("fmt, significand_bits", [("bf16", 8), ("tf32", 11)])
def test_mantissa_rounding_equals_float64_reference(fmt, significand_bits):
    """tf32 has no ml_dtypes type: a float64 reference, checked on bf16 against ml_dtypes
    (the test above) through the same function."""
    x = wide_values(seed=1)
    expected = rounded_reference(x, significand_bits)
    got = P.round_to(x, fmt)
    ok = ~np.isnan(x)
    np.testing.assert_array_equal(bits(got[ok]), bits(expected[ok]))
    assert np.isnan(got[~ok]).all()


@pytest.mark.parametrize("fmt, pattern, expected", [
    # bf16 keeps the top 16 bits: ties go to the even kept pattern
    ("bf16", 0x3F808000, 0x3F800000),     # 1 + 2^-8 (a tie), kept lsb even: down
    ("bf16", 0x3F818000, 0x3F820000),     # a tie with odd kept lsb: up
    ("bf16", 0x3F808001, 0x3F810000),     # just above the tie: up
    ("bf16", 0x3F807FFF, 0x3F800000),     # just below: down
    ("bf16", 0xBF818000, 0xBF820000),     # negative: the same on the magnitude
    ("bf16", 0x3FFFFFFF, 0x40000000),     # carry into the exponent: the next binade
    ("bf16", 0x7F7FFFFF, 0x7F800000),     # float32's max rounds to +inf, as ml_dtypes
    ("bf16", 0x00018000, 0x00020000),     # a subnormal tie, odd: up
    ("bf16", 0x00008000, 0x00000000),     # a subnormal tie, even: to zero
    ("bf16", 0x7F800000, 0x7F800000),     # +inf stays
    ("tf32", 0x3F801000, 0x3F800000),     # tf32 keeps 10 mantissa bits: a tie, even: down
    ("tf32", 0x3F803000, 0x3F804000),     # a tie, odd: up
    ("tf32", 0x3F802FFF, 0x3F802000),     # below the tie: down
    ("tf32", 0x477FF000, 0x47800000),     # carry into the exponent
])
def test_round_to_bit_patterns(fmt, pattern, expected):
    assert bits(P.round_to(from_bits(pattern), fmt))[0] == expected


@pytest.mark.parametrize("fmt", ["bf16", "tf32"])
def test_nan_payloads_stay_nan(fmt):
    # clearing the low mantissa bits of these NaNs would give an infinity
    x = from_bits(0x7F800001, 0xFF800010, 0x7FC00000)
    assert np.isnan(P.round_to(x, fmt)).all()


def test_round_to_refuses_bad_input():
    with pytest.raises(ValueError, match="fp32, tf32, bf16, fp16"):
        P.round_to(np.ones(2, np.float32), "fp8")
    with pytest.raises(TypeError, match="float32"):
        P.round_to(np.ones(2, np.float64), "bf16")


# -- the policy -------------------------------------------------------------------------------

def test_policy_is_set_and_restored():
    assert P.get_precision() == "fp32"
    with P.autocast("bf16") as name:
        assert name == "bf16" == P.get_precision()
        with P.autocast(None):
            assert P.get_precision() == "bf16"
    assert P.get_precision() == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        P.set_precision("half")
    try:
        with P.autocast("fp16"):
            raise KeyError
    except KeyError:
        pass
    assert P.get_precision() == "fp32"


def test_fp32_policy_returns_the_same_arrays():
    """The default adds no pass: the very same objects come back."""
    a, b = np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)
    ra, rb = P.gemm_inputs(a, b)
    assert ra is a and rb is b and P.gemm_input(a) is a


@pytest.mark.parametrize("fmt", ["tf32", "bf16", "fp16"])
def test_float64_is_never_rounded(fmt):
    a = np.random.default_rng(0).standard_normal((3, 4))
    with P.autocast(fmt):
        ra, rb = P.gemm_inputs(a, a.T)
        assert ra is a and rb is not None and P.gemm_input(a) is a


@pytest.mark.parametrize("fmt", ["tf32", "bf16", "fp16"])
def test_gradient_checks_stay_float64_under_any_policy(fmt):
    rng = np.random.default_rng(0)
    model = L.Sequential(L.Conv2d(2, 3, 3, padding=1), L.ReLU(), L.Flatten(),
                         L.Linear(3 * 5 * 5, 4)).astype(np.float64)
    x = rng.standard_normal((2, 2, 5, 5))
    with P.autocast(fmt):
        assert_gradients(model, x, seed=0)


# -- every GEMM under a policy = float32 math on the rounded inputs ----------------------------

def _layer_under(layer, x, dout, fmt):
    """y, dx and the gradients of ``layer`` (a copy) under ``fmt``."""
    layer = copy.deepcopy(layer)
    with P.autocast(fmt):
        y = layer.forward(x)
        dx = layer.backward(dout)
    return y, dx, [p.grad for p in layer.parameters()]


def _rounded_twin(layer, x, dout, fmt):
    """The same under fp32, with x, W and dout rounded by hand: the policy's definition."""
    layer = copy.deepcopy(layer)
    for p in layer.parameters():
        if p.name == "W":
            p.data = P.round_to(p.data, fmt)
    y = layer.forward(P.round_to(x, fmt))
    dx = layer.backward(P.round_to(dout, fmt))
    return y, dx, [p.grad for p in layer.parameters()]


GEMM_LAYERS = {
    "linear": (lambda: L.Linear(12, 5), (6, 12), (6, 5)),
    "conv_stride1": (lambda: L.Conv2d(4, 3, 3, padding=1, algorithm="im2col"),
                     (2, 4, 6, 6), (2, 3, 6, 6)),                      # dout's patches
    "conv_stride2": (lambda: L.Conv2d(3, 5, 3, stride=2, padding=1, algorithm="im2col"),
                     (2, 3, 7, 7), (2, 5, 4, 4)),                      # col2im_matmul
    "conv_widening": (lambda: L.Conv2d(2, 6, 3, padding=1, algorithm="im2col"),
                      (2, 2, 5, 5), (2, 6, 5, 5)),                     # x's patches, stride 1
    "conv_grouped": (lambda: L.Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 5, 5),
                     (2, 6, 5, 5)),
}


@pytest.mark.parametrize("fmt", ["tf32", "bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(GEMM_LAYERS))
def test_layer_gemms_read_rounded_inputs(name, fmt):
    """y, dW and dx under the policy equal the fp32 layer fed the rounded x, W and dout
    (bit for bit: the same float32 GEMMs of the same numbers); db is Σ dout, not rounded;
    and the result differs from plain fp32 (the policy did something)."""
    make, x_shape, dout_shape = GEMM_LAYERS[name]
    rng = np.random.default_rng(0)
    set_seed(0)
    layer = make()
    x = rng.standard_normal(x_shape).astype(np.float32)
    dout = rng.standard_normal(dout_shape).astype(np.float32)
    y, dx, grads = _layer_under(layer, x, dout, fmt)
    y_t, dx_t, grads_t = _rounded_twin(layer, x, dout, fmt)
    np.testing.assert_array_equal(y, y_t)
    np.testing.assert_array_equal(dx, dx_t)
    np.testing.assert_array_equal(grads[0], grads_t[0])                 # dW
    sum_axes = (0,) if name == "linear" else (0, 2, 3)
    np.testing.assert_allclose(grads[1], dout.sum(axis=sum_axes), rtol=1e-6)   # db
    y32, dx32, grads32 = _layer_under(layer, x, dout, "fp32")
    assert not np.array_equal(y, y32) and not np.array_equal(grads[0], grads32[0])
    tol = {"tf32": 2e-3, "bf16": 2e-2, "fp16": 2e-3}[fmt]
    assert np.abs(y - y32).max() <= tol * np.abs(y32).max()


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_winograd_rounds_its_transformed_tiles(fmt):
    """Winograd's α² GEMMs read V and U rounded: y = Aᵀ⊗Aᵀ · (round(V) @ round(U))."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    W = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    with P.autocast(fmt):
        y, _ = wg.winograd_conv2d(x, W, pads, m=4)
    V = P.round_to(wg._input_transform(x, pads, 4, None), fmt)
    U = P.round_to(wg._weight_transform(W, 4, np.float32, None), fmt)
    AA = wg.winograd_transforms(np, np.float32, 4)[2]
    Y = AA @ (V @ U).reshape(36, -1)                                  # (16, P·C_out)
    expected = Y.reshape(4, 4, 2, 2, 2, 8).transpose(2, 3, 0, 4, 1, 5).reshape(2, 8, 8, 8)
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1), expected, rtol=1e-5, atol=1e-5)
    y32, _ = wg.winograd_conv2d(x, W, pads, m=4)
    assert np.abs(y - y32).max() > 1e-4                                # the policy did something


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_winograd_backward_under_policy_close_to_fp32(fmt):
    rng = np.random.default_rng(2)
    layer = L.Conv2d(8, 8, 3, padding=1, algorithm="winograd")
    x = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    dout = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    y, dx, grads = _layer_under(layer, x, dout, fmt)
    y32, dx32, grads32 = _layer_under(layer, x, dout, "fp32")
    layer.algorithm = "im2col"
    yi, dxi, gradsi = _layer_under(layer, x, dout, fmt)
    for a, b, c in ((y, y32, yi), (dx, dx32, dxi), (grads[0], grads32[0], gradsi[0])):
        err = np.abs(a - b).max() / np.abs(b).max()
        err_im2col = np.abs(c - b).max() / np.abs(b).max()
        # larger than im2col's: the transforms magnify the rounding (why "auto" avoids it)
        assert 0 < err_im2col < err < 0.15


def test_auto_takes_im2col_under_bf16_and_fp16():
    from minicnn.functional.conv import conv2d_algorithm

    args = ("auto", (64, 16, 16, 16), 16, (3, 3), (1, 1), ((1, 1), (1, 1)))   # 16384 pixels
    assert conv2d_algorithm(*args) == 4
    for fmt, expected in (("tf32", 4), ("bf16", None), ("fp16", None)):
        with P.autocast(fmt):
            assert conv2d_algorithm(*args) == expected
            assert conv2d_algorithm("winograd", *args[1:]) == 4      # asked for: kept


@pytest.mark.cupy
@pytest.mark.parametrize("fmt", ["tf32", "bf16", "fp16"])
def test_gemm_policy_same_on_the_device(strict_cupy, fmt):
    """On the stand-in (no cuBLAS compute-type switch: tf32 is rounded too) the same bits as
    NumPy, without a host sync."""
    rng = np.random.default_rng(3)
    mc.set_backend("numpy")
    set_seed(0)
    layer = L.Conv2d(4, 3, 3, padding=1, algorithm="im2col")
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    dout = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    y, dx, grads = _layer_under(layer, x, dout, fmt)
    mc.set_backend("cupy")
    import cupy as cp  # the stand-in
    dev = copy.deepcopy(layer).to("gpu")
    with strict_cupy.record() as rec:
        y_d, dx_d, grads_d = _layer_under(dev, cp.asarray(x), cp.asarray(dout), fmt)
    assert rec.syncs == 0
    np.testing.assert_array_equal(cp.asnumpy(y_d), y)
    np.testing.assert_array_equal(cp.asnumpy(dx_d), dx)
    np.testing.assert_array_equal(cp.asnumpy(grads_d[0]), grads[0])


# -- training --------------------------------------------------------------------------------

def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 classes of 1×8×8 images: a class's fixed pattern plus strong noise (separable, but
    not at a glance: a small net needs a few hundred steps)."""
    patterns = np.random.default_rng(100).standard_normal((4, 1, 8, 8)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = patterns[y] * 0.5 + rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    return x.astype(np.float32), y


def small_net() -> L.Layer:
    return L.Sequential(L.Conv2d(1, 8, 3, padding=1), L.BatchNorm2d(8), L.ReLU(),
                        L.MaxPool2d(2), L.Flatten(), L.Linear(8 * 4 * 4, 4))


def train_and_test(precision, x, y, x_test, y_test, epochs=3, batch=32, opt="adam",
                   seed=0, **fit_kwargs):
    set_seed(seed)
    model = small_net()
    optimizer = (Adam(model.parameters(), lr=3e-3) if opt == "adam"
                 else SGD(model.parameters(), lr=0.05, momentum=0.9))
    train = mc.data.DataLoader(x, y, batch, shuffle=True, seed=seed)
    test = mc.data.DataLoader(x_test, y_test, 256)
    history = mc.training.fit(model, mc.losses.CrossEntropyLoss(), optimizer, train,
                              epochs=epochs, verbose=0, precision=precision, **fit_kwargs)
    return model, history, mc.training.evaluate(model, test)["acc"]


@pytest.mark.parametrize("fmt", ["bf16", "tf32", "fp16"])
def test_training_reaches_float32_accuracy(fmt):
    """~300 steps (3 epochs of 3200 images) of a small conv net: within a point of fp32."""
    x, y = blobs(3200, seed=1)
    x_test, y_test = blobs(2000, seed=2)
    _, _, acc32 = train_and_test("fp32", x, y, x_test, y_test)
    _, history, acc = train_and_test(fmt, x, y, x_test, y_test)
    assert acc32 > 0.7                      # the task is learnt, not trivial
    assert abs(acc - acc32) <= 0.01, (fmt, acc, acc32)
    assert P.get_precision() == "fp32"      # fit restored the policy


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no ../shared/datasets/mnist")
def test_bf16_on_mnist_within_a_point(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICNN_CACHE", str(tmp_path))
    (x, y), (x_test, y_test) = mc.data.load_mnist(root=SHARED, download=False, quiet=True)
    def prep(a):                                   # 2×2 means: 14×14 images, 4× faster
        a = a.astype(np.float32).reshape(len(a), 1, 14, 2, 14, 2).mean(axis=(3, 5))
        return ((a / 255.0 - 0.13) / 0.31).astype(np.float32)
    x, y, x_test, y_test = prep(x[:8000]), y[:8000], prep(x_test[:2000]), y_test[:2000]
    accs = {}
    for fmt in ("fp32", "bf16"):
        set_seed(0)
        model = L.Sequential(L.Conv2d(1, 8, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                             L.Flatten(), L.Linear(8 * 7 * 7, 10))
        loader = mc.data.DataLoader(x, y, 64, shuffle=True, seed=0)
        mc.training.fit(model, mc.losses.CrossEntropyLoss(), Adam(model.parameters(), 2e-3),
                        loader, epochs=2, verbose=0, precision=fmt)
        accs[fmt] = mc.training.evaluate(model, mc.data.DataLoader(x_test, y_test, 500))["acc"]
    assert accs["fp32"] > 0.8                      # learnt (87.5 % when written)
    assert abs(accs["bf16"] - accs["fp32"]) <= 0.01, accs


def test_fit_refuses_a_bad_precision_and_fp16_with_comm():
    model = small_net()
    x, y = blobs(8, 0)
    loader = mc.data.DataLoader(x, y, 4)
    with pytest.raises(ValueError, match="fit: precision must be one of fp32, tf32"):
        mc.training.fit(model, mc.losses.CrossEntropyLoss(), SGD(model.parameters(), 0.1),
                        loader, verbose=0, precision="float16")
    with pytest.raises(ValueError, match="not supported with data-parallel"):
        mc.training.fit(model, mc.losses.CrossEntropyLoss(), SGD(model.parameters(), 0.1),
                        loader, verbose=0, precision="fp16", comm=object())


# -- fp16 loss scaling -----------------------------------------------------------------------

class Overflow(L.Linear):
    """A Linear whose backward writes an inf into dW at the calls listed in ``at``: the
    overflow of an fp16 backward, injected."""

    def __init__(self, *args, at=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.calls = set(at), 0

    def backward(self, dout):
        dx = super().backward(dout)
        self.calls += 1
        if self.calls in self.at:
            g = self.W.grad.copy()           # a copy: never write into another's array
            g[0, 0] = np.inf
            self.W.grad = g
        return dx


def overflow_net(at):
    set_seed(0)
    return L.Sequential(L.Flatten(), L.Linear(64, 16), L.ReLU(), Overflow(16, 4, at=at))


def state_of(model, opt):
    return ([p.data.copy() for p in model.parameters()],
            {k: np.array(v, copy=True) for k, v in opt.state_dict().items()
             if isinstance(v, np.ndarray)})


def _one_step(model, loss_fn, opt, scaler, x, y):
    loss_fn.forward(model.forward(x), y)
    model.backward(scaler.scale(loss_fn.backward()))
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("make_opt", [
    lambda ps: Adam(ps, lr=1e-2),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: Lookahead(SGD(ps, lr=0.1, momentum=0.9), k=2),
], ids=["adam", "sgd", "lookahead"])
def test_overflow_skips_the_step_and_halves_the_scale(make_opt):
    x, y = blobs(16, 0)
    model = overflow_net(at={3})
    opt = make_opt(model.parameters())
    scaler = LossScaler(init_scale=2.0 ** 10, growth_interval=1000)
    loss_fn = mc.losses.CrossEntropyLoss()
    with P.autocast("fp16"):
        for _ in range(2):
            _one_step(model, loss_fn, opt, scaler, x, y)
        params, state = state_of(model, opt)
        slow = [s.copy() for s in getattr(opt, "slow", [])]
        _one_step(model, loss_fn, opt, scaler, x, y)            # the injected overflow
        assert scaler.found_inf and scaler.scale_value == 2.0 ** 9
        for a, b in zip(params, [p.data for p in model.parameters()], strict=True):
            np.testing.assert_array_equal(a, b)                  # the step was skipped
        for a, b in zip(slow, getattr(opt, "slow", []), strict=True):
            np.testing.assert_array_equal(a, b)
        after = state_of(model, opt)[1]
        for key, value in state.items():                         # moments / momentum kept
            np.testing.assert_array_equal(value, after[key], err_msg=key)
        _one_step(model, loss_fn, opt, scaler, x, y)            # training goes on
        assert not scaler.found_inf and scaler.scale_value == 2.0 ** 9
        assert not np.array_equal(params[0], model.parameters()[0].data)
        assert all(np.isfinite(p.data).all() for p in model.parameters())


def test_a_skipped_first_step_leaves_fresh_state():
    """Adam's moments made by an overflowing first step go back to zeros."""
    x, y = blobs(16, 0)
    model = overflow_net(at={1})
    opt = Adam(model.parameters(), lr=1e-2)
    params = [p.data.copy() for p in model.parameters()]
    scaler = LossScaler()
    with P.autocast("fp16"):
        _one_step(model, mc.losses.CrossEntropyLoss(), opt, scaler, x, y)
    for a, p in zip(params, model.parameters(), strict=True):
        np.testing.assert_array_equal(a, p.data)
    for state in opt.state:
        for key in ("m", "v"):
            assert not state[key].any()


def test_scale_grows_after_growth_interval_good_steps():
    x, y = blobs(16, 0)
    model = overflow_net(at={4})
    opt = SGD(model.parameters(), lr=0.01)
    scaler = LossScaler(init_scale=8.0, growth_interval=3)
    seen = []
    with P.autocast("fp16"):
        for _ in range(7):
            _one_step(model, mc.losses.CrossEntropyLoss(), opt, scaler, x, y)
            seen.append(scaler.scale_value)
    # 3 good steps: ×2; the 4th overflows: ×0.5; then 3 good steps again: ×2
    assert seen == [8.0, 8.0, 16.0, 8.0, 8.0, 8.0, 16.0]


def test_unscaled_gradients_equal_the_unscaled_run():
    """With no overflow, S · g / S = g: fp16 with a scaler of S = 2^k trains exactly like fp16
    whose gradients were never scaled (powers of two scale exactly), here with a regularizer
    whose term set_grad adds unscaled."""
    x, y = blobs(32, 0)
    results = []
    for scale in (1.0, 2.0 ** 12):
        set_seed(0)
        model = L.Sequential(L.Flatten(), L.Linear(64, 8, kernel_regularizer=mc.optim.L2(1e-2)),
                             L.ReLU(), L.Linear(8, 4))
        opt = SGD(model.parameters(), lr=0.1)
        scaler = LossScaler(init_scale=scale)
        with P.autocast("bf16"):           # bf16 rounding, no fp16 underflow at these sizes
            for _ in range(3):
                _one_step(model, mc.losses.CrossEntropyLoss(), opt, scaler, x, y)
        results.append([p.data.copy() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fit_fp16_recovers_from_an_injected_overflow():
    x, y = blobs(640, 0)
    model = overflow_net(at={5})
    scaler = LossScaler()
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = mc.data.DataLoader(x, y, 32, shuffle=True, seed=0)
    history = mc.training.fit(model, mc.losses.CrossEntropyLoss(), opt, loader, epochs=3,
                              verbose=0, precision="fp16", loss_scaler=scaler)
    assert scaler.scale_value == 2.0 ** 15
    assert not history.diverged and history.history["acc"][-1] > 0.9
    assert all(np.isfinite(p.data).all() for p in model.parameters())


@pytest.mark.cupy
@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_loss_scaling_on_the_device_without_a_host_sync(strict_cupy, opt_name):
    """On the stand-in: the overflow is found, the step undone and the scale halved with no
    host sync, and every step equals the NumPy one."""
    import cupy as cp  # the stand-in

    x, y = blobs(16, 0)

    def run(xp_name):
        mc.set_backend(xp_name)
        model = overflow_net(at={3})
        if xp_name == "cupy":
            model.to("gpu")
        opt = (Adam(model.parameters(), lr=1e-2) if opt_name == "adam"
               else SGD(model.parameters(), lr=0.1, momentum=0.9))
        scaler = LossScaler(init_scale=2.0 ** 10, growth_interval=2)
        xd, yd = (cp.asarray(x), cp.asarray(y)) if xp_name == "cupy" else (x, y)
        loss_fn = mc.losses.CrossEntropyLoss()
        with P.autocast("fp16"):
            _one_step(model, loss_fn, opt, scaler, xd, yd)          # warm-up: buffers made
            if xp_name == "cupy":
                with strict_cupy.record() as rec:
                    for _ in range(4):
                        _one_step(model, loss_fn, opt, scaler, xd, yd)
                assert rec.syncs == 0, rec.report("sync")
                assert rec.h2d_bytes == 0, rec.report("h2d")
            else:
                for _ in range(4):
                    _one_step(model, loss_fn, opt, scaler, xd, yd)
        return [mc.backend.to_numpy(p.data) for p in model.parameters()], scaler.scale_value

    host, host_scale = run("numpy")
    dev, dev_scale = run("cupy")
    # 2^10, good step 2 -> 2^11 at the growth, overflow at 3 -> 2^10, ...
    assert host_scale == dev_scale
    for a, b in zip(host, dev, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# -- the command line ------------------------------------------------------------------------

def test_cli_precision_flag(tmp_path, monkeypatch, capsys):
    from minicnn import cli

    monkeypatch.setenv("MINICNN_BACKEND", "numpy")
    out = tmp_path / "run"
    rc = cli.main(["train", "--dataset", "mnist", "--smoke", "--precision", "bf16", "--epochs",
                   "1", "--out", str(out), "--no-plots", "--no-progress"])
    assert rc == 0
    assert "precision bf16" in capsys.readouterr().out
    assert (out / "model.npz").exists()
    assert P.get_precision() == "fp32"
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--dataset", "mnist", "--smoke", "--precision", "fp8"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --precision: invalid choice: 'fp8'" in err[0]
    assert "fp32" in err[0] and "bf16" in err[0]


def test_math_check_of_the_twin_claim():
    """Products of two bf16 / fp16 / tf32 numbers are exact in float32 (2p ≤ 24 bits), so a
    float32 GEMM of rounded inputs is the tensor-core product up to summation order."""
    rng = np.random.default_rng(5)
    for fmt in ("bf16", "tf32", "fp16"):
        a = P.round_to(rng.standard_normal(10_000).astype(np.float32), fmt)
        b = P.round_to(rng.standard_normal(10_000).astype(np.float32), fmt)
        exact = a.astype(np.float64) * b.astype(np.float64)
        assert np.array_equal((a * b).astype(np.float64), exact), fmt
    assert math.isclose(P.round_to(np.float32([65504.0]), "fp16")[0], 65504.0)
