"""What each ``minicnn`` command does: train, evaluate, gradcheck, info, ladder.

``minicnn.cli`` parses the command line (checking every value as it goes) and calls one of
the ``cmd_*`` functions here with the parsed arguments. A flag value or input file that
turns out not to work raises ``BadInput`` naming the flag; ``cli`` prints it as one line and
exits with status 2. A failed run returns 1 after printing its one line.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np

from . import presets
from .presets import DATASETS, SMOKE_SIZES, TINY_MODEL_KWARGS

__all__ = ["BadInput", "cmd_train", "cmd_evaluate", "cmd_gradcheck", "cmd_info", "cmd_ladder"]


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
    from .models import MODELS

    params = inspect.signature(MODELS[builder]).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise BadInput(flag, f"{builder} takes no argument {', '.join(map(repr, unknown))}; "
                             f"it takes {', '.join(params)}")
    return presets.model_kwargs(builder, dataset, kwargs)


def _build(builder: str, kwargs: dict[str, Any], flag: str) -> Any:
    from . import models

    try:
        return models.build(builder, kwargs)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise BadInput(flag, f"{builder}(**{json.dumps(kwargs)}) cannot be built: "
                             f"{one_line(exc)}") from exc


def _load_splits(args: argparse.Namespace, dataset: str) -> Any:
    """The dataset's (train, test) arrays and class names; tiny random ones with --smoke."""
    from . import data

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
    from .backend import BackendError, set_backend

    if name not in ("auto", "numpy", "cupy"):  # argparse does not check a default
        raise BadInput(None, f"MINICNN_BACKEND={name!r} is not a backend; set it to auto, "
                             f"numpy or cupy, or pass --backend")
    try:
        chosen = set_backend(name)
    except BackendError as exc:
        raise BadInput("--backend", str(exc)) from exc
    if name == "auto" and chosen == "numpy" and importlib.util.find_spec("cupy") is not None:
        from . import backend  # CuPy is installed but unusable (often: the wrong CUDA wheel)

        warnings.warn(f"--backend auto: {backend._cupy_error} Training on the CPU; `minicnn "
                      f"info` says more, --backend numpy silences this.", stacklevel=2)
    return chosen


def _resolve(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """The preset for this dataset and device, with the flags given on top."""
    device = args.preset or ("gpu" if backend == "cupy" else "cpu")
    flags = {key: getattr(args, key) for key in (
        "model", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
        "augment", "label_smoothing", "tta")}
    if args.model_kwargs:
        model = args.model or presets.PRESETS[args.dataset][device]["model"]
        flags["model_kwargs"] = _model_kwargs(model, None, args.model_kwargs, "--model-kwargs")
    return presets.resolve(args.dataset, device, flags, smoke=args.smoke)


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
    if not getattr(args, "distributed", False):
        return _train(args, comm=None)
    # -- distributed (docs/distributed.md): one rank of `mpiexec -n N` ---------------------
    from . import distributed

    backend = _choose_backend(args.backend)      # before the communicator: NCCL on CuPy
    comm = distributed.create_communicator("nccl" if backend == "cupy" else "mpi")
    if backend == "numpy":
        distributed.set_blas_threads(comm)       # ranks x BLAS threads = this machine's cores
    if comm.rank != 0:                           # rank 0 alone prints and writes files
        args.quiet, args.no_plots = True, True
    with comm.abort_on_error():                  # any rank's error ends the whole job
        return _train(args, comm=comm)


def _batch_words(batch_size: int, comm: Any) -> str:
    """``64`` alone, or ``64 per rank x 2 ranks = 128`` in a data-parallel run."""
    if comm is None or comm.size == 1:
        return str(batch_size)
    return f"{batch_size} per rank x {comm.size} ranks = {batch_size * comm.size}"


def _train(args: argparse.Namespace, comm: Any) -> int:
    from . import data, losses, models, training
    from .init import set_seed
    from .layers import PatchWhitening
    from .training.checkpoint import CheckpointError

    if not sys.stdout.isatty():
        args.no_progress = True  # a log file gets one line per epoch, not bar redraws
    backend = _choose_backend(args.backend)
    cfg = _resolve(args, backend)
    _check_writable("--out", args.out)
    _say(args, f"minicnn: {args.dataset} on {backend}, preset {cfg['preset']}"
               f"{' (smoke test: tiny random data)' if args.smoke else ''}")
    set_seed(args.seed)
    model = _build(cfg["model"], cfg["model_kwargs"],
                   "--model-kwargs" if args.model_kwargs else "--model")
    (x_train, y_train), (x_test, y_test), classes = _load_splits(args, args.dataset)
    mean, std = data.channel_stats(x_train)
    normalize = (mean.tolist(), std.tolist())
    shard = {} if comm is None else dict(rank=comm.rank, world_size=comm.size)
    train_loader = data.DataLoader(
        x_train, y_train, cfg["batch_size"], shuffle=True, seed=args.seed, normalize=normalize,
        transform=presets.augmentation(args.dataset, cfg["augment"]) if cfg["augment"] else None,
        **shard)
    test_loader = data.DataLoader(x_test, y_test, max(cfg["batch_size"], 256), shuffle=False,
                                  normalize=normalize)
    # Each epoch's validation: every rank evaluates its share (fit sums them over the ranks).
    val_loader = data.DataLoader(x_test, y_test, max(cfg["batch_size"], 256), shuffle=False,
                                 normalize=normalize, **shard) if shard else test_loader
    if args.resume is None and any(isinstance(m, PatchWhitening) for m in model.modules()):
        # a PatchWhitening (vgg's whiten=) is fitted to the training images once
        sample = data.DataLoader(x_train[:5000], y_train[:5000], 5000, normalize=normalize)
        models.fit_whitening(model, next(iter(sample))[0])
    if not args.quiet:
        models.summary(model, DATASETS[args.dataset]["shape"])  # the dataset's real shape
    opt = presets.optimizer(cfg["optimizer"], model.parameters(), cfg["lr"], cfg["weight_decay"])
    sched = presets.scheduler(cfg["schedule"], opt, cfg["lr"], cfg["epochs"], len(train_loader))
    initial_epoch, history = 0, None
    if args.resume:
        try:
            ckpt = training.load(args.resume, model, opt, scheduler=sched, loader=train_loader)
        except CheckpointError as exc:
            raise BadInput("--resume", f"{exc.path}: {exc.reason}; resume with the flags of "
                                       f"the run that wrote it{_written_with(args.resume)}"
                           ) from exc
        initial_epoch, history = int(ckpt.epoch or 0), ckpt.history
        total, steps = getattr(sched, "total_steps", None), len(train_loader)
        if total is not None and total != cfg["epochs"] * steps:  # one-cycle: a fixed length
            raise BadInput("--epochs", f"{args.resume} holds a onecycle schedule of {total} "
                                       f"steps ({total / steps:g} epochs of {steps} batches); "
                                       f"resume it with the --epochs and --batch-size it "
                                       f"was started with, or start a new run to train longer")
        if initial_epoch >= cfg["epochs"]:
            raise BadInput("--epochs", f"{args.resume} has trained {initial_epoch} epochs "
                                       f"already; give --epochs > {initial_epoch} to continue")
        _say(args, f"resumed from {args.resume} after epoch {initial_epoch}")
    _say(args, f"training {cfg['model']} for {cfg['epochs']} epochs: {len(x_train)} images, "
               f"batch {_batch_words(cfg['batch_size'], comm)}, {cfg['optimizer']} lr "
               f"{cfg['lr']:g}, "
               f"schedule {cfg['schedule']}, augment {cfg['augment']}")

    os.makedirs(args.out, exist_ok=True)
    meta = dict(dataset=args.dataset, mean=normalize[0], std=normalize[1],
                classes=list(classes), train_config=cfg, seed=args.seed)
    callbacks = []
    if args.checkpoint_every:
        callbacks.append(training.ModelCheckpoint(os.path.join(args.out, "last.npz"),
                                                  save_best_only=False, **meta))
    loss = losses.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    start = time.perf_counter()
    # Overflow on the way to a NaN loss is reported once, by TerminateOnNaN, not per layer.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        history = training.fit(model, loss, opt, train_loader, val_loader,
                               epochs=cfg["epochs"], scheduler=sched, callbacks=callbacks,
                               verbose=0 if args.quiet else (2 if args.no_progress else 1),
                               initial_epoch=initial_epoch, history=history, comm=comm)
    train_time = time.perf_counter() - start
    if history.diverged:  # the weights are broken: keep the last good files in --out
        print(f"{args.error_prog}: error: {history.stop_reason.removeprefix('TerminateOnNaN: ')}"
              f" Nothing was written to {args.out} (--lr was {cfg['lr']:g}).", file=sys.stderr,
              flush=True)
        return 1

    if comm is not None and comm.rank != 0:
        return 0  # the same model on every rank: rank 0 tests, reports and writes it
    logits, labels = training.predict(model, test_loader, tta=cfg["tta"])
    y_pred = logits.argmax(axis=1)
    test_acc = float((y_pred == labels).mean())
    epoch = history.epoch[-1] if history.epoch else initial_epoch
    with _Staged(args.out) as stage:  # every file, or none: renamed into place at the end
        history.save_json(stage("history.json"))
        training.save(stage("model.npz"), model, opt, scheduler=sched, loader=train_loader,
                      epoch=epoch, history=history, test_acc=test_acc, **meta)
        _plots(args, history, y_pred, labels, classes, stage)
    minutes, seconds = divmod(int(round(train_time)), 60)
    tta = _tta_words(cfg["tta"])
    print(f"test accuracy: {test_acc:.2%} on {len(labels)} images{' (' + tta + ')' if tta else ''}"
          f" after {epoch} epochs ({minutes}m{seconds:02d}s of training)", flush=True)
    _say(args, "wrote " + ", ".join(stage.written))
    return 0


def _tta_words(tta: Any) -> str:
    """How the test accuracy was computed, for the result line ("" without TTA)."""
    from .training.loop import tta_mode

    mode = tta_mode(tta)
    return "" if mode == "none" else f"test-time augmentation --tta {mode}"


def _written_with(path: str) -> str:
    """`` (it was trained with --preset cpu --model vgg --model-kwargs '{...}')``, when the
    checkpoint at ``path`` says so; else ""."""
    from . import training
    from .training.checkpoint import CheckpointError

    try:
        cfg = training.load(path, restore_rng=False).meta["train_config"]
        kwargs = json.dumps(cfg["model_kwargs"], separators=(",", ":"))
        return (f" (it was trained with --preset {cfg['preset'].split('/')[-1]} --model "
                f"{cfg['model']} --model-kwargs '{kwargs}')")
    except (CheckpointError, KeyError, TypeError, AttributeError):
        return ""


class _Staged:
    """Files written under temporary names in ``folder`` and renamed into place only when
    the ``with`` block succeeds: a failed run never replaces the last good ones."""

    def __init__(self, folder: str):
        self.folder, self.temps, self.written = folder, {}, []

    def __call__(self, name: str) -> str:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix="-" + name)
        os.close(fd)
        self.temps[os.path.join(self.folder, name)] = tmp
        return tmp

    def __enter__(self) -> _Staged:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        for final, tmp in self.temps.items():
            if kind is None:
                os.replace(tmp, final)
                self.written.append(final)
            elif os.path.exists(tmp):
                os.remove(tmp)


def _plots(args: argparse.Namespace, history: Any, y_pred: np.ndarray, labels: np.ndarray,
           classes: tuple[str, ...], stage: _Staged) -> None:
    from . import plot

    if args.no_plots:
        return
    if not plot.matplotlib_available():
        _say(args, "matplotlib is not installed: skipping curves.png (pip install matplotlib)")
        return
    import matplotlib.pyplot as plt

    plot.plot_history(history, stage("curves.png"), title=f"{args.dataset}")
    cm = plot.confusion_matrix(labels, y_pred, num_classes=len(classes))
    plot.plot_confusion_matrix(cm, classes, stage("confusion.png"))
    plt.close("all")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import data, losses, training
    from .training.checkpoint import CheckpointError

    _choose_backend(args.backend)
    try:
        ckpt = training.load(args.checkpoint)
    except CheckpointError as exc:
        raise BadInput("checkpoint", str(exc)) from exc
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
    from . import models
    from .backend import get_xp
    from .gradcheck import check_gradients
    from .init import set_seed

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
    from .backend import cupy_available, get_backend, get_cupy

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

        print(f"cupy         unusable: {backend._cupy_error}")
    env = os.environ.get("MINICNN_BACKEND", "")
    try:
        current = get_backend()
    except ValueError:  # info is where one looks when that variable is wrong: no error here
        current = "none: MINICNN_BACKEND is not auto, numpy or cupy"
    print(f"backend      {current} (MINICNN_BACKEND={env!r}; 'auto' would pick "
          f"{'cupy' if cupy_available() else 'numpy'})")
    from .data import data_root

    print(f"data folder  {data_root()} (MINICNN_DATA or --data)")
    return 0


def cmd_ladder(args: argparse.Namespace) -> int:
    from . import ladder

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
    from . import ladder

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
