"""Shared fixtures: the backend parametrisation and hypothesis settings.

Tests that take the ``xp`` fixture run once on NumPy and once on CuPy; the CuPy run skips
cleanly when CuPy or a GPU is missing.

``pytest --strict-device`` (or ``MINICNN_STRICT_DEVICE=1``) installs the strict CPU stand-in
for CuPy (``tests/strict_device.py``) before any test runs: then every ``cupy`` test runs on
the CPU, under CuPy's rules, with host syncs and copies counted. CI runs the ``cupy``-marked
tests a second time that way: ``python -m pytest -q -m cupy --strict-device``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minicnn as mc
from minicnn.backend import cupy_available

# No deadline: these machines are shared and noisy; speed is measured by benchmarks/.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
# CI: the same examples on every run, so a red CI is reproducible.
settings.register_profile(
    "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")


def pytest_addoption(parser):
    parser.addoption("--strict-device", action="store_true", default=False,
                     help="run the cupy tests on the strict CPU stand-in for CuPy "
                          "(tests/strict_device.py); also MINICNN_STRICT_DEVICE=1")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "strict_device: needs the strict CPU stand-in for CuPy (--strict-device), "
                   "whose sync and copy counters it reads (skipped otherwise)")
    if config.getoption("--strict-device") or os.environ.get("MINICNN_STRICT_DEVICE") == "1":
        from tests import strict_device

        strict_device.install()


def pytest_collection_modifyitems(config, items):
    from tests import strict_device

    if strict_device.installed():
        return
    skip = pytest.mark.skip(reason="needs the strict CPU stand-in: pytest --strict-device")
    for item in items:
        if "strict_device" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.cupy)])
def xp(request):
    """The array module of the backend under test (current backend set to it meanwhile)."""
    if request.param == "cupy" and not cupy_available():
        pytest.skip("CuPy with a working GPU is not available")
    previous = mc.get_backend()
    mc.set_backend(request.param)
    try:
        yield mc.backend.get_xp()
    finally:
        mc.set_backend(previous)


@pytest.fixture
def strict_cupy():
    """The strict CPU stand-in as the current backend; yields the ``tests.strict_device``
    module (its ``record()`` counts syncs and copies). Skips without ``--strict-device``;
    mark such tests ``cupy`` so CI's stand-in leg (``-m cupy``) selects them."""
    from tests import strict_device

    if not strict_device.installed():
        pytest.skip("needs the strict CPU stand-in: pytest --strict-device")
    mc.set_backend("cupy")
    try:
        yield strict_device
    finally:
        mc.set_backend("numpy")


@pytest.fixture(autouse=True)
def _numpy_backend_by_default():
    """Every test starts on the NumPy backend, whatever the previous one left."""
    mc.set_backend("numpy")
    yield


def away_from_zero(x: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Push values at least ``margin`` away from 0, where ReLU-like functions have a kink."""
    return np.where(x >= 0, x + margin, x - margin)


@pytest.fixture
def isolated_data_dirs(tmp_path, monkeypatch):
    """Never touch the user's real data folder or cache (data tests use it module-wide)."""
    monkeypatch.setenv("MINICNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINICNN_DATA", raising=False)


def _smoke_checkpoint(tmp_path_factory: pytest.TempPathFactory, dataset: str) -> Path:
    """The model.npz of a real ``minicnn train --smoke`` run (tiny vgg, random data, 1 epoch)."""
    from minicnn import cli

    out = tmp_path_factory.mktemp(f"{dataset}-smoke-run")
    assert cli.main(["train", "--dataset", dataset, "--smoke", "--backend", "numpy", "-q",
                     "--no-plots", "--out", str(out)]) == 0
    return out / "model.npz"


@pytest.fixture(scope="session")
def mnist_smoke_checkpoint(tmp_path_factory):
    """A ``minicnn train --smoke`` checkpoint on MNIST-shaped data (read it, don't change it)."""
    return _smoke_checkpoint(tmp_path_factory, "mnist")


@pytest.fixture(scope="session")
def cifar10_smoke_checkpoint(tmp_path_factory):
    """A ``minicnn train --smoke`` checkpoint on CIFAR-shaped data (read it, don't change it)."""
    return _smoke_checkpoint(tmp_path_factory, "cifar10")


def dirty_workspace():
    """A ``workspace(name, shape, dtype)`` that reuses its buffers, NaN-filled at first (so a
    function that reads a buffer before writing it shows NaNs); ``.buffers`` holds them."""
    buffers = {}

    def workspace(name, shape, dtype):
        buf = buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = buffers[name] = np.full(shape, np.nan, dtype)
        return buf
    workspace.buffers = buffers
    return workspace


def count(model, kind):
    """How many modules of ``model`` are instances of ``kind``."""
    return sum(isinstance(m, kind) for m in model.modules())


def forward_shape(model, shape, batch=2):
    """The output shape of ``model`` (eval mode) for a batch of zeros of ``shape``."""
    model.eval()
    return model.forward(np.zeros((batch, *shape), np.float32)).shape


def adam_losses(model, x, y, steps, lr=1e-2):
    """The loss before each of ``steps`` Adam steps on the one batch (x, y)."""
    loss_fn = mc.losses.CrossEntropyLoss()
    opt = mc.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        losses.append(float(loss_fn.forward(model.forward(x), y)))
        model.backward(loss_fn.backward())
        opt.step()
    return losses


def on_device(a: np.ndarray, order: tuple[int, ...]) -> object:
    """``a`` on the device, its memory holding the axes in ``order``, viewed in a's shape."""
    stored = mc.to_device(np.ascontiguousarray(a.transpose(order)))
    return stored.transpose(tuple(int(i) for i in np.argsort(order)))


def channels_last(a: object) -> bool:
    """True when the (N, C, H, W) array ``a`` is stored as NHWC (dense, channels fastest)."""
    return a.transpose(0, 2, 3, 1).flags.c_contiguous


def assert_same_on_backend(layer, on_cpu, xp, x: np.ndarray, dout: np.ndarray,
                           rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """``layer`` (parameters on ``xp``'s backend) and ``on_cpu`` (the same layer on NumPy) give
    the same y, dx and parameter gradients for the host arrays ``x``, ``dout``; the device
    results stay on ``xp`` in x's dtype."""
    y_cpu, dx_cpu = on_cpu(x), on_cpu.backward(dout)
    y, dx = layer(xp.asarray(x)), layer.backward(xp.asarray(dout))
    for got, expected in ((y, y_cpu), (dx, dx_cpu)):
        assert mc.backend.get_array_module(got) is xp and got.dtype == x.dtype
        np.testing.assert_allclose(mc.to_numpy(got), expected, rtol=rtol, atol=atol)
    for p, q in zip(layer.parameters(), on_cpu.parameters(), strict=True):
        np.testing.assert_allclose(mc.to_numpy(p.grad), q.grad, rtol=rtol, atol=atol)
