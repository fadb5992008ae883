"""Augmentation on the device: no host syncs, only the random parameters cross over, and the
same numbers as on NumPy (run under the strict CPU stand-in for CuPy: ``--strict-device``).
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from minicnn.data import (
    ColorJitter,
    Compose,
    Cutout,
    GaussianNoise,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
)

pytestmark = pytest.mark.cupy

N = 32


def images(n=N, c=3, h=16, w=16, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


TRANSFORMS = {
    "hflip": lambda: RandomHorizontalFlip(),
    "vflip": lambda: RandomVerticalFlip(0.3),
    "crop": lambda: RandomCrop(16, padding=2),
    "resized_crop": lambda: RandomResizedCrop(12, scale=(0.3, 1.0)),
    "cutout": lambda: Cutout(6, p=0.7),
    "jitter": lambda: ColorJitter(0.3, 0.3),
    "normalize": lambda: Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transform_makes_no_sync_and_sends_only_its_parameters(strict_cupy, name):
    """Per batch: zero host syncs; host->device bytes bounded by a few numbers per sample
    (before: the flips read two boolean masks back, RandomResizedCrop sent four (N, h, w)
    int64 index arrays, Cutout an (N, H, W) mask)."""
    cp = strict_cupy.cupy
    t = TRANSFORMS[name]()
    x = cp.asarray(images())
    with strict_cupy.record() as rec:
        y = t(x, np.random.default_rng(1))
    assert type(y) is cp.ndarray and y.dtype == cp.float32
    assert rec.syncs == 0, rec.report()
    assert rec.h2d_bytes <= 4 * 8 * N + 64, rec.report("h2d")


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_device_and_numpy_give_the_same_batch(strict_cupy, name):
    """The random parameters come from the host generator: same seed, same pixels."""
    cp = strict_cupy.cupy
    x = images(seed=2)
    on_host = TRANSFORMS[name]()(x, np.random.default_rng(5))
    on_device = TRANSFORMS[name]()(cp.asarray(x), np.random.default_rng(5))
    np.testing.assert_allclose(on_device.get(), on_host, rtol=1e-6, atol=1e-7)


def test_noise_uses_one_device_generator_seeded_from_the_host(strict_cupy):
    """One device generator per transform (not a new one per batch), seeded from rng, so a
    seeded pipeline repeats; copies drop it (device state cannot be pickled) and re-seed."""
    cp = strict_cupy.cupy
    x = cp.asarray(np.full((8, 3, 4, 4), 0.5, np.float32))
    noise = GaussianNoise(0.1)
    first = noise(x, np.random.default_rng(3))
    generator = noise._device_rng
    assert generator is not None
    second = noise(x, np.random.default_rng(3))
    assert noise._device_rng is generator
    assert not np.array_equal(first.get(), second.get())  # the stream goes on
    again = GaussianNoise(0.1)(x, np.random.default_rng(3))
    np.testing.assert_array_equal(again.get(), first.get())  # same seed, same noise
    for clone in (copy.deepcopy(noise), pickle.loads(pickle.dumps(noise))):
        assert clone._device_rng is None and clone.std == 0.1
        np.testing.assert_array_equal(clone(x, np.random.default_rng(3)).get(), first.get())
    with strict_cupy.record() as rec:
        Compose([RandomHorizontalFlip(), noise])(x, np.random.default_rng(0))
    assert rec.syncs == 0, rec.report()


def test_normalize_copies_its_constants_to_the_device_once(strict_cupy):
    cp = strict_cupy.cupy
    norm = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    x = cp.asarray(images())
    norm(x)
    with strict_cupy.record() as rec:
        for _ in range(3):
            norm(x)
    assert rec.h2d_bytes == 0, rec.report("h2d")
    clone = pickle.loads(pickle.dumps(norm))  # the cache does not travel
    np.testing.assert_array_equal(clone(x).get(), norm(x).get())
    assert repr(clone) == repr(norm)
