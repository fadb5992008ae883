"""Data-parallel training on the threads of one process (minicnn.distributed.threads).

The thread-ranks run the same algorithm as ``mpiexec -n 2`` (tests/test_distributed.py), so
the same equivalence is checked: W ranks of b samples equal one process of W·b samples, for
a model without BatchNorm and with SyncBatchNorm2d, with identical parameters on every rank
after every step. The ranks really run at the same time, each in its own scratch arena;
an error in one rank ends them all and comes back with its own type and message.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import minicnn as mc
from minicnn import distributed as dist
from minicnn.functional.scratch import scratch, scratch_nbytes
from tests.distributed_scripts.equivalence_model import build, train

STEPS, LOCAL_BATCH = 4, 8


@pytest.mark.parametrize("kind", ["plain", "syncbn"])
@pytest.mark.parametrize("size", [2, 3])
def test_thread_ranks_equal_one_process_of_the_global_batch(kind, size):
    x, y = mc.data.synthetic(STEPS * LOCAL_BATCH * size, (3, 8, 8), seed=3)
    checks = []

    def rank(comm):
        with comm.in_turn():                       # set_seed + init: one rank at a time
            model = build(kind)
        if kind == "syncbn":
            dist.convert_sync_batchnorm(model, comm)
        if comm.rank != 0:                         # broadcast_parameters has work to do
            for p in model.parameters():
                p.data += 1.0
        dist.broadcast_parameters(model, comm)
        opt = dist.DistributedOptimizer(mc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                        comm)
        loader = mc.data.DataLoader(x, y, LOCAL_BATCH, seed=1, rank=comm.rank,
                                    world_size=comm.size)

        def check(m):
            dist.check_parameters_identical(m, comm)   # raises on any difference
            checks.append(comm.rank)

        train(model, loader, opt, STEPS, check)
        return {n: np.array(v) for n, v in model.state_dict().items()}

    states = dist.run_in_threads(rank, size)
    assert sorted(checks) == sorted(list(range(size)) * STEPS)
    ref = build(kind)
    train(ref, mc.data.DataLoader(x, y, LOCAL_BATCH * size, seed=1),
          mc.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9), STEPS)
    for state in states:                          # every rank: the same bits as rank 0
        for name, value in state.items():
            np.testing.assert_array_equal(value, states[0][name])
    for name, value in ref.state_dict().items():
        b = np.asarray(value)
        scale = float(np.abs(b).max()) + 1e-12
        assert float(np.abs(states[0][name] - b).max()) / scale < 1e-5, name


@pytest.mark.parametrize("mean, known", [(0.0, False), (1e3, False), (1e3, True)],
                         ids=["centred", "far-first-steps", "far-known-mean"])
def test_sync_batchnorm_is_batchnorm_of_the_global_batch_with_one_allreduce(mean, known):
    """The shifted one-pass statistics (K = running mean) equal BatchNorm2d's two-pass ones
    over the whole batch, also for a mean a thousand sigmas from K (the exact second pass),
    and cost one allreduce per forward (sums and count) once K is near the batch mean."""
    size, C, steps = 2, 3, 3
    rng = np.random.default_rng(0)
    xs = (rng.standard_normal((steps, 4 * size, C, 5, 5)) + mean).astype(np.float32)
    douts = rng.standard_normal(xs.shape).astype(np.float32)
    start = np.full(C, mean + 0.3 if known else 0.0, np.float32)

    def rank(comm):
        calls = []
        allreduce = comm.allreduce
        comm.allreduce = lambda buf, op="sum": calls.append(buf.size) or allreduce(buf, op)
        layer = mc.layers.SyncBatchNorm2d(C, comm=comm)
        layer.running_mean[...] = start
        out = []
        for x, dout in zip(xs, douts, strict=True):
            shard = slice(4 * comm.rank, 4 * comm.rank + 4)
            calls.clear()
            y = layer(x[shard])
            forward_calls = len(calls)
            out.append((y, layer.backward(dout[shard]), forward_calls))
        return out, layer.running_mean.copy(), layer.running_var.copy()

    results = dist.run_in_threads(rank, size)
    # float32 holds x = 1000 + z to 6e-5: both mus are that uncertain, so y and dx are too
    # (the one-pass formula without the fallback is off by ~10 % there).
    atol = 1e-4 + 4 * np.finfo(np.float32).eps * mean
    ref = mc.layers.BatchNorm2d(C)
    ref.running_mean[...] = start
    for t, (x, dout) in enumerate(zip(xs, douts, strict=True)):
        y, dx = ref(x), ref.backward(dout)
        for r, (out, _, _) in enumerate(results):
            shard = slice(4 * r, 4 * r + 4)
            np.testing.assert_allclose(out[t][0], y[shard], rtol=1e-4, atol=atol)
            np.testing.assert_allclose(out[t][1], dx[shard], rtol=1e-3, atol=atol)
            # the sums and the count in one allreduce; a second only where K is far from mu
            assert out[t][2] == (2 if mean and not known else 1), (t, out[t][2])
    for _, running_mean, running_var in results:
        np.testing.assert_allclose(running_mean, ref.running_mean, rtol=1e-6)
        np.testing.assert_allclose(running_var, ref.running_var, rtol=1e-4)


def test_collectives_sum_min_max_broadcast_and_objects():
    def rank(comm):
        r = comm.rank
        out = {
            "sum": comm.allreduce(np.array([r, 10.0 * r], np.float32)).tolist(),
            "min": comm.allreduce(np.array([r + 1.0]), op="min").tolist(),
            "max": comm.allreduce(np.array([r + 1.0]), op="max").tolist(),
            "numbers": comm.allreduce_numbers([1, r]).tolist(),
            "bcast": comm.broadcast(np.full(2, float(r)), root=2).tolist(),
            "object": comm.bcast_object({"from": r}, root=1),
        }
        comm.barrier()
        return out

    results = dist.run_in_threads(rank, 3)
    for out in results:
        assert out == {"sum": [3.0, 30.0], "min": [1.0], "max": [3.0], "numbers": [3.0, 3.0],
                       "bcast": [2.0, 2.0], "object": {"from": 1}}
    with pytest.raises(ValueError, match="op must be one of"):
        dist.run_in_threads(lambda comm: comm.allreduce(np.zeros(1), op="mean"), 2)


def test_back_to_back_allreduces_never_read_a_rank_s_next_buffer():
    """The allreduce's one barrier: a rank that races ahead into the next allreduces must not
    overwrite a copy another rank is still summing (ranks pause at random to provoke it)."""
    size, rounds = 3, 200

    def rank(comm):
        rng = np.random.default_rng(comm.rank)
        out = []
        for t in range(rounds):
            if rng.random() < 0.1:
                time.sleep(0.001)
            buf = np.full(4, float(t * 10 + comm.rank))
            out.append(comm.allreduce(buf)[0])
        return out

    expected = [float(sum(t * 10 + r for r in range(size))) for t in range(rounds)]
    for out in dist.run_in_threads(rank, size):
        assert out == expected


@pytest.mark.parametrize("size", [2, 3])
def test_a_large_allreduce_splits_the_work_and_gives_the_same_bits(monkeypatch, size):
    """From SPLIT_ALLREDUCE_MIN_SIZE elements on, rank r sums only the r-th slice (in rank
    order, as the one-barrier path) and the others copy it: the same bits on every rank,
    for sizes that do not divide by the ranks and a buffer that is not contiguous; a rank
    that overwrites its buffer right after must not change what the others read."""
    from minicnn.distributed import threads

    monkeypatch.setattr(threads, "SPLIT_ALLREDUCE_MIN_SIZE", 10)
    rounds, n = 60, 101
    inputs = [[np.random.default_rng(100 * t + r).standard_normal(n).astype(np.float32)
               for r in range(size)] for t in range(rounds)]

    def rank(comm):
        rng = np.random.default_rng(comm.rank)
        out = []
        buf = np.empty(n, np.float32)
        for t in range(rounds):
            if rng.random() < 0.1:
                time.sleep(0.001)
            buf[...] = inputs[t][comm.rank]          # reuses the buffer the others just read
            out.append(comm.allreduce(buf).copy())
        wide = np.arange(2 * 3 * 7, dtype=np.float64).reshape(2, 3, 7) + comm.rank
        view = wide[:, :, ::2]                       # 24 elements, not contiguous
        comm.allreduce(view, op="max")
        return out, wide, comm.rank

    for out, wide, r in dist.run_in_threads(rank, size):
        for t in range(rounds):
            expected = inputs[t][0] + inputs[t][1]
            for x in inputs[t][2:]:
                expected = expected + x
            np.testing.assert_array_equal(out[t], expected)
        base = np.arange(42, dtype=np.float64).reshape(2, 3, 7)
        np.testing.assert_array_equal(wide[:, :, ::2], base[:, :, ::2] + size - 1)
        np.testing.assert_array_equal(wide[:, :, 1::2], base[:, :, 1::2] + r)  # untouched


def test_ranks_run_at_the_same_time_in_their_own_threads():
    met = threading.Barrier(2, timeout=10)           # only passable if both run at once

    def rank(comm):
        met.wait()
        return threading.get_ident()

    idents = dist.run_in_threads(rank, 2)
    assert idents[0] == threading.get_ident()         # rank 0: the calling thread
    assert idents[1] != idents[0]


def test_each_thread_has_its_own_scratch_arena():
    def rank(comm):
        buf = scratch(np, "test-threads", (4,), np.float32)
        buf[...] = comm.rank
        comm.barrier()                                 # both filled before either reads
        seen = buf.copy()
        comm.barrier()
        return seen.tolist(), scratch_nbytes(np) >= 16

    results = dist.run_in_threads(rank, 2)
    assert results == [([0.0] * 4, True), ([1.0] * 4, True)]


def test_in_turn_runs_the_block_rank_after_rank():
    order = []

    def rank(comm):
        if comm.rank == 0:
            time.sleep(0.05)                         # rank 1 would overtake without turns
        with comm.in_turn():
            order.append(("start", comm.rank))
            time.sleep(0.01)
            order.append(("end", comm.rank))

    dist.run_in_threads(rank, 3)
    assert order == [(w, r) for r in range(3) for w in ("start", "end")]


@pytest.mark.parametrize("failing", [0, 1])
def test_a_raising_rank_ends_every_rank_and_its_error_comes_back(failing):
    def rank(comm):
        if comm.rank == failing:
            raise KeyError("bad batch 7")
        for _ in range(3):
            comm.allreduce(np.ones(2))               # would wait forever without the abort
        return "done"

    start = time.perf_counter()
    with pytest.raises(KeyError, match="bad batch 7"):
        dist.run_in_threads(rank, 2)
    assert time.perf_counter() - start < 5


def test_a_waiting_rank_learns_which_rank_failed():
    seen = []

    def rank(comm):
        if comm.rank == 1:
            time.sleep(0.05)
            raise RuntimeError("out of paper")
        try:
            comm.barrier()
        except dist.DistributedError as exc:
            seen.append(str(exc))
            raise

    with pytest.raises(RuntimeError, match="out of paper"):
        dist.run_in_threads(rank, 2)
    assert seen and "rank 1 of 2 failed (RuntimeError: out of paper)" in seen[0]


def test_blas_threads_are_limited_while_the_ranks_run_and_restored_after():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads():
        pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        return [p["num_threads"] for p in pools]

    before = blas_threads()
    if not before:
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    inside = dist.run_in_threads(lambda comm: blas_threads(), 2, blas_threads=1)
    assert inside == [[1] * len(before)] * 2
    assert blas_threads() == before
    # ... and minicnn's own reading, which Conv2d's "auto" rule divides the pixels by
    from minicnn.backend import blas_threads as minicnn_blas_threads

    assert dist.run_in_threads(lambda comm: minicnn_blas_threads(), 2, blas_threads=1) == [1, 1]
    assert minicnn_blas_threads() == before[0]


def test_size_one_runs_in_the_calling_thread_and_bad_sizes_are_refused():
    assert dist.run_in_threads(lambda comm: (comm.size, comm.rank, threading.get_ident()), 1) \
        == [(1, 0, threading.get_ident())]
    with pytest.raises(ValueError, match="size >= 1"):
        dist.run_in_threads(lambda comm: None, 0)


def test_fit_on_thread_ranks_agrees_on_metrics_and_weights():
    x, y = mc.data.synthetic(64, (3, 8, 8), seed=4)

    def rank(comm):
        with comm.in_turn():
            model = build("plain")
        opt = mc.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        train_loader = mc.data.DataLoader(x, y, 8, seed=2, rank=comm.rank, world_size=comm.size)
        val_loader = mc.data.DataLoader(x, y, 16, rank=comm.rank, world_size=comm.size)
        history = mc.training.fit(model, mc.losses.CrossEntropyLoss(), opt, train_loader,
                                  val_loader, epochs=2, verbose=0, comm=comm)
        dist.check_parameters_identical(model, comm)
        return {k: v for k, v in history.history.items() if k != "time"}   # times differ

    histories = dist.run_in_threads(rank, 2)
    assert histories[0] == histories[1]
    assert len(histories[0]["loss"]) == 2 and np.isfinite(histories[0]["val_loss"]).all()


def test_cli_threads_smoke_run_prints_and_writes_once(tmp_path, monkeypatch, capsys):
    from minicnn import cli, commands

    monkeypatch.setenv("MINICNN_BACKEND", "numpy")
    loads = []
    load_splits = commands._load_splits
    monkeypatch.setattr(commands, "_load_splits", lambda *a: loads.append(a) or load_splits(*a))
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "cifar10", "--smoke", "--threads", "2", "--epochs",
                     "2", "--no-plots", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert len(loads) == 1      # rank 0 loaded the data; rank 1 read the same (read-only) arrays
    assert "batch 32 per thread x 2 threads = 64" in printed
    assert printed.count("test accuracy:") == 1 and printed.count("epoch 2/2") == 1
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "model.npz"]
    ckpt = mc.training.load(str(out / "model.npz"), restore_rng=False)
    assert ckpt.meta["train_config"]["threads"] == 2
    # The ranks predicted the test set in two slices; the saved model, evaluated whole in one
    # thread with the same TTA, gives the same accuracy.
    accuracy = printed.split("test accuracy: ")[1].split("%")[0]
    assert f"test accuracy: {accuracy}% on 48 images" in printed      # both slices
    assert cli.main(["evaluate", str(out / "model.npz"), "--smoke"]) == 0
    assert f"accuracy {accuracy}% (48 images" in capsys.readouterr().out


@pytest.mark.parametrize("threads", [2, 1])
def test_cli_sync_bn_converts_batchnorm_where_there_are_ranks(tmp_path, monkeypatch, capsys,
                                                              threads):
    from minicnn import cli

    monkeypatch.setenv("MINICNN_BACKEND", "numpy")
    assert cli.main(["train", "--dataset", "cifar10", "--smoke", "--threads", str(threads),
                     "--sync-bn", "--no-plots", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # with one rank there is nothing to synchronise: plain BatchNorm2d
    assert ("SyncBatchNorm2d" in printed) == (threads > 1)
    ckpt = mc.training.load(str(tmp_path / "model.npz"), restore_rng=False)
    assert ckpt.meta["train_config"]["sync_bn"] is True
    # the saved model is an ordinary one: the same state-dict names as BatchNorm2d's
    assert cli.main(["evaluate", str(tmp_path / "model.npz"), "--smoke"]) == 0


@pytest.mark.parametrize("argv, backend, batch, threads", [
    ([], "numpy", 32, 2),                                  # the preset: 2 threads x 32
    (["--threads", "1"], "numpy", 32, 1),                  # asked for: one thread of 32
    (["--preset", "cpu"], "cupy", 64, 1),                  # no threads on a GPU: 1 x 64
    (["--preset", "cpu", "--batch-size", "16"], "cupy", 16, 1),   # explicit: as given
    (["--distributed"], "numpy", 64, 1),                   # MPI ranks: 64 per rank
    (["--preset", "gpu"], "numpy", 1024, 1),               # a preset without threads
])
def test_the_presets_threads_fold_into_the_batch_where_threads_do_not_run(argv, backend, batch,
                                                                          threads):
    from minicnn import cli, commands

    args = cli.build_parser().parse_args(["train", "--dataset", "cifar10", *argv])
    cfg = commands._resolve(args, backend)
    assert (cfg["batch_size"], cfg["threads"]) == (batch, threads)


def test_each_rank_keeps_its_own_precision_policy():
    """fit's autocast, entered and left by each rank at its own time, must neither switch
    another rank's policy mid-step nor leak into the caller (it did, when the policy was
    process-wide: the last rank out restored the policy the first rank had set)."""
    from minicnn.functional import precision as P

    def rank(comm):
        seen = [P.get_precision()]                       # the caller's, at the start
        comm.barrier()
        if comm.rank == 0:
            with P.autocast("bf16"):
                comm.barrier()                           # 1: rank 0 inside bf16
                comm.barrier()                           # 2: rank 1 inside tf32
                seen.append(P.get_precision())           # still bf16 here
            comm.barrier()                               # 3: rank 0 is out
            comm.barrier()                               # 4: rank 1 is out
        else:
            comm.barrier()                               # 1
            with P.autocast("tf32"):
                comm.barrier()                           # 2
                comm.barrier()                           # 3: rank 0 left its autocast
                seen.append(P.get_precision())           # still tf32 here
            comm.barrier()                               # 4
        seen.append(P.get_precision())
        return seen

    assert P.get_precision() == "fp32"
    assert dist.run_in_threads(rank, 2) == [["fp32", "bf16", "fp32"], ["fp32", "tf32", "fp32"]]
    assert P.get_precision() == "fp32"
    P.set_precision("bf16")
    try:
        assert dist.run_in_threads(lambda comm: P.get_precision(), 2) == ["bf16", "bf16"]
    finally:
        P.set_precision("fp32")


def test_a_resumed_thread_run_continues_exactly(tmp_path, monkeypatch, capsys):
    """Two thread-ranks and the preset's alternating flip: epoch 2 after a resume is the
    uninterrupted run's epoch 2 (the loader resumes at the checkpoint's epoch, so the flips
    keep their parity; before, the resumed run mirrored the wrong half)."""
    import json

    from minicnn import cli

    monkeypatch.setenv("MINICNN_BACKEND", "numpy")
    # --validation-freq 1: the first run's last epoch (1) is validated, so the whole run's
    # epoch 1 must be too for the histories to compare
    common = ["train", "--dataset", "cifar10", "--smoke", "--threads", "2", "--schedule",
              "none", "--no-plots", "-q", "--validation-freq", "1"]
    assert cli.main([*common, "--epochs", "1", "--checkpoint-every",
                     "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*common, "--epochs", "2", "--resume", str(tmp_path / "a" / "last.npz"),
                     "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*common, "--epochs", "2", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    resumed, whole = (json.loads((tmp_path / run / "history.json").read_text())["history"]
                      for run in ("a", "b"))
    for key in ("loss", "acc", "val_loss", "val_acc"):
        assert resumed[key] == whole[key], key
