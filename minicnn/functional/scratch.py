"""The scratch arena: one set of buffers, shared by every layer, for arrays that die with a pass.

A convolution's forward needs a patch matrix (``im2col``) and a padded copy of its input; its
backward needs them again, and a block or a patch matrix of dout for dx. Each is dead as soon
as the pass that made it returns. Allocating them afresh every pass costs as much as filling
them (fresh memory is page-faulted in on first touch: ~100 MB per layer per step), and giving
each layer its own buffers for the model's lifetime costs the sum over all layers. The arena
keeps one buffer per *role* instead, shared by all layers, so a model holds the largest patch
matrix of any of its layers, once, however deep it is::

    cols = scratch(xp, "cols", (rows, K), dtype)     # a view of the arena's "cols" buffer

The rules:

- A buffer is valid until the next request with the same name: the next layer's pass gets
  the same memory. Its content is undefined (it holds what the previous user left).
- Never keep one across passes (in a layer's ``cache``) and never return one to the caller
  of ``forward`` / ``backward``: what must live from forward to backward is not scratch.
- Two buffers alive at the same time need two names (``im2col``'s "x_pad" and "cols",
  ``col2im_matmul``'s "dcols_block"); each function that takes a ``workspace`` says which
  names it asks for.
- One buffer per (array module, device, name), of bytes, grown to the largest request and
  viewed as the requested dtype and shape, so float32 and float64 share it. On CuPy the
  buffers are device memory from CuPy's pool, on the device current at the request.
- One arena per thread: the thread-ranks of ``minicnn.distributed.run_in_threads`` run their
  layers at the same time, each in its own buffers (each sized to its shard of the batch).

``release_scratch()`` frees the calling thread's buffers (the next request allocates again);
``scratch_nbytes()`` says how much its arena holds.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from ..backend import get_array_module

__all__ = ["scratch", "scratch_workspace", "scratch_nbytes", "release_scratch", "matmul_into"]

# Per thread: (module name, device id, role) -> flat uint8 buffer
_LOCAL = threading.local()


def _arena() -> dict[tuple[str, int, str], Any]:
    """The calling thread's arena (made on its first request)."""
    arena = getattr(_LOCAL, "arena", None)
    if arena is None:
        arena = _LOCAL.arena = {}
    return arena


def _key(xp: Any, name: str) -> tuple[str, int, str]:
    device = xp.cuda.Device().id if xp is not np else -1
    return xp.__name__, device, name


def scratch(xp: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """A C-contiguous array of ``shape`` and ``dtype`` in the arena's buffer ``name``.

    Content undefined; valid until the next ``scratch`` request for ``name`` (from any layer).
    The buffer grows when a request is larger than any before (the old one is dropped), so
    after the first training step every request is served from memory already touched.

    Parameters
    ----------
    xp : the array module (NumPy or CuPy) of the arrays it will be used with
    name : the role ("cols", "x_pad", "dcols_block", ...)
    shape, dtype : of the view returned
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    key = _key(xp, name)
    arena = _arena()
    buf = arena.get(key)
    if buf is None or buf.size < nbytes:
        arena.pop(key, None)         # drop the old buffer before allocating the larger one
        buf = arena[key] = xp.empty(max(nbytes, 1), dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def matmul_into(a: Any, b: Any, out: Any) -> Any:
    """``xp.matmul(a, b, out=out)`` for an ``out`` whose content is undefined (a scratch view,
    ``xp.empty``).

    A (stacked) product with a result dimension of 1 is a matrix-vector product, which NumPy
    hands to BLAS gemv with beta = 0, and some OpenBLAS kernels apply that beta as a multiply:
    leftover inf or NaN bytes in ``out`` (the arena mixes dtypes) then raise "invalid value
    encountered in matmul" or come out NaN (seen once in CI for a 1-channel Winograd case).
    Such an ``out`` is one vector per product, so it is zeroed first; GEMM-shaped ones are not.
    """
    if out.ndim >= 2 and 1 in out.shape[-2:]:
        out.fill(0)
    return get_array_module(out).matmul(a, b, out=out)


def scratch_workspace(xp: Any) -> Any:
    """``scratch`` for the array module ``xp`` as the ``workspace(name, shape, dtype)``
    callable that ``im2col``, ``col2im_matmul`` and ``conv_input_grad`` take."""

    def workspace(name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        return scratch(xp, name, shape, dtype)

    return workspace


def scratch_nbytes(xp: Any = None) -> int:
    """Bytes the calling thread's arena holds (for ``xp`` alone, or for every module)."""
    return sum(int(buf.size) for (module, _, _), buf in _arena().items()
               if xp is None or module == xp.__name__)


def release_scratch() -> None:
    """Drop the calling thread's buffers (CuPy's pool keeps the device blocks for reuse until
    freed). A thread's arena is freed with the thread."""
    _arena().clear()
