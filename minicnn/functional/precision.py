"""Mixed precision: which number format the GEMMs read, with float32 everywhere else.

A training step's time on a GPU goes into its matrix multiplies (the convolutions' GEMMs
and Linear's), and tensor cores run them several times faster when their *inputs* are in a
16- or 19-bit format, while still accumulating the products in float32. So a precision
policy changes one thing: the inputs of every GEMM are rounded to the policy's format.
Everything else stays float32: the weights the optimizer updates (the float32 *master
weights*) and its state, the activations between layers, BatchNorm's statistics, the
softmax and the loss.

=======  =====================================  ==============================================
policy   GEMM inputs rounded to                 bits: sign / exponent / stored mantissa
=======  =====================================  ==============================================
fp32     nothing (the default)                  1 / 8 / 23
tf32     TensorFloat-32                         1 / 8 / 10   (float32's range, fp16's mantissa)
bf16     bfloat16                               1 / 8 / 7    (float32's range)
fp16     IEEE half precision                    1 / 5 / 10   (max 65504: loss scaling needed,
                                                              ``minicnn.optim.LossScaler``)
=======  =====================================  ==============================================

Why a float32 GEMM of rounded inputs is the exact twin of the tensor-core GEMM: the product
of two numbers with p-bit significands has at most 2p bits, and 2·11 = 22 (tf32, fp16) and
2·8 = 16 (bf16) are below float32's 24, so every product is exact in float32; what remains
is float32 accumulation, as on the tensor cores (up to the order of the additions).

How each policy runs:

- On NumPy (the CPU): ``gemm_inputs`` rounds each float32 input to the format's nearest
  value, ties to even, and keeps it as float32 (``round_to``): a slow, exact twin, whose
  only purpose is that CI tests the mechanics and the accuracy of the formats.
- On CuPy (the GPU): tf32 switches cuBLAS to its TF32 compute type for float32 GEMMs
  (``CUBLAS_COMPUTE_32F_FAST_TF32``) while the policy is on: the inputs are not touched, the
  tensor cores round them, no launch is added. Under bf16 and fp16, ``matmul`` stores both
  inputs in 16 bits (one launch each; the patch matrices ``im2col`` already gathers in 16
  bits, ``gemm_storage``) and runs cuBLAS's mixed-precision GEMM: 16-bit inputs, float32
  sums and result, on the tensor cores (``minicnn.kernels.gemm16``). The GEMMs of
  Conv2d's im2col route (forward, dW, dx) and of Linear go through ``matmul``. The layers
  that do their own products (Winograd, grouped and transposed convolutions) take
  ``gemm_inputs``: rounded float32 arrays, the same numbers at float32's speed. On a CuPy
  without the compute-type switch (the strict CPU stand-in of the tests), tf32 rounds like
  bf16 and fp16 do.

Arrays of any other dtype pass unchanged: a float64 gradient check is never rounded, under
any policy. Under fp32 ``gemm_inputs`` returns its arguments: no pass and no launch.

The policy is a module-level setting, like ``torch.set_float32_matmul_precision`` or Keras's
``mixed_precision.set_global_policy``: ``set_precision(name)``, ``get_precision()``, and
``autocast(name)``, a context that sets it and restores the previous one (what
``fit(..., precision=...)`` uses). One model trains in one thread, so one setting suffices.

Tests: tests/test_precision.py, tests/test_kernels_gemm16.py
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backend import cupy_available, get_array_module, get_cupy
from ..kernels import gemm16

__all__ = ["PRECISIONS", "get_precision", "set_precision", "autocast", "check_precision",
           "round_to", "round_mantissa", "gemm_input", "gemm_inputs", "gemm_storage",
           "matmul"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")

# Mantissa bits that tf32 and bf16 drop from float32's 23: 23 - 10 and 23 - 7.
_DROPPED_BITS = {"tf32": 13, "bf16": 16}
# The formats whose GEMMs read 16-bit inputs on CuPy (``matmul``); tf32 is cuBLAS's own.
_STORED_16BIT = ("bf16", "fp16")


class _Policy(threading.local):
    """The current setting: ``name``, and whether CuPy's cuBLAS rounds tf32 itself.

    Per thread (the class attributes are each new thread's start): the thread-ranks of
    ``minicnn.distributed.run_in_threads`` each enter and leave ``fit``'s ``autocast`` on
    their own, and one rank's exit must not switch another's policy mid-step. They start
    from the policy of the thread that launched them.
    """

    name = "fp32"
    cublas_tf32 = False     # tf32 through cuBLAS's compute type: no rounding by us on CuPy


_POLICY = _Policy()


def check_precision(name: Any, where: str = "precision") -> str:
    """``name`` if it is one of ``PRECISIONS``, else a ValueError naming them."""
    if not isinstance(name, str) or name not in PRECISIONS:
        raise ValueError(f"{where} must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def get_precision() -> str:
    """The current policy: "fp32" (the default), "tf32", "bf16" or "fp16"."""
    return _POLICY.name


def set_precision(name: str) -> None:
    """Make ``name`` the policy of every GEMM of the calling thread from now on (see the
    module docstring).

    On a GPU whose CuPy has cuBLAS's compute-type switch, "tf32" sets float32 GEMMs to TF32
    (and any other policy back to what it was); elsewhere the GEMM inputs are rounded.
    """
    check_precision(name)
    _POLICY.cublas_tf32 = _set_cublas_tf32(name == "tf32")
    _POLICY.name = name


@contextlib.contextmanager
def autocast(name: str | None) -> Iterator[str]:
    """Run the block under the policy ``name`` (None: the current one), then restore.

    ``with autocast("bf16"): model.forward(x)``, as PyTorch's ``torch.autocast``; yields the
    policy in force.
    """
    previous = get_precision()
    set_precision(previous if name is None else name)
    try:
        yield get_precision()
    finally:
        set_precision(previous)


_CUBLAS_DEFAULT: list[Any] = []     # cuBLAS's float32 compute type before the first switch


def _set_cublas_tf32(on: bool) -> bool:
    """Switch CuPy's float32 GEMMs to TF32 (on) or back; True when TF32 is now cuBLAS's job.

    Through ``cupy._core._routines_linalg.set_compute_type``, which CuPy's matmul reads at
    every call (host state, no launch). False without CuPy or without that switch (then
    ``gemm_inputs`` rounds the inputs itself).
    """
    if not (on or _CUBLAS_DEFAULT) or not cupy_available():
        return False
    linalg = getattr(getattr(get_cupy(), "_core", None), "_routines_linalg", None)
    if linalg is None or not hasattr(linalg, "set_compute_type"):
        return False
    if not _CUBLAS_DEFAULT:
        _CUBLAS_DEFAULT.append(linalg.get_compute_type(np.float32))
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_TF32 if on else _CUBLAS_DEFAULT[0])
    return on


def round_mantissa(x: Any, dropped_bits: int) -> Any:
    """float32 ``x`` with its mantissa rounded to 23 - ``dropped_bits`` bits, ties to even.

    On the bit pattern u (uint32) of each value: add half of the last kept bit's weight,
    minus one unless the last kept bit is odd, and clear the dropped bits::

        u' = (u + 2^(d-1) - 1 + ((u >> d) & 1)) & ~(2^d - 1)

    A carry out of the mantissa increments the exponent, which is exactly rounding up to the
    next binade (and from the largest finite values to infinity, as the conversion does);
    subnormals round the same way. Infinities and NaNs are passed through unchanged (clearing
    a NaN's low bits could make it an infinity). d = 16 gives bfloat16, d = 13 TF32.
    Returns a new float32 array; works on NumPy and CuPy.
    """
    xp = get_array_module(x)
    u = x.view(xp.uint32)
    d = np.uint32(dropped_bits)
    half = np.uint32((1 << (dropped_bits - 1)) - 1)
    mask = np.uint32(~((1 << dropped_bits) - 1) & 0xFFFFFFFF)
    rounded = ((u + half + ((u >> d) & np.uint32(1))) & mask).view(xp.float32)
    return xp.where(xp.isfinite(x), rounded, x)


def round_to(x: Any, fmt: str) -> Any:
    """The float32 array ``x`` rounded to the nearest ``fmt`` value (ties to even), as float32.

    "fp32" returns ``x``; "tf32" and "bf16" round the mantissa (``round_mantissa``); "fp16"
    goes through float16 and back, so values beyond 65504 become ±inf and tiny ones flush to
    fp16's subnormals or zero, as on the GPU (the overflow loss scaling watches for).
    Equals ``ml_dtypes``' bfloat16 conversion and NumPy's float16 conversion (the tests).
    """
    check_precision(fmt, "round_to: fmt")
    if fmt == "fp32":
        return x
    xp = get_array_module(x)
    if x.dtype != np.float32:
        raise TypeError(f"round_to: expected a float32 array, got {x.dtype}")
    if fmt == "fp16":
        with np.errstate(over="ignore", invalid="ignore"):   # inf and NaN are fp16's too
            return x.astype(xp.float16).astype(xp.float32)
    return round_mantissa(x, _DROPPED_BITS[fmt])


def gemm_input(a: Any) -> Any:
    """One GEMM input under the current policy: ``a`` itself under fp32, for an array that is
    not float32, or for tf32 that cuBLAS rounds; else ``round_to(a, policy)``."""
    fmt = _POLICY.name
    if fmt == "fp32" or a.dtype != np.float32:
        return a
    if fmt == "tf32" and _POLICY.cublas_tf32 and get_array_module(a) is not np:
        return a
    if a.ndim == 2 and not a.flags.c_contiguous and a.T.flags.c_contiguous:
        return round_to(a.T, fmt).T     # a transposed view stays one (the same GEMM after)
    return round_to(a, fmt)


def gemm_inputs(a: Any, b: Any) -> tuple[Any, Any]:
    """Both inputs of one GEMM under the current policy (``gemm_input`` of each): the product
    ``a @ b`` of the results is float32 math on the policy's numbers."""
    if _POLICY.name == "fp32":
        return a, b
    return gemm_input(a), gemm_input(b)


def gemm_storage(x: Any) -> Any:
    """The dtype to write a GEMM input derived from ``x`` in (``im2col``'s patches): the
    policy's 16-bit storage (``kernels.gemm16.STORAGE``: uint16 bit patterns for bf16,
    float16 for fp16) when ``matmul`` runs 16-bit GEMMs for ``x`` (CuPy, float32, bf16 or
    fp16), so the patches are rounded in the pass that writes them; else None (x's dtype)."""
    fmt = _POLICY.name
    if fmt in _STORED_16BIT and x.dtype == np.float32 and get_array_module(x) is not np:
        return gemm16.STORAGE[fmt]
    return None


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """``a @ b``, the GEMM of the current policy: float32 sums of the policy's numbers.

    Under fp32, or for inputs that are not both float32: ``a @ b``. On NumPy, and for tf32
    on a CuPy that switches cuBLAS: ``gemm_inputs`` then ``a @ b`` (the exact twin). On CuPy
    under bf16 or fp16, for 2-D inputs: each stored in 16 bits (unless it already is: the
    patches ``im2col`` writes in ``gemm_storage``'s dtype) and one cuBLAS mixed-precision
    GEMM (``minicnn.kernels.gemm16``), the tensor cores' speed.

    Parameters
    ----------
    a : array (m, k), any strides (a transposed view costs nothing on the 16-bit route)
    b : array (k, n)
    out : array (m, n), optional
        C-contiguous, of the product's dtype: written and returned.

    Returns
    -------
    array (m, n): ``out``, or a new array
    """
    fmt = _POLICY.name
    xp = get_array_module(a)
    if fmt in _STORED_16BIT and xp is not np and a.ndim == 2 and b.ndim == 2:
        stored = (gemm16.is_16bit(a, fmt), gemm16.is_16bit(b, fmt))
        if all(s or m.dtype == np.float32 for s, m in zip(stored, (a, b), strict=True)):
            a16 = a if stored[0] else gemm16.to_16bit(a, fmt)
            b16 = b if stored[1] else gemm16.to_16bit(b, fmt)
            return gemm16.gemm(a16, b16, fmt, out=out)
    a, b = gemm_inputs(a, b)
    return a @ b if out is None else xp.matmul(a, b, out=out)
