"""The ``minicnn`` command and the example scripts, end to end on tiny data (``--smoke``).

No network and no real datasets: ``--smoke`` swaps in tiny random data and a tiny model.
The examples run in-process (``runpy``) except one, which runs as a user would, in a fresh
interpreter from another folder without minicnn on the path, to check the fallback.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn import cli, plot, training

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_script(path, args, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(path), run_name="__main__")
    return exit_info.value.code


def test_train_evaluate_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "mnist", "--smoke", "--backend", "numpy",
                     "--epochs", "2", "--out", str(out), "--no-plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "Total params" in printed and "epoch 2/2" in printed
    assert "test accuracy:" in printed
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2] and len(history["history"]["val_acc"]) == 2
    ckpt = training.load(out / "model.npz")  # the model rebuilt from its config
    assert ckpt.epoch == 2 and ckpt.meta["dataset"] == "mnist"
    assert ckpt.config["builder"] == "vgg" and ckpt.config["kwargs"]["in_channels"] == 1

    accuracy = printed.split("test accuracy: ")[1].split("%")[0]
    assert cli.main(["evaluate", str(out / "model.npz"), "--smoke", "--backend", "numpy"]) == 0
    evaluated = capsys.readouterr().out
    assert f"accuracy {accuracy}%" in evaluated  # same model, same test data, same number


@pytest.mark.cupy
def test_train_resume_evaluate_on_the_cupy_backend(tmp_path, capsys):
    from minicnn.backend import cupy_available

    if not cupy_available():
        pytest.skip("CuPy with a working GPU is not available")
    out = tmp_path / "run"
    common = ["train", "--dataset", "cifar10", "--smoke", "--backend", "cupy", "-q",
              "--no-plots", "--out", str(out), "--epochs", "2", "--checkpoint-every"]
    assert cli.main([*common, "--lr", "1e30"]) == 1  # diverges: nothing but last.npz written
    assert sorted(p.name for p in out.iterdir()) == []
    assert cli.main(common) == 0
    ckpt = training.load(out / "last.npz")
    assert ckpt.epoch == 2 and sorted(p.name for p in out.iterdir()) == [
        "history.json", "last.npz", "model.npz"]
    accuracy = capsys.readouterr().out.split("test accuracy: ")[-1].split("%")[0]
    assert cli.main(["evaluate", str(out / "model.npz"), "--smoke", "--backend", "cupy"]) == 0
    assert f"accuracy {accuracy}%" in capsys.readouterr().out


def test_validation_freq_flag_validates_every_nth_epoch_and_the_last(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "mnist", "--smoke", "--backend", "numpy",
                     "--epochs", "5", "--validation-freq", "2", "--out", str(out),
                     "--no-plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "validation every 2 epochs and after the last" in printed
    lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert ["val_acc" in line for line in lines] == [False, True, False, True, True]
    history = json.loads((out / "history.json").read_text())
    assert [v is None for v in history["history"]["val_acc"]] == [True, False, True, False,
                                                                  False]
    assert training.load(out / "model.npz").meta["train_config"]["validation_freq"] == 2


def test_tta_is_reported_by_train_and_evaluate_alike(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "cifar10", "--smoke", "--backend", "numpy",
                     "--tta", "flip+shift", "--out", str(out), "--no-plots",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "(test-time augmentation --tta flip+shift) after 1 epochs" in printed
    accuracy = printed.split("test accuracy: ")[1].split("%")[0]
    assert cli.main(["evaluate", str(out / "model.npz"), "--smoke", "--backend", "numpy"]) == 0
    evaluated = capsys.readouterr().out
    assert f"accuracy {accuracy}%" in evaluated and "--tta flip+shift" in evaluated
    assert cli.main(["evaluate", str(out / "model.npz"), "--smoke", "--backend", "numpy",
                     "--tta", "none"]) == 0
    assert "--tta" not in capsys.readouterr().out
    assert cli.main(["evaluate", str(out / "model.npz"), "--smoke", "--backend", "numpy",
                     "--tta"]) == 0
    assert "test-time augmentation --tta flip;" in capsys.readouterr().out


def test_resume_continues_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--dataset", "cifar10", "--smoke", "--backend", "numpy", "-q",
              "--no-plots", "--out", str(out), "--schedule", "step"]
    assert cli.main([*common, "--epochs", "1"]) == 0
    assert cli.main([*common, "--epochs", "2", "--resume", str(out / "model.npz")]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert history["history"]["lr"][1] == pytest.approx(history["history"]["lr"][0] * 0.1)


def test_flags_override_the_preset(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "fashion_mnist", "--smoke", "--backend", "numpy",
                     "--model", "lenet5", "--optimizer", "adam", "--lr", "0.002",
                     "--schedule", "none", "--batch-size", "16", "--no-augment",
                     "--threads", "1", "--out", str(out), "--no-plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "training lenet5" in printed and "batch 16, adam lr 0.002, schedule none" in printed
    ckpt = training.load(out / "model.npz")
    assert ckpt.config["builder"] == "lenet5"
    assert ckpt.meta["train_config"]["augment"] is False
    assert ckpt.meta["train_config"]["threads"] == 1   # the preset's 2
    assert ckpt.history.history["lr"] == [0.002]


def test_gradcheck_and_info_commands(capsys):
    assert cli.main(["gradcheck", "--model", "vgg"]) == 0
    assert cli.main(["gradcheck", "--model", "resnet", "--entries", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" ok ") == 2 and "resnet" in printed
    assert cli.main(["info"]) == 0
    printed = capsys.readouterr().out
    assert f"numpy        {np.__version__}" in printed and "backend" in printed


def test_gradcheck_reports_a_wrong_backward(capsys, monkeypatch):
    from minicnn import layers as L

    def wrong_backward(self, dout):
        return dout * self.mask * 2.0  # twice the true gradient

    monkeypatch.setattr(L.ReLU, "backward", wrong_backward)
    assert cli.main(["gradcheck", "--model", "vgg"]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.skipif(not plot.matplotlib_available(), reason="matplotlib not installed")
def test_cifar_example_writes_curves_and_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cifar"
    code = run_script(EXAMPLES / "train_cifar.py", ["--smoke", "--out", str(out), "-q"],
                      monkeypatch)
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"history.json", "curves.png", "confusion.png",
                                              "model.npz"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert printed.startswith("test accuracy:")  # quiet: only the result


def test_missing_matplotlib_skips_the_plots_with_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plot, "matplotlib_available", lambda: False)
    out = tmp_path / "mnist"
    assert run_script(EXAMPLES / "train_mnist.py", ["--smoke", "--out", str(out),
                                                    "--no-progress"], monkeypatch) == 0
    assert "matplotlib is not installed: skipping curves.png" in capsys.readouterr().out
    assert not (out / "curves.png").exists() and (out / "model.npz").exists()


def test_manual_loop_example(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["manual_loop.py", "--smoke", "--backend", "numpy"])
    runpy.run_path(str(EXAMPLES / "manual_loop.py"), run_name="__main__")
    assert "epoch 1: loss" in capsys.readouterr().out


def test_example_runs_from_a_plain_checkout(tmp_path):
    # A fresh interpreter, started elsewhere, with nothing on PYTHONPATH: the script must
    # find the repository itself (or an installed minicnn).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MINICNN_BACKEND"] = "numpy"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_fashion_mnist.py"), "--smoke", "--no-plots",
         "--no-progress", "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "test accuracy:" in result.stdout
    assert (tmp_path / "out" / "model.npz").exists()


def test_python_dash_m_minicnn(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "minicnn", "--help"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert all(cmd in result.stdout for cmd in ("train", "evaluate", "gradcheck", "info"))


def test_missing_dataset_gives_a_clear_error(tmp_path, capsys, monkeypatch):
    from minicnn import data

    def offline(*args, **kwargs):
        raise data.DatasetNotFoundError("train-images-idx3-ubyte.gz is missing: put it in X")

    monkeypatch.setattr(data, "load_mnist", offline)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--dataset", "mnist", "--backend", "numpy", "-q",
                  "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("minicnn train: error: train-images-idx3-ubyte.gz is "
                                       "missing: put it in X\n")
    assert not (tmp_path / "out").exists()


# -- minicnn.plot ------------------------------------------------------------------------------

def test_confusion_matrix_and_per_class_accuracy():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    cm = plot.confusion_matrix(y_true, y_pred, num_classes=4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    acc = plot.per_class_accuracy(cm)
    np.testing.assert_allclose(acc[:3], [0.5, 2 / 3, 1.0])
    assert np.isnan(acc[3])  # no sample of class 3


@pytest.mark.skipif(not plot.matplotlib_available(), reason="matplotlib not installed")
def test_every_plot_writes_a_png(tmp_path):
    import matplotlib.pyplot as plt

    from minicnn import models

    model = models.vgg(widths=(4, 8), depth=1, hidden=8, image_size=8)
    history = {"epoch": [1, 2], "history": {"loss": [1.0, 0.5], "acc": [0.5, 0.8],
                                            "val_loss": [None, 0.6], "val_acc": [None, 0.7]}}
    cm = plot.confusion_matrix(np.arange(10) % 3, np.arange(10) % 2, num_classes=3)
    image = np.random.default_rng(0).standard_normal((3, 8, 8))
    files = {
        "curves.png": lambda p: plot.plot_history(history, p),
        "cm.png": lambda p: plot.plot_confusion_matrix(cm, ["a", "b", "c"], p),
        "per_class.png": lambda p: plot.plot_per_class_accuracy(cm, None, p),
        "filters.png": lambda p: plot.plot_filters(model, p),
        "maps.png": lambda p: plot.plot_feature_maps(model, image, 1, p),
    }
    for name, draw in files.items():
        draw(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    plt.close("all")
    with pytest.raises(ValueError, match="not \\(C, H, W\\)"):
        plot.plot_feature_maps(model, image, 8)  # after Flatten


@pytest.mark.skipif(not plot.matplotlib_available(), reason="matplotlib not installed")
def test_plot_history_draws_the_validation_line_through_the_validated_epochs():
    import matplotlib.pyplot as plt

    # fit(validation_freq=2) over 5 epochs: validated after 2, 4 and 5.
    history = {"epoch": [1, 2, 3, 4, 5],
               "history": {"loss": [1.0, 0.8, 0.7, 0.6, 0.5], "acc": [0.5, 0.6, 0.7, 0.8, 0.9],
                           "val_loss": [None, 0.9, None, 0.7, 0.6],
                           "val_acc": [None, 0.55, None, 0.75, 0.85]}}
    fig = plot.plot_history(history)
    for ax, values in zip(fig.axes, ([0.9, 0.7, 0.6], [0.55, 0.75, 0.85]), strict=True):
        val_line = [line for line in ax.get_lines() if "validation" in line.get_label()][0]
        np.testing.assert_array_equal(val_line.get_xdata(), [2, 4, 5])
        np.testing.assert_allclose(val_line.get_ydata(), values)
    assert "85.00% (epoch 5)" in fig.axes[1].get_title()
    plt.close("all")


@pytest.mark.skipif(not plot.matplotlib_available(), reason="matplotlib not installed")
def test_pyplot_keeps_a_non_window_backend_without_a_display(monkeypatch):
    # A Jupyter kernel on a machine without DISPLAY (JupyterHub, VS Code remote) draws with a
    # "module://" backend: pyplot() must not switch it to Agg, or no figure shows any more.
    pytest.importorskip("matplotlib_inline")
    import matplotlib

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    before = matplotlib.get_backend()
    inline = "module://matplotlib_inline.backend_inline"
    try:
        matplotlib.use(inline)
        plot.pyplot()
        assert matplotlib.get_backend() == inline
    finally:
        matplotlib.use(before)
