"""Images per second of data-parallel training on one machine: 1 process vs W MPI ranks.

For each model and *global* batch B it runs, as separate jobs so that thread settings do not
leak from one to the other:

- ``1 process``: one python, batch B, BLAS with all the machine's cores (threadpoolctl);
- ``W ranks``: ``mpiexec -n W``, batch B / W per rank, cores / W BLAS threads per rank,
  gradients averaged by ``DistributedOptimizer`` (bucketed MPI allreduce) before each step.

Each job times ``--steps`` training steps (forward, loss, backward, [allreduce,] SGD-Nesterov
step; fed from a ``DataLoader`` over synthetic CIFAR-shaped uint8 images, its shard per rank)
after ``--warmup`` steps, and reports images/s = B · steps / wall time (rank 0's clock,
between two barriers), and for the ranks the allreduce share: the time inside
``GradientBuckets.allreduce`` (packing, MPI, unpacking) over the step time. Every job also
records what BLAS runs with (threadpoolctl: library, kernel, threads).

Models: ``cifar10-cpu``, the CIFAR-10 CPU preset's network (``minicnn.presets``), and
``vgg12`` of benchmarks/models.py (12 convs 64-512 with BatchNorm). The first layer skips its
input gradient, as in ``fit``.

    python benchmarks/distributed.py                          # both models, B = 64 and 256
    python benchmarks/distributed.py --models vgg12 --batch 256 --steps 20
    python benchmarks/distributed.py --steps 2 --warmup 1     # a smoke run (seconds)

Needs the ``mpi`` extra (``pip install -e ".[mpi]"``). Run it on a quiet machine: the two
configurations compete for the same cores, so any other load skews the ratio. Writes
benchmarks/results/distributed_numpy.json and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minicnn as mc  # noqa: E402
from benchmarks.common import blas_kernel, machine_info, save  # noqa: E402

MODELS = ("cifar10-cpu", "vgg12")


def build_model(name: str):
    if name == "vgg12":
        from benchmarks.models import build_minicnn, vgg12

        return build_minicnn(vgg12())
    try:
        from minicnn.presets import PRESETS
    except ImportError:  # before the presets moved out of the CLI
        from minicnn.cli import PRESETS
    cfg = PRESETS["cifar10"]["cpu"]
    return mc.models.build(cfg["model"], dict(cfg["model_kwargs"]))


def worker(args: argparse.Namespace) -> None:
    """One job: 1 process (no MPI) or one of W ranks; rank 0 prints ``RESULT {json}``."""
    comm = None
    rank, size = 0, 1
    if args.ranks > 1:
        from minicnn import distributed as dist

        comm = dist.create_communicator("mpi")
        rank, size = comm.rank, comm.size
    from threadpoolctl import threadpool_limits

    cores = os.cpu_count() or 1
    threads = max(1, cores // size)
    threadpool_limits(limits=threads, user_api="blas")
    mc.init.set_seed(0)
    model = build_model(args.model)
    first = model.layers[0]
    first.input_grad = False                       # as fit does: nobody needs dL/d(image)
    opt = mc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    buckets = None
    if comm is not None:
        from minicnn import distributed as dist

        dist.broadcast_parameters(model, comm)
        opt = dist.DistributedOptimizer(opt, comm)
        buckets = opt._buckets
    local = args.batch // size
    steps = args.warmup + args.steps
    x, y = mc.data.synthetic(local * size * steps, (3, 32, 32), seed=1)
    loader = mc.data.DataLoader(x, y, local, seed=2, rank=rank, world_size=size)
    loss_fn = mc.losses.CrossEntropyLoss()
    t0 = comm_s = 0.0
    for step, (xb, yb) in enumerate(loader):
        if step == args.warmup:
            if comm is not None:
                comm.barrier()
            t0 = time.perf_counter()
            comm_s = buckets.seconds if buckets is not None else 0.0
        loss_fn.forward(model.forward(xb), yb)
        model.backward(loss_fn.backward())
        opt.step()
    if comm is not None:
        comm.barrier()
    wall = time.perf_counter() - t0
    comm_s = (buckets.seconds - comm_s) if buckets is not None else 0.0
    if rank == 0:
        from benchmarks.common import blas_threadpools

        print("RESULT " + json.dumps({
            "model": args.model, "global_batch": local * size, "ranks": size,
            "threads_per_rank": threads, "steps": args.steps,
            "images_per_s": local * size * args.steps / wall,
            "ms_per_step": 1e3 * wall / args.steps,
            "allreduce_share": comm_s / wall,
            "buckets": None if buckets is None else len(buckets.buckets),
            "parameters": model.num_parameters(),
            "blas": blas_kernel(), "threadpools": blas_threadpools()}), flush=True)


def run_job(model: str, batch: int, ranks: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", model,
           "--batch", str(batch), "--ranks", str(ranks), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    if ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
        if mpiexec is None:
            raise SystemExit("no mpiexec: pip install -e \".[mpi]\"")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"job {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                         f"{proc.stderr}")
    return json.loads(lines[0][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", type=int, nargs="+", default=[64, 256],
                   help="global batch sizes (divisible by --ranks)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default="distributed_numpy")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        args.batch = args.batch[0]
        return worker(args)
    if any(b % args.ranks for b in args.batch):
        raise SystemExit(f"--batch {args.batch}: every global batch must divide by "
                         f"--ranks {args.ranks}")
    rows = []
    header = (f"| model | global batch | 1 process img/s | {args.ranks} ranks img/s | speed-up "
              f"| allreduce share |")
    print(header + "\n|---|---:|---:|---:|---:|---:|", flush=True)
    for model in args.models:
        for batch in args.batch:
            one = run_job(model, batch, 1, args)
            many = run_job(model, batch, args.ranks, args)
            row = {"model": model, "global_batch": batch, "one_process": one,
                   "ranks": many, "speedup": many["images_per_s"] / one["images_per_s"]}
            rows.append(row)
            print(f"| {model} | {batch} | {one['images_per_s']:.0f} | "
                  f"{many['images_per_s']:.0f} | {row['speedup']:.2f}x | "
                  f"{100 * many['allreduce_share']:.1f} % |", flush=True)
    info = machine_info("numpy")
    print(f"\nBLAS, 1 process: {rows[0]['one_process']['blas']}; per rank: "
          f"{rows[0]['ranks']['blas']}; {info['processor']}, {info['cpu_count']} cores, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    path = save(args.out, {"machine": info, "steps": args.steps, "warmup": args.warmup,
                           "ranks": args.ranks, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
