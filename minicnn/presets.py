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
import time
from typing import Any

import numpy as np

from .backend import get_array_module
from .optim import LRScheduler

__all__ = ["PRESETS", "DATASETS", "TINY_MODEL_KWARGS", "SMOKE_SIZES", "resolve", "model_kwargs",
           "augmentation", "loader_options", "optimizer", "scheduler", "WarmupLinearDecay",
           "warm_up", "AIRBENCH"]

# "model" is a builder of minicnn.models; "model_kwargs" its arguments (the dataset's
# in_channels, image_size and num_classes are added). "lr" is the peak lr for OneCycle.
# The CPU presets are sized for the time budgets of docs/results.md on 2 cores (MNIST 5 min,
# Fashion-MNIST 15 min, CIFAR-10 15 min), measured with the BLAS kernel a user's machine picks
# (OpenBLAS SkylakeX here, no OPENBLAS_CORETYPE override); re-measure them when the layers get
# faster. "tta" (default False): the test-time augmentation of the final accuracy
# (``training.predict``). "threads" (default 1): the CPU presets train as 2 data-parallel
# thread-ranks (docs/distributed.md), and their "batch_size" is per thread: 2 x 32 is the
# global batch of 64 they had as one thread, with BatchNorm over each thread's 32 ("sync_bn",
# default False, would make it SyncBatchNorm2d over all 64).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=1, batchnorm=True,
                                                   hidden=256, dropout=0.0, pool_first=True),
                    epochs=6, batch_size=32, threads=2, optimizer="adam", lr=3e-3,
                    weight_decay=0.0, schedule="onecycle", augment="crop",
                    label_smoothing=0.1),
        "gpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=2, batchnorm=True,
                                                   hidden=256, dropout=0.25),
                    epochs=10, batch_size=256, optimizer="adam", lr=4e-3, weight_decay=0.0,
                    schedule="onecycle", augment=True, label_smoothing=0.0),
    },
    "fashion_mnist": {
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64], depth=1, batchnorm=True,
                                                   hidden=256, dropout=0.2, pool_first=True),
                    epochs=20, batch_size=64, threads=2, optimizer="adam", lr=3e-3,
                    weight_decay=0.0, schedule="onecycle", augment="flip",
                    label_smoothing=0.1),
        "gpu": dict(model="vgg", model_kwargs=dict(widths=[64, 128], depth=2, batchnorm=True,
                                                   hidden=256, dropout=0.3),
                    epochs=20, batch_size=256, optimizer="adam", lr=3e-3, weight_decay=0.0,
                    schedule="onecycle", augment=True, label_smoothing=0.0),
    },
    "cifar10": {
        # chosen among 32 recipes trained side by side on a GPU, each with the epochs that
        # fit 15 min on the CPU (docs/results.md, benchmarks/results/recipes/); 13 epochs
        # took 14 min 20 s on the team's 2-core Xeon after the max-pool speed-up. airbench's
        # alternating flip instead of random flips: +0.4 point over two seeds, no cost;
        # airbench's translation by 2 reflect-padded pixels instead of crops of 4 zero-padded
        # ones: +1.4 points (seed 0), no cost; 15 epochs in 13 min 09 s as two thread-ranks.
        # BatchNorm over both threads' 64 images (sync_bn) was measured and not taken: no
        # gain with the translation (86.76 against 86.80 %, seed 0), 3.5 % of a step
        # (docs/results.md, 2026-12-07). A last stage of 160 channels instead of 128: 87.07 %
        # against 86.86 % over the same five seeds, for a 10 % slower step, paid for by
        # validating every third epoch instead of every one (docs/results.md, 2026-12-07,
        # last section)
        "cpu": dict(model="vgg", model_kwargs=dict(widths=[32, 64, 160], depth=2,
                                                   batchnorm=True, hidden=None, dropout=0.0,
                                                   pool_first=True),
                    epochs=15, batch_size=32, threads=2, optimizer="sgd", lr=0.1,
                    weight_decay=5e-4, schedule="onecycle", augment="translate+altflip",
                    label_smoothing=0.2, tta="flip+shift", validation_freq=3),
        # airbench94's recipe (issue 25; the constants and the deviations: AIRBENCH below)
        "gpu": dict(model="airbench94", model_kwargs=dict(), epochs=10, batch_size=1024,
                    optimizer="airbench", lr=1.5, weight_decay=0.0153 / 11.5,
                    schedule="airbench", augment="translate+altflip", drop_last=True,
                    label_smoothing=0.2, tta="flip+shift", warmup=True),
    },
}

# airbench94 (KellerJordan/cifar10-airbench, legacy/airbench94.py; arXiv:2404.00498) in
# minicnn's terms: the cifar10/gpu preset above, the "airbench" optimizer and schedule below.
#
# Translation of its hyperparameters. airbench sums the loss over the batch of 1024 and
# writes lr and weight decay "per 1024 examples": PyTorch lr = 11.5 / (1024 (1 + 1/(1 - 0.85)))
# and weight_decay = 0.0153 · 1024 / 11.5 for the SGD step of a *summed* loss. minicnn's loss
# is the batch mean (1/1024 of the sum), so the same steps are lr = 11.5 / (1 + 1/0.15) = 1.5
# and weight decay λ = 0.0153 / 11.5 = 1.33e-3, coupled (added to the gradient before the
# momentum, as airbench's torch.optim.SGD does). Its BatchNorm biases step at 64x the lr with
# the weight decay divided by 64 (so lr·λ, the decay per step, is the same for every group).
#
# What is as in airbench: the net (minicnn.models.airbench94: whitening 2x2 fitted on 5000
# training images, GELU, groups 64/256/256 of conv-pool-BN-GELU-conv-BN-GELU without conv
# bias and with dirac-initialised convs, MaxPool(3), bias-free Linear scaled by 1/9; BN eps
# 1e-12, momentum 0.4, gamma frozen at 1), batch 1024 with the last partial batch dropped,
# Nesterov SGD momentum 0.85, label smoothing 0.2, BN biases at 64x the lr, the lr warm-up
# from 0.2x to 1x over the first 23 % of the steps then linear decay to 0.07x, Lookahead
# every 5 steps with airbench's schedule (the slow weights follow at α = 1 - 0.95⁵ (t/T)³,
# from 1 down to 0.23), reflect-padded translation by up to 2 pixels, alternating flip, TTA
# mirror + 1-pixel shifts, and the clock (commands: warm-up excluded, data on the device to
# the final TTA accuracy).
#
# Deviations (what minicnn does not have, or does differently):
# - 10 epochs instead of 9.9 (minicnn's epochs are whole; 480 steps instead of 475);
# - the whitening layer has no bias (airbench trains one for the first 3 epochs);
# - Lookahead averages the trainable parameters only; airbench's EMA state also averages
#   the BatchNorm running statistics, and copies the average back at the end;
# - the head's 1/9 is folded into its weight (W' = W/9, stepped at lr/81 with weight decay
#   x81: the same logits step by step, see ``optimizer``), as minicnn has no scaling layer;
# - float32 throughout (airbench: fp16 activations and weights, fp32 BatchNorm), and the
#   per-epoch validation pass is inside the clock (airbench does not time it);
# - the flips of the alternating flip are drawn once from the seed (airbench re-draws the
#   random half with torch's generator); crop offsets come from the host generator.
AIRBENCH: dict[str, Any] = dict(
    momentum=0.85,          # Nesterov
    bias_lr_scale=64.0,     # BatchNorm biases (Parameters named "beta")
    head_scale=1.0 / 9.0,   # the Linear's output scale, folded into its weight "W_head"
    lookahead_k=5,          # Lookahead: steps between two pulls of the slow weights
    lookahead_decay=0.95 ** 5,  # α(t) = 1 - decay · (t/T)³
    warmup_fraction=0.23,   # lr: 0.2x -> 1x over the first 23 % of the steps, then -> 0.07x
    warmup_start=0.2,
    final_factor=0.07,
)

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
    "airbench94": dict(widths=[8, 16, 16]),
}
SMOKE_SIZES = dict(train=96, test=48, batch_size=32)


# -- what a preset means: the objects a run is built from --------------------------------------

def resolve(dataset: str, device: str, flags: dict[str, Any],
            smoke: bool = False) -> dict[str, Any]:
    """``PRESETS[dataset][device]`` with ``flags`` on top: a run's configuration.

    ``flags`` holds the values given on the command line (None: not given): ``model``,
    ``model_kwargs`` (merged into the preset's, or replacing them with another ``model``),
    ``epochs``, ``batch_size``, ``optimizer``, ``lr``, ``weight_decay``, ``schedule``,
    ``augment`` (True keeps the preset's kind of augmentation, or the dataset's default if
    the preset has none; False: none), ``label_smoothing``, ``tta``, ``threads`` (the
    data-parallel thread-ranks of a NumPy run, 1 when the preset has none; ``batch_size`` is
    per thread), ``sync_bn`` (BatchNorm statistics over all data-parallel ranks' samples,
    ``SyncBatchNorm2d``; default False: each rank's own), ``validation_freq`` (``fit``'s:
    validate after every n-th epoch and the last; default 1). ``smoke`` shrinks the
    model and the batch (``TINY_MODEL_KWARGS``, ``SMOKE_SIZES``) and defaults to one epoch.
    The dataset's in_channels / image_size / num_classes are added to the model's arguments.
    """
    cfg = copy.deepcopy(PRESETS[dataset][device])
    cfg["preset"] = f"{dataset}/{device}"
    cfg.setdefault("tta", False)
    cfg.setdefault("threads", 1)
    cfg.setdefault("sync_bn", False)
    cfg.setdefault("validation_freq", 1)
    if flags.get("model") is not None and flags["model"] != cfg["model"]:
        cfg["model"], cfg["model_kwargs"] = flags["model"], {}
    for key in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule",
                "augment", "label_smoothing", "tta", "threads", "sync_bn", "validation_freq"):
        if key == "augment" and flags.get(key) is True and cfg["augment"]:
            continue                  # --augment: the preset's own kind of augmentation
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


AUGMENTATIONS = ("crop", "flip", "translate", "altflip")


def _augment_words(dataset: str, kind: Any) -> list[str]:
    """``kind`` ("crop+flip", True for the dataset's default, False / None: none) as words."""
    if kind is None or kind is False:
        return []
    kind = DATASETS[dataset]["augment"] if kind is True else str(kind)
    words = [w for w in kind.split("+") if w]
    unknown = [w for w in words if w not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"augmentation: unknown kind {'+'.join(unknown)!r} in {kind!r}; "
                         f"expected words of {AUGMENTATIONS} joined by '+'")
    return words


def augmentation(dataset: str, kind: Any = True) -> Any:
    """The training transforms: ``kind`` names them, joined by "+"; True means the dataset's
    default (``DATASETS``).

    - "crop": random crops of zero-padded images, padding 4 pixels at 32x32, 2 at 28x28;
    - "flip": each image mirrored left-right with probability 1/2;
    - "translate": airbench's translation by up to 2 pixels, reflect-padded
      (``RandomCrop(padding=2, padding_mode="reflect")``);
    - "altflip": airbench's alternating flip, which the loader does (``loader_options``),
      so it adds no transform here.
    """
    from . import data  # noqa: PLC0415

    _, h, w = DATASETS[dataset]["shape"]
    words = _augment_words(dataset, kind)
    steps = []
    if "crop" in words:
        steps.append(data.RandomCrop((h, w), padding=4 if h >= 32 else 2))
    if "translate" in words:
        steps.append(data.RandomCrop((h, w), padding=2, padding_mode="reflect"))
    if "flip" in words:
        steps.append(data.RandomHorizontalFlip())
    return data.Compose(steps)


def loader_options(dataset: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The training ``DataLoader``'s options a configuration asks for:
    ``alternating_flip`` ("altflip" in its augment) and ``drop_last`` (its "drop_last",
    default False). ``DataLoader(x, y, batch, ..., **loader_options(dataset, cfg))``."""
    return dict(alternating_flip="altflip" in _augment_words(dataset, cfg.get("augment")),
                drop_last=bool(cfg.get("drop_last", False)))


def optimizer(name: str, params: list, lr: float, weight_decay: float) -> Any:
    """"sgd" (SGD with Nesterov momentum 0.9), "adam", "adamw" or "airbench".

    "airbench" (the cifar10/gpu preset, ``AIRBENCH``): ``Lookahead(SGD(groups), k=5)`` with
    Nesterov momentum 0.85 and coupled weight decay λ, in three groups:

    - BatchNorm biases (Parameters named "beta"): lr_scale 64, weight decay λ / 64;
    - the head's weight (named "W_head", built as W' = s·W with s = 1/9): lr_scale s²,
      weight decay λ / s². Why: airbench computes the logits as s·(W x) and steps W, whose
      gradient is s·g (g = ∂L/∂(sW)), so sW moves by -γ s (s g + λ W) = -γ (s² g + λ sW).
      W' = sW stepped at lr_scale s² with decay λ/s² moves by -γ s² (g + λ W' / s²), the
      same; momentum is linear in these steps, so every step matches;
    - everything else: lr_scale 1, weight decay λ.

    Its α (the slow weights' pull) is set by the "airbench" schedule at every step.
    """
    from . import optim  # noqa: PLC0415

    if name == "airbench":
        s2 = AIRBENCH["head_scale"] ** 2
        bias_scale = AIRBENCH["bias_lr_scale"]
        biases = [p for p in params if p.name == "beta"]
        head = [p for p in params if p.name == "W_head"]
        rest = [p for p in params if p.name not in ("beta", "W_head")]
        groups = [dict(params=rest)]
        if biases:
            groups.append(dict(params=biases, lr_scale=bias_scale,
                               weight_decay=weight_decay / bias_scale))
        if head:
            groups.append(dict(params=head, lr_scale=s2, weight_decay=weight_decay / s2))
        sgd = optim.SGD(groups, lr=lr, momentum=AIRBENCH["momentum"], nesterov=True,
                        weight_decay=weight_decay)
        return optim.Lookahead(sgd, k=AIRBENCH["lookahead_k"], alpha=1.0)
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
    if name == "airbench":
        return WarmupLinearDecay(opt, total_steps=epochs * steps_per_epoch)
    return None


class WarmupLinearDecay(LRScheduler):
    """airbench's schedule, stepped after every batch: a linear warm-up, then linear decay;
    and, for a ``Lookahead``, its α at every step.

    With T = ``total_steps`` and w = floor(0.23 T), the lr of step t = 0 .. T-1 is::

        base_lr · (0.2 + 0.8 t / w)                      t < w    (warm-up)
        base_lr · (1 - 0.93 (t - w) / (T - w))           t >= w   (to 0.07 at t = T)

    and a ``Lookahead`` optimizer's α for its n-th step (n = t + 1) is
    1 - 0.95⁵ (n / T)³: 1 at the start (the slow weights just follow), 0.23 at the end.
    (airbench: ``LambdaLR(get_lr)`` and ``LookaheadState.update(decay=0.95⁵ (n/T)³)``; the
    constants are ``AIRBENCH``'s.)
    """

    interval = "step"
    _state_keys = ("last_epoch", "base_lr", "total_steps")

    def __init__(self, optimizer: Any, total_steps: int):
        if int(total_steps) < 1:
            raise ValueError(f"WarmupLinearDecay: total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        super().__init__(optimizer)

    def get_lr(self) -> float:
        t, total = self.last_epoch, self.total_steps
        w = int(total * AIRBENCH["warmup_fraction"])
        start, end = AIRBENCH["warmup_start"], AIRBENCH["final_factor"]
        if t < w:
            return self.base_lr * (start + (1.0 - start) * t / w)
        frac = min(t - w, total - w) / max(total - w, 1)
        return self.base_lr * (1.0 - (1.0 - end) * frac)

    def alpha(self) -> float:
        """The Lookahead α of the next optimizer step (number last_epoch + 1)."""
        n = min(self.last_epoch + 1, self.total_steps)
        return 1.0 - AIRBENCH["lookahead_decay"] * (n / self.total_steps) ** 3

    def _set_lr(self) -> None:
        super()._set_lr()
        if hasattr(self.optimizer, "alpha") and hasattr(self.optimizer, "slow"):  # Lookahead
            self.optimizer.alpha = self.alpha()


# -- the warm-up: every kernel compiled before the clock starts --------------------------------

def warm_up(model: Any, loss: Any, optimizer: Any, scheduler: Any, loader: Any,
            tta: Any = False, precision: str | None = None) -> float:
    """Run the training code once on a few batches, then put everything back; the seconds.

    On CuPy the first launch of each kernel compiles it (NVRTC), seconds in all, which
    airbench leaves out of its clock by a warm-up run. This does the same within one run:
    ``training.fit`` at lr 0 for one epoch of k batches (k = the Lookahead's sync interval,
    else 1) of ``loader``'s first images with its transforms, normalisation, alternating
    flip and batch size, with validation on the same batches, then ``training.predict`` with
    ``tta`` on them: every kernel of a step, of the metric read-backs, of evaluation and of
    the final test-time augmentation (on one batch) has run once (the schedule runs on the
    host: no kernels). Then the model's
    parameters, buffers (BatchNorm's running statistics), gradients, train/eval modes and
    random generators (``rng_states``), the optimizer's state (moments, step count,
    Lookahead's slow weights), the schedule (and so the lr) are restored exactly, and
    ``loader`` was never iterated: the run that follows is bit for bit the run without the
    warm-up (tests/test_presets_gpu.py). On NumPy there is nothing to compile; it still
    works (a CPU run just loses the seconds of those steps).

    Parameters
    ----------
    model, loss, optimizer, scheduler (or None) : as given to ``training.fit``
    loader : minicnn.data.DataLoader
        The training loader (its dataset already on the device).
    tta : the final test's test-time augmentation (``training.predict``)
    precision : the run's ``fit(..., precision=)`` (its GEMM kernels are others), or None

    Returns the seconds the warm-up took, after waiting for the device.
    """
    from . import data, training  # noqa: PLC0415

    start = time.perf_counter()
    steps = int(getattr(optimizer, "k", 1))
    n = min(len(loader.x), steps * loader.batch_size)
    warm_train = data.DataLoader(loader.x[:n], loader.y[:n], loader.batch_size, seed=0,
                                 transform=loader.transform, normalize=loader.normalize,
                                 alternating_flip=loader.alternating_flip)
    warm_eval = data.DataLoader(loader.x[:n], loader.y[:n], loader.batch_size, shuffle=False,
                                normalize=loader.normalize)
    warm_test = data.DataLoader(loader.x[:loader.batch_size], loader.y[:loader.batch_size],
                                loader.batch_size, shuffle=False, normalize=loader.normalize)
    saved = _snapshot(model, optimizer, scheduler)
    try:
        # At lr 0 (the same kernels, the lr is one of their arguments): the weights stay
        # where they are, so no step can overflow, e.g. before PatchWhitening is fitted.
        optimizer.lr = 0.0
        policy = {} if precision is None else dict(precision=precision)
        training.fit(model, loss, optimizer, warm_train, warm_eval, epochs=1, verbose=0,
                     **policy)
        training.predict(model, warm_test, tta=tta)
    finally:
        _restore(model, optimizer, scheduler, saved)
    xp = get_array_module(model.parameters()[0].data) if model.parameters() else np
    if xp is not np:
        xp.cuda.Device().synchronize()  # the restoring copies are done before the clock
    return time.perf_counter() - start


def _snapshot(model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Copies of everything training changes (``warm_up`` puts them back)."""
    return dict(
        state={k: v.copy() for k, v in model.state_dict().items()},
        grads=[None if p.grad is None else p.grad.copy() for p in model.parameters()],
        modes=[(m, m.training) for m in model.modules()],
        rngs=copy.deepcopy(model.rng_states()),
        optimizer=optimizer.state_dict(),          # NumPy copies
        alpha=getattr(optimizer, "alpha", None),
        lr=float(optimizer.lr),
        scheduler=None if scheduler is None else copy.deepcopy(scheduler.state_dict()))


def _restore(model: Any, optimizer: Any, scheduler: Any, saved: dict[str, Any]) -> None:
    model.load_state_dict(saved["state"])      # in place: flat optimizer views stay bound
    for p, g in zip(model.parameters(), saved["grads"], strict=True):
        if g is None or p.grad is None or p.grad.shape != g.shape:
            p.grad = g
        else:
            p.grad[...] = g
    for m, training_mode in saved["modes"]:
        m.training = training_mode
    model.set_rng_states(saved["rngs"])
    optimizer.load_state_dict(saved["optimizer"])
    if saved["alpha"] is not None:
        optimizer.alpha = saved["alpha"]
    optimizer.lr = saved["lr"]
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
