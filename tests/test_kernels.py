"""Every CUDA kernel of minicnn/kernels/ compiled, checked and run without a GPU.

- **NVRTC** (the ``kernels`` extra: ``pip install -e ".[kernels]"``; no GPU or driver needed):
  every ``minicnn/kernels/*.cu`` (and the harness's probe, tests/data/emulation_probe.cu)
  compiles for sm_80 and sm_90, ``SCALAR`` float and double, to a cubin (so ptxas runs), with
  no error and no register spill; the float build does no double-precision arithmetic.
- **The contract**: every ``extern "C"`` entry point has a NumPy twin (``@twin``) taking its
  arguments, is launched from its family's ``.py``, and has a name no other family uses; the
  source stays inside the emulatable subset (docs/architecture.md, "Kernels").
- **The CPU emulation harness** (tests/cuda_emulation.py) itself: on the probe family it
  matches NumPy for grids smaller and larger than needed, and it catches what it promises to
  catch (out-of-bounds writes and reads, grid-dependent results, races, forgotten outputs,
  wrong argument types, constructs it cannot emulate). Each family's kernels are checked
  against their twins with it in tests/test_kernels_<family>.py.
- **The argument check** (``strict_device.check_kernel_args``), shared by the emulation and
  the strict stand-in's ``RawKernel``: both refuse the same ill-typed launches.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import kernels
from tests import cuda_emulation as emu
from tests.strict_device import c_params

PROBE = emu.PROBE
FAMILIES = emu.families()
SOURCES = [pytest.param(emu.family_path(f), id=f) for f in FAMILIES] + \
    [pytest.param(PROBE, id="emulation_probe")]
ARCHS = ["sm_80", "sm_90"]
SCALARS = ["float", "double"]
ENTRY_POINTS = [pytest.param(f, name, id=f"{f}.{name}")
                for f in FAMILIES for name in kernels.entry_points(f)]
INSTALL_HINT = 'pip install -e ".[kernels]"'


# -- NVRTC -----------------------------------------------------------------------------------

def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        pytest.skip(f"NVRTC (cuda-bindings) is not installed: {INSTALL_HINT}")
    return nvrtc


@functools.cache
def _compile(code: str, name: str, arch: str, scalar: str) -> tuple[bool, str, float]:
    """(ok, program log incl. ptxas -v, seconds) of NVRTC on ``code`` for a real arch."""
    nvrtc = _nvrtc()
    err, prog = nvrtc.nvrtcCreateProgram(code.encode(), name.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    options = [f"--gpu-architecture={arch}", "-std=c++17", f"-DSCALAR={scalar}",
               "--ptxas-options=-v"]
    try:
        start = time.perf_counter()
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])
        seconds = time.perf_counter() - start
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        ok = err == nvrtc.nvrtcResult.NVRTC_SUCCESS
        if ok:
            _, cubin_size = nvrtc.nvrtcGetCUBINSize(prog)        # a real arch: ptxas ran
            ok = cubin_size > 0
        return ok, log.decode(errors="replace").rstrip("\0 \n"), seconds
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@functools.cache
def _compile_all() -> None:
    """Compile every (source, arch, type) once, on all cores (NVRTC releases the GIL)."""
    _nvrtc()
    jobs = [(p.values[0].read_text(), p.values[0].name, arch, scalar)
            for p in SOURCES for arch in ARCHS for scalar in SCALARS]
    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        list(pool.map(lambda job: _compile(*job), jobs))


def _compiled(path: Path, arch: str, scalar: str) -> str:
    """The compile log of ``path``; fails the test with the log on a compile error."""
    _compile_all()
    ok, log, _ = _compile(path.read_text(), path.name, arch, scalar)
    assert ok, f"NVRTC could not compile {path.name} for {arch} (SCALAR={scalar}):\n{log}"
    return log


@pytest.mark.parametrize("scalar", SCALARS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", SOURCES)
def test_compiles_with_nvrtc_without_spills(path, arch, scalar):
    log = _compiled(path, arch, scalar)
    # ptxas -v: "ptxas . 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
    spills = re.findall(r"(\d+) bytes spill (stores|loads)", log)
    assert spills, f"no ptxas report in the log of {path.name} ({arch}, {scalar}):\n{log}"
    assert all(int(n) == 0 for n, _ in spills), \
        f"{path.name} spills registers ({arch}, SCALAR={scalar}):\n{log}"
    assert "error" not in log.lower(), log


@pytest.mark.parametrize("path", SOURCES)
def test_float_build_does_not_upcast_to_double(path):
    """With SCALAR=float a kernel computes its per-element work in float: a double literal
    (``0.5 * x`` instead of ``(SCALAR)0.5 * x``) makes it compute in double, up to 64x slower
    on most GPUs, and differ from its float32 twin. Found by g++ -Wdouble-promotion."""
    emu.skip_without_gxx()
    warnings = emu.float_upcasts(path.read_text(), str(path))
    assert not warnings, (f"{path.name} (SCALAR=float) computes float values in double or "
                          f"narrows doubles silently; write SCALAR literals ((SCALAR)0.5) or "
                          f"cast on purpose:\n{warnings}")


def test_upcast_check_can_fail():
    emu.skip_without_gxx()
    code = 'extern "C" __global__ void k(SCALAR* y) { y[0] = 0.5 * y[0]; }'
    assert "double" in emu.float_upcasts(code)
    assert not emu.float_upcasts(code.replace("0.5 *", "(SCALAR)0.5 *"))


def test_nvrtc_reports_errors_and_spills():
    """The NVRTC check can fail: a syntax error and a kernel that must spill are seen."""
    ok, log, _ = _compile('extern "C" __global__ void k(float* x) { x[0] = ; }',
                             "broken.cu", "sm_80", "float")
    assert not ok and "error" in log
    # 64 live double accumulators per thread under a 32-register cap (1024 threads x 2
    # blocks per SM): ptxas must spill.
    spilling = """
    extern "C" __global__ void __launch_bounds__(1024, 2)
    k(const SCALAR* x, SCALAR* y, int n) {
        SCALAR acc[64];
        #pragma unroll
        for (int j = 0; j < 64; ++j) acc[j] = x[j * n + threadIdx.x];
        for (int i = 0; i < n; ++i) {
            #pragma unroll
            for (int j = 0; j < 64; ++j) acc[j] = acc[j] * acc[(j + 1) % 64] + x[i];
        }
        #pragma unroll
        for (int j = 0; j < 64; ++j) y[j * n + threadIdx.x] = acc[j];
    }"""
    ok, log, _ = _compile(spilling, "spill.cu", "sm_80", "double")
    assert ok, log
    assert any(int(n) > 0 for n, _ in re.findall(r"(\d+) bytes spill (stores|loads)", log)), log


def test_nvrtc_compile_time_is_small():
    """All sources, both archs, both types: compiled in a few seconds (CI runs this file on
    2 cores). The compilations are the ones the tests above made (cached); the time is
    NVRTC's, summed over the compilations (which run on all cores at once)."""
    _compile_all()
    total = 0.0
    for param in SOURCES:
        path = param.values[0]
        for arch in ARCHS:
            for scalar in SCALARS:
                _, _, seconds = _compile(path.read_text(), path.name, arch, scalar)
                total += seconds
    assert total < 10 * len(SOURCES), f"NVRTC took {total:.1f} s for {len(SOURCES)} sources"


# -- The contract: twins, launchers, names, the emulatable subset ------------------------------

@pytest.mark.parametrize("family, name", ENTRY_POINTS)
def test_entry_point_has_a_twin_and_a_launcher(family, name):
    importlib.import_module(f"minicnn.kernels.{family}")
    fn = kernels.twin_of(name)
    params = c_params(kernels.source(family), "float")[name]
    sig = inspect.signature(fn)
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        assert len(positional) == len(params), \
            f"the twin of {name} takes {len(positional)} arguments, the kernel {len(params)}"
    launcher = (kernels.KERNEL_DIR / f"{family}.py").read_text()
    assert re.search(rf"""(["']){re.escape(name)}\1""", launcher), \
        f"minicnn/kernels/{family}.py never launches {name!r} (its name as a string literal)"


def test_entry_point_names_are_unique_across_families():
    seen: dict[str, str] = {}
    for family in FAMILIES:
        names = kernels.entry_points(family)
        assert len(names) == len(set(names)), f"{family}.cu defines an entry point twice"
        for name in names:
            assert name not in seen, f"{name} is in both {seen[name]}.cu and {family}.cu"
            seen[name] = family


@pytest.mark.parametrize("path", SOURCES)
def test_source_is_in_the_emulatable_subset(path):
    emu.check_emulatable(path.read_text(), str(path))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", SOURCES)
def test_builds_for_the_cpu_emulation(path, dtype):
    """g++ compiles every family with the emulation prelude, its bug warnings as errors
    (uninitialised variables, missing returns, ...): the kernels can be run by
    tests/test_kernels_<family>.py."""
    emu.skip_without_gxx()
    family = emu.emulated(path, dtype)
    assert set(family.kernels) == set(c_params(path.read_text(), "float"))


# -- The emulation harness on the probe family -----------------------------------------------

def _axpy(x, y, alpha, n):
    y[:n] += alpha * x[:n]


def _colsum_partial(x, sums, squares, rows, C, chunks):
    per_chunk = -(-int(rows) // int(chunks))
    X = x.reshape(int(rows), int(C))
    for k in range(int(chunks)):
        part = X[k * per_chunk:(k + 1) * per_chunk]
        sums[k * C:(k + 1) * C] = part.sum(axis=0)
        squares[k * C:(k + 1) * C] = (part * part).sum(axis=0)


def _colsum_finalize(sums, squares, mean, var, rows, C, chunks):
    count = mean.dtype.type(rows)
    m = sums.reshape(int(chunks), int(C)).sum(axis=0) / count
    mean[:] = m
    var[:] = np.maximum(squares.reshape(int(chunks), int(C)).sum(axis=0) / count - m * m, 0)


@pytest.fixture(autouse=True)
def _gxx(request):
    if "emulation" in request.node.name:
        emu.skip_without_gxx()


@given(n=st.integers(1, 3000), grid=st.integers(1, 40), block=st.sampled_from([1, 32, 96, 256]),
       double=st.booleans(), seed=st.integers(0, 2**31))
def test_emulation_axpy_matches_numpy_for_any_grid(n, grid, block, double, seed):
    dtype = np.float64 if double else np.float32
    rng = np.random.default_rng(seed)
    x, y = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    alpha = dtype(rng.standard_normal())
    out, _ = emu.check_against_twin(PROBE, "probe_axpy", dtype, grid, block,
                                    (x, y, alpha, np.int64(n)), twin=_axpy)
    np.testing.assert_allclose(out[1], alpha * x + y, rtol=emu.TOLERANCE[np.dtype(dtype)])
    y_before = y.copy()
    emu.emulated(PROBE, dtype).probe_axpy(grid, block, x, y, alpha, np.int64(n))
    np.testing.assert_array_equal(y, out[1])            # plain calls write in place
    assert not np.array_equal(y, y_before)


@given(rows=st.integers(1, 300), C=st.integers(1, 70), chunks=st.integers(1, 12),
       grid=st.integers(1, 20), block=st.sampled_from([1, 32, 128]), double=st.booleans(),
       seed=st.integers(0, 2**31))
def test_emulation_two_stage_reduction_matches_numpy(rows, C, chunks, grid, block, double, seed):
    """The two-stage per-column reduction over (rows, C): partials per chunk of rows, then a
    finalize; any grid, smaller or larger than the (chunk, column) pairs, gives the same bits."""
    dtype = np.float64 if double else np.float32
    x = np.random.default_rng(seed).standard_normal((rows, C)).astype(dtype)
    sums, squares = np.empty(chunks * C, dtype), np.empty(chunks * C, dtype)
    args = (x, sums, squares, np.int64(rows), np.int32(C), np.int32(chunks))
    out, _ = emu.check_against_twin(PROBE, "probe_colsum_partial", dtype, grid, block, args,
                                    outputs=(1, 2), twin=_colsum_partial)
    mean, var = np.empty(C, dtype), np.empty(C, dtype)
    args = (out[1], out[2], mean, var, np.int64(rows), np.int32(C), np.int32(chunks))
    out, _ = emu.check_against_twin(PROBE, "probe_colsum_finalize", dtype, grid, block, args,
                                    outputs=(2, 3), twin=_colsum_finalize)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(out[2], x.mean(axis=0), rtol=tol, atol=tol)
    np.testing.assert_allclose(out[3], x.var(axis=0), rtol=tol, atol=tol)


def _source(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "case.cu"
    path.write_text(body)
    return path


GRID_STRIDE = "for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; " \
              "i += (long long)blockDim.x * gridDim.x)"


@pytest.mark.parametrize("body, what", [
    ("y[i + 1] = x[i];", "an out-of-bounds write"),
    ("y[i] = x[i] + x[i + 1];", "an out-of-bounds read"),
    ("y[i] = fmax(x[i], x[i + 1]);", "an out-of-bounds read"),     # fmax skips a NaN guard
    ("y[i] = x[i] + (SCALAR)gridDim.x;", "the grid"),
    ("y[i] = x[i] + (SCALAR)blockIdx.x;", "the grid"),
    ("{ y[i] = x[i]; if (i > 0) y[i - 1] = x[i]; }", "the grid|order threads run"),
    ("if (i + 1 < n) y[i] = x[i];", "emulated kernel vs twin"),
])
def test_emulation_catches_kernel_bugs(tmp_path, body, what):
    """Each of these copy kernels is wrong in a way the twin check must report."""
    path = _source(tmp_path, f"""
        extern "C" __global__ void bad(const SCALAR* x, SCALAR* y, long long n) {{
            {GRID_STRIDE}
                {body}
        }}""")
    x = np.arange(1.0, 101.0, dtype=np.float32)
    y = np.zeros(100, np.float32)

    def copy(x, y, n):
        y[:] = x

    with pytest.raises((AssertionError, emu.EmulationError)) as err:
        emu.check_against_twin(path, "bad", np.float32, 3, 8, (x, y, np.int64(100)),
                               outputs=(1,), twin=copy)
    assert re.search(what, str(err.value)), str(err.value)


def test_emulation_passes_a_correct_copy(tmp_path):
    """The kernel of test_emulation_catches_kernel_bugs, written right, passes."""
    path = _source(tmp_path, f"""
        extern "C" __global__ void good(const SCALAR* x, SCALAR* y, long long n) {{
            {GRID_STRIDE} y[i] = x[i];
        }}""")
    x = np.arange(1.0, 101.0, dtype=np.float32)
    out, _ = emu.check_against_twin(path, "good", np.float32, 3, 8,
                                    (x, np.zeros(100, np.float32), np.int64(100)),
                                    outputs=(1,), twin=lambda x, y, n: np.copyto(y, x))
    np.testing.assert_array_equal(out[1], x)


def _bad_axpy_arguments(x, y, to=lambda a: a):
    """Launch arguments of probe_axpy(x, y, alpha, n) that break its C signature, with the
    error each must raise; ``to`` puts an array where the kernel reads it (the device)."""
    return [((to(x), to(y), 1.0, np.int64(4)), TypeError),                 # a Python float
            ((to(x), to(y), np.float64(1), np.int64(4)), TypeError),       # wrong scalar type
            ((to(x), to(y), np.float32(1), np.int32(4)), TypeError),       # int for long long
            ((to(x.astype(np.float64)), to(y), np.float32(1), np.int64(4)), TypeError),
            ((to(np.ones(8, np.float32))[::2], to(y), np.float32(1), np.int64(4)), ValueError),
            ((to(x), to(y), np.float32(1)), TypeError),                    # an argument missing
            ((x.tolist(), to(y), np.float32(1), np.int64(4)), TypeError)]  # not an array


def test_emulation_checks_arguments_like_the_stand_in():
    k = emu.emulated(PROBE, np.float32).probe_axpy
    x, y = np.ones(4, np.float32), np.ones(4, np.float32)
    k(1, 4, x, y, np.float32(1), np.int64(4))
    for args, error in _bad_axpy_arguments(x, y):
        with pytest.raises(error):
            k(1, 4, *args)
    with pytest.raises(ValueError, match="one-dimensional"):
        k((1, 2), (4,), x, y, np.float32(1), np.int64(4))
    with pytest.raises(ValueError, match="1024"):
        k(1, 2048, x, y, np.float32(1), np.int64(4))


def test_stand_in_checks_arguments_against_the_signature():
    """The strict stand-in's RawKernel refuses the launches the emulation refuses (the same
    check, ``strict_device.check_kernel_args``), and a host array where a device array
    belongs."""
    from tests import strict_device

    module = strict_device.RawModule(code=PROBE.read_text(), options=("-DSCALAR=float",))
    k = module.get_function("probe_axpy")
    x, y = np.ones(4, np.float32), np.ones(4, np.float32)
    for args, error in _bad_axpy_arguments(x, y, to=strict_device.asarray):
        with pytest.raises(error):
            k((1,), (4,), args)
    with pytest.raises(strict_device.StrictDeviceError, match="device array"):
        k((1,), (4,), (x, strict_device.asarray(y), np.float32(1), np.int64(4)))


def test_emulation_in_place_arguments_share_memory(tmp_path):
    """The same array passed twice is one buffer in the emulation (an in-place kernel)."""
    path = _source(tmp_path, f"""
        extern "C" __global__ void twice(const SCALAR* x, SCALAR* y, long long n) {{
            {GRID_STRIDE} y[i] = 2 * x[i];
        }}""")
    a = np.arange(5, dtype=np.float64)
    emu.emulated(path, np.float64).twice(2, 2, a, a, np.int64(5))
    np.testing.assert_array_equal(a, 2 * np.arange(5))
    out, ref = emu.check_against_twin(path, "twice", np.float64, 2, 2, (a, a, np.int64(5)),
                                      twin=lambda x, y, n: np.multiply(x, 2, out=y))
    assert out[0] is out[1] and ref[0] is ref[1]


@pytest.mark.parametrize("snippet", [
    "__shared__ SCALAR s[32]; s[threadIdx.x] = x[0]; y[0] = s[0];",
    "__syncthreads(); y[0] = x[0];",
    "atomicAdd(y, x[0]);",
    "y[0] = __shfl_down_sync(0xffffffff, x[0], 1);",
    "y[threadIdx.y] = x[0];",
    "y[0] = x[0] * warpSize;",
    'printf("%f", x[0]);',
])
def test_emulation_refuses_what_it_cannot_run(tmp_path, snippet):
    path = _source(tmp_path, f"""
        // __shared__ in a comment is fine
        extern "C" __global__ void k(const SCALAR* x, SCALAR* y) {{ {snippet} }}""")
    with pytest.raises(emu.UnsupportedKernel, match="emulatable subset"):
        emu.emulated(path, np.float32)


def test_emulation_compile_errors_and_bug_warnings_fail(tmp_path):
    for body, message in [("y[0] = x[0]", "error"),                        # no semicolon
                          ("SCALAR s; y[0] = s;", "uninitialized")]:
        path = _source(tmp_path, 'extern "C" __global__ void k(const SCALAR* x, SCALAR* y) '
                       f"{{ {body} }}")
        with pytest.raises(emu.EmulationError, match=message):
            emu.emulated(path, np.float32)


def test_emulation_math_functions_match_numpy(tmp_path):
    """The prelude's math (the CUDA names, float overloads and f-suffixed names)."""
    path = _source(tmp_path, f"""
        __device__ __forceinline__ static SCALAR f(SCALAR v, int j) {{
            switch (j) {{
                case 0: return sqrt(fabs(v));   case 1: return rsqrt(fabs(v) + (SCALAR)1);
                case 2: return exp(v);          case 3: return log(fabs(v) + (SCALAR)1);
                case 4: return tanh(v);         case 5: return erf(v);
                case 6: return erfc(v);         case 7: return fmax(v, (SCALAR)0);
                case 8: return fmin(v, (SCALAR)0);
                case 9: return max(v, (SCALAR)0.5);
                default: return (SCALAR)min(3, max(-3, (int)v));
            }}
        }}
        extern "C" __global__ void math(const SCALAR* x, SCALAR* y, long long n) {{
            {GRID_STRIDE}
                for (int j = 0; j < 11; ++j) y[j * n + i] = f(x[i], j);
        }}
        extern "C" __global__ void mathf(const float* x, float* y, long long n) {{
            {GRID_STRIDE} {{
                y[i] = sqrtf(fabsf(x[i])) + rsqrtf(fabsf(x[i]) + 1.0f) + expf(x[i]);
                y[n + i] = logf(fabsf(x[i]) + 1.0f) + tanhf(x[i]) + erff(x[i]) + erfcf(x[i]);
                y[2 * n + i] = fmaxf(x[i], 0.0f) + fminf(x[i], 0.0f);
            }}
        }}""")
    import scipy.special as sp

    x = np.linspace(-4, 4, 41)
    a = np.abs(x)
    expected = [np.sqrt(a), 1 / np.sqrt(a + 1), np.exp(x), np.log(a + 1), np.tanh(x),
                sp.erf(x), sp.erfc(x), np.maximum(x, 0), np.minimum(x, 0), np.maximum(x, 0.5),
                np.clip(np.trunc(x), -3, 3)]
    for dtype in (np.float32, np.float64):
        xs = x.astype(dtype)
        y = np.empty((11, x.size), dtype)
        emu.emulated(path, dtype).math(2, 16, xs, y, np.int64(x.size))
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(y, np.array(expected), rtol=tol, atol=tol)
    xs = x.astype(np.float32)
    y = np.empty((3, x.size), np.float32)
    emu.emulated(path, np.float64).mathf(1, 64, xs, y, np.int64(x.size))
    np.testing.assert_allclose(y, [expected[0] + expected[1] + expected[2],
                                   expected[3] + expected[4] + expected[5] + expected[6],
                                   expected[7] + expected[8]], rtol=2e-6, atol=2e-6)
