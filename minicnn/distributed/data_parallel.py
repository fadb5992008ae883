"""Synchronous data-parallel SGD: same weights everywhere, gradients averaged every step.

Each of the W ranks holds a full copy of the model and takes its own shard of every global
batch (``DataLoader(..., rank=r, world_size=W)``). One step::

    broadcast_parameters(model, comm)            # once, at the start: rank 0's weights
    loss = loss_fn.forward(model.forward(x_r), y_r)       # the rank's b samples
    model.backward(loss_fn.backward())           # local gradients g_r = ∇ L_r
    allreduce_gradients(model, comm)             # g = (1/W) Σ_r g_r on every rank
    optimizer.step()                             # the same update everywhere

Why this is the big-batch step: the loss is a mean over samples, so for a global batch of
B = W·b samples split into W equal shards,

    L = (1/B) Σ_i ℓ_i = (1/W) Σ_r (1/b) Σ_{i in shard r} ℓ_i = (1/W) Σ_r L_r,

and the gradient is linear: ∇L = (1/W) Σ_r ∇L_r. Every rank applies the same update to the
same weights, so they stay identical (``check_parameters_identical`` verifies it). It holds
for every layer whose output for a sample depends only on that sample; BatchNorm in training
mode (statistics over the rank's b samples, not all B: use ``SyncBatchNorm2d``) and Dropout
(masks drawn per rank) are the exceptions, see docs/distributed.md.

Gradients are exchanged in a few large *buckets* (flat buffers of ~25 MB, PyTorch DDP's
default), not one call per parameter: each collective costs a fixed latency (microseconds
on one machine, tens of microseconds across a network) plus bytes / bandwidth, so 40 small
calls cost 40 latencies where 1 large one costs one.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..backend import get_array_module, to_numpy
from ..layers.base import Layer, Parameter
from .comm import Communicator
from .threads import available_cores

__all__ = ["broadcast_parameters", "allreduce_gradients", "GradientBuckets",
           "DistributedOptimizer", "average_metrics", "average_buffers", "parameters_digest",
           "check_parameters_identical", "set_blas_threads", "DEFAULT_BUCKET_BYTES"]

DEFAULT_BUCKET_BYTES = 25 * 2**20   # PyTorch DDP's bucket_cap_mb=25


def _flat_groups(arrays: list[Any], bucket_bytes: int) -> list[list[int]]:
    """Indices of ``arrays`` grouped into buckets: same array module and dtype, at most
    ``bucket_bytes`` each (an array larger than that gets a bucket of its own)."""
    groups: list[list[int]] = []
    sizes: list[int] = []
    keys: list[tuple] = []
    for i, a in enumerate(arrays):
        key = (get_array_module(a).__name__, np.dtype(a.dtype).str)
        nbytes = int(a.size) * a.dtype.itemsize
        for g, k in enumerate(keys):
            if k == key and sizes[g] + nbytes <= bucket_bytes:
                groups[g].append(i)
                sizes[g] += nbytes
                break
        else:
            groups.append([i])
            sizes.append(nbytes)
            keys.append(key)
    return groups


def broadcast_parameters(model: Layer, comm: Communicator, root: int = 0) -> None:
    """Give every rank rank ``root``'s parameters, BatchNorm buffers and Dropout RNG states.

    Called once before training (``fit(..., comm=...)`` does it): models initialised with
    different seeds, or a checkpoint loaded on one rank only, then start from the same point.
    Arrays are overwritten in place, one collective per dtype (not one per array). The RNG
    states make every rank's Dropout draw the same stream, which is what lets rank 0's
    checkpoint resume every rank exactly.
    """
    arrays = list(model.state_dict().values())
    for group in _flat_groups(arrays, bucket_bytes=2**62):
        members = [arrays[i] for i in group]
        xp = get_array_module(members[0])
        flat = xp.concatenate([a.reshape(-1) for a in members])
        comm.broadcast(flat, root=root)
        offset = 0
        for a in members:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size
    states = model.rng_states()
    if states:
        model.set_rng_states(comm.bcast_object(states, root=root))


class GradientBuckets:
    """Average the gradients of ``params`` over all ranks in a few flat buffers.

    The plan (which parameter lives where) is made once; the flat buffers are allocated at
    the first call and reused, so a step costs: pack (one copy of every gradient), one
    allreduce per bucket, one multiply by 1/W, and nothing more (the parameters' ``.grad``
    become views into the buffer; the next backward assigns fresh arrays).

    Parameters are bucketed in *reverse* order, the order in which a backward pass produces
    their gradients: with overlap (not implemented here, see docs/distributed.md) the first
    bucket could be sent while the earlier layers are still computing.

    Parameters
    ----------
    params : iterable of Parameter
        Frozen ones (``requires_grad`` False) are left out; every rank must pass the same list.
    comm : Communicator
    bucket_bytes : int
        Upper size of one bucket (default 25 MiB).

    Attributes
    ----------
    seconds : float
        Wall time spent in ``allreduce`` so far (packing, communication, unpacking): the
        communication share the benchmark reports. On a GPU the calls are asynchronous, so
        this is launch time unless the stream is synchronised around them.
    calls : int
    """

    def __init__(self, params: Iterable[Parameter], comm: Communicator,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.params = [p for p in params if p.requires_grad][::-1]
        self.comm = comm
        if int(bucket_bytes) < 1:
            raise ValueError(f"GradientBuckets: bucket_bytes must be >= 1, got {bucket_bytes}")
        self.bucket_bytes = int(bucket_bytes)
        self.buckets = _flat_groups([p.data for p in self.params], self.bucket_bytes)
        self._buffers: list[Any] = [None] * len(self.buckets)
        self.seconds = 0.0
        self.calls = 0

    def allreduce(self) -> None:
        """Replace every ``p.grad`` by the mean over the ranks (a missing grad counts as 0)."""
        t0 = time.perf_counter()
        inv_size = 1.0 / self.comm.size
        for k, group in enumerate(self.buckets):
            members = [self.params[i] for i in group]
            ref = members[0].data
            xp = get_array_module(ref)
            n = sum(int(p.data.size) for p in members)
            flat = self._buffers[k]
            if flat is None or get_array_module(flat) is not xp or flat.dtype != ref.dtype:
                flat = self._buffers[k] = xp.empty(n, dtype=ref.dtype)
            offset = 0
            for p in members:
                size = int(p.data.size)
                if p.grad is None:
                    flat[offset:offset + size] = 0
                else:
                    flat[offset:offset + size] = p.grad.reshape(-1)
                offset += size
            self.comm.allreduce(flat, op="sum")
            flat *= flat.dtype.type(inv_size)
            offset = 0
            for p in members:
                size = int(p.data.size)
                p.grad = flat[offset:offset + size].reshape(p.data.shape)
                offset += size
        self.seconds += time.perf_counter() - t0
        self.calls += 1

    def __repr__(self) -> str:
        sizes = [sum(int(self.params[i].data.size) for i in g) for g in self.buckets]
        return f"GradientBuckets({len(self.params)} parameters in buckets of {sizes} values)"


def allreduce_gradients(model: Layer | Iterable[Parameter], comm: Communicator,
                        bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """Average every parameter's gradient over the ranks (``(1/W) Σ_r g_r``), in place.

    A one-off convenience: it plans the buckets and allocates their buffers on every call.
    In a loop, keep a ``GradientBuckets`` (or use ``DistributedOptimizer``, which does).
    """
    params = model.parameters() if isinstance(model, Layer) else list(model)
    GradientBuckets(params, comm, bucket_bytes).allreduce()


class _DistributedMixin:
    """``step`` = average the gradients over the ranks, then the wrapped optimizer's step."""

    _buckets: GradientBuckets

    def step(self) -> None:
        self._buckets.allreduce()
        super().step()  # type: ignore[misc]


_CLASSES: dict[type, type] = {}


def DistributedOptimizer(optimizer: Any, comm: Communicator,  # noqa: N802 (Horovod's name)
                         bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> Any:
    """Make ``optimizer`` average the gradients over all ranks before each ``step``.

    Horovod's recipe: the optimizer's class is replaced, in place, by a subclass of the same
    name whose ``step`` first runs ``GradientBuckets.allreduce``. So the object stays the
    one your schedule and checkpoints know (``opt.lr`` set by a schedule is the one used,
    ``state_dict`` and the checkpoint's optimizer name are unchanged), and
    ``isinstance(opt, SGD)`` still holds. Returns the same object. Calling it twice is a
    no-op.
    """
    if isinstance(optimizer, _DistributedMixin):
        return optimizer
    base = type(optimizer)
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type(base.__name__, (_DistributedMixin, base),
                                    {"__module__": base.__module__,
                                     "__qualname__": base.__qualname__,
                                     "__doc__": base.__doc__})
    optimizer._buckets = GradientBuckets(optimizer.params, comm, bucket_bytes)
    optimizer.__class__ = cls
    return optimizer


def average_metrics(metrics: dict[str, Any], comm: Communicator,
                    weight: float = 1.0) -> dict[str, Any]:
    """The weighted mean over the ranks of every number in ``metrics`` (None stays None).

    ``Σ_r w_r m_r / Σ_r w_r`` with ``w_r = weight`` (e.g. the rank's number of samples); one
    allreduce for the whole dict. Every rank gets the same result, so decisions taken on it
    (early stopping, a NaN guard, the best checkpoint) agree across ranks.
    """
    keys = [k for k, v in metrics.items() if v is not None]
    sums = comm.allreduce_numbers([float(metrics[k]) * weight for k in keys] + [weight])
    out = dict(metrics)
    for k, s in zip(keys, sums[:-1], strict=True):
        out[k] = float(s / sums[-1])
    return out


def average_buffers(model: Layer, comm: Communicator) -> None:
    """Replace every buffer (BatchNorm's running statistics) by its mean over the ranks.

    With per-rank BatchNorm each rank's running statistics follow its own shards; ``fit``
    averages them at the end of every epoch, before validation and checkpoints, so every
    rank evaluates (and rank 0 saves) the same model. The mean of the ranks' running
    variances ignores the spread of their running means: a slight underestimate, the price
    Horovod and ChainerMN pay too.
    """
    arrays = [a for _, a in model.named_buffers()
              if getattr(a, "dtype", np.dtype("i")).kind == "f"]
    inv_size = 1.0 / comm.size
    for group in _flat_groups(arrays, bucket_bytes=2**62):
        members = [arrays[i] for i in group]
        xp = get_array_module(members[0])
        flat = xp.concatenate([a.reshape(-1) for a in members])
        comm.allreduce(flat, op="sum")
        flat *= flat.dtype.type(inv_size)
        offset = 0
        for a in members:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size


def parameters_digest(model: Layer, buffers: bool = True) -> int:
    """A 63-bit hash (BLAKE2b) of every parameter's (and buffer's) name and bytes."""
    h = hashlib.blake2b(digest_size=8)
    arrays = model.state_dict() if buffers else {n: p.data for n, p in model.named_parameters()}
    for name, a in arrays.items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(to_numpy(a)).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def check_parameters_identical(model: Layer, comm: Communicator, buffers: bool = True) -> None:
    """Raise RuntimeError unless every rank holds bit-identical parameters (and buffers).

    One tiny allreduce: the min and the max of the ranks' ``parameters_digest`` agree only
    when all digests are equal (the digest is split in two 32-bit halves, which float64
    carries exactly). Pass ``buffers=False`` for per-rank BatchNorm, whose running
    statistics differ between ranks until ``average_buffers``.
    """
    d = parameters_digest(model, buffers)
    halves = [d >> 32, d & 0xFFFFFFFF]
    lo = comm.allreduce_numbers(halves, op="min")
    hi = comm.allreduce_numbers(halves, op="max")
    if not np.array_equal(lo, hi):
        raise RuntimeError(f"check_parameters_identical: the ranks' parameters differ (rank "
                           f"{comm.rank} of {comm.size} has digest {d:016x}); a rank skipped "
                           f"an update or the gradients were not averaged")


def set_blas_threads(comm: Communicator, cores: int | None = None) -> int:
    """Give each rank ``cores // local_size`` BLAS threads (at least 1); return that number.

    Ranks on one machine share its cores: 2 ranks each running a 2-thread BLAS on 2 cores
    would fight over them. Uses threadpoolctl (a dependency of minicnn).
    """
    if cores is None:
        cores = available_cores()   # those this process may run on (taskset, containers)
    cores = int(cores or 1)
    threads = max(1, cores // max(1, comm.local_size))
    threadpool_limits(limits=threads, user_api="blas")
    return threads
