"""The lectures' ladder: every step from a 2-conv sigmoid net to a regularised residual VGG,
as one command with a report (``minicnn ladder``, ``examples/ladder.py``).

Each *rung* is one configuration of ``minicnn.models.vgg`` plus the data treatment and the
optimiser settings the lecture changed at that step; each rung inherits everything from the
one before it (``RUNGS`` below is the whole ladder, readable top to bottom). The common
ground (lecture): 3x3 'same' convs with stride 1, 2x2 max pooling after each stage, dense
512, dense 10, Adam lr 1e-3, cross-entropy, batch 256.

Budgets (``BUDGETS``) trade fidelity for time:

- ``quick``: every rung on 2 CPU cores within an hour: a subset of CIFAR-10 (5,000 training
  and 2,000 test images), 4 epochs at batch 64 (more steps per epoch than 256 on so few
  images) and every width and the dense layer at 1/4 of the lecture's (64, 128, 256, 512, 512
  become 16, 32, 64, 128, 128). Enough to show which rungs learn and which do not; the
  accuracies are far below the lecture's.
- ``full``: the lecture's widths, all 50,000 / 10,000 images, batch 256, 30 epochs
  (rung 12: 60): a job for a GPU.
- ``smoke``: random images and a tiny width, a few steps per rung: the pipeline in seconds.

For every rung the report gives the final training accuracy (the running mean over the last
epoch, as Keras prints it) and the test ("val") accuracy after the last epoch, beside the
lecture's; the curves of every rung; and, for every CIFAR-10 rung, the norm of the gradient of
each layer's weights at the first step (the picture of vanishing gradients).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import data as D
from . import init, losses, models, optim, plot, regularizers, training
from . import layers as L
from ._io import atomic_write
from .backend import get_backend, to_numpy

__all__ = ["Rung", "RUNGS", "BUDGETS", "select_rungs", "build", "run_rung", "run_ladder",
           "gradient_norms", "write_report"]


@dataclasses.dataclass(frozen=True)
class Rung:
    """One step of the ladder.

    ``model`` holds the arguments of ``minicnn.models.vgg`` (widths at the lecture's size;
    budgets scale them). ``normalize``: per-channel standardisation of the input (else [0, 1]).
    ``noise``: std of Gaussian input noise. ``augment``: "", "flip" or "flip+crop" (random
    crop-and-resize). ``l2``: an L2 penalty l2·ΣW² on every conv and dense kernel.
    """

    name: str
    dataset: str
    change: str
    lecture: str
    model: dict[str, Any]
    normalize: bool = False
    lr: float = 1e-3
    noise: float = 0.0
    augment: str = ""
    l2: float = 0.0

    def then(self, name: str, change: str, lecture: str, **changes: Any) -> Rung:
        """The next rung: this one with ``changes`` (``model`` entries are merged)."""
        model = {**self.model, **changes.pop("model", {})}
        return dataclasses.replace(self, name=name, change=change, lecture=lecture,
                                   model=model, **changes)


def _ladder() -> list[Rung]:
    r1 = Rung("1", "cifar10", "2 conv (64, 128) + sigmoid, data in [0, 1], Glorot uniform",
              "69.3 / 64.5", dict(widths=[64, 128], depth=1, activation="sigmoid",
                                  init="glorot_uniform", hidden=512))
    r2 = r1.then("2", "3 conv (64, 128, 256) + sigmoid", "93.8 / 68.7",
                 model=dict(widths=[64, 128, 256]))
    r3 = r2.then("3", "9 conv (3 per stage) + dense 512, sigmoid",
                 "does not learn (vanishing gradients)", model=dict(depth=3))
    r4 = r3.then("4", "same, ReLU", "train up to 99 %", model=dict(activation="relu"))
    r5 = r4.then("5", "12 conv (+ a 512 stage), ReLU, Glorot", "does not learn again",
                 model=dict(widths=[64, 128, 256, 512]))
    r6 = r5.then("6", "+ per-channel 0-mean/unit-std input normalisation", "learns",
                 normalize=True)
    r7 = r6.then("7", "+ BatchNorm after each conv", "faster, better",
                 model=dict(batchnorm=True))
    r8 = r7.then("8", "+ He normal init instead of Glorot", "better",
                 model=dict(init="he_normal"))
    r9 = r8.then("9", "SiLU instead of ReLU", "compare", model=dict(activation="silu"))
    r10 = r9.then("10", "+ skip connections (projection shortcut per stage)",
                  "better gradient flow", model=dict(residual=True))
    r11 = r10.then("11", "lr 1e-4 instead of 1e-3", "compare", lr=1e-4)
    # Generalisation, cumulative on rung 10 (lr 1e-3), as the lecture adds one at a time.
    g1 = r10.then("12a", "+ Gaussian input noise (std 0.1)", "80.2 → 80.9 val", noise=0.1)
    g2 = g1.then("12b", "+ dropout 0.3 before the dense layers", "—",
                 model=dict(dropout=0.3))
    g3 = g2.then("12c", "+ L2 5e-4 on every kernel", "—", l2=5e-4)
    g4 = g3.then("12d", "+ random horizontal flip", "90.7 val", augment="flip")
    g5 = g4.then("12e", "+ random crop-and-resize", "91.2 val", augment="flip+crop")
    g6 = g5.then("12f", "instance norm instead of BatchNorm", "91.6 val",
                 model=dict(norm="instance"))
    g7 = g6.then("12g", "more capacity (every width and the dense layer x2)",
                 "97.9 / 93.6", model=dict(widths=[128, 256, 512, 1024], hidden=1024))
    # The lectures' MNIST comparison with a small CNN.
    m1 = Rung("mnist", "mnist", "small CNN (32, 64), ReLU, no BatchNorm", "97.53 val",
              dict(widths=[32, 64], depth=1, activation="relu", init="he_normal", hidden=128))
    m2 = m1.then("mnist-bn", "with BatchNorm", "97.85 val", model=dict(batchnorm=True))
    m3 = m1.then("mnist-dropout", "with dropout 0.3 (no BatchNorm)", "97.58 val",
                 model=dict(dropout=0.3))
    return [r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11, g1, g2, g3, g4, g5, g6, g7,
            m1, m2, m3]


RUNGS: list[Rung] = _ladder()
GRADIENT_RUNGS = ("3", "4", "5", "6", "7")  # the report's vanishing-gradient picture

# train/val: images used (None: all); width: factor on every conv width and the dense layer.
BUDGETS: dict[str, dict[str, Any]] = {
    "quick": dict(train=5000, val=2000, epochs=4, epochs_sigmoid=12, epochs_12=4,
                  batch_size=64, width=0.25,
                  mnist_train=10000, mnist_val=None, mnist_epochs=1, mnist_width=1.0),
    "full": dict(train=None, val=None, epochs=30, epochs_sigmoid=30, epochs_12=60,
                 batch_size=256, width=1.0,
                 mnist_train=None, mnist_val=None, mnist_epochs=5, mnist_width=1.0),
    "smoke": dict(train=32, val=16, epochs=1, epochs_sigmoid=1, epochs_12=1, batch_size=16,
                  width=1 / 16,
                  mnist_train=32, mnist_val=16, mnist_epochs=1, mnist_width=1 / 8),
}


def select_rungs(spec: str | Sequence[str] | None) -> list[Rung]:
    """Rungs named by ``spec``: "all" (default), "1-5", "3,7,12", "12c", "mnist", ...

    A number selects that rung, and "12" all of 12a–12g; "a-b" every rung numbered a..b;
    "mnist" the three MNIST rungs; "cifar10" all the others.
    """
    if spec is None or spec == "all":
        return list(RUNGS)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for item in (i.strip() for i in items):
        if item in ("mnist", "cifar10"):
            match = {r.name for r in RUNGS if r.dataset == item}
        elif item.replace("-", "").isdigit() and item.count("-") <= 1:
            lo, hi = (int(v) for v in item.split("-")) if "-" in item else (int(item),) * 2
            match = {r.name for r in RUNGS if r.dataset == "cifar10" and lo <= _number(r) <= hi}
        else:
            match = {r.name for r in RUNGS if r.name == item}
        if not match:
            raise ValueError(f"ladder: unknown rung {item!r}; rungs are "
                             f"{', '.join(r.name for r in RUNGS)} (or 1-12, mnist, all)")
        chosen |= match
    return [r for r in RUNGS if r.name in chosen]


def _number(rung: Rung) -> int:
    return int("".join(ch for ch in rung.name if ch.isdigit()))


def _scaled(model: dict[str, Any], width: float) -> dict[str, Any]:
    out = dict(model)
    out["widths"] = [max(2, round(w * width)) for w in model["widths"]]
    if out.get("hidden"):
        out["hidden"] = max(4, round(out["hidden"] * width))
    return out


def build(rung: Rung, budget: dict[str, Any], shape: tuple[int, int, int]) -> L.Sequential:
    """The rung's network at the budget's width; L2 attached to every kernel if asked."""
    width = budget["mnist_width"] if rung.dataset == "mnist" else budget["width"]
    model = models.vgg(in_channels=shape[0], image_size=shape[1], num_classes=10,
                       **_scaled(rung.model, width))
    if rung.l2:
        for m in model.modules():
            if isinstance(m, (L.Conv2d, L.Linear)):
                m.W.regularizer = regularizers.L2(rung.l2)
    return model


def _transform(rung: Rung, size: int, stats: tuple | None) -> Any:
    """The rung's training transforms (crop-and-resize, flip, input noise), or None."""
    steps: list[Any] = []
    if "crop" in rung.augment:
        steps.append(D.RandomResizedCrop(size, scale=(0.6, 1.0)))
    if "flip" in rung.augment:
        steps.append(D.RandomHorizontalFlip())
    if rung.noise:
        # std `noise` on the model's input: added before standardising, so scaled by the
        # data's std (Keras' GaussianNoise(0.1) sits after the normalised input).
        scale = float(np.mean(stats[1])) if stats is not None else 1.0
        steps.append(D.GaussianNoise(rung.noise * scale))
    return D.Compose(steps) if steps else None


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> tuple:
    if n is None or n >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[idx], y[idx]


def gradient_norms(model: L.Layer, x: Any, y: Any) -> list[tuple[str, float]]:
    """‖dL/dW‖ of every conv and dense layer for one batch, input to output.

    The loss is the mean cross-entropy of the batch; the model is left in training mode
    with its parameters untouched (only ``.grad`` is written).
    """
    loss = losses.CrossEntropyLoss()
    model.train()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    norms = []
    for m in model.modules():
        if isinstance(m, (L.Conv2d, L.Linear)):
            kind = "conv" if isinstance(m, L.Conv2d) else "dense"
            norms.append((f"{kind}{len(norms) + 1}", float(np.linalg.norm(to_numpy(m.W.grad)))))
    return norms


def run_rung(rung: Rung, budget: dict[str, Any], splits: dict[str, tuple], seed: int = 0,
             verbose: int = 0) -> dict[str, Any]:
    """Train one rung; return its results (history, final accuracies, time, grad norms)."""
    (x_train, y_train), (x_val, y_val) = splits[rung.dataset]
    shape = tuple(int(s) for s in x_train.shape[1:])
    init.set_seed(seed)
    model = build(rung, budget, shape)  # type: ignore[arg-type]
    stats = D.channel_stats(x_train) if rung.normalize else None
    transform = _transform(rung, shape[1], stats)
    bs = budget["batch_size"]
    train_loader = D.DataLoader(x_train, y_train, bs, seed=seed, transform=transform,
                                normalize=stats)
    val_loader = D.DataLoader(x_val, y_val, 500, shuffle=False, normalize=stats)
    grads = None
    if rung.dataset == "cifar10":
        x0, y0 = next(iter(D.DataLoader(x_train, y_train, bs, seed=seed, normalize=stats)))
        grads = gradient_norms(model, x0, y0)
    if rung.dataset == "mnist":
        epochs = budget["mnist_epochs"]
    elif rung.name.startswith("12"):
        epochs = budget["epochs_12"]
    else:
        epochs = budget["epochs_sigmoid" if rung.model["activation"] == "sigmoid" else "epochs"]
    opt = optim.Adam(model.parameters(), lr=rung.lr)
    start = time.perf_counter()
    history = training.fit(model, losses.CrossEntropyLoss(), opt, train_loader, val_loader,
                           epochs=epochs, verbose=verbose)
    seconds = time.perf_counter() - start
    h = history.history
    return dict(rung=rung.name, dataset=rung.dataset, change=rung.change,
                lecture=rung.lecture, train_acc=h["acc"][-1], val_acc=h["val_acc"][-1],
                history={k: h[k] for k in ("loss", "acc", "val_loss", "val_acc")},
                epochs=len(h["acc"]), seconds=seconds, grad_norms=grads,
                params=model.num_parameters(),
                train_images=len(x_train), val_images=len(x_val),
                nonfinite=not all(math.isfinite(v) for v in h["loss"]))


def load_splits(rungs: Sequence[Rung], budget_name: str, data_root: str | None,
                seed: int = 0) -> dict[str, tuple]:
    """The (train, val) images each dataset in ``rungs`` needs, subset to the budget."""
    budget = BUDGETS[budget_name]
    splits: dict[str, tuple] = {}
    for dataset in sorted({r.dataset for r in rungs}):
        mnist = dataset == "mnist"
        n_train = budget["mnist_train" if mnist else "train"]
        n_val = budget["mnist_val" if mnist else "val"]
        if budget_name == "smoke":
            shape = (1, 28, 28) if mnist else (3, 32, 32)
            train, val = D.synthetic(n_train, shape, seed), D.synthetic(n_val, shape, seed + 1)
        else:
            load = D.load_mnist if mnist else D.load_cifar10
            s = load(root=data_root, download=True)
            train, val = s[0], s[1]
        splits[dataset] = (_subset(*train, n_train, seed), _subset(*val, n_val, seed + 1))
    return splits


def run_ladder(rungs: Sequence[Rung], budget_name: str = "quick", data_root: str | None = None,
               out: str | os.PathLike = "runs/ladder", seed: int = 0, verbose: int = 2,
               command: str = "") -> dict[str, Any]:
    """Run ``rungs`` in order; after each one, save ``out/ladder.json`` and the report.

    Results already in ``out/ladder.json`` from an earlier call with the same budget are
    kept (rungs run again replace theirs), so the ladder can be run in parts.
    """
    budget = BUDGETS[budget_name]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "ladder.json")
    state = _load_state(path, budget_name)
    state.update(budget=budget_name, budget_values=budget, machine=_machine(),
                 command=command or state.get("command", ""))
    start = time.perf_counter()
    splits = load_splits(rungs, budget_name, data_root, seed)
    for rung in rungs:
        if verbose:
            print(f"ladder: rung {rung.name} ({rung.dataset}): {rung.change}", flush=True)
        result = run_rung(rung, budget, splits, seed=seed, verbose=verbose)
        state["results"][rung.name] = result
        state["wall_seconds"] = time.perf_counter() - start  # this call: loading included
        if verbose:
            print(f"ladder: rung {rung.name}: train {result['train_acc']:.2%}, "
                  f"val {result['val_acc']:.2%} in {result['seconds']:.0f}s", flush=True)
        atomic_write(path, lambda f: f.write(json.dumps(state, indent=1)), binary=False)
        write_report(state, out, plots=False)  # a readable report even if stopped later
    write_report(state, out)
    return state


def _load_state(path: str, budget_name: str) -> dict[str, Any]:
    if os.path.exists(path):
        with open(path) as f:
            state = json.load(f)
        if state.get("budget") == budget_name:
            return state
    return {"results": {}}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _machine() -> dict[str, Any]:
    return dict(platform=platform.platform(), processor=_cpu_model(),
                cpus=os.cpu_count(), numpy=np.__version__, backend=get_backend(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


# -- the report -----------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def _facts(results: dict[str, dict[str, Any]]) -> list[str]:
    """The lecture's qualitative claims, checked against this run (never forced)."""
    def val(name: str) -> float | None:
        r = results.get(name)
        return None if r is None else r["val_acc"]

    lines = []
    chance = 0.10
    for name, claim in (("3", "stays near chance (lecture: does not learn)"),
                        ("5", "the lecture: does not learn again")):
        v = val(name)
        if v is not None:
            near = v < chance + 0.05
            lines.append(f"- Rung {name}: val {_pct(v)} % — "
                         f"{'near chance (< 15 %)' if near else 'learns (>= 15 %)'}; {claim}.")
    learners = [n for n in ("1", "2", "4", "6", "7", "8") if val(n) is not None]
    if learners:
        learned = [n for n in learners if val(n) >= chance + 0.05]  # type: ignore[operator]
        lines.append(f"- Rungs that learn (val >= 15 %): {', '.join(learned) or 'none'} of "
                     f"{', '.join(learners)} (the lecture: all of them).")
    if val("6") is not None and val("7") is not None:
        lines.append(f"- BatchNorm (rung 6 → 7): val {_pct(val('6'))} → {_pct(val('7'))} %.")
    if val("10") is not None and val("12e") is not None:
        lines.append(f"- Regularisation and augmentation (rung 10 → 12e): val "
                     f"{_pct(val('10'))} → {_pct(val('12e'))} %.")
    return lines


def write_report(state: dict[str, Any], out: str | os.PathLike, plots: bool = True) -> str:
    """Write ``out/ladder.md`` (+ ``out/img/ladder_*.png`` when matplotlib is installed)."""
    results = state["results"]
    budget = state["budget_values"]
    machine = state["machine"]
    images = _plots(results, os.path.join(out, "img")) if plots else []
    total = sum(r["seconds"] for r in results.values())
    lines = [
        "# The lectures' ladder, run with minicnn",
        "",
        f"Budget **{state['budget']}** on {machine['cpus']} CPU cores "
        f"({machine['processor']}, {machine['platform']}), backend {machine['backend']}, "
        f"NumPy {machine['numpy']}, {machine['date']}. Training time of the rungs below: "
        f"{total / 60:.1f} min" + (f"; wall time of the command: {state['wall_seconds'] / 60:.1f} "
                                   "min." if state.get("wall_seconds") else "."),
        "",
        f"Command: `{state.get('command') or 'python examples/ladder.py'}`",
        "",
        f"Budget values: `{json.dumps(budget)}` — train/val: images used (null = all; val "
        "images come from the test set, as in the lecture), width: factor on every conv "
        "width and on the dense layer.",
        "",
        "CIFAR-10 here is the JPEG-rebuilt copy of `../shared/datasets`, which scores about "
        "3 points below the original; the lecture's numbers are on the original (and, for "
        "the quick budget, on 10x the data, 4x the width and many more epochs): compare the "
        "pattern, not the values.",
        "",
        "Train accuracy is the running mean over the last epoch, with dropout, noise and "
        "augmentation on (what Keras prints), so it can lie below the val accuracy, measured "
        "after the epoch in evaluation mode.",
        "",
    ]
    if state["budget"] == "quick":
        lines += ["The regularisers of rung 12 trade fitting speed for generalisation; with "
                  "4 epochs on 5,000 images they mostly cost fitting speed. The lecture's "
                  "gains from them need its long runs (`--budget full`).", ""]
    for dataset, title in (("cifar10", "CIFAR-10"), ("mnist", "MNIST")):
        rows = [r for r in results.values() if r["dataset"] == dataset]
        if not rows:
            continue
        rows.sort(key=lambda r: [x.name for x in RUNGS].index(r["rung"]))
        lines += [f"## {title}", "",
                  "| rung | change | train acc % | val acc % | lecture (train / val %) "
                  "| epochs | params | time |",
                  "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
        for r in rows:
            lines.append(f"| {r['rung']} | {r['change']} | {_pct(r['train_acc'])} | "
                         f"{_pct(r['val_acc'])} | {r['lecture']} | {r['epochs']} | "
                         f"{r['params']:,} | {r['seconds']:.0f} s |")
        lines.append("")
    facts = _facts(results)
    if facts:
        lines += ["## What this run shows", "", *facts, ""]
    if images:
        lines += ["## Curves and gradients", ""]
        lines += [f"![{name}](img/{os.path.basename(p)})" for name, p in images]
        lines.append("")
    grads = {k: r["grad_norms"] for k, r in results.items() if r.get("grad_norms")
             and k in GRADIENT_RUNGS}
    if grads:
        width = max(len(g) for g in grads.values())
        lines += ["## Gradient norm per layer at the first step", "",
                  "‖dL/dW‖ of each conv and dense layer, numbered from the input, for the "
                  "first batch before any update:", "",
                  "| rung | layers | " + " | ".join(str(i) for i in range(1, width + 1)) + " |",
                  "| --- | --- |" + " ---: |" * width]
        for k, g in grads.items():
            kinds = [name.rstrip("0123456789") for name, _ in g]
            layers = f"{kinds.count('conv')} conv, {kinds.count('dense')} dense"
            cells = [f"{v:.1e}" for _, v in g] + [""] * (width - len(g))
            lines.append(f"| {k} | {layers} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    atomic_write(os.path.join(out, "ladder.md"), lambda f: f.write(text), binary=False)
    return text


def _plots(results: dict[str, dict[str, Any]], folder: str) -> list[tuple[str, str]]:
    if not plot.matplotlib_available() or not results:
        return []
    plt = plot.pyplot()
    os.makedirs(folder, exist_ok=True)
    out = []
    groups = [("CIFAR-10, rungs 1–11", [r for r in results.values() if r["dataset"] ==
                                          "cifar10" and not r["rung"].startswith("12")]),
              ("CIFAR-10, rung 12 (from rung 10)", [r for r in results.values()
                                                     if r["rung"] == "10"
                                                     or r["rung"].startswith("12")]),
              ("MNIST", [r for r in results.values() if r["dataset"] == "mnist"])]
    groups = [(t, g) for t, g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for ax, (title, rows) in zip(axes[0], groups, strict=True):
        if max(len(r["history"]["val_acc"]) for r in rows) == 1:  # one epoch: a bar each
            acc = [100 * r["val_acc"] for r in rows]
            bars = ax.bar([r["rung"] for r in rows], acc, color=colours[:len(rows)])
            ax.bar_label(bars, fmt="%.2f")
            ax.set(title=title, ylabel="val accuracy % after 1 epoch",
                   ylim=(max(0.0, min(acc) - 3), min(100.0, max(acc) + 1)))
            continue
        for i, r in enumerate(rows):
            acc = [100 * v for v in r["history"]["val_acc"]]
            ax.plot(range(1, len(acc) + 1), acc, marker="o", ms=3, color=colours[i % 20],
                    ls="-" if i < 10 else "--", label=f"rung {r['rung']}")
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.set(title=title, xlabel="epoch", ylabel="val accuracy %")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, ncol=2)
    path = os.path.join(folder, "ladder_curves.png")
    plot.save_figure(fig, path, dpi=110)
    plt.close(fig)
    out.append(("validation accuracy per epoch", path))

    grads = [(k, r["grad_norms"]) for k, r in results.items()
             if r.get("grad_norms") and k in GRADIENT_RUNGS]
    if grads:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for k, g in grads:
            ax.semilogy(range(1, len(g) + 1), [max(v, 1e-30) for _, v in g], marker="o",
                        label=f"rung {k}")
        ax.set(title="gradient norm per layer at the first step",
               xlabel="layer (conv/dense, input → output)", ylabel="‖dL/dW‖")
        ax.legend()
        path = os.path.join(folder, "ladder_gradient_norms.png")
        plot.save_figure(fig, path, dpi=110)
        plt.close(fig)
        out.append(("gradient norms", path))
    return out
