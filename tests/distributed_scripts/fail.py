"""A rank that raises must take the whole job down, quickly, saying which rank and why.

    mpiexec -n 2 python tests/distributed_scripts/fail.py

Both ranks train; after two steps rank 1 raises. Rank 0 is then waiting in the next
gradient allreduce, which would never complete: the communicator's excepthook on rank 1
aborts the job instead (exit code non-zero, "rank 1 of 2 failed: ..." on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import minicnn as mc  # noqa: E402
from minicnn import distributed as dist  # noqa: E402
from minicnn import layers as L  # noqa: E402

comm = dist.create_communicator("mpi")
mc.init.set_seed(0)
model = L.Sequential(L.Conv2d(3, 4, 3, padding=1), L.ReLU(), L.Flatten(), L.Linear(4 * 64, 10))
dist.broadcast_parameters(model, comm)
opt = dist.DistributedOptimizer(mc.optim.SGD(model.parameters(), lr=0.01), comm)
x, y = mc.data.synthetic(4000, (3, 8, 8))
loss_fn = mc.losses.CrossEntropyLoss()
for epoch in range(1000):
    for step, (xb, yb) in enumerate(mc.data.DataLoader(x, y, 8, seed=epoch, rank=comm.rank,
                                                       world_size=comm.size)):
        if comm.rank == 1 and epoch == 0 and step == 2:
            raise ValueError("simulated failure: the data on rank 1 is corrupt")
        loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward())
        opt.step()
print("unreachable: rank", comm.rank, "finished", flush=True)
