"""The real MNIST and Fashion-MNIST files of the team's shared folder, via the public loaders.

Skipped where ``../shared/datasets`` (next to the repository) does not exist. The shared
folder is read-only: the cache must go to $MINICNN_CACHE (a temporary folder here) and the
shared folder must be left exactly as it was.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from minicnn.data import (
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    channel_stats,
    load_fashion_mnist,
    load_mnist,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

pytestmark = [
    pytest.mark.skipif(not (SHARED / "mnist").is_dir(),
                       reason=f"{SHARED} not present (only on the team's machines)"),
    pytest.mark.usefixtures("isolated_data_dirs"),
]

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.parametrize("loader, folder, classes, train_counts, test_counts", [
    (load_mnist, "mnist", MNIST_CLASSES, MNIST_TRAIN_COUNTS, MNIST_TEST_COUNTS),
    (load_fashion_mnist, "fashion-mnist", FASHION_MNIST_CLASSES, [6000] * 10, [1000] * 10),
])
def test_real_idx_datasets(tmp_path, loader, folder, classes, train_counts, test_counts):
    before = listing(SHARED / folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # byte-identical to the official files: no MD5 warning
        splits = loader(SHARED, download=False, quiet=True)
    (x, y), (xt, yt) = splits
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert x.dtype == xt.dtype == np.uint8 and y.dtype == yt.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == train_counts
    assert np.bincount(yt, minlength=10).tolist() == test_counts
    assert splits.classes == classes
    # cached outside the read-only shared folder, which is left untouched
    assert listing(SHARED / folder) == before
    cached = list((tmp_path / "cache" / folder).glob("*.npz"))
    assert len(cached) == 1
    (x2, y2), _ = loader(SHARED, download=False)  # the cached load gives the same arrays
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    if folder == "mnist":  # the well-known normalisation constants
        mean, std = channel_stats(x)
        np.testing.assert_allclose(mean, [0.1307], atol=5e-5)
        np.testing.assert_allclose(std, [0.3081], atol=5e-5)


def test_environment_variable_serves_the_shared_folder(monkeypatch):
    monkeypatch.setenv("MINICNN_DATA", os.fspath(SHARED))
    (x, _), _ = load_mnist(download=False)
    assert len(x) == 60000
