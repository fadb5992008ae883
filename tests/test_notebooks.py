"""The notebooks of notebooks/: committed clean, and they run from top to bottom.

Each notebook is executed in a fresh Jupyter kernel (nbclient) running this interpreter, with
``MPLBACKEND=Agg`` and the NumPy backend. After its last cell the test runs one more, hidden
cell in the same kernel that prints the notebook's results as JSON, and checks them: the
convolution and BatchNorm notebooks must reproduce the worked examples of their derivation
pages (the numbers are read from the pages' ``<!-- example: ... -->`` blocks, so the two
cannot drift apart), the vanishing-gradient notebook must show the sigmoid net's gradient
vanishing and the others' not, and the MNIST notebook must train to a real accuracy.

Data: no network and no real MNIST. The MNIST notebooks read ``$MINICNN_DATA/mnist/``; here
that is a temporary folder of official-format IDX files holding a tiny *learnable* stand-in
(2,000 training and 500 test images, each class a bright block at its own place), and a
hidden first cell shrinks the loader's expected counts to match, the way the data tests build
tiny variants of ``minicnn.data.MNIST`` with ``dataclasses.replace``. To run the notebooks on
the real digits instead, set ``MINICNN_NOTEBOOKS_DATA=DIR`` where ``DIR/mnist/`` holds the
four official files (then nothing is shrunk, and notebook 4 must pass 90 %).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.data_fixtures import IDX_NAMES, idx_bytes, md5

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DOCS = ROOT / "docs" / "derivations"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell: generous for slow CI machines (each runs in seconds)
N_TRAIN, N_TEST = 2000, 500  # the stand-in MNIST


def read(name: str):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


# -- committed clean -------------------------------------------------------------------------

def test_at_least_four_notebooks_each_listed_in_the_readme():
    assert len(NAMES) >= 4, NAMES
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"({name})" in readme, f"notebooks/README.md does not link {name}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"cell {cell.get('id')} was committed with its outputs"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("name", NAMES)
def test_relative_links_resolve(name):
    """Every relative link of a markdown cell names an existing file (and heading)."""
    links = [link for cell in read(name).cells if cell.cell_type == "markdown"
             for link in re.findall(r"\]\(([^)\s]+)\)", cell.source)
             if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("../docs/derivations/") for link in links), \
        "a notebook links at least one derivation page"
    for link in links:
        path, _, anchor = link.partition("#")
        target = (NOTEBOOKS / path).resolve()
        assert target.exists(), f"{name}: broken link {link}"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", target.read_text(encoding="utf-8"), re.M)
            assert anchor in {github_anchor(h) for h in headings}, \
                f"{name}: {link}: no heading with anchor #{anchor} in {path}"


# -- the pages' worked examples --------------------------------------------------------------

EXAMPLE_RE = re.compile(r"<!-- example: (\w+) -->\s*```text\n(.*?)```", re.S)


def page_example(page: str, example_id: str) -> dict[str, tuple[np.ndarray, float]]:
    """``name -> (value, tolerance)`` of an example block: half a unit of the last printed
    decimal (1e-6 for integers), as tests/test_derivations.py reads them."""
    blocks = dict(EXAMPLE_RE.findall((DOCS / page).read_text(encoding="utf-8")))
    entries: dict[str, str] = {}
    last = None
    for raw in blocks[example_id].splitlines():
        line = raw.split("#", 1)[0].rstrip()
        m = re.match(r"^([A-Za-z_]\w*) = (.*)$", line)
        if m:
            last = m.group(1)
            entries[last] = m.group(2)
        elif line.strip():
            entries[last] += " " + line.strip()
    out = {}
    for key, text in entries.items():
        decimals = max((len(d) for d in re.findall(r"\.(\d+)", text)), default=0)
        tol = 0.5 * 10.0 ** -decimals * (1 + 1e-6) if decimals else 1e-6
        out[key] = (np.asarray(ast.literal_eval(text), dtype=np.float64), tol)
    return out


def assert_page_value(got, page: dict, key: str, what: str = "") -> None:
    want, tol = page[key]
    got = np.asarray(got, dtype=np.float64).reshape(want.shape)
    assert np.all(np.abs(got - want) <= tol), f"{what or key}: notebook {got}, page {want}"


# -- running a notebook ------------------------------------------------------------------------

def stand_in_mnist(root: Path, seed: int = 0) -> dict[str, tuple[str, str]]:
    """Write a tiny learnable MNIST to ``root/mnist/``; return its ``files`` spec entry.

    Class k is a bright 8×7 block at cell (k // 4, k % 4) of a 3×4 grid, on dim noise: a
    small CNN learns it in a few dozen steps, so the notebooks' training is really tested.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 64, (n, 28, 28)).astype(np.uint8)
        for k in range(10):
            r, c = 9 * (k // 4), 7 * (k % 4)
            x[y == k, r:r + 8, c:c + 7] += 160
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for role, name in IDX_NAMES.items():
        content = idx_bytes(arrays[role])
        (folder / name).write_bytes(content)
        files[role] = (name, md5(content))
    return files


@pytest.fixture(scope="module")
def data_setup(tmp_path_factory):
    """(data root, hidden first cell or None, real data?) for the MNIST notebooks."""
    real = os.environ.get("MINICNN_NOTEBOOKS_DATA")
    if real:
        assert (Path(real) / "mnist").is_dir(), f"MINICNN_NOTEBOOKS_DATA={real}: no mnist/"
        return Path(real), None, True
    root = tmp_path_factory.mktemp("notebook-data")
    files = stand_in_mnist(root)
    setup = (
        "import dataclasses as _dc, minicnn.data.mnist as _mnist\n"
        f"_mnist.MNIST = _dc.replace(_mnist.MNIST, n_train={N_TRAIN}, n_test={N_TEST}, "
        f"files={files!r}, mirrors=('http://127.0.0.1:9/',))\n"
        "del _dc, _mnist")
    return root, setup, False


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory):
    """A 'python3' kernelspec that runs this very interpreter (found first via JUPYTER_PATH),
    so a user-level kernelspec of another Python can never be picked up."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (minicnn tests)", "language": "python"}))
    return root


def run_notebook(name: str, probe: str, data_setup, kernels_dir, tmp_path, monkeypatch):
    """Execute every cell of ``name`` (failing on the first error), then ``probe``, in one
    kernel (after the hidden data cell, if any); return (executed notebook, the JSON the
    probe printed, seconds)."""
    root, setup, _ = data_setup
    monkeypatch.setenv("JUPYTER_PATH", str(kernels_dir))
    env = dict(os.environ, MINICNN_DATA=str(root), MINICNN_CACHE=str(tmp_path / "cache"),
               MINICNN_BACKEND="numpy", MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        # One BLAS thread unless told otherwise: the notebooks' small matrix products gain
        # little from a second one, and on a busy machine (CI, shared cores) a second thread
        # that waits for a core made notebooks 3 and 4 several times slower.
        env.setdefault(var, "1")
    nb = read(name)
    probe_cell = nbformat.v4.new_code_cell(
        "import json as _json\nprint(_json.dumps(" + probe + ", default=lambda a: "
        "__import__('numpy').asarray(a).tolist()))")
    nb.cells = ([nbformat.v4.new_code_cell(setup)] if setup else []) + nb.cells + [probe_cell]
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError, naming the cell, on the first error
    seconds = time.perf_counter() - start
    cell = nb.cells[-1]
    printed = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    print(f"{name}: {seconds:.1f} s")
    return nb, json.loads(printed.strip().splitlines()[-1]), seconds


def printed_text(nb) -> str:
    """Everything the notebook's cells printed to stdout."""
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream" and o.name == "stdout")


@pytest.fixture
def run(data_setup, kernels_dir, tmp_path, monkeypatch):
    return lambda name, probe: run_notebook(name, probe, data_setup, kernels_dir, tmp_path,
                                            monkeypatch)


def test_convolution_by_hand(run):
    nb, got, _ = run("01_convolution_by_hand.ipynb", """{
        "x": x, "W": W, "b": b, "dout": dout, "cols": cols, "W_flipped": W_flipped,
        "dout_padded": dout_padded, "results": results,
        "gradcheck": layer_check.max_error}""")
    page = page_example("conv2d_im2col.md", "conv2d")
    for key in ("x", "W", "b", "dout", "cols", "W_flipped", "dout_padded"):
        assert_page_value(got[key], page, key)
    methods = {"y": 3, "dW": 4, "db": 3, "dx": 5}  # loops, im2col, Conv2d, (full corr.), numeric
    for key, count in methods.items():
        assert len(got["results"][key]) == count
        for i, value in enumerate(got["results"][key]):
            assert_page_value(value, page, key, f"{key}, method {i}")
    assert got["gradcheck"] < 1e-6
    text = printed_text(nb)
    assert text.count("methods agree: True") == 4 and "False" not in text


def test_batchnorm_backward(run):
    nb, got, _ = run("02_batchnorm_backward.ipynb", """{
        "x": x[:, 0], "dout": dout[:, 0], "gamma": gamma, "beta": beta, "mu": mu, "var": var,
        "sigma": sigma, "x_hat": x_hat[:, 0], "y": y[:, 0], "dbeta": dbeta, "dgamma": dgamma,
        "dx_hat": dx_hat[:, 0], "dvar": dvar, "dmu": dmu, "dx_steps": dx_steps[:, 0],
        "dx_compact": dx_compact[:, 0], "dx_layer": dx_layer[:, 0],
        "dx_numeric": dx_numeric[:, 0], "y_layer": y_layer[:, 0],
        "running_mean": running_mean, "running_var": running_var,
        "dgamma_layer": bn.gamma.grad, "dbeta_layer": bn.beta.grad,
        "error_right": mc.gradcheck.relative_error(dx_compact, dx_numeric),
        "error_wrong": mc.gradcheck.relative_error(dx_wrong, dx_numeric),
        "gradcheck": bn_check.max_error}""")
    forward = page_example("batchnorm.md", "batchnorm_forward")
    backward = page_example("batchnorm.md", "batchnorm_backward")
    for key in ("x", "mu", "var", "sigma", "x_hat"):
        assert_page_value(got[key], forward, key)
    for key in ("gamma", "beta", "dout", "y", "running_mean", "running_var", "dbeta",
                "dgamma", "dx_hat", "dvar", "dmu"):
        assert_page_value(got[key], backward, key)
    assert_page_value(got["y_layer"], backward, "y", "BatchNorm2d.forward")
    assert_page_value(got["dgamma_layer"], backward, "dgamma", "BatchNorm2d gamma.grad")
    assert_page_value(got["dbeta_layer"], backward, "dbeta", "BatchNorm2d beta.grad")
    for key in ("dx_steps", "dx_compact", "dx_layer", "dx_numeric"):
        assert_page_value(got[key], backward, "dx", key)
    assert got["error_right"] < 1e-7 < 1e-2 < got["error_wrong"]
    assert got["gradcheck"] < 1e-6
    text = printed_text(nb)
    assert len(re.findall(r"matches: +True", text)) == 6 and "False" not in text


def test_vanishing_gradients(run):
    _, got, _ = run("03_vanishing_gradients.ipynb", "{'norms': norms, 'curves': curves}")
    norms = got["norms"]
    assert len(norms) == 4 and all(len(v) == 11 for v in norms.values())  # 9 conv + 2 dense
    ratio = {name: v[0] / v[-1] for name, v in norms.items()}
    sigmoid, *relus = norms
    assert ratio[sigmoid] < 1e-4, ratio  # vanished on the way to the first layer
    assert all(ratio[name] > 1e-2 for name in relus), ratio
    for name, history in got["curves"].items():
        assert len(history) == 30 and np.all(np.isfinite(history)), name
    best = got["curves"][relus[-1]]  # ReLU + He + BatchNorm learns within 30 steps
    assert np.mean(best[-5:]) < 0.5 * best[0], best


def test_mnist_in_twenty_lines(run, data_setup):
    nb, got, _ = run("04_mnist_in_twenty_lines.ipynb", """{
        "acc": test_acc, "n_test": len(x_test), "cm": cm, "W": W.shape,
        "maps1": maps1.shape, "maps2": maps2.shape}""")
    real = data_setup[2]
    assert got["acc"] > (0.9 if real else 0.8), got["acc"]
    cm = np.asarray(got["cm"])
    assert cm.shape == (10, 10) and cm.sum() == got["n_test"]
    assert np.isclose(np.trace(cm) / cm.sum(), got["acc"])
    assert got["W"] == [16, 1, 3, 3]
    assert got["maps1"] == [16, 28, 28] and got["maps2"] == [32, 14, 14]
    assert f"test accuracy: {got['acc']:.2%}" in printed_text(nb)


def test_stand_in_mnist_loads_with_the_shrunk_spec(tmp_path, monkeypatch):
    """The stand-in passes the real loader (format, counts, checksums) once the spec is
    shrunk as the hidden cell shrinks it."""
    from minicnn.data import load_mnist, mnist

    files = stand_in_mnist(tmp_path)
    monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(
        mnist.MNIST, n_train=N_TRAIN, n_test=N_TEST, files=files, mirrors=()))
    monkeypatch.setenv("MINICNN_CACHE", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checksums match: no ChecksumWarning
        (x, y), (xt, yt) = load_mnist(tmp_path, download=False, quiet=True)
    assert x.shape == (N_TRAIN, 1, 28, 28) and xt.shape == (N_TEST, 1, 28, 28)
    assert set(np.unique(y).tolist()) == set(range(10)) == set(np.unique(yt).tolist())
