"""Run a kernel family's real CUDA C on the CPU: the ``.cu`` source, compiled by g++ with a
small emulation prelude, each launch a loop over every (block, thread) pair in order.

Why: the strict stand-in (``tests/strict_device.py``) runs a kernel's NumPy *twin*, so CI checks
the launchers and the twins but never the CUDA C; NVRTC (``tests/test_kernels.py``) compiles the
CUDA C but cannot run it without a GPU. This harness runs the source itself, so a test can
compare the kernel with its twin on any machine that has g++::

    from tests.cuda_emulation import emulated, check_against_twin

    emu = emulated("batchnorm", np.float32)              # or a path to a .cu file
    emu.bn_stats_partial(grid, block, x, sums, squares, np.int64(rows), np.int32(C), ...)
    check_against_twin("batchnorm", "bn_stats_partial", np.float32, grid, block, args,
                       outputs=(1, 2))

It is valid only for the emulatable subset (docs/architecture.md, "Kernels"): threads run one
after another, so a kernel whose threads talk to each other inside one launch (``__shared__``,
``__syncthreads``, atomics, warp shuffles, cooperative groups) cannot be emulated, and the
harness refuses such a source. One-dimensional launches only (``.x``).

What it checks beyond the twin's numbers (``check_against_twin``):

- arguments against the C signature with the stand-in's own check
  (``strict_device.check_kernel_args``: NumPy scalars of the exact C type, C-contiguous arrays
  of the right dtype);
- out-of-bounds accesses: every array is copied into a buffer with guard zones on both sides,
  filled with NaN (float) or a byte pattern (integers); a write there fails the launch, a read
  there poisons the result with NaN;
- independence of the grid and of the thread order: the launch is repeated with one block,
  with more blocks and with the (block, thread) pairs in reverse order, and every run must
  give the same bits (on a GPU the pairs run in any order, concurrently: a kernel that reads
  what another thread of the same launch writes is a race);
- g++ warnings that point at bugs (uninitialised reads, missing returns, ...) are errors.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import hashlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.strict_device import SIGNATURE, c_params, check_kernel_args

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "minicnn" / "kernels"
PROBE = Path(__file__).resolve().parent / "data" / "emulation_probe.cu"

SCALAR_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
GUARD = 256                       # guard elements on each side of every array (at least)

__all__ = ["EmulationError", "UnsupportedKernel", "gxx_available", "skip_without_gxx",
           "family_path", "families", "check_emulatable", "translation_unit", "float_upcasts",
           "emulated", "stored_as", "check_against_twin"]


class EmulationError(RuntimeError):
    """The emulated launch went wrong (compile error, out-of-bounds write, ...)."""


class UnsupportedKernel(EmulationError):
    """The source uses something that sequential emulation cannot reproduce."""


# What sequential emulation cannot run (threads of one launch that talk to each other), or
# what the conventions rule out (2-D/3-D launches, includes, printf).
_FORBIDDEN = [
    (r"__shared__", "__shared__ memory"),
    (r"__syncthreads\w*|__syncwarp", "__syncthreads/__syncwarp"),
    (r"\batomic\w*", "atomics"),
    (r"__shfl\w*|__ballot\w*|__any_sync|__all_sync|__activemask|__match\w*|__reduce\w*_sync",
     "warp intrinsics"),
    (r"\bwarpSize\b", "warpSize"),
    (r"cooperative_groups|\bthis_grid\b|\bthis_thread_block\b", "cooperative groups"),
    (r"\b(threadIdx|blockIdx|blockDim|gridDim)\.[yz]\b", "a 2-D/3-D launch (.y/.z)"),
    (r"#\s*include", "#include"),
    (r"\bprintf\b", "printf"),
    (r"\bvolatile\b", "volatile (inter-thread communication)"),
]

# g++ warnings that point at bugs in a kernel: turned into errors.
_BUG_WARNINGS = ["uninitialized", "maybe-uninitialized", "return-type", "sequence-point",
                 "array-bounds", "int-in-bool-context", "aggressive-loop-optimizations",
                 "div-by-zero", "shift-count-overflow", "shift-negative-value", "overflow",
                 "narrowing", "address", "nonnull", "restrict", "stringop-overflow",
                 "implicit-fallthrough", "tautological-compare", "logical-not-parentheses",
                 "bool-compare", "misleading-indentation"]

_PRELUDE = r"""
// ---- tests/cuda_emulation.py prelude: the CUDA names a kernel of the emulatable subset uses.
#include <cmath>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
struct emu_dim3 { unsigned int x, y, z; };
static emu_dim3 threadIdx, blockIdx, blockDim, gridDim;
// CUDA overloads the double-precision names for float (as <cmath>'s std:: overloads do).
using std::sqrt; using std::exp; using std::log; using std::fabs; using std::fmax;
using std::fmin; using std::tanh; using std::erf; using std::erfc; using std::floor;
using std::ceil; using std::pow; using std::isnan; using std::isinf; using std::isfinite;
using std::log1p; using std::expm1; using std::round; using std::trunc;
static inline float rsqrt(float v) { return 1.0f / std::sqrt(v); }
static inline double rsqrt(double v) { return 1.0 / std::sqrt(v); }
static inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
// CUDA's bit casts between float and its 32-bit pattern.
#include <cstring>
static inline unsigned int __float_as_uint(float v) {
    unsigned int u; std::memcpy(&u, &v, 4); return u; }
static inline float __uint_as_float(unsigned int u) {
    float v; std::memcpy(&v, &u, 4); return v; }
// CUDA's min/max (device functions, not std::): same-type pairs, and the mixed pairs CUDA
// declares (int/unsigned -> unsigned, long long/unsigned long long -> unsigned long long,
// float/double -> double); other mixes are ambiguous there as here.
#define EMU_MINMAX(A, B, R) \
    static inline R min(A a, B b) { return (R)b < (R)a ? (R)b : (R)a; } \
    static inline R max(A a, B b) { return (R)a < (R)b ? (R)b : (R)a; }
EMU_MINMAX(int, int, int)
EMU_MINMAX(unsigned int, unsigned int, unsigned int)
EMU_MINMAX(int, unsigned int, unsigned int)
EMU_MINMAX(unsigned int, int, unsigned int)
EMU_MINMAX(long long, long long, long long)
EMU_MINMAX(unsigned long long, unsigned long long, unsigned long long)
EMU_MINMAX(long long, unsigned long long, unsigned long long)
EMU_MINMAX(unsigned long long, long long, unsigned long long)
#undef EMU_MINMAX
static inline float min(float a, float b) { return std::fmin(a, b); }
static inline float max(float a, float b) { return std::fmax(a, b); }
static inline double min(double a, double b) { return std::fmin(a, b); }
static inline double max(double a, double b) { return std::fmax(a, b); }
static inline double min(float a, double b) { return std::fmin((double)a, b); }
static inline double max(float a, double b) { return std::fmax((double)a, b); }
static inline double min(double a, float b) { return std::fmin(a, (double)b); }
static inline double max(double a, float b) { return std::fmax(a, (double)b); }
// ---- the family's source, verbatim:
#line 1 "{path}"
"""

_WRAPPER = r"""
extern "C" void emu_{name}(unsigned int emu_grid, unsigned int emu_block, int emu_reverse{comma}
                           {params}) {{
    gridDim = emu_dim3{{emu_grid, 1, 1}};
    blockDim = emu_dim3{{emu_block, 1, 1}};
    for (unsigned int emu_b = 0; emu_b < emu_grid; ++emu_b)
        for (unsigned int emu_t = 0; emu_t < emu_block; ++emu_t) {{
            blockIdx = emu_dim3{{emu_reverse ? emu_grid - 1 - emu_b : emu_b, 0, 0}};
            threadIdx = emu_dim3{{emu_reverse ? emu_block - 1 - emu_t : emu_t, 0, 0}};
            {name}({names});
        }}
}}
"""

_CTYPES = {"int": ctypes.c_int32, "unsigned int": ctypes.c_uint32,
           "long long": ctypes.c_int64, "unsigned long long": ctypes.c_uint64,
           "float": ctypes.c_float, "double": ctypes.c_double, "bool": ctypes.c_bool,
           "unsigned char": ctypes.c_uint8, "char": ctypes.c_int8,
           "unsigned short": ctypes.c_uint16}


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------

def gxx_available() -> bool:
    """True when a ``g++`` is on the PATH (the harness needs it)."""
    return shutil.which("g++") is not None


def skip_without_gxx() -> None:
    """``pytest.skip`` with the reason when g++ is missing (call at the top of a test)."""
    import pytest  # noqa: PLC0415 - only tests call this

    if not gxx_available():
        pytest.skip("the CUDA emulation harness (tests/cuda_emulation.py) needs g++ "
                    "(apt-get install g++)")


def family_path(family: str | Path) -> Path:
    """The ``.cu`` file of ``family``: a name in minicnn/kernels/, or a path."""
    if isinstance(family, Path) or str(family).endswith(".cu"):
        return Path(family)
    return KERNEL_DIR / f"{family}.cu"


def families() -> list[str]:
    """The kernel families that exist now (minicnn/kernels/*.cu), sorted."""
    return sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))


def _strip_comments(code: str) -> str:
    code = re.sub(r"/\*.*?\*/", " ", code, flags=re.S)
    return re.sub(r"//[^\n]*", " ", code)


def check_emulatable(code: str, where: str = "source") -> None:
    """Raise ``UnsupportedKernel`` when ``code`` leaves the emulatable subset."""
    bare = _strip_comments(code)
    for pattern, what in _FORBIDDEN:
        m = re.search(pattern, bare)
        if m:
            line = bare.count("\n", 0, m.start()) + 1
            raise UnsupportedKernel(
                f"{where}:{line}: uses {what} ({m.group(0)!r}), outside the emulatable subset "
                f"(threads of one launch must not talk to each other; docs/architecture.md, "
                f"'Kernels'): tests/cuda_emulation.py runs threads one after another and "
                f"cannot reproduce it")


def _signatures(code: str) -> dict[str, list[str]]:
    """name -> the parameter declarations, verbatim, of every extern "C" kernel."""
    return {name: [p.strip() for p in params.split(",") if p.strip()]
            for name, params in SIGNATURE.findall(code)}


def _param_name(decl: str) -> str:
    m = re.search(r"(\w+)\s*$", decl)
    if m is None:
        raise EmulationError(f"cannot find the parameter name in {decl!r}")
    return m.group(1)


def translation_unit(code: str, path: str = "kernel.cu") -> str:
    """The C++ that g++ compiles: the prelude, ``code`` verbatim, one ``emu_<name>`` wrapper
    per entry point (a loop over blocks and threads that calls the kernel)."""
    wrappers = []
    for name, params in _signatures(code).items():
        wrappers.append(_WRAPPER.format(name=name, comma="," if params else "",
                                        params=", ".join(params),
                                        names=", ".join(_param_name(p) for p in params)))
    return _PRELUDE.replace("{path}", path) + code + "\n#line 1 \"<emulation wrappers>\"\n" + \
        "".join(wrappers)


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

@functools.cache
def _cache_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="minicnn-cuda-emulation-"))
    atexit.register(shutil.rmtree, d, True)
    return d


@functools.cache
def _build(code: str, path: str, scalar: str) -> Path:
    """Compile ``code`` (SCALAR = ``scalar``) into a shared library; cached per content."""
    if not gxx_available():
        raise EmulationError("g++ not found: the CUDA emulation harness needs it")
    tu = translation_unit(code, path)
    key = hashlib.sha256(f"{scalar}\0{tu}".encode()).hexdigest()[:20]
    lib = _cache_dir() / f"{Path(path).stem}-{scalar}-{key}.so"
    if lib.exists():
        return lib
    src = lib.with_suffix(".cpp")
    src.write_text(tu)
    cmd = ["g++", "-O1", "-std=c++17", "-shared", "-fPIC", f"-DSCALAR={scalar}",
           "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-unused-function",
           *(f"-Werror={w}" for w in _BUG_WARNINGS), "-o", str(lib), str(src)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise EmulationError(f"g++ could not compile {path} (SCALAR={scalar}) for the CPU "
                             f"emulation:\n{run.stderr}")
    return lib


def float_upcasts(code: str, path: str = "kernel.cu") -> str:
    """g++'s warnings about float values computed in double in ``code`` built with
    SCALAR=float (``0.5 * x`` for a float x: a double literal promotes the product), and
    about doubles silently narrowed to float; "" when there is none. Double-precision scalars
    a kernel computes on purpose (``hyper[0] * lr_scale``) and explicit casts are fine."""
    if not gxx_available():
        raise EmulationError("g++ not found: the CUDA emulation harness needs it")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "upcasts.cpp"
        src.write_text(translation_unit(code, path))
        run = subprocess.run(["g++", "-fsyntax-only", "-std=c++17", "-DSCALAR=float",
                              "-Wdouble-promotion", "-Wfloat-conversion", str(src)],
                             capture_output=True, text=True)
    return run.stderr.strip()


class EmulatedKernel:
    """One entry point, compiled for the CPU: ``k(grid, block, *args)``."""

    def __init__(self, lib: ctypes.CDLL, name: str, params: list[tuple[str, bool]],
                 dtype: np.dtype, where: str):
        self.name, self.params, self.dtype, self._where = name, params, dtype, where
        self._fn = getattr(lib, f"emu_{name}")
        self._fn.restype = None
        self._fn.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int32] + [
            ctypes.c_void_p if pointer else _CTYPES[ctype] for ctype, pointer in params]

    def __repr__(self) -> str:
        return f"<emulated {self._where}:{self.name} ({self.dtype})>"

    def __call__(self, grid: int | tuple, block: int | tuple, *args: Any,
                 reverse: bool = False, guard: bool | int = True) -> None:
        """Launch on the CPU, writing the arrays of ``args`` in place as the GPU would.

        ``grid``/``block``: ints or 1-tuples (as CuPy takes them). ``reverse``: run the
        (block, thread) pairs in reverse order. ``guard``: run on guarded copies of the arrays:
        an out-of-bounds write raises, an out-of-bounds read sees NaN / 0xA5 bytes (``True`` or
        0), +1e30 / 0x5A bytes (1) or -1e30 / 0x7F bytes (2); ``False``: on the arrays
        themselves. Arrays that overlap without being the same memory are never guarded.
        """
        grid, block = _dim(grid, "grid"), _dim(block, "block")
        if block > 1024:
            raise ValueError(f"emulated kernel {self.name}: block {block} > 1024 threads")
        check_kernel_args(args, self.params, f"emulated kernel {self.name}", device=False)
        call: list[Any] = []
        guarded: dict[tuple[int, int], tuple[np.ndarray, _Guarded]] = {}
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        use_guard = guard is not False and not _partial_overlap(arrays)
        for a, (ctype, pointer) in zip(args, self.params, strict=True):
            if not pointer:
                call.append(_CTYPES[ctype](a))
            elif not use_guard:
                call.append(a.ctypes.data)
            else:
                key = (a.ctypes.data, a.nbytes)          # the same array twice: one buffer
                if key not in guarded:
                    guarded[key] = a, _Guarded(a, int(guard))
                call.append(guarded[key][1].pointer)
        self._fn(grid, block, int(reverse), *call)
        where = f"emulated kernel {self.name} (grid {grid}, block {block})"
        for a, g in guarded.values():
            if not g.intact():
                raise EmulationError(f"{where} wrote outside an array of shape {a.shape} "
                                     f"({a.dtype}): an out-of-bounds write")
            g.copy_back(a, where)


def _dim(d: int | tuple, what: str) -> int:
    if isinstance(d, tuple):
        if len(d) != 1:
            raise ValueError(f"emulation: one-dimensional {what}s only, got {d}")
        d = d[0]
    d = int(d)
    if d < 1:
        raise ValueError(f"emulation: {what} must be >= 1, got {d}")
    return d


# Guard zone contents, by variant: (float value, byte for integer arrays). A NaN guard
# poisons what an out-of-bounds read computes, but a read-modify-write of a NaN guard writes
# back the same NaN; a finite guard shows that write (check_against_twin runs both).
_GUARDS = [(np.nan, 0xA5), (1e30, 0x5A), (-1e30, 0x7F)]
_PATTERN = 0xA5


class _Guarded:
    """A copy of an array's bytes between two guard zones (``_GUARDS[variant]``), 64-byte
    aligned as device allocations are."""

    def __init__(self, a: np.ndarray, variant: int = 0):
        value, byte = _GUARDS[variant % len(_GUARDS)]
        n = max(GUARD, min(a.size, 1 << 16)) * a.itemsize
        raw = np.empty(2 * n + a.nbytes + 64, np.uint8)
        start = (-raw.ctypes.data) % 64
        self.buf = raw[start:start + 2 * n + a.nbytes]
        self.lo, self.hi = n, n + a.nbytes
        self.buf[:] = byte
        if a.dtype.kind == "f":
            self.buf[:self.lo].view(a.dtype)[:] = value
            self.buf[self.hi:].view(a.dtype)[:] = value
        self.guards = self.buf[:self.lo].copy(), self.buf[self.hi:].copy()
        self.buf[self.lo:self.hi] = a.reshape(-1).view(np.uint8)
        self.pointer = self.buf.ctypes.data + self.lo

    def intact(self) -> bool:
        return bool(np.array_equal(self.buf[:self.lo], self.guards[0]) and
                    np.array_equal(self.buf[self.hi:], self.guards[1]))

    def copy_back(self, a: np.ndarray, where: str) -> None:
        data = self.buf[self.lo:self.hi]
        flat = a.reshape(-1).view(np.uint8)
        if not a.flags.writeable:
            if not np.array_equal(flat, data):
                raise EmulationError(f"{where} wrote into a read-only array")
            return
        flat[:] = data


def _partial_overlap(arrays: list[np.ndarray]) -> bool:
    seen = {}
    for a in arrays:
        seen[(a.ctypes.data, a.nbytes)] = a
    spans = sorted((p, p + n) for p, n in seen if n)
    return any(s2 < e1 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))


class EmulatedFamily:
    """The entry points of one ``.cu`` source for one dtype, as attributes."""

    def __init__(self, path: Path, dtype: np.dtype, code: str):
        check_emulatable(code, str(path))
        scalar = SCALAR_TYPES[dtype]
        self.path, self.dtype = path, dtype
        lib = ctypes.CDLL(str(_build(code, str(path), scalar)))
        self.kernels = {name: EmulatedKernel(lib, name, params, dtype, path.name)
                        for name, params in c_params(code, scalar).items()}

    def __getattr__(self, name: str) -> EmulatedKernel:
        try:
            return self.__dict__["kernels"][name]
        except KeyError:
            raise AttributeError(f"{self.__dict__.get('path')}: no extern \"C\" kernel "
                                 f"{name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.kernels))


def emulated(family: str | Path, dtype: Any) -> EmulatedFamily:
    """The kernels of ``family`` (a name in minicnn/kernels/ or a ``.cu`` path) compiled for
    the CPU with ``SCALAR`` = ``dtype`` (float32 or float64): ``.<name>(grid, block, *args)``.
    Raises ``UnsupportedKernel`` outside the emulatable subset, ``EmulationError`` when g++
    is missing or fails."""
    dtype = np.dtype(dtype)
    if dtype not in SCALAR_TYPES:
        raise TypeError(f"emulated: float32 or float64, got {dtype}")
    path = family_path(family).resolve()
    return _emulated(path, dtype, path.read_text())


@functools.cache
def _emulated(path: Path, dtype: np.dtype, code: str) -> EmulatedFamily:
    # Keyed by the source text: an edited .cu is rebuilt, an unchanged one loaded once.
    return EmulatedFamily(path, dtype, code)


# --------------------------------------------------------------------------------------------
# Kernel against twin
# --------------------------------------------------------------------------------------------

def stored_as(a: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """``a`` copied into memory that holds its axes in ``order`` (e.g. (0, 2, 3, 1):
    channels-last), viewed in ``a``'s logical shape: a kernel input as a layer would pass it
    (on the host; ``tests.conftest.on_device`` puts it on the device)."""
    order = tuple(int(k) for k in order)
    return np.ascontiguousarray(a.transpose(order)).transpose(tuple(np.argsort(order)))


def _copy_args(args: Sequence[Any], outputs: Sequence[int]) -> list[Any]:
    """Copies of the arrays (the same array twice stays one copy: in-place kernels), with the
    arrays at ``outputs`` poisoned (NaN, or 0xA5 bytes for integer arrays)."""
    copies: dict[int, np.ndarray] = {}
    out = []
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            key = id(a)
            if key not in copies:
                c = copies[key] = np.array(a, order="C", copy=True)
                if i in outputs:
                    if c.dtype.kind == "f":
                        c[...] = np.nan
                    else:
                        c.reshape(-1).view(np.uint8)[:] = _PATTERN
            out.append(copies[key])
        else:
            out.append(a)
    return out


def check_against_twin(family: str | Path, name: str, dtype: Any, grid: int, block: int,
                       args: Sequence[Any], outputs: Sequence[int] = (), *,
                       rtol: float | None = None, atol: float | None = None,
                       twin: Any = None, vary: bool = True) -> tuple[list[Any], list[Any]]:
    """Run the emulated kernel and its twin on copies of ``args``; assert they agree.

    ``outputs``: indices of the write-only arrays, poisoned (NaN / 0xA5 bytes) in both copies
    first, so an element the kernel forgets to write shows. The other arrays keep their values
    (inputs, and in-out arrays such as an optimizer's parameters). Every array is compared
    afterwards: integers exactly, floats within ``rtol`` (default 2e-5 for float32, 1e-12 for
    float64) and ``atol`` (default ``rtol`` times the largest magnitude of that twin output,
    at least 1), NaN where the twin has NaN. ``twin`` defaults to
    ``minicnn.kernels.twin_of(name)`` (import the family's module first).

    ``vary``: also run the kernel with other guard-zone contents, with one block, with
    ``2 * grid + 1`` blocks and with the (block, thread) pairs in reverse order; each must give
    the same bits as the first run (a kernel's result depends on its arguments only, never on
    memory outside them, and the threads of one launch run in no set order).

    Returns (emulated arrays, twin arrays): the argument lists after the runs.
    """
    dtype = np.dtype(dtype)
    kernel = getattr(emulated(family, dtype), name)
    if twin is None:
        from minicnn.kernels import twin_of  # noqa: PLC0415

        twin = twin_of(name)
    outputs = tuple(outputs)
    emu_args = _copy_args(args, outputs)
    kernel(grid, block, *emu_args)
    if vary:
        g = _dim(grid, "grid")
        for what, grid_b, reverse, guard in [
                ("memory outside the arrays (an out-of-bounds read)", g, False, 1),
                ("memory outside the arrays (an out-of-bounds read)", g, False, 2),
                ("the grid (1 block)", 1, False, 0),
                (f"the grid ({2 * g + 1} blocks)", 2 * g + 1, False, 0),
                ("the order threads run in (a race on a GPU)", g, True, 0)]:
            again = _copy_args(args, outputs)
            kernel(grid_b, block, *again, reverse=reverse, guard=guard)
            for i, (a, b) in enumerate(zip(emu_args, again, strict=True)):
                if isinstance(a, np.ndarray) and a.tobytes() != b.tobytes():
                    raise AssertionError(
                        f"{name} ({dtype}), argument {i}: the emulated kernel's result "
                        f"depends on {what} (launch: grid {grid}, block {block})")
    twin_args = _copy_args(args, outputs)
    twin(*twin_args)
    tol = TOLERANCE[dtype] if rtol is None else rtol
    for i, (e, t) in enumerate(zip(emu_args, twin_args, strict=True)):
        if not isinstance(e, np.ndarray):
            continue
        msg = f"{name} ({dtype}), argument {i} {e.shape}: emulated kernel vs twin"
        if e.dtype.kind == "f":
            finite = np.abs(t[np.isfinite(t)])
            scale = max(1.0, float(finite.max())) if finite.size else 1.0
            np.testing.assert_allclose(e, t, rtol=tol, atol=tol * scale if atol is None
                                       else atol, equal_nan=True, err_msg=msg)
        else:
            np.testing.assert_array_equal(e, t, err_msg=msg)
    return emu_args, twin_args
