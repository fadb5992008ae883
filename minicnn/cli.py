"""The ``minicnn`` command (``python -m minicnn``) and the logic shared by the examples.

    minicnn train --dataset cifar10         # what examples/train_cifar.py runs
    minicnn evaluate runs/cifar10/model.npz
    minicnn gradcheck --model resnet        # numerical check of a whole built-in model
    minicnn info                            # backend, devices, versions, data folder

``train`` with no other flag picks the backend (the GPU if CuPy works), the preset that fits
the device (``PRESETS`` below: the one place to tune the examples), downloads the data if
missing, trains with a progress bar, and writes ``history.json``, ``curves.png`` and the final
checkpoint ``model.npz`` to ``--out`` (default ``runs/<dataset>``). Every preset value can
be overridden by a flag. ``--smoke`` swaps in tiny random data and a tiny model: the whole
pipeline in seconds, for tests.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import shlex
import sys
import time
from typing import Any

import numpy as np

__all__ = ["main", "run_example", "PRESETS", "DATASETS", "build_parser"]

# -- presets: what each example trains by default, per device ---------------------------------
# "model" is a builder of minicnn.models; "model_kwargs" its arguments (the dataset's
# in_channels, image_size and num_classes are added). "lr" is the peak lr for OneCycle.
# The CPU presets are sized for the time budgets of docs/results.md on 2 cores (MNIST 5 min,
# Fashion-MNIST 15 min, CIFAR-10 30 min); re-measure them when the layers get faster.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=1, batchnorm=True,
                                                   hidden=256, dropout=0.0, pool_first=True),
                    epochs=4, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    schedule="onecycle", augment="crop", label_smoothing=0.0),
        "gpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=2, batchnorm=True,
                                                   hidden=256, dropout=0.25),
                    epochs=10, batch_size=256, optimizer="adam", lr=4e-3, weight_decay=0.0,
                    schedule="onecycle", augment=True, label_smoothing=0.0),
    },
    "fashion_mnist": {
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=1, batchnorm=True,
                                                   hidden=256, dropout=0.2, pool_first=True),
                    epochs=11, batch_size=128, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    schedule="onecycle", augment="flip", label_smoothing=0.1),
        "gpu": dict(model="vgg", model_kwargs=dict(widths=[64, 128], depth=2, batchnorm=True,
                                                   hidden=256, dropout=0.3),
                    epochs=20, batch_size=256, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    schedule="onecycle", augment=True, label_smoothing=0.0),
    },
    "cifar10": {
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64, 128], depth=1,
                                                   batchnorm=True, hidden=256, dropout=0.2,
                                                   pool_first=True),
                    epochs=10, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                    schedule="onecycle", augment=True, label_smoothing=0.0),
        "gpu": dict(model="vgg", model_kwargs=dict(widths=[64, 128, 256], depth=2,
                                                   batchnorm=True, hidden=512, dropout=0.3),
                    epochs=30, batch_size=256, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                    schedule="onecycle", augment=True, label_smoothing=0.1),
    },
}

# dataset -> (loader function name in minicnn.data, image shape, class names attribute)
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": dict(load="load_mnist", shape=(1, 28, 28), classes="MNIST_CLASSES",
                  augment="crop"),
    "fashion_mnist": dict(load="load_fashion_mnist", shape=(1, 28, 28),
                          classes="FASHION_MNIST_CLASSES", augment="crop+flip"),
    "cifar10": dict(load="load_cifar10", shape=(3, 32, 32), classes="CIFAR10_CLASSES",
                    augment="crop+flip"),
}

# --smoke and gradcheck: tiny versions of each builder, so a run takes a second.
TINY_MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "simple_cnn": dict(widths=[4, 8], hidden=16),
    "vgg": dict(widths=[4, 8], depth=1, hidden=16),
    "vgg16": dict(width=1 / 16),
    "lenet5": dict(),
    "resnet": dict(widths=[4, 8], blocks=1),
}
SMOKE_SIZES = dict(train=96, test=48, batch_size=32)


# -- building blocks -------------------------------------------------------------------------

def _model_kwargs(builder: str, dataset: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Add the dataset's in_channels / image_size / num_classes where the builder takes them."""
    from . import models

    if builder not in models.MODELS:
        raise SystemExit(f"minicnn: unknown model {builder!r}; choose one of "
                         f"{sorted(models.MODELS)}")
    out: dict[str, Any] = {}
    if dataset is not None:
        c, h, _ = DATASETS[dataset]["shape"]
        params = inspect.signature(models.MODELS[builder]).parameters
        defaults = dict(in_channels=c, image_size=h, num_classes=10)
        if builder == "vgg16" and h == 32:
            defaults["cifar"] = True
        out = {k: v for k, v in defaults.items() if k in params}
    out.update(kwargs)
    return out


def _load_data(args: argparse.Namespace) -> tuple[tuple, tuple, tuple[str, ...]]:
    from . import data

    spec = DATASETS[args.dataset]
    if args.smoke:
        shape = DATASETS[args.dataset]["shape"]
        train = data.synthetic(SMOKE_SIZES["train"], shape, args.seed)
        test = data.synthetic(SMOKE_SIZES["test"], shape, args.seed + 1)
        return train, test, tuple(getattr(data, spec["classes"]))
    load = getattr(data, spec["load"])
    splits = load(root=args.data, download=True, quiet=args.quiet)
    return splits[0], splits[1], tuple(splits.classes)


def _augmentation(dataset: str, kind: Any = True) -> Any:
    """The training transforms: ``kind`` names them ("crop", "flip", "crop+flip"); True means
    the dataset's default (``DATASETS``)."""
    from . import data

    c, h, w = DATASETS[dataset]["shape"]
    kind = DATASETS[dataset]["augment"] if kind is True else str(kind)
    steps = []
    if "crop" in kind:
        steps.append(data.RandomCrop((h, w), padding=4 if h >= 32 else 2))
    if "flip" in kind:
        steps.append(data.RandomHorizontalFlip())
    return data.Compose(steps)


def _optimizer(name: str, params: list, lr: float, weight_decay: float) -> Any:
    from . import optim

    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise SystemExit(f"minicnn: unknown optimizer {name!r}")


def _scheduler(name: str, opt: Any, lr: float, epochs: int, steps_per_epoch: int) -> Any:
    from . import optim

    if name == "none":
        return None
    if name == "onecycle":
        return optim.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    if name == "cosine":
        return optim.CosineAnnealingLR(opt, T_max=epochs)
    if name == "step":
        return optim.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "plateau":
        return optim.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    raise SystemExit(f"minicnn: unknown schedule {name!r}")


def _choose_backend(name: str) -> str:
    from .backend import BackendError, set_backend

    try:
        return set_backend(name)
    except BackendError as exc:
        raise SystemExit(f"minicnn: {exc}") from None


def _resolve(args: argparse.Namespace, backend: str) -> dict[str, Any]:
    """The preset for this dataset and device, with the flags given on top."""
    device = args.preset or ("gpu" if backend == "cupy" else "cpu")
    cfg = copy.deepcopy(PRESETS[args.dataset][device])
    cfg["preset"] = f"{args.dataset}/{device}"
    if args.model is not None and args.model != cfg["model"]:
        cfg["model"], cfg["model_kwargs"] = args.model, {}
    for key in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
                "augment", "label_smoothing"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    if args.model_kwargs:
        cfg["model_kwargs"].update(json.loads(args.model_kwargs))
    if args.smoke:
        cfg["model_kwargs"].update(TINY_MODEL_KWARGS.get(cfg["model"], {}))
        cfg["batch_size"] = min(cfg["batch_size"], SMOKE_SIZES["batch_size"])
        if args.epochs is None:
            cfg["epochs"] = 1
    cfg["model_kwargs"] = _model_kwargs(cfg["model"], args.dataset, cfg["model_kwargs"])
    return cfg


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, flush=True)


# -- commands --------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from . import data, losses, models, training
    from .init import set_seed

    if not sys.stdout.isatty():
        args.no_progress = True  # a log file gets one line per epoch, not bar redraws
    backend = _choose_backend(args.backend)
    cfg = _resolve(args, backend)
    _say(args, f"minicnn: {args.dataset} on {backend}, preset {cfg['preset']}"
               f"{' (smoke test: tiny random data)' if args.smoke else ''}")
    set_seed(args.seed)
    (x_train, y_train), (x_test, y_test), classes = _load_data(args)
    mean, std = data.channel_stats(x_train)
    normalize = (mean.tolist(), std.tolist())
    train_loader = data.DataLoader(
        x_train, y_train, cfg["batch_size"], shuffle=True, seed=args.seed, normalize=normalize,
        transform=_augmentation(args.dataset, cfg["augment"]) if cfg["augment"] else None)
    test_loader = data.DataLoader(x_test, y_test, max(cfg["batch_size"], 256), shuffle=False,
                                  normalize=normalize)

    model = models.build(cfg["model"], cfg["model_kwargs"])
    if not args.quiet:
        models.summary(model, DATASETS[args.dataset]["shape"])  # the dataset's real shape
    opt = _optimizer(cfg["optimizer"], model.parameters(), cfg["lr"], cfg["weight_decay"])
    sched = _scheduler(cfg["schedule"], opt, cfg["lr"], cfg["epochs"], len(train_loader))
    initial_epoch, history = 0, None
    if args.resume:
        ckpt = training.load(args.resume, model, opt, scheduler=sched, loader=train_loader)
        initial_epoch, history = int(ckpt.epoch or 0), ckpt.history
        _say(args, f"resumed from {args.resume} after epoch {initial_epoch}")
    _say(args, f"training {cfg['model']} for {cfg['epochs']} epochs: {len(x_train)} images, "
               f"batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']:g}, "
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
    history = training.fit(model, loss, opt, train_loader, test_loader, epochs=cfg["epochs"],
                           scheduler=sched, callbacks=callbacks,
                           verbose=0 if args.quiet else (2 if args.no_progress else 1),
                           initial_epoch=initial_epoch, history=history)
    train_time = time.perf_counter() - start

    logits, labels = training.predict(model, test_loader)
    y_pred = logits.argmax(axis=1)
    test_acc = float((y_pred == labels).mean())
    epoch = history.epoch[-1] if history.epoch else initial_epoch
    paths = {"history": os.path.join(args.out, "history.json"),
             "curves": os.path.join(args.out, "curves.png"),
             "confusion": os.path.join(args.out, "confusion.png"),
             "model": os.path.join(args.out, "model.npz")}
    history.save_json(paths["history"])
    training.save(paths["model"], model, opt, scheduler=sched, loader=train_loader,
                  epoch=epoch, history=history, test_acc=test_acc, **meta)
    written = [paths["history"], paths["model"]]
    written += _plots(args, history, y_pred, labels, classes, paths)
    minutes, seconds = divmod(int(round(train_time)), 60)
    print(f"test accuracy: {test_acc:.2%} on {len(labels)} images after {epoch} epochs "
          f"({minutes}m{seconds:02d}s of training)", flush=True)
    _say(args, "wrote " + ", ".join(written))
    if history.stop_reason and history.stop_reason.startswith("TerminateOnNaN"):
        print(f"minicnn: {history.stop_reason}", file=sys.stderr)
        return 1
    return 0


def _plots(args: argparse.Namespace, history: Any, y_pred: np.ndarray, labels: np.ndarray,
           classes: tuple[str, ...], paths: dict[str, str]) -> list[str]:
    from . import plot

    if args.no_plots:
        return []
    if not plot.matplotlib_available():
        _say(args, "matplotlib is not installed: skipping curves.png (pip install matplotlib)")
        return []
    import matplotlib.pyplot as plt

    plot.plot_history(history, paths["curves"], title=f"{args.dataset}")
    cm = plot.confusion_matrix(labels, y_pred, num_classes=len(classes))
    plot.plot_confusion_matrix(cm, classes, paths["confusion"])
    plt.close("all")
    return [paths["curves"], paths["confusion"]]


def _test_data(args: argparse.Namespace, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from . import data

    if args.smoke:
        return data.synthetic(SMOKE_SIZES["test"], DATASETS[dataset]["shape"], 1)
    splits = getattr(data, DATASETS[dataset]["load"])(root=args.data, download=True,
                                                      quiet=args.quiet)
    return splits[1]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import data, training

    _choose_backend(args.backend)
    ckpt = training.load(args.checkpoint)
    dataset = args.dataset or ckpt.meta.get("dataset")
    if dataset not in DATASETS:
        raise SystemExit(f"minicnn evaluate: the checkpoint does not say which dataset it was "
                         f"trained on; pass --dataset ({', '.join(DATASETS)})")
    x_test, y_test = _test_data(args, dataset)
    normalize = (ckpt.meta["mean"], ckpt.meta["std"]) if "mean" in ckpt.meta else None
    loader = data.DataLoader(x_test, y_test, args.batch_size, shuffle=False,
                             normalize=normalize)
    result = training.evaluate(ckpt.model, loader)
    print(f"{dataset} test: loss {result['loss']:.4f}, accuracy {result['acc']:.2%} "
          f"({len(y_test)} images; checkpoint {args.checkpoint}, epoch {ckpt.epoch})")
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
        if args.model_kwargs:
            kwargs.update(json.loads(args.model_kwargs))
        params = inspect.signature(models.MODELS[name]).parameters
        size = {"vgg16": 32, "lenet5": 28}.get(name, args.image_size)
        if "image_size" in params and "image_size" not in kwargs:
            kwargs["image_size"] = size
        if name == "vgg16" and "cifar" not in kwargs:
            kwargs.update(cifar=True, dropout=0.0)
        c = kwargs.get("in_channels", params["in_channels"].default)
        model = models.build(name, kwargs)
        x = get_xp().asarray(np.random.default_rng(args.seed).standard_normal(
            (args.batch, c, size, size)), dtype=np.float64)
        start = time.perf_counter()
        result = check_gradients(model, x, seed=args.seed, max_entries=args.entries)
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
        print(f"gradient check failed (tolerance {args.tol:g}): {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import __version__
    from .backend import _import_cupy, cupy_available, get_backend

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
        cp = _import_cupy()
        print(f"cupy         {cp.__version__}")
        for i in range(cp.cuda.runtime.getDeviceCount()):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            print(f"gpu {i}        {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
    else:
        from . import backend

        print(f"cupy         unusable: {backend._cupy_error}")
    print(f"backend      {get_backend()} (MINICNN_BACKEND={os.environ.get('MINICNN_BACKEND', '')!r}"
          f"; 'auto' would pick {'cupy' if cupy_available() else 'numpy'})")
    from .data import data_root

    print(f"data folder  {data_root()} (MINICNN_DATA or --data)")
    return 0


# -- the parser ------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=os.environ.get("MINICNN_BACKEND", "auto"),
                   choices=("auto", "numpy", "cupy"),
                   help="numpy (CPU) or cupy (GPU); auto: the GPU if usable (default)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="data folder (default $MINICNN_DATA or ~/.cache/minicnn)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random data and a tiny model: the whole pipeline in seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result")


def _add_train_args(p: argparse.ArgumentParser, dataset: str | None) -> None:
    if dataset is None:
        p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    else:
        p.set_defaults(dataset=dataset)
    _add_common(p)
    from .models import MODELS

    p.add_argument("--model", default=None, choices=sorted(MODELS),
                   help="a builder of minicnn.models (default: the preset's)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help='builder arguments, e.g. \'{"widths": [32, 64], "batchnorm": true}\'')
    p.add_argument("--preset", default=None, choices=("cpu", "gpu"),
                   help="default: the one for the chosen backend")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--optimizer", default=None, choices=("sgd", "adam", "adamw"),
                   help="sgd is SGD with Nesterov momentum 0.9")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (the peak for the onecycle schedule)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--schedule", default=None,
                   choices=("onecycle", "cosine", "step", "plateau", "none"))
    p.add_argument("--augment", default=None, action=argparse.BooleanOptionalAction,
                   help="random crops (and flips, except for MNIST)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default runs/<dataset>)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue a run from its checkpoint (same flags)")
    p.add_argument("--checkpoint-every", action="store_true",
                   help="also save OUT/last.npz after every epoch (resumable)")
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and confusion.png")
    p.add_argument("--no-progress", action="store_true",
                   help="one line per epoch, no progress bar (the default when the output "
                        "is not a terminal)")


def build_parser(dataset: str | None = None) -> argparse.ArgumentParser:
    """The ``minicnn`` parser; with ``dataset`` set, the parser of an example script."""
    if dataset is not None:
        p = argparse.ArgumentParser(
            prog=f"train_{'cifar' if dataset == 'cifar10' else dataset}.py",
            description=f"Train a CNN on {dataset} with minicnn and report the test accuracy.")
        _add_train_args(p, dataset)
        return p
    p = argparse.ArgumentParser(prog="minicnn", description="minicnn: CNNs from scratch.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model on MNIST, Fashion-MNIST or CIFAR-10")
    _add_train_args(t, None)
    e = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="default: the one stored in the checkpoint")
    e.add_argument("--batch-size", type=int, default=256)
    _add_common(e)
    g = sub.add_parser("gradcheck", help="numerical gradient check of a built-in model")
    from .models import MODELS

    g.add_argument("--model", default="all", choices=["all", *sorted(MODELS)])
    g.add_argument("--model-kwargs", default=None, metavar="JSON")
    g.add_argument("--full", action="store_true",
                   help="the builder's default (full-size) arguments instead of a tiny model")
    g.add_argument("--batch", type=int, default=2)
    g.add_argument("--image-size", type=int, default=8)
    g.add_argument("--entries", type=int, default=6, help="entries checked per tensor")
    g.add_argument("--tol", type=float, default=1e-6)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    g.add_argument("-v", "--verbose", action="store_true", help="the error of every tensor")
    sub.add_parser("info", help="backend, devices, versions, data folder")
    _add_ladder_args(sub.add_parser("ladder", help="the lectures' training ladder, with a "
                                    "report beside the lecture's numbers"))
    return p


def _add_ladder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rungs", default="all",
                   help="which rungs: all (default), 1-5, 3,7,12 (12 = 12a-12g), 12c, mnist")
    p.add_argument("--budget", default=None, choices=("quick", "full", "smoke"),
                   help="quick: every rung on 2 CPU cores in under an hour (data subset, "
                        "1/4 widths); full: the lecture's sizes (GPU); smoke: seconds "
                        "(default: full on the GPU, quick on the CPU)")
    p.add_argument("--out", default="runs/ladder", metavar="DIR",
                   help="writes DIR/ladder.md, DIR/ladder.json and DIR/img/ (default "
                        "runs/ladder); results already there (same budget) are kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=os.environ.get("MINICNN_BACKEND", "auto"),
                   choices=("auto", "numpy", "cupy"))
    p.add_argument("--data", default=None, metavar="DIR",
                   help="data folder (default $MINICNN_DATA or ~/.cache/minicnn)")
    p.add_argument("--smoke", action="store_true", help="same as --budget smoke")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite DIR/ladder.md and the figures from "
                        "DIR/ladder.json")


def cmd_ladder(args: argparse.Namespace) -> int:
    from . import ladder

    if args.report_only:
        path = os.path.join(args.out, "ladder.json")
        if not os.path.exists(path):
            raise SystemExit(f"minicnn: --report-only needs {path} from an earlier run")
        with open(path) as f:
            ladder.write_report(json.load(f), args.out)
        print(f"ladder: report rewritten: {os.path.join(args.out, 'ladder.md')}")
        return 0
    backend = _choose_backend(args.backend)
    budget = "smoke" if args.smoke else args.budget or ("full" if backend == "cupy"
                                                        else "quick")
    try:
        rungs = ladder.select_rungs(args.rungs)
    except ValueError as exc:
        raise SystemExit(f"minicnn: {exc}") from None
    argv = getattr(args, "argv", None)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join([getattr(args, "prog", "minicnn"), *map(shlex.quote, argv)])
    state = ladder.run_ladder(rungs, budget, data_root=args.data, out=args.out,
                              seed=args.seed, verbose=0 if args.quiet else 2, command=command)
    print(f"ladder: {len(rungs)} rungs ({budget}) in {state['wall_seconds'] / 60:.1f} min; "
          f"report: {os.path.join(args.out, 'ladder.md')}")
    return 0


def run_ladder_example(argv: list[str] | None = None) -> int:
    """What ``examples/ladder.py`` runs: ``minicnn ladder``."""
    p = argparse.ArgumentParser(prog="ladder.py", description=(
        "The lectures' CNN-training ladder: every rung, with a report beside the lecture's "
        "numbers."))
    _add_ladder_args(p)
    args = p.parse_args(argv)
    args.command, args.argv, args.prog = "ladder", argv, "python examples/ladder.py"
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "out", "unset") is None and hasattr(args, "dataset"):
        args.out = os.path.join("runs", args.dataset + ("-smoke" if args.smoke else ""))
    command = getattr(args, "command", "train")
    handler = {"train": cmd_train, "evaluate": cmd_evaluate, "gradcheck": cmd_gradcheck,
               "info": cmd_info, "ladder": cmd_ladder}[command]
    from .data import DatasetError

    try:
        return handler(args)
    except DatasetError as exc:  # its message says which file is missing and what to do
        print(f"minicnn: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minicnn`` command. Returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = argv  # for the command line the ladder's report quotes
    return _run(args)


def run_example(dataset: str, argv: list[str] | None = None) -> int:
    """What ``examples/train_<dataset>.py`` runs: ``minicnn train --dataset <dataset>``."""
    return _run(build_parser(dataset).parse_args(argv))
