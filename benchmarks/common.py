"""Shared benchmark helpers: timing, machine description, result files.

Times are medians of several repeats after warm-up; these machines are shared and noisy, so
compare ratios measured in one run, not absolute times across runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def sync(xp: Any) -> None:
    """Wait for the GPU (no-op on NumPy) so a timer measures finished work."""
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def time_it(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, xp: Any = np) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    sync(xp)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(xp)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001 - only descriptive
        return "unknown"


def blas_threadpools() -> list[dict[str, Any]]:
    """What BLAS actually runs: library, kernel (``architecture``) and thread count per pool.

    threadpoolctl asks the loaded library itself, so this shows the kernel an
    ``OPENBLAS_CORETYPE`` override forces (e.g. Haswell on an AVX-512 machine) and the one a
    user's machine picks without it (SkylakeX). Empty when threadpoolctl is not installed
    (``pip install threadpoolctl``).
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("user_api", "internal_api", "version", "architecture", "num_threads")
    return [{k: pool.get(k) for k in keys} for pool in threadpool_info()]


def blas_kernel() -> str:
    """One line for tables: e.g. ``openblas 0.3.30 SkylakeX, 2 threads`` (``unknown``)."""
    blas = [p for p in blas_threadpools() if p.get("user_api") == "blas"]
    if not blas:
        return "unknown (install threadpoolctl)"
    return "; ".join(f"{p['internal_api']} {p['version']} {p['architecture']}, "
                     f"{p['num_threads']} threads" for p in blas)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(backend: str) -> dict[str, Any]:
    info = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": blas_name(),
        "blas_kernel": blas_kernel(),
        "threadpools": blas_threadpools(),
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                         if k in os.environ},
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads_env": {k: os.environ[k] for k in
                        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
                        if k in os.environ},
        "backend": backend,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    if backend == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cupy.__version__
    return info


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch
