"""The two building blocks every layer shares: ``Parameter`` and ``Layer``.

A layer is an object with

- ``forward(x)``: computes the output and caches what the backward pass will need;
- ``backward(dout) -> dx``: given dL/d(output), fills ``p.grad`` = dL/dp for each of its
  parameters and returns dL/dx. It never modifies ``dout`` in place (a residual branch may
  share the same array);
- ``parameters()``: its trainable ``Parameter`` objects, in definition order;
- ``train()`` / ``eval()``: the mode (BatchNorm and Dropout behave differently).

There is no autograd: each layer's ``backward`` is the chain rule written out by hand.

Gradients are *assigned*, not accumulated: a backward pass overwrites ``p.grad``, so there is
no ``zero_grad`` to forget (one consequence: a layer object used twice in one model is not
supported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backend import get_array_module, get_xp, to_numpy

__all__ = ["Parameter", "Layer", "check_float_input", "check_ndim", "check_channels", "new_array"]


class Parameter:
    """A trainable array and its gradient.

    Parameters
    ----------
    data : array
        The value (NumPy or CuPy). May be reassigned at any time with an array of the same
        shape; layers read ``.data`` at every forward.
    name : str, optional
        For messages and checkpoints ("W", "b", "gamma", ...).
    regularizer : callable, optional
        A penalty R(w) such as ``minicnn.optim.L2(1e-4)``: an object with ``loss(w)`` and
        ``grad(w)``. When set, the owning layer's backward adds ``grad(w)`` to ``.grad``,
        and ``Layer.regularization_loss()`` sums ``loss(w)`` so it can be reported.

    Attributes
    ----------
    grad : array or None
        dL/d(data), same shape and dtype as ``data``; None before the first backward.
    requires_grad : bool
        False freezes the parameter: optimizers skip it.
    """

    def __init__(self, data: Any, name: str = "", regularizer: Any = None):
        self.data = data
        self.grad = None
        self.name = name
        self.regularizer = regularizer
        self.requires_grad = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def set_grad(self, g: Any) -> None:
        """Store ``g`` as the gradient, in the parameter's dtype, plus the regularizer's term."""
        g = g.astype(self.data.dtype, copy=False)
        if self.regularizer is not None:
            g = g + self.regularizer.grad(self.data)
        self.grad = g

    def __repr__(self) -> str:
        return f"Parameter({self.name or 'unnamed'}, shape={self.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class: mode handling, parameter discovery and the ``__call__`` shortcut.

    Subclasses implement ``forward`` and ``backward``. Parameters are found by looking at the
    instance attributes in definition order: a ``Parameter`` is listed, a ``Layer`` (or a list
    of layers) is searched recursively. That is why ``W`` is listed before ``b``: it is
    assigned first in ``__init__``.
    """

    def __init__(self) -> None:
        self.training = True

    # -- the two passes --------------------------------------------------------------------
    def forward(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    # -- structure -------------------------------------------------------------------------
    def children(self) -> Iterator[Layer]:
        """Direct sub-layers, in definition order."""
        for value in vars(self).values():
            if isinstance(value, Layer):
                yield value
            elif isinstance(value, (list, tuple)):
                yield from (v for v in value if isinstance(v, Layer))

    def modules(self) -> Iterator[Layer]:
        """This layer and all its descendants, depth first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def parameters(self) -> list[Parameter]:
        """Trainable parameters in definition order (``W`` before ``b``; children in order)."""
        params: list[Parameter] = []
        for value in vars(self).values():
            if isinstance(value, Parameter):
                params.append(value)
            elif isinstance(value, Layer):
                params.extend(value.parameters())
            elif isinstance(value, (list, tuple)):
                for v in value:
                    if isinstance(v, Layer):
                        params.extend(v.parameters())
        return params

    def buffers(self) -> dict[str, Any]:
        """Non-trainable state saved in checkpoints (e.g. BatchNorm's running statistics).

        Subclasses with state list their attribute names in ``_buffer_names``.
        """
        return {name: getattr(self, name) for name in getattr(self, "_buffer_names", ())}

    def workspace(self, xp: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A scratch buffer owned by this layer, reused from step to step.

        Large temporaries (a convolution's patch matrix is ~100 MB) cost as much to allocate
        as to fill: fresh memory is page-faulted in on first touch. A layer that needs the
        same shape every step asks for it here instead. The content is undefined; only the
        layer itself may keep references to it (never return a workspace to the caller).
        ``xp`` is the array module of the input (NumPy or CuPy).
        """
        buffers = self.__dict__.setdefault("_workspaces", {})
        buf = buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype or \
                get_array_module(buf) is not xp:
            buf = buffers[name] = xp.empty(shape, dtype=dtype)
        return buf

    def num_parameters(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.parameters()))

    def regularization_loss(self) -> float:
        """Sum of the parameters' regularization penalties (0.0 when none is set)."""
        total = 0.0
        for p in self.parameters():
            if p.regularizer is not None:
                total += float(p.regularizer.loss(p.data))
        return total

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Layer:
        """Training mode (batch statistics in BatchNorm, active Dropout). Returns self."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Layer:
        """Evaluation mode (running statistics, Dropout off). Returns self."""
        return self.train(False)

    # -- devices and dtypes ----------------------------------------------------------------
    def to(self, device: str) -> Layer:
        """Move parameters and buffers to ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy). Returns self."""
        if device not in ("cpu", "gpu"):
            raise ValueError(f"{type(self).__name__}.to: expected 'cpu' or 'gpu', got {device!r}")
        if device == "gpu":
            from ..backend import BackendError, _import_cupy

            cp = _import_cupy()
            if cp is None:
                raise BackendError("Layer.to('gpu'): CuPy with a working GPU is required.")
            move = cp.asarray
        else:
            move = to_numpy
        for m in self.modules():
            for p in vars(m).values():
                if isinstance(p, Parameter):
                    p.data = move(p.data)
                    p.grad = None if p.grad is None else move(p.grad)
            for name in getattr(m, "_buffer_names", ()):
                value = getattr(m, name)
                if value is not None:
                    setattr(m, name, move(value))
        return self

    def astype(self, dtype: Any) -> Layer:
        """Cast parameters and buffers to ``dtype`` in place (float64 for gradient checks)."""
        for m in self.modules():
            for p in vars(m).values():
                if isinstance(p, Parameter):
                    p.data = p.data.astype(dtype)
                    p.grad = None
            for name in getattr(m, "_buffer_names", ()):
                value = getattr(m, name)
                if value is not None and hasattr(value, "astype"):
                    setattr(m, name, value.astype(dtype))
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


# -- input checks shared by the layers ----------------------------------------------------
# Bad input must fail at the layer's door with the layer's name and the expected shape, not
# as a broadcasting error three calls deeper.

def check_float_input(layer: str, x: Any) -> Any:
    """Raise TypeError unless ``x`` is a floating-point NumPy/CuPy array; return its module."""
    xp = get_array_module(x)
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{layer}: expected an array, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(
            f"{layer}: expected a floating-point array (float32 or float64), got dtype "
            f"{x.dtype}; convert images with x.astype('float32') (and scale them) first")
    return xp


def check_ndim(layer: str, x: Any, ndim: int | tuple[int, ...], expected: str) -> None:
    """Raise ValueError unless ``x.ndim`` is ``ndim`` (or one of them)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
        raise ValueError(
            f"{layer}: expected input of shape {expected}, got shape {tuple(x.shape)} "
            f"({x.ndim} dimensions)")


def check_channels(layer: str, x: Any, channels: int, expected: str, axis: int = 1) -> None:
    """Raise ValueError unless ``x.shape[axis] == channels``."""
    if x.shape[axis] != channels:
        raise ValueError(
            f"{layer}: expected input of shape {expected} with {channels} channels at axis "
            f"{axis}, got shape {tuple(x.shape)}")


def new_array(data: Any, dtype: Any = np.float32) -> Any:
    """An array on the current backend (used to create parameters at construction)."""
    return get_xp().asarray(data, dtype=dtype)
