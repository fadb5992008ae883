"""NumPy <-> CuPy parity of training, and CuPy against PyTorch on the same GPU.

Parity (the default): every model of the zoo (``minicnn.models.MODELS``, small widths so a
CPU can follow) is built once with a fixed seed, copied to the GPU, and both copies train for
``--steps`` steps (SGD with momentum, cross-entropy) on the same fixed batch, twice:

- in float64, where the verdict is taken: the two loss curves must agree at every step,
  ``|L_gpu - L_cpu| <= 1e-6 * max(1, |L_cpu|)`` (a wrong kernel, a missed gradient or a
  stale cache shows at once as 1e-1);
- in float32, reported beside it with ``tol = 1e-3``, and checked to stay float32 on the GPU
  (parameters, gradients, logits: no silent float64 upcast). Float32 alone cannot be the
  verdict: a deep net on a fixed batch can be chaotic — measured on the CPU alone, VGG16 at
  width 1/16 moves its 10th loss by 1.7e-1 when the input is perturbed by one ulp, because a
  ReLU or a max-pool tie flips — while float64 keeps such flips ~1e9 times rarer.

Dropout is set to p = 0: the two backends draw their masks differently by design.

    python benchmarks/gpu_parity.py                       # needs CuPy and a GPU
    python benchmarks/gpu_parity.py --strict-stand-in     # on the CPU: tests/strict_device.py
    python benchmarks/gpu_parity.py --torch-speed         # + ms/step against PyTorch on CUDA

``--torch-speed`` times benchmarks/models.py's three models (2conv, vgg12, resnet; forward,
backward, Adam step) with minicnn on CuPy and with PyTorch on the same GPU in this process,
float32, TF32 off, cuDNN autotuning on, and prints the ratio. Exit status: 1 when a model's
losses disagree (or a run fails), else 0.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The zoo at CPU-friendly sizes (every layer type each builder uses is still there).
ZOO = {
    "simple_cnn": dict(widths=[8, 16], hidden=32),
    "vgg": dict(widths=[8, 16, 32], depth=2, batchnorm=True, hidden=32),
    "vgg_pool_first": dict(widths=[8, 16], depth=1, batchnorm=True, hidden=32, pool_first=True),
    "vgg16": dict(width=1 / 16, batchnorm=True, cifar=True),
    "lenet5": dict(),
    "resnet": dict(widths=[8, 16], blocks=1),
}
TOL = 1e-3     # float32, reported
TOL64 = 1e-6   # float64, the verdict


def _model_kwargs(builder, kwargs, shape):
    from minicnn import models

    params = inspect.signature(models.MODELS[builder]).parameters
    c, h, _ = shape
    out = {k: v for k, v in dict(in_channels=c, image_size=h, num_classes=10).items()
           if k in params}
    out.update(kwargs)
    return out


def _train(model, x, y, steps, mc, dtypes=None):
    """Loss after each of ``steps`` SGD steps on the fixed batch (x, y), as floats.

    ``dtypes``, when a set, collects the dtypes of the logits, parameters and gradients."""
    loss_fn = mc.losses.CrossEntropyLoss()
    opt = mc.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    xp = mc.get_array_module(x)
    losses = []
    for _ in range(steps):
        logits = model.forward(x)
        losses.append(loss_fn.forward(logits, y))
        model.backward(loss_fn.backward())
        opt.step()
        if dtypes is not None:
            dtypes.update(str(a.dtype) for a in [logits, *(p.data for p in model.parameters()),
                                                 *(p.grad for p in model.parameters())])
    return [float(v) for v in mc.to_numpy(xp.stack(losses))]  # one read-back at the end


def _rel_diff(gpu, cpu):
    return max(abs(g - c) / max(1.0, abs(c)) for g, c in zip(gpu, cpu, strict=True))


def parity(steps, batch, only=None):
    import minicnn as mc
    from minicnn import layers as L
    from minicnn import models

    rng = np.random.default_rng(0)
    failures = 0
    print(f"{'model':16s} {'params':>8s} {'loss[0]':>9s} {'loss[-1]':>9s} {'f64 rel diff':>13s}"
          f" {'f32 rel diff':>13s}  result")
    for name, kwargs in ZOO.items():
        if only and name not in only:
            continue
        builder = "vgg" if name.startswith("vgg_") else name
        shape = (1, 28, 28) if builder == "lenet5" else (3, 32, 32)
        try:
            mc.set_backend("numpy")
            mc.init.set_seed(0)
            host_model = models.build(builder, _model_kwargs(builder, kwargs, shape))
            for m in host_model.modules():
                if isinstance(m, L.Dropout):
                    m.p = 0.0  # different mask generators per backend, by design
            x = rng.standard_normal((batch, *shape)).astype(np.float32)
            y = rng.integers(0, 10, batch)
            curves = {}
            dtypes: set[str] = set()
            for dtype in ("float64", "float32"):
                mc.set_backend("numpy")
                model = copy.deepcopy(host_model).astype(dtype)
                device_model = copy.deepcopy(model).to("gpu")
                cpu = _train(model, x.astype(dtype), y, steps, mc)
                mc.set_backend("cupy")
                xp = mc.backend.get_xp()
                gpu = _train(device_model, xp.asarray(x.astype(dtype)), xp.asarray(y), steps,
                             mc, dtypes if dtype == "float32" else None)
                curves[dtype] = (cpu, gpu)
            d64 = _rel_diff(*reversed(curves["float64"]))
            d32 = _rel_diff(*reversed(curves["float32"]))
            cpu, gpu = curves["float32"]
            upcast = dtypes - {"float32"}
            ok = d64 <= TOL64 and all(np.isfinite(gpu)) and not upcast
            failures += not ok
            note = "" if d32 <= TOL else "  (float32 drift: see the float64 verdict)"
            if upcast:
                note += f"  float32 run produced {sorted(upcast)} on the GPU"
            n_params = sum(p.data.size for p in host_model.parameters())
            print(f"{name:16s} {n_params:8d} {cpu[0]:9.4f} {cpu[-1]:9.4f} {d64:13.2e} "
                  f"{d32:13.2e}  {'ok' if ok else 'MISMATCH'}{note}", flush=True)
            if not ok:
                for dtype, (c, g) in curves.items():
                    print(f"  {dtype} cpu: {np.round(c, 5).tolist()}\n"
                          f"  {dtype} gpu: {np.round(g, 5).tolist()}")
        except Exception:  # noqa: BLE001 - report every model, then fail
            failures += 1
            print(f"{name:16s} FAILED:\n{traceback.format_exc()}", flush=True)
        finally:
            mc.set_backend("numpy")
    return failures


def torch_speed(batch, repeats):
    """ms/step of benchmarks/models.py's models: minicnn on CuPy vs PyTorch on CUDA."""
    import minicnn as mc
    from benchmarks.models import MODELS, time_minicnn, time_torch

    try:
        import torch
    except ImportError:
        print("torch is not installed: no PyTorch comparison")
        return 0
    if not torch.cuda.is_available():
        print("torch sees no CUDA device: no PyTorch comparison")
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # the targets are float32 without TF32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    mc.set_backend("cupy")
    xp = mc.backend.get_xp()
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}; batch {batch}, "
          f"float32, TF32 off")
    print(f"{'model':8s} {'minicnn ms':>11s} {'torch ms':>9s} {'ratio':>6s}")
    for name, make in MODELS.items():
        specs = make()
        ours = time_minicnn(specs, batch, xp, repeats)
        theirs = time_torch(torch, specs, batch, repeats, device="cuda")
        print(f"{name:8s} {ours:11.2f} {theirs:9.2f} {ours / theirs:6.2f}", flush=True)
    mc.set_backend("numpy")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="parity batch size (default 16)")
    p.add_argument("--models", nargs="+", default=None, choices=list(ZOO))
    p.add_argument("--strict-stand-in", action="store_true",
                   help="run 'CuPy' on the strict CPU stand-in (tests/strict_device.py)")
    p.add_argument("--torch-speed", action="store_true",
                   help="also time minicnn on CuPy against PyTorch on CUDA")
    p.add_argument("--speed-batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    if args.strict_stand_in:
        from tests import strict_device

        strict_device.install()
    import minicnn as mc

    try:
        mc.set_backend("cupy")
    except mc.backend.BackendError as exc:
        print(f"gpu_parity: {exc}")
        return 2
    mc.set_backend("numpy")
    start = time.perf_counter()
    failures = parity(args.steps, args.batch, args.models)
    print(f"parity: {len([m for m in ZOO if not args.models or m in args.models]) - failures} "
          f"ok, {failures} failed ({args.steps} steps, batch {args.batch}, float64 tol {TOL64:g}; "
          f"{time.perf_counter() - start:.1f}s)")
    if args.torch_speed and not args.strict_stand_in:
        torch_speed(args.speed_batch, args.repeats)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
