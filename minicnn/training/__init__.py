"""Training: ``fit``, ``evaluate``, the ``History``, callbacks, checkpoints, transfer learning.

The package, by concern (a lower module never imports a higher one)::

    history.py      History: per-epoch metrics, Keras-shaped, JSON round trip
    checkpoint.py   save / load / Checkpoint (model, optimizer, scheduler, RNG states)
    callbacks.py    FitState, Callback, EarlyStopping, ModelCheckpoint,
                    LearningRateScheduler, TerminateOnNaN
    loop.py         fit / evaluate / predict: the four lines of the lectures, repeated
    loggers.py      CSVLogger, TensorBoard (tensorboardX), loggers_from_flag (--log)
    transfer.py     freeze / unfreeze / replace_head

Everything public is importable from ``minicnn.training`` directly, as before the split.
"""

from __future__ import annotations

from .callbacks import (
    Callback,
    EarlyStopping,
    FitState,
    LearningRateScheduler,
    ModelCheckpoint,
    NonFiniteLossError,
    TerminateOnNaN,
)
from .checkpoint import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    NewerCheckpointError,
    NotACheckpointError,
    load,
    named_buffers,
    named_parameters,
    save,
)
from .history import HISTORY_KEYS, History
from .loggers import CSVLogger, TensorBoard, loggers_from_flag
from .loop import evaluate, fit, predict
from .transfer import freeze, replace_head, unfreeze

__all__ = [
    "History", "fit", "evaluate", "predict",
    "Callback", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler", "TerminateOnNaN",
    "NonFiniteLossError", "FitState", "CSVLogger", "TensorBoard", "loggers_from_flag",
    "save", "load", "Checkpoint", "named_parameters", "named_buffers",
    "CheckpointError", "NotACheckpointError", "CorruptCheckpointError", "NewerCheckpointError",
    "CheckpointMismatchError",
    "freeze", "unfreeze", "replace_head",
    "HISTORY_KEYS", "CHECKPOINT_FORMAT",
]
