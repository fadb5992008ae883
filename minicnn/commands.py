"""What each ``minicnn`` command does: train, evaluate, gradcheck, info, ladder, explain,
export.

``minicnn.cli`` parses the command line (checking every value as it goes) and calls one of
the ``cmd_*`` functions here with the parsed arguments. A flag value or input file that
turns out not to work raises ``BadInput`` naming the flag; ``cli`` prints it as one line and
exits with status 2. A failed run returns 1 after printing its one line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any, NamedTuple

import numpy as np

from . import data, distributed, ladder, losses, models, plot, presets, training
from .backend import BackendError, cupy_available, get_backend, get_cupy, get_xp, set_backend
from .explain import LayerChoiceError, explain, resolve_layer
from .gradcheck import check_gradients
from .init import set_seed
from .layers import PatchWhitening, SyncBatchNorm2d
from .presets import DATASETS, SMOKE_SIZES, TINY_MODEL_KWARGS
from .training.checkpoint import CheckpointError
from .training.loop import tta_mode

__all__ = ["BadInput", "cmd_train", "cmd_evaluate", "cmd_gradcheck", "cmd_info", "cmd_ladder",
           "cmd_explain", "cmd_export"]


class BadInput(Exception):
    """A flag value or input file that cannot work, found after parsing: exit status 2.

    ``argument`` is the flag as the user types it (``"--resume"``), or None for a file the
    user did not name (a dataset file inside ``--data``).
    """

    def __init__(self, argument: str | None, message: str):
        super().__init__(f"argument {argument}: {message}" if argument else message)


def one_line(text: Any) -> str:
    """A library's multi-line message as one line: ``"a:\\n  b\\n  c"`` -> ``"a: b; c"``."""
    out = ""
    for line in (part.strip() for part in str(text).splitlines()):
        if line:
            out += line if not out else (" " if out.endswith(":") else "; ") + line
    return out


# -- building blocks -------------------------------------------------------------------------

def _model_kwargs(builder: str, dataset: str | None, kwargs: dict[str, Any],
                  flag: str) -> dict[str, Any]:
    """``presets.model_kwargs``, after checking that the builder takes every key of
    ``kwargs`` (else ``BadInput`` naming ``flag``)."""
    params = inspect.signature(models.MODELS[builder]).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise BadInput(flag, f"{builder} takes no argument {', '.join(map(repr, unknown))}; "
                             f"it takes {', '.join(params)}")
    return presets.model_kwargs(builder, dataset, kwargs)


def _build(builder: str, kwargs: dict[str, Any], flag: str) -> Any:
    try:
        return models.build(builder, kwargs)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise BadInput(flag, f"{builder}(**{json.dumps(kwargs)}) cannot be built: "
                             f"{one_line(exc)}") from exc


def _load_splits(args: argparse.Namespace, dataset: str) -> Any:
    """The dataset's (train, test) arrays and class names; tiny random ones with --smoke."""
    spec = DATASETS[dataset]
    if args.data is not None and not args.smoke:
        _check_data_folder(args.data)
    if args.smoke:
        return (data.synthetic(SMOKE_SIZES["train"], spec["shape"], args.seed),
                data.synthetic(SMOKE_SIZES["test"], spec["shape"], args.seed + 1),
                tuple(getattr(data, spec["classes"])))
    # Warnings while loading (an MD5 other than the official one) are shown only if the
    # files then load: when they do not, the error says what is wrong with them.
    with warnings.catch_warnings(record=True) as caught:
        try:
            splits = getattr(data, spec["load"])(root=args.data, download=True,
                                                 quiet=args.quiet)
        except data.DatasetFormatError as exc:  # a file there, but not the right one
            hint = "" if "delete it" in str(exc) else "; delete it (it will be downloaded " \
                "again) or put the official file there"
            raise BadInput("--data" if args.data else None, f"{exc}{hint}") from exc
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return splits[0], splits[1], tuple(splits.classes)


def _check_data_folder(folder: str) -> None:
    """``--data`` names a folder that exists (a typo would otherwise start a download into a
    new folder of that name)."""
    if not os.path.isdir(folder):
        raise BadInput("--data", f"no such folder: {folder!r}; create it to download the data "
                                 f"there, or leave --data out to use $MINICNN_DATA or "
                                 f"~/.cache/minicnn")


def _choose_backend(name: str) -> str:
    if name not in ("auto", "numpy", "cupy"):  # argparse does not check a default
        raise BadInput(None, f"MINICNN_BACKEND={name!r} is not a backend; set it to auto, "
                             f"numpy or cupy, or pass --backend")
    try:
        chosen = set_backend(name)
    except BackendError as exc:
        raise BadInput("--backend", str(exc)) from exc
    if name == "auto" and chosen == "numpy" and importlib.util.find_spec("cupy") is not None:
        from . import backend  # CuPy is installed but unusable (often: the wrong CUDA wheel)

        warnings.warn(f"--backend auto: {backend.cupy_error()} Training on the CPU; `minicnn "
                      f"info` says more, --backend numpy silences this.", stacklevel=2)
    return chosen


def _resolve(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """The preset for this dataset and device, with the flags given on top."""
    device = args.preset or ("gpu" if backend == "cupy" else "cpu")
    flags = {key: getattr(args, key) for key in (
        "model", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
        "augment", "label_smoothing", "tta", "threads", "sync_bn", "validation_freq")}
    if args.model_kwargs:
        model = args.model or presets.PRESETS[args.dataset][device]["model"]
        flags["model_kwargs"] = _model_kwargs(model, None, args.model_kwargs, "--model-kwargs")
    cfg = presets.resolve(args.dataset, device, flags, smoke=args.smoke)
    if cfg["threads"] > 1 and (backend != "numpy" or getattr(args, "distributed", False)):
        # A preset's thread-ranks where threads do not run (one GPU is one device; MPI ranks
        # are processes): one rank with the preset's global batch, the same recipe. An
        # explicit --batch-size stays per rank.
        if args.batch_size is None and not args.smoke:
            cfg["batch_size"] *= cfg["threads"]
        cfg["threads"] = 1
    return cfg


def _check_writable(flag: str, folder: str) -> None:
    """``folder`` can be created or written to (checked before a run, not after it)."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(flag, f"cannot write to {folder!r} ({existing!r} is "
                             f"{'read-only' if os.path.isdir(existing) else 'a file'}); "
                             f"choose another {flag}")


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


# -- commands --------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    args.backend = _choose_backend(args.backend)  # once: "auto" warns once, every rank agrees
    if getattr(args, "distributed", False):
        return _train_distributed(args)
    threads = _threads(args)
    if threads == 1:
        return _train(args, comm=None)
    return _train_in_threads(args, threads)


def _train_distributed(args: argparse.Namespace) -> int:
    """One rank of `mpiexec -n N ... --distributed` (docs/distributed.md)."""
    if getattr(args, "threads", None) not in (None, 1):
        raise BadInput("--threads", "runs the ranks as threads of one process; with "
                                    "--distributed the ranks are mpiexec's processes: give "
                                    "one or the other")
    backend = args.backend                       # chosen before the communicator: NCCL on CuPy
    comm = distributed.create_communicator("nccl" if backend == "cupy" else "mpi")
    if backend == "numpy":
        distributed.set_blas_threads(comm)       # ranks x BLAS threads = this machine's cores
    if comm.rank != 0:                           # rank 0 alone prints and writes files
        args.quiet, args.no_plots = True, True
    with comm.abort_on_error():                  # any rank's error ends the whole job
        return _train(args, comm=comm)


def _threads(args: argparse.Namespace) -> int:
    """How many thread-ranks train: --threads, else the preset's ``threads`` (NumPy only)."""
    if (getattr(args, "threads", None) or 1) > 1 and args.backend != "numpy":
        raise BadInput("--threads", f"splits the batch over CPU cores, on the NumPy "
                                    f"backend; on {args.backend} leave it out (or give 1)")
    return _resolve(args, args.backend)["threads"]


def _train_in_threads(args: argparse.Namespace, threads: int) -> int:
    """``minicnn train`` as ``threads`` data-parallel ranks in this process
    (``distributed.run_in_threads``): each trains its replica on its shard of every batch
    and predicts its slice of the test set; once all are done, rank 0's run is reported and
    written here."""

    loaded: dict[str, Any] = {}   # the dataset, loaded by rank 0 and read by every rank

    def rank(comm: Any) -> Any:
        rank_args = copy.copy(args)
        rank_args.shared_data = loaded
        if comm.rank != 0:                       # rank 0 alone prints and writes files
            rank_args.quiet, rank_args.no_plots = True, True
        outcome = _set_up_and_fit(rank_args, comm)
        if isinstance(outcome, int):
            return outcome
        start = time.perf_counter()
        predicted = _predict_in_threads(outcome[0])
        return (*outcome, (predicted, time.perf_counter() - start))

    outcome = distributed.run_in_threads(rank, threads)[0]
    if isinstance(outcome, int):
        return outcome
    _test_and_write(*outcome)
    return 0


def _predict_in_threads(run: _Run) -> tuple[np.ndarray, np.ndarray]:
    """The final test logits and labels (with the run's TTA), each thread-rank predicting its
    slice of the test set in order; every rank returns them all. The replicas are identical
    after ``fit`` (the same updates; BatchNorm statistics averaged at each epoch's end)."""
    comm, test = run.comm, run.data.test
    n = len(test.x)
    lo, hi = n * comm.rank // comm.size, n * (comm.rank + 1) // comm.size
    mine = data.DataLoader(test.x[lo:hi], test.y[lo:hi], test.batch_size, shuffle=False,
                           normalize=run.data.normalize)
    part = (training.predict(run.model, mine, tta=run.cfg["tta"]) if hi > lo
            else (None, None))
    parts = [comm.bcast_object(part, root=r) for r in range(comm.size)]
    return (np.concatenate([p[0] for p in parts if p[0] is not None]),
            np.concatenate([p[1] for p in parts if p[1] is not None]))


def _synced(run: Any) -> bool:
    """Whether the run's BatchNorm layers take their statistics over all ranks."""
    return any(isinstance(m, SyncBatchNorm2d) for m in run.model.modules())


def _batch_words(batch_size: int, comm: Any) -> str:
    """``64`` alone, or ``64 per rank x 2 ranks = 128`` in a data-parallel run (``thread``
    for the thread-ranks of one process)."""
    if comm is None or comm.size == 1:
        return str(batch_size)
    rank = "thread" if comm.name == "threads" else "rank"
    return f"{batch_size} per {rank} x {comm.size} {rank}s = {batch_size * comm.size}"


class _Data(NamedTuple):
    """The data of a training run: its loaders and what its checkpoints record about it."""

    train: Any               # shuffled (and augmented); this rank's shard in a distributed run
    val: Any                 # each epoch's validation: this rank's share of the test set
    test: Any                # the whole test set: the final accuracy (rank 0)
    classes: tuple[str, ...]
    normalize: tuple[list[float], list[float]]   # per-channel mean and std of x_train
    x_train: np.ndarray      # the training images and labels (uint8 / int64, all ranks')
    y_train: np.ndarray


@dataclasses.dataclass
class _Run:
    """A training run once it is set up: what ``_fit`` trains and ``_test_and_write`` saves."""

    args: argparse.Namespace
    cfg: dict[str, Any]      # the preset with the flags on top (``presets.resolve``)
    model: Any
    opt: Any
    sched: Any               # None without a schedule
    data: _Data
    comm: Any                # None, or this rank's communicator

    @property
    def meta(self) -> dict[str, Any]:
        """What each checkpoint of the run records besides the weights and the History."""
        mean, std = self.data.normalize
        return dict(dataset=self.args.dataset, mean=mean, std=std,
                    classes=list(self.data.classes), train_config=self.cfg, seed=self.args.seed)


def _train(args: argparse.Namespace, comm: Any) -> int:
    """``minicnn train``, or one rank's part of it: set up, train, test, write.

    Returns the exit status: 0, or 1 when the loss diverged (then nothing is written).
    """
    outcome = _set_up_and_fit(args, comm)
    if isinstance(outcome, int):
        return outcome
    if comm is not None and comm.rank != 0:
        return 0  # the same model on every rank: rank 0 tests, reports and writes it
    _test_and_write(*outcome)
    return 0


def _set_up_and_fit(args: argparse.Namespace, comm: Any) -> Any:
    """Set up and train: ``(run, history, initial_epoch, times)`` for ``_test_and_write``,
    or the exit status 1 when the loss diverged."""
    if not sys.stdout.isatty():
        args.no_progress = True  # a log file gets one line per epoch, not bar redraws
    # Thread-ranks share the process: set up one after the other (minicnn.init's generator).
    with comm.in_turn() if comm is not None else contextlib.nullcontext():
        cfg = _configure(args)
        set_seed(args.seed)  # the initial weights
        model = _build(cfg["model"], cfg["model_kwargs"],
                       "--model-kwargs" if args.model_kwargs else "--model")
        if cfg["sync_bn"] and comm is not None and comm.size > 1:
            distributed.convert_sync_batchnorm(model, comm)   # statistics over every rank
        run_data = _load_data(args, cfg, comm)
        if not args.quiet:
            models.summary(model, DATASETS[args.dataset]["shape"])  # the dataset's real shape
        opt, sched = _optimizer(cfg, model, steps_per_epoch=len(run_data.train))
        run = _Run(args, cfg, model, opt, sched, run_data, comm)
        initial_epoch, history = _resume(run) if args.resume else (0, None)
    times = _Times(warm_up=_warm_up(run))
    # The clock, as airbench counts "training time": from the data on the device (the
    # loaders above) to the final (TTA) test accuracy; the warm-up is not counted.
    times.start = time.perf_counter()
    if args.resume is None:  # a resumed run loads the fitted whitening with the weights
        _fit_whitening(model, run_data)
    times.whitening = time.perf_counter() - times.start
    history, times.fit = _fit(run, initial_epoch, history)
    if history.diverged:  # the weights are broken: keep the last good files in --out
        if comm is None or comm.rank == 0:
            print(f"{args.error_prog}: error: "
                  f"{history.stop_reason.removeprefix('TerminateOnNaN: ')} No model was "
                  f"written to {args.out} (--lr was {cfg['lr']:g}).", file=sys.stderr,
                  flush=True)
        return 1
    return run, history, initial_epoch, times


@dataclasses.dataclass
class _Times:
    """Where a run's seconds went: the warm-up (not counted), then the clock from ``start``."""

    warm_up: float = 0.0     # presets.warm_up: every kernel compiled, the state restored
    start: float = 0.0       # time.perf_counter() when the clock started
    whitening: float = 0.0   # fitting PatchWhitening (inside the clock, as in airbench)
    fit: float = 0.0         # the epochs, with their validation
    test: float = 0.0        # the final test accuracy (with TTA)

    @property
    def training(self) -> float:
        return self.whitening + self.fit + self.test


def _warm_up(run: _Run) -> float:
    """``presets.warm_up`` when the preset asks for it ("warmup") on the GPU; its seconds."""
    if not run.cfg.get("warmup") or get_backend() != "cupy":
        return 0.0
    loss = losses.CrossEntropyLoss(label_smoothing=run.cfg["label_smoothing"])
    seconds = presets.warm_up(run.model, loss, run.opt, run.sched, run.data.train,
                              tta=run.cfg["tta"], precision=getattr(run.args, "precision", None))
    _say(run.args, f"warm-up: {seconds:.1f}s (every kernel compiled; the state restored; "
                   f"not counted)")
    return seconds


def _configure(args: argparse.Namespace) -> dict[str, Any]:
    """The backend, and the preset with the flags on top; --out is checked, the run named."""
    backend = _choose_backend(args.backend)
    cfg = _resolve(args, backend)
    _check_writable("--out", args.out)
    _say(args, f"minicnn: {args.dataset} on {backend}, preset {cfg['preset']}"
               f"{' (smoke test: tiny random data)' if args.smoke else ''}")
    return cfg


def _load_data(args: argparse.Namespace, cfg: dict[str, Any], comm: Any) -> _Data:
    """The dataset, normalised by its training images' channel statistics, as loaders.

    Thread-ranks (``args.shared_data``, a dict of their group) load it once: the first rank
    to set up (rank 0: set-up runs in turn) loads it and the others read the same arrays,
    which nothing writes to (the loaders copy every batch they make).
    """
    shared = getattr(args, "shared_data", None)
    if shared is not None and "splits" in shared:
        splits = shared["splits"]
    else:
        splits = _load_splits(args, args.dataset)
        if shared is not None:
            for x, y in splits[:2]:
                x.flags.writeable = y.flags.writeable = False   # shared: an error, not a race
            shared["splits"] = splits
    (x_train, y_train), (x_test, y_test), classes = splits
    mean, std = data.channel_stats(x_train)
    normalize = (mean.tolist(), std.tolist())
    shard = {} if comm is None else dict(rank=comm.rank, world_size=comm.size)
    batch_size, eval_batch_size = cfg["batch_size"], max(cfg["batch_size"], 256)
    train_loader = data.DataLoader(
        x_train, y_train, batch_size, shuffle=True, seed=args.seed, normalize=normalize,
        transform=presets.augmentation(args.dataset, cfg["augment"]) if cfg["augment"] else None,
        **presets.loader_options(args.dataset, cfg), **shard)
    test_loader = data.DataLoader(x_test, y_test, eval_batch_size, shuffle=False,
                                  normalize=normalize)
    # Each epoch's validation: every rank evaluates its share (fit sums them over the ranks).
    val_loader = data.DataLoader(x_test, y_test, eval_batch_size, shuffle=False,
                                 normalize=normalize, **shard) if shard else test_loader
    return _Data(train_loader, val_loader, test_loader, classes, normalize, x_train, y_train)


def _fit_whitening(model: Any, run_data: _Data) -> None:
    """Fit a PatchWhitening (vgg's ``whiten=``) to the first 5000 training images, once."""
    if any(isinstance(m, PatchWhitening) for m in model.modules()):
        # On the host, as the loader scales and normalises a batch: the fit computes there
        # (PatchWhitening.fit), so device images would only be read back (a sync).
        x = run_data.x_train[:5000].astype(np.float32) * (1.0 / 255.0)
        models.fit_whitening(model, data.Normalize(*run_data.normalize)(x))


def _optimizer(cfg: dict[str, Any], model: Any, steps_per_epoch: int) -> tuple[Any, Any]:
    """The optimizer and the learning-rate schedule (None for a constant rate) of ``cfg``."""
    opt = presets.optimizer(cfg["optimizer"], model.parameters(), cfg["lr"], cfg["weight_decay"])
    sched = presets.scheduler(cfg["schedule"], opt, cfg["lr"], cfg["epochs"], steps_per_epoch)
    return opt, sched


def _resume(run: _Run) -> tuple[int, Any]:
    """Load --resume into the model, optimizer, schedule and loader; (epoch, History).

    Raises ``BadInput`` for a checkpoint of another run, a one-cycle schedule whose length
    the flags would change, or an --epochs the checkpoint has already reached.
    """
    args, cfg, steps = run.args, run.cfg, len(run.data.train)
    try:
        ckpt = training.load(args.resume, run.model, run.opt, scheduler=run.sched,
                             loader=run.data.train)
    except CheckpointError as exc:
        raise BadInput("--resume", f"{exc.path}: {exc.reason}; resume with the flags of "
                                   f"the run that wrote it{_written_with(args.resume)}"
                       ) from exc
    initial_epoch = int(ckpt.epoch or 0)
    total = getattr(run.sched, "total_steps", None)
    if total is not None and total != cfg["epochs"] * steps:  # one-cycle: a fixed length
        raise BadInput("--epochs", f"{args.resume} holds a onecycle schedule of {total} "
                                   f"steps ({total / steps:g} epochs of {steps} batches); "
                                   f"resume it with the --epochs and --batch-size it "
                                   f"was started with, or start a new run to train longer")
    if initial_epoch >= cfg["epochs"]:
        raise BadInput("--epochs", f"{args.resume} has trained {initial_epoch} epochs "
                                   f"already; give --epochs > {initial_epoch} to continue")
    _say(args, f"resumed from {args.resume} after epoch {initial_epoch}")
    return initial_epoch, ckpt.history


def _fit(run: _Run, initial_epoch: int, history: Any) -> tuple[Any, float]:
    """Train from ``initial_epoch`` to --epochs; (the History, seconds of training).

    With --checkpoint-every, ``--out/last.npz`` is written after every epoch.
    """
    args, cfg = run.args, run.cfg
    precision = getattr(args, "precision", None) or "fp32"
    if precision == "fp16" and run.comm is not None:
        raise BadInput("--precision", "fp16 (loss scaling) is not supported with "
                                      "--distributed yet; use bf16")
    _say(args, f"training {cfg['model']} for {cfg['epochs']} epochs: {len(run.data.x_train)} "
               f"images, batch {_batch_words(cfg['batch_size'], run.comm)}, {cfg['optimizer']} "
               f"lr {cfg['lr']:g}, schedule {cfg['schedule']}, augment {cfg['augment']}"
               f"{'' if precision == 'fp32' else ', precision ' + precision}"
               f"{', SyncBatchNorm2d' if _synced(run) else ''}"
               f"{_validation_words(cfg['validation_freq'])}")
    os.makedirs(args.out, exist_ok=True)
    callbacks = []
    if args.checkpoint_every:
        callbacks.append(training.ModelCheckpoint(os.path.join(args.out, "last.npz"),
                                                  save_best_only=False, **run.meta))
    # --log: OUT/log.csv and OUT/tensorboard/, written as the epochs end (rank 0 only)
    callbacks += training.loggers_from_flag(getattr(args, "log", "none"), args.out,
                                            resume=args.resume is not None)
    loss = losses.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    start = time.perf_counter()
    # Overflow on the way to a NaN loss is reported once, by TerminateOnNaN, not per layer.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        history = training.fit(run.model, loss, run.opt, run.data.train, run.data.val,
                               epochs=cfg["epochs"], scheduler=run.sched, callbacks=callbacks,
                               verbose=0 if args.quiet else (2 if args.no_progress else 1),
                               initial_epoch=initial_epoch, history=history, comm=run.comm,
                               precision=precision, validation_freq=cfg["validation_freq"])
    return history, time.perf_counter() - start


def _validation_words(freq: int) -> str:
    """The banner's words for --validation-freq: nothing for every epoch."""
    return "" if freq == 1 else f", validation every {freq} epochs and after the last"


def _test_and_write(run: _Run, history: Any, initial_epoch: int, times: _Times,
                    predicted: Any = None) -> None:
    """The test accuracy; history.json, model.npz and the plots into --out (all or none).

    ``predicted``: ((logits, labels), seconds) when the thread-ranks predicted the test set
    already (``_predict_in_threads``); else the logits are computed here.
    """
    args, cfg = run.args, run.cfg
    if predicted is None:
        start = time.perf_counter()
        logits, labels = training.predict(run.model, run.data.test, tta=cfg["tta"])
        times.test = time.perf_counter() - start  # predict read the logits back: device done
    else:
        (logits, labels), times.test = predicted
    y_pred = logits.argmax(axis=1)
    test_acc = float((y_pred == labels).mean())
    epoch = history.epoch[-1] if history.epoch else initial_epoch
    with _Staged(args.out) as stage:  # every file, or none: moved into place at the end
        history.save_json(stage("history.json"))
        training.save(stage("model.npz"), run.model, run.opt, scheduler=run.sched,
                      loader=run.data.train, epoch=epoch, history=history, test_acc=test_acc,
                      **run.meta)
        _plots(args, history, y_pred, labels, run.data.classes, stage)
    minutes, seconds = divmod(int(round(times.training)), 60)
    tta = _tta_words(cfg["tta"])
    warm = f"warm-up {times.warm_up:.1f}s, not counted" if times.warm_up else "no warm-up"
    _say(args, f"training time {minutes}m{seconds:02d}s ({warm}): whitening "
               f"{times.whitening:.1f}s, {epoch - initial_epoch} epochs {times.fit:.1f}s, test "
               f"{times.test:.1f}s")
    print(f"test accuracy: {test_acc:.2%} on {len(labels)} images{' (' + tta + ')' if tta else ''}"
          f" after {epoch} epochs ({minutes}m{seconds:02d}s of training)", flush=True)
    _say(args, "wrote " + ", ".join(stage.written))


def _tta_words(tta: Any) -> str:
    """How the test accuracy was computed, for the result line ("" without TTA)."""
    mode = tta_mode(tta)
    return "" if mode == "none" else f"test-time augmentation --tta {mode}"


def _written_with(path: str) -> str:
    """`` (it was trained with --preset cpu --model vgg --model-kwargs '{...}')``, when the
    checkpoint at ``path`` says so; else ""."""
    try:
        cfg = training.load(path, restore_rng=False).meta["train_config"]
        kwargs = json.dumps(cfg["model_kwargs"], separators=(",", ":"))
        return (f" (it was trained with --preset {cfg['preset'].split('/')[-1]} --model "
                f"{cfg['model']} --model-kwargs '{kwargs}')")
    except (CheckpointError, KeyError, TypeError, AttributeError):
        return ""


class _Staged:
    """The files of a run, all or none: written into a hidden scratch folder inside
    ``folder`` and moved into place only when the ``with`` block succeeds, so a failed run
    never replaces the last good ones. ``stage(name)`` is the path to write ``name`` to; the
    writers (``History.save_json``, ``training.save``, ``plot.save_figure``) write through
    ``minicnn._io.atomic_write``, which gives each file its mode."""

    def __init__(self, folder: str):
        self.folder, self.names, self.written = folder, [], []
        self.scratch = ""

    def __call__(self, name: str) -> str:
        self.names.append(name)
        return os.path.join(self.scratch, name)

    def __enter__(self) -> _Staged:
        self.scratch = tempfile.mkdtemp(dir=self.folder, prefix=".tmp-")
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            if kind is None:
                for name in self.names:  # renames within one folder: each one atomic
                    final = os.path.join(self.folder, name)
                    os.replace(os.path.join(self.scratch, name), final)
                    self.written.append(final)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _plots(args: argparse.Namespace, history: Any, y_pred: np.ndarray, labels: np.ndarray,
           classes: tuple[str, ...], stage: _Staged) -> None:
    if args.no_plots:
        return
    if not plot.matplotlib_available():
        _say(args, "matplotlib is not installed: skipping curves.png (pip install matplotlib)")
        return
    plt = plot.pyplot()
    plot.plot_history(history, stage("curves.png"), title=f"{args.dataset}")
    cm = plot.confusion_matrix(labels, y_pred, num_classes=len(classes))
    plot.plot_confusion_matrix(cm, classes, stage("confusion.png"))
    plt.close("all")


def _load_checkpoint(args: argparse.Namespace) -> Any:
    """The backend of --backend, then the checkpoint ``args.checkpoint`` with the model it
    rebuilds (``training.load``); a file that is not one is a one-line error."""
    _choose_backend(args.backend)
    try:
        return training.load(args.checkpoint)
    except CheckpointError as exc:
        raise BadInput("checkpoint", str(exc)) from exc


def cmd_evaluate(args: argparse.Namespace) -> int:
    ckpt = _load_checkpoint(args)
    saved = ckpt.meta.get("dataset")
    dataset = args.dataset or saved
    if dataset not in DATASETS:
        raise BadInput("--dataset", f"{args.checkpoint} does not say which dataset it was "
                                    f"trained on; pass --dataset ({', '.join(DATASETS)})")
    x_test, y_test = _load_splits(args, dataset)[1]
    normalize = (ckpt.meta["mean"], ckpt.meta["std"]) if "mean" in ckpt.meta else None
    tta = args.tta if args.tta is not None else ckpt.meta.get("train_config", {}).get("tta")
    tta_words = _tta_words(tta)
    try:
        loader = data.DataLoader(x_test, y_test, args.batch_size, shuffle=False,
                                 normalize=normalize)
        if tta_words:  # as train reported it
            logits, labels = training.predict(ckpt.model, loader, tta=tta)
            result = {"loss": float(losses.CrossEntropyLoss().forward(logits, labels)),
                      "acc": float((logits.argmax(axis=1) == labels).mean())}
        else:
            result = training.evaluate(ckpt.model, loader)
    except ValueError as exc:  # images of another shape than the model's
        c, h, w = DATASETS[dataset]["shape"]
        raise BadInput("--dataset", f"the model in {args.checkpoint} (trained on "
                                    f"{saved or 'unknown data'}) does not take {dataset}'s "
                                    f"{c}x{h}x{w} images: {one_line(exc)}") from exc
    print(f"{dataset} test: loss {result['loss']:.4f}, accuracy {result['acc']:.2%} "
          f"({len(y_test)} images{'; ' + tta_words if tta_words else ''}; "
          f"checkpoint {args.checkpoint}, epoch {ckpt.epoch})")
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    _choose_backend(args.backend)
    set_seed(args.seed)
    names = sorted(models.MODELS) if args.model == "all" else [args.model]
    failed = []
    for name in names:
        kwargs = {} if args.full else dict(TINY_MODEL_KWARGS.get(name, {}))
        kwargs.update(args.model_kwargs or {})
        params = inspect.signature(models.MODELS[name]).parameters
        size = {"vgg16": 32, "lenet5": 28}.get(name, args.image_size)
        if "image_size" in params and "image_size" not in kwargs:
            kwargs["image_size"] = size
        if name == "vgg16" and "cifar" not in kwargs:
            kwargs.update(cifar=True, dropout=0.0)
        kwargs = _model_kwargs(name, None, kwargs, "--model-kwargs")
        model = _build(name, kwargs, "--model-kwargs" if args.model_kwargs else "--image-size")
        c = kwargs.get("in_channels", params["in_channels"].default)
        x = get_xp().asarray(np.random.default_rng(args.seed).standard_normal(
            (args.batch, c, size, size)), dtype=np.float64)
        start = time.perf_counter()
        try:
            result = check_gradients(model, x, seed=args.seed, max_entries=args.entries)
        except ValueError as exc:  # the input does not fit the model
            raise BadInput("--image-size", f"{name} does not take {size}x{size} images: "
                                           f"{one_line(exc)}") from exc
        ok = result.max_error < args.tol
        if not ok:
            failed.append(name)
        worst = max(result.errors, key=result.errors.get)
        print(f"{name:<11} {'ok  ' if ok else 'FAIL'} max relative error {result.max_error:.2e} "
              f"({worst}) over {len(result.errors)} tensors, {args.entries} entries each, "
              f"input {tuple(x.shape)}, {time.perf_counter() - start:.1f}s")
        if args.verbose:
            for key, err in result.errors.items():
                print(f"    {key:<40} {err:.2e}")
    if failed:
        print(f"{args.error_prog}: error: gradient check failed (tolerance {args.tol:g}): "
              f"{', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__

    print(f"minicnn      {__version__}")
    print(f"python       {platform.python_version()} ({platform.platform()})")
    print(f"numpy        {np.__version__}")
    for name in ("tqdm", "matplotlib", "scipy"):
        try:
            module = __import__(name)
            print(f"{name:<12} {getattr(module, '__version__', '?')}")
        except ImportError:
            print(f"{name:<12} not installed")
    print(f"cpu cores    {os.cpu_count()}")
    if cupy_available():
        cp = get_cupy()
        print(f"cupy         {cp.__version__}")
        for i in range(cp.cuda.runtime.getDeviceCount()):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(f"gpu {i}        {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
    else:
        from . import backend

        print(f"cupy         unusable: {backend.cupy_error()}")
    env = os.environ.get("MINICNN_BACKEND", "")
    try:
        current = get_backend()
    except ValueError:  # info is where one looks when that variable is wrong: no error here
        current = "none: MINICNN_BACKEND is not auto, numpy or cupy"
    print(f"backend      {current} (MINICNN_BACKEND={env!r}; 'auto' would pick "
          f"{'cupy' if cupy_available() else 'numpy'})")
    print(f"data folder  {data.data_root()} (MINICNN_DATA or --data)")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """``minicnn explain``: saliency and Grad-CAM of the first --per-class test images of every
    class, drawn as one grid (image, maps; true and predicted class) into OUT/explain.png.

    The maps explain the predicted class of each image (``minicnn.explain``, one forward and
    one backward pass for the whole batch); the images are normalised as the checkpoint's
    run normalised them.
    """
    if not plot.matplotlib_available():
        raise BadInput(None, "minicnn explain draws a picture and needs matplotlib: "
                             "pip install 'minicnn[plot]' (or pip install matplotlib)")
    out = args.out if args.out is not None else (os.path.dirname(args.checkpoint) or ".")
    _check_writable("--out", out)
    ckpt = _load_checkpoint(args)
    dataset = ckpt.meta.get("dataset")
    if dataset not in DATASETS:
        raise BadInput("checkpoint", f"{args.checkpoint} does not say which dataset it was "
                                     f"trained on (no 'dataset' in its meta), so there are no "
                                     f"test images to explain")
    if args.layer is not None:
        try:
            resolve_layer(ckpt.model, args.layer)
        except LayerChoiceError as exc:
            raise BadInput("--layer", str(exc).removeprefix("grad_cam: ")) from exc
    (x_test, y_test), classes = _load_splits(args, dataset)[1:]
    pick = np.concatenate([np.flatnonzero(y_test == c)[:args.per_class]
                           for c in range(len(classes))])
    normalize = (ckpt.meta["mean"], ckpt.meta["std"]) if "mean" in ckpt.meta else None
    x, _ = next(iter(data.DataLoader(x_test[pick], y_test[pick], len(pick), shuffle=False,
                                     normalize=normalize)))
    try:
        result = explain(ckpt.model, x, None, args.layer,
                         saliency_mode=None if args.method == "gradcam" else "grad",
                         grad_cam=args.method != "saliency")
    except LayerChoiceError as exc:
        raise BadInput("--layer", str(exc).removeprefix("grad_cam: ")) from exc
    except ValueError as exc:  # images of another shape than the model's
        raise BadInput("checkpoint", f"the model in {args.checkpoint} does not take "
                                     f"{dataset}'s test images: {one_line(exc)}") from exc
    maps = {name: m for name, m in (("saliency", result.saliency),
                                    ("Grad-CAM", result.grad_cam)) if m is not None}
    layer = f"; Grad-CAM at {result.layer}" if result.layer else ""
    path = os.path.join(out, "explain.png")
    fig = plot.plot_explanations(x_test[pick], maps, y_test[pick], path,
                                 predictions=result.logits.argmax(axis=1), class_names=classes,
                                 per_row=args.per_class if args.per_class > 1 else 2,
                                 title=f"{dataset}: what {os.path.basename(args.checkpoint)} "
                                       f"looks at, for its predicted class{layer}")
    plot.pyplot().close(fig)
    print(f"wrote {path}: {' and '.join(maps)} of {len(pick)} {dataset} test images "
          f"({args.per_class} per class){layer}", flush=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``minicnn export``: the checkpoint's model (rebuilt from its config, as ``evaluate``
    does) as an ONNX file (``minicnn.interop.to_onnx``), for inputs of --input-shape (by
    default the images of the dataset it was trained on), N dynamic.

    The file's metadata records what a runtime needs besides the graph: the dataset, the
    class names and the per-channel mean and std that the images must be normalised with
    (``(x / 255 - mean) / std``, as minicnn's loader does), and the model's config.
    """
    from . import interop

    try:
        import onnx
    except ImportError as exc:
        raise BadInput(None, "minicnn export needs the onnx package: pip install "
                             "'minicnn[onnx]' (or pip install onnx)") from exc
    max_opset = onnx.defs.onnx_opset_version()
    if args.opset > max_opset:
        raise BadInput("--opset", f"must be <= {max_opset} (the newest this onnx package "
                                  f"knows), got {args.opset}")
    _check_writable("OUT.onnx", os.path.dirname(args.onnx_file) or ".")
    ckpt = _load_checkpoint(args)
    dataset = ckpt.meta.get("dataset")
    shape = args.input_shape or (DATASETS[dataset]["shape"] if dataset in DATASETS
                                 else getattr(ckpt.model, "input_shape", None))
    if shape is None:
        raise BadInput("--input-shape", f"{args.checkpoint} does not say what its inputs look "
                                        f"like; pass --input-shape C,H,W")
    missing = interop.unsupported_layers(ckpt.model)
    if missing:
        raise BadInput("checkpoint", f"the model in {args.checkpoint} has layers without an "
                                     f"ONNX counterpart: " + ", ".join(
                                         f"{path} ({name})" for path, name in missing))
    meta = {key: json.dumps(ckpt.meta[key]) for key in ("dataset", "classes", "mean", "std")
            if key in ckpt.meta}
    if ckpt.config:
        meta["minicnn_config"] = json.dumps(ckpt.config)
    try:
        proto = interop.to_onnx(ckpt.model, args.onnx_file, shape, opset=args.opset,
                                metadata=meta,
                                doc_string=f"minicnn {os.path.basename(args.checkpoint)}")
    except ValueError as exc:  # an input shape the model does not take
        raise BadInput("--input-shape" if args.input_shape else "checkpoint",
                       one_line(exc).removeprefix("to_onnx: ")) from exc
    builder = (ckpt.config or {}).get("builder", "model")
    print(f"wrote {args.onnx_file}: {builder} for inputs (N, {', '.join(map(str, shape))}) "
          f"float32, opset {args.opset}, {len(proto.graph.node)} nodes"
          + (f"; normalise inputs with mean {ckpt.meta['mean']} and std {ckpt.meta['std']} "
             f"(in the file's metadata)" if "mean" in ckpt.meta else ""), flush=True)
    return 0


def cmd_ladder(args: argparse.Namespace) -> int:
    path = os.path.join(args.out, "ladder.json")
    if args.report_only:
        if not os.path.isfile(path):
            raise BadInput("--report-only", f"needs {path} from an earlier run; pass that "
                                            f"run's --out")
        _ladder_report(path, args.out)
        print(f"ladder: report rewritten: {os.path.join(args.out, 'ladder.md')}")
        return 0
    _check_writable("--out", args.out)
    if os.path.exists(path):  # results of an earlier call, which this one extends
        _ladder_state(path, "--out")
    backend = _choose_backend(args.backend)
    budget = "smoke" if args.smoke else args.budget or ("full" if backend == "cupy"
                                                        else "quick")
    rungs = ladder.select_rungs(args.rungs)
    if args.data is not None and budget != "smoke":
        _check_data_folder(args.data)
    argv = getattr(args, "argv", None)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join([getattr(args, "prog", "minicnn"), *map(shlex.quote, argv)])
    state = ladder.run_ladder(rungs, budget, data_root=args.data, out=args.out,
                              seed=args.seed, verbose=0 if args.quiet else 2, command=command)
    print(f"ladder: {len(rungs)} rungs ({budget}) in {state['wall_seconds'] / 60:.1f} min; "
          f"report: {os.path.join(args.out, 'ladder.md')}")
    return 0


def _ladder_state(path: str, flag: str) -> dict[str, Any]:
    """The results file of an earlier ladder run, checked to be one."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (ValueError, OSError) as exc:
        raise BadInput(flag, f"{path} is not readable JSON ({one_line(exc)}); delete it or "
                             f"choose another --out") from exc
    if not isinstance(state, dict) or not isinstance(state.get("results"), dict):
        raise BadInput(flag, f"{path} is not a results file of minicnn ladder (no 'results' "
                             f"table); delete it or choose another --out")
    return state


def _ladder_report(path: str, out: str) -> None:
    """``--report-only``: write the report to a scratch folder first, then move it into
    ``out``, so that a results file that cannot be reported leaves ``out`` as it was."""
    state = _ladder_state(path, "--report-only")
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-report-") as scratch:
        try:
            ladder.write_report(state, scratch)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise BadInput("--report-only", f"{path} lacks what the report needs "
                                            f"({type(exc).__name__}: {exc}); rerun the "
                                            f"ladder to write it again") from exc
        for folder, _, files in os.walk(scratch):
            target = os.path.join(out, os.path.relpath(folder, scratch))
            os.makedirs(target, exist_ok=True)
            for name in files:
                os.replace(os.path.join(folder, name), os.path.join(target, name))
