"""What every dataset loader shares: the return type and the find-or-download-then-cache flow.

A loader describes its files (names, MD5s, mirrors) and supplies a ``parse`` function; this
module finds each file (or downloads it), checks hand-placed files' checksums (a warning), and
serves the parsed arrays from the ``.npz`` cache when the files have not changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .download import (
    DatasetNotFoundError,
    cache_file,
    check_md5,
    dataset_dir,
    download_file,
    load_cache,
    not_found_message,
    save_cache,
    source_signature,
)

__all__ = ["Splits", "ensure_file", "load_with_cache"]

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


class Splits(tuple):
    """``((x_train, y_train), (x_test, y_test))``, plus the dataset's class names.

    A plain 2-tuple, so ``(x_train, y_train), (x_test, y_test) = load_mnist()`` works, with
    the attributes ``train``, ``test``, ``classes`` (tuple of str) and ``name``.
    """

    def __new__(cls, train: tuple, test: tuple, classes: Sequence[str], name: str) -> Splits:
        self = super().__new__(cls, (tuple(train), tuple(test)))
        self.classes = tuple(classes)
        self.name = name
        return self

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        return self[0]

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        return self[1]

    def __repr__(self) -> str:
        (x, y), (xt, yt) = self
        return (f"Splits({self.name}: train x{tuple(x.shape)} {x.dtype}, y{tuple(y.shape)}; "
                f"test x{tuple(xt.shape)}, y{tuple(yt.shape)}; {len(self.classes)} classes)")


def ensure_file(folder: Path, filename: str, md5: str | None, mirrors: Sequence[str],
                download: bool, quiet: bool) -> Path:
    """Return the path of ``folder / filename``, downloading it if missing and allowed.

    A file already there (placed by hand, or an earlier download) is used as it is; its MD5 is
    compared with the official one, and a difference only warns.
    """
    path = folder / filename
    if path.is_file():
        check_md5(path, md5)
        return path
    if not download:
        raise DatasetNotFoundError(not_found_message(filename, mirrors, path))
    return download_file(filename, mirrors, folder, md5, quiet=quiet)


def load_with_cache(name: str, folder_name: str, root: str | os.PathLike | None,
                    find_sources: Callable[[Path], list[Path] | None],
                    fetch_sources: Callable[[Path], list[Path]],
                    parse: Callable[[list[Path]], dict[str, np.ndarray]],
                    classes: Sequence[str]) -> Splits:
    """The flow shared by the loaders.

    ``find_sources(folder)`` returns the source files already present (or None when some are
    missing); ``fetch_sources(folder)`` finds-or-downloads them (checking checksums);
    ``parse(paths)`` turns them into the four uint8/int64 arrays.
    """
    folder = dataset_dir(folder_name, root)
    sources = find_sources(folder)
    if sources is not None:
        cache = cache_file(folder, folder_name)
        arrays = load_cache(cache, source_signature(sources), ARRAY_KEYS)
        if arrays is not None:
            return _splits(arrays, classes, name)
    sources = fetch_sources(folder)
    arrays = parse(sources)
    save_cache(cache_file(folder, folder_name), arrays, source_signature(sources))
    return _splits(arrays, classes, name)


def _splits(a: dict[str, np.ndarray], classes: Sequence[str], name: str) -> Splits:
    return Splits((a["x_train"], a["y_train"]), (a["x_test"], a["y_test"]), classes, name)
