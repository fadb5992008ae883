"""ONNX export: a minicnn model as an ONNX inference graph (``to_onnx``).

Every layer becomes the ONNX operator(s) that compute the same function in evaluation mode
(BatchNorm with its running statistics, Dropout the identity); the table is ``EXPORTERS``
below and docs/interop.md. The walk follows the containers: a ``Sequential`` chains its
children, a ``Residual`` writes both branches from the same input and joins them with
``Add``, a ``Concat`` writes every branch from the same input and joins them with
``Concat(axis=1)``. Parameters become initializers under their ``state_dict`` names
(``layers.0.W``), nodes are named after the layer's dotted path (``layers.0/Conv``), so the
graph reads like ``print(model)``.

Shapes come from running the model: each layer's ``forward`` is called once on a batch of
one, in evaluation mode, as it is written out, so a model that does not take
``input_shape`` fails at the layer that refuses it, and the operators that need a shape
(GroupNorm's reshapes, LayerNorm's axis, Linear on more than two axes) read it there.

Tests: tests/test_interop.py
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import layers as L
from .._io import atomic_write
from ..backend import get_array_module, to_numpy
from ..functional.resample import linear_matrix, nearest_matrix
from ..layers.base import Layer
from .common import EXPORT_MIN_OPSET, require_onnx

__all__ = ["to_onnx", "EXPORTERS", "CONTAINERS", "unsupported_layers", "onnx_resize_matrix",
           "onnx_resize_size", "same_resampling"]

_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_TANH_A = 0.044715  # GELU(approximate="tanh"): u = √(2/π) (x + 0.044715 x³)


class _Graph:
    """The nodes and initializers of the graph being written, with unique value names."""

    def __init__(self, onnx: Any, opset: int):
        self.onnx, self.opset = onnx, opset
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.names: set[str] = {"input"}

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def weight(self, name: str, value: Any) -> str:
        """An initializer holding ``value`` (an array of any backend) as float32."""
        array = np.ascontiguousarray(to_numpy(value), dtype=np.float32)
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        """An int64 initializer (a shape for Reshape)."""
        name = self.unique(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(
            np.asarray(values, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: Sequence[str], path: str, **attrs: Any) -> str:
        """Add ``op(inputs)`` named ``path/op``; return its output's name."""
        name = self.unique(f"{path or 'model'}/{op}")
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [name], name=name,
                                                     **attrs))
        return name


# An exporter writes one layer: (graph, layer, input name, dotted path, x, y) -> output name,
# where x and y are the layer's input and output on a batch of one (for their shapes).
Exporter = Callable[[_Graph, Any, str, str, Any, Any], str]


def _pads(pads: tuple[tuple[int, int], tuple[int, int]]) -> list[int]:
    """minicnn's ((top, bottom), (left, right)) -> ONNX's [top, left, bottom, right]."""
    (top, bottom), (left, right) = pads
    return [int(top), int(left), int(bottom), int(right)]


def _conv(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """Conv2d (and PatchWhitening, a Conv2d with fixed filters): y = W ⋆ x + b."""
    inputs = [x, g.weight(f"{path}.W", layer.W.data)]
    if layer.b is not None:
        inputs.append(g.weight(f"{path}.b", layer.b.data))
    return g.node("Conv", inputs, path, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), pads=_pads(layer.pads), dilations=[1, 1],
                  group=int(getattr(layer, "groups", 1)))


def _linear(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """Linear, y = x W + b with W (in, out): Gemm (transB=0) for (N, in), MatMul + Add for
    more leading axes (Gemm takes matrices only)."""
    W = g.weight(f"{path}.W", layer.W.data)
    b = None if layer.b is None else g.weight(f"{path}.b", layer.b.data)
    if xa.ndim == 2:
        return g.node("Gemm", [x, W] + ([b] if b else []), path, transA=0, transB=0)
    y = g.node("MatMul", [x, W], path)
    return y if b is None else g.node("Add", [y, b], path)


def _batchnorm(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """BatchNorm1d/2d, SyncBatchNorm2d in evaluation mode:
    y = gamma (x - running_mean) / sqrt(running_var + eps) + beta."""
    inputs = [x, g.weight(f"{path}.gamma", layer.gamma.data),
              g.weight(f"{path}.beta", layer.beta.data),
              g.weight(f"{path}.running_mean", layer.running_mean),
              g.weight(f"{path}.running_var", layer.running_var)]
    return g.node("BatchNormalization", inputs, path, epsilon=float(layer.eps),
                  momentum=1.0 - float(layer.momentum))  # ONNX's momentum weighs the old value


def _unary(op: str, **attrs: Any) -> Exporter:
    def export(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
        return g.node(op, [x], path, **attrs)
    return export


def _leaky_relu(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    return g.node("LeakyRelu", [x], path, alpha=float(layer.negative_slope))


def _silu(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """SiLU: y = x σ(x), exactly Mul(x, Sigmoid(x))."""
    return g.node("Mul", [x, g.node("Sigmoid", [x], path)], path)


def _gelu(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """GELU: ONNX's Gelu from opset 20; before it the formula, operator by operator:

    exact:  y = 0.5 x (1 + erf(x / √2))                  (Mul, Erf, Add, Mul, Mul)
    tanh:   y = 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
    """
    if g.opset >= 20:
        return g.node("Gelu", [x], path, approximate=layer.approximate)

    def scalar(name: str, value: float) -> str:
        return g.weight(f"{path}.{name}", np.float32(value))

    if layer.approximate == "tanh":
        x3 = g.node("Mul", [g.node("Mul", [x, x], path), x], path)           # x³
        inner = g.node("Add", [x, g.node("Mul", [x3, scalar("a", _GELU_TANH_A)], path)],
                       path)                                                 # x + a x³
        t = g.node("Tanh", [g.node("Mul", [inner, scalar("c", _SQRT_2_OVER_PI)], path)],
                   path)
    else:
        t = g.node("Erf", [g.node("Mul", [x, scalar("inv_sqrt2", _SQRT_HALF)], path)], path)
    one_plus = g.node("Add", [t, scalar("one", 1.0)], path)
    return g.node("Mul", [g.node("Mul", [x, one_plus], path), scalar("half", 0.5)], path)


def _pool(op: str, **attrs: Any) -> Exporter:
    """MaxPool2d (padding with -inf) and AvgPool2d (zeros that count in the mean:
    count_include_pad=1); floor-mode output sizes (ceil_mode=0) like minicnn's."""
    def export(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
        return g.node(op, [x], path, kernel_shape=list(layer.kernel_size),
                      strides=list(layer.stride), pads=_pads(layer.pads), **attrs)
    return export


def _global_avg_pool(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """GlobalAvgPool2d returns (N, C); ONNX's GlobalAveragePool (N, C, 1, 1): + Flatten."""
    return g.node("Flatten", [g.node("GlobalAveragePool", [x], path)], path, axis=1)


def _flatten(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    return g.node("Flatten", [x], path, axis=1)


def _identity(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """Identity, and Dropout (the identity in evaluation mode): no node at all."""
    return x


def _layernorm(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """LayerNorm over the trailing len(normalized_shape) axes: LayerNormalization."""
    return g.node("LayerNormalization", [x, g.weight(f"{path}.gamma", layer.gamma.data),
                                         g.weight(f"{path}.beta", layer.beta.data)],
                  path, axis=-len(layer.normalized_shape), epsilon=float(layer.eps))


def _per_channel(value: Any, ndim: int) -> np.ndarray:
    """(C,) -> (C, 1, ..., 1): broadcasts over (N, C, *) from axis 1."""
    array = to_numpy(value)
    return array.reshape(array.shape + (1,) * (ndim - 2))


def _groupnorm(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """GroupNorm(G, C) on (N, C, *): each group of C/G channels is one instance of an
    InstanceNormalization on the (N, G, C/G·*) view, then the per-channel affine map:

        Reshape(x, [0, G, -1]) -> InstanceNormalization(ones(G), zeros(G))
        -> Reshape(·, [0, C, *]) -> Mul(gamma (C, 1, ...)) -> Add(beta)

    (opset 18's GroupNormalization has one scale per group, not per channel, and opset 21's
    per-channel form is newer than many runtimes; this form runs everywhere.)
    """
    G = int(layer.num_groups)
    grouped = g.node("Reshape", [x, g.ints(f"{path}.grouped_shape", [0, G, -1])], path)
    normed = g.node("InstanceNormalization",
                    [grouped, g.weight(f"{path}.ones", np.ones(G)),
                     g.weight(f"{path}.zeros", np.zeros(G))], path, epsilon=float(layer.eps))
    back = g.node("Reshape", [normed, g.ints(f"{path}.shape", [0, *xa.shape[1:]])], path)
    scaled = g.node("Mul", [back, g.weight(f"{path}.gamma",
                                           _per_channel(layer.gamma.data, xa.ndim))], path)
    return g.node("Add", [scaled, g.weight(f"{path}.beta",
                                           _per_channel(layer.beta.data, xa.ndim))], path)


def _instancenorm(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """InstanceNorm2d: InstanceNormalization (scale 1, bias 0 when not affine)."""
    C = int(layer.num_features)
    gamma = layer.gamma.data if layer.affine else np.ones(C)
    beta = layer.beta.data if layer.affine else np.zeros(C)
    return g.node("InstanceNormalization", [x, g.weight(f"{path}.gamma", gamma),
                                            g.weight(f"{path}.beta", beta)],
                  path, epsilon=float(layer.eps))


def _conv_transpose(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """ConvTranspose2d: W (C_in, C_out/groups, KH, KW) is ONNX's layout as it is; the
    padding crops both sides, output_padding adds rows/columns at the bottom/right."""
    inputs = [x, g.weight(f"{path}.W", layer.W.data)]
    if layer.b is not None:
        inputs.append(g.weight(f"{path}.b", layer.b.data))
    return g.node("ConvTranspose", inputs, path, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.stride), pads=_pads(layer.pads), dilations=[1, 1],
                  output_padding=list(layer.output_padding), group=int(layer.groups))


def onnx_resize_matrix(n_in: int, n_out: int, scale: np.float32, kind: str) -> np.ndarray:
    """R (n_out, n_in), float64: what ONNX's ``Resize`` does along one axis with the float32
    ``scale`` (written, or out/in from ``sizes``), as ONNX Runtime computes it. nearest
    (asymmetric, floor): src = floor(i / scale), the division in float32; linear
    (half_pixel): s = max((i + 0.5) / scale − 0.5, 0) between floor(s) and the next sample.
    PyTorch multiplies by the float32 reciprocal instead (``functional.resample``): at an
    exact tie, such as 26 rows to 4 (row 2 at 13), the two pick neighbouring pixels."""
    i = np.arange(n_out)
    if kind == "nearest":
        src = np.minimum(np.floor(i.astype(np.float32) / np.float32(scale)), n_in - 1)
        return (np.arange(n_in)[None, :] == src.astype(np.int64)[:, None]).astype(np.float64)
    s = np.maximum((i + 0.5) / np.float64(scale) - 0.5, 0.0)
    lo = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    lam = np.clip(s - lo, 0.0, 1.0)[:, None]
    src = np.arange(n_in)[None, :]
    return (1 - lam) * (src == lo[:, None]) + lam * (src == np.minimum(lo + 1, n_in - 1)[:, None])


def onnx_resize_size(n_in: int, scale: np.float32) -> int | None:
    """The output length of ``Resize`` for a float32 ``scale``: floor(n_in · scale). ONNX
    Runtime rounds the product to float32 first, ONNX's shape inference (the checker) does
    not; None when the two disagree (5 · float32(1.8) = 8.99999976, 9.0 in float32)."""
    exact = math.floor(n_in * float(scale))
    return exact if exact == int(np.floor(np.float32(n_in) * np.float32(scale))) else None


def same_resampling(A: np.ndarray, B: np.ndarray, kind: str) -> bool:
    """Two (n_out, n_in) resampling matrices agree: exactly for nearest (the same pixels),
    to float32 rounding for bilinear (the weights)."""
    if A.shape != B.shape:
        return False
    return bool(np.array_equal(A, B) if kind == "nearest" else np.allclose(A, B, atol=1e-5))


def _onnx_scale(layer: Any, n_in: int, n_out: int, axis: int) -> np.float32 | None:
    """A float32 scale that makes ``Resize`` compute the layer's axis ``axis`` (0: H, 1: W):
    1 for an axis that keeps its size (PyTorch copies it; ONNX Runtime copies only when no
    axis changes), else the layer's scale (or n_out/n_in for a size) or one of its float32
    neighbours (a few ulps away) for which ONNX's output length and its sample positions
    (``onnx_resize_matrix``) are PyTorch's. None when there is none."""
    if n_out == n_in:
        return np.float32(1.0)
    kind = layer.interpolation
    scales = layer._sample_scales()
    target = (nearest_matrix if kind == "nearest" else linear_matrix)(
        np, n_in, n_out, np.float64, None if scales is None else scales[axis])
    base = np.float32(n_out / n_in if scales is None else scales[axis])
    for steps in (0, 1, -1, 2, -2, 3, -3, 4, -4):
        scale = base
        for _ in range(abs(steps)):
            scale = np.nextafter(scale, np.float32(np.inf if steps > 0 else 0))
        if onnx_resize_size(n_in, scale) == n_out and same_resampling(
                onnx_resize_matrix(n_in, n_out, scale, kind), target, kind):
            return scale
    return None


def _upsample(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """Upsample (a scale, integer or not, or a size): Resize with scales [1, 1, sh, sw];
    nearest is y[i] = x[floor(i / s)] (asymmetric, floor), bilinear align_corners=False is
    linear with half_pixel coordinates (edges clamped, as minicnn's).

    The input's H, W are fixed in the file, so a size is written as the scale that gives it.
    Each float32 scale is checked against ONNX's rule (``_onnx_scale``): the file computes
    the layer's output exactly (nearest: the same pixels), or the export stops with an error
    naming the layer — where PyTorch's nearest picks a pixel that no ONNX scale reads."""
    (H, W), (Ho, Wo) = tuple(xa.shape[2:]), tuple(ya.shape[2:])
    pair = []
    for axis, (n_in, n_out) in enumerate(((H, Ho), (W, Wo))):
        scale = _onnx_scale(layer, n_in, n_out, axis)
        if scale is None:
            what = "rows" if axis == 0 else "columns"
            raise ValueError(
                f"to_onnx: layer {path or '(the model)'!r} ({layer!r}) takes {n_in} to {n_out} "
                f"{what} with PyTorch's rule, which multiplies by the float32 reciprocal of "
                f"the scale; ONNX's Resize divides by the scale, and no float32 scale reads "
                f"the same input {what} (an exact tie: choose another input_shape, scale or "
                f"size, or mode='bilinear')")
        pair.append(scale)
    scales = g.weight(f"{path}.scales", np.array([1, 1, *pair], np.float32))
    if layer.interpolation == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                     nearest_mode="floor")
    else:
        attrs = dict(mode="linear", coordinate_transformation_mode="half_pixel")
    return g.node("Resize", [x, "", scales], path, **attrs)


def _adaptive_avg_pool(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """AdaptiveAvgPool2d: GlobalAveragePool for a 1×1 output; AveragePool with kernel =
    stride = input / output where the output size divides the input's (the windows are then
    those of PyTorch's rule); anything else (overlapping windows of different sizes) has no
    ONNX operator."""
    (H, W), (oh, ow) = tuple(xa.shape[2:]), tuple(ya.shape[2:])
    if (oh, ow) == (1, 1):
        return g.node("GlobalAveragePool", [x], path)
    if H % oh or W % ow:
        raise ValueError(f"to_onnx: layer {path or '(the model)'!r} (AdaptiveAvgPool2d) maps "
                         f"{H}×{W} to {oh}×{ow}: ONNX has it only as GlobalAveragePool (a 1×1 "
                         f"output) or AveragePool (an output size that divides the input "
                         f"size); choose an input_shape or output_size that fits")
    kernel = [H // oh, W // ow]
    return g.node("AveragePool", [x], path, kernel_shape=kernel, strides=kernel,
                  pads=[0, 0, 0, 0])


def _squeeze_excite(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """SqueezeExcite: the gate s = σ(ReLU(GAP(x) W1 + b1) W2 + b2) as GlobalAveragePool,
    Flatten, Gemm, Relu, Gemm, Sigmoid, Unsqueeze to (N, C, 1, 1), then Mul(x, s)."""
    z = g.node("Flatten", [g.node("GlobalAveragePool", [x], path)], path, axis=1)
    for name, act in (("fc1", "Relu"), ("fc2", "Sigmoid")):
        fc = getattr(layer, name)
        z = g.node("Gemm", [z, g.weight(f"{path}.{name}.W", fc.W.data),
                            g.weight(f"{path}.{name}.b", fc.b.data)], path, transA=0,
                   transB=0)
        z = g.node(act, [z], path)
    gate = g.node("Unsqueeze", [z, g.ints(f"{path}.axes", [2, 3])], path)
    return g.node("Mul", [x, gate], path)


def _local_response_norm(g: _Graph, layer: Any, x: str, path: str, xa: Any, ya: Any) -> str:
    """LocalResponseNorm: ONNX's LRN (size, alpha, beta, bias = k), for an odd size on
    (N, C, H, W). ONNX's window is [c - floor((size-1)/2), c + ceil((size-1)/2)], minicnn's
    (PyTorch's) [c - size//2, c + (size-1)//2]: the same for an odd size, mirror images for
    an even one (and ONNX Runtime runs LRN on odd sizes and 4-D inputs only), so those are
    an error rather than a file that computes something else."""
    where = f"to_onnx: layer {path or '(the model)'!r} (LocalResponseNorm)"
    if layer.size % 2 == 0:
        raise ValueError(f"{where} has the even size {layer.size}: ONNX's LRN window for an "
                         f"even size is the mirror image of PyTorch's and minicnn's "
                         f"([c - size/2 + 1, c + size/2] against [c - size/2, c + size/2 - 1]), "
                         f"and ONNX Runtime refuses even sizes; use an odd size")
    if xa.ndim != 4:
        raise ValueError(f"{where} takes an input of shape {tuple(xa.shape)[1:]} (without "
                         f"N): ONNX Runtime's LRN runs on (N, C, H, W) only")
    return g.node("LRN", [x], path, size=int(layer.size), alpha=float(layer.alpha),
                  beta=float(layer.beta), bias=float(layer.k))


# minicnn layer class -> its exporter: the op table of docs/interop.md. Exact classes: a
# subclass may compute something else, so it needs its own row (PatchWhitening and
# SyncBatchNorm2d have theirs).
EXPORTERS: dict[type, Exporter] = {
    L.Conv2d: _conv,
    L.PatchWhitening: _conv,
    L.Linear: _linear,
    L.BatchNorm1d: _batchnorm,
    L.BatchNorm2d: _batchnorm,
    L.SyncBatchNorm2d: _batchnorm,
    L.ReLU: _unary("Relu"),
    L.LeakyReLU: _leaky_relu,
    L.Sigmoid: _unary("Sigmoid"),
    L.Tanh: _unary("Tanh"),
    L.SiLU: _silu,
    L.GELU: _gelu,
    L.MaxPool2d: _pool("MaxPool"),
    L.AvgPool2d: _pool("AveragePool", count_include_pad=1),
    L.GlobalAvgPool2d: _global_avg_pool,
    L.Flatten: _flatten,
    L.Dropout: _identity,
    L.Identity: _identity,
    L.LayerNorm: _layernorm,
    L.GroupNorm: _groupnorm,
    L.InstanceNorm2d: _instancenorm,
    L.ConvTranspose2d: _conv_transpose,
    L.Upsample: _upsample,
    L.AdaptiveAvgPool2d: _adaptive_avg_pool,
    L.SqueezeExcite: _squeeze_excite,
    L.LocalResponseNorm: _local_response_norm,
}
# Containers: written by the walk itself (Sequential chains, Residual adds two branches,
# Concat joins its branches along the channels).
CONTAINERS = (L.Sequential, L.Residual, L.Concat)


def _children(layer: Layer, path: str) -> list[tuple[str, Layer]]:
    """A container's children with their dotted paths (those of ``named_modules``)."""
    def join(name: str) -> str:
        return f"{path}.{name}" if path else name

    if type(layer) is L.Sequential:
        return [(join(f"layers.{i}"), child) for i, child in enumerate(layer.layers)]
    if type(layer) is L.Concat:
        return [(join(f"branches.{i}"), child) for i, child in enumerate(layer.branches)]
    return [(join("body"), layer.body), (join("shortcut"), layer.shortcut)]


def unsupported_layers(model: Layer) -> list[tuple[str, str]]:
    """``(dotted path, class name)`` of every layer of ``model`` that ``to_onnx`` cannot
    write (empty when it can write all of them). The path is "" for the model itself."""
    found: list[tuple[str, str]] = []

    def visit(layer: Layer, path: str) -> None:
        if type(layer) in CONTAINERS:
            for child_path, child in _children(layer, path):
                visit(child, child_path)
        elif type(layer) not in EXPORTERS:
            found.append((path, type(layer).__name__))

    visit(model, "")
    return found


def _check_arguments(model: Any, input_shape: Any, opset: Any, max_opset: int
                     ) -> tuple[int, ...]:
    if not isinstance(model, Layer):
        raise TypeError(f"to_onnx: model must be a minicnn Layer, got {type(model).__name__}")
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = all(d >= 1 for d in shape) and len(shape) >= 1 and \
            all(int(d) == d for d in input_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"to_onnx: input_shape must be the shape of one sample without the "
                         f"batch axis, positive integers such as (3, 32, 32); got "
                         f"{input_shape!r}")
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not EXPORT_MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"to_onnx: opset must be an integer from {EXPORT_MIN_OPSET} to "
                         f"{max_opset} (the newest this onnx package knows); got {opset!r}")
    missing = unsupported_layers(model)
    if missing:
        where = ", ".join(f"{path or 'the model itself'} ({name})" for path, name in missing)
        supported = ", ".join(sorted({c.__name__ for c in (*EXPORTERS, *CONTAINERS)}))
        raise ValueError(f"to_onnx: no ONNX counterpart for {where}; the layers it writes: "
                         f"{supported} (docs/interop.md)")
    return shape


def _device_zeros(model: Layer, shape: tuple[int, ...]) -> Any:
    """A float32 batch of zeros on the device of the model's parameters (NumPy if none)."""
    arrays = [p.data for p in model.parameters()] + list(model.buffers().values())
    xp = get_array_module(arrays[0]) if arrays else np
    return xp.zeros(shape, dtype=np.float32)


def to_onnx(model: Layer, path: str | os.PathLike, input_shape: Sequence[int],
            opset: int = 17, *, metadata: dict[str, Any] | None = None,
            doc_string: str = "") -> Any:
    """Write ``model`` as an ONNX file that computes its evaluation-mode output.

    Parameters
    ----------
    model : Layer
        Any model made of the layers in ``EXPORTERS`` (every layer of ``minicnn.layers``
        but none other), in ``Sequential``, ``Residual`` and ``Concat`` containers. Its mode
        is left as it was: the graph is that of evaluation mode either way (BatchNorm's running
        statistics, Dropout the identity).
    path : str or PathLike
        The ``.onnx`` file to write, atomically (``minicnn._io.atomic_write``): the old file
        or the new one, never half of one.
    input_shape : sequence of int
        One sample's shape, without the batch axis: (C, H, W) for images. The graph's input
        is ``input`` of shape (N, *input_shape), N dynamic; its output ``output``.
    opset : int, default 17
        The ONNX opset, 17 or newer (17 has LayerNormalization; from 20 GELU is ONNX's
        Gelu, before it the formula 0.5·x·(1 + erf(x/√2)) in Mul, Erf and Add nodes).
    metadata : dict, optional
        Key-value pairs stored in the file's ``metadata_props`` (values as strings), e.g.
        the mean and std that the inputs must be normalised with.
    doc_string : str, optional
        The model's description in the file.

    Returns
    -------
    onnx.ModelProto
        The model written, checked by ``onnx.checker.check_model`` (with shape inference)
        before anything is written.

    Raises
    ------
    ValueError
        A layer without an ONNX counterpart (naming every such layer and its dotted path in
        the model), an input shape the model does not take (naming the layer that refuses
        it), or a bad ``input_shape`` / ``opset``.
    ImportError
        The ``onnx`` package is not installed.
    """
    onnx = require_onnx("to_onnx")
    shape = _check_arguments(model, input_shape, opset, onnx.defs.onnx_opset_version())
    g = _Graph(onnx, int(opset))
    modules = list(model.modules())
    caches = [m.__dict__.get("cache") for m in modules]  # the walk's forwards overwrite them

    def walk(layer: Layer, x: str, path: str, xa: Any) -> tuple[str, Any]:
        if type(layer) is L.Sequential:
            for child_path, child in _children(layer, path):
                x, xa = walk(child, x, child_path, xa)
            return x, xa
        if type(layer) is L.Residual:
            (body_path, body), (shortcut_path, shortcut) = _children(layer, path)
            f, fa = walk(body, x, body_path, xa)
            s, sa = walk(shortcut, x, shortcut_path, xa)
            if fa.shape != sa.shape:
                layer.forward(xa)  # the Residual's own error, naming both shapes
            return g.node("Add", [f, s], path), fa + sa
        if type(layer) is L.Concat:
            outs, arrays = [], []
            for child_path, child in _children(layer, path):
                y, ya = walk(child, x, child_path, xa)
                outs.append(y)
                arrays.append(ya)
            if len({(a.ndim, a.shape[:1] + a.shape[2:]) for a in arrays}) != 1:
                layer.forward(xa)  # the Concat's own error, naming the shapes
            xp = get_array_module(arrays[0])
            return g.node("Concat", outs, path, axis=1), xp.concatenate(arrays, axis=1)
        try:
            ya = layer.forward(xa)
        except (ValueError, TypeError) as exc:
            hint = (" (input_shape is one sample's shape, without the batch axis)"
                    if len(shape) >= 4 else "")
            raise ValueError(f"to_onnx: the model does not take inputs of shape (N, "
                             f"{', '.join(map(str, shape))}){hint}: layer "
                             f"{path or '(the model)'!r} ({type(layer).__name__}) refuses its "
                             f"input of shape {tuple(xa.shape)[1:]} (without N): {exc}"
                             ) from None
        return EXPORTERS[type(layer)](g, layer, x, path, xa, ya), ya

    try:
        with model.mode(training=False):
            out, ya = walk(model, "input", "", _device_zeros(model, (1, *shape)))
    finally:
        for m, cache in zip(modules, caches, strict=True):
            m.cache = cache
    if out == "input":  # the identity: the output needs a node of its own
        out = g.node("Identity", [out], "")
    for node in g.nodes:  # the last value is the graph's output
        node.output[:] = ["output" if name == out else name for name in node.output]
    helper, FLOAT = onnx.helper, onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, "minicnn",
        [helper.make_tensor_value_info("input", FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("output", FLOAT, ["N", *tuple(ya.shape)[1:]])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", int(opset))]
    # The oldest IR version that has this opset, so that older runtimes read the file too.
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="minicnn",
                              doc_string=doc_string,
                              ir_version=helper.find_min_ir_version_for(opsets))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return proto
