"""CSVLogger, TensorBoard and the --log flag (minicnn/training/loggers.py).

The TensorBoard files are read back with TensorBoard's own reader (``EventAccumulator``),
not a mock; those tests are skipped where tensorboardX or tensorboard is not installed (the
test extra installs both). Tiny models and data: the file runs in seconds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn as mc
from minicnn import data, losses, models, optim, training
from minicnn.training import Callback, CSVLogger, ModelCheckpoint, TensorBoard, loggers_from_flag
from minicnn.training.history import HISTORY_KEYS
from minicnn.training.loggers import CSV_COLUMNS, filter_grid, parse_log_flag

N, BATCH = 48, 16  # 3 steps per epoch


def tiny_data(n=N, seed=0):
    """uint8 images whose brightness gives away the label (2 classes)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int64)
    x = rng.integers(0, 100, (n, 3, 8, 8)) + 120 * y[:, None, None, None]
    return x.astype(np.uint8), y


def setup(seed=0):
    mc.init.set_seed(seed)
    model = models.vgg(in_channels=3, num_classes=2, image_size=8, widths=(4,), depth=1,
                       hidden=8, batchnorm=True, dropout=0.0)
    x, y = tiny_data()
    train = data.DataLoader(x, y, BATCH, shuffle=True, seed=seed, normalize="symmetric")
    val = data.DataLoader(x, y, 32, shuffle=False, normalize="symmetric")
    return model, optim.Adam(model.parameters(), lr=1e-2), train, val


def run(callbacks, epochs=3, validation=True, **fit_kwargs):
    model, opt, train, val = setup()
    history = training.fit(model, losses.CrossEntropyLoss(), opt, train,
                           val if validation else None, epochs=epochs, callbacks=callbacks,
                           verbose=0, **fit_kwargs)
    return history, model


def read_csv(path, separator=","):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter=separator))


def assert_rows_equal_history(rows, history):
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r[0]) for r in rows[1:]] == history.epoch
    for key, column in zip(HISTORY_KEYS, list(zip(*rows[1:], strict=True))[1:], strict=True):
        expected = history.history[key]
        got = [None if cell == "" else float(cell) for cell in column]
        assert got == expected, key  # exactly: the shortest text that reads back the same


# -- CSVLogger ---------------------------------------------------------------------------------

def test_csv_has_keras_columns_and_the_values_of_history(tmp_path):
    path = tmp_path / "logs" / "log.csv"  # the folder is created
    history, _ = run([CSVLogger(path)])
    rows = read_csv(path)
    assert len(rows) == 1 + 3
    assert rows[0] == ["epoch", "loss", "acc", "val_loss", "val_acc", "lr", "time"]
    assert_rows_equal_history(rows, history)
    assert not [p for p in os.listdir(path.parent) if p.startswith(".tmp-")]


def test_csv_without_validation_leaves_the_validation_cells_empty(tmp_path):
    path = tmp_path / "log.csv"
    history, _ = run([CSVLogger(path)], epochs=2, validation=False)
    rows = read_csv(path)
    assert [r[3:5] for r in rows[1:]] == [["", ""], ["", ""]]
    assert_rows_equal_history(rows, history)


def test_csv_each_row_is_on_disk_when_its_epoch_ends(tmp_path):
    path = tmp_path / "log.csv"

    class Reader(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs):
            rows = read_csv(path)
            self.seen.append((len(rows) - 1, rows[-1][0], float(rows[-1][1]) == logs["loss"]))

    reader = Reader()
    run([CSVLogger(path), reader])
    assert reader.seen == [(1, "1", True), (2, "2", True), (3, "3", True)]


def test_csv_other_separator(tmp_path):
    path = tmp_path / "log.csv"
    history, _ = run([CSVLogger(path, separator=";")], epochs=1)
    assert path.read_text().splitlines()[0] == ";".join(CSV_COLUMNS)
    assert_rows_equal_history(read_csv(path, ";"), history)


@pytest.mark.parametrize("separator", ["", ";;", '"', "\n", 1])
def test_csv_bad_separator_is_refused(separator):
    with pytest.raises(ValueError, match="CSVLogger: separator must be one character"):
        CSVLogger("log.csv", separator=separator)


def test_csv_append_false_starts_a_new_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old,content\n1,2\n")
    history, _ = run([CSVLogger(path)], epochs=1)
    assert_rows_equal_history(read_csv(path), history)


def test_csv_append_continues_a_resumed_run_without_a_second_header(tmp_path):
    path, ckpt = tmp_path / "log.csv", str(tmp_path / "ck-{epoch}.npz")
    run([CSVLogger(path), ModelCheckpoint(ckpt, save_best_only=False)], epochs=3)
    # Resume after epoch 2: the row of epoch 3 of the first run is dropped, 3 and 4 follow.
    model, opt, train, val = setup(seed=5)
    loaded = training.load(ckpt.format(epoch=2), model, opt, loader=train)
    history = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=4,
                           initial_epoch=2, history=loaded.history,
                           callbacks=[CSVLogger(path, append=True)], verbose=0)
    rows = read_csv(path)
    assert [r[0] for r in rows] == ["epoch", "1", "2", "3", "4"]
    assert_rows_equal_history(rows, history)


def test_csv_append_from_the_start_keeps_the_earlier_rows(tmp_path):
    """Keras's append: a second fit from epoch 0 adds its rows after the first's."""
    path = tmp_path / "log.csv"
    first, _ = run([CSVLogger(path, append=True)], epochs=1)  # no file yet: a header
    second, _ = run([CSVLogger(path, append=True)], epochs=2)
    rows = read_csv(path)
    assert [r[0] for r in rows] == ["epoch", "1", "1", "2"]
    assert float(rows[1][1]) == first["loss"][0] and float(rows[3][1]) == second["loss"][1]


def test_csv_append_to_a_foreign_file_is_a_clear_error(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,value\n1,2\n")
    with pytest.raises(ValueError, match=r"log\.csv does not start with the header "
                                         r"'epoch,loss,acc,val_loss,val_acc,lr,time'"):
        run([CSVLogger(path, append=True)], epochs=1)
    assert path.read_text() == "step,value\n1,2\n"  # left as it was


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_csv_file_mode_follows_the_umask(tmp_path, umask, mode):
    path = tmp_path / "log.csv"
    old = os.umask(umask)
    try:
        run([CSVLogger(path)], epochs=1)
        os.remove(path)  # also a file made again by the row append
        logger = CSVLogger(path)
        logger.on_epoch_end(1, dict.fromkeys(HISTORY_KEYS, 1.0))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == mode
    assert read_csv(path)[0] == list(CSV_COLUMNS)


def test_loggers_write_on_rank_zero_only():
    assert CSVLogger.rank_zero_only is True and TensorBoard.rank_zero_only is True


# -- TensorBoard: read back by TensorBoard's own reader ----------------------------------------

def events(log_dir):
    """TensorBoard's reader over every event file in ``log_dir`` (all values kept)."""
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = ea.EventAccumulator(str(log_dir), size_guidance={
        ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.IMAGES: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def f32(values):
    """What TensorBoard stores (float32), read back as Python floats."""
    return [float(np.float32(v)) for v in values]


class Losses(Callback):
    """The batch losses fit hands to callbacks, by global step."""

    def __init__(self):
        self.by_step = {}

    def on_batch_end(self, epoch, step, loss):
        self.by_step[(epoch - 1) * self.state.steps_per_epoch + step] = loss


def test_tensorboard_epoch_scalars_equal_history(tmp_path):
    pytest.importorskip("tensorboardX")
    tb = TensorBoard(tmp_path / "tb")
    history, _ = run([tb], epochs=3)
    assert tb.writer is None  # closed at the end of training
    acc = events(tmp_path / "tb")
    tags = set(acc.Tags()["scalars"])
    assert tags == {f"epoch/{k}" for k in HISTORY_KEYS} | {"epoch/images_per_s"}
    for key in HISTORY_KEYS:
        assert scalars(acc, f"epoch/{key}") == list(zip([1, 2, 3], f32(history[key]),
                                                        strict=True)), key
    speeds = [v for _, v in scalars(acc, "epoch/images_per_s")]
    assert len(speeds) == 3 and all(v > 0 and math.isfinite(v) for v in speeds)
    assert not acc.Tags()["histograms"] and not acc.Tags()["images"]


def test_tensorboard_without_validation_writes_no_validation_tags(tmp_path):
    pytest.importorskip("tensorboardX")
    history, _ = run([TensorBoard(tmp_path)], epochs=1, validation=False)
    tags = set(events(tmp_path).Tags()["scalars"])
    assert "epoch/val_loss" not in tags and "epoch/val_acc" not in tags
    assert scalars(events(tmp_path), "epoch/loss") == [(1, f32(history["loss"])[0])]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_tensorboard_every_n_steps_logs_batch_loss_and_lr_at_global_steps(tmp_path, n):
    pytest.importorskip("tensorboardX")
    model, opt, train, val = setup()
    sched = optim.OneCycleLR(opt, max_lr=0.05, total_steps=9)  # a new rate every step
    seen = Losses()
    training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=3, scheduler=sched,
                 callbacks=[TensorBoard(tmp_path, every_n_steps=n), seen], verbose=0)
    steps = list(range(n, 9 + 1, n))  # 3 epochs of 3 steps: global steps 1..9
    acc = events(tmp_path)
    assert scalars(acc, "batch/loss") == list(zip(steps, f32(seen.by_step[g] for g in steps),
                                                  strict=True))
    # The rate step g used: a twin schedule stepped g - 1 times.
    _, twin_opt, _, _ = setup()
    twin = optim.OneCycleLR(twin_opt, max_lr=0.05, total_steps=9)
    used = {}
    for g in range(1, 10):
        used[g] = twin_opt.lr
        twin.step()
    assert scalars(acc, "batch/lr") == list(zip(steps, f32(used[g] for g in steps),
                                                strict=True))
    assert len(set(used.values())) == 9  # the schedule really moved every step


def test_tensorboard_batch_steps_are_read_without_extra_syncs(tmp_path):
    """With sync_every=2 the losses arrive late, in pairs: the steps still come out right."""
    pytest.importorskip("tensorboardX")
    seen = Losses()
    run([TensorBoard(tmp_path, every_n_steps=1), seen], epochs=2, sync_every=2)
    assert scalars(events(tmp_path), "batch/loss") == [
        (g, float(np.float32(seen.by_step[g]))) for g in range(1, 7)]


def test_tensorboard_resumed_run_continues_the_steps_in_the_same_folder(tmp_path):
    pytest.importorskip("tensorboardX")
    log_dir, ckpt = tmp_path / "tb", str(tmp_path / "ck.npz")
    first, _ = run([TensorBoard(log_dir, every_n_steps=3), ModelCheckpoint(
        ckpt, save_best_only=False)], epochs=2)
    model, opt, train, val = setup(seed=5)
    loaded = training.load(ckpt, model, opt, loader=train)
    history = training.fit(model, losses.CrossEntropyLoss(), opt, train, val, epochs=4,
                           initial_epoch=2, history=loaded.history,
                           callbacks=[TensorBoard(log_dir, every_n_steps=3)], verbose=0)
    acc = events(log_dir)  # two event files, one run
    assert len(os.listdir(log_dir)) == 2
    assert scalars(acc, "epoch/loss") == list(zip([1, 2, 3, 4], f32(history["loss"]),
                                                  strict=True))
    assert [s for s, _ in scalars(acc, "batch/loss")] == [3, 6, 9, 12]


def test_tensorboard_histograms_and_filter_image_when_asked(tmp_path):
    pytest.importorskip("tensorboardX")
    pytest.importorskip("PIL")
    _, model = run([TensorBoard(tmp_path, histograms=True, images=True)], epochs=2)
    acc = events(tmp_path)
    names = [name for name, _ in model.named_parameters()]
    assert set(acc.Tags()["histograms"]) == ({f"weights/{n}" for n in names} |
                                             {f"grads/{n}" for n in names})
    first = names[0]
    hist = acc.Histograms(f"weights/{first}")
    assert [h.step for h in hist] == [1, 2]
    w = dict(model.named_parameters())[first].data
    assert hist[-1].histogram_value.num == w.size
    assert hist[-1].histogram_value.min == pytest.approx(float(w.min()))
    conv_name = first.rsplit(".", 1)[0]
    images = acc.Images(f"filters/{conv_name}")
    grid = filter_grid(dict(model.named_parameters())[first].data)
    assert [i.step for i in images] == [1, 2]
    assert (images[-1].height, images[-1].width) == grid.shape[:2]


def test_tensorboard_without_tensorboardx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails, as if absent
    with pytest.raises(ImportError, match=r"tensorboardX.*pip install 'minicnn\[tensorboard\]'"):
        TensorBoard("runs/tb")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_tensorboard_every_n_steps_must_be_a_positive_integer(bad):
    pytest.importorskip("tensorboardX")
    with pytest.raises(ValueError, match="every_n_steps must be None or an integer >= 1"):
        TensorBoard("runs/tb", every_n_steps=bad)


def test_tensorboard_writes_nothing_before_training(tmp_path):
    pytest.importorskip("tensorboardX")
    TensorBoard(tmp_path / "tb")
    CSVLogger(tmp_path / "log.csv")
    assert os.listdir(tmp_path) == []  # a rank that never trains leaves no files


# -- filter_grid -------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 20), c_in=st.integers(1, 4), k=st.integers(1, 5),
       pad=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_filter_grid_places_each_normalised_filter(n, c_in, k, pad, seed):
    W = np.random.default_rng(seed).standard_normal((n, c_in, k, k)).astype(np.float32)
    grid = filter_grid(W, tile=8, pad=pad)
    s = math.ceil(8 / k)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert grid.dtype == np.float32
    assert grid.shape == (rows * (s * k + pad) + pad, cols * (s * k + pad) + pad, 3)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    i = n - 1  # the last filter, at its tile
    r, c = divmod(i, cols)
    y, x = pad + r * (s * k + pad), pad + c * (s * k + pad)
    w = W[i] if c_in == 3 else np.repeat(W[i].mean(axis=0, keepdims=True), 3, axis=0)
    expected = (w - w.min()) / max(w.max() - w.min(), 1e-12)
    np.testing.assert_allclose(grid[y:y + s * k:s, x:x + s * k:s], expected.transpose(1, 2, 0),
                               atol=1e-6)


def test_filter_grid_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"expected conv weights \(C_out, C_in, KH, KW\), "
                                         r"got shape \(4, 3\)"):
        filter_grid(np.zeros((4, 3)))


# -- the --log flag ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    ("csv", ("csv",)), ("tensorboard", ("tensorboard",)),
    ("csv,tensorboard", ("csv", "tensorboard")), ("tensorboard, CSV", ("tensorboard", "csv")),
    ("none", ()), (" None ", ())])
def test_parse_log_flag(value, words):
    assert parse_log_flag(value) == words


@pytest.mark.parametrize("value, message", [
    ("tb", r"unknown logger 'tb' in 'tb'; expected csv, tensorboard \(comma-separated, e\.g\. "
           r"csv,tensorboard\) or none"),
    ("csv,json", r"unknown logger 'json' in 'csv,json'; expected csv, tensorboard"),
    ("", r"empty logger name in ''"),
    ("csv,", r"empty logger name in 'csv,'"),
    ("csv,csv", r"logger 'csv' named twice"),
    ("none,csv", r"'none' cannot be combined with other loggers"),
])
def test_parse_log_flag_names_the_bad_word_and_the_valid_ones(value, message):
    with pytest.raises(ValueError, match=message):
        parse_log_flag(value)


def test_loggers_from_flag_builds_the_callbacks_under_out_dir(tmp_path):
    assert loggers_from_flag("none", tmp_path) == []
    (csv_logger,) = loggers_from_flag("csv", tmp_path)
    assert isinstance(csv_logger, CSVLogger) and not csv_logger.append
    assert csv_logger.path == os.path.join(tmp_path, "log.csv")
    assert loggers_from_flag("csv", tmp_path, resume=True)[0].append
    pytest.importorskip("tensorboardX")
    pytest.importorskip("PIL")
    callbacks = loggers_from_flag("tensorboard,csv", tmp_path)
    assert [type(c) for c in callbacks] == [TensorBoard, CSVLogger]
    tb = callbacks[0]
    assert tb.log_dir == os.path.join(tmp_path, "tensorboard")
    assert (tb.every_n_steps, tb.histograms, tb.images) == (10, True, True)
    history, _ = run(callbacks, epochs=2)
    assert_rows_equal_history(read_csv(tmp_path / "log.csv"), history)
    acc = events(tmp_path / "tensorboard")
    assert scalars(acc, "epoch/acc") == list(zip([1, 2], f32(history["acc"]), strict=True))
    assert acc.Tags()["histograms"] and acc.Tags()["images"]


def test_loggers_from_flag_without_tensorboardx_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pip install 'minicnn\[tensorboard\]'"):
        loggers_from_flag("csv,tensorboard", tmp_path)


def test_train_with_log_writes_the_csv_and_tensorboard_files(tmp_path):
    # The CLI flag end to end: `minicnn train --log csv,tensorboard` on the smoke data.
    pytest.importorskip("tensorboardX")
    from minicnn import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "mnist", "--smoke", "--no-plots", "-q", "--epochs",
                     "2", "--out", str(out), "--log", "csv,tensorboard"]) == 0
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "epoch,loss,acc,val_loss,val_acc,lr,time" and len(rows) == 3
    # ... and TensorBoard's own reader finds each epoch's loss at its step, as history.json has it
    history = json.loads((out / "history.json").read_text())
    acc = events(out / "tensorboard")
    assert scalars(acc, "epoch/loss") == list(zip([1, 2], f32(history["history"]["loss"]),
                                                 strict=True))
