"""Host-sync and copy budgets of training on the GPU path, counted by the strict stand-in.

On a GPU every read of a number (``float(loss)``, a boolean mask, ``.item()``) makes the host
wait for the device's queue to drain, and every host->device copy crosses PCIe; both belong
outside the step. These tests run the real ``fit`` (and the CIFAR-10 GPU preset) on the strict
CPU stand-in for CuPy (``--strict-device``), which counts both with the minicnn line that
caused them; a failure prints that table. They skip without the stand-in.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

import minicnn as mc
from minicnn import data, losses, optim, training
from minicnn import layers as L

pytestmark = pytest.mark.cupy

STEPS = 40
BATCH = 8
KIB = 1024


def _small_model() -> L.Sequential:
    mc.init.set_seed(0)
    return L.Sequential(
        L.Conv2d(1, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Dropout(0.2), L.Linear(4 * 4 * 4, 10))


def _fit_40_steps(strict):
    """fit for one epoch of 40 steps (augmentation, Dropout, BatchNorm, SGD + one-cycle);
    returns the recorder of the fit call only (construction copies are not steps)."""
    x, y = data.synthetic(STEPS * BATCH, (1, 8, 8), seed=0)
    loader = data.DataLoader(
        x, y, BATCH, seed=0, normalize="symmetric",
        transform=data.Compose([data.RandomCrop(8, padding=1), data.RandomHorizontalFlip()]))
    model = _small_model()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                    weight_decay=5e-4)
    sched = optim.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)
    assert len(loader) == STEPS
    with strict.record() as rec:
        history = training.fit(model, losses.CrossEntropyLoss(label_smoothing=0.1), opt,
                               loader, epochs=1, scheduler=sched, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    return rec


def test_fit_reads_back_once_per_20_steps(strict_cupy):
    """At most ceil(40/20) + 1 host syncs in 40 steps: the metric read-backs, none per step."""
    rec = _fit_40_steps(strict_cupy)
    budget = math.ceil(STEPS / 20) + 1
    assert rec.syncs <= budget, (
        f"fit made {rec.syncs} host syncs in {STEPS} steps (budget {budget}):\n"
        f"{rec.report('sync')}")


def test_fit_sends_under_64_kib_per_step_to_the_device(strict_cupy):
    """The dataset lives on the device (DataLoader): per step, only a few random parameters
    and scalars may cross, well under 64 KiB."""
    rec = _fit_40_steps(strict_cupy)
    per_step = rec.h2d_bytes / STEPS
    assert per_step < 64 * KIB, (
        f"{per_step / KIB:.1f} KiB host->device per step (budget 64 KiB):\n{rec.report('h2d')}")


def _presets():
    """PRESETS from minicnn/presets.py (its home from now on) or minicnn/cli.py (before)."""
    try:
        return importlib.import_module("minicnn.presets")
    except ImportError:
        return importlib.import_module("minicnn.cli")


def test_cifar10_gpu_preset_epoch_passes_on_the_stand_in(strict_cupy, tmp_path, capsys):
    """One epoch of the CIFAR-10 GPU preset, as ``minicnn train`` runs it (its loader,
    augmentation, normalisation, optimizer, schedule, label smoothing, checkpoint and
    evaluation) with the preset's own model, on 32 tiny synthetic images. What the step
    costs in syncs is asserted above; here: the whole job runs under CuPy's rules."""
    from minicnn import cli

    presets = _presets()
    preset = presets.PRESETS["cifar10"]["gpu"]
    tiny, sizes = presets.TINY_MODEL_KWARGS, presets.SMOKE_SIZES  # the dicts --smoke reads
    original_tiny, original_sizes = tiny.get(preset["model"]), dict(sizes)
    # --smoke swaps in a tiny model; keep the preset's own one (widths 64-128-256) instead.
    tiny[preset["model"]] = dict(preset["model_kwargs"])
    sizes.update(train=32, test=16, batch_size=16)
    try:
        with strict_cupy.record() as rec:
            code = cli.main(["train", "--dataset", "cifar10", "--smoke", "--backend", "cupy",
                             "--preset", "gpu", "--epochs", "1", "--out", str(tmp_path),
                             "--quiet", "--no-plots"])
    finally:
        tiny[preset["model"]] = original_tiny
        sizes.clear()
        sizes.update(original_sizes)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test accuracy:" in out
    trained = training.load(str(tmp_path / "model.npz")).model
    assert trained.num_parameters() > 1_000_000  # the preset's VGG, not a smoke-test model
    # Reading back is for the loop's metric flushes and the end of the job (predict, the
    # checkpoint): never in the code a step runs (layers, losses, transforms, the loader).
    step_code = ("minicnn/layers/", "minicnn/functional/", "minicnn/kernels/",
                 "minicnn/losses.py", "minicnn/data/", "minicnn/regularizers.py")
    in_steps = [e for e in rec.of("sync") if e.where.startswith(step_code)]
    assert not in_steps, "host syncs in step code:\n" + "\n".join(
        f"{e.what} at {e.where}" for e in in_steps[:12])
