"""The GPU preset's data path on the device (issue 25): the dataset stays uint8 on the device,
each batch is gathered, scaled and normalised there, mirrored by the alternating flip and
translated with reflect padding, without a host sync; per batch only the crop offsets cross
to the device (8 bytes a sample), per epoch the permutation (8 bytes a sample). Counted by the
strict CPU stand-in for CuPy (``--strict-device``)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import minicnn as mc
from minicnn import data

N, B = 96, 32
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def loader(seed=0):
    x, y = data.synthetic(N, (3, 32, 32), seed=seed)
    return data.DataLoader(x, y, B, seed=seed, normalize=(MEAN, STD),
                           transform=data.RandomCrop(32, padding=2, padding_mode="reflect"),
                           alternating_flip=True)


@pytest.mark.cupy
def test_epoch_budget_syncs_copies_launches(strict_cupy):
    cp = strict_cupy.cupy
    ld = loader()
    assert type(ld.x) is cp.ndarray and ld.x.dtype == np.uint8   # 1 byte a pixel on the device
    list(ld)  # the first epoch makes the shape-only index arrays, once
    with strict_cupy.record() as rec:
        batches = [xb for xb, _ in ld]
    assert all(type(xb) is cp.ndarray and xb.dtype == np.float32 for xb in batches)
    assert rec.syncs == 0, rec.report("sync")
    assert rec.h2d_bytes == 8 * B * len(batches) + 8 * N, rec.report("h2d")
    # per batch: uint8 -> float32, x 1/255, the flip's where, the reflect gather's copy,
    # (x - mean) * (1/std): 6 counted launches (before the cached index arrays: 17)
    assert rec.launches <= 6 * len(batches), rec.report("launch")


@pytest.mark.cupy
def test_device_batches_equal_numpy_batches(strict_cupy):
    on_device = [xb.get() for xb, _ in loader()]
    mc.set_backend("numpy")
    try:
        on_host = [xb for xb, _ in loader()]
    finally:
        mc.set_backend("cupy")
    for a, b in zip(on_device, on_host, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_reflect_crop_index_cache_is_reused_and_not_copied():
    t = data.RandomCrop(8, padding=2, padding_mode="reflect")
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    first = t(x, np.random.default_rng(1))
    cached = dict(t._index_cache)
    assert len(cached) == 2 and all(isinstance(v, np.ndarray) for v in cached.values())
    again = t(x, np.random.default_rng(1))
    assert all(t._index_cache[k] is v for k, v in cached.items())  # made once per shape
    np.testing.assert_array_equal(first, again)
    for clone in (copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert "_index_cache" not in vars(clone)
        np.testing.assert_array_equal(clone(x, np.random.default_rng(1)), first)
