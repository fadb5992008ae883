"""Fused CUDA kernels for the CuPy backend: CUDA C in ``.cu`` files, a launcher and a NumPy twin
for every entry point.

Why: on a GPU, minicnn's step time is set by how many kernels it launches, not by its
arithmetic (each CuPy operation is one launch of ~5-30 µs of host work; an Adam step over
VGG-12's parameters alone was ~700 of them). A kernel here does in one launch what took
several element-wise operations: an optimizer step over every parameter, BatchNorm's
statistics, normalisation and ReLU, a max-pool with its argmax.

The rules (docs/architecture.md, "Kernels"):

- One ``.cu`` file per family (``optimizer.cu``, ``batchnorm.cu``, ``pool.cu``, ...), next to a
  Python module of the same name that holds its launchers and its twins. Entry points are
  ``extern "C" __global__`` functions, written for the element type ``SCALAR`` (compiled once
  per dtype: ``-DSCALAR=float`` or ``-DSCALAR=double``).
- A kernel's result depends on its arguments only, never on its grid (grid-stride loops;
  a partial-sum count is an argument), so any grid computes the same thing.
- Every entry point has a **twin**: a NumPy function registered with ``@twin("name")`` that
  takes the kernel's arguments, in order (arrays as NumPy arrays, scalars as NumPy scalars),
  and writes the same outputs in place. It is the reference the tests compare the kernel
  with, and what the strict CPU stand-in for CuPy runs when a kernel is launched
  (``tests/strict_device.py``), so every launcher runs in CI without a GPU.
- Layers never call a kernel: a named function in ``functional/`` (or the optimizer) chooses
  the kernel on CuPy and keeps its plain array code on NumPy.
- ``tests/test_kernels.py`` compiles every ``.cu`` with NVRTC for sm_80 and sm_90 (the
  ``kernels`` extra: no GPU or driver needed), fails on a compile error or a register spill,
  and checks that every entry point has a launcher and a twin.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import get_array_module

__all__ = ["KERNEL_DIR", "SCALAR_TYPES", "BLOCK", "twin", "twin_of", "source", "entry_points",
           "kernel", "launch", "grid_for", "uses_kernels"]

KERNEL_DIR = Path(__file__).resolve().parent
# NumPy dtype -> the C type ``SCALAR`` is compiled as.
SCALAR_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
BLOCK = 256                    # threads per block of the element-wise kernels
MAX_BLOCKS = 65535             # grid-stride loops cover the rest

_TWINS: dict[str, Callable[..., None]] = {}
_ENTRY = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


def twin(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn`` as the NumPy twin of the kernel entry point ``name``."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        if name in _TWINS and _TWINS[name] is not fn:
            raise ValueError(f"kernels: two twins for the entry point {name!r}")
        _TWINS[name] = fn
        fn.kernel_name = name  # type: ignore[attr-defined]
        return fn

    return register


def twin_of(name: str) -> Callable[..., None]:
    """The twin registered for the entry point ``name`` (its family module must be imported)."""
    try:
        return _TWINS[name]
    except KeyError:
        raise KeyError(f"kernels: no NumPy twin registered for the entry point {name!r}") from None


def source(family: str) -> str:
    """The CUDA C source of ``family`` (``minicnn/kernels/<family>.cu``)."""
    return (KERNEL_DIR / f"{family}.cu").read_text()


def entry_points(family: str) -> list[str]:
    """The ``extern "C" __global__`` functions of ``family``, in file order."""
    return _ENTRY.findall(source(family))


def uses_kernels(x: Any) -> bool:
    """True when ``x`` lives on CuPy and has a kernel element type (float32 or float64): the
    fused kernels' side. False on NumPy, and for float16 on CuPy (the array code runs)."""
    return get_array_module(x) is not np and np.dtype(x.dtype) in SCALAR_TYPES


@functools.cache
def _module(xp: Any, family: str, scalar: str, device: int) -> Any:
    # One compiled module per (family, element type, device); CuPy caches the binary on disk.
    return xp.RawModule(code=source(family), options=("-std=c++17", f"-DSCALAR={scalar}"))


def kernel(xp: Any, family: str, name: str, dtype: Any) -> Any:
    """The compiled entry point ``name`` of ``family`` for element type ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype not in SCALAR_TYPES:
        raise TypeError(f"kernels.{family}.{name}: float32 or float64 arrays expected, "
                        f"got {dtype}")
    return _module(xp, family, SCALAR_TYPES[dtype], xp.cuda.Device().id).get_function(name)


def grid_for(size: int, block: int = BLOCK) -> int:
    """Blocks for ``size`` elements, one per thread, capped (the loops stride over the rest)."""
    return max(1, min(-(-int(size) // block), MAX_BLOCKS))


def launch(xp: Any, family: str, name: str, dtype: Any, size: int, args: tuple,
           block: int = BLOCK) -> None:
    """Launch ``family.name`` over ``size`` elements (a 1-D grid of ``block`` threads)."""
    kernel(xp, family, name, dtype)((grid_for(size, block),), (block,), args)
