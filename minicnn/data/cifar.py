"""CIFAR-10: the official "python version" (pickled batches), read without trusting pickle.

The archive ``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/`` with ``data_batch_1`` ..
``data_batch_5`` (10,000 training images each), ``test_batch`` (10,000) and ``batches.meta``.
Each batch is a pickled dict: ``b'data'`` a (10000, 3072) uint8 array (per row 1024 red, then
1024 green, then 1024 blue values of a 32 x 32 image, row-major), ``b'labels'`` a list of
ints in 0..9, plus ``b'batch_label'`` and ``b'filenames'``.

Safety
------
``pickle.load`` on a downloaded file can run arbitrary code. ``SafeUnpickler`` only resolves
the three globals a pickled NumPy array needs (``_reconstruct``, ``ndarray``, ``dtype``) and
refuses everything else, so a tampered file raises ``UnsafePickleError`` instead of running.

The batches are read straight out of the ``.tar.gz`` (or from the extracted folder, if the user
has one): nothing is extracted to disk. Every archive member is still checked as an extraction
would be: an absolute path, a ``..`` component, a link or a device file rejects the archive.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from .common import Splits, ensure_file, load_with_cache
from .download import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "CifarDataset",
    "CIFAR10",
    "CIFAR10_CLASSES",
    "CIFAR10_MIRRORS",
    "SafeUnpickler",
    "UnsafePickleError",
    "UnsafeArchiveError",
    "safe_load_pickle",
    "check_tar_member",
    "load_cifar10",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

_FOLDER_IN_ARCHIVE = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"


@dataclasses.dataclass(frozen=True)
class CifarDataset:
    """Where CIFAR-10 comes from and what it must contain (tests shrink the counts)."""

    name: str
    folder: str
    archive: str
    md5: str
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    n_train: int = 50000
    n_test: int = 10000
    image_shape: tuple[int, int, int] = (3, 32, 32)


CIFAR10 = CifarDataset(name="CIFAR-10", folder="cifar10", archive="cifar-10-python.tar.gz",
                       md5="c58f30108f718f92721af3b95e74349a", mirrors=CIFAR10_MIRRORS,
                       classes=CIFAR10_CLASSES)


# -- safe unpickling -----------------------------------------------------------------------

class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global that a CIFAR batch never contains (refused, nothing ran)."""


class UnsafeArchiveError(DatasetFormatError):
    """An archive member would leave the target folder, or is a link or a device."""


def _numpy_reconstruct():
    # The function NumPy pickles arrays with (numpy.core.multiarray._reconstruct in NumPy 1,
    # numpy._core.multiarray._reconstruct in NumPy 2), found without touching private modules.
    return np.empty(0).__reduce__()[0]


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, bytes, numbers and NumPy arrays.

    ``find_class`` is the single place where a pickle can reach Python code (a ``GLOBAL``
    opcode names a module attribute that ``REDUCE`` then calls). Here it resolves exactly the
    names that a pickled ``ndarray`` uses, under both NumPy 1 and NumPy 2 module paths, and
    raises ``UnsafePickleError`` for anything else (``os.system``, ``builtins.eval``, ...).
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def __init__(self, file: IO[bytes], source: str = "<pickle>"):
        # latin1 decodes Python-2 str (the original batches) the way NumPy expects for arrays.
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        factory = self.ALLOWED.get((module, name))
        if factory is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load the global {module}.{name}. A CIFAR-10 batch "
                f"only contains NumPy arrays, lists and strings; this file is not an official "
                f"batch and may try to run code. Delete it and download the dataset again.")
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: persistent ids are not allowed")


def safe_load_pickle(file: IO[bytes], source: str = "<pickle>") -> Any:
    """``pickle.load`` restricted to plain data and NumPy arrays (see ``SafeUnpickler``)."""
    return SafeUnpickler(file, source).load()


# -- archive members -----------------------------------------------------------------------

def check_tar_member(member: tarfile.TarInfo, archive: str | os.PathLike) -> None:
    """Reject a member that an extraction would write outside its folder, or not as a file.

    Raises ``UnsafeArchiveError`` for absolute paths, ``..`` components, symbolic and hard
    links, and device or FIFO entries.
    """
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} would be written outside "
                                 f"the target folder; refusing the archive")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive}: member {member.name!r} is a link or special file; "
                                 f"refusing the archive")


# -- parsing -------------------------------------------------------------------------------

def _read_batch(file: IO[bytes], source: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (data (n, 3072) uint8, labels (n,) int64), structure-checked."""
    try:
        batch = safe_load_pickle(file, source)
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or garbage pickles raise many different types
        raise DatasetFormatError(f"{source}: not a readable CIFAR-10 batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{source}: expected a pickled dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DatasetFormatError(f"{source}: missing the 'data' or 'labels' entry "
                                 f"(keys: {sorted(batch)})")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(f"{source}: 'data' must be a uint8 array of shape (n, 3072), "
                                 f"got {getattr(data, 'dtype', type(data).__name__)} "
                                 f"{getattr(data, 'shape', '')}")
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{source}: 'labels' must hold {len(data)} integers, got "
                                 f"{labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(f"{source}: labels out of range 0..9")
    return data, labels.astype(np.int64)


def _parse_folder(spec: CifarDataset, folder: Path) -> dict[str, np.ndarray]:
    return _parse_batches(spec, str(folder), (
        (name, lambda p=folder / name: open(p, "rb")) for name in (*_TRAIN_BATCHES, _TEST_BATCH)))


def _parse_archive(spec: CifarDataset, archive: Path) -> dict[str, np.ndarray]:
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetFormatError(f"{archive}: not a readable .tar.gz archive ({exc}); delete it "
                                 f"and download it again") from exc
    wanted = {f"{_FOLDER_IN_ARCHIVE}/{n}": n for n in (*_TRAIN_BATCHES, _TEST_BATCH)}

    def members():
        # One pass over the gzip stream: each member is checked before anything is read.
        for member in tar:
            check_tar_member(member, archive)
            name = wanted.get(member.name.removeprefix("./"))
            if name is not None and member.isfile():
                yield name, lambda m=member: tar.extractfile(m)

    try:
        with tar:
            return _parse_batches(spec, str(archive), members())
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DatasetFormatError(f"{archive}: damaged archive ({exc}); delete it and download "
                                 f"it again") from exc


def _parse_batches(spec: CifarDataset, source: str, opened) -> dict[str, np.ndarray]:
    """Fill the output arrays batch by batch, so peak memory stays near one dataset copy."""
    per_batch = spec.n_train // len(_TRAIN_BATCHES)
    x_train = np.empty((spec.n_train, 3 * 32 * 32), np.uint8)
    y_train = np.empty(spec.n_train, np.int64)
    x_test = y_test = None
    seen = set()
    for name, open_member in opened:
        with open_member() as f:
            data, labels = _read_batch(f, f"{source}/{name}")
        expected = spec.n_test if name == _TEST_BATCH else per_batch
        if len(data) != expected:
            raise DatasetFormatError(f"{source}/{name}: {len(data)} images, expected {expected}")
        if name == _TEST_BATCH:
            x_test, y_test = data, labels
        else:
            i = _TRAIN_BATCHES.index(name) * per_batch
            x_train[i:i + per_batch], y_train[i:i + per_batch] = data, labels
        seen.add(name)
    missing = [b for b in (*_TRAIN_BATCHES, _TEST_BATCH) if b not in seen]
    if missing:
        raise DatasetFormatError(f"{source}: missing {', '.join(missing)}")
    return {"x_train": x_train.reshape(-1, *spec.image_shape), "y_train": y_train,
            "x_test": x_test.reshape(-1, *spec.image_shape), "y_test": y_test}


# -- the loader ----------------------------------------------------------------------------

def load_cifar10(root: str | os.PathLike | None = None, download: bool = True,
                 quiet: bool = False, mirrors: Sequence[str] | None = None) -> Splits:
    """CIFAR-10: ``(x_train, y_train), (x_test, y_test)``.

    Parameters
    ----------
    root : path, optional
        The data folder (default ``$MINICNN_DATA``, else ``~/.cache/minicnn``). In
        ``root/cifar10/`` the loader uses, in this order, the extracted folder
        ``cifar-10-batches-py/`` or the archive ``cifar-10-python.tar.gz``, as placed there by
        hand; otherwise it downloads the archive (MD5-checked, atomic).
    download : bool
        Download the archive when neither is present.
    quiet : bool
        No progress bar.
    mirrors : sequence of str, optional
        Base URLs to download from instead of ``CIFAR10_MIRRORS``.

    Returns
    -------
    Splits
        ``x_train`` uint8 (50000, 3, 32, 32), ``y_train`` int64 (50000,), ``x_test`` uint8
        (10000, 3, 32, 32), ``y_test`` int64 (10000,); ``.classes`` is ``CIFAR10_CLASSES``.
        Cached as ``.npz`` like the other datasets.

    Raises
    ------
    UnsafePickleError, UnsafeArchiveError
        For a file that tries to run code or an archive member that leaves its folder.
    DatasetFormatError
        For any other structural problem (counts, shapes, dtypes), naming the file.

    Notes
    -----
    A hand-placed archive whose MD5 is not the official one (e.g. a copy rebuilt from images)
    is used after its structure is checked, with a ``ChecksumWarning``.
    """
    spec = CIFAR10 if mirrors is None else dataclasses.replace(CIFAR10, mirrors=tuple(mirrors))

    def batch_files(folder: Path) -> list[Path]:
        extracted = folder / _FOLDER_IN_ARCHIVE
        return [extracted / n for n in (*_TRAIN_BATCHES, _TEST_BATCH)]

    def find(folder: Path):
        files = batch_files(folder)
        if all(p.is_file() for p in files):
            return files
        archive = folder / spec.archive
        return [archive] if archive.is_file() else None

    def fetch(folder: Path):
        files = find(folder)
        if files is not None and files[0].name != spec.archive:
            return files  # the extracted folder: no published MD5; its structure is checked
        try:
            return [ensure_file(folder, spec.archive, spec.md5, spec.mirrors, download, quiet)]
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(f"{exc}\n(or place the extracted folder at "
                                       f"{folder / _FOLDER_IN_ARCHIVE}/)") from None

    def parse(paths: list[Path]):
        if paths[0].name == spec.archive:
            return _parse_archive(spec, paths[0])
        return _parse_folder(spec, paths[0].parent)

    return load_with_cache(spec.name, spec.folder, root, find, fetch, parse, spec.classes)
