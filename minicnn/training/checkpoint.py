"""Checkpoints: ``save`` / ``load`` a model with its optimizer, scheduler and RNG states.

A checkpoint is an uncompressed ``.npz`` archive, readable with ``allow_pickle=False``,
written atomically (``minicnn._io.atomic_write``: temporary file, then rename; the mode a new
file gets, 0644 under the usual umask), so a run can be resumed exactly where it stopped.
Its entries (format ``minicnn-checkpoint-1``):

=====================  ========================================================================
``param/<name>``       each ``model.named_parameters()`` array (``param/layers.0.W``)
``buffer/<name>``      each ``model.named_buffers()`` array (``buffer/layers.1.running_var``)
``optim/<key>``        the optimizer's ``state_dict()`` (when one was saved)
``sched/<key>``        the scheduler's ``state_dict()`` (when one was saved)
``info``               JSON: format, epoch, model config, optimizer/scheduler names, History,
                       meta
``rng``                JSON: generator states: ``init`` (the initialisers'), ``model.<i>.<attr>``
                       (the i-th of ``model.named_modules()``), ``loader.<attr path>``
=====================  ========================================================================

Parameter and buffer names are those of ``Layer.state_dict()``; ``load`` goes through
``model.load_state_dict(strict=True)`` and ``model.set_rng_states()``. Whatever is wrong with
a file raises a ``CheckpointError`` (a ``ValueError``) naming the file and what was expected,
before anything was changed: a model, optimizer or scheduler is either fully loaded or left
as it was.
"""

from __future__ import annotations

import json
import os
import re
import tokenize
import types
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import init as initializers
from .. import models
from .._io import atomic_write
from ..backend import to_numpy
from ..layers.base import Layer, Parameter
from .history import History

__all__ = ["save", "load", "Checkpoint", "named_parameters", "named_buffers", "CHECKPOINT_FORMAT",
           "CheckpointError", "NotACheckpointError", "CorruptCheckpointError",
           "NewerCheckpointError", "CheckpointMismatchError"]

CHECKPOINT_VERSION = 1  # the newest format this code writes and reads; it reads 1..VERSION
CHECKPOINT_FORMAT = f"minicnn-checkpoint-{CHECKPOINT_VERSION}"
_FORMAT = re.compile(r"minicnn-checkpoint-(\d+)")
_ZIP_MAGIC, _NPY_MAGIC = b"PK\x03\x04", b"\x93NUMPY"


# -- errors ------------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what was expected.

    ``path`` is the file, ``reason`` what is wrong with it, ``hint`` what to do in Python
    (``str(error)`` is ``"<path>: <reason>; <hint>"``; the CLI gives its own hint). Subclasses
    say why: ``NotACheckpointError``, ``CorruptCheckpointError``, ``NewerCheckpointError``,
    ``CheckpointMismatchError``.
    """

    def __init__(self, path: str, reason: str, hint: str = ""):
        super().__init__(f"{path}: {reason}" + (f"; {hint}" if hint else ""))
        self.path, self.reason, self.hint = path, reason, hint


class NotACheckpointError(CheckpointError):
    """The file is not a minicnn checkpoint at all (another file type, another .npz)."""


class CorruptCheckpointError(CheckpointError):
    """A minicnn checkpoint that is truncated or damaged (a copy cut short, flipped bytes)."""


class NewerCheckpointError(CheckpointError):
    """Written in a format newer than this minicnn reads."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint of another model (keys or shapes differ) or another optimizer."""


def _some(names: list[str], limit: int = 4) -> str:
    """``['a', 'b']``, or the first ``limit`` names and how many there are in all."""
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}]" if len(names) <= limit else f"[{shown}, ... ({len(names)} in all)]"


# -- names -------------------------------------------------------------------------------------

def named_parameters(model: Layer) -> list[tuple[str, Parameter]]:
    """``(name, Parameter)`` pairs in ``model.parameters()`` order: ``model.named_parameters()``."""
    return model.named_parameters()


def named_buffers(model: Layer) -> list[tuple[str, Any]]:
    """``(name, array)`` pairs of the non-trainable state (``model.named_buffers()``)."""
    return model.named_buffers()


def _split(name: str) -> tuple[str, str]:
    """``"layers.9.rng"`` -> (``"layers.9"``, ``"rng"``): the module and the attribute."""
    prefix, _, attr = name.rpartition(".")
    return prefix, attr


def _model_rngs_by_index(model: Layer) -> dict[str, Any]:
    """``model.rng_states()`` under the file's names, ``model.<i>.<attr>``, where i counts
    ``model.named_modules()`` (the names format 1 has always used)."""
    index = {prefix: i for i, (prefix, _) in enumerate(model.named_modules())}
    return {f"model.{index[prefix]}.{attr}": state
            for name, state in model.rng_states().items() for prefix, attr in [_split(name)]}


def _model_rngs_by_name(model: Layer, states: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``_model_rngs_by_index``: the ``model.<i>.<attr>`` entries of
    ``states`` under ``model.rng_states()``'s dotted names (other entries are dropped)."""
    prefixes = [prefix for prefix, _ in model.named_modules()]
    out = {}
    for key, state in states.items():
        match = re.fullmatch(r"model\.(\d+)\.(\w+)", key)
        if match and int(match[1]) < len(prefixes):
            prefix = prefixes[int(match[1])]
            out[f"{prefix}.{match[2]}" if prefix else match[2]] = state
    return out


def _generators(obj: Any, prefix: str, depth: int = 3) -> list[tuple[str, np.random.Generator]]:
    """NumPy generators held by a data loader (shuffling) and its transforms (augmentation),
    by attribute path. Models are not walked here: they answer ``rng_states()``."""
    if isinstance(obj, np.random.Generator):
        return [(prefix.rstrip("."), obj)]
    if depth == 0 or obj is None or isinstance(obj, (Layer, np.ndarray, str, bytes, int, float,
                                                     type, types.ModuleType,
                                                     types.FunctionType)):
        return []
    found: list[tuple[str, np.random.Generator]] = []
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += _generators(v, f"{prefix}{i}.", depth - 1)
    elif hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            if hasattr(v, "shape"):
                continue  # arrays (the dataset itself): nothing to look for there
            found += _generators(v, f"{prefix}{k}.", depth - 1)
    return found


def _rng_states(model: Layer, loader: Any) -> dict[str, Any]:
    states = {"init": initializers.get_rng().bit_generator.state}
    states.update(_model_rngs_by_index(model))
    for name, g in _generators(loader, "loader."):
        states[name] = g.bit_generator.state
    return states


# -- writing -----------------------------------------------------------------------------------


def _json_array(value: Any) -> np.ndarray:
    """A 0-d str array holding JSON: loads with ``allow_pickle=False``."""
    return np.array(json.dumps(value))


def save(path: str | os.PathLike, model: Layer, optimizer: Any = None, *, scheduler: Any = None,
         loader: Any = None, epoch: int | None = None, history: History | None = None,
         **meta: Any) -> None:
    """Write a checkpoint ``.npz`` (readable with ``allow_pickle=False``), atomically.

    Contents: ``model.state_dict()`` (parameters as ``param/<name>``, buffers as
    ``buffer/<name>``), the optimizer's and the scheduler's ``state_dict()`` (``optim/...``,
    ``sched/...``), and JSON strings for the epoch, the model config (``model.config``, to
    rebuild it), the History, the RNG states (initialiser, ``model.rng_states()``, and the
    loader's shuffling/augmentation generators when ``loader`` is given) and any extra
    ``meta`` (JSON-serialisable). A failed write leaves an earlier file at ``path`` as it was.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, p in model.named_parameters():
        arrays[f"param/{name}"] = to_numpy(p.data)
    for name, value in model.named_buffers():
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
    atomic_write(path, lambda f: np.savez(f, **arrays))


# -- reading -----------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """What ``load`` returns: the model (built from the config if none was given) and the
    run's metadata."""

    model: Layer
    epoch: int | None
    history: History | None
    config: dict[str, Any] | None
    meta: dict[str, Any]


def _corrupt(path: str, size: int, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        path, f"truncated or corrupt checkpoint ({size} bytes; a complete one has the keys "
              f"info, rng, param/<name> for every parameter, buffer/<name>, optim/<key>, "
              f"sched/<key>): {why}; copy or write it again")


def _read(path: str) -> tuple[dict[str, np.ndarray], int]:
    """Every entry of the archive at ``path`` in memory, and the file's size in bytes.

    ``CheckpointError`` for a file that is missing, not an ``.npz``, cut short or damaged.
    Never unpickles anything (``allow_pickle=False``): a checkpoint holds arrays and strings.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except OSError as exc:  # a folder, no permission
        raise CheckpointError(path, f"cannot be read ({exc.strerror or exc})") from None
    if head.startswith(_NPY_MAGIC):
        raise NotACheckpointError(path, "not a minicnn checkpoint (a single NumPy array, .npy; "
                                        "a checkpoint is an .npz archive)")
    if not head.startswith(_ZIP_MAGIC):
        if _ZIP_MAGIC.startswith(head):  # empty, or cut inside the first four bytes
            raise _corrupt(path, size, "the file ends before the archive's first entry")
        raise NotACheckpointError(path, f"not a minicnn checkpoint (not an .npz archive: it "
                                        f"starts with {head[:4]!r})")
    try:  # our own file handle: closed even when NumPy fails half-way through opening
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except ValueError as exc:
        # A damaged .npy header, or an object array: only a pickle can hold one, and NumPy's
        # advice to load it unsafely does not apply to a file that should hold none.
        why = ("an entry holds Python objects (pickled), which a minicnn checkpoint never "
               "does" if "pickle" in str(exc) else f"ValueError: {exc}")
        raise _corrupt(path, size, why) from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError, RuntimeError,
            NotImplementedError, SyntaxError, tokenize.TokenError) as exc:
        # cut short (no central directory), a bad CRC, ...; a damaged .npy header that NumPy's
        # fallback parser (the tokenize module) gives up on
        raise _corrupt(path, size, f"{type(exc).__name__}: {exc}") from None
    odd = [key for key, value in data.items() if not isinstance(value, np.ndarray)]
    if odd:  # NpzFile returns the raw bytes of a member that is not an .npy
        raise NotACheckpointError(path, f"not a minicnn checkpoint (a zip archive whose "
                                        f"entries {_some(odd)} are not NumPy arrays)")
    return data, size


def _json_entry(data: dict[str, np.ndarray], key: str) -> Any:
    """The JSON value stored in the 0-d string array ``data[key]``; None when it is not one."""
    value = data[key]
    if value.ndim != 0 or value.dtype.kind != "U":
        return None
    try:
        return json.loads(str(value))
    except ValueError:
        return None


def _info(path: str, size: int, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """The ``info`` entry, its format version and field types checked."""
    if "info" not in data:
        raise NotACheckpointError(path, f"not a minicnn checkpoint (an .npz archive without an "
                                        f"'info' entry; its keys: {_some(sorted(data))})")
    info = _json_entry(data, "info")
    if not isinstance(info, dict) or not isinstance(info.get("format"), str):
        raise _corrupt(path, size, "its 'info' entry is not the JSON minicnn writes")
    match = _FORMAT.fullmatch(info["format"])
    if not match:
        raise NotACheckpointError(path, f"not a minicnn checkpoint (format "
                                        f"{info['format']!r})")
    version = int(match[1])
    if not 1 <= version <= CHECKPOINT_VERSION:
        reads = "v1" if CHECKPOINT_VERSION == 1 else f"v1-v{CHECKPOINT_VERSION}"
        raise NewerCheckpointError(path, f"written by a newer minicnn (format v{version}, this "
                                         f"reads {reads}); upgrade minicnn to load it")
    for key, kind in (("epoch", int), ("config", dict), ("history", dict), ("meta", dict),
                      ("optimizer", str), ("scheduler", str)):
        if not isinstance(info.get(key), (kind, type(None))) or isinstance(info.get(key), bool):
            raise _corrupt(path, size, f"its 'info' entry has a malformed {key!r}")
    return info


def _model_state(path: str, size: int, data: dict[str, np.ndarray],
                 model: Layer) -> dict[str, np.ndarray]:
    """The checkpoint's arrays under ``model.state_dict()``'s names, after checking that they
    fit it exactly: the same keys, shapes, and floating-point dtypes."""
    state = {key.split("/", 1)[1]: value for key, value in data.items()
             if key.startswith(("param/", "buffer/"))}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointMismatchError(
            path, f"a checkpoint from another model (it does not fit this one): missing keys "
                  f"{_some(missing)}, unexpected keys {_some(unexpected)}",
            hint="build the model it was saved from, or load(path) without a model to rebuild "
                 "it")
    for key, have in own.items():
        saved = state[key]
        kind = "parameter" if f"param/{key}" in data else "buffer"
        if tuple(saved.shape) != tuple(have.shape):
            raise CheckpointMismatchError(
                path, f"a checkpoint from another model (it does not fit this one): {kind} "
                      f"{key!r} has shape {tuple(saved.shape)} in the checkpoint but "
                      f"{tuple(have.shape)} in the model")
        if saved.dtype.kind != "f":
            raise _corrupt(path, size, f"{kind} {key!r} holds {saved.dtype}, expected "
                                       f"floating-point numbers")
    return state


def _check_rng(path: str, size: int, name: str, saved: Any, current: dict[str, Any]) -> None:
    """Raise unless ``saved`` is a state for a bit generator of ``current``'s kind."""
    try:
        if saved["bit_generator"] != current["bit_generator"]:
            raise ValueError("another kind of generator")
        getattr(np.random, current["bit_generator"])().state = saved
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError) as exc:
        raise _corrupt(path, size, f"the saved state of generator {name!r} is unusable "
                                   f"({type(exc).__name__}: {exc})") from None


def _rng_plan(path: str, size: int, data: dict[str, np.ndarray], model: Layer,
              loader: Any) -> tuple[dict[str, Any], list[tuple[np.random.Generator, Any]]]:
    """What to restore: the model's generator states by dotted name (for
    ``model.set_rng_states``) and (generator, state) pairs for the others, all checked."""
    states = _json_entry(data, "rng")
    if not isinstance(states, dict):
        raise _corrupt(path, size, "its 'rng' entry is not the JSON minicnn writes")
    model_states = _model_rngs_by_name(model, states)
    current = model.rng_states()
    model_states = {k: v for k, v in model_states.items() if k in current}
    for name, saved in model_states.items():
        _check_rng(path, size, name, saved, current[name])
    others = [(name, g) for name, g in [("init", initializers.get_rng()),
                                        *_generators(loader, "loader.")] if name in states]
    for name, g in others:
        _check_rng(path, size, name, states[name], g.bit_generator.state)
    return model_states, [(g, states[name]) for name, g in others]


def _load_into(path: str, obj: Any, prefix: str, data: dict[str, np.ndarray]) -> Any:
    """Load ``prefix/...`` into an optimizer or scheduler and return its previous state, so
    that a later failure can put it back; on a failure here ``obj`` is put back at once."""
    what = "optimizer" if prefix == "optim" else "scheduler"
    state = {k[len(prefix) + 1:]: v for k, v in data.items() if k.startswith(prefix + "/")}
    if not state:
        raise CheckpointMismatchError(path, f"the checkpoint has no {what} state (it was saved "
                                            f"without one); load it without the {what}")
    before = obj.state_dict()
    try:
        obj.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, ArithmeticError) as exc:
        obj.load_state_dict(before)  # a schedule sets its fields one by one
        raise CheckpointMismatchError(path, f"its {what} state does not fit this "
                                            f"{type(obj).__name__} ({type(exc).__name__}: "
                                            f"{exc})") from None
    return before


def load(path: str | os.PathLike, model: Layer | None = None, optimizer: Any = None, *,
         scheduler: Any = None, loader: Any = None, restore_rng: bool = True) -> Checkpoint:
    """Read a checkpoint written by ``save`` into ``model`` (and optimizer, scheduler, loader).

    With ``model=None`` the model is rebuilt from the config saved with it
    (``minicnn.models.build``). Arrays go to the device and dtype of the model's current
    parameters.

    Everything is checked before anything is changed: keys, shapes and dtypes of the model's
    state (``model.load_state_dict(strict=True)``), the optimizer's and scheduler's state
    (restored to what it was if the other one fails) and the generator states.

    Returns a ``Checkpoint``: pass ``initial_epoch=ckpt.epoch, history=ckpt.history`` to
    ``fit`` to continue exactly where the saved run stopped.

    Raises
    ------
    CheckpointError
        ``NotACheckpointError`` (another kind of file), ``CorruptCheckpointError`` (cut
        short, damaged), ``NewerCheckpointError`` (a format this version does not read),
        ``CheckpointMismatchError`` (another model or optimizer: missing, unexpected or
        mis-shaped keys). The message starts with the path and says what to do.
    """
    path = os.fspath(path)
    data, size = _read(path)
    info = _info(path, size, data)
    if "rng" not in data and restore_rng:
        raise _corrupt(path, size, "it has no 'rng' entry")
    try:
        history = None if info["history"] is None else History.from_dict(info["history"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise _corrupt(path, size, f"its History is malformed ({exc})") from None
    if model is None:
        if not info["config"]:
            raise CheckpointMismatchError(path, "the checkpoint has no model config; build the "
                                                "model yourself and pass it as load(path, model)")
        try:
            model = models.build(**info["config"])
        except Exception as exc:  # a config from another version, or a damaged one
            raise CheckpointMismatchError(path, f"the model config {info['config']} cannot be "
                                                f"built ({type(exc).__name__}: {exc})") from None
    state = _model_state(path, size, data, model)
    for key, value in data.items():  # optimizer and schedule state: plain numbers only
        if key.startswith(("optim/", "sched/")) and value.dtype.kind not in "iuf":
            raise _corrupt(path, size, f"{key!r} holds {value.dtype}, expected numbers")
    if optimizer is not None and info["optimizer"] not in (None, type(optimizer).__name__):
        raise CheckpointMismatchError(path, f"the checkpoint holds {info['optimizer']} state, "
                                            f"but the optimizer is {type(optimizer).__name__}")
    model_rngs, other_rngs = _rng_plan(path, size, data, model, loader) if restore_rng \
        else ({}, [])

    loaded: list[tuple[Any, Any]] = []  # (object, its state before): undone if a later fails
    try:
        for prefix, obj in (("optim", optimizer), ("sched", scheduler)):
            if obj is not None:
                loaded.append((obj, _load_into(path, obj, prefix, data)))
    except CheckpointError:
        for obj, before in reversed(loaded):
            obj.load_state_dict(before)
        raise
    model.load_state_dict(state, strict=True)  # checked above: cannot fail half-way
    for p in model.parameters():
        p.grad = None
    model.set_rng_states(model_rngs)
    for g, saved in other_rngs:
        g.bit_generator.state = saved
    if loader is not None and hasattr(loader, "epoch") and info["epoch"] is not None:
        loader.epoch = int(info["epoch"])  # the epochs it has served (alternating flip's parity)
    return Checkpoint(model, info["epoch"], history, info["config"], info["meta"] or {})
