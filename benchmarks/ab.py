"""Interleaved A/B timing: is the new version of a function faster than the old one?

On a shared machine the load changes from second to second, so two timings taken in separate
runs (or one after the other) compare the load as much as the code. ``interleaved`` runs the
candidates alternately, A B A B ..., in one process on the same inputs, and reports each one's
median: a load change hits both alike.

    from benchmarks.ab import interleaved, report
    report(interleaved({"old": lambda: old(x), "new": lambda: new(x)}, repeats=15))

``python benchmarks/ab.py`` runs the A/B comparisons behind the CPU speed changes (the old
version of each function is kept here, next to its replacement's name), at the shapes of the
VGG-12 + BatchNorm benchmark, batch 64 unless ``--batch`` says otherwise.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicnn.functional import im2col as F  # noqa: E402
from minicnn.functional import normalization as N  # noqa: E402

# (C_in, C_out, H=W) of the VGG-12 benchmark's 3x3 convolutions (benchmarks/models.py).
VGG_CONVS = [(64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4)]
# ... and of the CIFAR-10 CPU preset (vgg widths 32/64/128, two convs a stage, pool_first)
# and of the ResNet benchmark (32/64/128 channels at 32/16/8): --convs small.
SMALL_CONVS = [(32, 32, 32), (32, 32, 16), (32, 64, 16), (64, 64, 16), (64, 64, 8),
               (64, 128, 8), (128, 128, 8), (128, 128, 4)]


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int = 15,
                warmup: int = 2) -> dict[str, float]:
    """Median ms of each candidate, timed alternately (A B C A B C ...) ``repeats`` times."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title: str, medians: dict[str, float], repeats: int) -> None:
    """One line: ``title: old 24.9 -> new 9.1 ms (2.74x), interleaved median of 15``."""
    parts = " -> ".join(f"{name} {ms:.1f}" for name, ms in medians.items())
    first, last = list(medians.values())[0], list(medians.values())[-1]
    print(f"{title}: {parts} ms ({first / last:.2f}x), interleaved median of {repeats}",
          flush=True)


# -- the old versions -----------------------------------------------------------------------

def col2im_matmul_padded(dout_mat, W_mat, x_shape, kernel_size, stride, padding,
                         workspace=None):
    """col2im_matmul before it wrote into the unpadded dx: zeros, nine adds into a padded
    buffer, then the crop (a non-contiguous view)."""
    N, C, H, W = x_shape
    (kh, kw) = kernel_size
    (top, bottom), (left, right) = padding
    Ho, Wo = F.output_size(x_shape, kernel_size, stride, padding)
    W_ab = W_mat.reshape(W_mat.shape[0], kh, kw, C)
    dx_p = np.zeros((N, H + top + bottom, W + left + right, C), dtype=dout_mat.dtype)
    block = workspace("dcols_block", (N * Ho * Wo, C), dout_mat.dtype)
    for a, b, index in F.window_slices(kernel_size, stride, (Ho, Wo)):
        np.matmul(dout_mat, W_ab[:, a, b, :], out=block)
        dx_p[index] += block.reshape(N, Ho, Wo, C)
    return dx_p[:, top:top + H, left:left + W, :].transpose(0, 3, 1, 2)


def batchnorm_train_step_from_x_hat(x, gamma, beta, dout, eps=1e-5):
    """BatchNorm2d's training forward + backward before it kept x - mu instead of x_hat."""
    axes = (0, 2, 3)
    x_hat, inv_std, mu, var = N.normalize(x, axes, eps)
    y = x_hat * gamma
    y += beta
    dx, dgamma, dbeta = N.normalize_backward(dout, x_hat, gamma * inv_std, axes)
    return y, dx


def batchnorm_train_step_from_x_c(x, gamma, beta, dout, eps=1e-5):
    """The same as BatchNorm2d computes it now (the layer's math without its checks)."""
    axes = (0, 2, 3)
    x_c, inv_std, mu, var = N.center(x, axes, eps)
    y = x_c * (gamma * inv_std)
    y += beta
    dx, dgamma, dbeta = N.normalize_backward_centered(dout, x_c, inv_std, gamma * inv_std,
                                                      axes)
    return y, dx


# -- the comparisons ------------------------------------------------------------------------

def workspace_dict() -> Callable[[str, tuple[int, ...], Any], Any]:
    buffers: dict[str, Any] = {}

    def workspace(name, shape, dtype):
        buf = buffers.get(name)
        if buf is None or buf.shape != tuple(shape):
            buf = buffers[name] = np.empty(shape, dtype)
        return buf
    return workspace


def ab_col2im_matmul(batch: int, repeats: int) -> None:
    """dx of a 3x3 'same' convolution, and the ReLU backward that reads it next."""
    rng = np.random.default_rng(0)
    for cin, cout, hw in VGG_CONVS:
        dout_mat = rng.standard_normal((batch * hw * hw, cout)).astype(np.float32)
        W_mat = rng.standard_normal((cout, 9 * cin)).astype(np.float32)
        y = rng.standard_normal((batch, hw, hw, cin)).astype(np.float32).transpose(0, 3, 1, 2)
        args = (dout_mat, W_mat, (batch, cin, hw, hw), (3, 3), (1, 1), ((1, 1), (1, 1)))

        def run(fn, ws, args=args, y=y):
            dx = fn(*args, workspace=ws)
            d = np.greater(y, 0, out=np.empty_like(dx))    # ReLU.backward, reading dx
            d *= dx

        cases = {"old": functools.partial(run, col2im_matmul_padded, workspace_dict()),
                 "new": functools.partial(run, F.col2im_matmul, workspace_dict())}
        report(f"conv {cin}->{cout} @{hw} dx + ReLU bwd, batch {batch}",
               interleaved(cases, repeats), repeats)


def ab_conv_dW(batch: int, repeats: int) -> None:
    """A convolution's weight gradient dout_matᵀ @ cols, and the same as (colsᵀ @ dout_mat)ᵀ."""
    rng = np.random.default_rng(0)
    for cin, cout, hw in VGG_CONVS:
        cols = rng.standard_normal((batch * hw * hw, 9 * cin)).astype(np.float32)
        dout_mat = rng.standard_normal((batch * hw * hw, cout)).astype(np.float32)
        cases = {"dout_mat.T @ cols": functools.partial(np.matmul, dout_mat.T, cols),
                 "(cols.T @ dout_mat).T": functools.partial(np.matmul, cols.T, dout_mat)}
        report(f"conv {cin}->{cout} @{hw} dW GEMM, batch {batch}",
               interleaved(cases, repeats), repeats)


def ab_batchnorm(batch: int, repeats: int) -> None:
    """BatchNorm2d training forward + backward (x_hat kept vs x - mu kept)."""
    rng = np.random.default_rng(0)
    for _, c, hw in VGG_CONVS:
        x, dout = (rng.standard_normal((batch, hw, hw, c)).astype(np.float32).transpose(0, 3, 1, 2)
                   for _ in range(2))
        gamma = rng.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32)
        beta = rng.standard_normal((1, c, 1, 1)).astype(np.float32)
        cases = {name: functools.partial(fn, x, gamma, beta, dout) for name, fn in
                 [("x_hat", batchnorm_train_step_from_x_hat),
                  ("x - mu", batchnorm_train_step_from_x_c)]}
        report(f"BatchNorm2d {c}ch @{hw} fwd+bwd, batch {batch}", interleaved(cases, repeats),
               repeats)


def ab_conv_dx(batch: int, repeats: int, convs: str = "vgg") -> None:
    """Conv2d forward + backward, dx by col2im_matmul (KH·KW thin GEMMs and adds) vs by
    conv_input_grad (im2col of dout, one GEMM with the flipped kernel)."""
    from minicnn import layers as L
    from minicnn.functional import conv as conv_f
    from minicnn.layers import conv as conv_l

    rule = conv_f.dx_by_flipped_conv

    def never(*args: Any) -> bool:
        return False

    rng = np.random.default_rng(0)
    for cin, cout, hw in VGG_CONVS if convs == "vgg" else SMALL_CONVS:
        x, dout = (rng.standard_normal((batch, hw, hw, c)).astype(np.float32).transpose(0, 3, 1, 2)
                   for c in (cin, cout))
        old, new = L.Conv2d(cin, cout, 3, padding=1), L.Conv2d(cin, cout, 3, padding=1)

        def step(conv, choose, x=x, dout=dout):
            # The rule, swapped for this step: "never" makes the layer take col2im_matmul.
            conv_f.dx_by_flipped_conv = conv_l.dx_by_flipped_conv = choose
            try:
                conv.forward(x)
                conv.backward(dout)
            finally:
                conv_f.dx_by_flipped_conv = conv_l.dx_by_flipped_conv = rule

        cases = {"col2im_matmul": functools.partial(step, old, never),
                 "conv_input_grad": functools.partial(step, new, rule)}
        report(f"conv {cin}->{cout} @{hw} fwd+bwd, batch {batch}", interleaved(cases, repeats),
               repeats)


COMPARISONS = {"col2im_matmul": ab_col2im_matmul, "conv_dW": ab_conv_dW,
               "batchnorm": ab_batchnorm, "conv_dx": ab_conv_dx}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--only", nargs="+", choices=list(COMPARISONS),
                   help="run only these comparisons")
    p.add_argument("--convs", default="vgg", choices=("vgg", "small"),
                   help="conv_dx: the shapes of VGG-12, or the smaller ones of the CIFAR-10 "
                        "CPU preset and the ResNet benchmark")
    args = p.parse_args(argv)
    for name in args.only or COMPARISONS:
        if name == "conv_dx":
            ab_conv_dx(args.batch, args.repeats, args.convs)
        else:
            COMPARISONS[name](args.batch, args.repeats)


if __name__ == "__main__":
    main()
