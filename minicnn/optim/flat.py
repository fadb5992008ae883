"""Flat parameter and gradient buffers: what lets one kernel launch update every parameter.

On CuPy an optimizer step written per parameter costs ~13 launches per parameter (Adam), and
a GPU step is bound by launching. So the CuPy optimizers keep the parameters of one (device,
dtype) in one flat buffer, a ``Bucket``::

    bucket.data = [θ_0 θ_1 ... θ_k]      each p.data is a view: data[offset:offset + size]
    bucket.grad = [g_0 g_1 ... g_k]      p._grad_buffer is a view: Parameter.set_grad writes
                                         the layer's gradient there (one copy per parameter)

and their state (momentum, Adam's moments, EMA's shadow) in flat buffers of the same layout;
``minicnn/kernels/optimizer.cu`` then updates a whole run of parameters in one launch.

Anything may still rebind ``p.data`` (``load_state_dict``, ``conv.W.data = ...``, a checkpoint
restore, ``model.to``): ``FlatLayout.bind`` checks at every step that each ``p.data`` *is* its
view (an identity test per parameter, no launch) and otherwise copies the new value into the
view and binds the view again. A new shape, dtype or device needs a new layout (``bind``
returns False). ``p.grad`` may be anything too (None, the view, another array such as
``DataParallel``'s bucket): the optimizer copies what is not already in place.

The NumPy backend keeps its per-parameter code (``minicnn/optim/sgd.py``, ``adam.py``): on a
CPU a step costs its arithmetic, not its operation count.

Tests: tests/test_kernels_optimizer.py
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..backend import get_array_module
from ..layers.base import Parameter

__all__ = ["Bucket", "FlatLayout", "FlatState", "flat_key", "layout_of", "runs"]

# The dtypes the kernels are compiled for.
_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def flat_key(a: Any) -> tuple[Any, int, Any] | None:
    """(array type, device id, dtype) of a CuPy float32/float64 array: the bucket it goes to;
    None when no kernel takes it (NumPy, another dtype)."""
    if get_array_module(a) is np or a.dtype not in _KERNEL_DTYPES:
        return None
    return type(a), int(a.device.id), a.dtype


class Bucket:
    """The parameters of one (device, dtype), in one flat ``data`` and one flat ``grad``.

    Attributes
    ----------
    members : list[int]
        Positions of its parameters in ``FlatLayout.params``, in order.
    offsets, sizes : list[int]
        Where member ``j`` lives: ``data[offsets[j]:offsets[j] + sizes[j]]``.
    data, grad : arrays (n,)
    data_views, grad_views : list of arrays
        Member ``j``'s views, in its parameter's shape.
    """

    def __init__(self, xp: Any, dtype: Any, params: list[Parameter], members: list[int]):
        self.members = members
        self.sizes = [int(params[k].data.size) for k in members]
        self.offsets = [int(o) for o in np.cumsum([0] + self.sizes[:-1])]
        self.n = int(sum(self.sizes))
        self.dtype = np.dtype(dtype)
        self.data = xp.empty(self.n, dtype=dtype)
        self.grad = xp.zeros(self.n, dtype=dtype)
        self.data_views = [self.view(self.data, j, params[k].shape)
                           for j, k in enumerate(members)]
        self.grad_views = [self.view(self.grad, j, params[k].shape)
                           for j, k in enumerate(members)]

    def view(self, flat: Any, j: int, shape: tuple[int, ...]) -> Any:
        """Member ``j``'s slice of ``flat`` (a buffer of this layout), in ``shape``."""
        start = self.offsets[j]
        return flat[start:start + self.sizes[j]].reshape(shape)

    def span(self, flat: Any, j0: int, j1: int) -> Any:
        """Members ``j0 .. j1 - 1`` of ``flat``: one contiguous slice, what a launch takes."""
        start = self.offsets[j0]
        return flat[start:self.offsets[j1 - 1] + self.sizes[j1 - 1]]

    def zeros_like(self) -> Any:
        """A new flat buffer of this layout, zero-filled (state: momentum, moments)."""
        return get_array_module(self.data).zeros(self.n, dtype=self.dtype)


# Parameter -> (layout, bucket, member index) of the layout whose view its data last was.
_MEMBER: weakref.WeakKeyDictionary[Parameter, tuple[FlatLayout, Bucket, int]] = \
    weakref.WeakKeyDictionary()


class FlatLayout:
    """The flat buffers of ``params`` (all on CuPy, float32 or float64), one ``Bucket`` per
    (device, dtype), parameters in list order. Building it copies every value in once and
    makes each ``p.data`` a view (``p._grad_buffer`` the gradient's view)."""

    def __init__(self, params: list[Parameter]):
        self.params = list(params)
        order: dict[Any, list[int]] = {}
        for k, p in enumerate(self.params):
            key = flat_key(p.data)
            if key is None:
                raise TypeError(f"FlatLayout: {p!r} is not a CuPy float32/float64 array")
            order.setdefault(key, []).append(k)
        self.buckets: list[Bucket] = []
        for (_, _, dtype), members in order.items():
            xp = get_array_module(self.params[members[0]].data)
            bucket = Bucket(xp, dtype, self.params, members)
            for j, k in enumerate(members):
                p = self.params[k]
                bucket.data_views[j][...] = p.data          # the values, copied in once
                p.data = bucket.data_views[j]
                p._grad_buffer = bucket.grad_views[j]
                _MEMBER[p] = (self, bucket, j)
            self.buckets.append(bucket)

    @classmethod
    def of(cls, params: Iterable[Parameter]) -> FlatLayout | None:
        """The layout of ``params``: an existing one that holds exactly these parameters in
        this order (two optimizers, or an optimizer rebuilt, share it), else a new one; None
        when some parameter is not a CuPy float32/float64 array (the per-parameter path)."""
        params = list(params)
        if any(flat_key(p.data) is None for p in params):
            return None
        found = _MEMBER.get(params[0]) if params else None
        if found is not None:
            layout = found[0]
            if len(layout.params) == len(params) and all(
                    a is b for a, b in zip(layout.params, params, strict=True)) \
                    and layout.bind():
                return layout
        return cls(params)

    def bind(self) -> bool:
        """Make every ``p.data`` its view again; False when one changed shape, dtype or device
        (then a new layout is needed).

        A rebound ``p.data`` (``load_state_dict``, ``p.data = new``) of the same shape, dtype
        and device is copied into the view (one launch), and the view bound again: later
        changes go to the flat buffer, not to the array that was assigned.
        """
        for bucket in self.buckets:
            for j, k in enumerate(bucket.members):
                p = self.params[k]
                view = bucket.data_views[j]
                if p.data is view:
                    continue
                new = p.data
                if flat_key(new) != flat_key(view) or tuple(new.shape) != tuple(view.shape):
                    return False
                view[...] = new
                p.data = view
                p._grad_buffer = bucket.grad_views[j]
                _MEMBER[p] = (self, bucket, j)
        return True


class FlatState:
    """An optimizer's flat buffers for one ``Bucket``: its state buffers (``flat(key)``, made
    on first use, and ``view(key, j)``, member j's view: what ``self.state`` holds), and
    ``hyper``, the float64 device array the kernels read the per-step numbers from:
    hyper[0] = γ, and per run starting at member j a step counter in cells 1 + 2j, 2 + 2j
    (see ``minicnn/kernels/optimizer.cu``). ``lr`` and ``counters`` mirror on the host what
    the device holds, so that it is written only when it differs (never in a steady loop)."""

    def __init__(self, bucket: Bucket):
        self.bucket = bucket
        self.buffers: dict[str, Any] = {}
        self.views: dict[str, list[Any]] = {}
        xp = get_array_module(bucket.data)
        self.hyper = xp.zeros(1 + 2 * len(bucket.members), dtype=np.float64)
        self.lr: float | None = None
        self.counters: dict[int, tuple[int, int]] = {}   # slot -> (parity, count held there)

    def flat(self, key: str) -> Any:
        """The flat state buffer ``key`` (zeros when new)."""
        if key not in self.buffers:
            b = self.bucket
            flat = self.buffers[key] = b.zeros_like()
            self.views[key] = [b.view(flat, j, v.shape) for j, v in enumerate(b.data_views)]
        return self.buffers[key]

    def view(self, key: str, j: int) -> Any:
        """Member ``j``'s view of the flat state buffer ``key``."""
        self.flat(key)
        return self.views[key][j]

    def counter(self, slot: int, count: int) -> int:
        """The parity of the step counter at ``slot`` for a launch that reads ``count`` (the
        count is written first if the device holds another one); flips it for the next."""
        parity, held = self.counters.get(slot, (0, None))
        if held != count:
            self.hyper[slot + parity] = float(count)
        self.counters[slot] = (1 - parity, count + 1)
        return parity


def layout_of(p: Parameter) -> tuple[FlatLayout, Bucket, int] | None:
    """(layout, bucket, member index) when ``p.data`` is a view of a flat buffer, else None."""
    found = _MEMBER.get(p)
    if found is None or found[1].data_views[found[2]] is not p.data:
        return None
    return found


def runs(params: list[Parameter]) -> list[tuple[Bucket, int, int, int, int]] | None:
    """``params`` cut into runs that lie back to back in one bucket's flat buffer:
    ``(bucket, j0, j1, i0, i1)`` = members ``j0 .. j1 - 1`` are ``params[i0:i1]``. None when
    some parameter is not in a flat buffer (``EMA`` then takes the per-parameter path)."""
    out: list[list[Any]] = []
    for i, p in enumerate(params):
        found = layout_of(p)
        if found is None:
            return None
        _, bucket, j = found
        if out and out[-1][0] is bucket and out[-1][2] == j:
            out[-1][2], out[-1][4] = j + 1, i + 1
        else:
            out.append([bucket, j, j + 1, i, i + 1])
    return [tuple(r) for r in out]  # type: ignore[misc]
