"""Bad input at the front door: every command, flag and file the CLI reads, one row each.

Each row runs ``minicnn`` (or an example script's entry point) in-process, in an empty
working folder that also holds a previous run's ``model.npz`` and ``history.json``, and
asserts the exit status (2 for a usage error, 1 for a failed run), that stderr is exactly one
line, ``<prog>: error: ...``, with the words a user needs, no traceback, and that nothing in
the folder was written, removed or overwritten. Two rows run as real processes, to check the
exit path and the status the shell sees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn import cli, training
from minicnn.backend import cupy_available

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "checkpoint_v1.npz"  # a vgg on 3x8x8 images


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def workdir(tmp_path, monkeypatch, mnist_smoke_checkpoint):
    """An empty working folder with the previous run's files in ``out/``; files to point
    flags at; the data folder, cache and home kept out of the user's (beside it, so that
    the folder's snapshot does not see them)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINICNN_BACKEND", "numpy")
    monkeypatch.setenv("MINICNN_CACHE", str(tmp_path.parent / (tmp_path.name + "-cache")))
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path.parent / (tmp_path.name + "-data")))
    monkeypatch.setenv("HOME", str(tmp_path.parent / (tmp_path.name + "-home")))
    monkeypatch.delenv("MINICNN_DEBUG", raising=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.npz").write_bytes(mnist_smoke_checkpoint.read_bytes())
    (tmp_path / "out" / "history.json").write_text('{"epoch": [1]}')
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "garbage.npz").write_text("garbage\n")
    (tmp_path / "truncated.npz").write_bytes(mnist_smoke_checkpoint.read_bytes()[:100])
    np.save(tmp_path / "array.npy", np.zeros(3))
    with np.load(FIXTURE, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    info = json.loads(str(arrays["info"]))
    arrays["info"] = np.array(json.dumps({**info, "format": "minicnn-checkpoint-7"}))
    np.savez(tmp_path / "newer.npz", **arrays)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / "junk" / "mnist").mkdir(parents=True, exist_ok=True)
        (tmp_path / "junk" / "mnist" / name).write_bytes(b"junk")
    (tmp_path / "offline").mkdir()
    (tmp_path / "ladder").mkdir()
    (tmp_path / "ladder" / "ladder.json").write_text("{not json")
    (tmp_path / "ladder2").mkdir()
    (tmp_path / "ladder2" / "ladder.json").write_text('{"results": {"1": {"rung": "1"}}}')
    (tmp_path / "ladder3").mkdir()
    (tmp_path / "ladder3" / "ladder.json").write_text('["a", "list"]')
    # No network: the MNIST mirror is a local port nobody listens on (the real download
    # path, refused at once).
    from minicnn.data import mnist

    monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(
        mnist.MNIST, mirrors=(f"http://127.0.0.1:{_closed_port()}/",)))
    return tmp_path


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` with its content and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def manual_loop(argv: list[str]) -> int:
    """``python examples/manual_loop.py ARGV``, in-process (it has its own small parser)."""
    saved, sys.argv = sys.argv, ["manual_loop.py", *argv]
    try:
        runpy.run_path(str(ROOT / "examples" / "manual_loop.py"), run_name="__main__")
    finally:
        sys.argv = saved
    return 0


def run(program: str, argv: list[str]) -> int:
    """Run ``program`` ("minicnn", "train_cifar.py", "ladder.py", ...) in-process; return
    its exit status as the shell would see it."""
    entry = {"minicnn": cli.main, "ladder.py": cli.run_ladder_example,
             "manual_loop.py": manual_loop,
             "train_cifar.py": lambda a: cli.run_example("cifar10", a),
             "train_mnist.py": lambda a: cli.run_example("mnist", a),
             "train_fashion_mnist.py": lambda a: cli.run_example("fashion_mnist", a)}[program]
    try:
        return entry(argv)
    except SystemExit as exc:
        return exc.code


SMOKE = ["--smoke", "--no-plots", "-q"]
T = ["train", "--dataset", "mnist", *SMOKE]  # minicnn train
E = ["evaluate"]
G = ["gradcheck", "--model", "vgg"]
# (program, arguments, exit status, program name in the message, words of the message)
ROWS = [
    # -- train: every flag's values -------------------------------------------------------------
    ("train_cifar.py", ["--smoke", "--epochs", "0"], 2, "train_cifar.py",
     "argument --epochs: must be >= 1, got 0"),
    ("train_cifar.py", ["--smoke", "--epochs", "-3"], 2, "train_cifar.py",
     "argument --epochs: must be >= 1, got -3"),
    ("minicnn", [*T, "--epochs", "two"], 2, "minicnn train",
     "argument --epochs: expected an integer, got 'two'"),
    ("minicnn", [*T, "--batch-size", "0"], 2, "minicnn train",
     "argument --batch-size: must be >= 1, got 0"),
    ("minicnn", [*T, "--log", "csv,tb"], 2, "minicnn train",
     "argument --log: unknown logger 'tb' in 'csv,tb'; expected csv, tensorboard"),
    ("train_mnist.py", ["--smoke", "--batch-size", "-5"], 2, "train_mnist.py",
     "argument --batch-size: must be >= 1, got -5"),
    ("train_cifar.py", ["--smoke", "--threads", "0"], 2, "train_cifar.py",
     "argument --threads: must be >= 1, got 0"),
    ("minicnn", [*T, "--threads", "2", "--distributed"], 2, "minicnn train",
     "argument --threads: runs the ranks as threads of one process; with --distributed the "
     "ranks are mpiexec's processes: give one or the other"),
    ("minicnn", [*T, "--lr", "-1"], 2, "minicnn train", "argument --lr: must be > 0, got -1"),
    ("minicnn", [*T, "--lr", "0"], 2, "minicnn train", "argument --lr: must be > 0, got 0"),
    ("minicnn", [*T, "--lr", "nan"], 2, "minicnn train",
     "argument --lr: must be a finite number, got nan"),
    ("minicnn", [*T, "--lr", "fast"], 2, "minicnn train",
     "argument --lr: expected a number, got 'fast'"),
    ("minicnn", [*T, "--weight-decay", "-0.1"], 2, "minicnn train",
     "argument --weight-decay: must be >= 0, got -0.1"),
    ("minicnn", [*T, "--label-smoothing", "1"], 2, "minicnn train",
     "argument --label-smoothing: must be < 1, got 1"),
    ("minicnn", [*T, "--label-smoothing", "-0.5"], 2, "minicnn train",
     "argument --label-smoothing: must be >= 0, got -0.5"),
    ("minicnn", [*T, "--seed", "-1"], 2, "minicnn train", "argument --seed: must be >= 0"),
    ("minicnn", [*T, "--model", "googlenet"], 2, "minicnn train",
     "argument --model: invalid choice: 'googlenet' (choose from"),
    ("minicnn", [*T, "--optimizer", "rmsprop"], 2, "minicnn train",
     "argument --optimizer: invalid choice: 'rmsprop'"),
    ("minicnn", [*T, "--schedule", "linear"], 2, "minicnn train",
     "argument --schedule: invalid choice: 'linear'"),
    ("minicnn", [*T, "--preset", "tpu"], 2, "minicnn train",
     "argument --preset: invalid choice: 'tpu'"),
    ("minicnn", ["train", "--dataset", "imagenet", "--smoke"], 2, "minicnn train",
     "argument --dataset: invalid choice: 'imagenet'"),
    ("minicnn", ["train", "--smoke"], 2, "minicnn train",
     "the following arguments are required: --dataset"),
    ("train_cifar.py", ["--smoke", "--frobnicate"], 2, "train_cifar.py",
     "unrecognized arguments: --frobnicate"),
    ("minicnn", [*T, "--model-kwargs", "{widths: 3}"], 2, "minicnn train",
     "argument --model-kwargs: not valid JSON (Expecting property name enclosed in double "
     "quotes at character 1); expected an object such as '{\"widths\": [32, 64]"),
    ("minicnn", [*T, "--model-kwargs", "[32, 64]"], 2, "minicnn train",
     "argument --model-kwargs: expected a JSON object such as"),
    ("minicnn", [*T, "--model-kwargs", '{"width": 2}'], 2, "minicnn train",
     "argument --model-kwargs: vgg takes no argument 'width'; it takes in_channels,"),
    ("minicnn", [*T, "--model-kwargs", '{"activation": "softplus"}'], 2, "minicnn train",
     "argument --model-kwargs: vgg(**{"),
    ("minicnn", [*T, "--out", "file.txt"], 2, "minicnn train",
     "argument --out: 'file.txt' is a file; expected a folder"),
    ("minicnn", [*T, "--out", "file.txt/run"], 2, "minicnn train",
     "argument --out: cannot write to 'file.txt/run'"),
    ("minicnn", [*T, "--data", "file.txt"], 2, "minicnn train",
     "argument --data: 'file.txt' is a file; expected a folder"),
    ("minicnn", ["train", "--dataset", "mnist", "-q", "--data", "no/such/dir"], 2,
     "minicnn train", "argument --data: no such folder: 'no/such/dir'; create it to download "
                      "the data there, or leave --data out"),
    ("minicnn", ["ladder", "--rungs", "mnist", "--budget", "quick", "--data", "nodir"], 2,
     "minicnn ladder", "argument --data: no such folder: 'nodir'"),
    ("minicnn", ["train", "--dataset", "mnist", "-q", "--data", "junk"], 2, "minicnn train",
     "argument --data: junk/mnist/train-images-idx3-ubyte.gz: not an IDX file"),
    ("minicnn", ["train", "--dataset", "mnist", "-q", "--data", "offline"], 2,
     "minicnn train", "Could not download train-images-idx3-ubyte.gz. URLs tried: "
                      "http://127.0.0.1:"),
    ("minicnn", [*T, "--resume", "missing.npz"], 2, "minicnn train",
     "argument --resume: no such file: 'missing.npz'"),
    ("minicnn", [*T, "--resume", "garbage.npz"], 2, "minicnn train",
     "argument --resume: garbage.npz: not a minicnn checkpoint"),
    ("train_cifar.py", ["--smoke", "-q", "--resume", "out/model.npz"], 2, "train_cifar.py",
     "argument --resume: out/model.npz: a checkpoint from another model (it does not fit this "
     "one): parameter 'layers.0.W' has shape (4, 1, 3, 3) in the checkpoint but (4, 3, 3, 3) "
     "in the model"),
    ("minicnn", [*T, "--model", "lenet5", "--resume", "out/model.npz"], 2, "minicnn train",
     "; resume with the flags of the run that wrote it (it was trained with --preset cpu "
     "--model vgg --model-kwargs '{\"in_channels\":1,\"image_size\":28,"),
    ("minicnn", [*T, "--resume", "out/model.npz", "--epochs", "3"], 2, "minicnn train",
     "argument --epochs: out/model.npz holds a onecycle schedule of 2 steps (1 epochs of 2 "
     "batches); resume it with the --epochs and --batch-size it was started with"),
    ("minicnn", [*T, "--resume", "out/model.npz", "--epochs", "1"], 2, "minicnn train",
     "argument --epochs: out/model.npz has trained 1 epochs already; give --epochs > 1"),
    ("minicnn", [*T, "--backend", "tpu"], 2, "minicnn train",
     "argument --backend: invalid choice: 'tpu'"),
    # a run that fails: the loss diverges; the previous model.npz and history.json stay
    ("minicnn", [*T, "--lr", "1e30", "--optimizer", "sgd", "--out", "out"], 1, "minicnn train",
     "the loss became nan at epoch 1"),
    ("manual_loop.py", ["--smoke", "--epochs", "0"], 2, "manual_loop.py",
     "argument --epochs: must be > 0, got 0"),
    ("manual_loop.py", ["--smoke", "--batch-size", "-5"], 2, "manual_loop.py",
     "argument --batch-size: must be > 0, got -5"),
    ("manual_loop.py", ["--smoke", "--lr", "nan"], 2, "manual_loop.py",
     "argument --lr: must be > 0, got nan"),
    # -- evaluate: the checkpoint file and its flags ---------------------------------------------
    ("minicnn", [*E, "missing.npz"], 2, "minicnn evaluate",
     "argument checkpoint: no such file: 'missing.npz'"),
    ("minicnn", [*E, "out"], 2, "minicnn evaluate",
     "argument checkpoint: 'out' is a folder; expected a checkpoint file"),
    ("minicnn", [*E, "garbage.npz", "--smoke"], 2, "minicnn evaluate",
     "argument checkpoint: garbage.npz: not a minicnn checkpoint (not an .npz archive: it "
     "starts with b'garb')"),
    ("minicnn", [*E, "array.npy", "--smoke"], 2, "minicnn evaluate",
     "array.npy: not a minicnn checkpoint (a single NumPy array"),
    ("minicnn", [*E, "truncated.npz", "--smoke"], 2, "minicnn evaluate",
     "truncated.npz: truncated or corrupt checkpoint (100 bytes; a complete one has the keys "
     "info, rng, param/<name>"),
    ("minicnn", [*E, "newer.npz", "--smoke"], 2, "minicnn evaluate",
     "newer.npz: written by a newer minicnn (format v7, this reads v1)"),
    ("minicnn", [*E, str(FIXTURE), "--smoke"], 2, "minicnn evaluate",
     "argument --dataset: " + str(FIXTURE) + " does not say which dataset it was trained on; "
     "pass --dataset"),
    ("minicnn", [*E, "out/model.npz", "--smoke", "--dataset", "cifar10"], 2, "minicnn evaluate",
     "argument --dataset: the model in out/model.npz (trained on mnist) does not take "
     "cifar10's 3x32x32 images"),
    ("minicnn", [*E, "out/model.npz", "--smoke", "--batch-size", "0"], 2, "minicnn evaluate",
     "argument --batch-size: must be >= 1, got 0"),
    ("minicnn", [*E, "out/model.npz", "--data", "junk", "-q"], 2, "minicnn evaluate",
     "argument --data: junk/mnist/train-images-idx3-ubyte.gz: not an IDX file"),
    # -- gradcheck -------------------------------------------------------------------------------
    ("minicnn", ["gradcheck", "--model", "googlenet"], 2, "minicnn gradcheck",
     "argument --model: invalid choice: 'googlenet'"),
    ("minicnn", [*G, "--batch", "0"], 2, "minicnn gradcheck",
     "argument --batch: must be >= 1, got 0"),
    ("minicnn", [*G, "--entries", "0"], 2, "minicnn gradcheck",
     "argument --entries: must be >= 1, got 0"),
    ("minicnn", [*G, "--tol", "0"], 2, "minicnn gradcheck", "argument --tol: must be > 0"),
    ("minicnn", [*G, "--image-size", "0"], 2, "minicnn gradcheck",
     "argument --image-size: must be >= 1, got 0"),
    ("minicnn", [*G, "--image-size", "1"], 2, "minicnn gradcheck",
     "argument --image-size: vgg(**{"),
    ("minicnn", [*G, "--model-kwargs", '{"blocks": 2}'], 2, "minicnn gradcheck",
     "argument --model-kwargs: vgg takes no argument 'blocks'"),
    ("minicnn", [*G, "--backend", "auto"], 2, "minicnn gradcheck",
     "argument --backend: invalid choice: 'auto'"),
    ("minicnn", [*G, "--seed", "-2"], 2, "minicnn gradcheck", "argument --seed: must be >= 0"),
    # -- info and the command itself -------------------------------------------------------------
    ("minicnn", ["info", "--verbose"], 2, "minicnn", "unrecognized arguments: --verbose"),
    ("minicnn", [], 2, "minicnn", "the following arguments are required: command"),
    ("minicnn", ["fit"], 2, "minicnn", "argument command: invalid choice: 'fit'"),
    # -- ladder: flags, the results file --report-only reads, an --out with a damaged one ---------
    ("minicnn", ["ladder", "--rungs", "13"], 2, "minicnn ladder",
     "argument --rungs: unknown rung '13'; rungs are 1, 2,"),
    ("ladder.py", ["--rungs", "1,12h"], 2, "ladder.py",
     "argument --rungs: unknown rung '12h'"),
    ("minicnn", ["ladder", "--budget", "huge"], 2, "minicnn ladder",
     "argument --budget: invalid choice: 'huge'"),
    ("minicnn", ["ladder", "--seed", "x"], 2, "minicnn ladder",
     "argument --seed: expected an integer, got 'x'"),
    ("minicnn", ["ladder", "--out", "file.txt"], 2, "minicnn ladder",
     "argument --out: 'file.txt' is a file; expected a folder"),
    ("minicnn", ["ladder", "--report-only", "--out", "out"], 2, "minicnn ladder",
     "argument --report-only: needs out/ladder.json from an earlier run; pass that run's --out"),
    ("ladder.py", ["--report-only", "--out", "ladder"], 2, "ladder.py",
     "argument --report-only: ladder/ladder.json is not readable JSON (Expecting property name"),
    ("minicnn", ["ladder", "--report-only", "--out", "ladder3"], 2, "minicnn ladder",
     "argument --report-only: ladder3/ladder.json is not a results file of minicnn ladder"),
    ("minicnn", ["ladder", "--report-only", "--out", "ladder2"], 2, "minicnn ladder",
     "argument --report-only: ladder2/ladder.json lacks what the report needs (KeyError:"),
    ("minicnn", ["ladder", "--smoke", "--rungs", "1", "--out", "ladder"], 2, "minicnn ladder",
     "argument --out: ladder/ladder.json is not readable JSON"),
]
if not cupy_available():
    ROWS.append(("train_cifar.py", ["--smoke", "--backend", "cupy"], 2, "train_cifar.py",
                 "argument --backend: Backend 'cupy' requested but unusable: CuPy is not "
                 "installed or failed to import"))


@pytest.mark.parametrize("program,argv,status,prog,words", ROWS,
                         ids=[f"{r[0]} {' '.join(r[1])}"[:90] for r in ROWS])
def test_bad_input_gives_one_line_and_writes_nothing(workdir, capsys, program, argv, status,
                                                     prog, words):
    before = tree(workdir)
    assert run(program, argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and words in lines[0], lines[0]
    assert "Traceback" not in err and "allow_pickle" not in err
    assert tree(workdir) == before  # nothing written, removed or overwritten


def test_environment_variables_are_checked_too(workdir, capsys, monkeypatch):
    monkeypatch.setenv("MINICNN_BACKEND", "gpu")
    assert run("minicnn", T) == 2
    assert capsys.readouterr().err == ("minicnn train: error: MINICNN_BACKEND='gpu' is not a "
                                       "backend; set it to auto, numpy or cupy, or pass "
                                       "--backend\n")
    from minicnn import backend

    monkeypatch.setattr(backend, "_backend", None)  # as in a fresh process: read from the env
    assert run("minicnn", ["info"]) == 0  # info reports it rather than failing on it
    assert "backend      none: MINICNN_BACKEND is not auto, numpy or cupy (MINICNN_BACKEND=" \
        "'gpu';" in capsys.readouterr().out


def test_debug_shows_the_library_error_itself(workdir, monkeypatch):
    # --debug (or MINICNN_DEBUG=1): the exception propagates with its traceback, the
    # library's own error chained under the line the CLI would have printed.
    with pytest.raises(cli.BadInput, match="argument checkpoint: garbage.npz") as info:
        cli.main(["evaluate", "garbage.npz", "--debug"])
    assert isinstance(info.value.__cause__, training.checkpoint.NotACheckpointError)
    monkeypatch.setenv("MINICNN_DEBUG", "1")
    with pytest.raises(cli.BadInput) as info:
        cli.main(["evaluate", "truncated.npz"])
    assert isinstance(info.value.__cause__, training.checkpoint.CorruptCheckpointError)


def test_an_unexpected_error_is_one_line_with_status_1(workdir, capsys, monkeypatch):
    from minicnn import training as tr

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory\n(while allocating 2 GiB)")

    monkeypatch.setattr(tr, "fit", broken)
    before = tree(workdir)
    assert run("minicnn", [*T, "--out", "out"]) == 1
    assert capsys.readouterr().err == (
        "minicnn train: error: RuntimeError: CUDA error: out of memory; (while allocating "
        "2 GiB) (run again with --debug for the traceback)\n")
    assert tree(workdir) == before


def test_a_good_run_replaces_the_files_all_at_once(workdir, capsys):
    before = tree(workdir)
    assert run("minicnn", [*T, "--out", "out"]) == 0
    after = tree(workdir)
    assert sorted(after) == sorted(before)  # no temporary file left behind
    assert after["out/model.npz"] != before["out/model.npz"]
    assert json.loads(after["out/history.json"][0])["epoch"] == [1]


@pytest.mark.parametrize("argv,status,line", [
    ([str(ROOT / "examples" / "train_cifar.py"), "--smoke", "--epochs", "0"], 2,
     "train_cifar.py: error: argument --epochs: must be >= 1, got 0"),
    (["-m", "minicnn", "evaluate", "garbage.npz"], 2,
     "minicnn evaluate: error: argument checkpoint: garbage.npz: not a minicnn checkpoint (not "
     "an .npz archive: it starts with b'garb')"),
], ids=["example", "python -m minicnn"])
def test_the_real_exit_path(tmp_path, argv, status, line):
    (tmp_path / "garbage.npz").write_text("garbage\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MINICNN_BACKEND="numpy")
    env.pop("MINICNN_DEBUG", None)
    result = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == status
    assert result.stderr == line + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.npz"]


def test_auto_backend_says_why_an_installed_cupy_is_not_used(workdir, capsys, monkeypatch):
    # A CuPy wheel built for another CUDA fails at import: --backend auto then trains on the
    # CPU, and says so in one line instead of silently.
    from minicnn import backend

    fake = workdir.parent / (workdir.name + "-site")
    (fake / "cupy").mkdir(parents=True)
    (fake / "cupy" / "__init__.py").write_text(
        'raise ImportError("libcudart.so.12: cannot open shared object file")\n')
    monkeypatch.syspath_prepend(str(fake))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setattr(backend, "_backend", None)
    assert run("minicnn", [*T, "--backend", "auto", "--out", "run"]) == 0
    out, err = capsys.readouterr()
    assert "test accuracy:" in out
    assert err == ("minicnn train: warning: --backend auto: CuPy is not installed or failed to "
                   "import (libcudart.so.12: cannot open shared object file). Training on the "
                   "CPU; `minicnn info` says more, --backend numpy silences this.\n")
