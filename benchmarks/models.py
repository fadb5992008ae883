"""Milliseconds per training step (forward, backward, Adam step) and peak memory, per model.

The models (CIFAR-shaped input, 10 classes), built identically in minicnn and, when torch is
installed, in PyTorch, measured in the same run so the ratios are meaningful:

- ``2conv``: the lectures' first net: conv 3->64, sigmoid, pool, conv 64->128, sigmoid, pool,
  dense 512 (sigmoid), dense 10;
- ``vgg12``: 12 convs (64x3 / 128x3 / 256x3 / 512x3), BatchNorm + ReLU after each, a 2x2 max
  pool after each stage, dense 512, dense 10;
- ``resnet``: stem conv 32, three stages of two basic blocks at 32/64/128 (projection
  shortcut where the shape changes), global average pool, dense 10;
- ``preset``: the CIFAR-10 CPU preset's net (``minicnn.presets``: ``models.vgg`` with widths
  32/64/128, two bias-free convs a stage, max pool before BatchNorm and ReLU), dense 10.

    python benchmarks/models.py                       # NumPy, batches 64 and 256
    python benchmarks/models.py --backend cupy --batch 128 512
    python benchmarks/models.py --models vgg12 --batch 128 256 --repeats 1   # three steps
    python benchmarks/models.py --src /tmp/base2 --no-torch   # another tree's minicnn
    python benchmarks/models.py --threads 2           # minicnn as 2 thread-ranks, batch/2 each
    python benchmarks/models.py --threads 2 --sync-bn --models preset   # BatchNorm over both

Every (library, model, batch) runs in its own Python process, so the peak memories do not
mix: the process builds the model, runs 2 warm-up steps and ``--repeats`` timed ones, and
reports the median step time and its peak resident memory (``ru_maxrss``: the whole process,
the interpreter and the library's import included, "peak MiB"), with the resident memory after
the imports alone ("import MiB"). On the GPU it also reports the device memory the process
held: CuPy's pool (``total_bytes``, blocks in use and cached) or PyTorch's
``max_memory_reserved``. ``--repeats 1`` makes three steps in all.

``--threads N`` times minicnn's step as ``fit`` runs it with ``--threads N``: N data-parallel
thread-ranks of one process (``minicnn.distributed.run_in_threads``), each its own replica on
batch/N samples, with ``cores // N`` BLAS threads, the gradients averaged before each Adam
step (``DistributedOptimizer``). The batch in the table stays the global one, the same
samples a step as PyTorch's; BatchNorm then normalises each rank's batch/N on their own.

PyTorch runs on the CPU beside the NumPy backend, and on CUDA beside the CuPy backend when
torch sees a GPU (float32, TF32 off for both matmuls and cuDNN, as the targets are stated;
cuDNN may pick its fastest algorithm, ``cudnn.benchmark``). Each time waits for the GPU
before the clock stops.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import blas_kernel, machine_info, save, time_it  # noqa: E402

# A model is a list of specs, interpreted once for minicnn and once for PyTorch:
# ("conv", cin, cout, stride) 3x3 'same'-style padding 1; ("convnb", cin, cout) the same,
# stride 1 and no bias; ("conv1", cin, cout, stride) 1x1; ("bn", c); ("relu",); ("sigmoid",);
# ("pool",); ("gap",); ("flatten",); ("linear", i, o); ("res", body_specs,
# shortcut_specs_or_None); ("seq", specs).


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


def cifar10_preset():
    """The CIFAR-10 CPU preset's ``models.vgg`` (widths 32/64/160, depth 2, pool_first; the
    result files before 2026-12-07 23:40 UTC measured 32/64/128)."""
    specs, cin = [], 3
    for width in (32, 64, 160):
        specs += [("convnb", cin, width), ("pool",), ("bn", width), ("relu",),
                  ("convnb", width, width), ("bn", width), ("relu",)]
        cin = width
    return specs + [("flatten",), ("linear", cin * 4 * 4, 10)]


MODELS = {"2conv": two_conv, "vgg12": vgg12, "resnet": resnet, "preset": cifar10_preset}


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


def minicnn_kit():
    from minicnn import layers as L

    return {
        "conv": lambda ci, co, s: L.Conv2d(ci, co, 3, stride=s, padding=1),
        "convnb": lambda ci, co: L.Conv2d(ci, co, 3, padding="same", bias=False),
        "conv1": lambda ci, co, s: L.Conv2d(ci, co, 1, stride=s, bias=False),
        "bn": L.BatchNorm2d, "relu": L.ReLU, "sigmoid": L.Sigmoid,
        "pool": lambda: L.MaxPool2d(2), "gap": L.GlobalAvgPool2d, "flatten": L.Flatten,
        "linear": L.Linear, "res": lambda body, shortcut: L.Residual(body, shortcut=shortcut),
        "seq": lambda layers: L.Sequential(*layers),
    }


def build_minicnn(specs):
    return build(specs, minicnn_kit())


def check_preset_spec():
    """The ``preset`` spec builds the preset's own model: the same layers, the same shapes."""
    from minicnn import models, presets

    cfg = presets.resolve("cifar10", "cpu", {})
    theirs = models.build(cfg["model"], cfg["model_kwargs"])
    ours = build_minicnn(cifar10_preset())
    assert [repr(m) for m in ours.layers] == [repr(m) for m in theirs.layers], \
        "benchmarks/models.py: the preset spec no longer matches minicnn.presets' cifar10/cpu"


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
        "convnb": lambda ci, co: nn.Conv2d(ci, co, 3, padding=1, bias=False),
        "conv1": lambda ci, co, s: nn.Conv2d(ci, co, 1, stride=s, bias=False),
        "bn": nn.BatchNorm2d, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
        "pool": lambda: nn.MaxPool2d(2),
        "gap": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        "flatten": nn.Flatten, "linear": nn.Linear, "res": Res,
        "seq": lambda layers: nn.Sequential(*layers),
    }
    return build(specs, kit)


def time_minicnn(specs, batch, xp, repeats, warmup=2):
    import minicnn as mc

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

    return time_it(step, repeats, warmup=warmup, xp=xp)


def time_minicnn_threads(specs, batch, repeats, threads, warmup=2, sync_bn=False):
    """ms per step of ``threads`` thread-ranks of batch // threads samples each (rank 0's
    clock; every step ends in the gradient allreduce, so the ranks keep in step); with
    ``sync_bn`` the BatchNorm layers are ``SyncBatchNorm2d`` over all ranks."""
    import minicnn as mc
    from minicnn import distributed as dist

    if batch % threads:
        raise SystemExit(f"--threads {threads} must divide the batch {batch}")

    def rank(comm):
        with comm.in_turn():
            model = build_minicnn(specs)
        if sync_bn:
            dist.convert_sync_batchnorm(model, comm)
        model.layers[0].input_grad = False
        rng = np.random.default_rng(comm.rank)
        local = batch // threads
        x = rng.standard_normal((local, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, local)
        loss_fn = mc.losses.CrossEntropyLoss()
        dist.broadcast_parameters(model, comm)
        opt = dist.DistributedOptimizer(mc.optim.Adam(model.parameters(), lr=1e-3), comm)

        def step():
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()

        return time_it(step, repeats, warmup=warmup)

    return dist.run_in_threads(rank, threads)[0]


def time_torch(torch, specs, batch, repeats, device="cpu", warmup=2):
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

    return time_it(step, repeats, warmup=warmup)


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
    return None


def peak_rss_mib():
    """This process's peak resident memory so far, MiB (Linux reports ru_maxrss in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child(lib, model, batch, backend, repeats, threads=1, sync_bn=False):
    """One measurement in this (fresh) process; returns the JSON-able result."""
    specs = MODELS[model]()
    if lib == "minicnn":
        import minicnn as mc

        mc.set_backend(backend)
        xp = mc.backend.get_xp()
        result = {"import_mib": peak_rss_mib(), "src": str(Path(mc.__file__).parents[1])}
        if model == "preset":
            check_preset_spec()
        if threads > 1:
            result["ms"] = time_minicnn_threads(specs, batch, repeats, threads,
                                                sync_bn=sync_bn)
        else:
            result["ms"] = time_minicnn(specs, batch, xp, repeats)
        if backend == "cupy":
            result["device_mib"] = xp.get_default_memory_pool().total_bytes() / 2**20
    else:
        import torch

        device = torch_device(torch, backend)
        if device is None:
            return {"skipped": "torch sees no CUDA device"}
        result = {"import_mib": peak_rss_mib(), "device": device,
                  "threads": torch.get_num_threads()}
        result["ms"] = time_torch(torch, specs, batch, repeats, device)
        if device == "cuda":
            result["device_mib"] = torch.cuda.max_memory_reserved() / 2**20
    result["peak_mib"] = peak_rss_mib()
    return result


def measure(lib, model, batch, backend, repeats, src=None, threads=1, sync_bn=False):
    """``child(...)`` in a fresh Python process (so each peak is its own); None if it failed."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", lib, model, str(batch),
           "--backend", backend, "--repeats", str(repeats), "--threads", str(threads)]
    if sync_bn:
        cmd.append("--sync-bn")
    if src:
        cmd += ["--src", src]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{lib} {model} {batch} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
              file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="minicnn as N data-parallel thread-ranks of batch/N (NumPy)")
    p.add_argument("--sync-bn", action="store_true",
                   help="with --threads: SyncBatchNorm2d over the thread-ranks")
    p.add_argument("--src", default=None,
                   help="the folder whose minicnn/ to measure (default: this repository)")
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=3, metavar=("LIB", "MODEL", "BATCH"),
                   help=argparse.SUPPRESS)     # internal: one measurement in this process
    args = p.parse_args(argv)
    if args.child:
        if args.src:
            sys.path.insert(0, str(Path(args.src).resolve()))
        lib, model, batch = args.child
        print("RESULT " + json.dumps(child(lib, model, int(batch), args.backend, args.repeats,
                                           args.threads, args.sync_bn)), flush=True)
        return
    torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    override = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ}
    print(f"BLAS {blas_kernel()}; override {override or 'none'}; minicnn from "
          f"{args.src or ROOT}; minicnn threads {args.threads}"
          f"{' with SyncBatchNorm2d' if args.sync_bn else ''}")
    rows = []
    print(f"{'model':8s} {'batch':>5s} {'minicnn ms':>11s} {'torch ms':>9s} {'ratio':>6s} "
          f"{'peak MiB':>9s} {'torch MiB':>9s} {'ratio':>6s}")
    for name in args.models:
        for batch in args.batch:
            ours = measure("minicnn", name, batch, args.backend, args.repeats, args.src,
                           args.threads, args.sync_bn)
            if ours is None:
                continue
            row = {"model": name, "batch": batch, "ms": ours["ms"],
                   "peak_mib": ours["peak_mib"], "import_mib": ours["import_mib"],
                   "src": ours["src"], "threads": args.threads}
            if "device_mib" in ours:
                row["device_mib"] = ours["device_mib"]
            theirs = measure("torch", name, batch, args.backend, args.repeats) if torch else None
            if theirs is not None and "skipped" not in theirs:
                row.update(torch_device=theirs["device"], torch_threads=theirs["threads"],
                           torch_ms=theirs["ms"], ratio_vs_torch=ours["ms"] / theirs["ms"],
                           torch_peak_mib=theirs["peak_mib"],
                           torch_import_mib=theirs["import_mib"],
                           peak_ratio_vs_torch=ours["peak_mib"] / theirs["peak_mib"])
                if "device_mib" in theirs:
                    row["torch_device_mib"] = theirs["device_mib"]
            rows.append(row)
            t = (f"{row['torch_ms']:9.1f} {row['ratio_vs_torch']:6.2f}" if "torch_ms" in row
                 else f"{'-':>9s} {'-':>6s}")
            m = (f"{row['torch_peak_mib']:9.0f} {row['peak_ratio_vs_torch']:6.2f}"
                 if "torch_ms" in row else f"{'-':>9s} {'-':>6s}")
            dev = ""
            if "device_mib" in row:
                dev = f"  device MiB {row['device_mib']:.0f}"
                if "torch_device_mib" in row:
                    dev += f" / {row['torch_device_mib']:.0f}"
            print(f"{name:8s} {batch:5d} {row['ms']:11.1f} {t} {row['peak_mib']:9.0f} {m}{dev}",
                  flush=True)
    out = args.out or f"models_{args.backend}"
    path = save(out, {"machine": machine_info(args.backend), "repeats": args.repeats,
                      "src": args.src or str(ROOT), "threads": args.threads,
                      "sync_bn": args.sync_bn, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
