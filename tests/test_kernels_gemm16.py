"""The 16-bit GEMM of the bf16 and fp16 policies on CuPy (minicnn/kernels/gemm16.py, .cu).

- The conversion kernel ``gemm16_float_to_bf16``: its CUDA C (g++ emulation,
  tests/cuda_emulation.py) equals its twin, and the twin equals ``ml_dtypes``' bfloat16
  conversion, on ties, NaNs, infinities, the overflow to infinity and subnormals.
- On the strict CPU stand-in, whose ``cublas.gemmEx`` is emulated from the raw pointers,
  leading dimensions and transposes (reads and writes checked to stay inside device arrays):
  ``precision.matmul`` under bf16 and fp16 equals the NumPy twin (float32 GEMM of the rounded
  numbers) for C-ordered, Fortran-ordered and strided inputs of any size, empty ones
  included, in three launches and no host sync; ``out=`` is written in place.
- The emulation refuses what cuBLAS would get wrong (a leading dimension too small, memory
  outside the arrays): the layout checks above can fail.
- The layers' GEMMs (Conv2d's three im2col routes, Linear) go through it on the device, and
  Conv2d's patch matrices are gathered straight into 16 bits (``im2col_gather_bf16`` /
  ``_fp16``).
"""

from __future__ import annotations

import copy

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn.functional import precision as P
from minicnn.init import set_seed
from minicnn.kernels import gemm16, twin_of
from tests.cuda_emulation import check_against_twin, skip_without_gxx
from tests.test_precision import GEMM_LAYERS

on_the_stand_in = settings(max_examples=40, deadline=None,
                           suppress_health_check=[HealthCheck.function_scoped_fixture])


def special_floats(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 values where rounding to bfloat16 goes wrong first: exact ties (both parities
    of the last kept bit), NaNs whose payload is only in the dropped bits (negative ones
    too), ±inf, the largest finite values (round to inf), subnormals, ±0; and random ones."""
    u = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F800001, 0xFF800001,
                         0x7FC00000, 0xFFFFFFFF, 0x7F800000, 0xFF800000, 0x7F7FFFFF,
                         0xFF7FFFFF, 0x00000001, 0x00008000, 0x00018000, 0x807FFFFF,
                         0x00000000, 0x80000000, 0x3F807FFF, 0x3F808001], dtype=np.uint32)
    u[: len(specials)] = specials[:n]
    return u.view(np.float32)


# -- the conversion kernel ---------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 600), grid=st.integers(1, 3), block=st.sampled_from([1, 32, 64]),
       seed=st.integers(0, 2**31 - 1))
def test_emulated_bf16_conversion_equals_its_twin(n, grid, block, seed):
    skip_without_gxx()
    x = special_floats(np.random.default_rng(seed), n)
    y = np.empty(n, np.uint16)
    check_against_twin("gemm16", "gemm16_float_to_bf16", np.float32, grid, block,
                       (x, y, np.int64(n)), outputs=(1,))


def test_bf16_twin_equals_ml_dtypes_and_keeps_nans():
    x = special_floats(np.random.default_rng(0), 4000)
    y = np.empty(x.size, np.uint16)
    twin_of("gemm16_float_to_bf16")(x, y, np.int64(x.size))
    finite_or_inf = ~np.isnan(x)
    with np.errstate(invalid="ignore"):
        expected = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(y[finite_or_inf], expected[finite_or_inf])
    widened = gemm16.from_16bit(y, "bf16")
    assert np.isnan(widened[~finite_or_inf]).all()
    np.testing.assert_array_equal(widened[finite_or_inf], P.round_to(x, "bf16")[finite_or_inf])
    assert np.isinf(widened[x.view(np.uint32) == 0x7F7FFFFF]).all()     # overflow to inf


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_16bit_storage_holds_round_to_values(fmt):
    """The 16-bit storage (fp16: astype, bf16: the conversion's twin) read back by
    ``from_16bit`` holds ``round_to``'s values: what the GEMM multiplies is the twin's."""
    x = special_floats(np.random.default_rng(1), 64).reshape(8, 8)
    x = x[np.isfinite(x).all(axis=1)]
    if fmt == "fp16":
        with np.errstate(over="ignore"):
            stored = x.astype(np.float16)
    else:
        stored = np.empty(x.shape, np.uint16)
        twin_of("gemm16_float_to_bf16")(x.reshape(-1), stored.reshape(-1), np.int64(x.size))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(gemm16.from_16bit(stored, fmt), P.round_to(x, fmt))


# -- the GEMM on the stand-in ------------------------------------------------------------------

LAYOUTS = ["C", "F", "strided"]


def _on_device(cp, a: np.ndarray, layout: str):
    """``a`` on the device, stored C-ordered, Fortran-ordered, or as a strided view."""
    if layout == "C":
        return cp.asarray(np.ascontiguousarray(a))
    if layout == "F":
        return cp.asarray(np.ascontiguousarray(a.T)).T
    padded = np.zeros((a.shape[0] + 2, 2 * a.shape[1] + 1), np.float32)
    padded[1:-1, 1:-1:2] = a
    return cp.asarray(padded)[1:-1, 1:-1:2]


@pytest.mark.cupy
@on_the_stand_in
@given(m=st.integers(0, 9), k=st.integers(0, 9), n=st.integers(0, 9),
       fmt=st.sampled_from(["bf16", "fp16"]), layout_a=st.sampled_from(LAYOUTS),
       layout_b=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16))
def test_matmul_on_the_device_equals_the_numpy_twin(strict_cupy, m, k, n, fmt, layout_a,
                                                    layout_b, seed):
    import cupy as cp  # the stand-in

    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    b = (rng.standard_normal((k, n)) * 3).astype(np.float32)
    with P.autocast(fmt):
        expected = P.matmul(a, b)                          # NumPy: rounded float32 GEMM
        A, B = _on_device(cp, a, layout_a), _on_device(cp, b, layout_b)
        with strict_cupy.record() as rec:
            C = P.matmul(A, B)
    assert C.dtype == np.float32 and C.shape == (m, n) and C.flags.c_contiguous
    np.testing.assert_allclose(cp.asnumpy(C), expected, rtol=1e-6, atol=1e-5)
    assert rec.syncs == 0 and rec.h2d_bytes == 0 and rec.d2h_bytes == 0
    what = [e.what for e in rec.launch_events]
    # two conversions and one GEMM; an empty product launches no GEMM, and k = 0 a fill
    assert what.count("cublas.gemmEx") == (1 if m * n * k else 0), what
    copies = sum(not (X.flags.c_contiguous or X.flags.f_contiguous) for X in (A, B))
    assert len(what) == 2 + copies + (1 if m * n else 0), what


@pytest.mark.cupy
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_matmul_writes_into_out(strict_cupy, fmt):
    import cupy as cp

    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    out = cp.full((6, 4), np.nan, dtype=np.float32)
    with P.autocast(fmt):
        expected = P.matmul(a, b)
        C = P.matmul(cp.asarray(a), cp.asarray(b), out=out)
        assert C is out
        np.testing.assert_allclose(cp.asnumpy(out), expected, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="C-contiguous float32"):
            P.matmul(cp.asarray(a), cp.asarray(b), out=cp.empty((4, 6), np.float32).T)


@pytest.mark.cupy
def test_the_gemm_emulation_refuses_what_cublas_gets_wrong(strict_cupy):
    """A wrong leading dimension, and a matrix larger than its memory: the layout checks of
    the test above are real (the emulation does not read past an array)."""
    import cupy as cp

    cublas, runtime = cp.cuda.cublas, cp.cuda.runtime
    a16 = gemm16.to_16bit(cp.ones((4, 3), np.float32), "bf16")
    c = cp.empty((4, 4), np.float32)
    args = dict(handle=cp.cuda.device.get_cublas_handle(), transa=0, transb=0, m=4, n=4, k=3,
                alpha=gemm16._ONE.ctypes.data, A=a16.data.ptr, Atype=runtime.CUDA_R_16BF,
                lda=4, B=a16.data.ptr, Btype=runtime.CUDA_R_16BF, ldb=3,
                beta=gemm16._ZERO.ctypes.data, C=c.data.ptr, Ctype=runtime.CUDA_R_32F, ldc=4,
                computeType=cublas.CUBLAS_COMPUTE_32F,
                algo=cublas.CUBLAS_GEMM_DEFAULT_TENSOR_OP)
    # (4, 3) column-major A with lda 4 needs 12 elements: a16 has them; B (3, 4) needs 12 too
    cublas.gemmEx(**args)
    np.testing.assert_array_equal(cp.asnumpy(c), np.full((4, 4), 3, np.float32))
    with pytest.raises(ValueError, match="leading dimension"):
        cublas.gemmEx(**{**args, "lda": 3})
    with pytest.raises(strict_cupy.StrictDeviceError, match="not inside a device array"):
        cublas.gemmEx(**{**args, "k": 4, "ldb": 4})        # B (4, 4) from 12 elements
    with pytest.raises(ValueError, match="types"):
        cublas.gemmEx(**{**args, "Btype": runtime.CUDA_R_16F})


@pytest.mark.cupy
def test_gemm_refuses_mismatched_storage(strict_cupy):
    import cupy as cp

    a = gemm16.to_16bit(cp.ones((2, 3), np.float32), "fp16")
    b = gemm16.to_16bit(cp.ones((3, 2), np.float32), "bf16")
    with pytest.raises(ValueError, match="storage"):
        gemm16.gemm(a, b, "fp16")
    with pytest.raises(TypeError, match="float32"):
        gemm16.to_16bit(cp.ones((2, 3), np.float64), "bf16")


# -- the layers on the device ------------------------------------------------------------------

# test_precision's GEMM layers (the grouped one does its own products: rounded float32 inputs)
LAYERS = {name: case for name, case in GEMM_LAYERS.items() if name != "conv_grouped"}
LAYERS["linear_3d"] = (lambda: L.Linear(12, 5), (2, 3, 12), (2, 3, 5))


@pytest.mark.cupy
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gemms_run_in_16_bits_on_the_device(strict_cupy, name, fmt):
    """Forward and backward on the device: every GEMM is a gemmEx of 16-bit inputs (none a
    float32 matmul), the patches are gathered in 16 bits, and y, dx, dW equal the NumPy
    twin's."""
    import cupy as cp

    make, x_shape, dout_shape = LAYERS[name]
    rng = np.random.default_rng(3)
    mc.set_backend("numpy")
    set_seed(0)
    layer = make()
    x = rng.standard_normal(x_shape).astype(np.float32)
    dout = rng.standard_normal(dout_shape).astype(np.float32)
    host = copy.deepcopy(layer)
    with P.autocast(fmt):
        y, dx = host.forward(x), host.backward(dout)
    mc.set_backend("cupy")
    dev = copy.deepcopy(layer).to("gpu")
    with P.autocast(fmt), strict_cupy.record() as rec:
        y_d, dx_d = dev.forward(cp.asarray(x)), dev.backward(cp.asarray(dout))
    assert rec.syncs == 0
    what = [e.what for e in rec.launch_events]
    assert what.count("cublas.gemmEx") == 3, what                 # y, dW, dx
    assert not any("matmul" in w for w in what), what
    if name.startswith("conv"):        # the patches are gathered in 16 bits, never converted
        assert what.count(f"RawKernel im2col_gather_{fmt}") == 2, what
        assert "RawKernel im2col_gather" not in what, what
    for got, want in ((y_d, y), (dx_d, dx), (dev.W.grad, host.W.grad)):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-5, atol=1e-5)
