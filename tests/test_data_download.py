"""The real download path, against a local HTTP server on 127.0.0.1 (no network needed).

After every failure: no partial or temporary file remains, and the error names the file, the
URLs tried and where to place the file by hand.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from minicnn.data import (
    DatasetNotFoundError,
    DownloadError,
    cifar,
    download,
    load_cifar10,
    load_mnist,
    mnist,
)
from tests import data_fixtures as fx

pytestmark = pytest.mark.usefixtures("isolated_data_dirs")


@pytest.fixture
def tiny(monkeypatch):
    """Tiny MNIST files, and the MNIST spec shrunk to match them."""
    arrays, files = fx.tiny_mnist()
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(files))
    return arrays, files


def serve(server, prefix: str, files: dict[str, bytes], behaviour: str = "ok") -> None:
    for name, body in files.items():
        server.routes[f"/{prefix}/{name}"] = (behaviour, body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_success_then_cached(tmp_path, tiny, monkeypatch):
    arrays, files = tiny
    with fx.local_server() as (server, url):
        serve(server, "good", files)
        (x, y), (xt, yt) = load_mnist(tmp_path / "data", mirrors=[f"{url}/good/"], quiet=True)
    np.testing.assert_array_equal(x[:, 0], arrays["x_train"])
    np.testing.assert_array_equal(yt, arrays["y_test"])
    assert x.dtype == np.uint8 and y.dtype == np.int64 and x.shape == (12, 1, 28, 28)
    # the four files, complete, and nothing else (no temporary .part files)
    assert fx.leftovers(tmp_path / "data") == sorted(f"mnist/{n}" for n in files)
    for name, body in files.items():
        assert (tmp_path / "data" / "mnist" / name).read_bytes() == body
    # second load: from the .npz cache, without parsing (and without a server)
    monkeypatch.setattr(mnist, "read_idx", lambda p: pytest.fail("cache not used"))
    (x2, _), _ = load_mnist(tmp_path / "data", download=False)
    np.testing.assert_array_equal(x2, x)


def test_falls_back_to_the_next_mirror(tmp_path, tiny):
    _, files = tiny
    with fx.local_server() as (server, url):
        serve(server, "broken", files, "error")
        serve(server, "good", files)
        load_mnist(tmp_path, mirrors=[f"{url}/broken/", f"{url}/good/"], quiet=True)
        name = "train-images-idx3-ubyte.gz"
        assert server.requested.index(f"/broken/{name}") < server.requested.index(f"/good/{name}")
    assert fx.leftovers(tmp_path / "mnist") == sorted(files)


def check_failure(exc: DownloadError, folder, name: str, urls: list[str], reason: str) -> None:
    text = str(exc)
    assert name in text
    for u in urls:
        assert u + name in text
    assert reason in text
    assert str(folder / name) in text and "by hand" in text
    assert fx.leftovers(folder.parent) == []  # nothing partial, no temporary file


@pytest.mark.parametrize("behaviour, reason", [
    ("corrupt", "MD5 mismatch"),
    ("truncate", "truncated"),  # Content-Length larger than the body, then the server closes
    ("error", "HTTP 500"),
    ("missing", "HTTP 404"),
])
def test_failed_download_leaves_nothing(tmp_path, tiny, behaviour, reason):
    _, files = tiny
    if behaviour == "corrupt":
        files = {k: v[:-1] + bytes([v[-1] ^ 1]) for k, v in files.items()}
        behaviour = "ok"
    with fx.local_server() as (server, url):
        if behaviour != "missing":
            serve(server, "m", files, behaviour)
        with pytest.raises(DownloadError) as info:
            load_mnist(tmp_path / "data", mirrors=[f"{url}/m/"], quiet=True)
    folder = tmp_path / "data" / "mnist"
    check_failure(info.value, folder, "train-images-idx3-ubyte.gz", [f"{url}/m/"], reason)


def test_all_mirrors_fail_lists_every_url(tmp_path, tiny):
    _, files = tiny
    dead = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    with fx.local_server() as (server, url):
        serve(server, "bad", files, "error")
        with pytest.raises(DownloadError) as info:
            load_mnist(tmp_path, mirrors=[dead, f"{url}/bad/"], quiet=True)
    check_failure(info.value, tmp_path / "mnist", "train-images-idx3-ubyte.gz",
                  [dead, f"{url}/bad/"], "cannot connect")
    assert "HTTP 500" in str(info.value)


def test_interrupted_download_removes_the_temporary_file(tmp_path, tiny, monkeypatch):
    _, files = tiny

    class Interrupt:
        def update(self, n):
            raise KeyboardInterrupt  # Ctrl-C in the middle of the transfer

        def close(self):
            pass

    monkeypatch.setattr(download, "_progress_bar", lambda *a, **k: Interrupt())
    with fx.local_server() as (server, url):
        serve(server, "m", files)
        with pytest.raises(KeyboardInterrupt):
            load_mnist(tmp_path, mirrors=[f"{url}/m/"], quiet=True)
    assert fx.leftovers(tmp_path) == []


def test_no_download_names_file_place_and_urls(tmp_path, tiny):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path, download=False)
    text = str(info.value)
    name = "train-images-idx3-ubyte.gz"
    assert str(tmp_path / "mnist" / name) in text
    assert f"http://127.0.0.1:9/{name}" in text
    assert isinstance(info.value, FileNotFoundError)


def test_data_folder_from_environment(tmp_path, tiny, monkeypatch):
    _, files = tiny
    fx.write_folder(tmp_path / "env" / "mnist", files)
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "env"))
    (x, _), _ = load_mnist(download=False)
    assert x.shape == (12, 1, 28, 28)


def test_default_folder_is_home_cache(tmp_path, tiny):
    with pytest.raises(DatasetNotFoundError, match=r"home/\.cache/minicnn/mnist"):
        load_mnist(download=False)


def test_cifar10_download_and_parse(tmp_path, monkeypatch):
    batches, pickles = fx.tiny_cifar()
    archive = fx.cifar_tar(pickles)
    with fx.local_server() as (server, url):
        server.routes["/c/cifar-10-python.tar.gz"] = ("ok", archive)
        monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(archive))
        (x, y), (xt, yt) = load_cifar10(tmp_path, mirrors=[f"{url}/c/"], quiet=True)
    assert x.shape == (20, 3, 32, 32) and xt.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(x[4:8].reshape(4, -1), batches["data_batch_2"][0])
    np.testing.assert_array_equal(yt, batches["test_batch"][1])
    assert fx.leftovers(tmp_path / "cifar10") == ["cifar-10-python.tar.gz"]


def test_cifar10_corrupt_download_leaves_nothing(tmp_path, monkeypatch):
    _, pickles = fx.tiny_cifar()
    archive = fx.cifar_tar(pickles)
    with fx.local_server() as (server, url):
        server.routes["/c/cifar-10-python.tar.gz"] = ("truncate", archive[: len(archive) // 2])
        monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(archive))
        with pytest.raises(DownloadError) as info:
            load_cifar10(tmp_path, mirrors=[f"{url}/c/"], quiet=True)
    check_failure(info.value, tmp_path / "cifar10", "cifar-10-python.tar.gz", [f"{url}/c/"],
                  "truncated")
