"""Kernel launches per training step on the GPU code path, counted on the strict CPU stand-in.

    python benchmarks/launches.py [--batch 8] [--top 12] [--json out.json]

On a GPU, minicnn's step is bound by launching kernels (each CuPy operation is one launch,
~30 µs of step time each, measured on an H200), so the launch count is the number to drive
down. The strict stand-in for CuPy (``tests/strict_device.py``) counts one launch per
operation that writes device memory and one per fused kernel (``minicnn.kernels``), with the
minicnn file:line that asked for it. This prints, for one Adam step of each model of
``benchmarks/models.py`` (after a warm-up step): launches in forward, backward (loss
included) and the optimizer, and the places that launch most.

The count depends on the batch size only through choices made by size (``Conv2d``'s
"auto" algorithm); a small batch keeps it quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.models import MODELS, build_minicnn  # noqa: E402


def count_step(specs, batch: int = 8) -> dict:
    """{"forward", "backward", "optimizer", "total", "top"}: launches of one Adam step."""
    from tests import strict_device

    strict_device.install()
    import minicnn as mc

    mc.set_backend("cupy")
    try:
        mc.init.set_seed(0)
        model = build_minicnn(specs)
        model.layers[0].input_grad = False                 # as fit does
        rng = np.random.default_rng(0)
        x = mc.to_device(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
        y = mc.to_device(rng.integers(0, 10, batch))
        loss_fn = mc.losses.CrossEntropyLoss()
        opt = mc.optim.Adam(model.parameters(), lr=1e-3)

        def step(counts=None):
            parts = {}
            with strict_device.record() as rec:
                loss_fn.forward(model.forward(x), y)
            parts["forward"] = rec
            with strict_device.record() as rec:
                model.backward(loss_fn.backward())
            parts["backward"] = rec
            with strict_device.record() as rec:
                opt.step()
            parts["optimizer"] = rec
            return parts

        step()                                             # warm-up: buffers, caches
        parts = step()
    finally:
        mc.set_backend("numpy")
    out = {k: rec.launches for k, rec in parts.items()}
    out["total"] = sum(out.values())
    top = {}
    for rec in parts.values():
        for (where, what), n in rec.by_place("launch").items():
            top[f"{where} {what}"] = top.get(f"{where} {what}", 0) + n
    out["top"] = dict(sorted(top.items(), key=lambda kv: -kv[1]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["2conv", "vgg12", "resnet", "preset"],
                    choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results = {}
    print(f"{'model':8s} {'forward':>8s} {'backward':>9s} {'optimizer':>10s} {'total':>7s}")
    for name in args.models:
        r = results[name] = count_step(MODELS[name](), args.batch)
        print(f"{name:8s} {r['forward']:8d} {r['backward']:9d} {r['optimizer']:10d} "
              f"{r['total']:7d}")
    for name, r in results.items():
        print(f"\n{name}: the {args.top} places that launch most")
        for place, n in list(r["top"].items())[:args.top]:
            print(f"{n:6d}  {place}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
