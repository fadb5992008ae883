"""fit / evaluate / History, callbacks, checkpoints, exact resumption, freezing.

Tiny models (a few channels, 8x8 images) and a few steps, so the file runs in seconds.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import minicnn as mc
from minicnn import data, losses, models, optim, training
from minicnn import layers as L
from minicnn.training import (
    Callback,
    EarlyStopping,
    History,
    ModelCheckpoint,
    NonFiniteLossError,
    TerminateOnNaN,
)


def tiny_data(n=64, seed=0, size=8):
    """uint8 images whose brightness gives away the label (2 classes): learnable in steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int64)
    x = rng.integers(0, 100, (n, 3, size, size)) + 120 * y[:, None, None, None]
    return x.astype(np.uint8), y


def tiny_model(seed=0, dropout=0.0, batchnorm=True):
    mc.init.set_seed(seed)
    return models.vgg(in_channels=3, num_classes=2, image_size=8, widths=(4, 8), depth=1,
                      hidden=8, batchnorm=batchnorm, dropout=dropout)


def loaders(batch_size=16, seed=0, augment=False, n=64):
    x, y = tiny_data(n)
    transform = data.Compose([data.RandomCrop(8, padding=1), data.RandomHorizontalFlip()]) \
        if augment else None
    train = data.DataLoader(x, y, batch_size, shuffle=True, seed=seed, transform=transform,
                            normalize="symmetric")
    val = data.DataLoader(x, y, 32, shuffle=False, normalize="symmetric")
    return train, val


class Recorder(Callback):
    """Logs every hook call, and the batch losses."""

    def __init__(self):
        self.calls, self.losses = [], []

    def on_train_begin(self):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_step_end(self, epoch, step):
        self.calls.append(("step_end", epoch, step))

    def on_batch_end(self, epoch, step, loss):
        assert isinstance(loss, float)
        self.calls.append(("batch_end", epoch, step))
        self.losses.append(loss)

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self):
        self.calls.append(("train_end",))


# -- fit / evaluate / History ------------------------------------------------------------------

def test_fit_returns_keras_shaped_history_and_learns():
    train, val = loaders()
    model = tiny_model()
    opt = optim.Adam(model.parameters(), lr=0.02)
    h = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=4, verbose=0)
    assert set(h.history) == {"loss", "acc", "val_loss", "val_acc", "lr", "time"}
    assert all(len(v) == 4 for v in h.history.values())
    assert h.epoch == [1, 2, 3, 4]
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.history["val_acc"][-1] >= 0.9
    assert h.history["lr"] == [0.02] * 4
    assert all(t > 0 for t in h.history["time"])
    # The last val entry is what evaluate says for the final weights.
    final = training.evaluate(model, val)
    assert final["acc"] == pytest.approx(h.history["val_acc"][-1])
    assert final["loss"] == pytest.approx(h.history["val_loss"][-1])


def test_fit_without_validation_records_none_and_history_json_round_trip(tmp_path):
    train, _ = loaders()
    model = tiny_model()
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     train, epochs=2, verbose=0)
    assert h.history["val_loss"] == [None, None] and h.history["val_acc"] == [None, None]
    h.save_json(tmp_path / "history.json")
    with open(tmp_path / "history.json") as f:
        raw = json.load(f)  # strict JSON: None, never NaN
    assert raw["history"]["loss"] == h.history["loss"]
    back = History.load_json(tmp_path / "history.json")
    assert back.history == h.history and back.epoch == h.epoch


class CountingLoader:
    """A loader wrapper that counts the passes over it."""

    def __init__(self, loader):
        self.loader, self.passes = loader, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)


@pytest.mark.parametrize("freq, validated", [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]),
                                             (5, [5]), ([1, 3], [1, 3, 5]), ((), [5])])
def test_validation_freq_validates_those_epochs_and_always_the_last(freq, validated):
    train, val = loaders()
    val = CountingLoader(val)
    model = tiny_model()
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     train, val, epochs=5, verbose=0, validation_freq=freq)
    val_acc = zip(h.epoch, h.history["val_acc"], strict=True)
    assert [e for e, v in val_acc if v is not None] == validated
    assert all((v is None) == (e not in validated)
               for e, v in zip(h.epoch, h.history["val_loss"], strict=True))
    assert val.passes == len(validated)
    # The same weights whether or not the epochs in between were validated.
    other = tiny_model()
    training.fit(other, losses.CrossEntropyLoss(), optim.SGD(other.parameters(), 0.05),
                 loaders()[0], loaders()[1], epochs=5, verbose=0)
    theirs = other.state_dict()
    assert all(np.array_equal(v, theirs[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("freq", [0, -2, 1.5, "2"])
def test_validation_freq_rejects_what_is_not_an_epoch_count(freq):
    train, val = loaders()
    model = tiny_model()
    with pytest.raises((ValueError, TypeError), match="validation_freq"):
        training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     train, val, epochs=2, verbose=0, validation_freq=freq)


def test_monitors_skip_the_epochs_that_validation_freq_leaves_out(tmp_path):
    train, val = loaders()
    model = tiny_model(batchnorm=False)
    training.freeze(model)  # val_loss constant: no improvement after the first validation
    opt = optim.SGD(model.parameters(), 0.1)
    stopper = EarlyStopping(patience=2)            # default monitor: val_loss, as with freq 1
    plateau = optim.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    best = ModelCheckpoint(tmp_path / "best-{epoch}.npz")
    h = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=12,
                     scheduler=plateau, callbacks=[stopper, best], verbose=0,
                     validation_freq=3)
    # Validated at 3, 6, 9: patience 2 counts validations, so it stops after epoch 9.
    assert h.epoch == list(range(1, 10)) and stopper.stopped_epoch == 9
    assert stopper.monitor == "val_loss" and stopper.best_epoch == 3
    assert best.monitor == "val_acc" and sorted(os.listdir(tmp_path)) == ["best-3.npz"]
    # The plateau schedule steps after validated epochs only: 3 sets its best, 6 halves the
    # lr (logged from epoch 7 on); on a step after every epoch it would halve from epoch 3.
    assert h.history["lr"] == pytest.approx([0.1] * 6 + [0.05] * 3)


def test_training_loss_and_accuracy_are_sample_weighted_means():
    # 40 samples in batches of 16: 16 + 16 + 8. The epoch loss weighs the last batch by 8.
    x, y = tiny_data(40)
    train = data.DataLoader(x, y, 16, shuffle=False, normalize="symmetric")
    model = tiny_model()
    rec = Recorder()
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.0),
                     train, epochs=1, callbacks=[rec], verbose=0)
    expected = (16 * rec.losses[0] + 16 * rec.losses[1] + 8 * rec.losses[2]) / 40
    assert h.history["loss"][0] == pytest.approx(expected)


def test_evaluate_uses_eval_mode_and_restores_modes():
    _, val = loaders()
    model = tiny_model(dropout=0.5)
    bn = next(m for m in model.modules() if isinstance(m, L.BatchNorm2d))
    running = bn.running_mean.copy()
    first = training.evaluate(model, val)
    second = training.evaluate(model, val)
    assert first == second  # Dropout off, running statistics used and not updated
    np.testing.assert_array_equal(bn.running_mean, running)
    assert all(m.training for m in model.modules())
    # Manual computation of the same numbers.
    model.eval()
    logits, labels = training.predict(model, val)
    model.train()
    assert first["acc"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    loss = losses.CrossEntropyLoss().forward(logits, labels)
    assert first["loss"] == pytest.approx(float(loss), rel=1e-5)


def test_predict_arrays_and_loaders_agree():
    _, val = loaders()
    model = tiny_model()
    logits, labels = training.predict(model, val)
    x = np.concatenate([np.asarray(xb) for xb, _ in val])
    np.testing.assert_allclose(training.predict(model, x, batch_size=7), logits, rtol=1e-5,
                               atol=1e-6)
    assert logits.shape == (64, 2) and labels.shape == (64,)


def test_predict_tta_is_the_mean_over_the_image_and_its_mirror():
    _, val = loaders()
    model = tiny_model()
    x = np.concatenate([np.asarray(xb) for xb, _ in val])
    plain, mirrored = training.predict(model, x), training.predict(model, x[..., ::-1].copy())
    tta = training.predict(model, x, tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)
    # the same for an image and its mirror image; and the loader form agrees
    np.testing.assert_allclose(training.predict(model, x[..., ::-1].copy(), tta=True), tta,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(training.predict(model, val, tta=True)[0], tta, rtol=1e-5,
                               atol=1e-6)


def test_predict_flip_shift_adds_the_one_pixel_moves_with_reflected_borders():
    _, val = loaders()
    model = tiny_model()
    x = np.concatenate([np.asarray(xb) for xb, _ in val])
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    down_right, up_left = padded[:, :, :-2, :-2].copy(), padded[:, :, 2:, 2:].copy()
    m = [training.predict(model, v, tta="flip") for v in (x, down_right, up_left)]
    np.testing.assert_allclose(training.predict(model, x, tta="flip+shift"),
                               m[0] / 2 + (m[1] + m[2]) / 4, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tta must be one of"):
        training.predict(model, x, tta="rotate")


def test_verbose_levels(capsys):
    train, val = loaders()
    model = tiny_model()
    opt = optim.SGD(model.parameters(), 0.05)
    training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=1, verbose=0)
    assert capsys.readouterr().out == ""
    training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert "epoch 1/1" in out and "val_acc" in out and "img/s" in out


# -- callbacks ---------------------------------------------------------------------------------

def test_callback_hooks_fire_in_order():
    train, val = loaders(batch_size=32)  # 2 steps per epoch
    model = tiny_model()
    rec = Recorder()
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     train, val, epochs=2, callbacks=[rec], verbose=0)
    names = [c[:3] if c[0] != "epoch_end" else c[:2] for c in rec.calls]
    assert names == [
        ("train_begin",),
        ("epoch_begin", 1), ("step_end", 1, 1), ("batch_end", 1, 1), ("step_end", 1, 2),
        ("batch_end", 1, 2), ("epoch_end", 1),
        ("epoch_begin", 2), ("step_end", 2, 1), ("batch_end", 2, 1), ("step_end", 2, 2),
        ("batch_end", 2, 2), ("epoch_end", 2),
        ("train_end",)]
    logs = [c[2] for c in rec.calls if c[0] == "epoch_end"]
    assert [lg["val_acc"] for lg in logs] == h.history["val_acc"]


def test_batch_losses_are_delayed_but_complete_with_sync_every():
    train, _ = loaders(batch_size=8)  # 8 steps
    model = tiny_model()
    rec = Recorder()
    training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                 train, epochs=1, callbacks=[rec], verbose=0, sync_every=3)
    order = [c[0] for c in rec.calls if c[0] in ("step_end", "batch_end")]
    # Read back after steps 3, 6 and 8 (the last): losses arrive in groups.
    assert order == ["step_end"] * 3 + ["batch_end"] * 3 + ["step_end"] * 3 + \
        ["batch_end"] * 3 + ["step_end"] * 2 + ["batch_end"] * 2
    assert [c[2] for c in rec.calls if c[0] == "batch_end"] == list(range(1, 9))


def test_early_stopping_stops_after_patience_and_restores_best():
    train, val = loaders()
    model = tiny_model(batchnorm=False)
    training.freeze(model)  # nothing changes: val_loss never improves after epoch 1
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.1),
                     train, val, epochs=10, callbacks=[stopper], verbose=0)
    assert h.epoch == [1, 2, 3]
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    assert "EarlyStopping" in h.stop_reason and "val_loss" in h.stop_reason
    assert h.stopped_by == "EarlyStopping" and not h.diverged
    again = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert (again.stopped_by, again.diverged) == ("EarlyStopping", False)


def test_history_saved_before_stopped_by_existed_still_loads():
    old = {"epoch": [1, 2], "history": {"loss": [0.9, 0.8]}, "stop_reason": "EarlyStopping: .."}
    h = History.from_dict(old)
    assert h.epoch == [1, 2] and h["loss"] == [0.9, 0.8]
    assert (h.stop_reason, h.stopped_by, h.diverged) == ("EarlyStopping: ..", None, False)


def test_a_callback_that_says_its_epoch_diverged_drops_the_epoch():
    """fit branches on ``FitState.diverged``, not on the wording of the message."""

    class Abort(Callback):
        def on_batch_end(self, epoch, step, loss):
            if (epoch, step) == (2, 2):
                self.state.stop("weights look broken", by=self, diverged=True)

    train, val = loaders()
    model = tiny_model()
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     train, val, epochs=4, callbacks=[Abort()], verbose=0)
    assert h.epoch == [1]
    assert (h.stop_reason, h.stopped_by, h.diverged) == ("weights look broken", "Abort", True)


def test_early_stopping_restore_best_weights():
    train, val = loaders()
    model = tiny_model()
    # A huge learning rate: the first epoch is the best one, later ones only get worse or
    # equal; whatever happens, the restored weights must give the best val_loss seen.
    stopper = EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.5),
                     train, val, epochs=6, callbacks=[stopper], verbose=0)
    best = min(v for v in h.history["val_loss"])
    assert training.evaluate(model, val)["loss"] == pytest.approx(best, rel=1e-6)


def test_model_checkpoint_best_only_and_every_epoch(tmp_path):
    train, val = loaders()
    model = tiny_model(batchnorm=False)
    training.freeze(model)  # constant metrics: only epoch 1 is an improvement
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_acc")
    every = ModelCheckpoint(str(tmp_path / "ck-{epoch}.npz"), save_best_only=False, note="x")
    training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.1),
                 train, val, epochs=3, callbacks=[best, every], verbose=0)
    assert best.best_epoch == 1
    assert training.load(tmp_path / "best.npz", tiny_model(batchnorm=False)).epoch == 1
    for epoch in (1, 2, 3):
        ckpt = training.load(tmp_path / f"ck-{epoch}.npz", tiny_model(batchnorm=False))
        assert ckpt.epoch == epoch and ckpt.meta == {"note": "x"} and len(ckpt.history) == epoch


def test_schedules_step_at_the_right_time():
    train, val = loaders(batch_size=16)  # 4 steps per epoch
    model = tiny_model()
    opt = optim.SGD(model.parameters(), 0.1)
    step = optim.StepLR(opt, step_size=1, gamma=0.5)
    h = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=3,
                     scheduler=step, verbose=0)
    assert h.history["lr"] == pytest.approx([0.1, 0.05, 0.025])

    opt = optim.SGD(model.parameters(), 0.1)
    cycle = optim.OneCycleLR(opt, max_lr=0.1, total_steps=8)
    training.fit(model, losses.CrossEntropyLoss(), opt, train, epochs=2, scheduler=cycle,
                 verbose=0)
    assert cycle.last_epoch == 8  # stepped once per batch


class PerStepHalving:
    """A user's schedule that declares its own interval (no class name to recognise)."""

    interval = "step"

    def __init__(self, opt):
        self.opt, self.steps = opt, 0

    def step(self):
        self.steps += 1
        self.opt.lr *= 0.5


def test_schedules_declare_their_own_interval():
    assert optim.OneCycleLR.interval == "step"
    assert optim.StepLR.interval == optim.CosineAnnealingLR.interval == "epoch"
    assert optim.ReduceLROnPlateau.interval == "epoch" and optim.ReduceLROnPlateau.needs_metric
    train, _ = loaders(batch_size=16)  # 4 steps per epoch
    model = tiny_model()
    opt = optim.SGD(model.parameters(), 0.1)
    schedule = PerStepHalving(opt)
    training.fit(model, losses.CrossEntropyLoss(), opt, train, epochs=2, scheduler=schedule,
                 verbose=0)
    assert schedule.steps == 8
    # The older spelling of the override still works; a metric schedule cannot go per step.
    assert training.LearningRateScheduler(schedule, interval="batch").interval == "step"
    plateau = optim.ReduceLROnPlateau(optim.SGD(model.parameters(), 0.1))
    with pytest.raises(ValueError, match="ReduceLROnPlateau steps on a metric"):
        training.LearningRateScheduler(plateau, interval="step")


def test_reduce_on_plateau_gets_the_monitored_metric():
    train, val = loaders()
    model = tiny_model(batchnorm=False)
    training.freeze(model)  # val_loss constant: a plateau from epoch 2 on
    opt = optim.SGD(model.parameters(), 0.1)
    plateau = optim.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    h = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=4,
                     scheduler=plateau, verbose=0)
    assert h.history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert plateau.best == pytest.approx(h.history["val_loss"][0])


class NaNAt:
    """A loader wrapper that poisons one batch with NaN, at a given epoch and step."""

    def __init__(self, loader, epoch, step):
        self.loader, self.epoch, self.step, self.count = loader, epoch, step, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.count += 1
        for step, (x, y) in enumerate(self.loader, 1):
            if (self.count, step) == (self.epoch, self.step):
                x = x.copy()
                x[0, 0, 0, 0] = np.nan
            yield x, y


@pytest.mark.parametrize("sync_every", [1, 4])
def test_nan_loss_stops_training_with_a_clear_message(capsys, sync_every):
    train, val = loaders(batch_size=8)  # 8 steps
    model = tiny_model()
    rec = Recorder()
    h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     NaNAt(train, 2, 3), val, epochs=5, callbacks=[rec], verbose=2,
                     sync_every=sync_every)
    assert h.epoch == [1]  # the broken epoch is not recorded
    assert "epoch 2, step 3 of 8" in h.stop_reason and "nan" in h.stop_reason
    assert h.stopped_by == "TerminateOnNaN" and h.diverged
    assert "TerminateOnNaN" in capsys.readouterr().out
    # Stopped at the first read-back that saw the NaN: step 3, or step 4 with sync_every=4.
    last_step = max(c[2] for c in rec.calls if c[0] == "step_end" and c[1] == 2)
    assert last_step == (3 if sync_every == 1 else 4)
    assert rec.calls[-1] == ("train_end",)


def test_nan_guard_can_raise():
    train, _ = loaders(batch_size=8)
    model = tiny_model()
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 2"):
        training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     NaNAt(train, 1, 2), epochs=1, callbacks=[TerminateOnNaN(raise_error=True)],
                     verbose=0)


# -- checkpoints -------------------------------------------------------------------------------

def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    train, val = loaders()
    model = tiny_model(dropout=0.3)
    opt = optim.Adam(model.parameters(), lr=0.01)
    h = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=2, verbose=0)
    path = tmp_path / "sub" / "model.npz"
    training.save(path, model, opt, epoch=2, history=h, dataset="tiny", mean=[0.5])
    assert [f for f in os.listdir(tmp_path / "sub")] == ["model.npz"]  # no temp files left

    with np.load(path, allow_pickle=False) as f:  # plain arrays and strings only
        names = set(f.files)
    assert "param/layers.0.W" in names and "buffer/layers.1.running_var" in names
    assert any(n.startswith("optim/") for n in names)

    other = tiny_model(seed=123, dropout=0.3)
    other_opt = optim.Adam(other.parameters(), lr=0.5)
    ckpt = training.load(path, other, other_opt)
    expected, _ = training.predict(model, val)
    got, _ = training.predict(other, val)
    np.testing.assert_array_equal(got, expected)
    for (_, a), (_, b) in zip(training.named_buffers(model), training.named_buffers(other),
                              strict=True):
        np.testing.assert_array_equal(a, b)
    assert other_opt.lr == 0.01 and other_opt.num_steps == opt.num_steps
    assert ckpt.epoch == 2 and ckpt.meta == {"dataset": "tiny", "mean": [0.5]}
    assert ckpt.history.history == h.history

    rebuilt = training.load(path).model  # from the stored config
    assert rebuilt.config == model.config
    np.testing.assert_array_equal(training.predict(rebuilt, val)[0], expected)


def test_loading_into_another_shape_names_the_first_mismatch(tmp_path):
    model = tiny_model()
    training.save(tmp_path / "m.npz", model)
    mc.init.set_seed(0)
    wider = models.vgg(in_channels=3, num_classes=2, image_size=8, widths=(4, 16), depth=1,
                       hidden=8, batchnorm=True)
    before = [p.data.copy() for p in wider.parameters()]
    with pytest.raises(ValueError, match=r"parameter 'layers.4.W' has shape \(8, 4, 3, 3\) "
                                         r"in the checkpoint but \(16, 4, 3, 3\)"):
        training.load(tmp_path / "m.npz", wider)
    # Nothing was changed by the failed load.
    for p, b in zip(wider.parameters(), before, strict=True):
        np.testing.assert_array_equal(p.data, b)
    deeper = models.vgg(in_channels=3, num_classes=2, image_size=8, widths=(4, 8, 8),
                        depth=1, hidden=8, batchnorm=True)
    with pytest.raises(ValueError, match="does not fit"):
        training.load(tmp_path / "m.npz", deeper)


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model = tiny_model()
    path = tmp_path / "m.npz"
    training.save(path, model, note="first")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        training.save(path, model, note="second")
    monkeypatch.undo()
    assert training.load(path, tiny_model()).meta == {"note": "first"}
    assert os.listdir(tmp_path) == ["m.npz"]


def _run(epochs, initial_epoch=0, resume_from=None, save_to=None, seed=0):
    """One training run of the resume test; returns the losses of every step it trained."""
    model = tiny_model(seed=seed, dropout=0.25)
    train, val = loaders(batch_size=16, seed=seed, augment=True)
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.OneCycleLR(opt, max_lr=0.02, total_steps=3 * len(train))
    history = None
    if resume_from:
        ckpt = training.load(resume_from, model, opt, scheduler=sched, loader=train)
        initial_epoch, history = ckpt.epoch, ckpt.history
    rec = Recorder()
    h = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=epochs,
                     scheduler=sched, callbacks=[rec], verbose=0, initial_epoch=initial_epoch,
                     history=history)
    if save_to:
        training.save(save_to, model, opt, scheduler=sched, loader=train, epoch=epochs,
                      history=h)
    return rec.losses, h


def test_resumed_training_gives_the_same_next_losses(tmp_path):
    # Dropout, shuffling, random crops and flips, Adam moments, OneCycle position, BatchNorm
    # running statistics: all of it must come back from the checkpoint.
    straight, h_straight = _run(epochs=3)
    first, _ = _run(epochs=2, save_to=tmp_path / "ck.npz")
    resumed, h_resumed = _run(epochs=3, resume_from=tmp_path / "ck.npz", seed=99)
    assert first == straight[:len(first)]
    assert resumed == straight[len(first):]  # exactly equal, not approximately
    assert h_resumed.epoch == [1, 2, 3]
    assert h_resumed.history["val_loss"] == h_straight.history["val_loss"]


# -- transfer learning -------------------------------------------------------------------------

def test_frozen_parameters_are_not_updated():
    train, _ = loaders()
    model = tiny_model()
    first_conv = model[0]
    assert training.freeze(first_conv) == 1  # W only: no bias before BatchNorm
    frozen = first_conv.W.data.copy()
    others = [p.data.copy() for p in model.parameters()[1:]]
    training.fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), 0.01),
                 train, epochs=1, verbose=0)
    np.testing.assert_array_equal(first_conv.W.data, frozen)
    assert all(not np.array_equal(p.data, o) for p, o in zip(model.parameters()[1:], others,
                                                             strict=True))
    training.unfreeze(model)
    training.fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), 0.01),
                 train, epochs=1, verbose=0)
    assert not np.array_equal(first_conv.W.data, frozen)
    text = models.summary(model, (3, 8, 8), print_fn=None)
    assert "Non-trainable params: 0" in text


def test_frozen_batchnorm_keeps_its_running_statistics():
    train, _ = loaders()
    model = tiny_model()
    bn = model[1]
    training.freeze(*model[:4])  # conv, BatchNorm, ReLU, pool of the first stage
    running = (bn.running_mean.copy(), bn.running_var.copy())
    second_bn = model[5]
    second_running = second_bn.running_mean.copy()
    training.fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), 0.01),
                 train, epochs=1, verbose=0)
    np.testing.assert_array_equal(bn.running_mean, running[0])
    np.testing.assert_array_equal(bn.running_var, running[1])
    assert not np.array_equal(second_bn.running_mean, second_running)  # trainable: updated


def test_replace_head_for_a_new_task():
    model = tiny_model()
    old_body = [p for p in model.parameters()][:-2]
    head = training.replace_head(model, 5)
    assert isinstance(head, L.Linear) and model[-1] is head
    assert head.W.shape == (8, 5) and model.config["kwargs"]["num_classes"] == 5
    assert model.parameters()[:-2] == old_body
    training.freeze(*model[:-1])
    text = models.summary(model, (3, 8, 8), print_fn=None)
    assert f"Trainable params: {8 * 5 + 5:,}" in text
    x, _ = tiny_data(16)
    y = np.arange(16) % 5
    loader = data.DataLoader(x, y, 8, normalize="symmetric", seed=0)
    frozen = [p.data.copy() for p in model.parameters()[:-2]]
    h = training.fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), 0.01),
                     loader, epochs=2, verbose=0)
    assert all(math.isfinite(v) for v in h.history["loss"])
    for p, f in zip(model.parameters()[:-2], frozen, strict=True):
        np.testing.assert_array_equal(p.data, f)
    with pytest.raises(TypeError, match="Sequential"):
        training.replace_head(L.ReLU(), 3)


def test_fit_skips_the_input_gradient_of_the_first_layer_only_while_fitting():
    # The first conv's dx is never used: fit switches it off, and restores it afterwards.
    model = models.simple_cnn(in_channels=1, num_classes=3, image_size=8, widths=(2, 3))
    first = model.layers[0]
    seen = []
    backward = first.backward

    def spy(dout):
        dx = backward(dout)
        seen.append(dx)
        return dx

    first.backward = spy
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=0.1),
                 data.DataLoader(x, y, batch_size=4, seed=0), epochs=1, verbose=0)
    assert len(seen) == 2 and all(dx is None for dx in seen)
    convs = [m for m in model.modules() if isinstance(m, L.Conv2d)]
    assert len(convs) == 2 and all(c.input_grad is True for c in convs)


# -- the device path (the strict CPU stand-in for CuPy: pytest --strict-device) -----------------

@pytest.mark.strict_device
def test_fit_reads_the_device_once_per_20_steps_with_host_labels():
    """40 steps on "device" images with NumPy labels (CrossEntropyLoss takes them): the
    accuracy counts bring the labels over, and the loop reads its metrics back twice
    (steps 20 and 40), never per step."""
    from tests import strict_device

    mc.set_backend("cupy")
    xp = mc.backend.get_xp()
    model = tiny_model(batchnorm=False)
    x, y = tiny_data(n=160)
    x = (x.astype(np.float32) - 128.0) / 64.0
    batches = [(xp.asarray(x[i:i + 4]), y[i:i + 4]) for i in range(0, 160, 4)]
    with strict_device.record() as rec:
        h = training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                         batches, epochs=1, verbose=0)
    in_loop = [e for e in rec.of("sync") if e.where.startswith("minicnn/training/")]
    assert len(in_loop) <= math.ceil(40 / 20) + 1, rec.report("sync")
    assert 0.0 <= h["acc"][0] <= 1.0 and math.isfinite(h["loss"][0])
    result = training.evaluate(model, batches[:5])
    assert 0.0 <= result["acc"] <= 1.0


@pytest.mark.strict_device
def test_an_out_of_range_device_label_is_named_by_fit_and_evaluate():
    """Device labels are range-checked on the device (no per-step sync); the NaN batch loss
    that a bad one causes makes fit and evaluate ask the loss which label it was."""
    mc.set_backend("cupy")
    xp = mc.backend.get_xp()
    model = tiny_model(batchnorm=False)
    x, y = tiny_data(n=16)
    x = (x.astype(np.float32) - 128.0) / 64.0
    y = y.copy()
    y[11] = 7  # 2 classes
    batches = [(xp.asarray(x[i:i + 4]), xp.asarray(y[i:i + 4])) for i in range(0, 16, 4)]
    with pytest.raises(ValueError, match=r"range \[0, 2\).*got 7"):
        training.fit(model, losses.CrossEntropyLoss(), optim.SGD(model.parameters(), 0.05),
                     batches, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"range \[0, 2\).*got 7"):
        training.evaluate(model, batches)
