"""What each example trains by default, per device: the one place to tune the examples.

``PRESETS[dataset][device]`` is the configuration ``minicnn train --dataset <dataset>`` (and
``examples/train_<dataset>.py``) uses on that device ("cpu" when NumPy runs, "gpu" when CuPy
does); every value can be overridden by a flag of the same name. ``DATASETS`` says how to
load each dataset and what its images look like; ``TINY_MODEL_KWARGS`` and ``SMOKE_SIZES``
shrink a run to seconds for ``--smoke`` and ``minicnn gradcheck``. ``resolve`` puts the flags
on top of a preset; ``augmentation``, ``optimizer`` and ``scheduler`` turn a preset's names
into objects.

Measured results of the presets are in docs/results.md; re-measure them when you change one.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

__all__ = ["PRESETS", "DATASETS", "TINY_MODEL_KWARGS", "SMOKE_SIZES", "resolve", "model_kwargs",
           "augmentation", "optimizer", "scheduler"]

# "model" is a builder of minicnn.models; "model_kwargs" its arguments (the dataset's
# in_channels, image_size and num_classes are added). "lr" is the peak lr for OneCycle.
# The CPU presets are sized for the time budgets of docs/results.md on 2 cores (MNIST 5 min,
# Fashion-MNIST 15 min, CIFAR-10 15 min), measured with the BLAS kernel a user's machine picks
# (OpenBLAS SkylakeX here, no OPENBLAS_CORETYPE override); re-measure them when the layers get
# faster. "tta" (default False): the test-time augmentation of the final accuracy
# (``training.predict``).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=1, batchnorm=True,
                                                   hidden=256, dropout=0.0, pool_first=True),
                    epochs=6, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    schedule="onecycle", augment="crop", label_smoothing=0.1),
        "gpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=2, batchnorm=True,
                                                   hidden=256, dropout=0.25),
                    epochs=10, batch_size=256, optimizer="adam", lr=4e-3, weight_decay=0.0,
                    schedule="onecycle", augment=True, label_smoothing=0.0),
    },
    "fashion_mnist": {
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=1, batchnorm=True,
                                                   hidden=256, dropout=0.2, pool_first=True),
                    epochs=20, batch_size=128, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    schedule="onecycle", augment="flip", label_smoothing=0.1),
        "gpu": dict(model="vgg", model_kwargs=dict(widths=[64, 128], depth=2, batchnorm=True,
                                                   hidden=256, dropout=0.3),
                    epochs=20, batch_size=256, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    schedule="onecycle", augment=True, label_smoothing=0.0),
    },
    "cifar10": {
        # chosen among 32 recipes trained side by side on a GPU, each with the epochs that
        # fit 15 min on the CPU (docs/results.md, benchmarks/results/recipes/); 13 epochs
        # took 14 min 20 s on the team's 2-core Xeon after the max-pool speed-up
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64, 128], depth=2,
                                                   batchnorm=True, hidden=None, dropout=0.0,
                                                   pool_first=True),
                    epochs=13, batch_size=64, optimizer="sgd", lr=0.1, weight_decay=5e-4,
                    schedule="onecycle", augment=True, label_smoothing=0.2, tta="flip+shift"),
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


# -- what a preset means: the objects a run is built from --------------------------------------

def resolve(dataset: str, device: str, flags: dict[str, Any],
            smoke: bool = False) -> dict[str, Any]:
    """``PRESETS[dataset][device]`` with ``flags`` on top: a run's configuration.

    ``flags`` holds the values given on the command line (None: not given): ``model``,
    ``model_kwargs`` (merged into the preset's, or replacing them with another ``model``),
    ``epochs``, ``batch_size``, ``optimizer``, ``lr``, ``weight_decay``, ``schedule``,
    ``augment``, ``label_smoothing``, ``tta``. ``smoke`` shrinks the model and the batch
    (``TINY_MODEL_KWARGS``, ``SMOKE_SIZES``) and defaults to one epoch. The dataset's
    in_channels / image_size / num_classes are added to the model's arguments.
    """
    cfg = copy.deepcopy(PRESETS[dataset][device])
    cfg["preset"] = f"{dataset}/{device}"
    cfg.setdefault("tta", False)
    if flags.get("model") is not None and flags["model"] != cfg["model"]:
        cfg["model"], cfg["model_kwargs"] = flags["model"], {}
    for key in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
                "augment", "label_smoothing", "tta"):
        if flags.get(key) is not None:
            cfg[key] = flags[key]
    cfg["model_kwargs"].update(flags.get("model_kwargs") or {})
    if smoke:
        cfg["model_kwargs"].update(TINY_MODEL_KWARGS.get(cfg["model"], {}))
        cfg["batch_size"] = min(cfg["batch_size"], SMOKE_SIZES["batch_size"])
        if flags.get("epochs") is None:
            cfg["epochs"] = 1
    cfg["model_kwargs"] = model_kwargs(cfg["model"], dataset, cfg["model_kwargs"])
    return cfg


def model_kwargs(builder: str, dataset: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus the dataset's in_channels / image_size / num_classes where the builder
    of ``minicnn.models`` takes them (``kwargs`` wins)."""
    from .models import MODELS  # noqa: PLC0415 (presets is data first; models is heavier)

    out: dict[str, Any] = {}
    if dataset is not None:
        c, h, _ = DATASETS[dataset]["shape"]
        params = inspect.signature(MODELS[builder]).parameters
        defaults = dict(in_channels=c, image_size=h, num_classes=10)
        if builder == "vgg16" and h == 32:
            defaults["cifar"] = True
        out = {k: v for k, v in defaults.items() if k in params}
    out.update(kwargs)
    return out


def augmentation(dataset: str, kind: Any = True) -> Any:
    """The training transforms: ``kind`` names them ("crop", "flip", "crop+flip"); True means
    the dataset's default (``DATASETS``). Crops pad by 4 pixels at 32x32, 2 at 28x28."""
    from . import data  # noqa: PLC0415

    _, h, w = DATASETS[dataset]["shape"]
    kind = DATASETS[dataset]["augment"] if kind is True else str(kind)
    steps = []
    if "crop" in kind:
        steps.append(data.RandomCrop((h, w), padding=4 if h >= 32 else 2))
    if "flip" in kind:
        steps.append(data.RandomHorizontalFlip())
    return data.Compose(steps)


def optimizer(name: str, params: list, lr: float, weight_decay: float) -> Any:
    """"sgd" (SGD with Nesterov momentum 0.9), "adam" or "adamw"."""
    from . import optim  # noqa: PLC0415

    if name == "sgd":
        return optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    return {"adam": optim.Adam, "adamw": optim.AdamW}[name](params, lr=lr,
                                                            weight_decay=weight_decay)


def scheduler(name: str, opt: Any, lr: float, epochs: int, steps_per_epoch: int) -> Any:
    """"onecycle" (peak ``lr``), "cosine", "step" (x0.1 every third of the run), "plateau"
    (halve after 2 epochs without progress) or "none" (None)."""
    from . import optim  # noqa: PLC0415

    if name == "onecycle":
        return optim.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    if name == "cosine":
        return optim.CosineAnnealingLR(opt, T_max=epochs)
    if name == "step":
        return optim.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "plateau":
        return optim.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    return None
