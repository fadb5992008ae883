"""Where a training step's time goes: forward and backward ms of every layer of a model.

    python benchmarks/profile_step.py                      # the CIFAR-10 CPU preset's net
    python benchmarks/profile_step.py --batch 128 --model-kwargs '{"widths": [32, 64, 128]}'
    OPENBLAS_NUM_THREADS=1 python benchmarks/profile_step.py --model vgg12 --batch 32

Builds ``minicnn.models.vgg`` (the preset's arguments, or ``--model-kwargs`` on top), or with
``--model`` one of ``benchmarks/models.py``'s nets (with its Adam step, as that script times
them; the layers inside a residual block are listed one by one), times ``--steps`` training
steps on random CIFAR-sized data (after 3 warm-up steps; the first layer without dL/dx, as
``fit`` runs it), and prints per layer and per layer type the ms per step, with the
optimizer's share. Each layer's forward and backward are timed by wrapping them, so the sum
is the step minus the loss and the Python glue. One thread-rank of ``--threads 2`` is
``--batch`` half the global batch with ``OPENBLAS_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import blas_kernel  # noqa: E402
from benchmarks.models import MODELS, build_minicnn  # noqa: E402
from minicnn import losses, models, optim, presets  # noqa: E402
from minicnn.training.loop import no_input_grad  # noqa: E402


def timed(fn, key, times):
    def wrapper(a):
        t = time.perf_counter()
        out = fn(a)
        times[key] += time.perf_counter() - t
        return out
    return wrapper


def leaves(layers, prefix=""):
    """(name, layer) of every layer that computes, the ones inside a Residual's branches too."""
    for i, layer in enumerate(layers):
        name = f"{prefix}{i:02d}"
        branches = [(tag, getattr(layer, attr, None)) for tag, attr in (("b", "body"),
                                                                         ("s", "shortcut"))]
        branches = [(tag, b) for tag, b in branches if hasattr(b, "layers")]
        if branches:
            for tag, branch in branches:
                yield from leaves(branch.layers, f"{name}{tag}.")
        else:
            yield f"{name} {type(layer).__name__}", layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default=None,
                   help="one of benchmarks/models.py's nets instead of the preset's")
    p.add_argument("--batch", type=int, default=None, help="default: the preset's")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--model-kwargs", type=json.loads, default={})
    args = p.parse_args()
    cfg = presets.resolve("cifar10", "cpu", {"model_kwargs": args.model_kwargs})
    batch = args.batch or cfg["batch_size"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    if args.model is None:
        model = models.build(cfg["model"], cfg["model_kwargs"])
        models.fit_whitening(model, x)
        loss = losses.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
        opt = presets.optimizer(cfg["optimizer"], model.parameters(), 0.01,
                                cfg["weight_decay"])
        title = f"vgg {json.dumps(cfg['model_kwargs'])}"
    else:
        model = build_minicnn(MODELS[args.model]())
        loss = losses.CrossEntropyLoss()
        opt = optim.Adam(model.parameters(), lr=1e-3)
        title = f"benchmarks/models.py {args.model}"
    times: dict[tuple[str, str], float] = collections.defaultdict(float)
    named = list(leaves(model.layers))
    for name, layer in named:
        layer.forward = timed(layer.forward, (name, "fwd"), times)
        layer.backward = timed(layer.backward, (name, "bwd"), times)
    total = step_opt = 0.0
    with no_input_grad(model):
        for it in range(3 + args.steps):
            if it == 3:
                times.clear()
                total = step_opt = 0.0
            t0 = time.perf_counter()
            loss.forward(model.forward(x), y)
            model.backward(loss.backward())
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            total, step_opt = total + t2 - t0, step_opt + t2 - t1
    n = args.steps
    print(f"{title}, batch {batch}; BLAS {blas_kernel()}")
    print(f"{'layer':18s} {'fwd ms':>8s} {'bwd ms':>8s}")
    by_type: dict[str, float] = collections.defaultdict(float)
    for name, _ in named:
        f, b = times[(name, "fwd")] / n * 1e3, times[(name, "bwd")] / n * 1e3
        by_type[name.split()[1]] += f + b
        print(f"{name:18s} {f:8.2f} {b:8.2f}")
    step_ms = total / n * 1e3
    print(f"step {step_ms:.1f} ms ({batch / (total / n):.0f} images/s), optimizer "
          f"{step_opt / n * 1e3:.1f} ms")
    for kind, ms in sorted(by_type.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:12s} {ms:7.1f} ms  {ms / step_ms:5.1%}")


if __name__ == "__main__":
    main()
