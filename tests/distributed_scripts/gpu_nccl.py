"""The NCCL communicator on a real GPU (a GPU machine only; CI has none).

    mpiexec -n 1 python tests/distributed_scripts/gpu_nccl.py

NCCL refuses two ranks on one GPU, so with one GPU this runs one rank. What it checks:
the unique-id exchange over MPI and ``NcclCommunicator`` set-up; ``allreduce`` (sum, min,
max) and ``broadcast`` on CuPy buffers of every supported dtype, on the current stream;
NumPy buffers falling back to MPI; clear errors for strided buffers and unsupported dtypes;
and ``fit(..., comm=nccl)`` on the GPU giving bit-identical weights to ``fit`` without a
communicator (one rank: the mean of one gradient is that gradient), with and without
Dropout. Prints ``RESULT {json}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import minicnn as mc  # noqa: E402
from minicnn import distributed as dist  # noqa: E402
from minicnn import layers as L  # noqa: E402
from minicnn.backend import get_cupy, to_numpy  # noqa: E402

mc.set_backend("cupy")
cp = get_cupy()
comm = dist.create_communicator("auto")
out: dict = {"communicator": repr(comm), "kind": comm.name,
             "nccl_version": int(comm.nccl.get_version())}
ok = {}
for dtype in (np.float16, np.float32, np.float64, np.int32, np.int64, np.uint8):
    a = cp.arange(12, dtype=dtype).reshape(3, 4)
    ref = to_numpy(a).copy()
    comm.allreduce(a)                                  # one rank: the sum is the value
    ok[f"allreduce_{np.dtype(dtype).name}"] = bool(np.array_equal(to_numpy(a), ref * comm.size))
for op in ("min", "max"):
    a = cp.linspace(-1, 1, 7, dtype=cp.float32)
    ok[f"allreduce_{op}"] = bool(np.array_equal(to_numpy(comm.allreduce(a.copy(), op)),
                                                to_numpy(a)))
b = cp.full(5, float(comm.rank + 3), dtype=cp.float32)
comm.broadcast(b, root=0)
ok["broadcast"] = bool((to_numpy(b) == 3.0).all())
h = np.ones(3)
comm.allreduce(h)
ok["numpy_over_mpi"] = bool((h == comm.size).all())
try:
    comm.allreduce(cp.zeros((4, 4), cp.float32)[:, ::2])
    ok["strided_refused"] = False
except ValueError:
    ok["strided_refused"] = True
try:
    comm.allreduce(cp.zeros(3, cp.complex64))
    ok["complex_refused"] = False
except TypeError:
    ok["complex_refused"] = True


def run(with_comm: bool, dropout: float):
    mc.init.set_seed(0)
    model = L.Sequential(L.Conv2d(3, 16, 3, padding=1, bias=False), L.BatchNorm2d(16),
                         L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Dropout(dropout, seed=5),
                         L.Linear(16 * 16 * 16, 10))
    x, y = mc.data.synthetic(512, (3, 32, 32), seed=1)
    loader = mc.data.DataLoader(x, y, 64, seed=2, rank=comm.rank if with_comm else 0,
                                world_size=comm.size if with_comm else 1)
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    hist = mc.training.fit(model, mc.losses.CrossEntropyLoss(), opt, loader, epochs=2,
                           verbose=0, comm=comm if with_comm else None)
    return {n: to_numpy(v) for n, v in model.state_dict().items()}, hist.history["loss"]


def max_rel_diff(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / (np.abs(b[k]).max() + 1e-12)) for k in b)


for dropout in (0.0, 0.2):
    (w_dist, loss_dist), (w_one, loss_one), (w_two, loss_two) = (
        run(True, dropout), run(False, dropout), run(False, dropout))
    # One rank: the mean of one gradient is that gradient, and everything else is seeded, so
    # the weights must be bit-identical (two plain runs are, on the H200 this was run on).
    tag = f"dropout{dropout}"
    out[f"fit_plain_vs_plain_{tag}"] = max_rel_diff(w_two, w_one)
    out[f"fit_nccl_vs_plain_{tag}"] = max_rel_diff(w_dist, w_one)
    out[f"losses_{tag}"] = {"nccl": loss_dist, "plain": loss_one, "plain_again": loss_two}
    ok[f"fit_nccl_equals_plain_{tag}"] = out[f"fit_nccl_vs_plain_{tag}"] == 0.0
# NCCL allreduce of one 25 MiB bucket, for the record (one rank: a device copy at most).
big = cp.ones(25 * 2**20 // 4, cp.float32)
comm.allreduce(big)
cp.cuda.get_current_stream().synchronize()
t0 = time.perf_counter()
for _ in range(10):
    comm.allreduce(big)
cp.cuda.get_current_stream().synchronize()
out["allreduce_25MiB_ms_1rank"] = 1e3 * (time.perf_counter() - t0) / 10
out["ok"] = ok
out["all_ok"] = all(ok.values())
print("RESULT " + json.dumps(out), flush=True)
