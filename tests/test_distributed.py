"""Data-parallel training (minicnn.distributed): 2 MPI ranks on loopback, and the pieces that
need no MPI at all (loader shards, bucketing, SyncBatchNorm without a communicator, errors).

The multi-rank checks run real jobs, ``mpiexec -n 2 python tests/distributed_scripts/...``,
and read what rank 0 prints; they skip, saying why, where mpi4py or mpiexec is missing
(``pip install -e ".[mpi]"`` brings both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minicnn as mc
from minicnn import layers as L
from minicnn.distributed import DistributedError, SyncBatchNorm2d, convert_sync_batchnorm
from minicnn.distributed import comm as dist_comm
from minicnn.distributed.data_parallel import _flat_groups
from minicnn.training.strategy import DataParallelStrategy, LocalStrategy, strategy_for

SCRIPTS = Path(__file__).resolve().parent / "distributed_scripts"
ROOT = SCRIPTS.parents[1]


def _mpiexec() -> str | None:
    """The mpiexec next to this python (the `mpich` wheel's), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _why_no_mpi() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e \".[mpi]\")"
    if _mpiexec() is None:
        return "no mpiexec found (pip install mpich, or an MPI installation on PATH)"
    return None


needs_mpi = pytest.mark.skipif(_why_no_mpi() is not None, reason=str(_why_no_mpi()))


def launch(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n 2 python SCRIPT ARGS`` from the repository root; one BLAS thread per
    rank (2 ranks on 2 cores)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    return subprocess.run([_mpiexec(), "-n", "2", sys.executable, str(SCRIPTS / script), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, f"job failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line from rank 0:\n{proc.stdout}"
    return json.loads(lines[0][len("RESULT "):])


# -- 2 ranks -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checks():
    return result_of(launch("checks.py"))


@needs_mpi
def test_two_ranks_of_16_equal_one_process_of_32(checks):
    eq = checks["equivalence"]
    # No BatchNorm: the mean of the ranks' gradients is the big-batch gradient.
    assert eq["plain"]["dtype"] == "float32"
    assert eq["plain"]["max_rel_diff"] < 1e-5, eq["plain"]
    # SyncBatchNorm: the statistics span both ranks, so the same holds.
    assert eq["syncbn"]["max_rel_diff"] < 1e-5, eq["syncbn"]
    # Per-rank BatchNorm normalises each rank's 16 samples on their own: a different
    # function (docs/distributed.md), here ~10 % apart after 5 steps.
    assert eq["bn"]["max_rel_diff"] > 1e-3, eq["bn"]
    # Every step, the hash allreduce found identical parameters on both ranks.
    assert all(eq[k]["hash_checks"] == 5 for k in eq)


@needs_mpi
def test_sync_batchnorm_gradient_across_two_ranks(checks):
    g = checks["gradcheck"]
    assert g["probes"] >= 10
    assert g["max_grad_error"] < 1e-6, g            # float64 central differences
    assert g["max_forward_diff"] < 1e-12, g         # = BatchNorm2d on the joined batch
    assert g["running_diff"] < 1e-12, g


@needs_mpi
def test_rank_shards_make_the_single_loaders_batches(checks):
    s = checks["shards"]
    assert s["match"] and s["lengths_equal"]
    assert s["sizes"] == [8, 8, 8, 8, 5]           # 75 samples: 4 x 16, then 11 -> 5 each


@needs_mpi
def test_device_arrays_over_mpi_and_nccl_missing(checks):
    d = checks["device"]
    if "skipped" in d:
        pytest.skip(d["skipped"])
    assert d["array_module"] == "tests.strict_device"
    assert d["max_rel_diff_vs_numpy"] < 1e-6
    assert "cupy.cuda.nccl" in d["nccl_error"] and "create_communicator('mpi')" in d["nccl_error"]


@needs_mpi
def test_a_raising_rank_takes_the_job_down_with_its_reason():
    t0 = time.perf_counter()
    proc = launch("fail.py", timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.0f} s to die"
    assert "rank 1 of 2 failed" in proc.stderr, proc.stderr
    assert "the data on rank 1 is corrupt" in proc.stderr
    assert "unreachable" not in proc.stdout


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_fit")
    proc = launch("fit_run.py", "full", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@needs_mpi
def test_fit_metrics_agree_and_only_rank0_writes(full_run):
    rank0 = json.loads((full_run / "full.json").read_text())
    rank1 = json.loads((full_run / "rank1.json").read_text())
    assert rank0["loss"] == rank1["loss"] and rank0["val_acc"] == rank1["val_acc"]
    assert rank0["checkpoint_written"] and not rank1["checkpoint_written"]
    assert sorted(p.name for p in full_run.glob("ckpt-*.npz")) == \
        ["ckpt-1.npz", "ckpt-2.npz", "ckpt-3.npz"]


@needs_mpi
def test_resumed_distributed_run_continues_exactly(full_run):
    res = result_of(launch("fit_run.py", "resume", str(full_run)))
    assert res["epoch"] == 1
    assert res["identical"] and all(res["identical"].values()), res


@needs_mpi
def test_writer_killed_mid_checkpoint_leaves_the_previous_one(tmp_path):
    proc = launch("fit_run.py", "kill", str(tmp_path))
    assert proc.returncode != 0                      # rank 0 died of SIGKILL, the job with it
    temps = list(tmp_path.glob(".tmp-*"))
    assert temps and temps[0].stat().st_size > 0   # it died with a full temporary file ...
    model = L.Sequential(L.Conv2d(3, 8, 3, padding=1, bias=False), L.BatchNorm2d(8), L.ReLU(),
                         L.MaxPool2d(2), L.Flatten(), L.Dropout(0.3), L.Linear(8 * 4 * 4, 10))
    ckpt = mc.training.load(tmp_path / "kill.npz", model)   # ... and a complete checkpoint
    assert ckpt.epoch == 1


def _cli_has_distributed() -> bool:
    from minicnn.cli import build_parser

    return "--distributed" in build_parser("cifar10").format_help()


@needs_mpi
@pytest.mark.skipif(not _cli_has_distributed(), reason="the CLI has no --distributed flag")
def test_cli_distributed_smoke_run_writes_once(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [_mpiexec(), "-n", "2", sys.executable, "-m", "minicnn", "train", "--dataset", "cifar10",
         "--smoke", "--distributed", "--backend", "numpy", "--epochs", "2", "--no-plots",
         "--out", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy:") == 1          # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["history.json",
                                                                    "model.npz"]


# -- no MPI needed -------------------------------------------------------------------------

def _ids(loader):
    return [np.asarray(y) for _, y in loader]


@pytest.mark.parametrize("n, drop_last", [(64, False), (75, False), (75, True), (33, False)])
def test_loader_shards_are_equal_slices_of_the_global_batches(n, drop_last):
    x = np.zeros((n, 1, 2, 2), np.uint8)
    y = np.arange(n, dtype=np.int64)
    ranks = [_ids(mc.data.DataLoader(x, y, 8, seed=3, drop_last=drop_last, rank=r,
                                     world_size=3)) for r in range(3)]
    single = _ids(mc.data.DataLoader(x, y, 24, seed=3, drop_last=drop_last))
    assert len({len(r) for r in ranks}) == 1
    for k in range(len(ranks[0])):
        sizes = {len(r[k]) for r in ranks}
        assert len(sizes) == 1                          # equal shards at every step
        joined = np.concatenate([r[k] for r in ranks])
        assert np.array_equal(joined, single[k][:len(joined)])
    seen = np.concatenate([np.concatenate(r) for r in ranks])
    assert len(np.unique(seen)) == len(seen)            # no sample twice in an epoch
    full, rest = divmod(n, 24)
    assert len(seen) == full * 24 + (0 if drop_last else rest // 3 * 3)


def test_loader_world_size_one_is_the_plain_loader():
    x, y = mc.data.synthetic(50, (1, 4, 4))
    a = [yb for _, yb in mc.data.DataLoader(x, y, 8, seed=1)]
    b = [yb for _, yb in mc.data.DataLoader(x, y, 8, seed=1, rank=0, world_size=1)]
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        mc.data.DataLoader(x, y, 8, rank=2, world_size=2)


def test_ranks_augment_independently_from_a_shared_permutation():
    x, y = mc.data.synthetic(32, (1, 4, 4))

    def noise(batch, rng):
        return batch + rng.normal(size=batch.shape).astype(np.float32)

    loaders = [mc.data.DataLoader(x, y, 16, seed=2, transform=noise, rank=r, world_size=2)
               for r in range(2)]
    (x0, _), (x1, _) = (next(iter(ld)) for ld in loaders)
    assert not np.allclose(x0 - x0.mean(), x1 - x1.mean())
    # The shared stream (the one a checkpoint saves) is in the same state on both ranks.
    assert loaders[0].rng.bit_generator.state == loaders[1].rng.bit_generator.state


def test_buckets_group_by_dtype_and_size():
    arrays = [np.zeros(10, np.float32), np.zeros(300, np.float32), np.zeros(5, np.float64),
              np.zeros(20, np.float32)]
    assert _flat_groups(arrays, bucket_bytes=1000) == [[0, 3], [1], [2]]
    assert _flat_groups(arrays, bucket_bytes=10**6) == [[0, 1, 3], [2]]


def test_sync_batchnorm_without_communicator_is_batchnorm():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 5, 5)).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    bn, sbn = L.BatchNorm2d(3), SyncBatchNorm2d(3)
    assert np.array_equal(bn.forward(x), sbn.forward(x))
    assert np.array_equal(bn.backward(dout), sbn.backward(dout))
    assert np.array_equal(bn.gamma.grad, sbn.gamma.grad)


def test_convert_sync_batchnorm_keeps_parameters_and_buffers():
    model = L.Sequential(L.Conv2d(3, 4, 3, bias=False), L.BatchNorm2d(4), L.ReLU())
    model.layers[1].running_mean[...] = 0.5
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    convert_sync_batchnorm(model, comm=None)
    assert type(model.layers[1]) is SyncBatchNorm2d
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_missing_mpi4py_is_a_clear_error(monkeypatch):
    from minicnn.distributed import create_communicator

    monkeypatch.setitem(sys.modules, "mpi4py", None)   # what `import mpi4py` sees uninstalled
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(DistributedError, match=r"one of 2 ranks.*pip install -e \"\.\[mpi\]\""):
        create_communicator("mpi")
    with pytest.raises(ValueError, match="'mpi', 'nccl' or 'auto'"):
        create_communicator("gloo")


# -- fit's distributed seam (minicnn/training/strategy.py), in one process ----------------

class LoopbackComm(dist_comm.Communicator):
    """A job of one rank (collectives are the identity), which may claim another rank number:
    enough to run ``fit``'s data-parallel path without MPI."""

    name = "loopback"

    def __init__(self, rank: int = 0):
        self.rank = rank

    def allreduce(self, buf, op="sum"):
        return buf

    def broadcast(self, buf, root=0):
        return buf

    def bcast_object(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def _host_allreduce(self, buf, op):
        return buf


def _tiny_fit(comm, callbacks=(), verbose=0):
    mc.init.set_seed(0)
    model = L.Sequential(L.Conv2d(3, 4, 3, padding=1, bias=False), L.BatchNorm2d(4), L.ReLU(),
                         L.Flatten(), L.Dropout(0.2, seed=1), L.Linear(4 * 6 * 6, 10))
    x, y = mc.data.synthetic(40, (3, 6, 6), seed=2)
    train = mc.data.DataLoader(x, y, 8, seed=3)
    val = mc.data.DataLoader(x[:16], y[:16], 8, shuffle=False)
    opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = mc.training.fit(model, mc.losses.CrossEntropyLoss(), opt, train, val, epochs=2,
                              callbacks=list(callbacks), verbose=verbose, comm=comm)
    return model, opt, history


def test_strategy_for_picks_local_or_data_parallel():
    assert type(strategy_for(None)) is LocalStrategy
    assert type(strategy_for(LoopbackComm())) is DataParallelStrategy
    losses, correct, sizes = np.array([0.5, 0.25]), np.array([3.0, 4.0]), np.array([8, 6])
    out = LocalStrategy().reduce_metrics(losses, correct, sizes)
    assert all(a is b for a, b in zip(out, (losses, correct, sizes), strict=True))


def test_fit_through_the_data_parallel_strategy_on_one_rank_is_the_local_fit():
    model, opt, local = _tiny_fit(None)
    model_dp, opt_dp, dp = _tiny_fit(LoopbackComm())
    assert type(opt_dp).__name__ == "SGD" and isinstance(opt_dp, mc.optim.SGD)
    assert hasattr(opt_dp, "_buckets") and not hasattr(opt, "_buckets")
    for (name, a), b in zip(model.state_dict().items(), model_dp.state_dict().values(),
                            strict=True):
        assert np.array_equal(a, b), name       # the same updates, bit for bit
    for key in ("loss", "acc", "val_loss", "val_acc"):   # (l·n)/n: equal up to rounding
        np.testing.assert_allclose(dp.history[key], local.history[key], rtol=1e-12)


def test_only_rank_zero_prints_and_runs_rank_zero_only_callbacks(tmp_path, capsys):
    class Seen(mc.training.Callback):
        def __init__(self, rank_zero_only):
            self.rank_zero_only, self.epochs = rank_zero_only, []

        def on_epoch_end(self, epoch, logs):
            self.epochs.append(epoch)

    for rank in (0, 1):
        everywhere, rank0 = Seen(False), Seen(True)
        ckpt = mc.training.ModelCheckpoint(str(tmp_path / f"r{rank}-{{epoch}}.npz"),
                                           save_best_only=False)
        _, _, history = _tiny_fit(LoopbackComm(rank), [everywhere, rank0, ckpt], verbose=2)
        printed = capsys.readouterr().out
        assert len(history.history["loss"]) == 2 and everywhere.epochs == [1, 2]
        assert (rank0.epochs == [1, 2]) == (rank == 0)
        assert (ckpt.last_path is not None) == (rank == 0)
        assert ("epoch 2/2" in printed) == (rank == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0-1.npz", "r0-2.npz"]
