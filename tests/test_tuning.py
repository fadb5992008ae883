"""Tests of minicnn.tuning: initial-loss check, small-sample overfit, LR range test, search.

Everything runs on tiny problems: three 2-D Gaussian blobs (as (N, 2, 1, 1) "images" so that
the DataLoader takes them) and an 8x8 conv net.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import types
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import layers as L
from minicnn import tuning as T
from minicnn.backend import to_numpy
from minicnn.data.loader import DataLoader
from minicnn.plot import matplotlib_available

# -- tiny data and models (top level: the parallel search pickles them) ------------------------

CENTERS = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], dtype=np.float32)


def blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian blobs, x (n, 2, 1, 1) float32 and y (n,) int64."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = CENTERS[y] + 0.5 * rng.standard_normal((n, 2)).astype(np.float32)
    return x.reshape(n, 2, 1, 1).astype(np.float32), y.astype(np.int64)


def mlp(hidden: int = 16, dropout: float = 0.0) -> L.Sequential:
    # Dropout seeded from the initialisers' generator, as minicnn.models does: set_seed
    # then fixes its masks too (FitObjective relies on that for reproducible trials).
    drop = L.Dropout(dropout, seed=int(mc.init.get_rng().integers(2**63)))
    return L.Sequential(L.Flatten(), L.Linear(2, hidden), L.ReLU(), drop, L.Linear(hidden, 3))


def tiny_cnn(num_classes: int = 10) -> L.Sequential:
    return L.Sequential(L.Conv2d(1, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(),
                        L.MaxPool2d(2), L.Flatten(), L.Linear(4 * 4 * 4, num_classes))


def quadratic_objective(params: dict, budget: int, seed: int) -> dict:
    """A cheap objective with noise from the trial's seed: best near lr = 1e-2, dropout 0.2."""
    noise = np.random.default_rng(seed).normal(0.0, 0.01)
    score = (math.log10(params["lr"]) + 2.0) ** 2 + (params["dropout"] - 0.2) ** 2 + noise
    return {"score": score / budget, "budget": budget}


def failing_objective(params: dict, budget: int, seed: int) -> float:
    if params["batch_size"] == 64:
        raise RuntimeError("out of memory")
    return params["lr"]


def pid_objective(params: dict, budget: int, seed: int) -> dict:
    """Says which process ran the trial."""
    return {"score": params["lr"], "pid": os.getpid()}


def snapshot(model: mc.Layer) -> list[np.ndarray]:
    """Host copies of every parameter and buffer (device arrays go through to_numpy: CuPy
    refuses the implicit conversion np.testing would make)."""
    return [to_numpy(v).copy() for v in model.state_dict().values()]


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.fixture
def data():
    return blobs(256)


# -- check_initial_loss ------------------------------------------------------------------------

def test_initial_loss_fresh_model_is_near_ln_c(xp, data):
    mc.init.set_seed(0)
    model = mlp()
    x, y = data
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        result = T.check_initial_loss(model, DataLoader(x, y, 64, seed=0))
    assert result.ok
    assert result.num_classes == 3 and result.num_samples == 256
    assert result.expected == pytest.approx(math.log(3))
    assert result.ratio == pytest.approx(result.loss / math.log(3))
    assert 0.5 < result.ratio < 2.0
    assert_same(before, snapshot(model))


def test_initial_loss_warns_for_large_last_layer(data):
    mc.init.set_seed(0)
    model = mlp()
    model.layers[-1].W.data *= 100.0
    x, y = data
    with pytest.warns(T.InitialLossWarning, match=r"ln\(3\).*init scale"):
        result = T.check_initial_loss(model, DataLoader(x, y, 64, seed=0))
    assert not result.ok
    assert result.ratio > 2.0
    assert "FAR OFF" in str(result)


def test_initial_loss_leaves_batchnorm_and_modes_alone():
    mc.init.set_seed(0)
    model = tiny_cnn()
    model.eval()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 1, 8, 8), dtype=np.uint8)
    before = snapshot(model)
    result = T.check_initial_loss(model, DataLoader(x, rng.integers(0, 10, 32), 16),
                                  warn=False)
    assert math.isfinite(result.loss) and result.num_classes == 10
    assert_same(before, snapshot(model))
    assert not any(m.training for m in model.modules())


def test_initial_loss_errors():
    model = mlp()
    with pytest.raises(ValueError, match="no batches"):
        T.check_initial_loss(model, [])
    with pytest.raises(ValueError, match="factor"):
        T.check_initial_loss(model, [blobs(4)], factor=1.0)


# -- overfit_small_batch -----------------------------------------------------------------------

def test_overfit_reaches_100_percent_on_a_few_samples(xp):
    mc.init.set_seed(0)
    model = tiny_cnn()
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((20, 1, 8, 8)).astype(np.float32))
    y = xp.asarray(np.arange(20) % 10)  # random images, arbitrary labels: pure memorisation
    before = snapshot(model)
    result = T.overfit_small_batch(model, x, y, steps=300)
    assert result.reached and result.acc == 1.0
    assert 0 < result.steps <= 300 and len(result.losses) == result.steps
    assert result.num_samples == 20
    assert result.losses[-1] < result.losses[0]
    assert_same(before, snapshot(model))  # copy=True: the model given is untouched
    assert result.model is not model


def test_overfit_from_loader_in_place(data):
    mc.init.set_seed(1)
    model = mlp()
    x, y = data
    before = snapshot(model)
    result = T.overfit_small_batch(model, DataLoader(x, y, 8, seed=0), num_batches=2,
                                   copy=False)
    assert result.reached and result.num_samples == 16
    assert result.model is model
    assert any(not np.array_equal(a, b) for a, b in zip(before, snapshot(model), strict=True))


def test_overfit_reports_failure_with_a_frozen_zero_output_layer(data):
    mc.init.set_seed(0)
    model = mlp()
    head = model.layers[-1]
    head.W.data[...] = 0.0
    mc.training.freeze(head)  # logits stay 0: every sample predicts class 0
    x, y = data
    result = T.overfit_small_batch(model, x[:12], y[:12], steps=30)
    assert not result.reached
    assert result.steps == 30
    assert result.acc == pytest.approx(float(np.mean(y[:12] == 0)))


def test_overfit_with_device_images_and_host_labels(xp):
    """A loader may yield NumPy labels with device images (CrossEntropyLoss takes them): the
    accuracy count must bring the labels to the logits' device."""
    mc.init.set_seed(0)
    model = mlp()
    x, y = blobs(24)
    result = T.overfit_small_batch(model, xp.asarray(x), y, steps=200)
    assert result.reached and result.acc == 1.0


def test_overfit_errors(data):
    x, y = data
    with pytest.raises(ValueError, match="same length"):
        T.overfit_small_batch(mlp(), x[:5], y[:4])
    model = mlp()
    mc.training.freeze(model)
    with pytest.raises(ValueError, match="no trainable parameters"):
        T.overfit_small_batch(model, x[:5], y[:5])


# -- lr_range_test -----------------------------------------------------------------------------

def test_lr_range_suggestion_lies_where_the_loss_goes_down(xp, data):
    mc.init.set_seed(0)
    model = mlp()
    x, y = data
    before = snapshot(model)
    result = T.lr_range_test(model, DataLoader(x, y, 32, seed=0), lr_min=1e-5, lr_max=10.0,
                             steps=100)
    assert_same(before, snapshot(model))
    assert all(p.grad is None for p in model.parameters())
    lrs, smoothed = np.array(result.lrs), np.array(result.smoothed)
    assert np.all(np.diff(lrs) > 0) and lrs[0] == pytest.approx(1e-5)
    assert len(result.losses) == len(result.smoothed) == result.steps
    assert result.suggestion is not None and result.method == "steepest"
    k = int(np.argmin(np.abs(lrs - result.suggestion)))
    assert lrs[k] == pytest.approx(result.suggestion)
    # Below the minimum of the curve, where the loss is already lower than at the start.
    assert result.suggestion < result.lr_min_loss
    assert smoothed[k] < smoothed[0]
    assert smoothed[k + 1] < smoothed[k - 1]  # falling there
    # And a useful value: training with it learns the blobs.
    mc.init.set_seed(0)
    fresh = mlp()
    opt = mc.optim.Adam(fresh.parameters(), lr=result.suggestion)
    hist = mc.training.fit(fresh, mc.losses.CrossEntropyLoss(), opt,
                           DataLoader(x, y, 32, seed=0), epochs=3, verbose=0)
    assert hist["acc"][-1] > 0.9


def test_lr_range_min_over_10_and_sgd_factory(data):
    mc.init.set_seed(0)
    x, y = data
    result = T.lr_range_test(mlp(), DataLoader(x, y, 32, seed=0),
                             optimizer=functools.partial(mc.optim.SGD, momentum=0.9),
                             lr_min=1e-4, lr_max=100.0, steps=60, method="min/10")
    assert result.method == "min/10"
    assert result.suggestion == pytest.approx(result.lr_min_loss / 10)


def test_lr_range_stops_when_the_loss_diverges(data):
    mc.init.set_seed(0)
    model = mlp()
    x, y = data
    before = snapshot(model)
    result = T.lr_range_test(model, DataLoader(x, y, 32, seed=0), lr_min=1e-4, lr_max=1e8,
                             steps=200)
    assert result.diverged and result.steps < 200
    last = result.smoothed[-1]
    assert not math.isfinite(last) or last > 4.0 * min(result.smoothed[:-1])
    assert_same(before, snapshot(model))


def test_lr_range_cycles_a_short_loader_and_checks_arguments(data):
    x, y = data
    batches = [(x[:16], y[:16])]  # one batch: reused at every step
    result = T.lr_range_test(mlp(), batches, lr_min=1e-6, lr_max=1e-3, steps=10)
    assert result.steps == 10 and not result.diverged
    for kwargs in ({"lr_min": 1.0, "lr_max": 0.1}, {"steps": 1}, {"method": "valley"},
                   {"beta": 1.0}):
        with pytest.raises(ValueError, match="lr_range_test"):
            T.lr_range_test(mlp(), batches, **kwargs)
    with pytest.raises(ValueError, match="no batches"):
        T.lr_range_test(mlp(), [], steps=5)


@pytest.mark.skipif(not matplotlib_available(), reason="matplotlib is not installed")
def test_lr_range_plot_writes_a_png(tmp_path, data):
    mc.init.set_seed(0)
    x, y = data
    result = T.lr_range_test(mlp(), DataLoader(x, y, 32, seed=0), lr_min=1e-5, lr_max=10.0,
                             steps=50)
    path = tmp_path / "lr.png"
    fig = result.plot(path)
    assert fig.axes[0].get_xscale() == "log"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    plt.close(fig)


# -- distributions and random_search -----------------------------------------------------------

SPACE = {"lr": T.LogUniform(1e-4, 1e-1), "dropout": T.Uniform(0.0, 0.5),
         "batch_size": T.Choice([64, 128]), "width": T.IntUniform(8, 10), "momentum": 0.9}


@settings(max_examples=20)
@given(low_exp=st.floats(-8, 0), decades=st.floats(0.5, 6), seed=st.integers(0, 2**32 - 1))
def test_log_uniform_in_range_and_spread_in_log_space(low_exp, decades, seed):
    low, high = 10.0 ** low_exp, 10.0 ** (low_exp + decades)
    dist = T.LogUniform(low, high)
    rng = np.random.default_rng(seed)
    v = np.array([dist.sample(rng) for _ in range(2000)])
    assert np.all((v >= low * (1 - 1e-12)) & (v <= high * (1 + 1e-12)))
    # log10 of the samples is uniform on [low_exp, low_exp + decades]: each quarter ≈ 25 %.
    u = (np.log10(v) - low_exp) / decades
    counts = np.histogram(u, bins=4, range=(0.0, 1.0))[0] / len(v)
    assert np.all(np.abs(counts - 0.25) < 0.05)


def test_sample_configs_types_ranges_and_fixed_values():
    configs = T.sample_configs(SPACE, 200, seed=3)
    assert len(configs) == 200
    for c in configs:
        assert list(c) == list(SPACE)
        assert 1e-4 <= c["lr"] <= 1e-1 and 0.0 <= c["dropout"] <= 0.5
        assert c["batch_size"] in (64, 128) and c["width"] in (8, 9, 10)
        assert c["momentum"] == 0.9
    assert {c["batch_size"] for c in configs} == {64, 128}
    assert {c["width"] for c in configs} == {8, 9, 10}
    assert T.sample_configs(SPACE, 5, seed=3) == configs[:5]
    for bad in (lambda: T.LogUniform(0.0, 1.0), lambda: T.Uniform(1.0, 0.0),
                lambda: T.IntUniform(3, 2), lambda: T.Choice([])):
        with pytest.raises(ValueError):
            bad()


def test_random_search_reproducible_and_sorted():
    a = T.random_search(quadratic_objective, SPACE, trials=12, budget=2, seed=7, workers=1)
    b = T.random_search(quadratic_objective, SPACE, trials=12, budget=2, seed=7, workers=1)
    c = T.random_search(quadratic_objective, SPACE, trials=12, budget=2, seed=8, workers=1)
    assert a.table() == b.table()
    assert [t["seed"] for t in a] == [t["seed"] for t in b]
    assert [t["lr"] for t in a] != [t["lr"] for t in c]
    scores = [t["score"] for t in a]
    assert scores == sorted(scores) and len(a) == 12
    assert sorted(t["trial"] for t in a) == list(range(12))
    assert a.best is a[0] and a.best_params == {k: a[0][k] for k in SPACE}
    assert all(t["budget"] == 2 and t["error"] is None for t in a)
    # The score is the objective's value for that configuration and seed.
    best = a.best
    assert best["score"] == pytest.approx(
        quadratic_objective(a.best_params, 2, best["seed"])["score"])
    lines = a.table().splitlines()
    assert lines[0].split()[:3] == ["rank", "trial", "lr"] and len(lines) == 14
    high = T.random_search(quadratic_objective, SPACE, trials=12, budget=2, seed=7,
                           workers=1, mode="max")
    assert [t["score"] for t in high] == sorted(scores, reverse=True)


def test_random_search_failed_trials_go_last():
    space = {"lr": T.Uniform(0.0, 1.0), "batch_size": T.Choice([64, 128])}
    result = T.random_search(failing_objective, space, trials=10, seed=0, workers=1)
    failed = [t for t in result if t["error"] is not None]
    assert failed and all("out of memory" in t["error"] for t in failed)
    assert result.trials[-len(failed):] == failed
    ok = [t["score"] for t in result.trials[:-len(failed)]]
    assert ok == sorted(ok)
    assert "error" in result.table()


def test_random_search_errors():
    with pytest.raises(ValueError, match="mode"):
        T.random_search(quadratic_objective, SPACE, mode="best")
    with pytest.raises(ValueError, match="trials"):
        T.random_search(quadratic_objective, SPACE, trials=0)
    with pytest.raises(TypeError, match="callable"):
        T.random_search("train.py", SPACE)
    result = T.random_search(quadratic_objective, SPACE, trials=2, workers=1, metric="acc")
    assert all("KeyError" in t["error"] for t in result)


def test_random_search_fit_objective_parallel_matches_serial():
    x, y = blobs(96, seed=1)
    xv, yv = blobs(64, seed=2)
    objective = T.FitObjective(mlp, x, y, xv, yv)
    space = {"lr": T.LogUniform(1e-3, 1e-1), "dropout": T.Uniform(0.0, 0.3),
             "batch_size": T.Choice([16, 32]), "hidden": T.Choice([8, 16])}
    serial = T.random_search(objective, space, trials=4, budget=2, seed=0, workers=1,
                             metric="val_loss")
    parallel = T.random_search(objective, space, trials=4, budget=2, seed=0, workers=2,
                               metric="val_loss")
    assert serial.table() == parallel.table()
    assert all(t["error"] is None for t in serial)
    assert {"val_loss", "val_acc", "loss", "acc"} <= set(serial.best)
    assert serial.best["val_acc"] > 0.5  # 2 epochs on separable blobs: clearly learning


def test_random_search_spawns_workers_once_cupy_is_imported(monkeypatch):
    """CUDA does not survive fork: once CuPy is in sys.modules, workers are spawned (fresh
    interpreters, on this process's backend), and give the same table as a serial run."""
    serial = T.random_search(quadratic_objective, SPACE, trials=3, budget=2, seed=5, workers=1)
    monkeypatch.delitem(sys.modules, "cupy", raising=False)  # (the strict stand-in is one)
    assert T.search._worker_context().get_start_method() != "spawn"
    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))  # as after `import cupy`
    assert T.search._worker_context().get_start_method() == "spawn"
    spawned = T.random_search(quadratic_objective, SPACE, trials=3, budget=2, seed=5, workers=2)
    assert spawned.table() == serial.table()


def test_random_search_runs_serially_by_default_on_cupy(xp):
    """One GPU: parallel trials would only compete for it, so the default is one process."""
    result = T.random_search(pid_objective, {"lr": T.LogUniform(1e-3, 1e-1)}, trials=2)
    in_this_process = all(t["pid"] == os.getpid() for t in result)
    assert in_this_process == (xp is not np or (os.cpu_count() or 1) == 1)


def test_fit_objective_builder_name_and_bad_optimizer():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, 16)
    objective = T.FitObjective("simple_cnn", x, y, x, y,
                               model_kwargs={"image_size": 8, "widths": (4,), "hidden": 8})
    out = objective({"lr": 1e-3, "batch_size": 8, "optimizer": "sgd"}, 1, 0)
    assert set(out) == {"val_loss", "val_acc", "loss", "acc"}
    assert all(math.isfinite(v) for v in out.values())
    assert out == objective({"lr": 1e-3, "batch_size": 8, "optimizer": "sgd"}, 1, 0)
    bad = T.FitObjective(mlp, *blobs(8), *blobs(8))
    with pytest.raises(ValueError, match="optimizer"):
        bad({"optimizer": "lbfgs"}, 1, 0)
