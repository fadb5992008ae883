"""The optimizer base class: parameter bookkeeping, the ``step`` skeleton, checkpoints.

``Optimizer.step`` walks the parameters, skips the frozen ones (``requires_grad`` False) and
those without a gradient, casts the gradient to the parameter's dtype and hands it to the
subclass's ``_update(p, g, state, lr)``, which changes ``p.data`` in place (``sgd.py``,
``adam.py``). ``state_dict`` / ``load_state_dict`` turn the per-parameter buffers into a flat
dict of NumPy arrays and numbers and back.

``to_like`` and ``as_number`` are the two helpers the optimizers, ``EMA`` and the schedules
share for their state: a buffer on its parameter's device and dtype, and a number read back
from a checkpoint.

Derivation: docs/derivations/optimizers.md
Tests: tests/test_optim.py
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..backend import to_device, to_numpy
from ..kernels import uses_kernels
from ..layers.base import Parameter
from .flat import Bucket, FlatLayout, FlatState, layout_of

__all__ = ["Optimizer", "to_like", "as_number"]


def to_like(a: Any, ref: Any) -> Any:
    """``a`` on ``ref``'s device (NumPy or CuPy) and in its dtype, copying only if needed."""
    return to_device(a, ref.dtype, like=ref)


def as_number(value: Any) -> Any:
    """A Python int/float from a number or a 0-d array (``np.load`` gives 0-d arrays).

    Raises ValueError for an array with dimensions, or a non-real entry (a damaged state).
    """
    value = np.asarray(value)
    if value.ndim != 0:
        raise ValueError(f"expected a number, got an array of shape {value.shape}")
    if value.dtype.kind not in "iuf":  # a complex, bool or string entry is a damaged state
        raise ValueError(f"expected a real number, got {value.item()!r} of dtype {value.dtype}")
    return value.item()


class Optimizer:
    """Base class: parameter bookkeeping, ``step`` skeleton, ``zero_grad`` and checkpoints.

    Parameters
    ----------
    params : iterable of Parameter, or a list of parameter-group dicts
        Usually ``model.parameters()``. Frozen ones (``requires_grad`` False) are kept in the
        list but never updated. Or groups, ``[{"params": [...], "lr_scale": s,
        "weight_decay": λ}, ...]``: the group's parameters step with ``s · lr`` (``lr_scale``
        defaults to 1) and decay with λ (default: the optimizer's ``weight_decay``). Unlike
        PyTorch, a group has no absolute ``"lr"`` (refused with a ValueError): the multiplier
        keeps ``opt.lr`` the one rate that schedules set. ``opt.param_groups`` is the list of
        groups (each ``{"params", "lr_scale", "weight_decay"}``, weight_decay None meaning the
        optimizer's); ``opt.params`` the flat list, group after group. A plain list is one
        group with lr_scale 1, and its ``state_dict`` has no group entries.
    lr : float
        The learning rate γ. A plain attribute: schedules (or you) may set ``opt.lr`` at any
        time, and the next ``step`` uses it.

    Subclasses implement ``_update(p, g, state, lr)``: change ``p.data`` in place, given the
    gradient ``g`` (in ``p``'s dtype) and ``state``, this parameter's dict of buffers (arrays
    named in ``_array_state``, integer counters named in ``_count_state``).
    """

    _array_state: tuple[str, ...] = ()
    _count_state: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter] | Iterable[Mapping[str, Any]], lr: float):
        name = type(self).__name__
        if isinstance(params, Mapping):
            raise TypeError(f"{name}: got one dict; parameter groups are passed as a list of "
                            "dicts, [{'params': [...], 'lr_scale': ...}, ...]")
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"{name}: expected an iterable of Parameter such as "
                            f"model.parameters(), got {type(params).__name__}") from None
        if not lr >= 0.0:
            raise ValueError(f"{name}: learning rate must be >= 0, got {lr}")
        # param_groups: [{"params": [...], "lr_scale": float, "weight_decay": float | None}];
        # a plain list of parameters is one group with lr_scale 1 and weight_decay None (the
        # optimizer's own ``weight_decay`` attribute).
        if items and all(isinstance(it, Mapping) for it in items):
            self.param_groups = [_parse_group(name, g, i, lr) for i, g in enumerate(items)]
            self._grouped = True
        elif any(isinstance(it, Mapping) for it in items):
            raise TypeError(f"{name}: params mixes Parameter objects and group dicts; pass "
                            "either a list of Parameter or a list of dicts {'params': [...]}")
        else:
            self.param_groups = [{"params": items, "lr_scale": 1.0, "weight_decay": None}]
            self._grouped = False
        self.params: list[Parameter] = [p for g in self.param_groups for p in g["params"]]
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: expected Parameter objects (model.parameters()), "
                                f"got {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(f"{name}: a parameter appears more than once; it would be "
                             "updated twice per step")
        self.lr = float(lr)
        self.num_steps = 0          # calls to step()
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self._group_index = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
        self._wd: float | None = None  # the current group's weight decay, set by step()

    def _weight_decay(self) -> float:
        """λ for the parameter being updated: its group's, else the optimizer's attribute."""
        wd = self._wd
        return float(getattr(self, "weight_decay", 0.0) if wd is None else wd)

    # -- the update ----------------------------------------------------------------------------
    def step(self) -> None:
        """Update every trainable parameter that has a gradient.

        On NumPy, one parameter at a time (``_update``). On CuPy (every parameter a float32
        or float64 CuPy array, and an optimizer with a fused kernel: SGD, Adam, AdamW), all
        at once: one kernel launch per parameter group over flat buffers (``_flat_step``).
        """
        lr = float(self.lr)  # a NumPy float64 here would turn float32 updates into float64
        self.num_steps += 1
        layout = self._flat_layout()
        if layout is not None:
            self._flat_step(layout, lr)
            return
        groups = self.param_groups
        for p, state, gi in zip(self.params, self.state, self._group_index, strict=True):
            if not p.requires_grad or p.grad is None:
                continue
            if tuple(p.grad.shape) != tuple(p.data.shape):
                raise ValueError(f"{type(self).__name__}: {p!r} has a gradient of shape "
                                 f"{tuple(p.grad.shape)}, expected {tuple(p.data.shape)}")
            self._follow_parameter(p, state)
            g = p.grad.astype(p.data.dtype, copy=False)
            group = groups[gi]
            scale = group["lr_scale"]
            self._wd = group["weight_decay"]
            self._update(p, g, state, lr if scale == 1.0 else lr * float(scale))
        self._wd = None

    def _update(self, p: Parameter, g: Any, state: dict[str, Any], lr: float) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    # -- the update on CuPy: one launch per run of parameters over flat buffers ---------------
    _layout: FlatLayout | None = None
    _flat_states: list[FlatState] = ()  # type: ignore[assignment]  (set with _layout)

    def _flat_layout(self) -> FlatLayout | None:
        """The flat buffers of the parameters (``minicnn.optim.flat``), made on the first CuPy
        step and checked at every step; None for the per-parameter path (NumPy, another
        dtype, mixed devices, or a subclass with no fused kernel)."""
        if type(self)._launch is Optimizer._launch or not uses_kernels(self.params[0].data):
            return None
        layout = self._layout
        if layout is not None and layout.bind():
            return layout
        layout = FlatLayout.of(self.params)
        if layout is not None:
            self._flat_states = [FlatState(b) for b in layout.buckets]
        self._layout = layout
        return layout

    def _flat_step(self, layout: FlatLayout, lr: float) -> None:
        """``step`` on flat buffers: per bucket (device, dtype), bring the gradients and the
        state into the flat buffers where they are not already (a restored state, a gradient
        assigned by hand or by ``DataParallel``: one copy each), cut the parameters with a
        gradient into runs that share a group and a state (Adam's t; SGD's first step), and
        launch the kernel once per run: once per group when every parameter has a gradient.
        """
        for bucket, fs in zip(layout.buckets, self._flat_states, strict=True):
            todo: list[list[Any]] = []
            for j, k in enumerate(bucket.members):
                p, state = self.params[k], self.state[k]
                for key in self._array_state:
                    held = state.get(key)
                    if held is not None and held is not fs.view(key, j):  # loaded, or moved
                        view = fs.view(key, j)
                        view[...] = to_like(held, view)
                        state[key] = view
                if not p.requires_grad or p.grad is None:
                    continue
                if tuple(p.grad.shape) != tuple(p.data.shape):
                    raise ValueError(f"{type(self).__name__}: {p!r} has a gradient of shape "
                                     f"{tuple(p.grad.shape)}, expected {tuple(p.data.shape)}")
                if p.grad is not bucket.grad_views[j]:
                    bucket.grad_views[j][...] = p.grad           # cast to the parameter's dtype
                key = (self._group_index[k], self._run_key(state))
                if todo and todo[-1][0] == key and todo[-1][2] == j:
                    todo[-1][2] = j + 1
                else:
                    todo.append([key, j, j + 1])
            if todo and fs.lr != lr:   # γ goes to the device only when it changed: a fill
                fs.hyper[0] = lr
                fs.lr = lr
            for (gi, _), j0, j1 in todo:
                group = self.param_groups[gi]
                self._wd = group["weight_decay"]
                self._launch(bucket, fs, j0, j1, group["lr_scale"])
        self._wd = None

    def _run_key(self, state: dict[str, Any]) -> Any:
        """What the parameters of one launch must share besides their group (Adam: t)."""
        return None

    def _launch(self, bucket: Bucket, fs: FlatState, j0: int, j1: int,
                lr_scale: float) -> None:
        """Update members ``j0 .. j1 - 1`` of ``bucket`` in one kernel launch, and their
        entries of ``self.state`` (the views ``fs.view(key, j)``, the counters); the fused
        optimizers implement it."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _step_arrays(self, flat: bool | None) -> tuple[bool, dict[Any, Any]]:
        """The device arrays a ``step`` may write, keyed so that a later call finds the same
        ones (``LossScaler`` puts them back after an overflow): with ``flat`` (None: whether
        every parameter is now a view of this optimizer's flat buffers) the flat parameter
        and state buffers, one per bucket; else each trainable parameter and its state
        arrays. Returns (flat, arrays)."""
        layout = self._layout
        if flat is None:
            flat = layout is not None and all(layout_of(p) is not None for p in self.params)
        arrays: dict[Any, Any] = {}
        if flat and layout is not None:
            for b, (bucket, fs) in enumerate(zip(layout.buckets, self._flat_states,
                                                 strict=True)):
                arrays[("flat", b)] = bucket.data
                for key, buf in fs.buffers.items():
                    arrays[("flat", b, key)] = buf
            return flat, arrays
        for i, (p, state) in enumerate(zip(self.params, self.state, strict=True)):
            if p.requires_grad:
                arrays[("param", i)] = p.data
            for key in self._array_state:
                if state.get(key) is not None:
                    arrays[("state", i, key)] = state[key]
        return flat, arrays

    def _follow_parameter(self, p: Parameter, state: dict[str, Any]) -> None:
        """Move the buffers to the parameter's device and dtype if it changed (``model.to``)."""
        for key in self._array_state:
            buf = state.get(key)
            if buf is not None and (type(buf) is not type(p.data) or buf.dtype != p.data.dtype):
                state[key] = to_like(buf, p.data)

    def zero_grad(self) -> None:
        """Set every gradient to None (optional: backward passes assign, not accumulate)."""
        for p in self.params:
            p.grad = None

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as a flat dict of numbers and NumPy arrays.

        Keys: ``"lr"``, ``"step"`` (calls to ``step``), ``"num_params"``, and per parameter
        ``"<buffer>.<i>"`` for the i-th parameter of ``params`` (e.g. ``"m.0"``, ``"t.0"``).
        Arrays are copies, so the dict can be kept while training goes on, and saved with
        ``np.savez``.
        """
        d: dict[str, Any] = {"lr": float(self.lr), "step": int(self.num_steps),
                             "num_params": len(self.params)}
        for i, state in enumerate(self.state):
            for key, value in state.items():
                if key in self._array_state:
                    d[f"{key}.{i}"] = np.array(to_numpy(value))
                else:
                    d[f"{key}.{i}"] = int(value)
        if self._grouped:  # the groups' settings, as PyTorch's state_dict keeps its param_groups
            d["num_groups"] = len(self.param_groups)
            for j, group in enumerate(self.param_groups):
                d[f"group_size.{j}"] = len(group["params"])
                d[f"lr_scale.{j}"] = float(group["lr_scale"])
                wd = group["weight_decay"]
                d[f"weight_decay.{j}"] = float("nan") if wd is None else float(wd)
        return d

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a dict, or the ``np.load`` of a ``.npz``).

        The buffers go to each parameter's device and dtype. Raises ValueError when the dict
        was made for a different list of parameters (count or shapes) or another optimizer.
        """
        name = type(self).__name__
        n = int(as_number(d["num_params"]))
        if n != len(self.params):
            raise ValueError(f"{name}.load_state_dict: state is for {n} parameter(s), "
                             f"this optimizer has {len(self.params)}")
        new_groups = self._load_groups(d)
        new_state: list[dict[str, Any]] = [{} for _ in self.params]
        for key in d:
            if key in ("lr", "step", "num_params", "num_groups"):
                continue
            if key.rpartition(".")[0] in _GROUP_KEYS and "num_groups" in d:
                continue
            buf_name, _, index = key.rpartition(".")
            known = buf_name in self._array_state or buf_name in self._count_state
            if not known or not index.isdigit() or int(index) >= n:
                raise ValueError(f"{name}.load_state_dict: unexpected key {key!r} (state of "
                                 "another optimizer?)")
            p = self.params[int(index)]
            if buf_name in self._array_state:
                value = np.asarray(d[key])
                if value.dtype.kind not in "iuf":
                    raise ValueError(f"{name}.load_state_dict: {key!r} has dtype {value.dtype}, "
                                     f"expected real numbers")
                if tuple(value.shape) != p.shape:
                    raise ValueError(f"{name}.load_state_dict: {key!r} has shape "
                                     f"{tuple(value.shape)}, but {p!r} has shape {p.shape}")
                new_state[int(index)][buf_name] = to_like(value, p.data)
            else:
                new_state[int(index)][buf_name] = int(as_number(d[key]))
        lr, num_steps = float(as_number(d["lr"])), int(as_number(d["step"]))
        self.state, self.lr, self.num_steps = new_state, lr, num_steps  # all checked: commit
        for group, (scale, wd) in zip(self.param_groups, new_groups, strict=True):
            group["lr_scale"], group["weight_decay"] = scale, wd

    def _load_groups(self, d: Mapping[str, Any]) -> list[tuple[float, float | None]]:
        """The groups' (lr_scale, weight_decay) from ``d``, checked against this optimizer's
        groups; the current ones when ``d`` has none (a state saved from a plain list)."""
        name = type(self).__name__
        current = [(g["lr_scale"], g["weight_decay"]) for g in self.param_groups]
        if "num_groups" not in d:
            return current
        n = int(as_number(d["num_groups"]))
        if n != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: state is for {n} parameter group(s), "
                             f"this optimizer has {len(self.param_groups)}")
        out = []
        for j, group in enumerate(self.param_groups):
            size = int(as_number(d[f"group_size.{j}"]))
            if size != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: group {j} of the state has {size} "
                                 f"parameter(s), this optimizer's has {len(group['params'])}")
            scale = float(as_number(d[f"lr_scale.{j}"]))
            wd = float(as_number(d[f"weight_decay.{j}"]))
            if not scale >= 0.0 or not (wd >= 0.0 or math.isnan(wd)):
                raise ValueError(f"{name}.load_state_dict: group {j} has lr_scale {scale}, "
                                 f"weight_decay {wd}")
            out.append((scale, None if math.isnan(wd) else wd))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr:g}, {len(self.params)} parameters)"


_GROUP_KEYS = ("group_size", "lr_scale", "weight_decay")
_GROUP_FIELDS = ("params", "lr_scale", "weight_decay")


def _parse_group(name: str, group: Mapping[str, Any], index: int, lr: float) -> dict[str, Any]:
    """Check one parameter group ``{"params": [...], "lr_scale": s, "weight_decay": λ}``."""
    where = f"{name}: parameter group {index}"
    if "lr" in group:
        raise ValueError(f"{where} has an absolute 'lr' ({group['lr']!r}); minicnn groups take "
                         f"a multiplier of the optimizer's lr instead, so that opt.lr and the "
                         f"schedules keep scaling every group: use 'lr_scale' (here "
                         f"lr_scale = group lr / {lr:g})")
    unknown = sorted(set(group) - set(_GROUP_FIELDS))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {unknown}; a group takes "
                         f"{list(_GROUP_FIELDS)}")
    if "params" not in group:
        raise ValueError(f"{where} has no 'params' entry")
    raw = group["params"]
    if isinstance(raw, Parameter):
        params = [raw]
    else:
        try:
            params = list(raw)
        except TypeError:
            raise TypeError(f"{where}: 'params' must be a Parameter or a list of them, got "
                            f"{type(raw).__name__}") from None
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"{where}: 'params' must hold Parameter objects, got "
                            f"{type(p).__name__}")
    scale = group.get("lr_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not float(scale) >= 0.0:
        raise ValueError(f"{where}: lr_scale must be a number >= 0, got {scale!r}")
    wd = group.get("weight_decay")
    if wd is not None and (isinstance(wd, bool)
                           or not isinstance(wd, (int, float, np.integer, np.floating))
                           or not float(wd) >= 0.0):
        raise ValueError(f"{where}: weight_decay must be a number >= 0, got {wd!r}")
    return {"params": params, "lr_scale": float(scale),
            "weight_decay": None if wd is None else float(wd)}
