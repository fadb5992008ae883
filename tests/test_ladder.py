"""The lectures' ladder (minicnn.ladder, examples/ladder.py): rung selection, what each rung
builds, the vanishing-gradient picture, and the whole ladder end to end in smoke mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn import ladder
from minicnn import layers as L

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ladder.BUDGETS["smoke"]


def _rung(name: str) -> ladder.Rung:
    return next(r for r in ladder.RUNGS if r.name == name)


def _count(model, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("spec, names", [
    ("1-5", ["1", "2", "3", "4", "5"]),
    ("3,7", ["3", "7"]),
    ("12", ["12a", "12b", "12c", "12d", "12e", "12f", "12g"]),
    ("11-12", ["11", "12a", "12b", "12c", "12d", "12e", "12f", "12g"]),
    ("12c,mnist", ["12c", "mnist", "mnist-bn", "mnist-dropout"]),
])
def test_select_rungs(spec, names):
    assert [r.name for r in ladder.select_rungs(spec)] == names


def test_select_all_and_unknown():
    assert len(ladder.select_rungs("all")) == len(ladder.RUNGS) == 21
    with pytest.raises(ValueError, match="unknown rung '13'.*1-12"):
        ladder.select_rungs("13")


def test_each_rung_changes_one_thing_of_the_one_before():
    r = {x.name: x for x in ladder.RUNGS}
    assert r["1"].model["activation"] == "sigmoid" and r["1"].model["init"] == "glorot_uniform"
    assert r["4"].model == {**r["3"].model, "activation": "relu"}
    assert r["6"].model == r["5"].model and r["6"].normalize and not r["5"].normalize
    assert r["8"].model == {**r["7"].model, "init": "he_normal"}
    assert r["11"].model == r["10"].model and r["11"].lr == 1e-4 and r["10"].lr == 1e-3
    assert r["12a"].model == r["10"].model and r["12a"].noise > 0
    assert r["12e"].augment == "flip+crop" and r["12e"].l2 == r["12c"].l2 > 0


@pytest.mark.parametrize("name, convs, extra", [
    ("1", 2, None), ("2", 3, None), ("3", 9, None), ("5", 12, None),
    ("7", 12, L.BatchNorm2d), ("10", 12 + 4, L.Residual), ("12f", 16, L.InstanceNorm2d),
])
def test_build_gives_the_rungs_network(name, convs, extra):
    model = ladder.build(_rung(name), SMOKE, (3, 32, 32))
    # rung 10 on: a 1x1 projection conv per stage (every stage changes the width)
    assert _count(model, L.Conv2d) == convs
    if extra is not None:
        assert _count(model, extra) > 0
    out = model.forward(np.zeros((2, 3, 32, 32), np.float32))
    assert out.shape == (2, 10)


def test_l2_rung_attaches_a_penalty_to_every_kernel():
    model = ladder.build(_rung("12c"), SMOKE, (3, 32, 32))
    kernels = [m.W for m in model.modules() if isinstance(m, (L.Conv2d, L.Linear))]
    assert kernels and all(w.regularizer is not None for w in kernels)
    assert ladder.build(_rung("10"), SMOKE, (3, 32, 32)).layers[0].body.layers[0].W \
        .regularizer is None


def test_sigmoid_ladder_has_vanishing_gradients_and_batchnorm_relu_does_not():
    # The lecture's picture: 9 sigmoid convs (rung 3) -> the first layer's gradient is orders
    # of magnitude smaller than the last one's; with ReLU + BatchNorm + He (rung 8) it is not.
    rng = np.random.default_rng(0)
    x = rng.random((16, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    budget = {**SMOKE, "width": 0.25}
    ratios = {}
    for name in ("3", "8"):
        norms = [v for k, v in ladder.gradient_norms(ladder.build(_rung(name), budget,
                                                                  (3, 32, 32)), x, y)
                 if k.startswith("conv")]
        ratios[name] = norms[0] / norms[-1]
    assert ratios["3"] < 1e-2
    assert ratios["8"] > 1e-1


def test_smoke_ladder_runs_every_rung_and_writes_the_report(tmp_path):
    out = tmp_path / "ladder"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "ladder.py"), "--smoke",
                           "--out", str(out), "-q", "--backend", "numpy"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = json.loads((out / "ladder.json").read_text())
    assert sorted(state["results"]) == sorted(r.name for r in ladder.RUNGS)
    for r in state["results"].values():
        assert 0 <= r["val_acc"] <= 1 and r["epochs"] == 1 and r["seconds"] > 0
    report = (out / "ladder.md").read_text()
    for r in ladder.RUNGS:
        assert f"| {r.name} | {r.change} |" in report
    assert "## CIFAR-10" in report and "## MNIST" in report
    assert "Gradient norm per layer" in report and "--smoke" in report
    # A second call with a subset keeps the other rungs' results.
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "ladder.py"), "--smoke",
                           "--rungs", "1", "--out", str(out), "-q", "--backend", "numpy"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((out / "ladder.json").read_text())["results"]) == len(ladder.RUNGS)


def test_bad_rung_spec_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "ladder.py"), "--smoke",
                           "--rungs", "99", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown rung '99'" in proc.stderr


def test_ladder_reads_real_format_files(tmp_path, monkeypatch, isolated_data_dirs):
    # The data path of the real budgets: official-format MNIST files placed by hand.
    from minicnn.data import mnist

    from . import data_fixtures as fx

    arrays, files = fx.tiny_mnist(n_train=24, n_test=8)
    monkeypatch.setattr(mnist, "MNIST", fx.tiny_mnist_spec(files, n_train=24, n_test=8))
    fx.write_folder(tmp_path / "data" / "mnist", files)
    monkeypatch.setitem(ladder.BUDGETS, "tiny", {**SMOKE, "mnist_train": 16})
    state = ladder.run_ladder(ladder.select_rungs("mnist-bn"), "tiny",
                              data_root=str(tmp_path / "data"), out=tmp_path / "out",
                              verbose=0)
    result = state["results"]["mnist-bn"]
    assert result["train_images"] == 16 and result["val_images"] == 8
    assert (tmp_path / "out" / "ladder.md").exists()


def test_minicnn_ladder_command(tmp_path, capsys):
    from minicnn import cli

    assert cli.main(["ladder", "--smoke", "--rungs", "1,mnist", "--out", str(tmp_path), "-q",
                     "--backend", "numpy"]) == 0
    assert "4 rungs (smoke)" in capsys.readouterr().out
    state = json.loads((tmp_path / "ladder.json").read_text())
    assert sorted(state["results"]) == ["1", "mnist", "mnist-bn", "mnist-dropout"]
    assert state["command"] == ("minicnn ladder --smoke --rungs 1,mnist --out " + str(tmp_path)
                                + " -q --backend numpy")
    (tmp_path / "ladder.md").unlink()
    assert cli.main(["ladder", "--report-only", "--out", str(tmp_path)]) == 0
    assert "| mnist-bn | with BatchNorm |" in (tmp_path / "ladder.md").read_text()
    with pytest.raises(SystemExit, match="needs .*ladder.json"):
        cli.main(["ladder", "--report-only", "--out", str(tmp_path / "nothing")])
