"""The array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

minicnn's layers never import NumPy or CuPy directly for their math. They ask the array they
are given which module it belongs to (``xp = get_array_module(x)``) and call ``xp.exp``,
``xp.matmul``, ... on it, so one piece of code runs on both. The *current backend* only
decides where new arrays are created: parameters at construction, batches in the data loader.

Choose it with ``set_backend("numpy" | "cupy" | "auto")`` or the environment variable
``MINICNN_BACKEND`` (read once, at the first call that needs it). ``"auto"`` means CuPy when
it is installed and a GPU works, else NumPy.

CuPy is imported lazily and only here, so minicnn imports and runs without it.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "BackendError",
    "set_backend",
    "get_backend",
    "get_xp",
    "get_array_module",
    "to_device",
    "to_numpy",
    "cupy_available",
    "get_cupy",
    "get_special",
    "blas_threads",
    "available_cores",
]

_CUPY_INSTALL_HINT = (
    "Install the CuPy wheel that matches your CUDA version, e.g. "
    "`pip install 'minicnn[cuda12]'` (cupy-cuda12x) or `pip install 'minicnn[cuda13]'` "
    "(cupy-cuda13x); `nvidia-smi` prints the CUDA version your driver supports. "
    "Or use set_backend('numpy') / MINICNN_BACKEND=numpy to run on the CPU."
)

_VALID = ("numpy", "cupy", "auto")
_backend: str | None = None  # "numpy" or "cupy" once resolved
_cupy: ModuleType | None = None
_cupy_error: str | None = None


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _import_cupy() -> ModuleType | None:
    """Import CuPy and check that it sees a working GPU; remember why not otherwise."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy  # noqa: PLC0415 (lazy on purpose)
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        _cupy_error = f"CuPy is not installed or failed to import ({exc})."
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device found")
        cupy.zeros(1).sum()  # touch the device: fails early on driver problems
    except Exception as exc:
        _cupy_error = f"CuPy is installed but no GPU is usable ({exc})."
        return None
    _cupy = cupy
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and a GPU answers."""
    return _import_cupy() is not None


def cupy_error() -> str | None:
    """Why CuPy is unusable (one sentence for an error or warning), or None when it works."""
    _import_cupy()
    return _cupy_error


def set_backend(name: str) -> str:
    """Select where new arrays live: ``"numpy"``, ``"cupy"`` or ``"auto"``.

    Returns the backend actually chosen ("numpy" or "cupy").

    Raises
    ------
    ValueError
        For a name other than the three above.
    BackendError
        For ``"cupy"`` when CuPy is missing or sees no GPU; the message says how to install it.
    """
    global _backend
    name = str(name).strip().lower()
    if name not in _VALID:
        raise ValueError(f"set_backend: expected one of {_VALID}, got {name!r}")
    if name == "auto":
        _backend = "cupy" if cupy_available() else "numpy"
    elif name == "cupy":
        if not cupy_available():
            raise BackendError(f"Backend 'cupy' requested but unusable: {_cupy_error} "
                               f"{_CUPY_INSTALL_HINT}")
        _backend = "cupy"
    else:
        _backend = "numpy"
    return _backend


def get_backend() -> str:
    """The current backend's name, ``"numpy"`` or ``"cupy"``.

    On first use it is taken from ``$MINICNN_BACKEND`` (default ``"numpy"``).
    """
    if _backend is None:
        set_backend(os.environ.get("MINICNN_BACKEND", "numpy") or "numpy")
    return _backend  # type: ignore[return-value]


def get_xp() -> ModuleType:
    """The array module of the current backend (``numpy`` or ``cupy``)."""
    return _cupy if get_backend() == "cupy" else np  # type: ignore[return-value]


def get_cupy() -> ModuleType:
    """The CuPy module, imported and checked; raises ``BackendError`` (with the install hint)
    when CuPy is missing or sees no GPU. The one door through which minicnn reaches CuPy."""
    cp = _import_cupy()
    if cp is None:
        raise BackendError(f"CuPy is needed here but unusable: {_cupy_error} {_CUPY_INSTALL_HINT}")
    return cp


def _loaded_cupy() -> ModuleType | None:
    """CuPy if anyone (minicnn or the user) has imported it, else None; never imports it.

    A user may hand minicnn a CuPy array without ever calling ``set_backend``: its arrays must
    still be recognised, so this looks in ``sys.modules`` rather than at our own import.
    """
    if _cupy is not None:
        return _cupy
    cp = sys.modules.get("cupy")
    return cp if cp is not None and hasattr(cp, "ndarray") else None


def get_array_module(*arrays: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) that owns ``arrays``.

    Layers call this on their input, so the same code runs on the CPU and the GPU. Without
    CuPy loaded, everything is NumPy.
    """
    cp = _loaded_cupy()
    if cp is not None:
        return cp.get_array_module(*arrays)
    return np


def get_special(xp: ModuleType) -> Any:
    """CuPy's special-function namespace (``erf``, ``erfc``: one fused GPU kernel each) when
    ``xp`` is CuPy and it has one; None otherwise (on NumPy minicnn uses its own formulas:
    SciPy is not a dependency)."""
    if xp is np:
        return None
    try:
        import cupyx.scipy.special as special  # noqa: PLC0415 (lazy on purpose)
    except Exception:
        return None
    return special


def to_device(x: Any, dtype: Any = None, *, like: Any = None) -> Any:
    """Return ``x`` as an array of the current backend (copying only when needed).

    With ``like=ref``, the device is the one ``ref`` lives on instead (e.g. labels brought to
    the logits' device), whatever the current backend is.
    """
    xp = get_xp() if like is None else get_array_module(like)
    if xp is np:
        out = to_numpy(x)
    else:
        out = xp.asarray(x)
    if dtype is not None:
        out = out.astype(dtype, copy=False)
    return out


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array (from the GPU if it lives there)."""
    cp = _loaded_cupy()
    if cp is not None and isinstance(x, cp.ndarray):
        return cp.asnumpy(x)
    return np.asarray(x)


def available_cores() -> int:
    """The cores this process may run on (a container or ``taskset`` may allow fewer than
    ``os.cpu_count()``)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return max(1, len(affinity(0)) if affinity is not None else (os.cpu_count() or 1))


_blas: list[Any] | None = None   # threadpoolctl's controllers of the loaded BLAS libraries


def blas_threads() -> int:
    """How many threads NumPy's BLAS may use for the next matrix product, now.

    OpenBLAS, MKL or BLIS as threadpoolctl sees them, read at every call (a ctypes call,
    about a microsecond), so it follows ``OPENBLAS_NUM_THREADS`` and ``threadpool_limits``
    (``run_in_threads`` gives each thread-rank one). ``Conv2d``'s "auto" rule splits a
    layer's output pixels over these threads (``functional.winograd.winograd_is_faster``).
    With no BLAS that threadpoolctl can see: the cores this process may use
    (``available_cores``).
    """
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = [lib for lib in ThreadpoolController().lib_controllers
                 if lib.user_api == "blas"]
    if not _blas:
        return available_cores()
    return max(1, int(_blas[0].get_num_threads()))
