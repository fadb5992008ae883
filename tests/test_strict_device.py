"""The strict CPU stand-in for CuPy (tests/strict_device.py) is as strict as it claims.

These tests use the stand-in's module object directly, so they run in every pytest run,
with or without ``--strict-device``; only the tests that need minicnn to see "CuPy" put the
stand-in into ``sys.modules`` (for that test alone, through monkeypatch).
"""

from __future__ import annotations

import copy
import json
import pickle
import sys

import numpy as np
import pytest

from minicnn import backend
from tests import strict_device as sd

cp = sd.cupy


@pytest.fixture
def seen_as_cupy(monkeypatch):
    """minicnn's backend finds the stand-in as the loaded CuPy (this test only)."""
    for name, module in sd.MODULES.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "_cupy", None)


def test_arrays_are_wrappers_that_numpy_cannot_convert():
    d = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    assert isinstance(d, cp.ndarray) and not isinstance(d, np.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(d)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.lib.stride_tricks.as_strided(d, shape=(2, 2), strides=(12, 4))
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.testing.assert_allclose(d, d)
    # What works on CuPy works here: explicit copies, NumPy ufuncs and functions dispatched
    # to CuPy's (returning device arrays), 0-d results instead of NumPy scalars.
    np.testing.assert_array_equal(d.get(), np.arange(6).reshape(2, 3))
    assert type(np.exp(d)) is cp.ndarray and type(np.sum(d)) is cp.ndarray
    total = d.sum()
    assert type(total) is cp.ndarray and total.ndim == 0 and float(total) == 15.0
    assert type(d[0, 1]) is cp.ndarray


@pytest.mark.parametrize("mix", [
    lambda d, h: d + h, lambda d, h: h * d, lambda d, h: cp.add(d, h),
    lambda d, h: np.maximum(h, d), lambda d, h: cp.stack([d, h]), lambda d, h: cp.exp(h),
    lambda d, h: cp.where(d > 0, h, d), lambda d, h: d.__iadd__(h), lambda d, h: d @ h,
])
def test_host_arrays_mixed_into_device_calls_raise(mix):
    d, h = cp.ones(3, dtype=cp.float32), np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        mix(d, h)


def test_scalars_and_0d_host_arrays_mix_as_on_cupy():
    d = cp.ones(3, dtype=cp.float32)
    for s in (2, 2.0, np.float32(2), np.array(2.0, dtype=np.float32)):
        assert (d * s).get().tolist() == [2.0, 2.0, 2.0]


def test_only_the_names_a_real_cupy_has():
    names = json.loads(sd.NAMES_FILE.read_text())
    assert names["cupy_version"] and "asnumpy" in names["cupy"] and "erf" in names[
        "cupyx.scipy.special"]
    # NumPy functions CuPy lacks (read from the wheel, not guessed) are absent...
    d = cp.ones(4)
    calls = {"insert": lambda: np.insert(d, 1, 5.0), "block": lambda: np.block([d, d]),
             "geomspace": lambda: np.geomspace(d, 2 * d, 3),
             "nanpercentile": lambda: np.nanpercentile(d, 50), "vecdot": lambda: np.vecdot(d, d)}
    for missing, call in calls.items():
        assert missing not in names["cupy"]
        assert not hasattr(cp, missing)
        with pytest.raises(TypeError, match="no implementation found|returned NotImplemented"):
            call()  # ... and NumPy's own refuses a device array, as with CuPy
    assert not hasattr(cp.ones(2), "resize")  # an np.ndarray method CuPy's ndarray lacks
    assert not hasattr(cp.random.default_rng(0), "permutation")  # CuPy's Generator lacks it


def test_ufunc_at_only_where_cupy_implements_it():
    d = cp.zeros(4, dtype=cp.float32)
    idx = cp.asarray(np.array([0, 0, 3]))
    cp.add.at(d, idx, cp.ones(3, dtype=cp.float32))  # CuPy implements add.at (scatter_add)
    assert d.get().tolist() == [2.0, 0.0, 0.0, 1.0]
    with pytest.raises(NotImplementedError, match="multiply.at"):
        cp.multiply.at(d, idx, cp.ones(3, dtype=cp.float32))
    with pytest.raises(TypeError, match="numpy.add.at"):
        np.add.at(d, idx, 1.0)


@pytest.mark.parametrize("make", [lambda: cp.random.RandomState(0),
                                  lambda: cp.random.default_rng(0)])
def test_device_generators_refuse_pickle_and_deepcopy(make):
    g = make()
    with pytest.raises(TypeError, match="cannot pickle"):
        pickle.dumps(g)
    with pytest.raises(TypeError, match="cannot deepcopy"):
        copy.deepcopy(g)
    with pytest.raises(TypeError, match="cannot deepcopy"):
        copy.deepcopy({"layer_state": [g]})


def test_arrays_pickle_and_deepcopy_like_cupy_arrays():
    d = cp.arange(3, dtype=cp.float32)
    e = copy.deepcopy(d)
    e += 1
    assert d.get().tolist() == [0, 1, 2] and e.get().tolist() == [1, 2, 3]
    assert pickle.loads(pickle.dumps(d)).get().tolist() == [0, 1, 2]


def test_syncs_and_copies_are_counted_with_their_bytes():
    host = np.arange(12, dtype=np.float32)
    with sd.record() as rec:
        d = cp.asarray(host)                     # h2d, 48 bytes
        _ = d * 2 + 1                            # no event: stays on the device
        float(d[0]), int(d[1]), bool(d[2] > 0)   # 3 syncs
        d.sum().item(), d[:2].tolist()           # 2 syncs
        _ = d[d > 5]                             # boolean mask: the count needs the host
        cp.nonzero(d)                            # 1 sync
        d.get()                                  # 1 sync, 48 bytes back
        d[np.array([0, 1])]                      # a host index array: h2d 16 bytes
    assert rec.syncs == 8, rec.report()
    assert rec.h2d_bytes == 48 + 16
    assert [e.what for e in rec.of("sync")][-2:] == ["nonzero()", "asnumpy()"]
    assert rec.of("sync")[-1].nbytes == 48
    assert all(e.where.startswith("(outside minicnn) tests/test_strict_device.py")
               for e in rec.events), rec.report()
    with sd.record() as quiet:
        (d * 3).sum(axis=0)
    assert quiet.events == []


def test_events_name_the_minicnn_line_that_caused_them(seen_as_cupy):
    d = cp.ones((2, 3), dtype=cp.float32)
    assert backend.get_array_module(d) is cp
    with sd.record() as rec:
        backend.to_numpy(d)
        backend.to_device(np.zeros(5, dtype=np.float32), like=d)
    sync, copy_in = rec.events
    assert sync.kind == "sync" and sync.where.startswith("minicnn/backend.py:"), sync
    assert copy_in.kind == "h2d" and copy_in.nbytes == 20
    assert copy_in.where.startswith("minicnn/backend.py:")
    assert "minicnn/backend.py" in rec.report()


def test_install_refuses_to_shadow_a_real_cupy(monkeypatch):
    fake_real = type(sys)("cupy")
    monkeypatch.setitem(sys.modules, "cupy", fake_real)
    with pytest.raises(RuntimeError, match="real CuPy"):
        sd.install()
    assert sys.modules["cupy"] is fake_real


def test_a_list_of_device_arrays_is_assembled_on_the_device():
    a, b = cp.ones(2), cp.zeros(2)
    with sd.record() as rec:
        both = cp.asarray([a, b])
    assert both.shape == (2, 2) and rec.events == []
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        cp.asarray([a, np.ones(2)])


def test_every_name_of_the_wheel_exists_on_the_stand_in():
    """The stand-in offers what the dumped wheel has (to run, or to refuse clearly)."""
    names = sd.NAMES
    for module, key in ((cp, "cupy"), (cp.random, "random"), (cp.linalg, "linalg"),
                        (cp.fft, "fft"), (sd.special, "cupyx.scipy.special")):
        assert [n for n in names[key] if not hasattr(module, n)] == [], key
    assert [n for n in names["ndarray"] if not hasattr(cp.ndarray, n)] == []
    assert float(cp.arange(5).ptp()) == 4.0
    with pytest.raises(NotImplementedError, match="strict CPU stand-in"):
        cp.ones(2).toDlpack()
