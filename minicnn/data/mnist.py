"""MNIST and Fashion-MNIST: the four official gzipped IDX files of each.

The IDX format (LeCun et al.) is a big-endian header followed by raw bytes::

    magic   : 4 bytes  = 0x00 0x00 <type code> <number of dimensions>
    dims    : one uint32 (big-endian) per dimension
    data    : prod(dims) values of the given type (0x08 = unsigned byte)

Image files are 3-dimensional (N, 28, 28), magic 0x00000803; label files 1-dimensional (N,),
magic 0x00000801. Both datasets use exactly this format, 60,000 training and 10,000 test
images of 28 x 28 pixels, 10 classes.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .common import Splits, ensure_file, load_with_cache
from .download import DatasetFormatError

__all__ = [
    "IdxDataset",
    "MNIST",
    "FASHION_MNIST",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "MNIST_MIRRORS",
    "FASHION_MNIST_MIRRORS",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
]

MNIST_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")

# The original host (yann.lecun.com) now refuses most downloads; torchvision moved to the
# PyTorch S3 mirror first. Each entry is a base URL to which the file name is appended.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

IDX_UBYTE = 0x08  # type code of unsigned bytes, the only one these datasets use


@dataclasses.dataclass(frozen=True)
class IdxDataset:
    """How to find, check and parse one IDX dataset.

    ``files`` maps the four roles (``x_train``, ``y_train``, ``x_test``, ``y_test``) to
    ``(file name, official MD5)``. Tests build tiny variants with ``dataclasses.replace``.
    """

    name: str
    folder: str
    mirrors: tuple[str, ...]
    files: dict[str, tuple[str, str]]
    classes: tuple[str, ...]
    n_train: int = 60000
    n_test: int = 10000
    image_shape: tuple[int, int] = (28, 28)


def _idx_files(md5s: tuple[str, str, str, str]) -> dict[str, tuple[str, str]]:
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return {role: (n, m) for role, n, m in zip(("x_train", "y_train", "x_test", "y_test"),
                                               names, md5s, strict=True)}


MNIST = IdxDataset(
    name="MNIST", folder="mnist", mirrors=MNIST_MIRRORS, classes=MNIST_CLASSES,
    files=_idx_files(("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                      "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c")))
FASHION_MNIST = IdxDataset(
    name="Fashion-MNIST", folder="fashion-mnist", mirrors=FASHION_MNIST_MIRRORS,
    classes=FASHION_MNIST_CLASSES,
    files=_idx_files(("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                      "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310")))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) into a uint8 array.

    Raises
    ------
    DatasetFormatError
        Naming the file, for a bad gzip stream, a wrong magic number, a type other than
        unsigned bytes, or a data size that does not match the header's dimensions.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # gzip magic: the official files are gzipped
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetFormatError(f"{path}: not a valid gzip file ({exc}); delete it and "
                                 f"download it again") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetFormatError(f"{path}: not an IDX file (magic number {raw[:4].hex()!r}, "
                                 f"expected 0000 08 01 or 0000 08 03)")
    if raw[2] != IDX_UBYTE:
        raise DatasetFormatError(f"{path}: IDX type code 0x{raw[2]:02x}, expected 0x08 "
                                 f"(unsigned bytes)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DatasetFormatError(f"{path}: truncated IDX header ({ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetFormatError(f"{path}: the header announces {dims} = {expected} bytes of "
                                 f"data but the file holds {len(raw) - header}")
    # frombuffer views the immutable bytes; one copy makes the array writable like the cached one.
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _parse(spec: IdxDataset, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """Read the four files and check them against each other and the dataset's shape."""
    out = {}
    for split, count in (("train", spec.n_train), ("test", spec.n_test)):
        x_path, y_path = paths[f"x_{split}"], paths[f"y_{split}"]
        x, y = read_idx(x_path), read_idx(y_path)
        if x.ndim != 3 or x.shape[1:] != spec.image_shape:
            raise DatasetFormatError(f"{x_path}: expected images of shape (N, "
                                     f"{spec.image_shape[0]}, {spec.image_shape[1]}), got "
                                     f"{x.shape}")
        if y.ndim != 1:
            raise DatasetFormatError(f"{y_path}: expected a 1-dimensional label file, got "
                                     f"shape {y.shape}")
        for p, n in ((x_path, len(x)), (y_path, len(y))):
            if n != count:
                raise DatasetFormatError(f"{p}: {n} items, but {spec.name} has {count} "
                                         f"{split} items")
        if y.size and int(y.max()) >= len(spec.classes):
            raise DatasetFormatError(f"{y_path}: label {int(y.max())} out of range "
                                     f"0..{len(spec.classes) - 1}")
        out[f"x_{split}"] = x[:, None]  # (N, 1, H, W): one channel
        out[f"y_{split}"] = y.astype(np.int64)
    return out


def _load(spec: IdxDataset, root, download: bool, quiet: bool, mirrors) -> Splits:
    if mirrors is not None:
        spec = dataclasses.replace(spec, mirrors=tuple(mirrors))
    def find(folder: Path):
        paths = [folder / name for name, _ in spec.files.values()]
        return paths if all(p.is_file() for p in paths) else None

    def fetch(folder: Path):
        return [ensure_file(folder, name, md5, spec.mirrors, download, quiet)
                for name, md5 in spec.files.values()]

    def parse(paths):
        return _parse(spec, dict(zip(spec.files, paths, strict=True)))

    return load_with_cache(spec.name, spec.folder, root, find, fetch, parse, spec.classes)


def load_mnist(root: str | os.PathLike | None = None, download: bool = True,
               quiet: bool = False, mirrors: Sequence[str] | None = None) -> Splits:
    """The MNIST digits: ``(x_train, y_train), (x_test, y_test)``.

    Parameters
    ----------
    root : path, optional
        The data folder (default ``$MINICNN_DATA``, else ``~/.cache/minicnn``); the files live
        in ``root/mnist/``. Official ``.gz`` files placed there by hand are used as they are.
    download : bool
        Download missing files from ``MNIST_MIRRORS`` (MD5-checked, atomic).
    quiet : bool
        No progress bar.
    mirrors : sequence of str, optional
        Base URLs to download from instead of ``MNIST_MIRRORS`` (tried in order).

    Returns
    -------
    Splits
        ``x_train`` uint8 (60000, 1, 28, 28), ``y_train`` int64 (60000,), ``x_test`` uint8
        (10000, 1, 28, 28), ``y_test`` int64 (10000,); ``.classes`` is ``MNIST_CLASSES``.
        The parsed arrays are cached as ``.npz`` (see ``minicnn.data.download``), so the next
        load takes a fraction of a second.
    """
    return _load(MNIST, root, download, quiet, mirrors)


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = True,
                       quiet: bool = False, mirrors: Sequence[str] | None = None) -> Splits:
    """Fashion-MNIST (Zalando): same format, shapes and arguments as ``load_mnist``.

    The files live in ``root/fashion-mnist/``; ``mirrors`` defaults to
    ``FASHION_MNIST_MIRRORS``; ``.classes`` is ``FASHION_MNIST_CLASSES`` (T-shirt/top,
    Trouser, ..., Ankle boot).
    """
    return _load(FASHION_MNIST, root, download, quiet, mirrors)
