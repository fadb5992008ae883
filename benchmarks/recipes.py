"""Try training recipes side by side: many ``minicnn train`` runs at once, one table.

Each recipe is a list of ``minicnn train`` flags; the runs go in parallel (``--jobs``), each
writing its log to OUT/<name>.log, and the table (last epoch's val_acc, the final test
accuracy, training time) goes to OUT/recipes.md and stdout as runs finish.

Used to choose the CPU preset of CIFAR-10 (docs/results.md): each recipe was given the number
of epochs that fits the 15-minute budget at its measured CPU cost per epoch, and all were run
at once on a GPU (the accuracy of a recipe does not depend on the device; the speed does, so
the winner was then re-run on the CPU):

    python benchmarks/recipes.py benchmarks/recipes_cifar10.json --data DIR --backend cupy \\
        --jobs 12 --out runs/recipes

``benchmarks/recipes_timeline.json`` trains the lecture's architecture timeline side by side
(``minicnn.models.TIMELINE``: LeNet-5 to ConvNeXt, CIFAR-sized, 30 epochs of AdamW one-cycle
each): ``python benchmarks/recipes.py benchmarks/recipes_timeline.json --data DIR --backend
cupy --preset gpu --jobs 13 --out runs/timeline``.

The file maps a name to its flags, e.g. ``{"base": ["--epochs", "15"], "tta": ["--tta"]}``;
``--dataset``, ``--data``, ``--backend``, ``--preset`` and ``--out`` are added here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_VAL = re.compile(r"val_acc ([0-9.]+)%")
_TEST = re.compile(r"test accuracy: ([0-9.]+)%.*\(([0-9]+)m([0-9]+)s of training\)")


def run_one(name: str, flags: list[str], args: argparse.Namespace) -> dict:
    """Run one recipe to its end; return its row of the table."""
    out = Path(args.out)
    cmd = [sys.executable, "-m", "minicnn", "train", "--dataset", args.dataset, "--data",
           args.data, "--backend", args.backend, "--preset", args.preset, "--out",
           str(out / name), "--no-progress", "--no-plots", *flags]
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    text = (out / f"{name}.log").read_text()
    vals = _VAL.findall(text)
    test = _TEST.search(text)
    return dict(name=name, flags=" ".join(flags), rc=rc,
                val_acc=float(vals[-1]) if vals else None,
                test_acc=float(test.group(1)) if test else None,
                train_s=int(test.group(2)) * 60 + int(test.group(3)) if test else None,
                wall_s=round(time.perf_counter() - start, 1))


def table(rows: list[dict]) -> str:
    lines = ["| recipe | flags | last val_acc | test acc | training time (this device) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for r in sorted(rows, key=lambda r: -(r["test_acc"] or 0)):
        lines.append(f"| {r['name']} | `{r['flags']}` | {r['val_acc']} | "
                     f"{r['test_acc'] if r['rc'] == 0 else 'failed rc=' + str(r['rc'])} | "
                     f"{r['train_s']} s |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", help="JSON file: {name: [flags of minicnn train]}")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data", required=True)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default="runs/recipes")
    p.add_argument("--only", nargs="*", default=None, help="run only these recipes")
    args = p.parse_args()
    recipes = json.loads(Path(args.recipes).read_text())
    if args.only:
        recipes = {k: v for k, v in recipes.items() if k in args.only}
    os.makedirs(args.out, exist_ok=True)
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, name, flags, args) for name, flags in recipes.items()]
        for future in as_completed(futures):
            rows.append(future.result())
            r = rows[-1]
            print(f"{r['name']:24s} rc {r['rc']} val {r['val_acc']} test {r['test_acc']} "
                  f"train {r['train_s']} s wall {r['wall_s']} s", flush=True)
            Path(args.out, "recipes.md").write_text(table(rows))
            Path(args.out, "recipes.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
