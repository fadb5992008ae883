"""Training logs other tools read: ``CSVLogger`` (a spreadsheet) and ``TensorBoard``.

Both are callbacks (``fit(..., callbacks=[...])``) that only write: they never change the
run, and in data-parallel training only rank 0 writes (``rank_zero_only``), with the metrics
``fit`` has already summed over the ranks.

``CSVLogger(path)``
    One row per epoch, Keras's columns ``epoch, loss, acc, val_loss, val_acc, lr, time``
    (the ``History`` entry; an empty cell where a value is missing, e.g. without validation
    data). Each row is appended, flushed and fsynced as its epoch ends, so the file can be
    read (``pandas.read_csv``, a spreadsheet, ``tail -f``) at any time.
``TensorBoard(log_dir)``
    An event file for TensorBoard (through the ``tensorboardX`` package): the same values as
    scalars ``epoch/<key>`` at step = the epoch number, plus ``epoch/images_per_s``; with
    ``every_n_steps=N`` the batch loss and learning rate as ``batch/loss``, ``batch/lr`` at
    every N-th optimizer step; optional weight and gradient histograms and the first
    convolution's filters as a picture. Open it with ``tensorboard --logdir LOG_DIR``.

``loggers_from_flag("csv,tensorboard", out_dir)`` builds them for ``minicnn train --log``.

Steps and epochs are counted from 1, as in ``History.epoch``: epoch e's scalars sit at step
e; the global step of batch s of epoch e is ``(e - 1) * steps_per_epoch + s``, so a resumed
run continues both axes.

Tests: tests/test_loggers.py (read back with TensorBoard's own ``EventAccumulator``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._io import atomic_write, new_file_mode
from ..backend import to_numpy
from ..layers.conv import Conv2d
from .callbacks import Callback
from .history import HISTORY_KEYS

__all__ = ["CSVLogger", "TensorBoard", "CSV_COLUMNS", "LOGGERS", "parse_log_flag",
           "loggers_from_flag", "filter_grid"]

CSV_COLUMNS = ("epoch", *HISTORY_KEYS)
"""The header of ``CSVLogger``'s file: ``epoch, loss, acc, val_loss, val_acc, lr, time``."""

LOGGERS = ("csv", "tensorboard")
"""The words ``--log`` accepts (comma-separated), besides ``none``."""

TENSORBOARD_INSTALL = "pip install 'minicnn[tensorboard]' (or: pip install tensorboardX pillow)"


# -- CSV ---------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    """A number as the shortest text that reads back to the same float; None as ''."""
    return "" if value is None else repr(float(value))


class CSVLogger(Callback):
    """One CSV row per epoch: ``epoch, loss, acc, val_loss, val_acc, lr, time``.

    The values are the ``History`` entry of the epoch (``logs`` of ``on_epoch_end``), each
    written as the shortest decimal text that reads back to the same float64
    (``float(cell) == history[key][i]``); a missing value (no validation data: ``val_loss``,
    ``val_acc``) is an empty cell. ``epoch`` counts from 1, as ``History.epoch`` does.

    Parameters
    ----------
    path : str or PathLike
        The file; its folder is created when missing.
    append : bool
        False (default): start a new file at the start of training (the header, written
        atomically, replaces any earlier file). True: continue an existing file without a
        second header, as a resumed run should (``fit(..., initial_epoch=k)``); rows of
        epochs after ``k`` (written after the checkpoint the run resumes from) are dropped
        first, so the file matches the resumed ``History``. A file with other columns is an
        error, not mixed with.
    separator : str
        One character between the cells (``","``; ``";"`` or ``"\\t"`` for some
        spreadsheets).

    Notes
    -----
    Rows are appended as epochs end (``O_APPEND``), flushed and fsynced: the file is
    readable at any time and holds every finished epoch after a crash. A new file gets the
    mode the umask gives (``0o666 & ~umask``: 0644 under 022), as every file minicnn
    writes. In data-parallel training only rank 0 writes (``rank_zero_only``).
    """

    rank_zero_only = True

    def __init__(self, path: str | os.PathLike, append: bool = False, separator: str = ","):
        if not isinstance(separator, str) or len(separator) != 1 or separator in '"\r\n':
            raise ValueError(f"CSVLogger: separator must be one character other than a quote "
                             f"or a line break, such as ',' or ';', got {separator!r}")
        self.path = os.fspath(path)
        self.append = bool(append)
        self.separator = separator

    def _line(self, cells: Sequence[str]) -> str:
        out = io.StringIO()
        csv.writer(out, delimiter=self.separator, lineterminator="\n").writerow(cells)
        return out.getvalue()

    def _start_file(self, rows: Sequence[Sequence[str]] = ()) -> None:
        """Write the header (and ``rows``) as a new file, atomically, with the usual mode."""
        text = "".join(self._line(r) for r in [CSV_COLUMNS, *rows])
        atomic_write(self.path, lambda f: f.write(text), binary=False)

    def _read_rows(self) -> list[list[str]]:
        """The data rows of the existing file; ValueError if its header is not ours."""
        with open(self.path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter=self.separator))
        if not rows or tuple(rows[0]) != CSV_COLUMNS:
            found = self.separator.join(rows[0]) if rows else ""
            raise ValueError(f"CSVLogger: {self.path} does not start with the header "
                             f"{self.separator.join(CSV_COLUMNS)!r} (found {found!r}); "
                             f"append=True continues a file this logger wrote with the same "
                             f"separator: give another path, or append=False to replace it")
        return rows[1:]

    def on_train_begin(self) -> None:
        exists = os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        if not (self.append and exists):
            self._start_file()
            return
        rows = self._read_rows()
        resumed_after = self.state.epoch  # fit's initial_epoch
        # Keep whole rows; a resumed run drops the epochs after its checkpoint.
        keep = [r for r in rows if len(r) == len(CSV_COLUMNS) and r[0].isdigit()
                and (resumed_after == 0 or int(r[0]) <= resumed_after)]
        if len(keep) != len(rows):
            self._start_file(keep)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if not os.path.isfile(self.path):  # removed while training: start again, with header
            self._start_file()
        line = self._line([str(int(epoch)), *(_cell(logs.get(k)) for k in HISTORY_KEYS)])
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, new_file_mode())
        try:
            data = line.encode("utf-8")
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)  # the row is on disk before the next epoch starts
        finally:
            os.close(fd)


# -- TensorBoard --------------------------------------------------------------------------------

def _summary_writer_class() -> Any:
    """``tensorboardX.SummaryWriter``, or an ImportError that says how to install it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise ImportError(f"TensorBoard logging needs the tensorboardX package, which is not "
                          f"installed: {TENSORBOARD_INSTALL}") from exc
    return SummaryWriter


def filter_grid(W: Any, max_filters: int = 64, tile: int = 24, pad: int = 2) -> np.ndarray:
    """The filters of a convolution as one picture: a grid of tiles, (H, W, 3) float32 in [0, 1].

    Parameters
    ----------
    W : array (C_out, C_in, KH, KW)
        ``Conv2d.W`` (NumPy or CuPy).
    max_filters : int
        The first this many filters are shown.
    tile : int
        Each filter is enlarged (nearest neighbour) by the integer factor
        ``s = max(1, ceil(tile / max(KH, KW)))``, so a 3x3 kernel is 24 pixels wide.
    pad : int
        Black pixels between the tiles and around the grid.

    Returns
    -------
    ndarray (rows * (s KH + pad) + pad, cols * (s KW + pad) + pad, 3)
        ``cols = ceil(sqrt(n))``, ``rows = ceil(n / cols)`` for n filters. A filter with 3
        input channels is an RGB tile; otherwise the mean over its input channels, in grey.
        Each filter is scaled to [0, 1] on its own, ``(w - min) / (max - min)``, so the tiles
        show patterns, not magnitudes (as ``minicnn.plot.plot_filters``).
    """
    W = to_numpy(W)
    if W.ndim != 4:
        raise ValueError(f"filter_grid: expected conv weights (C_out, C_in, KH, KW), "
                         f"got shape {W.shape}")
    W = W[:max_filters].astype(np.float32)
    n, c_in, kh, kw = W.shape
    W = W if c_in == 3 else np.repeat(W.mean(axis=1, keepdims=True), 3, axis=1)
    lo = W.min(axis=(1, 2, 3), keepdims=True)
    hi = W.max(axis=(1, 2, 3), keepdims=True)
    W = (W - lo) / np.maximum(hi - lo, np.float32(1e-12))
    s = max(1, math.ceil(tile / max(kh, kw)))
    tiles = W.repeat(s, axis=2).repeat(s, axis=3).transpose(0, 2, 3, 1)  # (n, s KH, s KW, 3)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = s * kh, s * kw
    grid = np.zeros((rows * (th + pad) + pad, cols * (tw + pad) + pad, 3), dtype=np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y:y + th, x:x + tw] = t
    return grid


def _first_conv(model: Any) -> tuple[str, Any] | None:
    """(dotted name, layer) of the first ``Conv2d``, depth first; None if there is none."""
    for name, m in model.named_modules():
        if isinstance(m, Conv2d):
            return name or "conv", m
    return None


class TensorBoard(Callback):
    """Write the run for TensorBoard: scalars per epoch and per N steps, histograms, filters.

    What is written (tags, and the step each value sits at):

    - ``epoch/loss``, ``epoch/acc``, ``epoch/val_loss``, ``epoch/val_acc``, ``epoch/lr``,
      ``epoch/time`` (seconds, validation included): the ``History`` entry, at step =
      epoch (1, 2, ...); validation tags only when there is validation data;
    - ``epoch/images_per_s``: training images per second of the epoch (validation not
      counted);
    - with ``every_n_steps=N``: ``batch/loss`` (the batch's mean loss) and ``batch/lr`` (the
      learning rate that step used) at the global steps g = N, 2N, ..., where
      ``g = (epoch - 1) * steps_per_epoch + step``;
    - with ``histograms=True``, per epoch: ``weights/<name>`` and ``grads/<name>`` for each
      parameter (``model.named_parameters()``; the gradient is the last step's);
    - with ``images=True``, per epoch: ``filters/<name>``, the first ``Conv2d``'s filters as
      one picture (``filter_grid``).

    Scalars are stored as float32 (TensorBoard's ``simple_value``).

    Parameters
    ----------
    log_dir : str or PathLike
        The folder of the event files (created when training starts). A resumed run adds a
        new event file beside the first; TensorBoard shows them as one run.
    every_n_steps : int, optional
        Also log the batch loss and learning rate every this many optimizer steps.
    histograms : bool
        Weight and gradient histograms at each epoch's end (one copy of the parameters to
        the host per epoch).
    images : bool
        The first convolution's filters as a picture at each epoch's end (needs ``pillow``).
    flush_secs : float
        How often the writer's thread flushes pending events; the file is also flushed at
        every epoch's end and closed at the end of training.

    Notes
    -----
    Nothing is added to the training loop's device reads: the batch loss is the float
    ``fit`` already hands to ``on_batch_end`` (read from the GPU every ``sync_every``
    steps). Needs ``tensorboardX`` (``pip install 'minicnn[tensorboard]'``): constructing
    one without it raises ImportError saying so. In data-parallel training only rank 0
    writes (``rank_zero_only``).
    """

    rank_zero_only = True

    def __init__(self, log_dir: str | os.PathLike, every_n_steps: int | None = None,
                 histograms: bool = False, images: bool = False, flush_secs: float = 10.0):
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or
                                          not isinstance(every_n_steps, (int, np.integer))
                                          or every_n_steps < 1):
            raise ValueError(f"TensorBoard: every_n_steps must be None or an integer >= 1, "
                             f"got {every_n_steps!r}")
        _summary_writer_class()  # fail now, with the install command, not after an epoch
        if images and importlib.util.find_spec("PIL") is None:
            raise ImportError(f"TensorBoard(images=True) needs the pillow package (PNG "
                              f"encoding), which is not installed: {TENSORBOARD_INSTALL}")
        self.log_dir = os.fspath(log_dir)
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self.histograms, self.images = bool(histograms), bool(images)
        self.flush_secs = flush_secs
        self.writer: Any = None
        self._steps_done = 0           # optimizer steps so far (global step of the last)
        self._epoch_base = 0           # global step before the current epoch's first
        self._batch_lr: dict[int, float] = {}   # global step -> the lr it used
        self._epoch_start = 0.0
        self._last_batch_time = 0.0

    # -- the writer ------------------------------------------------------------------------
    def close(self) -> None:
        """Flush and close the event file (``on_train_end`` does; safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_train_begin(self) -> None:
        self.close()  # one left open by an earlier fit that raised
        # tensorboardX names the file events.out.tfevents.<second>.<host> and truncates one
        # of the same name; TensorBoard reads a folder's files in name order. The suffix (the
        # time in nanoseconds, then the process) keeps a run resumed within the same second
        # from erasing the first, and the files in the order they were made.
        suffix = f".{time.time_ns():020d}.{os.getpid()}"
        self.writer = _summary_writer_class()(logdir=self.log_dir, flush_secs=self.flush_secs,
                                              filename_suffix=suffix)
        steps = self.state.steps_per_epoch
        self._steps_done = self.state.epoch * steps if steps else 0  # resumed: continue
        self._batch_lr = {}

    def on_train_end(self) -> None:
        self.close()

    # -- steps -----------------------------------------------------------------------------
    def _wants_lr_of(self, global_step: int) -> bool:
        return self.every_n_steps is not None and global_step % self.every_n_steps == 0

    def on_epoch_begin(self, epoch: int) -> None:
        self._epoch_base = self._steps_done
        self._epoch_start = time.perf_counter()
        self._last_batch_time = self._epoch_start
        if self._wants_lr_of(self._steps_done + 1):
            self._batch_lr[self._steps_done + 1] = float(self.state.optimizer.lr)

    def on_step_end(self, epoch: int, step: int) -> None:
        self._steps_done += 1
        # The next step uses the rate as it is now (``fit``'s schedule steps before us).
        if self._wants_lr_of(self._steps_done + 1):
            self._batch_lr[self._steps_done + 1] = float(self.state.optimizer.lr)

    def on_batch_end(self, epoch: int, step: int, loss: float) -> None:
        self._last_batch_time = time.perf_counter()
        g = self._epoch_base + step
        if self.every_n_steps is None or g % self.every_n_steps:
            return
        self.writer.add_scalar("batch/loss", loss, g)
        lr = self._batch_lr.pop(g, None)
        if lr is not None:
            self.writer.add_scalar("batch/lr", lr, g)

    # -- epochs ----------------------------------------------------------------------------
    def _images_per_s(self, logs: dict[str, Any]) -> float | None:
        """``fit``'s own figure when it reports one, else this epoch's samples (the loader's
        ``samples_per_epoch`` times its ``world_size``) over the time from the epoch's start
        to its last batch read-back; None when the loader does not say or the epoch ended
        early."""
        if logs.get("images_per_s") is not None:
            return float(logs["images_per_s"])
        loader = self.state.train_loader
        samples = getattr(loader, "samples_per_epoch", None)
        steps = self.state.steps_per_epoch
        if samples is None or not steps or self._steps_done - self._epoch_base != steps:
            return None
        elapsed = max(self._last_batch_time - self._epoch_start, 1e-9)
        return samples * int(getattr(loader, "world_size", 1)) / elapsed

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        w = self.writer
        for key in HISTORY_KEYS:
            if logs.get(key) is not None:
                w.add_scalar(f"epoch/{key}", float(logs[key]), epoch)
        images_per_s = self._images_per_s(logs)
        if images_per_s is not None:
            w.add_scalar("epoch/images_per_s", images_per_s, epoch)
        model = self.state.model
        if self.histograms:
            for name, p in model.named_parameters():
                w.add_histogram(f"weights/{name}", to_numpy(p.data).ravel(), epoch)
                if p.grad is not None:
                    w.add_histogram(f"grads/{name}", to_numpy(p.grad).ravel(), epoch)
        if self.images:
            found = _first_conv(model)
            if found is not None:
                name, conv = found
                w.add_image(f"filters/{name}", filter_grid(conv.W.data), epoch,
                            dataformats="HWC")
        self._batch_lr = {g: lr for g, lr in self._batch_lr.items() if g > self._steps_done}
        w.flush()  # TensorBoard shows the epoch now, and a crash later keeps it


# -- the --log flag -----------------------------------------------------------------------------

def parse_log_flag(value: str) -> tuple[str, ...]:
    """The loggers named by ``--log``: ``"csv"``, ``"tensorboard"``, ``"csv,tensorboard"``
    (any order, spaces allowed) or ``"none"`` (-> ``()``).

    Raises
    ------
    ValueError
        For an empty value, an unknown word (named, with the valid ones), a word given
        twice, or ``none`` together with a logger.
    """
    words = [w.strip().lower() for w in str(value).split(",")]
    valid = f"{', '.join(LOGGERS)} (comma-separated, e.g. csv,tensorboard) or none"
    if words == ["none"]:
        return ()
    for w in words:
        if not w:
            raise ValueError(f"empty logger name in {value!r}; expected {valid}")
        if w == "none":
            raise ValueError(f"'none' cannot be combined with other loggers in {value!r}; "
                             f"expected {valid}")
        if w not in LOGGERS:
            raise ValueError(f"unknown logger {w!r} in {value!r}; expected {valid}")
    twice = sorted({w for w in words if words.count(w) > 1})
    if twice:
        raise ValueError(f"logger {twice[0]!r} named twice in {value!r}; expected {valid}")
    return tuple(words)


def loggers_from_flag(value: str, out_dir: str | os.PathLike, resume: bool = False,
                      every_n_steps: int = 10) -> list[Callback]:
    """The callbacks of ``minicnn train --log VALUE --out OUT_DIR``.

    Parameters
    ----------
    value : str
        As ``parse_log_flag`` reads it: csv, tensorboard, csv,tensorboard or none.
    out_dir : str or PathLike
        ``csv`` writes ``out_dir/log.csv``; ``tensorboard`` writes event files into
        ``out_dir/tensorboard/`` (batch scalars every ``every_n_steps`` steps, weight and
        gradient histograms, and the first layer's filters).
    resume : bool
        The run continues a checkpoint (``--resume``): ``log.csv`` is continued
        (``append=True``), not started again.

    Returns
    -------
    list of Callback
        In the order named; empty for ``none``. Nothing is written before ``fit`` starts.

    Raises
    ------
    ValueError
        A bad ``value`` (see ``parse_log_flag``).
    ImportError
        ``tensorboard`` without the tensorboardX or pillow package (says how to install).
    """
    out = []
    for word in parse_log_flag(value):
        if word == "csv":
            out.append(CSVLogger(os.path.join(out_dir, "log.csv"), append=resume))
        else:
            out.append(TensorBoard(os.path.join(out_dir, "tensorboard"),
                                   every_n_steps=every_n_steps, histograms=True, images=True))
    return out
