"""The two building blocks every layer shares: ``Parameter`` and ``Layer``.

The layer contract (what every layer in ``minicnn.layers`` does, and a new one must do):

- ``forward(x)`` computes the output and stores what the backward pass needs in
  ``self.cache`` (set to None in ``__init__``);
- ``backward(dout) -> dx``: given dL/d(output), fills ``p.grad`` = dL/dp for each of its
  parameters and returns dL/dx. It reads the cache through ``self.cached()``, which raises a
  clear ``RuntimeError`` when forward has not run. It never modifies ``dout`` in place (a
  residual branch may share the same array). It may return None when ``self.input_grad`` is
  False (the first layer of a model: nobody needs dL/d(image)); a layer that honours this
  flag says so;
- parameters are ``Parameter`` attributes, sub-layers are ``Layer`` attributes (or lists,
  tuples, dicts of them), buffers (non-trained state saved in checkpoints, e.g. BatchNorm's
  running statistics) are attributes named in the class attribute ``_buffer_names``. One walk
  (``named_modules``) finds them all, in definition order; everything else — ``parameters``,
  ``state_dict``, ``to``, ``astype``, ``train``/``eval`` — is built on it;
- what a layer keeps from forward to backward (its ``cache``) is what backward needs, no
  more: a reference to its input or its output (free: the layers around hold them anyway)
  and to the weights it used; arrays of at most the input's or the output's size made in
  forward (BatchNorm's x - mu, Dropout's mask, max pooling's y); per-channel statistics.
  In bytes: at most its input plus its output (twice its input for a convolution), the
  parameters not counted. Never a scratch buffer, and nothing that grows with the kernel: a
  convolution keeps x, not its KH·KW-times larger patch matrix, and builds a patch matrix
  again in backward. ``tests/test_memory.py`` measures every exported layer against this
  bound. Since a layer may keep its input by reference, no layer modifies its input in
  place, and a caller must not either before the backward;
- large temporaries that die with their pass (a patch matrix, a padded copy) come from the
  scratch arena that all layers share (``minicnn.functional.scratch``: ``scratch(xp, name,
  shape, dtype)``, also ``self.workspace(xp, name, shape, dtype)``): valid until the next
  request for the same name, so never kept in the cache nor returned to the caller. A model
  then holds its largest layer's scratch once, not every layer's;
- the cache is dropped when a layer is pickled or deep-copied (``__getstate__``);
- ``train()`` / ``eval()`` set the mode (BatchNorm and Dropout behave differently);
  ``with model.mode(training=False):`` sets it for a block and restores every module's own
  mode afterwards.

There is no autograd: each layer's ``backward`` is the chain rule written out by hand.

Gradients are *assigned*, not accumulated: a backward pass overwrites ``p.grad``, so there is
no ``zero_grad`` to forget (one consequence: a layer object used twice in one model is not
supported).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..backend import get_array_module, get_cupy, get_xp, to_numpy
from ..functional.scratch import scratch
from .summary import summary

__all__ = ["Parameter", "Layer", "evaluating", "check_float_input", "check_ndim",
           "check_channels", "new_array"]

# Attributes that hold per-step state: never pickled, copied or saved.
_TRANSIENT = ("cache",)


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

    On CuPy an optimizer keeps all parameters in one flat buffer (``minicnn.optim.flat``):
    ``data`` is then a view of it, and ``set_grad`` writes the gradient into this parameter's
    view of the optimizer's flat gradient buffer (``_grad_buffer``) instead of binding a new
    array, so that one kernel launch updates every parameter.
    """

    # The view of an optimizer's flat gradient buffer that ``set_grad`` writes into (CuPy);
    # None: ``set_grad`` binds ``g`` itself. Never pickled or copied (see __getstate__).
    _grad_buffer: Any = None

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
        """Store ``g`` as the gradient, in the parameter's dtype, plus the regularizer's term.

        With a flat gradient buffer (CuPy, an optimizer's), ``g`` is copied into this
        parameter's view of it and ``grad`` is that view; otherwise ``grad`` is ``g``.
        """
        buf = self._grad_buffer
        if g is buf is not None:  # written in place by the layer (``grad_out``): no copy
            self.grad = buf
            return
        g = g.astype(self.data.dtype, copy=False)
        if self.regularizer is not None:
            g = g + self.regularizer.grad(self.data)
        if buf is not None and type(buf) is type(g) and buf.shape == g.shape \
                and buf.dtype == g.dtype:
            if g is not buf:  # in place: the optimizer reads the whole flat buffer at once
                buf[...] = g
            g = buf
        self.grad = g

    def grad_out(self, like: Any) -> Any:
        """Where a layer may write this parameter's gradient itself, then pass it to
        ``set_grad`` (which then copies nothing): the parameter's view of the optimizer's flat
        gradient buffer (CuPy), when it exists, has ``like``'s array type and dtype and no
        regularizer term must be added; else None (the layer makes a new array)."""
        buf = self._grad_buffer
        if buf is None or self.regularizer is not None or type(buf) is not type(like) \
                or buf.dtype != like.dtype:
            return None
        return buf

    def __getstate__(self) -> dict[str, Any]:
        # A pickled or deep-copied parameter has no optimizer: it binds its gradients.
        state = dict(self.__dict__)
        state.pop("_grad_buffer", None)
        return state

    def __repr__(self) -> str:
        return f"Parameter({self.name or 'unnamed'}, shape={self.shape}, dtype={self.data.dtype})"


class Layer:
    """Base class: the model walk, state dicts, modes, devices and the ``__call__`` shortcut.

    Subclasses implement ``forward`` and ``backward`` (see the module docstring for the whole
    contract). Structure is found by a plain walk over the instance attributes in definition
    order — no registration, no ``__setattr__`` magic: a ``Parameter`` is a parameter, a
    ``Layer`` (or a list, tuple or dict of layers) is a sub-layer. That is why ``W`` is listed
    before ``b``: it is assigned first in ``__init__``.
    """

    _buffer_names: tuple[str, ...] = ()
    input_grad = True

    def __init__(self) -> None:
        self.training = True
        self.cache: Any = None

    # -- the two passes --------------------------------------------------------------------
    def forward(self, x: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x: Any) -> Any:
        return self.forward(x)

    def cached(self) -> Any:
        """What forward stored for backward; a clear error when there is nothing."""
        cache = self.__dict__.get("cache")
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward (or after the cache "
                f"was dropped by a copy): run forward on this batch first")
        return cache

    # -- structure: one walk ---------------------------------------------------------------
    def named_children(self) -> list[tuple[str, Layer]]:
        """Direct sub-layers with their attribute names, in definition order.

        A list or tuple attribute ``layers`` gives ``layers.0``, ``layers.1``, ...; a dict
        attribute ``branches`` gives ``branches.<key>``.
        """
        found: list[tuple[str, Layer]] = []
        for key, value in vars(self).items():
            if isinstance(value, Layer):
                found.append((key, value))
            elif isinstance(value, (list, tuple)):
                found += [(f"{key}.{i}", v) for i, v in enumerate(value) if isinstance(v, Layer)]
            elif isinstance(value, dict):
                found += [(f"{key}.{k}", v) for k, v in value.items() if isinstance(v, Layer)]
        return found

    def named_modules(self, prefix: str = "") -> list[tuple[str, Layer]]:
        """This layer (name ``prefix``, "" at the top) and all its descendants, depth first,
        with dotted names like PyTorch's (``layers.3.body.layers.0``)."""
        found = [(prefix, self)]
        for name, child in self.named_children():
            found += child.named_modules(f"{prefix}.{name}" if prefix else name)
        return found

    def named_parameters(self) -> list[tuple[str, Parameter]]:
        """``(dotted name, Parameter)`` in definition order (``layers.0.W``, ``layers.0.b``)."""
        return [(_join(prefix, key), value) for prefix, m in self.named_modules()
                for key, value in vars(m).items() if isinstance(value, Parameter)]

    def named_buffers(self) -> list[tuple[str, Any]]:
        """``(dotted name, array)`` of the buffers (``layers.1.running_mean``); None skipped."""
        return [(_join(prefix, name), getattr(m, name)) for prefix, m in self.named_modules()
                for name in m._buffer_names if getattr(m, name, None) is not None]

    def children(self) -> Iterator[Layer]:
        """Direct sub-layers, in definition order."""
        return iter([child for _, child in self.named_children()])

    def modules(self) -> Iterator[Layer]:
        """This layer and all its descendants, depth first."""
        return iter([m for _, m in self.named_modules()])

    def parameters(self) -> list[Parameter]:
        """Trainable parameters in definition order (``W`` before ``b``; children in order)."""
        return [p for _, p in self.named_parameters()]

    def buffers(self) -> dict[str, Any]:
        """Non-trainable state saved in checkpoints (e.g. BatchNorm's running statistics),
        by dotted name. A layer lists its own in the class attribute ``_buffer_names``."""
        return dict(self.named_buffers())

    # -- state dicts -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every parameter's and buffer's array by dotted name (references, not copies).

        The names are those of ``named_parameters`` and ``named_buffers``; PyTorch's
        ``model.state_dict()`` uses the same scheme, so the two can be compared key by key.
        """
        state = {name: p.data for name, p in self.named_parameters()}
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Layer:
        """Copy ``state``'s arrays into this model's parameters and buffers (in place).

        Everything is checked before anything changes: a key the model lacks (unexpected),
        a key the model has but ``state`` lacks (missing; both only with ``strict=True``) or a
        shape that differs raises ``ValueError`` naming the key, and leaves the model as it
        was. Values keep the model's device and dtype. Returns self.
        """
        own = self._state_slots()
        cls = type(self).__name__
        if strict:
            missing = [k for k in own if k not in state]
            unexpected = [k for k in state if k not in own]
            if missing or unexpected:
                raise ValueError(
                    f"{cls}.load_state_dict: missing keys {missing or 'none'}, unexpected keys "
                    f"{unexpected or 'none'} (is this the state of another model?)")
        for key, value in state.items():
            if key in own and tuple(np.shape(value)) != tuple(own[key][2].shape):
                raise ValueError(
                    f"{cls}.load_state_dict: {key!r} has shape {tuple(np.shape(value))}, the "
                    f"model's has {tuple(own[key][2].shape)}")
        for key, value in state.items():
            if key not in own:
                continue
            owner, attr, current = own[key]
            xp = get_array_module(current)
            new = xp.asarray(to_numpy(value) if xp is np else value, dtype=current.dtype)
            if isinstance(owner, Parameter):
                owner.data = new.copy() if new is value else new
            else:
                setattr(owner, attr, new.copy() if new is value else new)
        return self

    def _state_slots(self) -> dict[str, tuple[Any, str, Any]]:
        """dotted name -> (owner, attribute, current array): where ``load_state_dict`` writes."""
        slots: dict[str, tuple[Any, str, Any]] = {}
        for prefix, m in self.named_modules():
            for key, value in vars(m).items():
                if isinstance(value, Parameter):
                    slots[_join(prefix, key)] = (value, "data", value.data)
            for name in m._buffer_names:
                if getattr(m, name, None) is not None:
                    slots[_join(prefix, name)] = (m, name, getattr(m, name))
        return slots

    def rng_states(self) -> dict[str, Any]:
        """The state of every NumPy random generator a module holds (Dropout's masks), by
        dotted name (``layers.5.rng``): saved in checkpoints so a resumed run draws the same
        masks, and replayed by the gradient check."""
        return {_join(prefix, key): value.bit_generator.state
                for prefix, m in self.named_modules() for key, value in vars(m).items()
                if isinstance(value, np.random.Generator)}

    def set_rng_states(self, states: dict[str, Any]) -> Layer:
        """Restore generator states from ``rng_states()`` (unknown names are ignored)."""
        for prefix, m in self.named_modules():
            for key, value in vars(m).items():
                name = _join(prefix, key)
                if isinstance(value, np.random.Generator) and name in states:
                    value.bit_generator.state = states[name]
        return self

    # -- sizes -----------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.parameters()))

    def regularization_loss(self) -> Any:
        """Sum of the parameters' regularization penalties (0.0 when none is set).

        A 0-d array on the parameters' device (no host synchronisation per parameter); call
        ``float()`` on it to print it.
        """
        total: Any = 0.0
        for p in self.parameters():
            if p.regularizer is not None:
                total = total + p.regularizer.loss(p.data)
        return total

    def summary(self, input_shape: tuple[int, ...] | None = None,
                print_fn: Callable[[str], Any] | None = print) -> str:
        """Print (with ``print_fn``; None: quiet) and return a table of the modules, their
        parameter counts and (given ``input_shape`` without the batch axis, or the one a
        builder recorded) output shapes; see ``minicnn.layers.summary.summary``."""
        return summary(self, input_shape, print_fn)

    # -- scratch memory --------------------------------------------------------------------
    def workspace(self, xp: Any, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        """A scratch buffer for the pass now running: ``scratch(xp, name, shape, dtype)`` of
        ``minicnn.functional.scratch``, the arena every layer shares.

        Large temporaries (a convolution's patch matrix is ~100 MB) cost as much to allocate
        as to fill: fresh memory is page-faulted in on first touch. The arena hands out memory
        already touched, one buffer per name for all layers. The content is undefined and the
        buffer is valid until the next request for ``name`` (the next layer's pass): never
        keep it in ``self.cache`` and never return it to the caller. ``xp`` is the array
        module of the input (NumPy or CuPy).
        """
        return scratch(xp, name, shape, dtype)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deep-copy without the per-step cache (it may hold device arrays and is
        rebuilt by the next forward)."""
        state = dict(self.__dict__)
        for key in _TRANSIENT:
            if key in state:
                state[key] = None
        return state

    # -- modes -----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Layer:
        """Training mode (batch statistics in BatchNorm, active Dropout). Returns self."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Layer:
        """Evaluation mode (running statistics, Dropout off). Returns self."""
        return self.train(False)

    @contextlib.contextmanager
    def mode(self, training: bool = False) -> Iterator[Layer]:
        """``with model.mode(training=False):`` — set the mode for a block, then give every
        module back its own previous mode (a frozen BatchNorm stays in eval)."""
        saved = [(m, m.training) for m in self.modules()]
        self.train(training)
        try:
            yield self
        finally:
            for m, was in saved:
                m.training = was

    # -- devices and dtypes ----------------------------------------------------------------
    def _apply(self, fn: Callable[[Any], Any], grads: Callable[[Any], Any] | None = None) -> Layer:
        """Replace every parameter's and buffer's array ``a`` by ``fn(a)``; gradients by
        ``grads(g)`` (dropped when None). The one place behind ``to`` and ``astype``."""
        for _, m in self.named_modules():
            for value in vars(m).values():
                if isinstance(value, Parameter):
                    value.data = fn(value.data)
                    value.grad = None if value.grad is None or grads is None else grads(value.grad)
            for name in m._buffer_names:
                if getattr(m, name, None) is not None:
                    setattr(m, name, fn(getattr(m, name)))
            m.cache = None  # cached arrays live on the old device / in the old dtype
        return self

    def to(self, device: str) -> Layer:
        """Move parameters and buffers to ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy). Returns self."""
        if device not in ("cpu", "gpu"):
            raise ValueError(f"{type(self).__name__}.to: expected 'cpu' or 'gpu', got {device!r}")
        move = get_cupy().asarray if device == "gpu" else to_numpy
        return self._apply(move, move)

    def astype(self, dtype: Any) -> Layer:
        """Cast parameters and buffers to ``dtype`` in place (float64 for gradient checks)."""
        return self._apply(lambda a: a.astype(dtype))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@contextlib.contextmanager
def evaluating(model: Layer) -> Iterator[Layer]:
    """``with evaluating(model):`` is ``with model.mode(training=False):``."""
    with model.mode(training=False):
        yield model


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
