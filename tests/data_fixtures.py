"""Helpers for the data tests: tiny files in the official formats and a local HTTP server.

Nothing here touches the network: the server listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np

from minicnn.data import cifar, mnist

IDX_NAMES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
           "test_batch")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_bytes(a: np.ndarray, gz: bool = True) -> bytes:
    """Encode a uint8 array as an IDX file: 0, 0, 0x08, ndim, big-endian dims, data."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()
    return gzip.compress(raw) if gz else raw


def tiny_mnist(n_train: int = 12, n_test: int = 5, seed: int = 0):
    """Arrays of a tiny MNIST-like dataset and its four .gz files as bytes, by file name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    files = {IDX_NAMES[k]: idx_bytes(v) for k, v in arrays.items()}
    return arrays, files


def tiny_mnist_spec(files: dict[str, bytes], n_train: int = 12, n_test: int = 5,
                    mirrors=("http://127.0.0.1:9/",)) -> mnist.IdxDataset:
    """The MNIST spec shrunk to the tiny counts, with the tiny files' MD5s as 'official'."""
    return dataclasses.replace(
        mnist.MNIST, n_train=n_train, n_test=n_test, mirrors=tuple(mirrors),
        files={role: (name, md5(files[name])) for role, name in IDX_NAMES.items()})


def py2_pickle(obj) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) and NumPy 1 wrote CIFAR-10.

    Python 3's own protocol-2 pickles encode bytes through ``_codecs.encode``, which the
    official files never use (and the safe unpickler refuses); this writes Python 2 strings
    (``SHORT_BINSTRING``/``BINSTRING``) and arrays via ``numpy.core.multiarray._reconstruct``.
    Handles dicts, lists, bytes, ints, bools, None, tuples and uint8 arrays.
    """
    out = [b"\x80\x02"]  # PROTO 2

    def put(v):
        if v is None:
            out.append(b"N")
        elif isinstance(v, bool):
            out.append(b"\x88" if v else b"\x89")
        elif isinstance(v, int):
            out.append(b"J" + struct.pack("<i", v))  # BININT
        elif isinstance(v, bytes):
            out.append(b"U" + bytes([len(v)]) + v if len(v) < 256
                       else b"T" + struct.pack("<I", len(v)) + v)
        elif isinstance(v, tuple):
            out.append(b"(")  # MARK
            for item in v:
                put(item)
            out.append(b"t")  # TUPLE
        elif isinstance(v, list):
            out.append(b"](")  # EMPTY_LIST, MARK
            for item in v:
                put(item)
            out.append(b"e")  # APPENDS
        elif isinstance(v, dict):
            out.append(b"}(")  # EMPTY_DICT, MARK
            for key, item in v.items():
                put(key)
                put(item)
            out.append(b"u")  # SETITEMS
        elif isinstance(v, np.ndarray):
            out.append(b"cnumpy.core.multiarray\n_reconstruct\n")  # GLOBAL
            out.append(b"cnumpy\nndarray\n")
            put((0,))
            put(b"b")
            out.append(b"\x87R")  # TUPLE3, REDUCE: _reconstruct(ndarray, (0,), 'b')
            out.append(b"(")
            put(1)
            put(tuple(int(d) for d in v.shape))
            out.append(b"cnumpy\ndtype\n")
            put((b"u1", False, True))
            out.append(b"R")
            put((3, b"|", None, None, None, -1, -1, 0))
            out.append(b"b")  # BUILD: the dtype's state
            put(False)
            put(np.ascontiguousarray(v, dtype=np.uint8).tobytes())
            out.append(b"tb")  # TUPLE, BUILD: the array's state
        else:
            raise TypeError(type(v))

    put(obj)
    return b"".join(out) + b"."


def batch_pickle(data: np.ndarray, labels, name: str = "batch") -> bytes:
    """A batch pickled like the official ones: Python-2 protocol 2, byte-string keys."""
    return py2_pickle({b"batch_label": name.encode(), b"labels": list(map(int, labels)),
                       b"data": data, b"filenames": [b"x.png"] * len(labels)})


def tiny_cifar(per_batch: int = 4, n_test: int = 3, seed: int = 0):
    """Arrays (rows of 3072 values) and pickled batches of a tiny CIFAR-10, by batch name."""
    rng = np.random.default_rng(seed)
    counts = [per_batch] * 5 + [n_test]
    batches, pickles = {}, {}
    for name, n in zip(BATCHES, counts, strict=True):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        batches[name] = (data, labels)
        pickles[name] = batch_pickle(data, labels, name)
    pickles["batches.meta"] = py2_pickle(
        {b"label_names": [c.encode() for c in cifar.CIFAR10_CLASSES]})
    return batches, pickles


def tar_bytes(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    """A .tar.gz holding ``members`` (name -> content) plus raw TarInfo entries ``extra``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def cifar_tar(pickles: dict[str, bytes], extra=None) -> bytes:
    return tar_bytes({f"cifar-10-batches-py/{k}": v for k, v in pickles.items()}, extra)


def tiny_cifar_spec(archive: bytes | None, per_batch: int = 4, n_test: int = 3,
                    mirrors=("http://127.0.0.1:9/",)) -> cifar.CifarDataset:
    return dataclasses.replace(cifar.CIFAR10, n_train=5 * per_batch, n_test=n_test,
                               md5=md5(archive) if archive else cifar.CIFAR10.md5,
                               mirrors=tuple(mirrors))


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)


def leftovers(folder: Path) -> list[str]:
    """Every file under ``folder`` (temporary ``.part`` files included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- a local HTTP server -------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (behaviour, body)``; records every requested path.

    behaviours: "ok" (200 with the body), "truncate" (announces more bytes than it sends,
    then closes), "error" (HTTP 500); unknown paths get 404.
    """

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requested.append(self.path)
        behaviour, body = self.server.routes.get(self.path, ("missing", b""))
        if behaviour == "ok":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif behaviour == "truncate":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True
        elif behaviour == "error":
            self.send_error(500, "Internal Server Error")
        else:
            self.send_error(404, "Not Found")

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def local_server():
    """Yield (server, base_url); routes are set on ``server.routes``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = {}
    server.requested = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
