"""examples/architectures.py: the timeline table, end to end on tiny data, and its FLOP counter.

No network and no real dataset: a tiny CIFAR-10 (random pixels, python batches as the
official ones) in a temporary $MINICNN_DATA, the CIFAR-10 spec shrunk to its counts. The
script runs in-process (``runpy``) as ``python examples/architectures.py`` would; its
multiply-add counter is checked against counts done by hand.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn import plot
from minicnn.data import cifar

from . import data_fixtures as fx

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "architectures.py"
PER_BATCH, N_TEST = 8, 12


@pytest.fixture(scope="module")
def script():
    """The script's functions (run as a module, not as __main__)."""
    return runpy.run_path(str(SCRIPT))


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """A data folder holding a tiny CIFAR-10 ($MINICNN_DATA points at it)."""
    _, pickles = fx.tiny_cifar(PER_BATCH, N_TEST)
    fx.write_folder(tmp_path / "data" / "cifar10" / "cifar-10-batches-py", pickles)
    monkeypatch.setattr(cifar, "CIFAR10", fx.tiny_cifar_spec(None, PER_BATCH, N_TEST))
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def run_script(args: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return exit_info.value.code


def test_example_writes_the_table(tiny_cifar, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    plots = plot.matplotlib_available()
    args = ["--models", "lenet5,mobilenet_v1", "--budget-minutes", "0.005", "--batch-size", "8",
            "--train-size", "32", "--out", str(out)]
    assert run_script(args if plots else [*args, "--no-plots"], monkeypatch) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "architectures.json").read_text())
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["lenet5", "mobilenet_v1"]
    assert result["train_images"] == 32 and result["test_images"] == N_TEST
    for r in rows:
        assert r["test_images"] == N_TEST and 0.0 <= r["test_accuracy"] <= 1.0
        assert r["steps"] >= 1 and r["step_ms"] > 0 and r["flops"] == 2 * r["macs"] > 0
        model = mc.models.build(**r["config"])
        assert model.input_shape == (3, 32, 32)
        assert r["parameters"] == sum(p.data.size for p in model.parameters())
    table = (out / "architectures.md").read_text()
    assert "test accuracy after 0.005 min CPU" in table and "CPU step, batch 8 (ms)" in table
    assert table.count("\n| 19") == 1 and table.count("\n| 20") == 1   # one row per model
    assert f"{rows[0]['test_accuracy']:.2%}" in table and table in printed
    assert (out / "accuracy_vs_params.png").exists() == plots


def test_the_multiply_add_counter_against_hand_counts(script):
    count_macs = script["count_macs"]
    model = L.Sequential(
        L.Conv2d(3, 4, 3, padding=1),                  # 8x8x4 outputs x 3*9       = 6,912
        L.ReLU(), L.MaxPool2d(2),                      # -> 4 x 4 x 4
        L.Concat(L.Identity(),                         # a branch inside a container:
                 L.Conv2d(4, 4, 1)),                   # 4x4x4 outputs x 4         =   256
        L.Conv2d(8, 8, 3, groups=2),                   # 2x2x8 outputs x (8/2)*9   = 1,152
        L.ConvTranspose2d(8, 6, 2, stride=2, groups=2),  # 2x2x8 inputs x (6/2)*4  =   384
        L.Flatten(), L.Linear(6 * 4 * 4, 5))           # 96 x 5                    =   480
    macs, by_type = count_macs(model, (3, 8, 8))
    assert by_type == {"Conv2d": 6912 + 256 + 1152, "ConvTranspose2d": 384, "Linear": 480}
    assert macs == 6912 + 256 + 1152 + 384 + 480
    assert not any("forward" in vars(m) for m in model.modules())   # the hooks are gone
    # LeNet-5 on a 3x32x32 image: 28*28*6*3*25 + 10*10*16*6*25 + 400*120 + 120*84 + 84*10.
    lenet = mc.models.build("lenet5", script["cifar_kwargs"]("lenet5"))
    assert count_macs(lenet, (3, 32, 32))[0] == 352_800 + 240_000 + 48_000 + 10_080 + 840


def test_every_timeline_model_has_its_year_and_idea(script):
    assert set(script["IDEAS"]) == set(mc.models.TIMELINE)


@pytest.mark.parametrize("args, message", [
    (["--budget-minutes", "0"], "argument --budget-minutes: must be > 0, got 0"),
    (["--models", "lenet5,alexnett"], "argument --models: unknown model(s) alexnett"),
    (["--batch-size", "x"], "argument --batch-size: invalid int value: 'x'"),
    (["--train-size", "1000"], "argument --train-size: at most 40, got 1000"),
])
def test_a_bad_flag_is_one_line(args, message, tiny_cifar, tmp_path, monkeypatch, capsys):
    assert run_script([*args, "--out", str(tmp_path / "out")], monkeypatch) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("architectures.py")
    assert not (tmp_path / "out" / "architectures.json").exists()


def test_the_step_time_is_a_median_of_timed_steps(script, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), np.arange(4) % 10
    assert script["step_time"]("lenet5", x, y, 0) > 0
