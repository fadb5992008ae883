"""``fit(..., comm=...)`` on 2 ranks: resumption and a writer killed mid-checkpoint.

    mpiexec -n 2 python tests/distributed_scripts/fit_run.py full   OUT
    mpiexec -n 2 python tests/distributed_scripts/fit_run.py resume OUT
    mpiexec -n 2 python tests/distributed_scripts/fit_run.py kill   OUT

- ``full``: 3 epochs with per-rank BatchNorm, Dropout, augmentation, SGD-Nesterov and a
  one-cycle schedule; rank 0 checkpoints every epoch (OUT/ckpt-{epoch}.npz) and writes the
  metrics it saw to OUT/full.json; rank 1 writes OUT/rank1.json (what it saw: the same
  averaged metrics, and no checkpoint written by its ModelCheckpoint).
- ``resume``: a new job loads OUT/ckpt-1.npz on every rank and trains epochs 2-3; rank 0
  prints ``RESULT`` with whether the parameters equal those of ckpt-3.npz bit for bit.
- ``kill``: like ``full``, but rank 0 is SIGKILLed while writing the epoch-2 checkpoint,
  after the data reached the disk and before the rename: OUT/kill.npz must still be the
  complete epoch-1 checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import minicnn as mc  # noqa: E402
from minicnn import distributed as dist  # noqa: E402
from minicnn import layers as L  # noqa: E402
from minicnn.data import transforms as T  # noqa: E402

mode, out = sys.argv[1], Path(sys.argv[2])
comm = dist.create_communicator("mpi")
EPOCHS, BATCH = 3, 8


def setup():
    mc.init.set_seed(0)
    model = L.Sequential(L.Conv2d(3, 8, 3, padding=1, bias=False), L.BatchNorm2d(8), L.ReLU(),
                         L.MaxPool2d(2), L.Flatten(), L.Dropout(0.3), L.Linear(8 * 4 * 4, 10))
    x, y = mc.data.synthetic(96, (3, 8, 8), seed=4)
    loader = mc.data.DataLoader(x, y, BATCH, seed=7, transform=T.RandomHorizontalFlip(),
                                rank=comm.rank, world_size=comm.size)
    val = mc.data.DataLoader(x[:40], y[:40], 16, shuffle=False)   # every rank reads it whole
    opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = mc.optim.OneCycleLR(opt, max_lr=0.1, total_steps=EPOCHS * len(loader))
    return model, loader, val, opt, sched


class KillWhileWriting(mc.training.Callback):
    """On rank 0, at epoch 2's end: let the checkpoint's temporary file be written in full,
    then die (SIGKILL, no clean-up possible) just before it would be renamed into place."""

    def on_epoch_begin(self, epoch):
        if epoch == 2 and comm.rank == 0:
            def replace(src, dst):
                os.kill(os.getpid(), signal.SIGKILL)
            os.replace = replace


model, loader, val, opt, sched = setup()
if mode in ("full", "kill"):
    path = out / ("ckpt-{epoch}.npz" if mode == "full" else "kill.npz")
    callbacks = [mc.training.ModelCheckpoint(str(path), save_best_only=False)]
    if mode == "kill":
        callbacks.insert(0, KillWhileWriting())
    history = mc.training.fit(model, mc.losses.CrossEntropyLoss(), opt, loader, val,
                              epochs=EPOCHS, scheduler=sched, callbacks=callbacks, verbose=0,
                              comm=comm)
    seen = {"loss": history.history["loss"], "val_acc": history.history["val_acc"],
            "checkpoint_written": callbacks[-1].last_path is not None}
    (out / ("full.json" if comm.rank == 0 else "rank1.json")).write_text(json.dumps(seen))
elif mode == "resume":
    ckpt = mc.training.load(out / "ckpt-1.npz", model, opt, scheduler=sched, loader=loader)
    mc.training.fit(model, mc.losses.CrossEntropyLoss(), opt, loader, val, epochs=EPOCHS,
                    scheduler=sched, verbose=0, initial_epoch=ckpt.epoch,
                    history=ckpt.history, comm=comm)
    dist.check_parameters_identical(model, comm)
    if comm.rank == 0:
        with np.load(out / "ckpt-3.npz") as f:
            same = {k: bool(np.array_equal(f[f"param/{k}"], v))
                    for k, v in ((n, p.data) for n, p in model.named_parameters())}
            same.update({k: bool(np.array_equal(f[f"buffer/{k}"], v))
                         for k, v in model.named_buffers()})
        print("RESULT " + json.dumps({"identical": same, "epoch": ckpt.epoch}), flush=True)
