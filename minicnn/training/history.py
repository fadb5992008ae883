"""``History``: the per-epoch metrics of a ``fit`` run, shaped like Keras' ``History``."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from .._io import atomic_write

__all__ = ["History", "HISTORY_KEYS"]

HISTORY_KEYS = ("loss", "acc", "val_loss", "val_acc", "lr", "time")


class History:
    """Per-epoch metrics, shaped like Keras' ``History``.

    Attributes
    ----------
    history : dict[str, list]
        ``loss``, ``acc`` (training, averaged over the epoch's batches as they were trained),
        ``val_loss``, ``val_acc`` (None when there is no validation data), ``lr`` (the learning
        rate at the start of the epoch) and ``time`` (seconds) -> one entry per epoch.
    epoch : list[int]
        The epoch numbers (1-based; a resumed run continues the count).
    stop_reason : str or None
        Why training stopped early (early stopping, a NaN loss), None if it ran to the end:
        a message for people.
    stopped_by : str or None
        The class name of the callback that stopped training ("EarlyStopping",
        "TerminateOnNaN", ...), None if it ran to the end: what code compares.
    diverged : bool
        The loss became NaN or inf (``TerminateOnNaN``): the weights are not usable.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[Any]] = {key: [] for key in HISTORY_KEYS}
        self.epoch: list[int] = []
        self.stop_reason: str | None = None
        self.stopped_by: str | None = None
        self.diverged = False

    def append(self, epoch: int, logs: dict[str, Any]) -> None:
        self.epoch.append(int(epoch))
        for key in HISTORY_KEYS:
            value = logs.get(key)
            self.history[key].append(None if value is None else float(value))

    def __len__(self) -> int:
        return len(self.epoch)

    def __getitem__(self, key: str) -> list[Any]:
        return self.history[key]

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epoch), "history": copy.deepcopy(self.history),
                "stop_reason": self.stop_reason, "stopped_by": self.stopped_by,
                "diverged": self.diverged}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        h = cls()
        h.epoch = [int(e) for e in d.get("epoch", [])]
        for key, values in d.get("history", {}).items():
            h.history[key] = list(values)
        h.stop_reason = d.get("stop_reason")
        h.stopped_by = d.get("stopped_by")  # absent from histories saved before these keys
        h.diverged = bool(d.get("diverged", False))
        return h

    def save_json(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON (None for a missing value, never NaN), atomically."""
        atomic_write(path, lambda f: f.write(json.dumps(self.to_dict(), indent=1)),
                     binary=False)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> History:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def __repr__(self) -> str:
        if not self.epoch:
            return "History(no epochs)"
        last = {k: v[-1] for k, v in self.history.items() if v and v[-1] is not None}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items())
        return f"History({len(self)} epochs; last: {shown})"

