"""Data-parallel training over MPI (CPUs, NumPy), NCCL (GPUs, CuPy), or the threads of one
process (CPU cores, NumPy: ``run_in_threads``, threads.py).

::

    # mpiexec -n 2 python train.py
    import minicnn as mc
    from minicnn import distributed as dist

    comm = dist.create_communicator("auto")       # MPI, or NCCL when the backend is CuPy
    dist.set_blas_threads(comm)                   # ranks x threads = cores
    train = mc.data.DataLoader(x, y, batch_size=64, seed=0,      # 64 per rank, the same
                               rank=comm.rank, world_size=comm.size)  # seed on every rank
    history = mc.training.fit(model, loss, opt, train, epochs=10, comm=comm)

``fit(..., comm=comm)`` broadcasts rank 0's weights, averages the gradients before every
step (``DistributedOptimizer``), averages the metrics across ranks, and lets only rank 0
print and write files. The pieces, for a loop of your own: ``broadcast_parameters``,
``allreduce_gradients`` / ``GradientBuckets``, ``DistributedOptimizer``,
``average_metrics``, ``check_parameters_identical``, ``SyncBatchNorm2d`` /
``convert_sync_batchnorm``. The algorithm, launch commands and scaling notes:
docs/distributed.md.
"""

from __future__ import annotations

from typing import Any

from ..layers import BatchNorm2d
from ..layers.base import Layer
from ..layers.sync_batchnorm import SyncBatchNorm2d
from .comm import (
    Communicator,
    DistributedError,
    MPICommunicator,
    NCCLCommunicator,
    create_communicator,
    launched_size,
)
from .data_parallel import (
    DEFAULT_BUCKET_BYTES,
    DistributedOptimizer,
    GradientBuckets,
    allreduce_gradients,
    average_buffers,
    average_metrics,
    broadcast_parameters,
    check_parameters_identical,
    parameters_digest,
    set_blas_threads,
)
from .threads import ThreadCommunicator, available_cores, run_in_threads

__all__ = [
    "Communicator", "MPICommunicator", "NCCLCommunicator", "DistributedError",
    "create_communicator", "launched_size",
    "broadcast_parameters", "allreduce_gradients", "GradientBuckets", "DistributedOptimizer",
    "average_metrics", "average_buffers", "parameters_digest", "check_parameters_identical",
    "set_blas_threads", "ThreadCommunicator", "run_in_threads", "available_cores",
    "SyncBatchNorm2d", "convert_sync_batchnorm", "DEFAULT_BUCKET_BYTES",
]


def convert_sync_batchnorm(model: Layer, comm: Any) -> Layer:
    """Turn every ``BatchNorm2d`` of ``model`` into a ``SyncBatchNorm2d`` on ``comm``.

    In place (the layers keep their parameters, buffers and settings; only their class
    changes), like PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``. Returns ``model``.
    Subclasses of BatchNorm2d other than SyncBatchNorm2d are left alone.
    """
    for m in model.modules():
        if type(m) is BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
        if type(m) is SyncBatchNorm2d:
            m.comm = comm
    return model
