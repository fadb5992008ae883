"""``minicnn._io.atomic_write``, the one way minicnn writes a user's file, and the files of
a real run: whole or not at all, no temporary file left behind, the mode the umask gives."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from minicnn import _io, cli, plot
from minicnn.data import download
from tests import data_fixtures as fx


@contextlib.contextmanager
def umask(mask: int):
    """Run the block under ``mask``; the process's umask is restored afterwards."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden temporary files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- atomic_write ------------------------------------------------------------------------------

def test_writes_binary_and_text_and_creates_the_folder(tmp_path):
    target = tmp_path / "new" / "folder" / "x.bin"
    _io.atomic_write(target, lambda f: f.write(b"\x00\x01"))
    assert target.read_bytes() == b"\x00\x01"
    _io.atomic_write(str(target), lambda f: f.write("κ = 1\n"), binary=False)
    assert target.read_bytes() == "κ = 1\n".encode()   # UTF-8, replaced in place
    assert files_in(tmp_path) == ["new/folder/x.bin"]


def test_the_temporary_file_is_hidden_beside_the_target(tmp_path):
    seen = []
    _io.atomic_write(tmp_path / "model.npz", lambda f: seen.append(files_in(tmp_path)))
    (temp,) = seen[0]
    assert temp.startswith(".tmp-model.npz.") and temp.endswith(".part")
    assert files_in(tmp_path) == ["model.npz"]


@pytest.mark.parametrize("error", [ValueError("broken writer"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "history.json"
    target.write_text("old")

    def write(f):
        f.write(b"half a fi")
        raise error

    with pytest.raises(type(error)):
        _io.atomic_write(target, write)
    assert target.read_text() == "old"
    assert files_in(tmp_path) == ["history.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        _io.atomic_write(tmp_path / "x.npz", lambda f: 1 / 0)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_mode_is_what_the_umask_gives_a_new_file(tmp_path, mask, expected):
    with umask(mask):
        _io.atomic_write(tmp_path / "new.npz", lambda f: f.write(b"x"))
        (tmp_path / "old.npz").write_bytes(b"")
        os.chmod(tmp_path / "old.npz", 0o600)       # replacing a file gives the usual mode too
        _io.atomic_write(tmp_path / "old.npz", lambda f: f.write(b"x"))
        with open(tmp_path / "plain", "w"):        # what open() gives: the reference
            pass
    assert mode(tmp_path / "new.npz") == mode(tmp_path / "old.npz") == expected
    assert mode(tmp_path / "plain") == expected


def test_current_umask_reads_without_changing_it(monkeypatch):
    with umask(0o027):
        assert _io.current_umask() == 0o027
        assert _io.new_file_mode() == 0o640

        def no_proc(*args, **kwargs):
            raise FileNotFoundError("/proc/self/status")

        monkeypatch.setattr(_io, "open", no_proc, raising=False)   # not Linux: os.umask twice
        assert _io.current_umask() == 0o027
        assert os.umask(0o027) == 0o027                              # and it was set back


# -- the writers ---------------------------------------------------------------------------------

def test_dataset_downloads_and_the_cache_get_the_umask_mode(tmp_path):
    body = b"some dataset bytes"
    with umask(0o022), fx.local_server() as (server, url):
        server.routes["/d/file.gz"] = ("ok", body)
        path = download.download_file("file.gz", [f"{url}/d/"], tmp_path, fx.md5(body),
                                      quiet=True)
        assert download.save_cache(tmp_path / "c.npz", {"x": np.zeros(2)}, "sig")
    assert path.read_bytes() == body
    assert mode(path) == mode(tmp_path / "c.npz") == 0o644
    assert files_in(tmp_path) == ["c.npz", "file.gz"]


def test_a_wrong_checksum_publishes_nothing(tmp_path):
    with fx.local_server() as (server, url):
        server.routes["/d/file.gz"] = ("ok", b"not the file")
        with pytest.raises(download.DownloadError, match="MD5 mismatch"):
            download.download_file("file.gz", [f"{url}/d/"], tmp_path, "0" * 32, quiet=True)
    assert files_in(tmp_path) == []


def test_every_file_of_a_training_run_is_0644_under_umask_022(tmp_path, capsys):
    """The main job's files: model.npz, history.json, last.npz and (with matplotlib) the
    two PNGs, all readable by others as any new file is, and no temporary file left."""
    out = tmp_path / "run"
    plots = [] if plot.matplotlib_available() else ["--no-plots"]
    with umask(0o022):
        assert cli.main(["train", "--dataset", "mnist", "--smoke", "--backend", "numpy",
                         "--epochs", "1", "--out", str(out), "--no-progress", "-q",
                         "--checkpoint-every", *plots]) == 0
    expected = ["history.json", "last.npz", "model.npz"]
    if not plots:
        expected += ["confusion.png", "curves.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)   # no scratch folder
    assert {name: oct(mode(out / name)) for name in expected} == \
        {name: oct(0o644) for name in expected}
    if plots:
        pytest.skip("matplotlib is not installed: the PNGs were not checked")
