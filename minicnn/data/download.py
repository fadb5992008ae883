"""Where dataset files live, how they are downloaded, and the parsed-array cache.

Folders
-------
The *data folder* is the ``root`` argument of a loader, else ``$MINICNN_DATA``, else
``~/.cache/minicnn``. Each dataset has its own subfolder (``mnist/``, ``fashion-mnist/``,
``cifar10/``) holding the official files, downloaded or placed there by hand.

The parsed uint8 arrays are cached as an ``.npz`` file (``allow_pickle=False``) so the next
load skips decompression and parsing. The cache goes to

1. ``$MINICNN_CACHE/<dataset>/`` when that variable is set;
2. else the dataset folder itself, when it is writable;
3. else ``~/.cache/minicnn/<dataset>/`` (e.g. for a read-only shared copy of the data).

A folder with no write permission bit is treated as read-only even for root, so a shared
dataset folder is never written into.

Downloads
---------
``download_file`` tries each mirror in turn. The file is streamed into a temporary file in the
target folder while its MD5 is computed, and renamed to its final name only when it is
complete and the checksum matches; on any failure (HTTP error, truncated transfer, wrong
checksum, Ctrl-C) the temporary file is deleted, so nothing partial is ever left behind.
Downloads and the cache are written by ``minicnn._io.atomic_write``, like every file minicnn
writes: a new file gets the mode the umask gives (0644 under the usual 022).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import stat
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "DownloadError",
    "ChecksumWarning",
    "data_root",
    "dataset_dir",
    "cache_file",
    "md5sum",
    "check_md5",
    "download_file",
    "save_cache",
    "load_cache",
]

USER_AGENT = "minicnn (+https://github.com/minicnn)"
CHUNK = 1 << 20  # 1 MiB per read: large enough to be fast, small enough for a smooth bar
TIMEOUT_S = 30.0  # per socket operation, not for the whole file
CACHE_VERSION = "minicnn-data-cache-v1"


class DatasetError(RuntimeError):
    """Base class of the dataset errors (their messages say what to do)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file is missing and downloading is disabled or impossible."""


class DatasetFormatError(DatasetError, ValueError):
    """A dataset file exists but is not in the expected format (names the file)."""


class DownloadError(DatasetError):
    """Every mirror failed for a file; nothing partial was left on disk."""


class ChecksumWarning(UserWarning):
    """A file placed by hand has an MD5 other than the official one (it is still used)."""


# -- folders -------------------------------------------------------------------------------

def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root``, else ``$MINICNN_DATA``, else ``~/.cache/minicnn``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MINICNN_DATA")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/minicnn").expanduser()


def dataset_dir(folder: str, root: str | os.PathLike | None = None) -> Path:
    """The subfolder of one dataset, e.g. ``dataset_dir("mnist")``."""
    return data_root(root) / folder


def is_writable(folder: Path) -> bool:
    """True when we may create files in ``folder``.

    Besides ``os.access`` (which is always true for root), the folder must carry at least one
    write permission bit: a folder marked read-only is respected even when running as root.
    """
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    has_w_bit = bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return has_w_bit and os.access(folder, os.W_OK)


def cache_file(folder: Path, name: str) -> Path:
    """Where the ``.npz`` cache of the dataset in ``folder`` lives (see the module docstring).

    Outside the dataset folder, the file name carries a hash of the dataset folder's path, so
    two data folders never share (or overwrite) a cache.
    """
    env = os.environ.get("MINICNN_CACHE")
    if not env and is_writable(folder):
        return folder / f"{name}.npz"
    base = Path(env).expanduser() if env else Path("~/.cache/minicnn").expanduser()
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
    return base / name / f"{name}-{key}.npz"


# -- checksums -----------------------------------------------------------------------------

def md5sum(path: str | os.PathLike) -> str:
    """The MD5 of a file, read in chunks (hex digest)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path, expected: str | None) -> bool:
    """Compare a hand-placed file with its official MD5; warn (do not fail) when it differs.

    A rebuilt copy (e.g. CIFAR-10 rebuilt from images) is legitimate: its structure is checked
    by the parser instead. Returns True when the checksum matches.
    """
    if not expected:
        return True
    actual = md5sum(path)
    if actual == expected:
        return True
    warnings.warn(
        f"{path}: MD5 {actual} differs from the official {expected}. Using it anyway since "
        f"its structure will be checked; delete it to download the official file.",
        ChecksumWarning, stacklevel=3)
    return False


# -- downloading ---------------------------------------------------------------------------

def _progress_bar(total: int | None, desc: str, quiet: bool):
    """A tqdm bar on stderr, off when ``quiet``, when stderr is not a terminal, or no tqdm."""
    disable = quiet or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    try:
        from tqdm import tqdm  # noqa: PLC0415 (only needed while downloading)
    except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
        disable = True
    if disable:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, file=sys.stderr)


class _NoBar:
    """Stand-in for a disabled tqdm bar."""

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _fetch(url: str, tmp, desc: str, quiet: bool) -> str:
    """Stream ``url`` into the open file ``tmp``; return the MD5 of what was received.

    Raises OSError (HTTPError, URLError, timeouts, resets) or IOError for a short transfer.
    """
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    h = hashlib.md5()
    received = 0
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        bar = _progress_bar(expected, desc, quiet)
        try:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                tmp.write(block)
                h.update(block)
                received += len(block)
                bar.update(len(block))
        finally:
            bar.close()
    if expected is not None and received != expected:
        raise OSError(f"truncated transfer: received {received} of {expected} bytes")
    return h.hexdigest()


def download_file(filename: str, mirrors: Sequence[str], folder: Path, md5: str | None,
                  quiet: bool = False) -> Path:
    """Download ``filename`` into ``folder`` from the first mirror that serves it intact.

    Parameters
    ----------
    filename : str
        The file's name, appended to each mirror's base URL.
    mirrors : sequence of str
        Base URLs ending with ``/``, tried in order.
    folder : Path
        The dataset folder; created if missing.
    md5 : str or None
        The published MD5; a download with another checksum is rejected.
    quiet : bool
        No progress bar.

    Returns
    -------
    Path of the complete file, ``folder / filename``.

    Raises
    ------
    DownloadError
        When every mirror failed. The message names the file, each URL tried with its error,
        and where to place the file by hand. No partial file is left behind.
    """
    target = folder / filename
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot create the folder {folder} to download {filename} into "
                            f"({exc}). " + _by_hand(filename, mirrors, target)) from exc
    if not is_writable(folder):
        raise DownloadError(f"Cannot download {filename}: the folder {folder} is read-only. "
                            + _by_hand(filename, mirrors, target))
    failures = []
    for base in mirrors:
        url = base + filename
        try:
            _download(url, target, md5, quiet)
            return target
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # HTTPError/URLError/timeouts/resets are OSErrors; HTTPException covers a broken
            # response (IncompleteRead, BadStatusLine); ValueError a malformed URL.
            failures.append(f"  {url}: {_describe(exc)}")
    raise DownloadError(
        f"Could not download {filename}. URLs tried:\n" + "\n".join(failures) + "\n"
        + _by_hand(filename, mirrors, target))


def _download(url: str, target: Path, md5: str | None, quiet: bool) -> None:
    """Stream ``url`` into ``target``, atomically: the file appears only complete and with
    the MD5 ``md5`` (when given); otherwise the temporary ``.tmp-<name>.*.part`` file is
    removed and the error (an ``OSError`` for a wrong checksum) propagates."""

    def fetch_checked(tmp: Any) -> None:
        digest = _fetch(url, tmp, desc=target.name, quiet=quiet)
        if md5 and digest != md5:  # raised inside the write: the file is never published
            raise OSError(f"MD5 mismatch: got {digest}, expected {md5}")

    atomic_write(target, fetch_checked)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"


def _by_hand(filename: str, mirrors: Sequence[str], target: Path) -> str:
    urls = " or ".join(base + filename for base in mirrors) or filename
    return (f"To install it by hand, download {urls} on a machine with network access and "
            f"place it at {target}")


def not_found_message(filename: str, mirrors: Sequence[str], target: Path) -> str:
    """Text for a missing file when downloading is off: what, where, and from where."""
    urls = "\n".join(f"  {base}{filename}" for base in mirrors)
    return (f"{filename} not found at {target} (download=False). Pass download=True, or "
            f"download it by hand from one of:\n{urls}\nand place it at {target}")


# -- the parsed-array cache ----------------------------------------------------------------

def source_signature(paths: Sequence[Path]) -> str:
    """Identify the source files by path, size and modification time (cheap, no hashing)."""
    parts = [CACHE_VERSION]
    for p in paths:
        st = p.stat()
        parts.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def save_cache(path: Path, arrays: dict[str, np.ndarray], signature: str) -> bool:
    """Write ``arrays`` and ``signature`` to ``path`` atomically; False if it cannot be written.

    Uncompressed ``.npz``: reading it back is a plain copy, which is what makes the second
    load fast. A cache that cannot be written (a read-only folder, a full disk) only costs
    speed, so it warns instead of failing.
    """
    try:
        atomic_write(path, lambda f: np.savez(f, signature=np.array(signature), **arrays))
    except OSError as exc:
        warnings.warn(f"Cannot write the dataset cache {path} ({exc}); the next load will "
                      f"parse the files again. Set $MINICNN_CACHE to a writable folder.",
                      stacklevel=3)
        return False
    return True


def load_cache(path: Path, signature: str, keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays if ``path`` exists and was made from the same source files, else None.

    Loaded with ``allow_pickle=False``: a cache file can never run code.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "signature" not in npz.files or str(npz["signature"]) != signature:
                return None
            if not all(k in npz.files for k in keys):
                return None
            return {k: npz[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None  # unreadable or stale cache: parse the sources again
