"""The 16-bit GEMM on CuPy: inputs stored as bfloat16 or float16, products summed in float32.

Why: under the bf16 and fp16 precision policies (``functional/precision.py``) a GEMM's inputs
are numbers of the 16-bit format. Rounding them but keeping them float32 gives the right
numbers at float32's speed; storing them in 16 bits and calling cuBLAS's mixed-precision GEMM
(``cublasGemmEx`` with 16-bit A and B, a float32 C, ``CUBLAS_COMPUTE_32F``) runs the products
on the tensor cores and reads half the bytes. The sums and the result stay float32, so the
GEMM computes the same thing as the twin on the CPU (float32 math on the rounded numbers), up
to the order of the additions.

Two steps per input, then one GEMM:

- ``to_16bit(a, fmt)``: float32 ``a`` rounded to ``fmt`` (nearest, ties to even) and stored in
  16 bits, in ``a``'s memory order (C or Fortran, so a transposed view stays a view of the
  result; any other layout is copied first). fp16 is CuPy's ``astype(float16)``; bf16 has no
  CuPy dtype, so it is stored as its bit patterns in a ``uint16`` array, written by the kernel
  ``gemm16_float_to_bf16`` (``gemm16.cu``). One launch each.
- ``gemm(a16, b16, fmt, out=None)``: C = A @ B, float32, C-contiguous, by one ``gemmEx`` call.

cuBLAS reads matrices column-major. A C-contiguous (m, n) matrix is, read column-major, its
transpose (n, m): so C = A @ B is computed as Cᵀ = Bᵀ Aᵀ, and each input is passed as it lies
in memory: a C-ordered one as the transpose cuBLAS wants (``CUBLAS_OP_N``, leading dimension
its row length), a Fortran-ordered one as the matrix itself (``CUBLAS_OP_T``, leading
dimension its column length), which is what CuPy's own ``matmul`` does.

On the strict CPU stand-in (tests/strict_device.py) ``gemmEx`` is emulated from the raw
pointers, leading dimensions and transposes, with its reads and writes checked to lie inside
live device arrays: the layout logic runs in CI. The twin of the conversion kernel is below.

Tests: tests/test_kernels_gemm16.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module
from . import launch, twin

__all__ = ["FORMATS", "to_16bit", "from_16bit", "is_16bit", "gemm"]

FAMILY = "gemm16"
FORMATS = ("bf16", "fp16")
# The 16-bit storage of each format: bf16 as its bit patterns (CuPy has no bfloat16 dtype).
STORAGE = {"bf16": np.dtype(np.uint16), "fp16": np.dtype(np.float16)}

# cuBLAS's GEMM scalars, read from host memory (the default pointer mode): kept alive here.
_ONE = np.ones(1, dtype=np.float32)
_ZERO = np.zeros(1, dtype=np.float32)


@twin("gemm16_float_to_bf16")
def float_to_bf16_twin(x: np.ndarray, y: np.ndarray, n: np.int64) -> None:
    """y[i] = the bfloat16 bit pattern of float32 x[i] (nearest, ties to even; a NaN keeps
    its top half with the quiet bit set), for i < n."""
    u = x[:n].view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    y[:n] = np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


def is_16bit(a: Any, fmt: str) -> bool:
    """True when ``a`` is the 16-bit storage of ``fmt`` (``to_16bit``'s result)."""
    return np.dtype(a.dtype) == STORAGE[fmt]


def _order(a: Any) -> str | None:
    """"C" or "F" when ``a`` is contiguous in that order (C preferred), else None."""
    if a.flags.c_contiguous:
        return "C"
    return "F" if a.flags.f_contiguous else None


def _flat(a: Any, order: str) -> Any:
    """The 1-D view of a contiguous ``a``'s memory."""
    return (a if order == "C" else a.T).reshape(-1)


def to_16bit(a: Any, fmt: str) -> Any:
    """The float32 2-D array ``a`` rounded to ``fmt`` ("bf16" or "fp16") and stored in 16 bits.

    Returns an array of ``a``'s shape, C- or Fortran-ordered as ``a`` is (else C): float16 for
    fp16, ``uint16`` bit patterns for bf16. One launch (plus a copy for a strided ``a``).
    """
    xp = get_array_module(a)
    if a.dtype != np.float32 or a.ndim != 2:
        raise TypeError(f"kernels.gemm16.to_16bit: a 2-D float32 array expected, got "
                        f"{a.ndim}-D {a.dtype}")
    order = _order(a)
    if order is None:
        a, order = xp.ascontiguousarray(a), "C"
    if fmt == "fp16":
        return a.astype(xp.float16, order=order)
    if fmt != "bf16":
        raise ValueError(f"kernels.gemm16.to_16bit: fmt must be one of {FORMATS}, got {fmt!r}")
    y = xp.empty(a.shape, dtype=xp.uint16, order=order)
    launch(xp, FAMILY, "gemm16_float_to_bf16", np.float32, a.size,
           (_flat(a, order), _flat(y, order), np.int64(a.size)))
    return y


def from_16bit(a16: Any, fmt: str) -> Any:
    """``to_16bit``'s result back as float32 values (exact: every 16-bit value is a float32)."""
    xp = get_array_module(a16)
    if fmt == "fp16":
        return a16.astype(xp.float32)
    return (a16.astype(xp.uint32) << np.uint32(16)).view(xp.float32)


def gemm(a16: Any, b16: Any, fmt: str, out: Any = None) -> Any:
    """C = A @ B in float32 from the 16-bit A (m, k) and B (k, n) of ``to_16bit``.

    One ``cublasGemmEx``: A and B of type ``CUDA_R_16BF`` (bf16) or ``CUDA_R_16F`` (fp16),
    C ``CUDA_R_32F``, compute type ``CUBLAS_COMPUTE_32F`` (float32 sums), the tensor-core
    algorithm, on CuPy's handle and current stream. ``out``: a C-contiguous float32 (m, n)
    array to write into; else a new one. Returns C (m, n), C-contiguous.
    """
    xp = get_array_module(a16)
    (m, k), (k_b, n) = a16.shape, b16.shape
    if k != k_b or not (is_16bit(a16, fmt) and is_16bit(b16, fmt)):
        raise ValueError(f"kernels.gemm16.gemm: ({m}, {k}) @ ({k_b}, {n}) in {fmt} storage "
                         f"expected, got {a16.dtype} and {b16.dtype}")
    if out is None:
        out = xp.empty((m, n), dtype=xp.float32)
    elif (tuple(out.shape) != (m, n) or out.dtype != np.float32
          or not out.flags.c_contiguous):
        raise ValueError(f"kernels.gemm16.gemm: out must be a C-contiguous float32 ({m}, {n}) "
                         f"array, got {out.dtype} {tuple(out.shape)}")
    if _order(a16) is None or _order(b16) is None:
        raise ValueError("kernels.gemm16.gemm: A and B must be C- or Fortran-contiguous "
                         "(to_16bit's results or their transposes)")
    if m == 0 or n == 0:
        return out
    if k == 0:
        out.fill(0)
        return out
    cublas, runtime = xp.cuda.cublas, xp.cuda.runtime
    ab_type = runtime.CUDA_R_16BF if fmt == "bf16" else runtime.CUDA_R_16F
    # Cᵀ (n, m) = Bᵀ (n, k) · Aᵀ (k, m), column-major (see the module docstring).
    op_b, ld_b = (cublas.CUBLAS_OP_N, n) if _order(b16) == "C" else (cublas.CUBLAS_OP_T, k)
    op_a, ld_a = (cublas.CUBLAS_OP_N, k) if _order(a16) == "C" else (cublas.CUBLAS_OP_T, m)
    cublas.gemmEx(xp.cuda.device.get_cublas_handle(), op_b, op_a, n, m, k,
                  _ONE.ctypes.data, b16.data.ptr, ab_type, ld_b,
                  a16.data.ptr, ab_type, ld_a,
                  _ZERO.ctypes.data, out.data.ptr, runtime.CUDA_R_32F, n,
                  cublas.CUBLAS_COMPUTE_32F, cublas.CUBLAS_GEMM_DEFAULT_TENSOR_OP)
    return out
