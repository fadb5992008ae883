"""Forward+backward time of each layer on the lectures' CIFAR-10 VGG shapes.

For every 3x3 convolution it reports, side by side:

- minicnn's Conv2d forward + backward (ms) and its achieved GFLOP/s;
- the three GEMMs the layer needs (forward, dW, dcols) timed alone on the same matrix shapes:
  the physical limit of an im2col convolution ("GEMM floor") and the fraction of it reached;
- the textbook NumPy implementation (``TextbookConv`` of minicnn/functional/reference.py) and the
  speed-up over it;
- PyTorch's conv2d forward + backward when torch is importable, and the ratio.

Then max pooling, BatchNorm, ReLU and Linear at the shapes where the VGG uses them.

    python benchmarks/layers.py                 # NumPy, batch 64
    python benchmarks/layers.py --backend cupy --batch 256
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
from minicnn.functional.reference import TextbookConv  # noqa: E402

# (C_in, C_out, H=W) of the lectures' VGG-style CIFAR-10 net.
CONV_SHAPES = [(3, 64, 32), (64, 64, 32), (64, 128, 16), (128, 128, 16), (128, 256, 8),
               (256, 256, 8), (256, 512, 4), (512, 512, 4), (512, 512, 2)]


def conv_row(cin, cout, hw, batch, xp, repeats, torch, textbook):
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
    x = mc.to_device(x_np)
    layer = L.Conv2d(cin, cout, 3, padding=1)
    dout = mc.to_device(rng.standard_normal((batch, cout, hw, hw)).astype(np.float32))

    def step():
        layer.forward(x)
        layer.backward(dout)

    ms = time_it(step, repeats, xp=xp)
    M, K = batch * hw * hw, cin * 9
    flops = 3 * 2.0 * M * K * cout
    a = xp.asarray(rng.standard_normal((M, K)), dtype=xp.float32)
    w = xp.asarray(rng.standard_normal((cout, K)), dtype=xp.float32)
    g = xp.asarray(rng.standard_normal((M, cout)), dtype=xp.float32)

    def gemms():
        a @ w.T
        g.T @ a
        g @ w

    gemm_ms = time_it(gemms, repeats, xp=xp)
    row = {"layer": f"conv {cin}->{cout} @{hw}x{hw}", "ms": ms,
           "gflops": flops / ms / 1e6, "gemm_ms": gemm_ms, "gemm_gflops": flops / gemm_ms / 1e6,
           "fraction_of_gemm": gemm_ms / ms}
    if textbook and xp is np:
        tb = TextbookConv(mc.to_numpy(layer.W.data), mc.to_numpy(layer.b.data), 1, 1)

        def tb_step():
            tb.forward(x_np)
            tb.backward(mc.to_numpy(dout))

        row["textbook_ms"] = time_it(tb_step, max(2, repeats // 2))
        row["speedup_vs_textbook"] = row["textbook_ms"] / ms
    if torch is not None and xp is np:
        tx = torch.from_numpy(x_np).requires_grad_(True)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        tdout = torch.from_numpy(mc.to_numpy(dout))

        def t_step():
            tx.grad = None
            conv.zero_grad(set_to_none=True)
            conv(tx).backward(tdout)

        row["torch_ms"] = time_it(t_step, repeats)
        row["ratio_vs_torch"] = ms / row["torch_ms"]
    return row


def other_rows(batch, xp, repeats, torch):
    rng = np.random.default_rng(1)
    cases = [
        ("maxpool 2x2 64ch @32", L.MaxPool2d(2), (batch, 64, 32, 32),
         (lambda t: t.nn.MaxPool2d(2))),
        ("batchnorm 64ch @32", L.BatchNorm2d(64), (batch, 64, 32, 32),
         (lambda t: t.nn.BatchNorm2d(64))),
        ("relu 64ch @32", L.ReLU(), (batch, 64, 32, 32), (lambda t: t.nn.ReLU())),
        ("linear 2048->512", L.Linear(2048, 512), (batch, 2048),
         (lambda t: t.nn.Linear(2048, 512))),
    ]
    rows = []
    for name, layer, shape, make_torch in cases:
        x_np = rng.standard_normal(shape).astype(np.float32)
        x = mc.to_device(x_np)
        out = layer.forward(x)
        dout = xp.ones_like(out)

        def step(layer=layer, x=x, dout=dout):
            layer.forward(x)
            layer.backward(dout)

        row = {"layer": name, "ms": time_it(step, repeats, xp=xp)}
        if torch is not None and xp is np:
            tl = make_torch(torch)
            tx = torch.from_numpy(x_np).requires_grad_(True)

            def t_step(tl=tl, tx=tx):
                tx.grad = None
                tl(tx).sum().backward()

            row["torch_ms"] = time_it(t_step, repeats)
            row["ratio_vs_torch"] = row["ms"] / row["torch_ms"]
        rows.append(row)
    return rows


def format_row(r):
    def f(key, fmt, scale=1.0):
        return format(scale * r[key], fmt) if key in r else "-"

    return (f"{r['layer']:26s} {r['ms']:8.2f} {f('gflops', '8.1f'):>8s} "
            f"{f('gemm_ms', '8.2f'):>8s} {f('fraction_of_gemm', '5.0f', 100):>6s} "
            f"{f('textbook_ms', '9.2f'):>9s} {f('speedup_vs_textbook', '8.2f'):>8s} "
            f"{f('torch_ms', '8.2f'):>8s} {f('ratio_vs_torch', '7.2f'):>7s}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-textbook", action="store_true")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--out", default=None, help="result name (default layers_<backend>_b<batch>)")
    args = p.parse_args(argv)
    mc.set_backend(args.backend)
    xp = mc.backend.get_xp()
    torch = None if args.no_torch else torch_or_none()
    rows = [conv_row(ci, co, hw, args.batch, xp, args.repeats, torch, not args.no_textbook)
            for ci, co, hw in CONV_SHAPES]
    rows += other_rows(args.batch, xp, args.repeats, torch)
    head = f"{'layer':26s} {'ms':>8s} {'GFLOP/s':>8s} {'GEMM ms':>8s} {'%GEMM':>6s} " \
           f"{'textbook':>9s} {'x faster':>8s} {'torch':>8s} {'/torch':>7s}"
    print(head)
    for r in rows:
        print(format_row(r))
    convs = [r for r in rows if "textbook_ms" in r][:8]  # the eight VGG layers of the issue
    if convs:
        total = sum(r["textbook_ms"] for r in convs) / sum(r["ms"] for r in convs)
        print(f"eight VGG conv layers together: {total:.2f}x faster than the textbook code")
    name = args.out or f"layers_{args.backend}_b{args.batch}"
    path = save(name, {"machine": machine_info(args.backend), "batch": args.batch,
                       "repeats": args.repeats, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
