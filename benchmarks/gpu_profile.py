"""Is the GPU step bound by the host (launching) or by the device (arithmetic)?

    python benchmarks/gpu_profile.py [--batch 128] [--repeats 20]   # on a GPU (CuPy)
    python benchmarks/gpu_profile.py --strict-stand-in               # dry run on the CPU

For each model of ``benchmarks/models.py`` (one Adam step: forward, loss, backward,
optimizer; the first layer without dL/dx, as ``fit`` runs it) this prints the step's host
time and device time from ``cupyx.profiler.benchmark`` and the launches per step counted on
the strict stand-in (``benchmarks/launches.py``), then host and device milliseconds per layer
type (each layer's forward and backward wrapped, the device synchronised around each call:
the sums are slower than the step, but their shares say where the time goes; wrapping a
layer turns off Sequential's BatchNorm+ReLU fusion, so those two show apart).

Host time close to device time means the GPU waits for Python to launch kernels (fewer
launches, or CUDA graphs, help); device time well above host time means the kernels
themselves are the cost (faster kernels help). Issue 24, item 5: CUDA graphs only if this
still says host-bound.

On the strict stand-in there is no device clock: only host times are printed (the dry run
checks that the script runs).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _launches(model: str) -> int | None:
    """Launches per Adam step from benchmarks/launches.py, in a child process (the stand-in
    cannot be installed beside a real CuPy)."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "launches.py"), "--models", model,
           "--top", "0"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    except (subprocess.SubprocessError, OSError):
        return None
    for line in out.stdout.splitlines():
        if line.startswith(model + " "):
            return int(line.split()[-1])
    return None


def _step_fn(specs, batch):
    import minicnn as mc
    from benchmarks.models import build_minicnn

    mc.init.set_seed(0)
    model = build_minicnn(specs)
    model.layers[0].input_grad = False
    rng = np.random.default_rng(0)
    x = mc.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = mc.to_device(rng.integers(0, 10, batch))
    loss_fn = mc.losses.CrossEntropyLoss()
    opt = mc.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    return model, step


def _per_layer(model, step, xp, sync, repeats):
    """{layer type: [host ms, device-synchronised ms]} per step, by wrapping each leaf."""
    totals = collections.defaultdict(lambda: [0.0, 0.0])
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    originals = []

    def wrap(layer, name):
        kind = f"{type(layer).__name__}.{name}"
        fn = getattr(layer, name)

        def timed(*args):
            sync()
            t0 = time.perf_counter()
            out = fn(*args)
            t1 = time.perf_counter()
            sync()
            t2 = time.perf_counter()
            totals[kind][0] += (t1 - t0) * 1e3 / repeats
            totals[kind][1] += (t2 - t0) * 1e3 / repeats
            return out

        originals.append((layer, name))
        setattr(layer, name, timed)

    for layer in leaves:
        wrap(layer, "forward")
        wrap(layer, "backward")
    try:
        for _ in range(repeats):
            step()
    finally:
        for layer, name in originals:
            delattr(layer, name)            # back to the class's method
    return totals


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--models", nargs="*", default=["2conv", "vgg12", "resnet"])
    p.add_argument("--strict-stand-in", action="store_true",
                   help="run 'CuPy' on the strict CPU stand-in (tests/strict_device.py)")
    args = p.parse_args(argv)
    launches = {} if args.strict_stand_in else {m: _launches(m) for m in args.models}
    if args.strict_stand_in:
        from tests import strict_device

        strict_device.install()
    import minicnn as mc
    from benchmarks.models import MODELS

    mc.set_backend("cupy")
    import cupy as cp

    try:
        from cupyx.profiler import benchmark
    except ImportError:                                  # the stand-in has no device clock
        benchmark = None

    def sync():
        cp.cuda.Device().synchronize()

    print(f"batch {args.batch}, float32, {args.repeats} repeats; "
          f"{'strict stand-in (host times only)' if benchmark is None else cp.__version__}")
    print(f"{'model':8s} {'host ms':>8s} {'device ms':>10s} {'launches':>9s} "
          f"{'µs/launch':>10s}")
    for name in args.models:
        model, step = _step_fn(MODELS[name](), args.batch)
        for _ in range(3):
            step()                                       # compile the kernels, fill the pools
        if benchmark is not None:
            r = benchmark(step, n_repeat=args.repeats, n_warmup=2)
            host = float(np.mean(r.cpu_times)) * 1e3
            device = float(np.mean(r.gpu_times)) * 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                step()
            host, device = (time.perf_counter() - t0) * 1e3 / args.repeats, float("nan")
        n = launches.get(name)
        per = f"{device * 1e3 / n:10.1f}" if n and device == device else f"{'-':>10s}"
        print(f"{name:8s} {host:8.2f} {device:10.2f} {n if n else '-':>9} {per}", flush=True)
        totals = _per_layer(model, step, cp, sync, max(2, args.repeats // 4))
        for kind, (h, d) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:12]:
            print(f"    {kind:28s} host {h:8.2f} ms   synchronised {d:8.2f} ms")
    mc.set_backend("numpy")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
