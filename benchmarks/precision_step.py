"""What each precision buys on the GPU: the CIFAR-10 GPU preset's step and its convolutions.

    python benchmarks/precision_step.py [--batch 1024] [--repeats 10]     # on a GPU (CuPy)
    python benchmarks/precision_step.py --strict-stand-in --batch 4 --repeats 1   # dry run

For the preset's network (``airbench94``, ``presets.PRESETS["cifar10"]["gpu"]``) at the
preset's batch, under each ``--precision`` (fp32, tf32, bf16, fp16):

- one training step: forward, label-smoothed cross-entropy, backward (the first layer without
  dL/dx, as ``fit`` runs it), a Nesterov SGD step (the preset's optimizer adds Lookahead and
  parameter groups: a few more launches, the same GEMMs); host and device milliseconds from
  ``cupyx.profiler.benchmark``, and the device time against fp32's;
- each 3×3 convolution of the net alone, forward and backward at its input shape (device
  ms): where the GEMMs are, so where tf32's compute type and the 16-bit GEMMs of bf16 / fp16
  (``minicnn.kernels.gemm16``: patches gathered in 16 bits, ``cublasGemmEx``) should show;
- each convolution's forward GEMM alone, with its TFLOP/s: from float32 inputs, and for
  bf16 / fp16 also from inputs already in 16 bits (what the GEMM itself costs).

Issue 25's targets are ≤ 30 s of training in fp32 and ≤ 10 s in bf16 or fp16: about 490
steps (10 epochs of 49 batches of 1024) plus the evaluation, so a step must stay near 50 ms
in fp32 and 15 ms in 16 bits. On the strict stand-in there is no device clock: host times
only (the dry run checks that the script runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def _timer():
    """``time(fn, repeats) -> (host ms, device ms)``: cupyx.profiler.benchmark on a GPU; on
    the stand-in (no device clock) the host's wall time and NaN."""
    try:
        from cupyx.profiler import benchmark
    except ImportError:
        benchmark = None

    def time_it(fn, repeats):
        if benchmark is None:
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            return (time.perf_counter() - t0) * 1e3 / repeats, float("nan")
        r = benchmark(fn, n_repeat=repeats, n_warmup=2)
        return float(np.mean(r.cpu_times)) * 1e3, float(np.mean(r.gpu_times)) * 1e3

    return time_it


def _preset_step(mc, batch: int):
    """(model, step): one training step of the preset's net on random data on the device."""
    from minicnn import layers as L

    mc.init.set_seed(0)
    model = mc.models.airbench94()
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    model.layers[0].fit(x_host[:512])         # the whitening filters, from the data as fit does
    model = model.to("gpu")
    model.layers[0].input_grad = False
    x = mc.to_device(x_host)
    y = mc.to_device(rng.integers(0, 10, batch))
    loss_fn = mc.losses.CrossEntropyLoss(label_smoothing=0.2)
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.85, nesterov=True)

    def step():
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        opt.step()

    convs, h = [], x                       # each 3x3 Conv2d and the input shape it sees
    for layer in model.layers:
        if type(layer) is L.Conv2d:
            convs.append((layer, tuple(h.shape)))
        h = layer.forward(h)
    return step, convs


def _conv_pass(mc, layer, x_shape):
    """forward + backward of a copy of ``layer`` on random data of ``x_shape``."""
    import copy

    layer = copy.deepcopy(layer)
    rng = np.random.default_rng(1)
    x = mc.to_device(rng.standard_normal(x_shape).astype(np.float32))
    dout = mc.to_device(rng.standard_normal(tuple(layer.forward(x).shape)).astype(np.float32))

    def run():
        layer.forward(x)
        layer.backward(dout)

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--precisions", nargs="*", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--strict-stand-in", action="store_true",
                   help="run 'CuPy' on the strict CPU stand-in (tests/strict_device.py)")
    args = p.parse_args(argv)
    if args.strict_stand_in:
        from tests import strict_device

        strict_device.install()
    import minicnn as mc
    from minicnn.functional.precision import autocast

    mc.set_backend("cupy")
    import cupy as cp

    time_it = _timer()
    try:
        gpu = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # noqa: BLE001 - a name only
        gpu = "?"
    print(f"airbench94 (the cifar10/gpu preset's net), batch {args.batch}, {args.repeats} "
          f"repeats; CuPy {cp.__version__} on {gpu}")
    step, convs = _preset_step(mc, args.batch)
    steps = {}
    print(f"{'precision':9s} {'host ms':>8s} {'device ms':>10s} {'vs fp32':>8s}  (one step)")
    for fmt in args.precisions:
        with autocast(fmt):
            for _ in range(2):
                step()                           # compile the kernels, fill the pools
            steps[fmt] = time_it(step, args.repeats)
        host, device = steps[fmt]
        base = steps.get("fp32", (None, float("nan")))[1]
        ratio = f"{base / device:7.2f}x" if device == device and base == base else f"{'-':>8s}"
        print(f"{fmt:9s} {host:8.2f} {device:10.2f} {ratio}", flush=True)
    print("\nper 3x3 convolution, forward + backward alone: device ms (host ms on the stand-in)")
    print(f"{'layer':28s} " + " ".join(f"{fmt:>8s}" for fmt in args.precisions))
    for layer, x_shape in convs:
        run = _conv_pass(mc, layer, x_shape)
        cells = []
        for fmt in args.precisions:
            with autocast(fmt):
                run()
                host, device = time_it(run, args.repeats)
            cells.append(device if device == device else host)
        name = (f"{layer.in_channels}->{layer.out_channels} at {x_shape[2]}x{x_shape[3]}")
        print(f"{name:28s} " + " ".join(f"{c:8.3f}" for c in cells), flush=True)
    _gemm_alone(mc, convs, args, time_it)
    mc.set_backend("numpy")
    return 0


def _gemm_alone(mc, convs, args, time_it) -> None:
    """The forward GEMM of each convolution alone, cols (N·Ho·Wo, 9·C_in) @ W_matᵀ: device ms
    and TFLOP/s under each precision, its inputs given as float32 (bf16 / fp16 convert them
    first, as the layers' other operands are) and, for bf16 / fp16, already in 16 bits (the
    patches as ``im2col`` gathers them: the GEMM alone)."""
    from minicnn.functional.im2col import im2col
    from minicnn.functional.precision import autocast, matmul
    from minicnn.kernels import gemm16

    print("\nthe forward GEMM alone: device ms (TFLOP/s); 16-bit: inputs already in 16 bits")
    cols_16 = [f for f in args.precisions if f in gemm16.FORMATS]
    print(f"{'GEMM (M, K, N)':28s} " + " ".join(f"{f:>15s}" for f in args.precisions)
          + "".join(f" {f + ' stored':>15s}" for f in cols_16))
    def cell(fn, flop):
        host, device = time_it(fn, args.repeats)
        ms = device if device == device else host
        return f"{ms:7.3f} ({flop / ms / 1e9:5.1f})"

    rng = np.random.default_rng(2)
    for layer, x_shape in convs:
        x = mc.to_device(rng.standard_normal(x_shape).astype(np.float32))
        cols, _ = im2col(x, layer.kernel_size, layer.stride, layer.pads)
        W_t = layer.W.data.transpose(0, 2, 3, 1).reshape(layer.out_channels, -1).T
        M, K = cols.shape
        flop = 2.0 * M * K * layer.out_channels
        cells = []
        for fmt in args.precisions:
            with autocast(fmt):
                cells.append(cell(lambda a=cols, b=W_t: matmul(a, b), flop))
        for fmt in cols_16:
            a16, b16 = gemm16.to_16bit(cols, fmt), gemm16.to_16bit(W_t, fmt)
            cells.append(cell(lambda a=a16, b=b16, f=fmt: gemm16.gemm(a, b, f), flop))
        print(f"{str((M, K, layer.out_channels)):28s} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
