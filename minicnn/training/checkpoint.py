"""Checkpoints: ``save`` / ``load`` a model with its optimizer, scheduler and RNG states.

A checkpoint is an ``.npz`` readable with ``allow_pickle=False``, written atomically (temporary
file, then rename), so a run can be resumed exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
import types
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import init as initializers
from ..backend import get_array_module, get_xp, to_numpy
from ..layers.base import Layer, Parameter
from .history import History

__all__ = ["save", "load", "Checkpoint", "named_parameters", "named_buffers", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "minicnn-checkpoint-1"


def _named(layer: Layer, prefix: str = "") -> Iterable[tuple[str, Any, str, Layer]]:
    """(dotted name, value, attribute, owner) of every Parameter and buffer, in model order.

    Names follow the attributes, e.g. ``layers.0.W``, ``layers.3.body.layers.1.running_mean``.
    The order is that of ``Layer.parameters()``.
    """
    for key, value in vars(layer).items():
        if isinstance(value, Parameter):
            yield prefix + key, value, key, layer
        elif isinstance(value, Layer):
            yield from _named(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, Layer):
                    yield from _named(v, f"{prefix}{key}.{i}.")
    for name in getattr(layer, "_buffer_names", ()):
        yield prefix + name, getattr(layer, name), name, layer


def named_parameters(model: Layer) -> list[tuple[str, Parameter]]:
    """``(name, Parameter)`` pairs in ``model.parameters()`` order."""
    return [(n, v) for n, v, _, _ in _named(model) if isinstance(v, Parameter)]


def named_buffers(model: Layer) -> list[tuple[str, Any]]:
    """``(name, array)`` pairs of the non-trainable state (BatchNorm running statistics)."""
    return [(n, v) for n, v, attr, owner in _named(model)
            if attr in getattr(owner, "_buffer_names", ()) and not isinstance(v, Parameter)]


def _generators(obj: Any, prefix: str, depth: int = 3) -> list[tuple[str, np.random.Generator]]:
    """NumPy generators held by ``obj`` (a loader, its transforms, a model's Dropout layers)."""
    if isinstance(obj, Layer):
        return [(f"{prefix}{i}.{k}", v) for i, m in enumerate(obj.modules())
                for k, v in vars(m).items() if isinstance(v, np.random.Generator)]
    found: list[tuple[str, np.random.Generator]] = []
    if isinstance(obj, np.random.Generator):
        return [(prefix.rstrip("."), obj)]
    if depth == 0 or obj is None or isinstance(
            obj, (np.ndarray, str, bytes, int, float, type, types.ModuleType, types.FunctionType)):
        return found
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += _generators(v, f"{prefix}{i}.", depth - 1)
        return found
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        for k, v in vars(obj).items():
            if hasattr(v, "shape") and not isinstance(v, np.random.Generator):
                continue  # arrays (the dataset itself): nothing to look for there
            found += _generators(v, f"{prefix}{k}.", depth - 1)
    return found


def _rng_states(model: Layer, loader: Any) -> dict[str, Any]:
    states = {"init": initializers.get_rng().bit_generator.state}
    for name, g in _generators(model, "model.") + _generators(loader, "loader."):
        states[name] = g.bit_generator.state
    return states


def _restore_rngs(states: dict[str, Any], model: Layer, loader: Any) -> None:
    if "init" in states:
        initializers.get_rng().bit_generator.state = states["init"]
    for name, g in _generators(model, "model.") + _generators(loader, "loader."):
        if name in states:
            g.bit_generator.state = states[name]


def _atomic_write(path: str | os.PathLike, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: never a half file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_array(value: Any) -> np.ndarray:
    """A 0-d str array holding JSON: loads with ``allow_pickle=False``."""
    return np.array(json.dumps(value))


def save(path: str | os.PathLike, model: Layer, optimizer: Any = None, *, scheduler: Any = None,
         loader: Any = None, epoch: int | None = None, history: History | None = None,
         **meta: Any) -> None:
    """Write a checkpoint ``.npz`` (readable with ``allow_pickle=False``), atomically.

    Contents: every parameter (``param/<name>``) and buffer (``buffer/<name>``), the
    optimizer's and the scheduler's ``state_dict()`` (``optim/...``, ``sched/...``), and JSON
    strings for the epoch, the model config (``model.config``, to rebuild it), the History,
    the RNG states (initialiser, Dropout layers, and the loader's shuffling/augmentation
    generators when ``loader`` is given) and any extra ``meta`` (JSON-serialisable).
    """
    arrays: dict[str, np.ndarray] = {}
    for name, p in named_parameters(model):
        arrays[f"param/{name}"] = to_numpy(p.data)
    for name, value in named_buffers(model):
        if value is not None:
            arrays[f"buffer/{name}"] = to_numpy(value)
    for prefix, obj in (("optim", optimizer), ("sched", scheduler)):
        if obj is not None:
            for key, value in obj.state_dict().items():
                arrays[f"{prefix}/{key}"] = np.asarray(to_numpy(value))
    info = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "config": getattr(model, "config", None),
        "optimizer": None if optimizer is None else type(optimizer).__name__,
        "scheduler": None if scheduler is None else type(scheduler).__name__,
        "history": None if history is None else history.to_dict(),
        "meta": meta,
    }
    arrays["info"] = _json_array(info)
    arrays["rng"] = _json_array(_rng_states(model, loader))
    _atomic_write(path, lambda f: np.savez(f, **arrays))


@dataclass
class Checkpoint:
    """What ``load`` returns: the model (built from the config if none was given) and the
    run's metadata."""

    model: Layer
    epoch: int | None
    history: History | None
    config: dict[str, Any] | None
    meta: dict[str, Any]


def _shape_error(path: str, what: str, name: str, saved: tuple, have: tuple) -> ValueError:
    return ValueError(f"load({path!r}): the checkpoint does not fit this model: {what} "
                      f"{name!r} has shape {saved} in the checkpoint but {have} in the model")


def load(path: str | os.PathLike, model: Layer | None = None, optimizer: Any = None, *,
         scheduler: Any = None, loader: Any = None, restore_rng: bool = True) -> Checkpoint:
    """Read a checkpoint written by ``save`` into ``model`` (and optimizer, scheduler, loader).

    With ``model=None`` the model is rebuilt from the config saved with it
    (``minicnn.models.build``). Everything is checked before anything is changed: a model of
    another shape raises ValueError naming the first mismatching parameter. Arrays go to the
    device and dtype of the model's current parameters.

    Returns a ``Checkpoint``: pass ``initial_epoch=ckpt.epoch, history=ckpt.history`` to
    ``fit`` to continue exactly where the saved run stopped.
    """
    path = os.fspath(path)
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    if "info" not in data:
        raise ValueError(f"load({path!r}): not a minicnn checkpoint (no 'info' entry)")
    info = json.loads(str(data["info"]))
    if model is None:
        if not info.get("config"):
            raise ValueError(f"load({path!r}): the checkpoint has no model config; build the "
                             f"model yourself and pass it as load(path, model)")
        from ..models import build

        model = build(**info["config"])

    # Check everything first, so that a failed load leaves the model untouched.
    params = named_parameters(model)
    buffers = named_buffers(model)
    saved_params = [k[len("param/"):] for k in data if k.startswith("param/")]
    for name, p in params:
        key = f"param/{name}"
        if key not in data:
            raise ValueError(f"load({path!r}): the checkpoint does not fit this model: it has no "
                             f"parameter {name!r} (model: {len(params)} parameters, checkpoint: "
                             f"{len(saved_params)})")
        if tuple(data[key].shape) != p.shape:
            raise _shape_error(path, "parameter", name, tuple(data[key].shape), p.shape)
    model_names = {n for n, _ in params}
    extra = [n for n in saved_params if n not in model_names]
    if extra:
        raise ValueError(f"load({path!r}): the checkpoint does not fit this model: parameter "
                         f"{extra[0]!r} is not in the model (model: {len(params)} parameters, "
                         f"checkpoint: {len(saved_params)})")
    for name, value in buffers:
        key = f"buffer/{name}"
        if key in data and value is not None and tuple(data[key].shape) != tuple(value.shape):
            raise _shape_error(path, "buffer", name, tuple(data[key].shape), tuple(value.shape))
    if optimizer is not None and info.get("optimizer") not in (None, type(optimizer).__name__):
        raise ValueError(f"load({path!r}): the checkpoint holds {info['optimizer']} state, but "
                         f"the optimizer is {type(optimizer).__name__}")

    for name, p in params:
        xp = get_array_module(p.data)
        p.data = xp.asarray(data[f"param/{name}"], dtype=p.data.dtype)
        p.grad = None
    owners = {n: (owner, attr) for n, _, attr, owner in _named(model)}
    for name, value in buffers:
        key = f"buffer/{name}"
        if key in data:
            owner, attr = owners[name]
            xp = get_xp() if value is None else get_array_module(value)
            dtype = None if value is None else value.dtype
            setattr(owner, attr, xp.asarray(data[key], dtype=dtype))
    for prefix, obj in (("optim", optimizer), ("sched", scheduler)):
        if obj is not None:
            state = {k[len(prefix) + 1:]: v for k, v in data.items() if k.startswith(prefix + "/")}
            if not state:
                raise ValueError(f"load({path!r}): the checkpoint has no "
                                 f"{'optimizer' if prefix == 'optim' else 'scheduler'} state")
            obj.load_state_dict(state)
    if restore_rng and "rng" in data:
        _restore_rngs(json.loads(str(data["rng"])), model, loader)
    history = None if info.get("history") is None else History.from_dict(info["history"])
    return Checkpoint(model, info.get("epoch"), history, info.get("config"),
                      info.get("meta") or {})

