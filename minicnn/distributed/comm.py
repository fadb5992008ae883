"""Communicators: who am I (``rank``), how many are we (``size``), and the collectives.

A data-parallel job is ``size`` copies of the same script (the *ranks*), started by a
launcher (``mpiexec -n 2 python train.py``). They talk through a communication library that
already exists and is tuned for the job, never through a home-made socket protocol:

- **MPI** (through ``mpi4py``) for NumPy buffers: shared memory between the ranks of one
  machine, the network (TCP, InfiniBand) between machines;
- **NCCL** (through CuPy's ``cupy.cuda.nccl``) for CuPy buffers: GPU to GPU over NVLink /
  PCIe / InfiniBand, without a copy through the host. NCCL has no launcher of its own, so
  MPI starts the ranks and carries NCCL's 128-byte unique id from rank 0 to the others.

Both speak the same small interface, ``Communicator``:

=========================  ===============================================================
``rank``, ``size``         this rank's number (0 .. size-1) and the number of ranks
``local_rank``,            the rank's number among those on the same machine, and their
``local_size``             count (one GPU per local rank; BLAS threads per local rank)
``allreduce(buf, op)``     in place: every rank ends with the element-wise sum (or min/max)
``broadcast(buf, root)``   in place: every rank ends with ``root``'s values
``bcast_object(obj)``      a small picklable Python object from rank 0 to all
``barrier()``              wait until every rank got here
``abort(reason)``          end the whole job now, with this rank and the reason on stderr
=========================  ===============================================================

Failures. A collective waits for every rank; a rank that dies of an exception would leave
the others waiting forever. So ``create_communicator`` installs a ``sys.excepthook`` that
prints the traceback and then ``abort``\\ s the job (``MPI_Abort``): the launcher kills every
rank within about a second and exits non-zero. ``with comm.abort_on_error():`` does the same
for exceptions that are caught further up.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..backend import get_array_module, get_backend, to_numpy

__all__ = ["Communicator", "MPICommunicator", "NCCLCommunicator", "DistributedError",
           "create_communicator", "launched_size"]

MPI_INSTALL_HINT = (
    "install the `mpi` extra: pip install -e \".[mpi]\" (mpi4py and the `mpich` wheel, which "
    "brings its own `mpiexec`), or `pip install mpi4py mpich`; then start the job with "
    "`mpiexec -n 2 python your_script.py`")

# Launchers announce the job's size to each process they start (MPICH/Hydra and srun's PMI,
# Open MPI): if we see one of these and cannot import mpi4py, or MPI sees one rank only,
# every rank would silently train alone. That must be an error. (Not SLURM_NTASKS: it is set
# in the whole allocation, also for a python started without srun.)
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


class DistributedError(RuntimeError):
    """Distributed training cannot be set up (library missing, wrong launch, bad argument)."""


def launched_size() -> int | None:
    """The job size a launcher put in the environment (``mpiexec``, Open MPI, Slurm), if any."""
    for var in _SIZE_VARIABLES:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return None


def _import_mpi() -> Any:
    """``mpi4py.MPI``, or a DistributedError that says how to install it."""
    try:
        from mpi4py import MPI  # noqa: PLC0415 (optional dependency, imported on demand)
    except ImportError as exc:
        size = launched_size()
        where = (f" (this process was started as one of {size} ranks, which cannot talk to "
                 "each other without it)" if size and size > 1 else "")
        raise DistributedError(
            f"minicnn.distributed needs mpi4py, which failed to import: {exc}{where}; "
            f"{MPI_INSTALL_HINT}") from exc
    return MPI


_OPS = ("sum", "min", "max")


class Communicator:
    """The interface both back ends implement (see the module docstring).

    Attributes
    ----------
    rank, size : int
    local_rank, local_size : int
        Position and count among the ranks on this machine.
    name : str
        ``"mpi"`` or ``"nccl"``.
    """

    name = "base"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    # -- collectives (in place; return the buffer) -------------------------------------------
    def allreduce(self, buf: Any, op: str = "sum") -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def broadcast(self, buf: Any, root: int = 0) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def bcast_object(self, obj: Any, root: int = 0) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def barrier(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def abort(self, reason: str, code: int = 1,
              details: str = "") -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- conveniences built on the collectives ----------------------------------------------
    def allreduce_numbers(self, values: Any, op: str = "sum") -> np.ndarray:
        """Allreduce a few host numbers (metrics, counts) as one float64 vector.

        float64 so that sums of per-sample losses and counts stay exact enough; always over
        the host path, never the GPU (these are a handful of numbers).
        """
        buf = np.array(values, dtype=np.float64).reshape(-1)
        return self._host_allreduce(buf, op)

    def _host_allreduce(self, buf: np.ndarray, op: str) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    @contextlib.contextmanager
    def abort_on_error(self) -> Iterator[None]:
        """``with comm.abort_on_error():`` — an exception escaping the block aborts the job.

        Without it, the other ranks would wait in their next collective forever.
        """
        try:
            yield
        except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt must abort too
            if self.size > 1:
                self.abort(f"{type(exc).__name__}: {exc}", details=traceback.format_exc())
            raise

    @contextlib.contextmanager
    def in_turn(self) -> Iterator[None]:
        """``with comm.in_turn():`` — the ranks run the block one after the other (rank 0
        first), for setup that touches state they share. Ranks that are processes share
        none: here they run it at the same time (``ThreadCommunicator`` takes turns)."""
        yield

    def _check_op(self, op: str) -> str:
        if op not in _OPS:
            raise ValueError(f"{type(self).__name__}.allreduce: op must be one of {_OPS}, "
                             f"got {op!r}")
        return op

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank}, local_size={self.local_size})")


class MPICommunicator(Communicator):
    """MPI through mpi4py: NumPy buffers directly, CuPy buffers staged through the host.

    Parameters
    ----------
    mpi_comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD`` (every rank the launcher started).
    """

    name = "mpi"

    def __init__(self, mpi_comm: Any = None):
        self.MPI = _import_mpi()
        self.comm = self.MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        size = launched_size()
        if size is not None and size > 1 and self.size == 1:
            raise DistributedError(
                f"the launcher started {size} ranks, but MPI sees only this one: mpi4py is "
                f"linked against another MPI library than the `mpiexec` that started the job "
                f"({self.MPI.Get_library_version().splitlines()[0]}); use the `mpiexec` of "
                f"the same installation (with the `mpich` wheel: the one in the same bin/ "
                f"folder as this python)")
        # Ranks that share memory = ranks on this machine.
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = int(local.Get_rank())
        self.local_size = int(local.Get_size())
        local.Free()
        self._ops = {"sum": self.MPI.SUM, "min": self.MPI.MIN, "max": self.MPI.MAX}

    def _host_allreduce(self, buf: np.ndarray, op: str) -> np.ndarray:
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self._ops[self._check_op(op)])
        return buf

    def allreduce(self, buf: Any, op: str = "sum") -> Any:
        """Element-wise reduce ``buf`` over all ranks, in place; returns ``buf``.

        ``buf`` must be a C-contiguous NumPy or CuPy array of the same shape and dtype on
        every rank. CuPy buffers go through the host (one copy each way): use the NCCL
        communicator for GPU training.
        """
        if get_array_module(buf) is np:
            _check_contiguous(buf, "allreduce")
            return self._host_allreduce(buf, op)
        host = np.ascontiguousarray(to_numpy(buf))
        self._host_allreduce(host, op)
        buf[...] = get_array_module(buf).asarray(host)
        return buf

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        """Overwrite ``buf`` on every rank with rank ``root``'s values, in place."""
        if get_array_module(buf) is np:
            _check_contiguous(buf, "broadcast")
            self.comm.Bcast(buf, root=root)
            return buf
        host = np.ascontiguousarray(to_numpy(buf))
        self.comm.Bcast(host, root=root)
        buf[...] = get_array_module(buf).asarray(host)
        return buf

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, reason: str, code: int = 1, details: str = "") -> None:
        """Print ``reason`` with this rank's number (then ``details``, e.g. the traceback),
        and end every rank of the job."""
        sys.stdout.flush()
        sys.stderr.write(f"minicnn.distributed: rank {self.rank} of {self.size} failed: "
                         f"{reason}; aborting all {self.size} ranks (MPI_Abort)\n{details}")
        sys.stderr.flush()
        # The launcher forwards each rank's output asynchronously and stops forwarding once
        # it kills the job: give it a moment to pass these lines on first.
        time.sleep(0.5)
        self.comm.Abort(code)
        os._exit(code)  # MPI_Abort may return before the launcher's kill arrives


class NCCLCommunicator(MPICommunicator):
    """NCCL for CuPy buffers (GPU to GPU), MPI for the launch and for host numbers.

    One rank per GPU: rank ``local_rank`` uses GPU ``local_rank`` of its machine (made the
    current CuPy device here: create the communicator *before* the model, so that its
    parameters are allocated on the rank's own GPU). Rank 0 draws
    NCCL's unique id and MPI broadcasts it; then every rank joins the NCCL communicator
    (``cupy.cuda.nccl.NcclCommunicator(size, uid, rank)``). Collectives run on the current
    CuPy stream, so they are ordered after the backward kernels that produced the gradients
    without a host synchronisation. NumPy buffers (metrics) still go over MPI.
    """

    name = "nccl"

    def __init__(self, mpi_comm: Any = None):
        super().__init__(mpi_comm)
        from ..backend import get_cupy  # noqa: PLC0415 (the one door to CuPy)

        cp = get_cupy()
        try:
            # NCCL's binding is a submodule that `import cupy` does not load (and
            # `cp.cuda.nccl` is no attribute until it is imported): import it from the CuPy
            # that get_cupy() returned.
            nccl = importlib.import_module(f"{cp.__name__}.cuda.nccl")
            nccl.get_unique_id  # noqa: B018 - a CuPy built without NCCL lacks it
        except Exception as exc:  # ImportError / AttributeError: no NCCL in this CuPy
            raise DistributedError(
                f"the NCCL communicator needs CuPy built with NCCL (cupy.cuda.nccl), which is "
                f"not available here ({exc}); install the CuPy wheel for your CUDA version "
                f"(it bundles NCCL), or use create_communicator('mpi')") from exc
        self.cp, self.nccl = cp, nccl
        devices = int(cp.cuda.runtime.getDeviceCount())
        if self.local_size > devices:
            raise DistributedError(
                f"{self.local_size} ranks on this machine but only {devices} GPU(s): NCCL "
                f"needs one GPU per rank (start `mpiexec -n {devices}` per machine)")
        cp.cuda.Device(self.local_rank).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._nccl_ops = {"sum": nccl.NCCL_SUM, "min": nccl.NCCL_MIN, "max": nccl.NCCL_MAX}
        self._nccl_types = {np.dtype(np.float16): nccl.NCCL_FLOAT16,
                            np.dtype(np.float32): nccl.NCCL_FLOAT32,
                            np.dtype(np.float64): nccl.NCCL_FLOAT64,
                            np.dtype(np.int32): nccl.NCCL_INT32,
                            np.dtype(np.int64): nccl.NCCL_INT64,
                            np.dtype(np.uint8): nccl.NCCL_UINT8}

    def _nccl_type(self, buf: Any, what: str) -> int:
        if not buf.flags.c_contiguous:
            raise ValueError(f"NCCLCommunicator.{what}: the buffer must be C-contiguous")
        try:
            return self._nccl_types[np.dtype(buf.dtype)]
        except KeyError:
            raise TypeError(f"NCCLCommunicator.{what}: dtype {buf.dtype} is not supported "
                            f"(one of {sorted(str(d) for d in self._nccl_types)})") from None

    def allreduce(self, buf: Any, op: str = "sum") -> Any:
        if get_array_module(buf) is np:
            return super().allreduce(buf, op)
        dtype = self._nccl_type(buf, "allreduce")
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl_comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtype,
                                 self._nccl_ops[self._check_op(op)], stream)
        return buf

    def broadcast(self, buf: Any, root: int = 0) -> Any:
        if get_array_module(buf) is np:
            return super().broadcast(buf, root)
        dtype = self._nccl_type(buf, "broadcast")
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl_comm.bcast(buf.data.ptr, buf.size, dtype, root, stream)
        return buf

    def abort(self, reason: str, code: int = 1, details: str = "") -> None:
        with contextlib.suppress(Exception):  # NCCL's own abort frees the peers' kernels
            self.nccl_comm.abort()
        super().abort(reason, code, details)


def _check_contiguous(buf: np.ndarray, what: str) -> None:
    if not buf.flags.c_contiguous:
        raise ValueError(f"MPICommunicator.{what}: the buffer must be C-contiguous (MPI sends "
                         f"raw memory); got a strided view of shape {buf.shape}")


def _install_abort_hook(comm: Communicator) -> None:
    """Make an uncaught exception on any rank end the whole job instead of hanging it."""
    previous = sys.excepthook

    def hook(exc_type: type, exc: BaseException, tb: Any) -> None:
        if comm.size == 1:
            previous(exc_type, exc, tb)
            return
        comm.abort(f"uncaught {exc_type.__name__}: {exc}",
                   details="".join(traceback.format_exception(exc_type, exc, tb)))

    hook._minicnn_abort = True  # type: ignore[attr-defined]
    if not getattr(previous, "_minicnn_abort", False):
        sys.excepthook = hook


def create_communicator(kind: str = "auto", abort_on_error: bool = True) -> Communicator:
    """The communicator of this job, made from the launcher's environment.

    Parameters
    ----------
    kind : "mpi", "nccl" or "auto"
        ``"mpi"``: MPI for everything (NumPy; CuPy buffers staged through the host).
        ``"nccl"``: NCCL for CuPy buffers (one GPU per rank), MPI for the start-up and host
        numbers. ``"auto"``: NCCL when the current backend is CuPy, else MPI.
    abort_on_error : bool
        Install a ``sys.excepthook`` that aborts the whole job (``MPI_Abort``) when any rank
        dies of an uncaught exception, printing the rank and the reason, so that no rank is
        left waiting in a collective.

    Raises
    ------
    DistributedError
        mpi4py missing (with the install command), MPI/launcher mismatch, NCCL unavailable.
    """
    kind = str(kind).strip().lower()
    if kind not in ("mpi", "nccl", "auto"):
        raise ValueError(f"create_communicator: kind must be 'mpi', 'nccl' or 'auto', "
                         f"got {kind!r}")
    if kind == "auto":
        kind = "nccl" if get_backend() == "cupy" else "mpi"
    comm: Communicator = NCCLCommunicator() if kind == "nccl" else MPICommunicator()
    if abort_on_error:
        _install_abort_hook(comm)
    return comm
