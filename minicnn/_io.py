"""Writing a user's file: whole or not at all, with the mode the user's umask gives.

Every file minicnn writes for a user goes through ``atomic_write``: checkpoints
(``model.npz``, ``last.npz``), ``history.json``, the plots (``curves.png``,
``confusion.png``, the ladder's pictures), the ladder's ``ladder.json`` / ``ladder.md``,
downloaded dataset files and the parsed-array cache. Two promises, in one place:

1. **Atomic.** The bytes go to a temporary file in the target's folder, named
   ``.tmp-<name>.<random>.part`` (hidden, and never mistaken for the real thing), are
   flushed and fsynced, and the temporary file is renamed over the target (``os.replace``,
   atomic within one file system). A reader sees the old file or the new one, never half a
   file; a write that fails (an exception in ``write``, a full disk, Ctrl-C) removes the
   temporary file and leaves an earlier file at the target as it was. Only a process killed
   outright (SIGKILL) can leave a ``.tmp-*.part`` file behind.
2. **The usual mode.** ``tempfile.mkstemp`` creates files readable by their owner only
   (0600), a safe default for a temporary file but a surprise for a result: on a shared
   machine nobody else could read a checkpoint. The file gets the mode ``open()`` would
   give a new file, ``0o666 & ~umask`` (0644 under the usual umask 022, 0600 under 077).

This module sits at the bottom of the package beside ``backend``: it imports nothing from
minicnn, and everything may import it (``data`` included).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

__all__ = ["atomic_write", "current_umask", "new_file_mode"]


def current_umask() -> int:
    """The process's umask (e.g. ``0o022``), read without changing it where possible.

    Linux (4.7 and later) reports it in ``/proc/self/status`` (a line ``Umask: 0022``).
    Elsewhere the only way to read it is to set it and set it back (``os.umask``), which is
    not thread-safe: for that instant it is 0o077 for the whole process, so a file another
    thread creates right then is more private than intended, never less.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], Any], *,
                 binary: bool = True) -> None:
    """Write the file ``path`` through ``write(f)``, atomically, with the usual mode.

    Parameters
    ----------
    path : str or PathLike
        The file to (re)place. Its folder is created when missing.
    write : callable
        Called once with the open temporary file; writes the whole content (for example
        ``lambda f: np.savez(f, **arrays)`` or ``lambda f: f.write(text)``). Whatever it
        raises propagates, after the temporary file was removed.
    binary : bool
        The file object ``write`` gets: binary (``"wb"``) or UTF-8 text (``"w"``).

    Notes
    -----
    The temporary file ``.tmp-<name>.<random>.part`` lives in the same folder, so the final
    ``os.replace`` is a rename within one file system: atomic. Its mode is set to
    ``new_file_mode()`` before anything is written; a file replaced keeps nothing of the
    old one (neither its content nor its mode).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{os.path.basename(path)}.",
                               suffix=".part")
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), new_file_mode())  # mkstemp made it 0600
            else:  # Windows: only the read-only bit exists
                os.chmod(tmp, new_file_mode())
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the new name points at it
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C too: never leave a temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
