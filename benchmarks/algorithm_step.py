"""A whole training step with every Conv2d on im2col against ``algorithm="auto"`` (Winograd
F(4×4, 3×3) where ``functional.winograd.winograd_is_faster`` says so), interleaved in one
process (``benchmarks.ab.interleaved``) on the same weights and data.

    python benchmarks/algorithm_step.py --model preset --batch 64 --repeats 21
    python benchmarks/algorithm_step.py --model vgg12 --batch 64 --repeats 7

``preset`` is the CIFAR-10 CPU preset's net (``presets.resolve("cifar10", "cpu")``), ``vgg12``
VGG-12 + BatchNorm (widths 64/128/256/512, 2/2/4/4 convs). SGD with momentum, random
CIFAR-sized data, the first trainable layer without dL/dx (as ``fit`` runs it). For numbers
users get, unset ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` in that command only.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minicnn as mc  # noqa: E402
from benchmarks.ab import interleaved, report  # noqa: E402
from benchmarks.common import blas_kernel  # noqa: E402
from minicnn import layers as L  # noqa: E402
from minicnn import losses, models, presets  # noqa: E402


def build(name: str, x: np.ndarray) -> L.Sequential:
    if name == "preset":
        cfg = presets.resolve("cifar10", "cpu", {})
        model = models.build(cfg["model"], cfg["model_kwargs"])
        models.fit_whitening(model, x)
        return model
    return models.vgg(widths=(64, 128, 256, 512), depth=(2, 2, 4, 4), hidden=None,
                      batchnorm=True)


def training_step(model: L.Sequential, algorithm: str, x: np.ndarray, y: np.ndarray):
    for m in model.modules():
        if type(m) is L.Conv2d:
            m.algorithm = algorithm
    opt = mc.optim.SGD(model.parameters(), 0.01, momentum=0.9)
    loss = losses.CrossEntropyLoss()
    first = next(m for m in model.modules() if isinstance(m, L.Conv2d) and m.W.requires_grad)
    first.input_grad = False

    def step() -> None:
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["preset", "vgg12"], default="preset")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    base = build(args.model, x)
    steps = {a: training_step(copy.deepcopy(base), a, x, y) for a in ("im2col", "auto")}
    print(f"{args.model}, batch {args.batch}; BLAS {blas_kernel()}")
    report(f"{args.model} step", interleaved(steps, repeats=args.repeats), args.repeats)


if __name__ == "__main__":
    main()
