"""Milliseconds per training step (forward, backward, Adam step) for three models.

The models (CIFAR-shaped input, 10 classes), built identically in minicnn and, when torch is
importable, in PyTorch, timed in the same run so the ratio is meaningful:

- ``2conv``: the lectures' first net: conv 3->64, sigmoid, pool, conv 64->128, sigmoid, pool,
  dense 512 (sigmoid), dense 10;
- ``vgg12``: 12 convs (64x3 / 128x3 / 256x3 / 512x3), BatchNorm + ReLU after each, a 2x2 max
  pool after each stage, dense 512, dense 10;
- ``resnet``: stem conv 32, three stages of two basic blocks at 32/64/128 (projection
  shortcut where the shape changes), global average pool, dense 10.

    python benchmarks/models.py                       # NumPy, batches 64 and 256
    python benchmarks/models.py --backend cupy --batch 128 512

PyTorch runs on the CPU beside the NumPy backend, and on CUDA beside the CuPy backend when
torch sees a GPU (float32, TF32 off for both matmuls and cuDNN, as the targets are stated;
cuDNN may pick its fastest algorithm, ``cudnn.benchmark``). Each time waits for the GPU
before the clock stops.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minicnn as mc  # noqa: E402
from benchmarks.common import machine_info, save, time_it, torch_or_none  # noqa: E402
from minicnn import layers as L  # noqa: E402

# A model is a list of specs, interpreted once for minicnn and once for PyTorch:
# ("conv", cin, cout, stride) 3x3 'same'-style padding 1; ("conv1", cin, cout, stride) 1x1;
# ("bn", c); ("relu",); ("sigmoid",); ("pool",); ("gap",); ("flatten",); ("linear", i, o);
# ("res", body_specs, shortcut_specs_or_None); ("seq", specs).


def vgg12():
    specs, cin = [], 3
    for width in (64, 128, 256, 512):
        for _ in range(3):
            specs += [("conv", cin, width, 1), ("bn", width), ("relu",)]
            cin = width
        specs.append(("pool",))
    return specs + [("flatten",), ("linear", 512 * 2 * 2, 512), ("relu",), ("linear", 512, 10)]


def two_conv():
    return [("conv", 3, 64, 1), ("sigmoid",), ("pool",), ("conv", 64, 128, 1), ("sigmoid",),
            ("pool",), ("flatten",), ("linear", 128 * 8 * 8, 512), ("sigmoid",),
            ("linear", 512, 10)]


def basic_block(cin, cout, stride):
    body = [("conv", cin, cout, stride), ("bn", cout), ("relu",), ("conv", cout, cout, 1),
            ("bn", cout)]
    shortcut = None if (cin == cout and stride == 1) else [("conv1", cin, cout, stride),
                                                          ("bn", cout)]
    return [("res", body, shortcut), ("relu",)]


def resnet():
    specs = [("conv", 3, 32, 1), ("bn", 32), ("relu",)]
    cin = 32
    for i, width in enumerate((32, 64, 128)):
        specs += basic_block(cin, width, 1 if i == 0 else 2)
        specs += basic_block(width, width, 1)
        cin = width
    return specs + [("gap",), ("linear", 128, 10)]


MODELS = {"2conv": two_conv, "vgg12": vgg12, "resnet": resnet}


def build(specs, kit):
    """Interpret ``specs`` with ``kit``: a dict from spec kind to a constructor."""
    out = []
    for kind, *args in specs:
        if kind == "res":
            body, shortcut = args
            out.append(kit["res"](build(body, kit),
                                  None if shortcut is None else build(shortcut, kit)))
        else:
            out.append(kit[kind](*args))
    return kit["seq"](out)


MINICNN_KIT = {
    "conv": lambda ci, co, s: L.Conv2d(ci, co, 3, stride=s, padding=1),
    "conv1": lambda ci, co, s: L.Conv2d(ci, co, 1, stride=s, bias=False),
    "bn": L.BatchNorm2d, "relu": L.ReLU, "sigmoid": L.Sigmoid,
    "pool": lambda: L.MaxPool2d(2), "gap": L.GlobalAvgPool2d, "flatten": L.Flatten,
    "linear": L.Linear, "res": lambda body, shortcut: L.Residual(body, shortcut=shortcut),
    "seq": lambda layers: L.Sequential(*layers),
}


def build_minicnn(specs):
    return build(specs, MINICNN_KIT)


def build_torch(torch, specs):
    nn = torch.nn

    class Res(nn.Module):
        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    kit = {
        "conv": lambda ci, co, s: nn.Conv2d(ci, co, 3, stride=s, padding=1),
        "conv1": lambda ci, co, s: nn.Conv2d(ci, co, 1, stride=s, bias=False),
        "bn": nn.BatchNorm2d, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
        "pool": lambda: nn.MaxPool2d(2),
        "gap": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        "flatten": nn.Flatten, "linear": nn.Linear, "res": Res,
        "seq": lambda layers: nn.Sequential(*layers),
    }
    return build(specs, kit)


def time_minicnn(specs, batch, xp, repeats):
    rng = np.random.default_rng(0)
    model = build_minicnn(specs)
    # As fit does: nobody needs dL/d(image), so the first layer skips it (PyTorch's input
    # does not require grad either).
    model.layers[0].input_grad = False
    x = mc.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = mc.to_device(rng.integers(0, 10, batch))
    loss_fn = mc.losses.CrossEntropyLoss()
    opt = mc.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    return time_it(step, repeats, warmup=2, xp=xp)


def time_torch(torch, specs, batch, repeats, device="cpu"):
    """ms per PyTorch training step on ``device`` ("cpu" or "cuda"), the same spec and data."""
    rng = np.random.default_rng(0)
    model = build_torch(torch, specs).to(device)
    x = torch.from_numpy(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, 10, batch)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    # CUDA runs asynchronously: the step is finished only when the device says so.
    finish = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        finish()

    return time_it(step, repeats, warmup=2)


def torch_device(torch, backend):
    """Where PyTorch runs beside ``backend``: "cpu" for numpy, "cuda" for cupy, else None."""
    if torch is None:
        return None
    if backend == "numpy":
        return "cpu"
    if torch.cuda.is_available():
        # The targets are float32 on both sides: no TF32 tensor-core shortcut for PyTorch.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        return "cuda"
    print("torch sees no CUDA device: no PyTorch comparison")
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    mc.set_backend(args.backend)
    xp = mc.backend.get_xp()
    torch = None if args.no_torch else torch_or_none()
    device = torch_device(torch, args.backend)
    rows = []
    print(f"{'model':8s} {'batch':>5s} {'minicnn ms':>11s} {'torch ms':>9s} {'ratio':>6s}")
    for name in args.models:
        for batch in args.batch:
            specs = MODELS[name]()
            row = {"model": name, "batch": batch,
                   "ms": time_minicnn(specs, batch, xp, args.repeats)}
            if device is not None:
                row["torch_device"] = device
                row["torch_ms"] = time_torch(torch, specs, batch, args.repeats, device)
                row["ratio_vs_torch"] = row["ms"] / row["torch_ms"]
            rows.append(row)
            t = f"{row['torch_ms']:9.1f} {row['ratio_vs_torch']:6.2f}" if "torch_ms" in row \
                else f"{'-':>9s} {'-':>6s}"
            print(f"{name:8s} {batch:5d} {row['ms']:11.1f} {t}", flush=True)
    out = args.out or f"models_{args.backend}"
    path = save(out, {"machine": machine_info(args.backend), "repeats": args.repeats,
                      "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
