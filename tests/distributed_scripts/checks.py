"""Correctness checks of minicnn.distributed, run by tests/test_distributed.py as

    mpiexec -n 2 python tests/distributed_scripts/checks.py
    mpiexec -n 2 python tests/distributed_scripts/checks.py --backend cupy   # on a GPU machine

Rank 0 prints one line ``RESULT {json}``; the test asserts on it. Any failure on any rank
aborts the job (the communicator's excepthook), so the test sees a non-zero exit code.

- ``equivalence``: 2 ranks x batch 16 against 1 process x batch 32 (computed on rank 0 in
  this same process) after 5 SGD-momentum steps, for a model without BatchNorm, one with
  SyncBatchNorm2d and one with per-rank BatchNorm2d; all ranks' parameters are compared by a
  hash allreduce after every step.
- ``gradcheck``: SyncBatchNorm2d in float64 across the 2 ranks (with different batch sizes)
  against central differences of the global objective J = Σ_r Σ w_r * y_r, and its forward
  output / running statistics against BatchNorm2d on the concatenated batch.
- ``shards``: the ranks' batches of an epoch put together are the single loader's batches.
- ``device`` (last: it switches the process to the strict CPU stand-in for CuPy,
  tests/strict_device.py): the SyncBatchNorm run again on "device" arrays over MPI (staged
  through the host) must give the NumPy run's parameters; and ``create_communicator("nccl")``
  must fail with a clear DistributedError where CuPy has no NCCL (the stand-in has none).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import minicnn as mc  # noqa: E402
from minicnn import distributed as dist  # noqa: E402
from minicnn import layers as L  # noqa: E402
from minicnn.backend import to_numpy  # noqa: E402
from tests.distributed_scripts.equivalence_model import build, train  # noqa: E402

comm = dist.create_communicator("mpi")
mpi = comm.comm            # the mpi4py communicator, for gathers in these checks only
assert comm.size == 2, f"run with mpiexec -n 2 (got {comm.size} ranks)"
STEPS, LOCAL_BATCH = 5, 16
FINAL: dict[str, dict[str, np.ndarray]] = {}    # the distributed runs' final state, by kind


def distributed_run(kind: str, x, y):
    """The model (``build(kind)``, SyncBatchNorm for "syncbn"), its DistributedOptimizer and
    this rank's shard loader, every rank starting from rank 0's weights."""
    model = build(kind)
    if kind == "syncbn":
        dist.convert_sync_batchnorm(model, comm)
    # A different init on rank 1, so that broadcast_parameters has something to do.
    if comm.rank == 1:
        for p in model.parameters():
            p.data += 1.0
    dist.broadcast_parameters(model, comm)
    opt = dist.DistributedOptimizer(
        mc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), comm)
    loader = mc.data.DataLoader(x, y, LOCAL_BATCH, seed=1, rank=comm.rank, world_size=comm.size)
    return model, opt, loader


def equivalence() -> dict:
    x, y = mc.data.synthetic(STEPS * LOCAL_BATCH * comm.size, (3, 8, 8), seed=3)
    out = {}
    for kind in ("plain", "syncbn", "bn"):
        model, opt, loader = distributed_run(kind, x, y)
        checks = []

        def check(m, checks=checks, kind=kind):
            # Raises (and aborts) on a mismatch. Per-rank BatchNorm's running statistics
            # differ by design: only its parameters must agree.
            dist.check_parameters_identical(m, comm, buffers=kind != "bn")
            checks.append(1)

        train(model, loader, opt, STEPS, check)
        FINAL[kind] = {n: to_numpy(v).copy() for n, v in model.state_dict().items()}
        if comm.rank == 0:
            ref_model = build(kind)
            train(ref_model, mc.data.DataLoader(x, y, LOCAL_BATCH * comm.size, seed=1),
                  mc.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9), STEPS)
            diffs = []
            for (name, a), (_, b) in zip(FINAL[kind].items(),
                                         ref_model.state_dict().items(), strict=True):
                b = to_numpy(b)
                scale = float(np.abs(b).max()) + 1e-12
                diffs.append((float(np.abs(a - b).max()) / scale, name))
            worst = max(diffs)
            out[kind] = {"max_rel_diff": worst[0], "worst": worst[1], "hash_checks": len(checks),
                         "dtype": str(model.parameters()[0].data.dtype)}
    return out


def gradcheck() -> dict:
    rng = np.random.default_rng(10 + comm.rank)
    n_local = 3 if comm.rank == 0 else 2
    C = 3
    bn = dist.SyncBatchNorm2d(C, comm=comm).astype(np.float64)
    bn.gamma.data[...] = np.array([1.5, -0.7, 0.9])
    bn.beta.data[...] = np.array([0.1, 0.2, -0.3])
    x = rng.normal(size=(n_local, C, 2, 3)) * 2.0 + 0.5
    w = rng.normal(size=x.shape)

    def objective() -> float:
        bn.running_mean[...] = 0.0  # forward updates the buffers; keep them out of it
        y_ = bn.forward(x)
        return float(comm.allreduce_numbers([float((w * y_).sum())])[0])

    y = bn.forward(x)
    dx = bn.backward(w)
    dgamma = comm.allreduce(bn.gamma.grad.copy())     # Σ over ranks = dJ/dgamma
    dbeta = comm.allreduce(bn.beta.grad.copy())
    h, errors = 1e-6, []
    # dJ/dx at a few entries of each rank's x, probed one rank at a time (both run forward).
    for owner in range(comm.size):
        for flat in range(0, 3 * C * 6, 5):
            size = mpi.bcast(x.size if comm.rank == owner else None, root=owner)
            i = flat % size
            saved = x.reshape(-1)[i] if comm.rank == owner else None
            if comm.rank == owner:
                x.reshape(-1)[i] = saved + h
            plus = objective()
            if comm.rank == owner:
                x.reshape(-1)[i] = saved - h
            minus = objective()
            if comm.rank == owner:
                x.reshape(-1)[i] = saved
                numeric = (plus - minus) / (2 * h)
                errors.append(abs(numeric - dx.reshape(-1)[i]) / max(1.0, abs(numeric)))
    for param, analytic in ((bn.gamma, dgamma), (bn.beta, dbeta)):
        for c in range(C):
            saved = param.data[c]
            param.data[c] = saved + h
            plus = objective()
            param.data[c] = saved - h
            minus = objective()
            param.data[c] = saved
            numeric = (plus - minus) / (2 * h)
            errors.append(abs(numeric - analytic[c]) / max(1.0, abs(numeric)))
    max_err = max(comm.allreduce_numbers([max(errors)], op="max"))
    # Forward against plain BatchNorm on the concatenated batch (rank 0 holds both parts).
    xs, ys = mpi.gather(x, root=0), mpi.gather(y, root=0)
    fresh = dist.SyncBatchNorm2d(C, comm=comm).astype(np.float64)
    fresh.gamma.data[...] = bn.gamma.data
    fresh.beta.data[...] = bn.beta.data
    fresh.forward(x)                          # one step of running statistics, globally
    result = {"max_grad_error": float(max_err), "probes": len(errors)}
    if comm.rank == 0:
        ref = L.BatchNorm2d(C).astype(np.float64)
        ref.gamma.data[...] = bn.gamma.data
        ref.beta.data[...] = bn.beta.data
        y_ref = ref.forward(np.concatenate(xs))
        result["max_forward_diff"] = float(np.abs(np.concatenate(ys) - y_ref).max())
        result["running_diff"] = float(max(
            np.abs(fresh.running_mean - ref.running_mean).max(),
            np.abs(fresh.running_var - ref.running_var).max()))
    return result


def shards() -> dict:
    n, b = 75, 8                                   # 4 full global batches of 16, then 11
    x = np.zeros((n, 1, 2, 2), np.uint8)
    y = np.arange(n, dtype=np.int64)              # the labels are the sample ids
    mine = [yb for _, yb in mc.data.DataLoader(x, y, b, seed=5, rank=comm.rank,
                                               world_size=comm.size)]
    everyone = mpi.gather(mine, root=0)
    if comm.rank != 0:
        return {}
    single = [yb for _, yb in mc.data.DataLoader(x, y, b * comm.size, seed=5)]
    joined = [np.concatenate([everyone[r][k] for r in range(comm.size)])
              for k in range(len(mine))]
    return {"batches": len(mine), "sizes": [len(yb) for yb in mine],
            "match": all(np.array_equal(j, s[:len(j)]) for j, s in zip(joined, single,
                                                                      strict=False)),
            "lengths_equal": len({len(e) for e in everyone}) == 1}


def device() -> dict:
    try:
        from tests import strict_device
    except ImportError as exc:
        return {"skipped": f"no strict CuPy stand-in ({exc})"}
    strict_device.install()
    mc.set_backend("cupy")
    try:
        dist.create_communicator("nccl", abort_on_error=False)
        nccl = "constructed"
    except dist.DistributedError as exc:
        nccl = str(exc)
    x, y = mc.data.synthetic(STEPS * LOCAL_BATCH * comm.size, (3, 8, 8), seed=3)
    model, opt, loader = distributed_run("syncbn", x, y)
    train(model, loader, opt, STEPS, lambda m: dist.check_parameters_identical(m, comm))
    on_device = type(model.parameters()[0].data).__module__
    diff = max(float(np.abs(mc.backend.to_numpy(v) - FINAL["syncbn"][n]).max())
               / (float(np.abs(FINAL["syncbn"][n]).max()) + 1e-12)
               for n, v in model.state_dict().items())
    return {"nccl_error": nccl, "array_module": on_device, "max_rel_diff_vs_numpy": diff}


with comm.abort_on_error():
    if sys.argv[1:] == ["--backend", "cupy"]:       # a GPU machine (not CI): real CuPy arrays
        mc.set_backend("cupy")                     # over MPI, staged through the host
        results = {"equivalence": equivalence(), "backend": mc.get_backend()}
    else:
        results = {"equivalence": equivalence(), "gradcheck": gradcheck(), "shards": shards()}
        results["device"] = device()
if comm.rank == 0:
    print("RESULT " + json.dumps(results), flush=True)
