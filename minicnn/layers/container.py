"""Containers: layers made of layers (a chain, a residual block, a concatenation), and the identity.

Derivation: docs/derivations/containers.md, docs/derivations/residual.md
Tests: tests/test_container.py, tests/test_concat.py
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..backend import get_array_module
from ..kernels import uses_kernels
from .activation import ReLU
from .base import Layer, check_float_input
from .batchnorm import BatchNorm1d, BatchNorm2d

__all__ = ["Identity", "Sequential", "Residual", "Concat"]


class Identity(Layer):
    """y = x, dx = dout. A placeholder (e.g. the shortcut of a residual block)."""

    def forward(self, x: Any) -> Any:
        # Nothing to remember but that forward ran: backward-before-forward is an error in
        # every layer, so a misordered call fails here too rather than two layers later.
        self.cache = True
        return x

    def backward(self, dout: Any) -> Any:
        self.cached()
        return dout


def _add(a: Any, b: Any) -> Any:
    """a + b into a new array in a's memory layout: ``a + b`` on CuPy would write it C-ordered
    and lose a channels-last layout (one pass either way; neither input is written, since
    either may be the caller's ``dout``, passed through by an Identity)."""
    xp = get_array_module(a)
    return xp.add(a, b, out=xp.empty_like(a))


def _check_layer(owner: str, what: str, layer: Any) -> Layer:
    if not isinstance(layer, Layer):
        hint = " (pass the layers as separate arguments: Sequential(*layers))" \
            if isinstance(layer, (list, tuple)) else ""
        raise TypeError(f"{owner}: {what} must be a Layer, got {type(layer).__name__}{hint}")
    return layer


def _fuses_relu(layer: Layer, following: Layer, x: Any) -> bool:
    """True when ``layer`` then ``following`` is a BatchNorm then a ReLU that may run as one
    pass (``BatchNorm.forward_relu``): on CuPy only, where each pass is a kernel launch (on
    NumPy the two layers run as written); never when either's forward or backward has been
    replaced on the instance (``explain`` taps a layer that way) or the ReLU passes no
    gradient back."""
    return (type(layer) in (BatchNorm1d, BatchNorm2d) and type(following) is ReLU
            and following.input_grad and uses_kernels(x)
            and not {"forward", "backward"} & (vars(layer).keys() | vars(following).keys()))


class Sequential(Layer):
    """A chain of layers: f = f_K ∘ ... ∘ f_2 ∘ f_1.

    Forward:  x_0 = x,  x_k = f_k(x_{k-1}),  y = x_K
    Backward: the chain rule, last layer first:
              g_K = dout,  g_{k-1} = f_k.backward(g_k),  dx = g_0
              (stopping with None at a layer whose ``input_grad`` is off)

    On CuPy a BatchNorm directly followed by a ReLU runs as one fused pass each way
    (``BatchNorm.forward_relu``; its backward applies the ReLU's mask itself): the same
    numbers, two kernel launches fewer per pair and step.

    ``parameters()`` lists the layers' parameters in order. Supports ``len(model)``,
    ``model[i]`` (a slice gives a new Sequential sharing the layers), iteration and
    ``append(layer)``.
    """

    def __init__(self, *layers: Layer):
        super().__init__()
        self.layers: list[Layer] = [
            _check_layer("Sequential", f"argument {i}", layer) for i, layer in enumerate(layers)]

    def forward(self, x: Any) -> Any:
        layers, fused, k = self.layers, set(), 0
        while k < len(layers):
            if k + 1 < len(layers) and _fuses_relu(layers[k], layers[k + 1], x):
                x = layers[k].forward_relu(x)          # BatchNorm and the ReLU after it
                fused.add(k)
                k += 2
            else:
                x = layers[k].forward(x)
                k += 1
        self._fused = fused                            # where backward skips the ReLU
        return x

    def backward(self, dout: Any) -> Any:
        fused, k = getattr(self, "_fused", set()), len(self.layers) - 1
        while k >= 0:
            if k - 1 in fused:                         # a fused BatchNorm + ReLU pair
                k -= 1
            dout = self.layers[k].backward(dout)
            if dout is None:  # a layer with input_grad off: nothing before it needs dL/dx
                return None
            k -= 1
        return dout

    def append(self, layer: Layer) -> Sequential:
        """Add ``layer`` at the end. Returns self (so calls can be chained)."""
        self.layers.append(_check_layer("Sequential.append", "the argument", layer))
        return self

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            part = Sequential(*self.layers[index])
            part.training = self.training
            return part
        return self.layers[index]

    def __repr__(self) -> str:
        if not self.layers:
            return "Sequential()"
        lines = "\n".join(f"  ({i}): " + repr(layer).replace("\n", "\n  ")
                          for i, layer in enumerate(self.layers))
        return f"Sequential(\n{lines}\n)"


class Residual(Layer):
    """A residual block: y = body(x) + shortcut(x), shortcut = identity by default.

    Forward:  y = F(x) + S(x)
    Backward: both branches received the same output, so each gets the whole upstream
              gradient and their input gradients add up:
              dx = F.backward(dout) + S.backward(dout)
              (this is why a layer's backward must never modify ``dout`` in place)

    Parameters
    ----------
    body : Layer
        F, e.g. ``Sequential(Conv2d, BatchNorm2d, ReLU, Conv2d, BatchNorm2d)``.
    shortcut : Layer, optional
        S; None means the identity. When F changes the shape (stride or channels), use a
        projection, e.g. ``Sequential(Conv2d(c_in, c_out, 1, stride=2), BatchNorm2d(c_out))``.

    ``parameters()`` lists the body's parameters, then the shortcut's.
    """

    def __init__(self, body: Layer, shortcut: Layer | None = None):
        super().__init__()
        # Assigned in this order so that parameters() lists body, then shortcut.
        self.body = _check_layer("Residual", "body", body)
        self.shortcut = Identity() if shortcut is None else \
            _check_layer("Residual", "shortcut", shortcut)

    def forward(self, x: Any) -> Any:
        f = self.body.forward(x)
        s = self.shortcut.forward(x)
        if f.shape != s.shape:
            raise ValueError(
                f"Residual: the body's output shape {tuple(f.shape)} differs from the "
                f"shortcut's output shape {tuple(s.shape)} (input shape {tuple(x.shape)}); "
                f"use a projection shortcut that maps the input to the body's output shape, "
                f"e.g. shortcut=Sequential(Conv2d(c_in, c_out, 1, stride=s), BatchNorm2d(c_out))")
        return _add(f, s)

    def backward(self, dout: Any) -> Any:
        return _add(self.body.backward(dout), self.shortcut.backward(dout))

    def __repr__(self) -> str:
        body = repr(self.body).replace("\n", "\n  ")
        shortcut = repr(self.shortcut).replace("\n", "\n  ")
        return f"Residual(\n  body: {body}\n  shortcut: {shortcut}\n)"


class Concat(Layer):
    """Branches side by side: y = concat(F_1(x), ..., F_B(x)) along the channel axis.

    Forward:  y = [F_1(x), F_2(x), ..., F_B(x)]          (N, C_1 + ... + C_B, H, W)
    Backward: each output channel block depends on one branch only (as a copy), so branch b
              gets its own block of dout, and x, used by every branch, collects the sum:
              dout_b = dout[:, C_1 + ... + C_{b-1} : C_1 + ... + C_b]   (views, no copy)
              dx = F_1.backward(dout_1) + ... + F_B.backward(dout_B)
              (a branch whose backward returns None, its ``input_grad`` off, adds nothing)

    DenseNet's layer is ``Concat(Identity(), body)`` (the input's channels, then the new
    ones), an Inception block ``Concat(b1, b2, b3, b4)``, U-Net's long skip
    ``Concat(Identity(), Sequential(down, ..., up))``.

    Parameters
    ----------
    *branches : Layer
        F_1, ..., F_B (at least one), each mapping (N, C_in, H, W) to (N, C_b, H, W) with the
        same N, H, W (only the channel counts may differ).

    Shapes
    ------
    x: whatever the branches take; y: (N, C_1 + ... + C_B, H, W) (or, more generally, the
    branches' outputs joined along axis 1).

    ``parameters()`` lists the branches' parameters, branch by branch, in order
    (``branches.0.W``, ...). ``input_grad`` (default True): when False, the branches still run
    backward (their parameters need it) but dx is not summed and None is returned.
    """

    def __init__(self, *branches: Layer):
        super().__init__()
        if not branches:
            raise ValueError("Concat: expected at least one branch, e.g. "
                             "Concat(Identity(), Sequential(Conv2d(c, k, 3, padding=1), ReLU()))")
        self.branches: list[Layer] = [
            _check_layer("Concat", f"branch {i}", branch) for i, branch in enumerate(branches)]
        self.input_grad = True

    def forward(self, x: Any) -> Any:
        outputs = [branch.forward(x) for branch in self.branches]
        _check_same_except_channels(outputs, x)
        xp = check_float_input("Concat", outputs[0])
        # Where each branch's channels end in y (but the last): the split points of dout.
        ends, c = [], 0
        for out in outputs[:-1]:
            c += out.shape[1]
            ends.append(c)
        self.cache = tuple(ends)
        return xp.concatenate(outputs, axis=1)

    def backward(self, dout: Any) -> Any:
        ends = self.cached()
        xp = check_float_input("Concat", dout)
        dout_blocks = xp.split(dout, ends, axis=1)  # views of dout: dout_b
        dx = None
        for branch, dout_b in zip(self.branches, dout_blocks, strict=True):
            dx_b = branch.backward(dout_b)
            if dx_b is None:  # this branch's input_grad is off: it adds nothing
                continue
            dx = dx_b if dx is None else _add(dx, dx_b)  # never in place: dx_b may be dout's view
        return dx if self.input_grad else None

    def __repr__(self) -> str:
        lines = "\n".join(f"  ({i}): " + repr(branch).replace("\n", "\n  ")
                          for i, branch in enumerate(self.branches))
        return f"Concat(\n{lines}\n)"


def _check_same_except_channels(outputs: list[Any], x: Any) -> None:
    """Raise ValueError unless the branches' outputs agree on every axis but the channels."""
    shapes = [tuple(out.shape) for out in outputs]
    first = shapes[0]
    for shape in shapes:
        if len(shape) < 2 or len(shape) != len(first) or \
                shape[:1] + shape[2:] != first[:1] + first[2:]:
            raise ValueError(
                f"Concat: the branches' outputs must have the same shape (N, C_b, H, W) but for "
                f"the channels C_b; got shapes {shapes} for input shape {tuple(x.shape)} "
                f"(a branch with a stride or without padding changes H and W)")
