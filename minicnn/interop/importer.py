"""ONNX import: a minicnn model from an ONNX graph (``from_onnx``).

Three steps, and nothing is returned unless all three succeed (a model is built in memory
only, and no global state changes: the layers are created with zero weights, so the
initialisers' random generator is not drawn from):

1. **Read and check the file** (``_read``, ``_Graph``): a missing, truncated or non-ONNX file,
   an initializer whose data does not fill its shape, a node input that nothing defines (a
   missing initializer), an operator minicnn has no layer for (all of them listed at once),
   then ``onnx.checker.check_model``. Each is one ``OnnxError`` naming the file and what
   is wrong.
2. **Separate the data path from the constants.** Nodes that compute only from
   initializers, ``Constant`` nodes and ``Shape`` (the shape plumbing of PyTorch's
   ``x.view(x.size(0), -1)``: Shape, Gather, Unsqueeze, Concat, ...) are evaluated with
   NumPy when a data node needs their value; every other node is on the data path.
3. **Walk the data path** from the graph's input to its output (``_Builder.sequence``),
   turning each stretch into layers:

   - one consumer: the operator's layer (``IMPORTERS``), reading a few nodes ahead where one
     minicnn layer is several ONNX nodes (MatMul + Add = Linear, GlobalAveragePool +
     Flatten = GlobalAvgPool2d, Reshape + InstanceNormalization + Reshape + Mul + Add =
     GroupNorm);
   - an element-wise subgraph of x with scalar constants (Mul, Add, Div, Erf, Tanh,
     Sigmoid, Pow, ...): recognised by its values on a grid of x, as Sigmoid, Tanh, SiLU
     (x·σ(x)) or GELU (exact or tanh), however the exporter spelled it;
   - two consumers: a residual block. The first ``Add`` that both branches reach is the
     join; each branch is walked on its own (recursively: blocks may nest) into a
     ``Sequential``, the one that is x itself is the identity shortcut, and the block is
     ``Residual(body, shortcut)``;
   - several consumers that first meet in a ``Concat(axis=1)``: a ``Concat`` block, each
     branch walked on its own into a ``Sequential`` (the value itself: ``Identity``);
   - GlobalAveragePool and a Mul of x by the gate: ``SqueezeExcite`` (the gate's chain must
     be Flatten, Gemm, Relu, Gemm, Sigmoid, Unsqueeze);
   - anything else (three consumers not joined by a Concat, branches that do not meet in
     an Add or Concat, an operator outside a pattern) is an error naming the node.

   Each layer runs once on a small batch as it is built (evaluation mode), which gives
   the shapes the next operator needs and turns a wrong initializer shape into an error
   naming the node and the initializer.

The model is returned in evaluation mode (an ONNX graph is an inference graph; ``fit``
switches it to training), with ``model.input_shape`` and ``model.summary()`` as the zoo's
models have.

Tests: tests/test_interop.py
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .. import layers as L
from ..backend import get_xp
from ..functional.resample import resampling_matrices
from ..layers.base import Layer, new_array
from ..layers.summary import summary
from .common import IMPORT_MIN_OPSET, OnnxError, node_label, require_onnx
from .export import onnx_resize_matrix, onnx_resize_size, same_resampling

__all__ = ["from_onnx", "IMPORTERS", "ELEMENTWISE", "STATIC_OPS"]

# Element-wise operators: a subgraph of them (and scalar constants) is recognised by value.
ELEMENTWISE = frozenset({"Mul", "Add", "Sub", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Sqrt",
                         "Neg", "Exp", "Reciprocal"})
# Operators evaluated with NumPy when all their inputs are constants (or shapes).
STATIC_OPS = frozenset({"Constant", "Identity", "Cast", "Shape", "Gather", "Unsqueeze",
                        "Squeeze", "Concat", "Slice", "Reshape", "Transpose",
                        "ConstantOfShape", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg"})

_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


# The activations an element-wise subgraph may compute: (name, f(x) in float64, layer).
_ACTIVATIONS: list[tuple[str, Callable[[np.ndarray], np.ndarray], Callable[[], Layer]]] = [
    ("Sigmoid", _sigmoid, L.Sigmoid),
    ("Tanh", np.tanh, L.Tanh),
    ("SiLU", lambda x: x * _sigmoid(x), L.SiLU),
    ("GELU", lambda x: 0.5 * x * (1.0 + _erf(x * _SQRT_HALF)), L.GELU),
    ("GELU(approximate='tanh')",
     lambda x: 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))),
     lambda: L.GELU(approximate="tanh")),
]
_GRID = np.linspace(-6.0, 6.0, 121)

_MATH: dict[str, Callable[..., np.ndarray]] = {
    "Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide,
    "Pow": np.power, "Erf": _erf, "Tanh": np.tanh, "Sigmoid": _sigmoid, "Sqrt": np.sqrt,
    "Neg": np.negative, "Exp": np.exp, "Reciprocal": np.reciprocal,
}


def _activation_of(y: np.ndarray) -> Layer | None:
    """The activation layer whose values on ``_GRID`` are ``y`` (to 1e-5), or None."""
    for _name, f, make in _ACTIVATIONS:
        expected = f(_GRID)
        if y.shape == expected.shape and np.all(
                np.abs(y - expected) <= 1e-5 * (1.0 + np.abs(expected))):
            return make()
    return None


# -- step 1: the file -------------------------------------------------------------------------

def _read(onnx: Any, path: str) -> Any:
    """The ModelProto in ``path``, with any external data loaded; OnnxError otherwise."""
    if not os.path.exists(path):
        raise OnnxError(path, "no such file")
    if os.path.isdir(path):
        raise OnnxError(path, "is a folder; expected an .onnx file")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise OnnxError(path, "the file is empty; expected an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # google.protobuf's DecodeError, or a RuntimeWarning-ish error
        raise OnnxError(path, f"not an ONNX model, or one cut short ({len(data)} bytes that "
                              f"do not parse as an ONNX ModelProto: {exc}); write or copy "
                              f"it again") from None
    if model.ir_version < 1 or not model.HasField("graph") or not model.graph.node:
        raise OnnxError(path, f"not an ONNX model, or one cut short ({len(data)} bytes with "
                              f"no graph of nodes); write or copy it again")
    from onnx import external_data_helper

    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node for a in n.attribute if a.HasField("t")]
    if any(external_data_helper.uses_external_data(t) for t in tensors):
        try:
            external_data_helper.load_external_data_for_model(model, os.path.dirname(path))
        except Exception as exc:
            raise OnnxError(path, f"cannot read its external weight data: {exc}") from None
    return model


def _attributes(onnx: Any, node: Any) -> dict[str, Any]:
    out = {}
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


class _Graph:
    """The checked graph: its nodes, constants, producers and consumers, input and output."""

    def __init__(self, onnx: Any, path: str, model: Any, input_shape: Any):
        self.onnx, self.path, self.model = onnx, path, model
        graph = model.graph
        self.nodes = list(graph.node)
        self.attrs = [_attributes(onnx, n) for n in self.nodes]
        self.opset = self._opset()
        self.values: dict[str, np.ndarray] = {}      # constants: initializers, Constant, static
        for t in graph.initializer:
            self.values[t.name] = self._tensor(t, f"initializer {t.name!r}")
        inputs = [i for i in graph.input if i.name not in self.values]
        self._check_defined(inputs)
        self._check_operators()
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise self.error(f"not a valid ONNX model: {_one_line(exc)}") from None
        if len(inputs) != 1 or len(graph.output) != 1:
            raise self.error(f"the graph has {len(inputs)} inputs and {len(graph.output)} "
                             f"outputs; minicnn models have one of each (images in, logits "
                             f"out)")
        self.input, self.output = inputs[0].name, graph.output[0].name
        self.batch, self.sample_shape = self._input_shape(inputs[0], input_shape)
        self.producer: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            for out in n.output:
                if out:
                    self.producer[out] = i
        self.static = self._static_values()
        self.data_nodes = [i for i, n in enumerate(self.nodes)
                           if not all(o in self.static for o in n.output if o)]
        self.consumers: dict[str, list[int]] = {}
        for i in self.data_nodes:
            for name in dict.fromkeys(x for x in self.nodes[i].input if x):
                self.consumers.setdefault(name, []).append(i)

    # -- errors --------------------------------------------------------------------------------
    def error(self, reason: str) -> OnnxError:
        return OnnxError(self.path, reason)

    def label(self, i: int) -> str:
        return node_label(self.nodes[i], i)

    # -- checks ---------------------------------------------------------------------------------
    def _opset(self) -> int:
        versions = {o.domain: o.version for o in self.model.opset_import}
        version = versions.get("", versions.get("ai.onnx"))
        if version is None:
            raise self.error("the model imports no version of the default ONNX operator set "
                             "(opset_import has no entry for domain ''); write it again")
        if version < IMPORT_MIN_OPSET:
            raise self.error(f"opset {version} is older than minicnn reads (opset "
                             f"{IMPORT_MIN_OPSET} or newer); export it again with a newer "
                             f"opset")
        return int(version)

    def _tensor(self, tensor: Any, what: str) -> np.ndarray:
        """An initializer or Constant's tensor as an array; OnnxError when its data does
        not fill its declared shape."""
        try:
            return np.asarray(self.onnx.numpy_helper.to_array(tensor))
        except Exception as exc:
            raise self.error(f"{what} is malformed: its data does not match its shape "
                             f"{tuple(tensor.dims)} and type ({_one_line(exc)})") from None

    def _check_defined(self, inputs: list[Any]) -> None:
        """Every node input is defined before it is read (a missing initializer is the usual
        reason it is not)."""
        defined = set(self.values) | {i.name for i in inputs}
        for i, n in enumerate(self.nodes):
            for name in n.input:
                if name and name not in defined:
                    later = any(name in m.output for m in self.nodes[i + 1:])
                    raise self.error(
                        f"{self.label(i)} reads {name!r}, which " +
                        ("a later node computes (the nodes are not in topological order)"
                         if later else "no initializer, graph input or earlier node "
                         "defines: a missing initializer?"))
            defined.update(o for o in n.output if o)
        for o in self.model.graph.output:
            if o.name not in defined:
                raise self.error(f"the graph output {o.name!r} is computed by no node")

    def _check_operators(self) -> None:
        """One error listing every operator minicnn cannot read, with its nodes."""
        known = set(IMPORTERS) | ELEMENTWISE | STATIC_OPS
        bad: dict[str, list[str]] = {}
        for i, n in enumerate(self.nodes):
            domain = n.domain or ""
            if domain in ("", "ai.onnx") and n.op_type in known:
                continue
            op = n.op_type if domain in ("", "ai.onnx") else f"{domain}.{n.op_type}"
            bad.setdefault(op, []).append(repr(n.name) if n.name else f"#{i}")
        if not bad:
            return
        parts = []
        for op, names in bad.items():
            exists = "." not in op and self.onnx.defs.has(op)
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3
                                            else "")
            parts.append(f"{op} ({'node' if len(names) == 1 else 'nodes'} {shown}"
                         f"{'' if exists else '; not an ONNX operator'})")
        hint = ""
        if "Softmax" in bad or "LogSoftmax" in bad:
            hint = ("; minicnn models end in logits (the loss applies the softmax): export "
                    "the model without its final softmax")
        raise self.error(f"unsupported operator{'s' if len(bad) > 1 else ''}: "
                         f"{'; '.join(parts)}. minicnn reads {', '.join(sorted(IMPORTERS))}, "
                         f"element-wise activations and shape arithmetic "
                         f"(docs/interop.md){hint}")

    def _input_shape(self, value: Any, override: Any) -> tuple[int | None, tuple[int, ...]]:
        """(the fixed batch size or None, one sample's shape) of the graph input."""
        t = value.type.tensor_type
        if not value.type.HasField("tensor_type") or \
                t.elem_type != self.onnx.TensorProto.FLOAT:
            raise self.error(f"the input {value.name!r} is not a float32 tensor; minicnn "
                             f"models take float32 images")
        if not t.HasField("shape") or len(t.shape.dim) < 2:
            raise self.error(f"the input {value.name!r} has no shape of rank 2 or more "
                             f"(N, C, ...); minicnn needs it to build the layers")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        batch, sample = dims[0], dims[1:]
        if override is not None:
            shape = tuple(int(d) for d in override)
            if len(shape) != len(sample) or any(s is not None and s != d
                                                for s, d in zip(sample, shape, strict=True)):
                raise self.error(f"input_shape {shape} does not fit the graph's input of "
                                 f"shape {tuple(d if d else '?' for d in sample)} (without N)")
            return batch, shape
        if any(d is None or d < 1 for d in sample):
            shown = tuple("?" if d is None else d for d in sample)
            raise self.error(f"the input {value.name!r} has unknown dimensions {shown} "
                             f"(besides the batch); pass input_shape=(C, H, W) to "
                             f"from_onnx")
        return batch, tuple(sample)

    # -- constants --------------------------------------------------------------------------
    def _static_values(self) -> set[str]:
        """Names whose values do not depend on the input data (only on its shape)."""
        static = set(self.values)
        for i, n in enumerate(self.nodes):
            if n.op_type == "Constant":
                value = self._constant(i)
                self.values[n.output[0]] = value
                static.add(n.output[0])
            elif n.op_type == "Shape" or (n.op_type in STATIC_OPS and
                                          all(x in static for x in n.input if x)):
                static.update(o for o in n.output if o)
        return static

    def _constant(self, i: int) -> np.ndarray:
        attrs = self.attrs[i]
        if "value" in attrs:
            tensor = next(a.t for a in self.nodes[i].attribute if a.name == "value")
            return self._tensor(tensor, f"{self.label(i)}'s value")
        for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                           ("value_int", np.int64), ("value_ints", np.int64)):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        raise self.error(f"{self.label(i)} has no value minicnn reads (value, value_float(s) "
                         f"or value_int(s))")


def _one_line(text: Any) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


# -- step 3: the walk ---------------------------------------------------------------------------

class _Builder:
    """Walks the data path of a ``_Graph`` into minicnn layers."""

    def __init__(self, g: _Graph):
        self.g = g
        xp = get_xp()
        batch = g.batch if g.batch else 2  # a fixed batch size as the file has it
        rng = np.random.default_rng(0)
        self.arrays: dict[str, Any] = {g.input: xp.asarray(
            rng.standard_normal((batch, *g.sample_shape)), dtype=np.float32)}
        self.visited: set[int] = set()
        self.allowed: set[int] | None = None   # the nodes of the branch being walked
        self.end = g.output                   # where the current sequence stops

    # -- helpers the converters use ---------------------------------------------------------
    def error(self, i: int, reason: str) -> OnnxError:
        return self.g.error(f"{self.g.label(i)}: {reason}")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.arrays[name].shape)

    def consumers(self, name: str) -> list[int]:
        return [i for i in self.g.consumers.get(name, [])
                if self.allowed is None or i in self.allowed]

    def sole(self, name: str) -> int | None:
        """The one data node reading ``name`` when the walk may go on past it, else None."""
        if name == self.end or name == self.g.output:
            return None
        found = self.consumers(name)
        return found[0] if len(found) == 1 else None

    def constant(self, i: int, k: int, what: str, optional: bool = False) -> np.ndarray | None:
        """Input ``k`` of node ``i`` as a constant array (evaluated if computed from
        constants and shapes); None if absent and ``optional``."""
        node = self.g.nodes[i]
        if k >= len(node.input) or not node.input[k]:
            if optional:
                return None
            raise self.error(i, f"has no input {k} (the {what})")
        name = node.input[k]
        if name not in self.g.static:
            raise self.error(i, f"its {what} ({name!r}) is computed from the input data; "
                                f"minicnn needs it to be a constant (an initializer)")
        return self.evaluate(name)

    def weight(self, i: int, k: int, what: str, shape: tuple[int, ...] | None,
               optional: bool = False) -> np.ndarray | None:
        """A float32 constant of the given ``shape`` (None: any)."""
        value = self.constant(i, k, what, optional)
        if value is None:
            return None
        if shape is not None and tuple(value.shape) != tuple(shape):
            name = self.g.nodes[i].input[k]
            raise self.error(i, f"initializer {name!r} (the {what}) has shape "
                                f"{tuple(value.shape)}, expected {tuple(shape)} for its input "
                                f"of shape {self.shape(self.g.nodes[i].input[0])[1:]} "
                                f"(without N)")
        return value.astype(np.float32)

    def unused_extra_outputs(self, i: int) -> None:
        for name in self.g.nodes[i].output[1:]:
            if name and (name in self.g.consumers or name == self.g.output):
                raise self.error(i, f"its output {name!r} (a training-mode or index output) "
                                    f"is used; minicnn reads inference graphs only")

    def evaluate(self, name: str) -> np.ndarray:
        """The value of a static name (initializer, Constant, shape arithmetic)."""
        if name in self.g.values:
            return self.g.values[name]
        i = self.g.producer[name]
        node, attrs = self.g.nodes[i], self.g.attrs[i]
        if node.op_type == "Shape":
            source = node.input[0]
            if source in self.g.static:      # the shape of a constant
                dims = np.asarray(self.evaluate(source).shape, dtype=np.int64)
            elif source in self.arrays:      # of a value the walk has computed
                dims = np.asarray(self.arrays[source].shape, dtype=np.int64)
            else:
                raise self.error(i, f"takes the shape of {source!r} before minicnn's walk "
                                    f"reaches it")
            value = dims[attrs.get("start", 0):attrs.get("end", len(dims))]
        else:
            args = [self.evaluate(x) if x else None for x in node.input]
            try:
                value = _static_op(self.g, node.op_type, attrs, args)
            except OnnxError:
                raise
            except Exception as exc:
                raise self.error(i, f"cannot be evaluated on its constant inputs: "
                                    f"{_one_line(exc)}") from None
        self.g.values[name] = value
        return value

    # -- the walk -----------------------------------------------------------------------------
    def build(self) -> L.Sequential:
        layers = self.sequence(self.g.input, self.g.output, None)
        model = L.Sequential(*layers)
        model.eval()
        return model

    def sequence(self, v: str, end: str, allowed: set[int] | None) -> list[Layer]:
        """The layers from value ``v`` to value ``end``, using only nodes in ``allowed``."""
        saved = self.allowed, self.end
        self.allowed, self.end = allowed, end
        layers: list[Layer] = []
        try:
            while v != end:
                layer, out = self.step(v)
                if layer is not None:
                    layers.append(layer)
                v = out
        finally:
            self.allowed, self.end = saved
        return layers

    def step(self, v: str) -> tuple[Layer | None, str]:
        """One layer (or None for a no-op) starting at ``v``, and the value after it."""
        found = self.consumers(v)
        if not found:
            where = f"the value {v!r}" if v != self.g.input else f"the input {v!r}"
            raise self.g.error(f"{where} leads to no node on the way to the output "
                               f"{self.end!r}; the graph is not a chain of layers minicnn "
                               f"can follow")
        fused = self.activation(v, found)
        if fused is not None:
            return fused
        if len(found) == 1 and self.g.nodes[found[0]].op_type == "Concat":
            concat = self.concat(v, found)  # Concat(v, v, ...): identity branches only
            if concat is not None:
                return concat
        if len(found) == 1:
            i = found[0]
            node = self.g.nodes[i]
            data = [x for x in node.input if x and x not in self.g.static]
            if node.op_type == "Add" and len(data) == 2:
                raise self.error(i, "adds two values that are not the two branches of one "
                                    "block from a common input; minicnn reads residual blocks "
                                    "y = F(x) + S(x) only")
            converter = IMPORTERS.get(node.op_type)
            if converter is None and node.op_type not in ELEMENTWISE:
                raise self.error(i, f"{node.op_type} on the data path: minicnn reads it only "
                                    f"in constant and shape arithmetic")
            if converter is None:
                raise self.error(i, f"{node.op_type} is read only as part of a pattern (an "
                                    f"element-wise activation, the bias after MatMul, "
                                    f"GroupNorm's affine map); here it is not one")
            if data != [v] or node.input[0] != v:
                raise self.error(i, f"reads the data {data} where minicnn expects one data "
                                    f"input, {v!r}, first")
            self.visited.add(i)
            layer, out = converter(self, i, v)
            self.run(i, layer, v, out)
            return layer, out
        se = self.squeeze_excite(v, found)
        if se is not None:
            return se
        concat = self.concat(v, found)
        if concat is not None:
            return concat
        if len(found) == 2:
            return self.residual(v, found)
        names = ", ".join(self.g.label(i) for i in found)
        raise self.g.error(f"the value {v!r} feeds {len(found)} nodes ({names}); minicnn "
                           f"reads chains, blocks of two branches joined by Add and "
                           f"branches joined by Concat(axis=1)")

    def run(self, i: int, layer: Layer | None, v: str, out: str) -> None:
        """Run the new layer on the walk's batch: the shapes for what follows."""
        if layer is None:
            self.arrays[out] = self.arrays[v]
            return
        layer.eval()
        try:
            self.arrays[out] = layer.forward(self.arrays[v])
        except (ValueError, TypeError) as exc:
            raise self.error(i, f"its minicnn layer {type(layer).__name__} does not take the "
                                f"input of shape {self.shape(v)[1:]} (without N): "
                                f"{_one_line(exc)}") from None

    # -- element-wise activations -------------------------------------------------------------
    def activation(self, v: str, found: list[int]) -> tuple[Layer, str] | None:
        """If every data consumer of ``v`` starts an element-wise subgraph of v and scalar
        constants with one result, the activation that subgraph computes (by its values).

        The subgraph grows node by node in topological order, and the smallest one that
        reads all of v's consumers, has one result and matches an activation wins: so two
        activations in a row are two layers, not one function."""
        g = self.g
        vals, closure = {v}, []
        start = g.producer.get(v, -1)
        for i in g.data_nodes:
            if i <= start or i in self.visited or (self.allowed is not None
                                                   and i not in self.allowed):
                continue
            node = g.nodes[i]
            if node.op_type not in ELEMENTWISE:
                continue
            ins = [x for x in node.input if x]
            if any(x in vals for x in ins) and all(
                    x in vals or (x in g.static and self.evaluate(x).size == 1) for x in ins):
                closure.append(i)
                vals.update(o for o in node.output if o)
        if not closure or not set(found) <= set(closure):
            return None
        env = {v: _GRID}
        for k, i in enumerate(closure, start=1):
            node = g.nodes[i]
            args = [env[x] if x in env else self.evaluate(x).astype(np.float64).reshape(())
                    for x in node.input if x]
            with np.errstate(all="ignore"):
                env[node.output[0]] = np.asarray(_MATH[node.op_type](*args), dtype=np.float64)
            inside = set(closure[:k])
            if not set(found) <= inside:
                continue
            results = {o for j in closure[:k] for o in g.nodes[j].output if o}
            exits = [x for x in results if x in (self.end, g.output) or any(
                c not in inside for c in g.consumers.get(x, []))]
            if len(exits) != 1:
                continue
            layer = _activation_of(env[exits[0]])
            if layer is not None:
                self.visited.update(inside)
                self.run(i, layer, v, exits[0])
                return layer, exits[0]
        if len(found) > 1:
            return None  # perhaps a residual block after all: its walk says what is wrong
        names = ", ".join(g.label(i) for i in closure)
        raise g.error(f"the element-wise function of {v!r} that {names} "
                      f"{'computes' if len(closure) == 1 else 'compute'} is none of "
                      f"minicnn's activations ({', '.join(n for n, _, _ in _ACTIVATIONS)}; "
                      f"Relu and LeakyRelu as themselves)")

    # -- residual blocks ----------------------------------------------------------------------
    def reach(self, i: int) -> set[int]:
        """Data nodes reachable from node ``i`` (itself included), within the branch."""
        seen, todo = {i}, [i]
        while todo:
            for out in self.g.nodes[todo.pop()].output:
                for c in self.consumers(out):
                    if c not in seen:
                        seen.add(c)
                        todo.append(c)
        return seen

    def ancestors(self, i: int) -> set[int]:
        seen, todo = set(), [i]
        while todo:
            for x in self.g.nodes[todo.pop()].input:
                j = self.g.producer.get(x)
                if j is not None and x not in self.g.static and j not in seen:
                    seen.add(j)
                    todo.append(j)
        return seen

    def residual(self, v: str, found: list[int]) -> tuple[Layer, str]:
        """y = F(v) + S(v): the two consumers of v start the branches; they meet in the
        first Add that both reach."""
        g = self.g
        first, second = self.reach(found[0]), self.reach(found[1])
        joins = sorted(i for i in first & second if g.nodes[i].op_type == "Add" and
                       all(x not in g.static for x in g.nodes[i].input))
        if not joins:
            common = sorted(first & second)
            meet = f" (they meet in {g.label(common[0])})" if common else ""
            raise g.error(f"the value {v!r} feeds two branches ({g.label(found[0])}, "
                          f"{g.label(found[1])}) that do not join in an Add{meet}; minicnn "
                          f"reads residual blocks y = F(x) + S(x) and element-wise "
                          f"activations (Sigmoid, Tanh, SiLU, GELU)")
        join = joins[0]
        before = self.ancestors(join)
        branches = []
        for start, reached in ((found[0], first), (found[1], second)):
            branches.append((reached & before) - {join} if start != join else set())
        if branches[0] & branches[1]:
            shared = ", ".join(g.label(i) for i in sorted(branches[0] & branches[1])[:3])
            raise g.error(f"the branches from {v!r} to {g.label(join)} share {shared}; "
                          f"minicnn reads two separate branches joined by Add")
        a, b = g.nodes[join].input[0], g.nodes[join].input[1]
        parts: list[tuple[str, set[int]]] = []
        for x in (a, b):
            if x == v:
                parts.append((x, set()))
                continue
            owner = [k for k, nodes in enumerate(branches) if g.producer.get(x) in nodes]
            if len(owner) != 1:
                raise self.error(join, f"adds {x!r}, which is not computed by one of the two "
                                       f"branches from {v!r}")
            parts.append((x, branches[owner[0]]))
        walked = []
        for x, nodes in parts:
            walked.append((self.sequence(v, x, nodes) if nodes else None, x, len(nodes)))
        (fa, xa, na), (fb, xb, nb) = walked
        if fa is None or (fb is not None and nb > na):  # the longer branch is the body
            (fa, xa), (fb, xb) = (fb, xb), (fa, xa)
        if self.shape(xa) != self.shape(xb):
            raise self.error(join, f"adds branches of shapes {self.shape(xa)[1:]} and "
                                   f"{self.shape(xb)[1:]} (without N)")
        self.visited.add(join)
        out = g.nodes[join].output[0]
        self.arrays[out] = self.arrays[xa] + self.arrays[xb]
        body = L.Sequential(*fa)
        shortcut = None if fb is None else L.Sequential(*fb)
        block = L.Residual(body, shortcut)
        block.eval()
        return block, out


    # -- Concat blocks --------------------------------------------------------------------------
    def concat(self, v: str, found: list[int]) -> tuple[Layer, str] | None:
        """y = Concat(F_1(v), ..., F_B(v), axis=1): the consumers of ``v`` start the branches
        (or are the Concat itself: an identity branch), and they all meet first in a Concat
        of the channels. None when the first node they all reach is not such a Concat."""
        g = self.g
        reaches = [self.reach(i) for i in found]
        common = set.intersection(*reaches)
        if not common:
            return None
        join = min(common)
        node = g.nodes[join]
        if node.op_type != "Concat" or any(x in g.static for x in node.input if x):
            return None
        if len(self.shape(v)) < 2 or int(g.attrs[join].get("axis", 0)) % len(
                self.shape(v)) != 1:
            raise self.error(join, f"concatenates along axis {g.attrs[join].get('axis')}; "
                                   f"minicnn's Concat joins branches along the channels "
                                   f"(axis=1)")
        before = self.ancestors(join)
        region = set().union(*reaches) & before
        branches: list[tuple[str, set[int]]] = []
        for x in node.input:
            if x == v:
                branches.append((x, set()))
                continue
            j = g.producer.get(x)
            if j is None or j not in region:
                raise self.error(join, f"joins {x!r}, which is not computed by a branch "
                                       f"from {v!r}")
            branches.append((x, ({j} | self.ancestors(j)) & region))
        for a in range(len(branches)):
            for b in range(a + 1, len(branches)):
                shared = branches[a][1] & branches[b][1]
                if shared:
                    names = ", ".join(g.label(i) for i in sorted(shared)[:3])
                    raise g.error(f"the branches from {v!r} to {g.label(join)} share "
                                  f"{names}; minicnn reads separate branches joined by "
                                  f"Concat")
        used = set().union(*(nodes for _, nodes in branches)) | {join}
        if not set(found) <= used or region - used:
            extra = sorted((region - used) | (set(found) - used))
            raise g.error(f"{g.label(extra[0])} reads from the branches from {v!r} but is "
                          f"not part of one before {g.label(join)}; minicnn reads separate "
                          f"branches joined by Concat")
        layers: list[Layer] = []
        for x, nodes in branches:
            layers.append(L.Identity() if not nodes else
                          L.Sequential(*self.sequence(v, x, nodes)))
        parts = [self.arrays[x] for x, _ in branches]
        if len({(p.ndim, p.shape[:1] + p.shape[2:]) for p in parts}) != 1:
            raise self.error(join, f"joins branches of shapes "
                                   f"{[tuple(p.shape[1:]) for p in parts]} (without N), "
                                   f"which differ in more than the channels")
        self.visited.add(join)
        out = node.output[0]
        xp = get_xp()
        self.arrays[out] = xp.concatenate(parts, axis=1)
        block = L.Concat(*layers)
        block.eval()
        return block, out

    # -- squeeze-and-excitation -----------------------------------------------------------------
    def squeeze_excite(self, v: str, found: list[int]) -> tuple[Layer, str] | None:
        """Mul(v, Unsqueeze(σ(Gemm(ReLU(Gemm(Flatten(GlobalAveragePool(v))))))) ->
        SqueezeExcite; the gate may be reshaped to (N, C, 1, 1) by Unsqueeze or Reshape.
        None when the two consumers of ``v`` are not GlobalAveragePool and that Mul."""
        g = self.g
        if len(found) != 2:
            return None
        ops = {g.nodes[i].op_type: i for i in found}
        if set(ops) != {"GlobalAveragePool", "Mul"} or len(self.shape(v)) != 4:
            return None
        gap, mul = ops["GlobalAveragePool"], ops["Mul"]
        gate = [x for x in g.nodes[mul].input if x != v]
        if len(gate) != 1 or gate[0] in g.static or g.producer.get(gate[0]) is None:
            return None
        k = g.producer[gate[0]]
        if g.nodes[k].op_type not in ("Unsqueeze", "Reshape") or mul not in self.reach(gap):
            return None
        region = (self.reach(gap) & self.ancestors(k)) - {k}
        s = g.nodes[k].input[0]
        if s == v or s in g.static:
            return None
        layers = self.sequence(v, s, region | ({gap} if gap not in region else set()))
        kinds = [type(m) for m in layers]
        N, C = self.shape(v)[:2]
        if kinds != [L.GlobalAvgPool2d, L.Linear, L.ReLU, L.Linear, L.Sigmoid] or \
                layers[1].W.shape[0] != C or layers[3].W.shape[1] != C or \
                layers[1].b is None or layers[3].b is None:
            raise self.error(mul, f"scales {v!r} by a gate computed as "
                                  f"{[k.__name__ for k in kinds]}; minicnn reads "
                                  f"squeeze-and-excitation (GlobalAveragePool, Flatten, Gemm, "
                                  f"Relu, Gemm, Sigmoid, Unsqueeze, Mul) only")
        node = g.nodes[k]
        if node.op_type == "Unsqueeze":
            axes = _axes(g.attrs[k], [None] + ([self.constant(k, 1, "axes")]
                                               if len(node.input) > 1 and node.input[1]
                                               else []), 1)
            ok = axes is not None and sorted(a % 4 for a in axes) == [2, 3]
        else:
            try:
                ok = _reshape_target(self.shape(s), self.constant(k, 1, "shape"),
                                     g.attrs[k].get("allowzero", 0)) == (N, C, 1, 1)
            except ValueError:
                ok = False
        if not ok:
            raise self.error(k, "does not turn the (N, C) gate into (N, C, 1, 1)")
        hidden = layers[1].W.shape[1]
        reduction = max(1, C // hidden)
        if max(1, C // reduction) != hidden:
            raise self.error(mul, f"its bottleneck of {hidden} units is not max(1, C // r) "
                                  f"for C = {C} and any integer r")
        block = L.SqueezeExcite(C, reduction)
        for name, fc in (("fc1", layers[1]), ("fc2", layers[3])):
            target = getattr(block, name)
            target.W.data, target.b.data = fc.W.data, fc.b.data
        self.visited.update((k, mul))
        out = g.nodes[mul].output[0]
        block.eval()
        self.arrays[out] = block.forward(self.arrays[v])
        return block, out


# -- constant arithmetic ----------------------------------------------------------------------

def _axes(attrs: dict[str, Any], args: list[Any], k: int) -> list[int] | None:
    """An ``axes`` attribute (older opsets) or input ``k`` (newer ones); None if absent."""
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(args) > k and args[k] is not None:
        return [int(a) for a in np.asarray(args[k]).reshape(-1)]
    return None


def _reshape_target(shape: tuple[int, ...], target: Any, allowzero: int = 0) -> tuple[int, ...]:
    """ONNX Reshape's output shape: 0 copies the input's dimension, -1 is inferred."""
    target = [int(t) for t in np.asarray(target).reshape(-1)]
    out = [shape[k] if t == 0 and not allowzero else t for k, t in enumerate(target)]
    if out.count(-1) > 1:
        raise ValueError(f"Reshape target {target} has more than one -1")
    total = math.prod(shape)
    if -1 in out:
        known = math.prod(t for t in out if t != -1)
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {shape} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise ValueError(f"cannot reshape {shape} to {target}")
    return tuple(out)


def _static_op(g: _Graph, op: str, attrs: dict[str, Any], args: list[Any]) -> np.ndarray:
    """One operator of ``STATIC_OPS`` on constant arrays, with NumPy."""
    x = args[0] if args else None
    if op == "Identity":
        return x
    if op == "Cast":
        return x.astype(g.onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Gather":
        return np.take(x, args[1], axis=attrs.get("axis", 0))
    if op == "Unsqueeze":
        axes = _axes(attrs, args, 1) or []
        rank = x.ndim + len(axes)
        for a in sorted(a % rank for a in axes):
            x = np.expand_dims(x, a)
        return x
    if op == "Squeeze":
        axes = _axes(attrs, args, 1)
        return np.squeeze(x) if axes is None else np.squeeze(x, tuple(a % x.ndim for a in axes))
    if op == "Concat":
        return np.concatenate([a for a in args if a is not None], axis=attrs["axis"])
    if op == "Slice":
        starts, ends = args[1].reshape(-1), args[2].reshape(-1)
        axes = args[3].reshape(-1) if len(args) > 3 and args[3] is not None \
            else np.arange(len(starts))
        steps = args[4].reshape(-1) if len(args) > 4 and args[4] is not None \
            else np.ones(len(starts), dtype=np.int64)
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            index[int(a)] = slice(int(s), int(max(min(e, 2**62), -2**62)), int(st))
        return x[tuple(index)]
    if op == "Reshape":
        return x.reshape(_reshape_target(x.shape, args[1], attrs.get("allowzero", 0)))
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "ConstantOfShape":
        fill = attrs.get("value")
        value = g.onnx.numpy_helper.to_array(fill).reshape(-1)[0] if fill is not None \
            else np.float32(0)
        return np.full(tuple(int(d) for d in x.reshape(-1)), value)
    if op == "Div" and np.issubdtype(x.dtype, np.integer):
        return np.trunc(x / args[1]).astype(x.dtype)
    return np.asarray(_MATH[op](*args))


# -- the operators: (builder, node index, data input) -> (layer or None, output value) --------

Converter = Callable[[_Builder, int, str], tuple[Layer | None, str]]


def _window(b: _Builder, i: int, x: tuple[int, ...], kernel: tuple[int, int],
            strides: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The ((top, bottom), (left, right)) padding of a Conv or pooling node, from its
    ``pads`` or ``auto_pad`` (SAME_UPPER / SAME_LOWER resolved for the input size)."""
    attrs = b.g.attrs[i]
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        p = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
        if len(p) != 4:
            raise b.error(i, f"pads {p} is not [top, left, bottom, right] (a 2-D window)")
        return (p[0], p[2]), (p[1], p[3])
    if auto == "VALID":
        return (0, 0), (0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise b.error(i, f"auto_pad {auto!r} is not NOTSET, VALID, SAME_UPPER or SAME_LOWER")
    pads = []
    for size, k, s in zip(x[2:], kernel, strides, strict=True):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        small = total // 2
        pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
    return pads[0], pads[1]


def _ints2(b: _Builder, i: int, name: str, default: tuple[int, int] | None) -> tuple[int, int]:
    value = b.g.attrs[i].get(name)
    if value is None:
        if default is None:
            raise b.error(i, f"has no {name} attribute")
        return default
    if len(value) != 2:
        raise b.error(i, f"{name} {list(value)} is not 2-D; minicnn has 2-D layers only")
    return int(value[0]), int(value[1])


def _check_dilations(b: _Builder, i: int) -> None:
    dilations = b.g.attrs[i].get("dilations")
    if dilations is not None and any(int(d) != 1 for d in dilations):
        raise b.error(i, f"dilations {list(dilations)}: minicnn has no dilated windows")


def _check_ndim(b: _Builder, i: int, v: str, ndims: tuple[int, ...], what: str) -> tuple:
    shape = b.shape(v)
    if len(shape) not in ndims:
        raise b.error(i, f"its input has shape {shape[1:]} (without N); {what}")
    return shape


def _conv(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """Conv -> Conv2d: W (C_out, C_in/group, KH, KW), B (C_out,) -> W, b unchanged."""
    x = _check_ndim(b, i, v, (4,), "minicnn's Conv2d takes (N, C, H, W)")
    _check_dilations(b, i)
    group = int(b.g.attrs[i].get("group", 1))
    W = b.constant(i, 1, "weight")
    C_in = x[1]
    if W.ndim != 4 or C_in % group or W.shape[1] * group != C_in:
        raise b.error(i, f"initializer {b.g.nodes[i].input[1]!r} (the weight) has shape "
                         f"{tuple(W.shape)}, expected (C_out, {C_in // max(group, 1)}, KH, KW) "
                         f"for an input of {C_in} channels"
                         f"{f' in {group} groups' if group != 1 else ''}")
    C_out, kernel = W.shape[0], (int(W.shape[2]), int(W.shape[3]))
    if tuple(_ints2(b, i, "kernel_shape", kernel)) != kernel:
        raise b.error(i, f"kernel_shape {b.g.attrs[i]['kernel_shape']} differs from its "
                         f"weight's {kernel}")
    bias = b.weight(i, 2, "bias", (C_out,), optional=True)
    strides = _ints2(b, i, "strides", (1, 1))
    pads = _window(b, i, x, kernel, strides)
    padding: Any
    if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
        padding = (pads[0][0], pads[1][0])
    elif strides == (1, 1) and pads == tuple(((k - 1) // 2, k - 1 - (k - 1) // 2)
                                             for k in kernel):
        padding = "same"  # the extra row/column at the bottom/right, as minicnn's "same"
    else:
        raise b.error(i, f"pads (top, bottom), (left, right) = {pads}: minicnn's Conv2d pads "
                         f"both sides equally, or 'same' (stride 1, the extra at the "
                         f"bottom/right)")
    if C_out % group:
        raise b.error(i, f"group={group} does not divide the weight's {C_out} output "
                         f"channels (C_out must be a multiple of the group count)")
    layer = L.Conv2d(C_in, C_out, kernel, stride=strides, padding=padding,
                     bias=bias is not None, init="zeros", groups=group)
    layer.W.data = new_array(W)
    if bias is not None:
        layer.b.data = new_array(bias)
    return layer, b.g.nodes[i].output[0]


def _linear(in_features: int, W: np.ndarray, bias: np.ndarray | None) -> L.Linear:
    layer = L.Linear(in_features, W.shape[1], bias=bias is not None, init="zeros")
    layer.W.data = new_array(W)
    if bias is not None:
        layer.b.data = new_array(bias)
    return layer


def _vector(value: np.ndarray, n: int) -> np.ndarray | None:
    """A bias of shape (), (n,), (1, n) as (n,); None for any other shape."""
    if value.ndim > 2 or (value.ndim == 2 and value.shape[0] != 1):
        return None
    flat = value.reshape(-1)
    if flat.size not in (1, n):
        return None
    return np.broadcast_to(flat, (n,)).astype(np.float32)


def _gemm(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """Gemm (Y = alpha·A·op(B) + beta·C) -> Linear: W = alpha·Bᵀ if transB (PyTorch's
    (out, in) weight) else alpha·B; b = beta·C."""
    x = _check_ndim(b, i, v, (2,), "Gemm takes (N, features) matrices")
    attrs = b.g.attrs[i]
    if attrs.get("transA", 0):
        raise b.error(i, "transA=1 (the data transposed): minicnn's Linear computes x W + b")
    B = b.constant(i, 1, "weight B")
    if B.ndim != 2:
        raise b.error(i, f"its weight B has shape {tuple(B.shape)}; expected a matrix")
    W = (B.T if attrs.get("transB", 0) else B) * np.float32(attrs.get("alpha", 1.0))
    if W.shape[0] != x[1]:
        expected = f"(out, {x[1]})" if attrs.get("transB", 0) else f"({x[1]}, out)"
        raise b.error(i, f"initializer {b.g.nodes[i].input[1]!r} (the weight B) has shape "
                         f"{tuple(B.shape)}, expected {expected} for an input of {x[1]} "
                         f"features")
    C = b.constant(i, 2, "bias C", optional=True)
    bias = None
    if C is not None:
        bias = _vector(C * np.float32(attrs.get("beta", 1.0)), W.shape[1])
        if bias is None:
            raise b.error(i, f"initializer {b.g.nodes[i].input[2]!r} (the bias C) has shape "
                             f"{tuple(C.shape)}, expected ({W.shape[1]},)")
    return _linear(x[1], W.astype(np.float32), bias), b.g.nodes[i].output[0]


def _matmul(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """MatMul(x, W) [+ Add(b)] -> Linear (W (in, out), on the last axis of x)."""
    x = b.shape(v)
    W = b.constant(i, 1, "weight")
    if W.ndim != 2 or W.shape[0] != x[-1]:
        raise b.error(i, f"initializer {b.g.nodes[i].input[1]!r} (the weight) has shape "
                         f"{tuple(W.shape)}, expected ({x[-1]}, out) for an input of "
                         f"{x[-1]} features on its last axis")
    out = b.g.nodes[i].output[0]
    bias = None
    j = b.sole(out)
    if j is not None and b.g.nodes[j].op_type == "Add":
        others = [k for k, name in enumerate(b.g.nodes[j].input) if name != out]
        if len(others) == 1 and b.g.nodes[j].input[others[0]] in b.g.static:
            bias = _vector(b.constant(j, others[0], "bias"), W.shape[1])
            if bias is not None:
                b.visited.add(j)
                out = b.g.nodes[j].output[0]
    return _linear(x[-1], W.astype(np.float32), bias), out


def _batchnorm(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """BatchNormalization -> BatchNorm2d (4-D input) or BatchNorm1d (2-D, 3-D), with its
    running statistics; ONNX's momentum m (weight of the old value) is minicnn's 1 - m."""
    x = _check_ndim(b, i, v, (2, 3, 4), "minicnn's BatchNorm takes (N, C), (N, C, L) or "
                                        "(N, C, H, W)")
    attrs = b.g.attrs[i]
    if attrs.get("training_mode", 0):
        raise b.error(i, "training_mode=1: minicnn reads inference graphs only")
    b.unused_extra_outputs(i)
    C = x[1]
    gamma, beta, mean, var = (b.weight(i, k, what, (C,)) for k, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    momentum = float(attrs.get("momentum", 0.9))
    Layer_ = L.BatchNorm2d if len(x) == 4 else L.BatchNorm1d
    layer = Layer_(C, eps=float(attrs.get("epsilon", 1e-5)),
                   momentum=1.0 - momentum if 0.0 <= momentum <= 1.0 else 0.1)
    layer.gamma.data, layer.beta.data = new_array(gamma), new_array(beta)
    layer.running_mean, layer.running_var = new_array(mean), new_array(var)
    return layer, b.g.nodes[i].output[0]


def _relu(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    return L.ReLU(), b.g.nodes[i].output[0]


def _leaky_relu(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    return L.LeakyReLU(float(b.g.attrs[i].get("alpha", 0.01))), b.g.nodes[i].output[0]


def _gelu(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    approximate = b.g.attrs[i].get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise b.error(i, f"approximate={approximate!r} is not 'none' or 'tanh'")
    return L.GELU(approximate=approximate), b.g.nodes[i].output[0]


def _pool_window(b: _Builder, i: int, v: str, what: str) -> tuple[Any, ...]:
    """kernel, stride, padding of a MaxPool/AveragePool node, as minicnn's pool takes them."""
    x = _check_ndim(b, i, v, (4,), f"minicnn's {what} takes (N, C, H, W)")
    _check_dilations(b, i)
    kernel = _ints2(b, i, "kernel_shape", None)
    strides = _ints2(b, i, "strides", (1, 1))
    (t, bo), (le, r) = _window(b, i, x, kernel, strides)
    if t != bo or le != r or 2 * t > kernel[0] or 2 * le > kernel[1]:
        raise b.error(i, f"pads (top, bottom), (left, right) = {((t, bo), (le, r))}: minicnn's "
                         f"{what} pads both sides equally, by at most half the kernel")
    if b.g.attrs[i].get("ceil_mode", 0):
        for size, k, s, p in zip(x[2:], kernel, strides, (t, le), strict=True):
            floor_, ceil_ = (size + 2 * p - k) // s + 1, -(-(size + 2 * p - k) // s) + 1
            if ceil_ != floor_ and (ceil_ - 1) * s < size + p:
                raise b.error(i, "ceil_mode=1 changes the output size here; minicnn's "
                                 "pooling rounds down (ceil_mode=0)")
    return kernel, strides, (t, le)


def _maxpool(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    b.unused_extra_outputs(i)
    kernel, strides, padding = _pool_window(b, i, v, "MaxPool2d")
    return L.MaxPool2d(kernel, stride=strides, padding=padding), b.g.nodes[i].output[0]


def _avgpool(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    kernel, strides, padding = _pool_window(b, i, v, "AvgPool2d")
    if any(padding) and not b.g.attrs[i].get("count_include_pad", 0):
        raise b.error(i, "count_include_pad=0 with padding: minicnn's AvgPool2d counts the "
                         "zero padding in the mean (PyTorch's default, count_include_pad=1)")
    return L.AvgPool2d(kernel, stride=strides, padding=padding), b.g.nodes[i].output[0]


def _flattens(b: _Builder, j: int, u: str) -> bool:
    """Node ``j`` turns its input ``u`` (N, d1, ...) into (N, d1·...): Flatten(axis=1), a
    Reshape or a Squeeze to that shape."""
    node, attrs = b.g.nodes[j], b.g.attrs[j]
    shape = b.shape(u)
    flat = (shape[0], math.prod(shape[1:]))
    if node.input[0] != u or any(x and x != u and x not in b.g.static for x in node.input):
        return False
    if node.op_type == "Flatten":
        return attrs.get("axis", 1) % len(shape) == 1 or len(shape) == 2
    if node.op_type == "Reshape":
        try:
            target = _reshape_target(shape, b.constant(j, 1, "shape"),
                                     attrs.get("allowzero", 0))
        except ValueError:
            return False
        return target == flat
    if node.op_type == "Squeeze":
        axes = _axes(attrs, [b.evaluate(x) if x else None for x in node.input], 1)
        squeezed = np.squeeze(np.empty(shape, np.bool_), None if axes is None
                              else tuple(a % len(shape) for a in axes)).shape
        return tuple(squeezed) == flat
    return False


def _global_pool(b: _Builder, i: int, v: str, out: str) -> tuple[Layer, str]:
    """(N, C, 1, 1) at ``out`` followed by a flatten -> GlobalAvgPool2d (N, C); not
    followed by one -> AdaptiveAvgPool2d(1)."""
    b.arrays[out] = b.arrays[v].mean(axis=(2, 3), keepdims=True)  # for a Shape node's sake
    j = b.sole(out)
    if j is None or not _flattens(b, j, out):
        return L.AdaptiveAvgPool2d(1), out  # the (N, C, 1, 1) shape kept
    b.visited.add(j)
    return L.GlobalAvgPool2d(), b.g.nodes[j].output[0]


def _global_average_pool(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """GlobalAveragePool + Flatten (or Reshape / Squeeze) -> GlobalAvgPool2d; alone ->
    AdaptiveAvgPool2d(1)."""
    _check_ndim(b, i, v, (4,), "minicnn's GlobalAvgPool2d takes (N, C, H, W)")
    return _global_pool(b, i, v, b.g.nodes[i].output[0])


def _reduce_mean(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """ReduceMean over H, W (PyTorch's x.mean((2, 3))) -> GlobalAvgPool2d."""
    _check_ndim(b, i, v, (4,), "minicnn reads ReduceMean only as global average pooling "
                               "of (N, C, H, W)")
    attrs = b.g.attrs[i]
    node = b.g.nodes[i]
    args = [None, b.constant(i, 1, "axes")] if len(node.input) > 1 and node.input[1] \
        else [None]
    axes = _axes(attrs, args, 1)
    if axes is None or sorted(a % 4 for a in axes) != [2, 3]:
        raise b.error(i, f"axes {axes}: minicnn reads ReduceMean over H and W (axes 2, 3) "
                         f"only, as global average pooling")
    if attrs.get("keepdims", 1):
        return _global_pool(b, i, v, node.output[0])
    return L.GlobalAvgPool2d(), node.output[0]


def _flatten(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    if not _flattens(b, i, v):
        raise b.error(i, f"axis={b.g.attrs[i].get('axis', 1)}: minicnn's Flatten keeps the "
                         f"batch axis (axis=1)")
    return L.Flatten(), b.g.nodes[i].output[0]


def _squeeze(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    if not _flattens(b, i, v):
        raise b.error(i, f"squeezes {b.shape(v)[1:]} (without N) into something other than "
                         f"(N, features); minicnn reads it only as a flatten")
    return L.Flatten(), b.g.nodes[i].output[0]


def _reshape(b: _Builder, i: int, v: str) -> tuple[Layer | None, str]:
    """Reshape to (N, features) -> Flatten; to the same shape -> nothing; to (N, G, -1)
    followed by InstanceNormalization and a Reshape back -> GroupNorm."""
    x = b.shape(v)
    try:
        target = _reshape_target(x, b.constant(i, 1, "shape"),
                                 b.g.attrs[i].get("allowzero", 0))
    except ValueError as exc:
        raise b.error(i, str(exc)) from None
    out = b.g.nodes[i].output[0]
    if target == x:
        return None, out
    if target == (x[0], math.prod(x[1:])):
        return L.Flatten(), out
    group = _group_norm(b, i, v, x, target)
    if group is not None:
        return group
    raise b.error(i, f"reshapes {x[1:]} to {target[1:]} (without N); minicnn reads Reshape "
                     f"only as a flatten to (N, features) or inside GroupNorm's pattern")


def _group_norm(b: _Builder, i: int, v: str, x: tuple[int, ...],
                target: tuple[int, ...]) -> tuple[Layer, str] | None:
    """Reshape(x, [N, G, -1]) -> InstanceNormalization(s, t) -> Reshape(·, shape(x))
    [-> Mul(gamma) -> Add(beta)]: GroupNorm(G, C), the per-group s, t folded into the
    per-channel gamma, beta: y = (x̂ s_g + t_g) gamma_c + beta_c."""
    if len(x) < 2 or len(target) != 3 or target[0] != x[0] or x[1] % target[1]:
        return None
    G, C = target[1], x[1]
    grouped = b.g.nodes[i].output[0]
    j = b.sole(grouped)
    if j is None or b.g.nodes[j].op_type != "InstanceNormalization":
        return None
    normed = b.g.nodes[j].output[0]
    k = b.sole(normed)
    if k is None or b.g.nodes[k].op_type != "Reshape":
        return None
    b.arrays[grouped] = b.arrays[v].reshape(target)
    back = _reshape_target(target, b.constant(k, 1, "shape"), b.g.attrs[k].get("allowzero", 0))
    if back != x:
        return None
    s = b.weight(j, 1, "scale", (G,))
    t = b.weight(j, 2, "bias", (G,))
    gamma, beta = np.repeat(s, C // G), np.repeat(t, C // G)
    b.visited.update((j, k))
    out = b.g.nodes[k].output[0]
    for op in ("Mul", "Add"):
        m = b.sole(out)
        if m is None or b.g.nodes[m].op_type != op:
            break
        others = [n for n, name in enumerate(b.g.nodes[m].input) if name != out]
        if len(others) != 1 or b.g.nodes[m].input[others[0]] not in b.g.static:
            break
        c = _per_channel(b.constant(m, others[0], "affine map"), x)
        if c is None:
            break
        if op == "Mul":
            gamma, beta = gamma * c, beta * c
        else:
            beta = beta + c
        b.visited.add(m)
        out = b.g.nodes[m].output[0]
    layer = L.GroupNorm(G, C, eps=float(b.g.attrs[j].get("epsilon", 1e-5)))
    layer.gamma.data, layer.beta.data = new_array(gamma), new_array(beta)
    return layer, out


def _per_channel(value: np.ndarray, x: tuple[int, ...]) -> np.ndarray | None:
    """A constant that broadcasts over (N, C, *) as one number per channel, as (C,)."""
    if value.ndim > len(x):
        return None
    full = (1,) * (len(x) - value.ndim) + tuple(value.shape)
    if full[0] != 1 or any(d != 1 for d in full[2:]) or full[1] not in (1, x[1]):
        return None
    return np.broadcast_to(value.reshape(-1), (x[1],)).astype(np.float32)


def _instance_norm(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """InstanceNormalization -> InstanceNorm2d; ``affine=False`` when its scale is all ones
    and its bias all zeros (how a layer without them, PyTorch's default, is written)."""
    x = _check_ndim(b, i, v, (4,), "minicnn's InstanceNorm2d takes (N, C, H, W)")
    C = x[1]
    gamma = b.weight(i, 1, "scale", (C,))
    beta = b.weight(i, 2, "bias", (C,))
    affine = not (np.all(gamma == 1.0) and np.all(beta == 0.0))
    layer = L.InstanceNorm2d(C, eps=float(b.g.attrs[i].get("epsilon", 1e-5)), affine=affine)
    if affine:
        layer.gamma.data, layer.beta.data = new_array(gamma), new_array(beta)
    return layer, b.g.nodes[i].output[0]


def _layer_norm(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """LayerNormalization over the axes from ``axis`` on -> LayerNorm(x.shape[axis:])."""
    x = b.shape(v)
    b.unused_extra_outputs(i)
    axis = int(b.g.attrs[i].get("axis", -1)) % len(x)
    if axis == 0:
        raise b.error(i, "axis=0 normalises over the batch; minicnn's LayerNorm normalises "
                         "each sample")
    shape = x[axis:]
    gamma = b.constant(i, 1, "scale")
    beta = b.constant(i, 2, "bias", optional=True)
    try:
        gamma = np.broadcast_to(gamma, shape).astype(np.float32)
        beta = np.zeros(shape, np.float32) if beta is None else \
            np.broadcast_to(beta, shape).astype(np.float32)
    except ValueError:
        raise b.error(i, f"its scale/bias do not broadcast to the normalised shape "
                         f"{shape}") from None
    layer = L.LayerNorm(shape, eps=float(b.g.attrs[i].get("epsilon", 1e-5)))
    layer.gamma.data, layer.beta.data = new_array(gamma), new_array(beta)
    return layer, b.g.nodes[i].output[0]


def _dropout(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """Dropout (the identity in inference) -> Dropout(ratio), for fine-tuning."""
    b.unused_extra_outputs(i)
    attrs = b.g.attrs[i]
    ratio = attrs.get("ratio")
    if ratio is None:
        value = b.constant(i, 1, "ratio", optional=True)
        ratio = 0.5 if value is None else float(value.reshape(-1)[0])
    training = b.constant(i, 2, "training_mode", optional=True)
    if training is not None and bool(training.reshape(-1)[0]):
        raise b.error(i, "training_mode=true: minicnn reads inference graphs only")
    if not 0.0 <= ratio < 1.0:
        raise b.error(i, f"ratio {ratio} is not in [0, 1)")
    return L.Dropout(float(ratio)), b.g.nodes[i].output[0]


def _conv_transpose(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """ConvTranspose -> ConvTranspose2d: W (C_in, C_out/group, KH, KW), B (C_out,) as they
    are; equal padding on both sides, ``output_padding`` (or an ``output_shape`` that comes
    to one) at the bottom/right."""
    x = _check_ndim(b, i, v, (4,), "minicnn's ConvTranspose2d takes (N, C, H, W)")
    _check_dilations(b, i)
    attrs = b.g.attrs[i]
    group = int(attrs.get("group", 1))
    W = b.constant(i, 1, "weight")
    C_in = x[1]
    if W.ndim != 4 or W.shape[0] != C_in or C_in % group:
        raise b.error(i, f"initializer {b.g.nodes[i].input[1]!r} (the weight) has shape "
                         f"{tuple(W.shape)}, expected ({C_in}, C_out/group, KH, KW) for an "
                         f"input of {C_in} channels")
    C_out, kernel = int(W.shape[1]) * group, (int(W.shape[2]), int(W.shape[3]))
    if tuple(_ints2(b, i, "kernel_shape", kernel)) != kernel:
        raise b.error(i, f"kernel_shape {attrs['kernel_shape']} differs from its weight's "
                         f"{kernel}")
    bias = b.weight(i, 2, "bias", (C_out,), optional=True)
    strides = _ints2(b, i, "strides", (1, 1))
    if (attrs.get("auto_pad", "NOTSET") or "NOTSET") not in ("NOTSET", "VALID"):
        raise b.error(i, f"auto_pad={attrs['auto_pad']!r}: minicnn reads ConvTranspose with "
                         f"explicit pads")
    p = [int(a) for a in attrs.get("pads", [0, 0, 0, 0])]
    if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
        raise b.error(i, f"pads {p}: minicnn's ConvTranspose2d crops both sides equally")
    output_padding = _ints2(b, i, "output_padding", (0, 0))
    if "output_shape" in attrs:
        full = [(n - 1) * s - 2 * q + k for n, s, q, k in
                zip(x[2:], strides, (p[0], p[1]), kernel, strict=True)]
        output_padding = tuple(int(o) - f for o, f in
                               zip(list(attrs["output_shape"])[-2:], full, strict=True))
    if any(not 0 <= o < s for o, s in zip(output_padding, strides, strict=True)):
        raise b.error(i, f"output_padding {list(output_padding)} is not in [0, stride) for "
                         f"strides {list(strides)}")
    layer = L.ConvTranspose2d(C_in, C_out, kernel, stride=strides, padding=(p[0], p[1]),
                              output_padding=output_padding, groups=group,
                              bias=bias is not None, init="zeros")
    layer.W.data = new_array(W.astype(np.float32))
    if bias is not None:
        layer.b.data = new_array(bias)
    return layer, b.g.nodes[i].output[0]


def _resize(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """Resize of H and W -> Upsample: mode nearest with asymmetric coordinates and floor
    rounding (PyTorch's nearest), or linear with half_pixel (or pytorch_half_pixel)
    coordinates (bilinear, align_corners=False); by any scales or to any sizes.

    The layer is chosen to compute what the file computes on its (fixed) H, W: the integer
    scale when the factors are integers, else the file's float32 scales, else the output
    size, whichever reproduces ONNX's rule (``export.onnx_resize_matrix``: nearest divides
    by the scale where PyTorch multiplies by its reciprocal, so at an exact tie the two read
    neighbouring pixels); an error when none does."""
    x = _check_ndim(b, i, v, (4,), "minicnn's Upsample takes (N, C, H, W)")
    attrs, node = b.g.attrs[i], b.g.nodes[i]
    mode = attrs.get("mode", "nearest")
    coords = attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest" and coords == "asymmetric" and \
            attrs.get("nearest_mode", "round_prefer_floor") == "floor":
        kind = "nearest"
    elif mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel"):
        kind = "bilinear"
    else:
        rounding = attrs.get("nearest_mode", "round_prefer_floor")
        raise b.error(i, f"mode={mode!r}, coordinate_transformation_mode={coords!r}"
                         f"{f', nearest_mode={rounding!r}' if mode == 'nearest' else ''}: "
                         f"minicnn's Upsample is nearest (asymmetric, floor) or bilinear "
                         f"(half_pixel, align_corners=False)")
    if attrs.get("antialias", 0) or attrs.get("axes") is not None or \
            attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise b.error(i, "antialias, axes or keep_aspect_ratio_policy: minicnn's Upsample has "
                         "none of them")
    H, W = x[2:]
    scales = b.constant(i, 2, "scales", optional=True)
    if scales is not None and scales.size:
        scales = [np.float32(f) for f in scales.reshape(-1)]
        if len(scales) != 4 or scales[:2] != [1, 1] or any(not f > 0 for f in scales[2:]):
            raise b.error(i, f"scales {[float(f) for f in scales]}: minicnn's Upsample scales "
                             f"H and W by positive factors (and N, C by 1)")
        sh, sw = scales[2:]
        out_hw = (onnx_resize_size(H, sh), onnx_resize_size(W, sw))
        if None in out_hw:
            raise b.error(i, f"scales {[float(f) for f in scales]}: the output size of "
                             f"{H}×{W} rounds differently in float32 (ONNX Runtime) and "
                             f"float64 (ONNX's shape inference)")
        if min(out_hw) < 1:
            raise b.error(i, f"scales {[float(f) for f in scales]} take {H}×{W} to "
                             f"{out_hw[0]}×{out_hw[1]} pixels")
    else:
        sizes = b.constant(i, 3, "sizes", optional=True)
        if sizes is None or sizes.size != 4:
            raise b.error(i, "has neither scales nor sizes for the 4 axes")
        sizes = [int(o) for o in sizes.reshape(-1)]
        if sizes[:2] != list(x[:2]) or min(sizes[2:]) < 1:
            raise b.error(i, f"sizes {sizes}: minicnn's Upsample keeps N and C (input "
                             f"{tuple(x)}) and needs positive H, W")
        out_hw = tuple(sizes[2:])
        sh, sw = (np.float32(o) / np.float32(n) for o, n in zip(out_hw, (H, W), strict=True))
    # ONNX Runtime copies when no axis changes; otherwise every axis follows the formula.
    same = out_hw == (H, W)
    target = [np.eye(n) if same else onnx_resize_matrix(n, o, s, kind)
              for n, o, s in zip((H, W), out_hw, (sh, sw), strict=True)]
    candidates = [L.Upsample(scale_factor=(float(sh), float(sw)), mode=kind),
                  L.Upsample(size=out_hw, mode=kind)]
    if all(o % n == 0 for n, o in zip((H, W), out_hw, strict=True)):
        candidates.insert(0, L.Upsample((out_hw[0] // H, out_hw[1] // W), mode=kind))
    for layer in candidates:
        if layer.size is None and (math.floor(H * layer.scale_factor[0]),
                                   math.floor(W * layer.scale_factor[1])) != out_hw:
            continue  # PyTorch's float64 product and ONNX's float32 one round differently
        mine = resampling_matrices(np.zeros(0), (H, W), out_hw, kind, layer._sample_scales())
        if all(same_resampling(a, t, kind) for a, t in zip(mine, target, strict=True)):
            return layer, node.output[0]
    raise b.error(i, f"resizes {H}×{W} to {out_hw[0]}×{out_hw[1]} reading other input pixels "
                     f"than PyTorch's rule (which minicnn's Upsample follows) does, for every "
                     f"scale or size it could take: an exact tie of ONNX's division")


def _lrn(b: _Builder, i: int, v: str) -> tuple[Layer, str]:
    """LRN -> LocalResponseNorm(size, alpha, beta, k=bias), for an odd size: ONNX's window
    [c - floor((size-1)/2), c + ceil((size-1)/2)] is then minicnn's (PyTorch's)
    [c - size//2, c + (size-1)//2]; for an even size the two are mirror images."""
    attrs = b.g.attrs[i]
    size = int(attrs.get("size", 0))
    if size < 1 or size % 2 == 0:
        raise b.error(i, f"size={size}: minicnn's LocalResponseNorm reads LRN with an odd "
                         f"size only (for an even size ONNX's channel window is the mirror "
                         f"image of minicnn's and PyTorch's)")
    alpha, beta = float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75))
    bias = float(attrs.get("bias", 1.0))
    try:
        layer = L.LocalResponseNorm(size, alpha=alpha, beta=beta, k=bias)
    except ValueError as exc:
        raise b.error(i, _one_line(exc)) from None
    return layer, b.g.nodes[i].output[0]


def _identity(b: _Builder, i: int, v: str) -> tuple[None, str]:
    return None, b.g.nodes[i].output[0]


# ONNX operator -> converter: the import side of the op table in docs/interop.md (plus the
# element-wise activations, recognised by value, and the constant/shape operators).
IMPORTERS: dict[str, Converter] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "BatchNormalization": _batchnorm,
    "Relu": _relu,
    "LeakyRelu": _leaky_relu,
    "Gelu": _gelu,
    "MaxPool": _maxpool,
    "AveragePool": _avgpool,
    "GlobalAveragePool": _global_average_pool,
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "LayerNormalization": _layer_norm,
    "InstanceNormalization": _instance_norm,
    "Dropout": _dropout,
    "Identity": _identity,
    "ConvTranspose": _conv_transpose,
    "Resize": _resize,
    "LRN": _lrn,
}


def from_onnx(path: str | os.PathLike, input_shape: Any = None) -> L.Sequential:
    """Build a minicnn model from the ONNX file ``path``.

    Parameters
    ----------
    path : str or PathLike
        An ONNX model of one float32 input (N, C, H, W) (or (N, features)) and one output,
        made of the operators in ``IMPORTERS`` and element-wise activations: what
        ``to_onnx`` writes, and what PyTorch's ``torch.onnx.export`` writes for plain CNNs
        (Conv with BatchNorm folded into its bias, Gemm with transB=1, Flatten or
        ``x.view(x.size(0), -1)``, GlobalAveragePool, Add for residual blocks, ...).
    input_shape : sequence of int, optional
        One sample's shape (C, H, W), for a file whose input leaves H or W open.

    Returns
    -------
    Sequential
        The model, in evaluation mode (residual blocks as ``Residual(Sequential(...),
        shortcut)``), on the current backend in float32, with ``input_shape`` and
        ``summary()``. Its weights are the file's: Conv's W and b as they are, Gemm's
        weight transposed to Linear's (in, out) when transB=1, BatchNormalization's scale,
        bias, mean and variance as gamma, beta and the running statistics.

    Raises
    ------
    OnnxError
        (a ValueError) naming the file and what is wrong: missing, not ONNX, truncated,
        an initializer that is missing or of the wrong shape, every unsupported operator
        at once, or the node where the graph stops being chains and residual blocks.
    ImportError
        The ``onnx`` package is not installed.
    """
    onnx = require_onnx("from_onnx")
    path = os.fspath(path)
    graph = _Graph(onnx, path, _read(onnx, path), input_shape)
    model = _Builder(graph).build()
    model.input_shape = graph.sample_shape
    model.summary = partial(summary, model, graph.sample_shape)
    return model
