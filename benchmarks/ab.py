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

from benchmarks.common import blas_kernel  # noqa: E402
from minicnn.functional import im2col as F  # noqa: E402
from minicnn.functional import normalization as N  # noqa: E402

# (C_in, C_out, H=W) of the VGG-12 benchmark's 3x3 convolutions (benchmarks/models.py).
VGG_CONVS = [(64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4)]
# ... and of the CIFAR-10 CPU preset (vgg widths 32/64/128, two convs a stage, pool_first)
# and of the ResNet benchmark (32/64/128 channels at 32/16/8): --convs small.
SMALL_CONVS = [(32, 32, 32), (32, 32, 16), (32, 64, 16), (64, 64, 16), (64, 64, 8),
               (64, 128, 8), (128, 128, 8), (128, 128, 4)]


def interleaved(candidates: dict[str, Callable[[], Any]], repeats: int = 15,
                warmup: int = 2,
                setup: dict[str, Callable[[], Any]] | None = None) -> dict[str, float]:
    """Median ms of each candidate, timed alternately (A B C A B C ...) ``repeats`` times.

    ``setup``, optional: per candidate name, an untimed call made right before each timed one
    (a forward pass before the timed backward)."""
    setup = setup or {}
    for _ in range(warmup):
        for name, fn in candidates.items():
            if name in setup:
                setup[name]()
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            if name in setup:
                setup[name]()
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
    """Conv2d forward + backward, both gradients read from x's patch matrix, dx by
    col2im_matmul (KH·KW thin GEMMs and adds), vs from dout's, dx by conv_input_grad (one
    GEMM with the flipped kernel): the rule ``backward_from_dout``."""
    from minicnn import layers as L
    from minicnn.functional import conv as conv_f

    rule = conv_f.backward_from_dout

    def never(*args: Any) -> bool:
        return False

    rng = np.random.default_rng(0)
    for cin, cout, hw in VGG_CONVS if convs == "vgg" else SMALL_CONVS:
        x, dout = (rng.standard_normal((batch, hw, hw, c)).astype(np.float32).transpose(0, 3, 1, 2)
                   for c in (cin, cout))
        old, new = L.Conv2d(cin, cout, 3, padding=1), L.Conv2d(cin, cout, 3, padding=1)

        def step(conv, choose, x=x, dout=dout):
            # The rule, swapped for this step: "never" makes the layer read x's patches.
            conv_f.backward_from_dout = choose
            try:
                conv.forward(x)
                conv.backward(dout)
            finally:
                conv_f.backward_from_dout = rule

        cases = {"x's patches": functools.partial(step, old, never),
                 "dout's patches": functools.partial(step, new, rule)}
        report(f"conv {cin}->{cout} @{hw} fwd+bwd, batch {batch}", interleaved(cases, repeats),
               repeats)


def flat_workspace() -> Callable[[str, tuple[int, ...], Any], Any]:
    """A layer's own ``workspace(name, shape, dtype)`` as before issue 28: one flat buffer per
    name, grown to the largest request, kept as long as the layer."""
    buffers: dict[str, Any] = {}

    def workspace(name, shape, dtype):
        size = int(np.prod(shape))
        buf = buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = buffers[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)
    return workspace


class Conv2dKeepingCols:
    """Conv2d's forward and backward before issue 28, on a Conv2d's weights: the forward's
    patch matrix cols, in a buffer the layer owns for its lifetime, stays in the cache for dW
    = (colsᵀ @ dout_mat)ᵀ; for stride 1 (C_out <= C_in, inputs of 8×8 and more) dx is the
    flipped-kernel convolution, its dout patches written over cols, else col2im_matmul."""

    def __init__(self, conv: Any):
        self.conv, self.workspace = conv, flat_workspace()

    def forward(self, x: Any) -> Any:
        from minicnn.functional.conv import conv2d_weight_matrix

        c = self.conv
        cols, (Ho, Wo) = F.im2col(x, c.kernel_size, c.stride, c.pads, workspace=self.workspace)
        W_mat = conv2d_weight_matrix(c.W.data)
        out = cols @ W_mat.T
        if c.b is not None:
            out += c.b.data
        self.cache = (cols, W_mat, tuple(x.shape))
        return out.reshape(x.shape[0], Ho, Wo, -1).transpose(0, 3, 1, 2)

    def backward(self, dout: Any) -> Any:
        c = self.conv
        cols, W_mat, x_shape = self.cache
        C_out, C_in, kh, kw = c.W.shape
        dout_mat = dout.transpose(0, 2, 3, 1).reshape(-1, C_out)
        c.W.grad = np.ascontiguousarray((cols.T @ dout_mat).T.reshape(C_out, kh, kw, C_in)
                                        .transpose(0, 3, 1, 2))
        if c.b is not None:
            c.b.grad = dout_mat.sum(axis=0)
        if not c.input_grad:
            return None
        if (c.stride == (1, 1) and F.flipped_pads(c.kernel_size, c.pads) is not None
                and C_out <= C_in and min(x_shape[2:]) >= 8):
            dout4 = dout_mat.reshape(x_shape[0], *x_shape[2:], C_out).transpose(0, 3, 1, 2)

            def over_cols(name, shape, dtype):
                return self.workspace("dout_pad" if name == "x_pad" else name, shape, dtype)
            return F.conv_input_grad(dout4, W_mat, x_shape, c.kernel_size, c.pads,
                                     workspace=over_cols)
        return F.col2im_matmul(dout_mat, W_mat, x_shape, c.kernel_size, c.stride, c.pads,
                               workspace=self.workspace)


def ab_conv_cache(batch: int, repeats: int, convs: str = "vgg") -> None:
    """Conv2d forward + backward before issue 28 (cols kept from forward to backward, in the
    layer's own buffer: ``Conv2dKeepingCols``) and now (x kept, one patch matrix built again
    in backward, the scratch arena shared by all layers), on the same weights and data;
    "vgg" also times the RGB first layer without dx, as ``fit`` runs it."""
    from minicnn import layers as L

    shapes = ([(3, 64, 32)] + VGG_CONVS) if convs == "vgg" else SMALL_CONVS
    rng = np.random.default_rng(0)
    for cin, cout, hw in shapes:
        x, dout = (rng.standard_normal((batch, hw, hw, c)).astype(np.float32).transpose(0, 3, 1, 2)
                   for c in (cin, cout))
        conv = L.Conv2d(cin, cout, 3, padding=1)
        conv.input_grad = cin != 3
        old = Conv2dKeepingCols(conv)

        def step(layer, x=x, dout=dout):
            layer.forward(x)
            layer.backward(dout)

        cases = {"cols kept": functools.partial(step, old),
                 "x kept": functools.partial(step, conv)}
        report(f"conv {cin}->{cout} @{hw} fwd+bwd, batch {batch}", interleaved(cases, repeats),
               repeats)


def ab_winograd(batch: int, repeats: int, convs: str = "vgg") -> None:
    """3×3 'same' convolutions without bias, float32: Conv2d (im2col) against
    ``winograd_conv2d`` F(2×2, 3×3) and F(4×4, 3×3), each with its own buffers kept across
    steps; "F(4,3) keep x" keeps x instead of the transformed tiles (``keep="input"``: the
    backward transforms x again). Forward, backward (dx and dW, after an untimed forward) and
    forward + backward, timed interleaved; one line per pass, the ratios are im2col's time
    over each one's."""
    from minicnn import layers as L
    from minicnn.functional import winograd as wg

    pads = ((1, 1), (1, 1))
    variants = {"F(2,3)": (2, "tiles"), "F(4,3)": (4, "tiles"), "F(4,3) keep x": (4, "input")}
    rng = np.random.default_rng(0)
    for cin, cout, hw in VGG_CONVS if convs == "vgg" else SMALL_CONVS:
        x, dout = (rng.standard_normal((batch, hw, hw, c)).astype(np.float32).transpose(0, 3, 1, 2)
                   for c in (cin, cout))
        conv = L.Conv2d(cin, cout, 3, padding=1, bias=False)
        W = conv.W.data
        spaces = {name: workspace_dict() for name in variants}
        caches: dict[str, Any] = {}

        def fwd(name, x=x, W=W, spaces=spaces, caches=caches):
            m, keep = variants[name]
            caches[name] = wg.winograd_conv2d(x, W, pads, m, workspace=spaces[name],
                                              keep=keep)[1]

        def bwd(name, dout=dout, spaces=spaces, caches=caches):
            wg.winograd_conv2d_backward(dout, caches[name], workspace=spaces[name])

        def step(name):
            fwd(name)
            bwd(name)

        def conv_step(conv=conv, x=x, dout=dout):
            conv.forward(x)
            conv.backward(dout)

        forwards = {"im2col": functools.partial(conv.forward, x),
                    **{name: functools.partial(fwd, name) for name in variants}}
        passes = {
            "fwd": ({k: v for k, v in forwards.items() if k != "F(4,3) keep x"}, None),
            "bwd": ({"im2col": functools.partial(conv.backward, dout),
                     **{name: functools.partial(bwd, name) for name in variants}}, forwards),
            "fwd+bwd": ({"im2col": conv_step,
                         **{name: functools.partial(step, name) for name in variants}}, None),
        }
        for name, (cases, setup) in passes.items():
            ms = interleaved(cases, repeats, setup=setup)
            base = ms["im2col"]
            parts = ", ".join(f"{k} {v:.1f}" + ("" if k == "im2col" else f" ({base / v:.2f}x)")
                              for k, v in ms.items())
            print(f"conv {cin}->{cout} @{hw} {name}, batch {batch}: {parts} ms, "
                  f"interleaved median of {repeats}", flush=True)


# (C_in, C_out, H=W, batch) around the edges of winograd_is_faster's rule: few channels,
# tiles partly cut away (H not a multiple of 4), few output pixels (small H or batch).
WINOGRAD_RULE_CONVS = [
    (3, 16, 32, 64), (3, 32, 32, 64), (8, 8, 32, 64), (8, 16, 32, 64), (16, 16, 32, 64),
    (64, 64, 6, 64), (64, 64, 7, 64), (64, 64, 9, 64), (64, 64, 10, 64), (64, 64, 11, 64),
    (64, 64, 12, 64), (64, 64, 13, 64), (64, 64, 14, 64), (64, 64, 15, 64),
    (64, 64, 16, 4), (64, 64, 16, 8), (64, 64, 8, 8), (64, 64, 8, 16), (64, 64, 8, 32),
    (256, 256, 8, 8), (256, 256, 8, 16), (256, 256, 8, 32),
    (64, 64, 4, 64), (128, 128, 4, 64), (128, 128, 4, 128), (256, 256, 4, 64),
    (512, 512, 4, 64), (512, 512, 4, 128),
    # added 2026-12-08: 256-1024 output pixels, as a thread-rank of 16 or 32 images sees them
    (32, 32, 16, 2), (64, 64, 4, 16), (128, 128, 4, 16), (160, 160, 4, 16), (64, 160, 8, 16),
    (128, 128, 4, 32), (160, 160, 4, 32), (256, 256, 4, 32), (256, 512, 4, 32),
    (512, 512, 4, 32), (512, 512, 8, 16), (256, 512, 4, 64)]


def ab_winograd_rule(batch: int, repeats: int, convs: str = "vgg") -> None:
    """Conv2d (im2col) against winograd F(2×2, 3×3) and F(4×4, 3×3), forward + backward,
    float32, 'same' padding, at WINOGRAD_RULE_CONVS (each with its own batch: ``--batch`` and
    ``--convs`` are unused), and what ``winograd_is_faster`` picks there."""
    from minicnn import layers as L
    from minicnn.backend import blas_threads
    from minicnn.functional import winograd as wg

    pads = ((1, 1), (1, 1))
    rng = np.random.default_rng(0)
    for cin, cout, hw, n in WINOGRAD_RULE_CONVS:
        x, dout = (rng.standard_normal((n, hw, hw, c)).astype(np.float32).transpose(0, 3, 1, 2)
                   for c in (cin, cout))
        # im2col explicitly: "auto" would itself take F(4×4) where the rule says so.
        conv = L.Conv2d(cin, cout, 3, padding=1, bias=False, algorithm="im2col")
        spaces = {m: workspace_dict() for m in (2, 4)}

        def step(m, x=x, dout=dout, W=conv.W.data, spaces=spaces):
            cache = wg.winograd_conv2d(x, W, pads, m, workspace=spaces[m])[1]
            wg.winograd_conv2d_backward(dout, cache, workspace=spaces[m])

        def conv_step(conv=conv, x=x, dout=dout):
            conv.forward(x)
            conv.backward(dout)

        ms = interleaved({"im2col": conv_step, "F(2,3)": functools.partial(step, 2),
                          "F(4,3)": functools.partial(step, 4)}, repeats)
        base = ms["im2col"]
        parts = ", ".join(f"{k} {v:.1f}" + ("" if k == "im2col" else f" ({base / v:.2f}x)")
                          for k, v in ms.items())
        print(f"conv {cin}->{cout} @{hw} fwd+bwd, batch {n}: {parts} ms; rule: "
              f"{wg.winograd_is_faster(cin, cout, hw, hw, n, blas_threads())}, interleaved median "
              f"of {repeats}",
              flush=True)


def winograd_error(batch: int, repeats: int = 0, convs: str = "vgg") -> None:
    """Not a timing (``repeats`` is unused): the float32 error of Conv2d (im2col) and of
    winograd F(2×2, 3×3) and F(4×4, 3×3), ||v - v64|| / ||v64|| for y, dx and dW against the
    float64 computation, at the VGG (or small) shapes and an RGB first layer, x ~ N(0, 1),
    He-initialised W, padding 1 (docs/derivations/winograd.md ran it with ``--batch 8``)."""
    from minicnn import layers as L
    from minicnn.functional import winograd as wg

    def rel(a, b):
        return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))

    rng = np.random.default_rng(0)
    shapes = (VGG_CONVS if convs == "vgg" else SMALL_CONVS) + [(3, 32, 32)]
    for cin, cout, hw in shapes:
        conv = L.Conv2d(cin, cout, 3, padding=1, bias=False)
        x = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
        dout = rng.standard_normal((batch, cout, hw, hw)).astype(np.float32)
        conv64 = L.Conv2d(cin, cout, 3, padding=1, bias=False).astype(np.float64)
        conv64.W.data = conv.W.data.astype(np.float64)
        exact = (conv64.forward(x.astype(np.float64)), conv64.backward(dout.astype(np.float64)),
                 conv64.W.grad)
        got = {"im2col": (conv.forward(x), conv.backward(dout), conv.W.grad)}
        for m in (2, 4):
            y, cache = wg.winograd_conv2d(x, conv.W.data, conv.pads, m)
            got[f"F({m},3)"] = (y, *wg.winograd_conv2d_backward(dout, cache))
        parts = "; ".join(
            name + " " + " / ".join(f"{rel(v, e):.1e}" for v, e in zip(vs, exact, strict=True))
            for name, vs in got.items())
        print(f"conv {cin}->{cout} @{hw} float32 error y / dx / dW, batch {batch}: {parts}",
              flush=True)


COMPARISONS = {"col2im_matmul": ab_col2im_matmul, "conv_dW": ab_conv_dW,
               "batchnorm": ab_batchnorm, "conv_dx": ab_conv_dx, "winograd": ab_winograd,
               "conv_cache": ab_conv_cache, "winograd_error": winograd_error,
               "winograd_rule": ab_winograd_rule}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--only", nargs="+", choices=list(COMPARISONS),
                   help="run only these comparisons")
    p.add_argument("--convs", default="vgg", choices=("vgg", "small"),
                   help="conv_dx, winograd, conv_cache: the shapes of VGG-12, or the smaller "
                        "ones of the CIFAR-10 CPU preset and the ResNet benchmark")
    args = p.parse_args(argv)
    print(f"BLAS: {blas_kernel()}", flush=True)
    for name in args.only or COMPARISONS:
        if name in ("conv_dx", "winograd", "conv_cache", "winograd_error", "winograd_rule"):
            COMPARISONS[name](args.batch, args.repeats, args.convs)
        else:
            COMPARISONS[name](args.batch, args.repeats)


if __name__ == "__main__":
    main()
