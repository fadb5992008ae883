"""Parsing and checking dataset files placed by hand: IDX, CIFAR-10 batches, archives, cache."""

from __future__ import annotations

import gzip
import os
import pickle
import stat
import tarfile
import warnings

import numpy as np
import pytest

from minicnn.data import (
    ChecksumWarning,
    DatasetFormatError,
    Splits,
    UnsafeArchiveError,
    UnsafePickleError,
    cifar,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    mnist,
    read_idx,
)
from minicnn.data.download import cache_file
from tests import data_fixtures as fx

pytestmark = pytest.mark.usefixtures("isolated_data_dirs")


# -- IDX -----------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    path = tmp_path / "f.idx"
    path.write_bytes(fx.idx_bytes(a, gz=gz))
    b = read_idx(path)
    np.testing.assert_array_equal(b, a)
    assert b.dtype == np.uint8 and b.flags.writeable


@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"\x08\x00" + raw[2:], "not an IDX file"),          # wrong magic
    (lambda raw: raw[:2] + b"\x0d" + raw[3:], "type code 0x0d"),      # floats, not bytes
    (lambda raw: raw[:-10], "holds"),                                  # data shorter than header
    (lambda raw: raw + b"\x00", "holds"),                              # data longer
    (lambda raw: raw[:6], "truncated IDX header"),
])
def test_read_idx_rejects_bad_structure(tmp_path, damage, message):
    raw = fx.idx_bytes(np.zeros((2, 4, 4), np.uint8), gz=False)
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(damage(raw)))
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_broken_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(fx.idx_bytes(np.zeros((2, 4, 4), np.uint8))[:-20])  # truncated stream
    with pytest.raises(DatasetFormatError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def place_mnist(root, files, folder="mnist"):
    fx.write_folder(root / folder, files)


def test_hand_placed_files_with_other_md5_warn_but_load(tmp_path, monkeypatch):
    arrays, files = fx.tiny_mnist()
    spec = fx.tiny_mnist_spec(files)
    spec = spec.__class__(**{**spec.__dict__, "files": {k: (n, "0" * 32)
                                                        for k, (n, _) in spec.files.items()}})
    monkeypatch.setattr(mnist, "MNIST", spec)
    place_mnist(tmp_path, files)
    with pytest.warns(ChecksumWarning, match="differs from the official"):
        splits = load_mnist(tmp_path, download=False)
    (x, y), (xt, yt) = splits
    np.testing.assert_array_equal(x[:, 0], arrays["x_train"])
    np.testing.assert_array_equal(y, arrays["y_train"])
    assert x.shape == (12, 1, 28, 28) and xt.shape == (5, 1, 28, 28)
    assert y.dtype == yt.dtype == np.int64
    assert isinstance(splits, Splits) and splits.classes == mnist.MNIST_CLASSES


def test_official_md5_gives_no_warning(tmp_path, monkeypatch):
    _, files = fx.tiny_mnist()
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(files))
    place_mnist(tmp_path, files)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mnist(tmp_path, download=False)


def test_fashion_mnist_uses_its_own_folder_and_classes(tmp_path, monkeypatch):
    _, files = fx.tiny_mnist(seed=3)
    spec = fx.tiny_mnist_spec(files)
    monkeypatch.setattr(mnist, "FASHION_MNIST", spec.__class__(
        **{**spec.__dict__, "folder": "fashion-mnist", "name": "Fashion-MNIST",
           "classes": mnist.FASHION_MNIST_CLASSES}))
    place_mnist(tmp_path, files, "fashion-mnist")
    splits = load_fashion_mnist(tmp_path, download=False)
    assert splits.classes[9] == "Ankle boot" and splits.train[0].shape == (12, 1, 28, 28)


@pytest.mark.parametrize("change, message", [
    ({"n_train": 13}, "12 items, but MNIST has 13 train items"),
    ({"image_shape": (32, 32)}, r"expected images of shape \(N, 32, 32\)"),
])
def test_counts_and_shapes_are_checked(tmp_path, monkeypatch, change, message):
    _, files = fx.tiny_mnist()
    spec = fx.tiny_mnist_spec(files)
    monkeypatch.setattr(mnist, "MNIST", spec.__class__(**{**spec.__dict__, **change}))
    place_mnist(tmp_path, files)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_mnist(tmp_path, download=False)
    assert "train-" in str(info.value)  # names the file


def test_labels_out_of_range_are_rejected(tmp_path, monkeypatch):
    arrays, files = fx.tiny_mnist()
    files["t10k-labels-idx1-ubyte.gz"] = fx.idx_bytes(np.full(5, 12, np.uint8))
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(files))
    place_mnist(tmp_path, files)
    with pytest.raises(DatasetFormatError, match="t10k-labels.*label 12 out of range"):
        load_mnist(tmp_path, download=False)


# -- the cache -----------------------------------------------------------------------------

def test_cache_round_trip_and_invalidation(tmp_path, monkeypatch):
    arrays, files = fx.tiny_mnist()
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(files))
    place_mnist(tmp_path, files)
    first = load_mnist(tmp_path, download=False)
    cache = cache_file(tmp_path / "mnist", "mnist")
    assert cache.is_file() and cache.is_relative_to(tmp_path / "cache")
    with np.load(cache, allow_pickle=False) as npz:  # plain arrays, no pickled objects
        assert {"x_train", "y_train", "x_test", "y_test"} <= set(npz.files)
    calls = []
    real_read = mnist.read_idx
    monkeypatch.setattr(mnist, "read_idx", lambda p: calls.append(p) or real_read(p))
    second = load_mnist(tmp_path, download=False)
    assert calls == []  # served from the cache
    for a, b in zip((*first[0], *first[1]), (*second[0], *second[1]), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    # a changed source file invalidates the cache
    new_labels = fx.idx_bytes(np.zeros(12, np.uint8))
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(
        {**files, "train-labels-idx1-ubyte.gz": new_labels}))
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(new_labels)
    (_, y), _ = load_mnist(tmp_path, download=False)
    assert calls and not y.any()
    # a corrupt cache file is ignored and rewritten
    cache.write_bytes(b"garbage")
    (_, y), _ = load_mnist(tmp_path, download=False)
    assert not y.any()
    with np.load(cache, allow_pickle=False) as npz:
        assert "x_train" in npz.files


def test_cache_goes_next_to_writable_data_and_never_into_read_only(tmp_path, monkeypatch):
    _, files = fx.tiny_mnist()
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(files))
    monkeypatch.delenv("MINICNN_CACHE")
    place_mnist(tmp_path / "rw", files)
    load_mnist(tmp_path / "rw", download=False)
    assert (tmp_path / "rw" / "mnist" / "mnist.npz").is_file()

    place_mnist(tmp_path / "ro", files)
    folder = tmp_path / "ro" / "mnist"
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only, even for root
    try:
        load_mnist(tmp_path / "ro", download=False)
        assert sorted(os.listdir(folder)) == sorted(files)
        cached = list((tmp_path / "home" / ".cache" / "minicnn" / "mnist").glob("mnist-*.npz"))
        assert len(cached) == 1
    finally:
        folder.chmod(stat.S_IRWXU)


# -- CIFAR-10 ------------------------------------------------------------------------------

def test_cifar_folder_and_archive_agree_and_keep_pixel_layout(tmp_path, monkeypatch):
    batches, pickles = fx.tiny_cifar()
    archive = fx.cifar_tar(pickles)
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(archive))
    fx.write_folder(tmp_path / "a" / "cifar10" / "cifar-10-batches-py", pickles)
    fx.write_folder(tmp_path / "b" / "cifar10", {"cifar-10-python.tar.gz": archive})
    (x, y), (xt, yt) = load_cifar10(tmp_path / "a", download=False)
    (x2, y2), (xt2, yt2) = load_cifar10(tmp_path / "b", download=False)
    for a, b in ((x, x2), (y, y2), (xt, xt2), (yt, yt2)):
        np.testing.assert_array_equal(a, b)
    assert x.shape == (20, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    # row layout: 1024 red, 1024 green, 1024 blue values, each 32 rows of 32
    row = batches["data_batch_3"][0][1]
    n = 2 * 4 + 1
    assert x[n, 0, 0, 0] == row[0] and x[n, 1, 0, 0] == row[1024]
    assert x[n, 2, 31, 31] == row[3071] and x[n, 0, 1, 0] == row[32]
    np.testing.assert_array_equal(y[8:12], batches["data_batch_3"][1])
    assert not list((tmp_path / "b" / "cifar10").glob("cifar-10-batches-py"))  # not extracted


def test_cifar_archive_with_other_md5_warns(tmp_path, monkeypatch):
    _, pickles = fx.tiny_cifar()
    archive = fx.cifar_tar(pickles)
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(None, ))  # official MD5
    fx.write_folder(tmp_path / "cifar10", {"cifar-10-python.tar.gz": archive})
    with pytest.warns(ChecksumWarning, match="c58f30108f718f92721af3b95e74349a"):
        (x, _), _ = load_cifar10(tmp_path, download=False)
    assert len(x) == 20


def test_cifar_accepts_numpy2_module_names(tmp_path, monkeypatch):
    batches, pickles = fx.tiny_cifar()
    pickles = {k: v.replace(b"numpy.core.multiarray", b"numpy._core.multiarray")
               for k, v in pickles.items()}
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(None))
    fx.write_folder(tmp_path / "cifar10" / "cifar-10-batches-py", pickles)
    _, (xt, _) = load_cifar10(tmp_path, download=False)
    np.testing.assert_array_equal(xt.reshape(3, -1), batches["test_batch"][0])


class _Evil:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["folder", "archive"])
def test_malicious_pickle_is_refused(tmp_path, monkeypatch, layout):
    _, pickles = fx.tiny_cifar()
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=2)
    pickle.loads(payload)  # the plain unpickler really runs the command...
    assert marker.exists()
    marker.unlink()  # ...the loader must not
    pickles["data_batch_2"] = payload
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(None))
    if layout == "folder":
        fx.write_folder(tmp_path / "cifar10" / "cifar-10-batches-py", pickles)
    else:
        fx.write_folder(tmp_path / "cifar10", {"cifar-10-python.tar.gz": fx.cifar_tar(pickles)})
    with pytest.warns(ChecksumWarning) if layout == "archive" else warnings.catch_warnings():
        with pytest.raises(UnsafePickleError, match=r"data_batch_2.*refusing.*system"):
            load_cifar10(tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.parametrize("name, kind", [
    ("../evil.txt", tarfile.REGTYPE),
    ("cifar-10-batches-py/../../evil.txt", tarfile.REGTYPE),
    ("/tmp/evil.txt", tarfile.REGTYPE),
    ("cifar-10-batches-py/link", tarfile.SYMTYPE),
])
def test_archive_escaping_its_folder_is_refused(tmp_path, monkeypatch, name, kind):
    _, pickles = fx.tiny_cifar()
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    else:
        info.size = 3
    archive = fx.cifar_tar(pickles, extra=[info])
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(archive))
    fx.write_folder(tmp_path / "d" / "cifar10", {"cifar-10-python.tar.gz": archive})
    with pytest.raises(UnsafeArchiveError, match="refusing the archive") as info_:
        load_cifar10(tmp_path / "d", download=False)
    assert name in str(info_.value)
    assert fx.leftovers(tmp_path / "d") == ["cifar10/cifar-10-python.tar.gz"]
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda p: {**p, "test_batch": fx.batch_pickle(np.zeros((3, 100), np.uint8), [0] * 3)},
     r"test_batch: 'data' must be a uint8 array of shape \(n, 3072\)"),
    (lambda p: {**p, "data_batch_4": fx.batch_pickle(np.zeros((3, 3072), np.uint8), [0] * 3)},
     "data_batch_4: 3 images, expected 4"),
    (lambda p: {**p, "data_batch_1": fx.batch_pickle(np.zeros((4, 3072), np.uint8), [10] * 4)},
     "data_batch_1: labels out of range"),
    (lambda p: {**p, "data_batch_5": fx.batch_pickle(np.zeros((4, 3072), np.uint8), [0] * 3)},
     "data_batch_5: 'labels' must hold 4 integers"),
    (lambda p: {**p, "data_batch_1": p["data_batch_1"][:200]}, "data_batch_1: not a readable"),
    (lambda p: {**p, "test_batch": fx.py2_pickle([1, 2])}, "test_batch: expected a pickled dict"),
])
def test_cifar_structure_is_checked(tmp_path, monkeypatch, damage, message):
    _, pickles = fx.tiny_cifar()
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(None))
    fx.write_folder(tmp_path / "cifar10" / "cifar-10-batches-py", damage(pickles))
    with pytest.raises(DatasetFormatError, match=message):
        load_cifar10(tmp_path, download=False)


def test_cifar_missing_batch_in_archive(tmp_path, monkeypatch):
    _, pickles = fx.tiny_cifar()
    del pickles["data_batch_5"]
    archive = fx.cifar_tar(pickles)
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(archive))
    fx.write_folder(tmp_path / "cifar10", {"cifar-10-python.tar.gz": archive})
    with pytest.raises(DatasetFormatError, match="missing data_batch_5"):
        load_cifar10(tmp_path, download=False)


def test_cifar_damaged_archive_names_the_file(tmp_path, monkeypatch):
    _, pickles = fx.tiny_cifar()
    archive = fx.cifar_tar(pickles)[:-300]
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(archive))
    fx.write_folder(tmp_path / "cifar10", {"cifar-10-python.tar.gz": archive})
    with pytest.raises(DatasetFormatError, match="cifar-10-python.tar.gz"):
        load_cifar10(tmp_path, download=False)
