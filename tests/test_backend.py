"""The backend switch: names, environment variable, array modules, device moves."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import minicnn as mc
from minicnn import backend
from minicnn.backend import BackendError


def test_default_backend_is_numpy():
    assert mc.get_backend() == "numpy"
    assert backend.get_xp() is np


@pytest.mark.parametrize("bad", ["torch", "", "gpu"])
def test_set_backend_rejects_unknown_names(bad):
    with pytest.raises(ValueError, match="set_backend: expected one of"):
        mc.set_backend(bad)


def test_auto_picks_a_working_backend():
    chosen = mc.set_backend("auto")
    assert chosen == ("cupy" if backend.cupy_available() else "numpy")


@pytest.mark.skipif(backend.cupy_available(), reason="this machine has a usable GPU")
def test_cupy_request_without_gpu_explains_how_to_install():
    with pytest.raises(BackendError) as err:
        mc.set_backend("cupy")
    msg = str(err.value)
    assert "cupy-cuda12x" in msg and "cupy-cuda13x" in msg and "numpy" in msg


def test_environment_variable_selects_backend():
    code = "import minicnn as mc; print(mc.get_backend())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"MINICNN_BACKEND": "numpy", "PATH": ""}, check=True)
    assert out.stdout.strip() == "numpy"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"MINICNN_BACKEND": "tensorflow", "PATH": ""})
    assert bad.returncode != 0 and "set_backend: expected one of" in bad.stderr


def test_import_does_not_import_cupy():
    code = "import sys, minicnn; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_to_device_and_to_numpy_round_trip(xp):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = mc.to_device(a)
    assert mc.get_array_module(d) is xp
    back = mc.to_numpy(d)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, a)
    assert mc.to_device([1, 2], dtype=np.float32).dtype == np.float32


def test_layers_take_array_module_from_input(xp):
    from minicnn import layers as L

    x = xp.asarray(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    y = L.ReLU()(x)
    assert mc.get_array_module(y) is xp


@pytest.mark.cupy
def test_cupy_arrays_are_recognised_whenever_cupy_is_loaded(strict_cupy, monkeypatch):
    """A user's CuPy array, with minicnn's backend left on NumPy and minicnn never having
    imported CuPy itself, still goes through conv, pooling and augmentation on the device
    (get_array_module looks in sys.modules, not at minicnn's own import)."""
    from minicnn import layers as L
    from minicnn.data import RandomCrop

    cp = strict_cupy.cupy
    mc.set_backend("numpy")
    monkeypatch.setattr(backend, "_cupy", None)  # as if set_backend("cupy") never ran
    x = cp.asarray(np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32))
    assert mc.get_array_module(x) is cp
    for out in (L.MaxPool2d(2)(x), L.AvgPool2d(2)(x), RandomCrop(8, padding=2)(x),
                L.Conv2d(3, 4, 3, padding=1).to("gpu")(x)):
        assert type(out) is cp.ndarray
    labels = mc.to_device(np.array([1, 2]), like=x)  # to the reference's device
    assert type(labels) is cp.ndarray
    assert isinstance(mc.to_numpy(labels), np.ndarray)


def test_strict_device_switch_is_off_by_default():
    """Without --strict-device / MINICNN_STRICT_DEVICE=1 nothing named cupy is faked."""
    import os

    from tests import strict_device

    if os.environ.get("MINICNN_STRICT_DEVICE") == "1" or strict_device.installed():
        pytest.skip("the stand-in is switched on for this run")
    assert not getattr(sys.modules.get("cupy"), "__strict_stand_in__", False)
