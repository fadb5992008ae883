"""examples/segment_unet.py: U-Net segmenting MNIST digits, end to end on tiny data.

No network and no real dataset: a few dozen MNIST-format images (a bright bar on black, with
grey edges) in a temporary $MINICNN_DATA, the MNIST spec shrunk to their counts. The script
runs in-process (``runpy``) as ``python examples/segment_unet.py`` would; its IoU and pixel
accuracy functions are checked against counts done by hand.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn import plot
from minicnn.data import mnist

from . import data_fixtures as fx

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "segment_unet.py"
N_TRAIN, N_TEST = 40, 12


def bars(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 28, 28) uint8: a vertical or horizontal bar of 255, its border pixels at 128."""
    images = np.zeros((n, 28, 28), np.uint8)
    for k in range(n):
        a, b = sorted(rng.choice(np.arange(3, 25), 2, replace=False))
        c = rng.integers(4, 20)
        bar = images[k] if rng.random() < 0.5 else images[k].T   # .T: a view, written through
        bar[a - 1:b + 1, c - 1:c + 5] = 128
        bar[a:b, c:c + 4] = 255
    return images


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch):
    """A data folder holding a tiny MNIST ($MINICNN_DATA points at it)."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": bars(N_TRAIN, rng), "y_train": rng.integers(0, 10, N_TRAIN),
              "x_test": bars(N_TEST, rng), "y_test": rng.integers(0, 10, N_TEST)}
    files = {fx.IDX_NAMES[k]: fx.idx_bytes(v) for k, v in arrays.items()}
    fx.write_folder(tmp_path / "data" / "mnist", files)
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(files, N_TRAIN, N_TEST))
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def run_script(args: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return exit_info.value.code


@pytest.mark.parametrize("depth", [2, 3])   # 28 x 28 as it is; padded to 32 x 32 (ignored)
def test_example_trains_and_writes_its_metrics(depth, tiny_mnist, tmp_path, monkeypatch,
                                               capsys):
    out = tmp_path / "out"
    plots = depth == 3 and plot.matplotlib_available()
    args = ["--epochs", "2", "--train-size", "32", "--width", "4", "--depth", str(depth),
            "--batch-size", "8", "--lr", "0.01", "--backend", "numpy", "--out", str(out)]
    assert run_script(args if plots else [*args, "--no-plots"], monkeypatch) == 0
    printed = capsys.readouterr().out
    assert "epoch 2/2: loss" in printed and "foreground IoU" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["foreground_iou"] <= 1.0
    assert 0.0 <= metrics["pixel_accuracy"] <= 1.0
    assert metrics["test_images"] == N_TEST and metrics["train_images"] == 32
    assert metrics["image_size"] == (28 if depth == 2 else 32)
    assert len(metrics["train_loss"]) == 2 and metrics["train_loss"][1] < metrics["train_loss"][0]
    assert f"foreground IoU {metrics['foreground_iou']:.4f}" in printed
    if plots:
        assert (out / "segmentation.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert not (out / "segmentation.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "argument --epochs: must be > 0, got 0"),
    (["--width", "x"], "argument --width: invalid int value: 'x'"),
    (["--noise", "-1"], "argument --noise: must be >= 0, got -1"),
    (["--depth", "5"], "argument --depth: at most 4 for 28 x 28 images, got 5"),
    (["--train-size", "1000"], f"argument --train-size: at most {N_TRAIN} (the training set), "
                               f"got 1000"),
])
def test_a_bad_flag_is_a_one_line_error(args, message, tiny_mnist, tmp_path, monkeypatch,
                                        capsys):
    assert run_script([*args, "--backend", "numpy", "--out", str(tmp_path / "out")],
                      monkeypatch) == 2
    err = capsys.readouterr().err
    assert err == f"segment_unet.py: error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_foreground_iou_and_pixel_accuracy_by_hand():
    example = runpy.run_path(str(SCRIPT))   # its functions, without running main()
    iou, accuracy, ignore = (example["foreground_iou"], example["pixel_accuracy"],
                             example["IGNORE"])
    masks = np.array([[[1, 1, 0],
                       [0, 0, ignore]],
                      [[0, 0, 0],
                       [1, 0, ignore]]])
    predicted = np.array([[[1, 0, 0],
                           [1, 0, 1]],     # the last pixel is unlabelled: it does not count
                          [[0, 0, 0],
                           [1, 0, 1]]])
    # True foreground: 3 pixels; predicted (labelled): 3; both: 2 (image 0 corner, image 1).
    # Union: 3 + 3 - 2 = 4 -> IoU 2/4. Labelled pixels: 10, right: 8 (two wrong in image 0).
    assert iou(predicted, masks) == 0.5
    assert accuracy(predicted, masks) == 0.8
    assert iou(predicted.astype(bool), masks) == 0.5          # booleans work as classes
    assert iou(masks, masks) == 1.0 and iou(1 - (masks == 1), masks) == 0.0
    assert iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 2), int)) == 1.0  # nothing, rightly
