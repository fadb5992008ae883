"""Data-parallel training inside one process: one thread per rank, on the CPU cores.

Why. NumPy runs its element-wise and copy passes (the im2col / Winograd gathers, BatchNorm,
pooling, ReLU) on one core; only the GEMMs use more (BLAS threads). On the team's 2-core
machine that leaves one core idle for about two thirds of a step (docs/benchmarks.md).
PyTorch splits every operation over a thread pool. minicnn splits the *batch* instead: W
threads, each a rank of the ordinary data-parallel training of ``minicnn.distributed``
(its own replica of the model, its shard of every global batch, the gradients averaged
before every step), each with ``cores // W`` BLAS threads. NumPy releases Python's GIL
inside its loops, copies and BLAS calls, so the ranks compute at the same time; only the
Python of the layer calls runs one thread at a time (docs/benchmarks.md has the speed-ups).

The algorithm is exactly ``mpiexec -n W``'s (docs/distributed.md): the same update from the
same averaged gradient on every rank, BatchNorm statistics over each rank's shard (use
``SyncBatchNorm2d`` for statistics over the global batch), and ``--batch-size`` per rank.
What differs is the communicator: ``ThreadCommunicator`` speaks the ``Communicator``
interface over shared memory and a ``threading.Barrier``, with no MPI installed::

    def train_rank(comm):                      # runs in W threads, comm.rank = 0 .. W-1
        model = build_model()                  # each rank its own replica
        loader = DataLoader(x, y, 32, seed=0, rank=comm.rank, world_size=comm.size)
        return fit(model, loss, opt, loader, epochs=10, comm=comm)

    histories = run_in_threads(train_rank, size=2)     # [rank 0's result, rank 1's, ...]

An allreduce costs one barrier wait, a copy and one pass over the buffers per rank; from
``SPLIT_ALLREDUCE_MIN_SIZE`` elements on (1 MiB of float32; the gradients of the CIFAR-10
preset's net are 1.2 MB) each rank sums only its share of the buffer, at three waits.
Thread-safety: each rank must own its model, optimizer and loaders (they hold per-step
state); minicnn's shared module state is thread-safe or per thread (the scratch arena is per
thread; ``in_turn`` serialises the setup that draws from the initialisers' global
generator).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..backend import available_cores, get_array_module
from ..functional.precision import get_precision, set_precision
from .comm import Communicator, DistributedError

__all__ = ["ThreadCommunicator", "run_in_threads", "available_cores"]

_REDUCE = {"sum": "add", "min": "minimum", "max": "maximum"}

# From this many elements on, ``allreduce`` splits the work over the ranks (``_allreduce_split``)
SPLIT_ALLREDUCE_MIN_SIZE = 1 << 18


class _Group:
    """What the W ranks of one ``run_in_threads`` share: a barrier and one slot per rank."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list[Any] = [None] * size
        # allreduce's slots, two sets used in turn (``ThreadCommunicator.allreduce``)
        self.copies: list[list[Any]] = [[None] * size, [None] * size]
        self.turn = threading.Condition()
        self.next_in_turn = 0
        self.failure: tuple[int, str] | None = None   # (rank, reason) of the first abort


class ThreadCommunicator(Communicator):
    """The ``Communicator`` of one thread-rank (made by ``run_in_threads``, not by hand).

    Collectives are in place and return the buffer, as MPI's: every rank passes its own
    buffer of the same shape and dtype, publishes it in its slot, waits for the others,
    then reads theirs. The sum runs in rank order on every rank, so every rank gets the
    same bits (the weights stay identical).
    """

    name = "threads"

    def __init__(self, group: _Group, rank: int):
        self._group = group
        self.rank = self.local_rank = rank
        self.size = self.local_size = group.size
        self._phase = 0     # which of the group's two sets of allreduce slots is next

    def _wait(self) -> None:
        """The barrier; raises ``DistributedError`` once another rank has aborted."""
        try:
            self._group.barrier.wait()
        except threading.BrokenBarrierError:
            raise self._stopped() from None

    def _stopped(self) -> DistributedError:
        """The error this rank raises because another one failed (``abort``)."""
        rank, reason = self._group.failure or (-1, "the barrier was broken")
        return DistributedError(f"rank {self.rank} stopped: rank {rank} of {self.size} "
                                f"failed ({reason})")

    def _exchange(self, value: Any) -> list[Any]:
        """Publish ``value``; return every rank's (valid until the caller's next ``_wait``)."""
        self._group.slots[self.rank] = value
        self._wait()
        return self._group.slots

    # -- collectives ---------------------------------------------------------------------
    def allreduce(self, buf: Any, op: str = "sum") -> Any:
        """Element-wise sum (or min / max) of every rank's ``buf``, into each ``buf``.

        One barrier wait: each rank publishes a *copy* of its buffer, so it may overwrite
        its own as soon as everyone has published. The copies alternate between two sets of
        slots: a rank can write set p again only two allreduces later, after the barrier of
        the one between, which every other rank reaches only once it has read set p.
        """
        reduce = getattr(get_array_module(buf), _REDUCE[self._check_op(op)])
        if self.size > 1 and buf.size >= SPLIT_ALLREDUCE_MIN_SIZE:
            return self._allreduce_split(buf, reduce)
        slots = self._group.copies[self._phase]
        self._phase ^= 1
        slots[self.rank] = buf.copy()
        self._wait()
        buf[...] = slots[0]
        for other in slots[1:]:
            reduce(buf, other, out=buf)
        return buf

    def _allreduce_split(self, buf: Any, reduce: Any) -> Any:
        """``allreduce`` of a large buffer: rank r reduces only the r-th of W slices.

        Three barrier waits and no copy of a whole buffer: (1) every rank publishes its
        buffer itself; rank r sums slice r of all of them in rank order and writes the
        result into slice r of its own buffer, which no other rank reads yet; (2) every
        rank copies the other slices' results from their owners; (3) no rank changes its
        buffer before the others have read their slices from it. Each rank moves about 2.5
        buffers of memory for W = 2, against 7 when it copies and sums all of it (the
        gradients of a large dense layer: docs/benchmarks.md).
        """
        W = self.size
        bounds = [buf.size * r // W for r in range(W + 1)]
        xp = get_array_module(buf)
        flat = buf.reshape(-1) if buf.flags.c_contiguous else xp.ascontiguousarray(buf).ravel()
        flats = list(self._exchange(flat))                                   # (1)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        acc = reduce(flats[0][lo:hi], flats[1][lo:hi])
        for other in flats[2:]:
            reduce(acc, other[lo:hi], out=acc)
        flat[lo:hi] = acc
        self._wait()                                                         # (2)
        for r in range(W):
            if r != self.rank:
                flat[bounds[r]:bounds[r + 1]] = flats[r][bounds[r]:bounds[r + 1]]
        self._wait()                                                         # (3)
        if not buf.flags.c_contiguous:
            buf[...] = flat.reshape(buf.shape)
        return buf

    def _host_allreduce(self, buf: np.ndarray, op: str) -> np.ndarray:
        return self.allreduce(buf, op)

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        """Every rank's ``buf`` overwritten with rank ``root``'s values."""
        source = self._exchange(buf)[root]
        if self.rank != root:
            buf[...] = source
        self._wait()
        return buf

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s object (the same object, not a copy: treat it as read-only)."""
        value = self._exchange(obj)[root]
        self._wait()
        return value

    def barrier(self) -> None:
        self._wait()

    def abort(self, reason: str, code: int = 1, details: str = "") -> None:
        """Break the barrier: every other rank's next (or current) collective raises
        ``DistributedError`` naming this rank, so all threads end; ``run_in_threads``
        re-raises the first failure's own exception. ``code`` and ``details`` are unused
        (no process to exit; the exception carries its traceback)."""
        with self._group.turn:
            if self._group.failure is None:
                self._group.failure = (self.rank, reason)
            self._group.turn.notify_all()
        self._group.barrier.abort()

    @contextlib.contextmanager
    def in_turn(self) -> Iterator[None]:
        """Run the block rank after rank (0 first), not at the same time.

        For setup that touches process-wide state: ``minicnn.init``'s generator (``set_seed``
        then building the model must not interleave with another rank's draws), printing.
        """
        g = self._group
        with g.turn:
            while g.next_in_turn != self.rank:
                if g.failure is not None:
                    raise self._stopped()
                g.turn.wait()
        try:
            yield
        finally:
            with g.turn:
                g.next_in_turn += 1
                g.turn.notify_all()


def run_in_threads(fn: Callable[[ThreadCommunicator], Any], size: int,
                   blas_threads: int | None = None) -> list[Any]:
    """Run ``fn(comm)`` on ``size`` thread-ranks at once; their return values, by rank.

    Rank 0 runs in the calling thread (so Ctrl-C reaches it and ends every rank). While the
    ranks run, BLAS is limited to ``blas_threads`` threads per call (default: the cores
    this process may use // ``size``, at least 1): W ranks × BLAS threads = cores; the limit
    is lifted when they return. An exception in any rank ends every rank (their next
    collective raises) and is re-raised here, with its traceback.

    Parameters
    ----------
    fn : callable taking the rank's ``ThreadCommunicator``
    size : int, the number of ranks (1: ``fn`` runs once, in this thread, with a communicator
        of size 1)
    blas_threads : int, optional
    """
    if int(size) < 1:
        raise ValueError(f"run_in_threads: expected size >= 1, got {size}")
    size = int(size)
    group = _Group(size)
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    policy = get_precision()        # per thread: every rank starts with the caller's

    def run(rank: int) -> None:
        comm = ThreadCommunicator(group, rank)
        try:
            with comm.abort_on_error():
                set_precision(policy)
                results[rank] = fn(comm)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the calling thread
            errors[rank] = exc

    if blas_threads is None:
        blas_threads = max(1, available_cores() // size)
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        others = [threading.Thread(target=run, args=(r,), name=f"minicnn-rank-{r}",
                                   daemon=True) for r in range(1, size)]
        for t in others:
            t.start()
        run(0)
        for t in others:
            t.join()
    failed = [e for e in errors if e is not None]
    if failed:
        first = group.failure[0] if group.failure is not None else None
        origin = errors[first] if first is not None and errors[first] is not None else failed[0]
        raise origin
    return results



