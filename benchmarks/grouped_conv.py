"""Depthwise 3×3 convolution: one batched GEMM over the channels vs the shifted-view sum.

``python benchmarks/grouped_conv.py [--batch 64] [--repeats 15]`` times, interleaved
(``benchmarks.ab.interleaved``), ``grouped_conv2d`` / ``grouped_conv2d_backward`` of
``minicnn.functional.grouped_conv`` with method="batched" and method="direct" at
MobileNet-like depthwise shapes (float32, padding 1), and a dense 3×3 Conv2d of the same
shape for scale. The table goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import interleaved  # noqa: E402
from minicnn.functional.grouped_conv import (  # noqa: E402
    grouped_conv2d,
    grouped_conv2d_backward,
)
from minicnn.functional.scratch import scratch_workspace  # noqa: E402

SHAPES = [(64, 32, 1), (128, 16, 1), (64, 32, 2), (128, 16, 2)]   # (C, H=W, stride)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ws = scratch_workspace(np)
    pads = ((1, 1), (1, 1))
    print("| C | H=W | stride | pass | batched ms | direct ms | batched / direct |")
    print("|---|---|---|---|---|---|---|")
    for C, H, s in SHAPES:
        x = rng.standard_normal((args.batch, C, H, H)).astype(np.float32)
        W = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
        Ho = (H + 2 - 3) // s + 1
        dout = rng.standard_normal((args.batch, C, Ho, Ho)).astype(np.float32)
        fwd = {m: functools.partial(grouped_conv2d, x, W, C, (s, s), pads, ws, method=m)
               for m in ("batched", "direct")}
        bwd = {m: functools.partial(grouped_conv2d_backward, dout, x, W, C, (s, s), pads,
                                    workspace=ws, method=m)
               for m in ("batched", "direct")}
        for name, cands in (("forward", fwd), ("backward", bwd)):
            t = interleaved(cands, repeats=args.repeats)
            print(f"| {C} | {H} | {s} | {name} | {t['batched']:.1f} | {t['direct']:.1f} | "
                  f"{t['batched'] / t['direct']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
