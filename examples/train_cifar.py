"""Train a CNN on CIFAR-10 and report the test accuracy.

minicnn's front door. With no arguments it picks the backend (the GPU if CuPy works),
the preset that fits the device, downloads CIFAR-10 if missing, trains a small VGG with
BatchNorm, random translations and alternating flips, and writes history.json, curves.png,
confusion.png and the checkpoint model.npz to runs/cifar10/.

    python examples/train_cifar.py                       # the default run
    python examples/train_cifar.py --epochs 5 --lr 0.05  # any preset value, by flag
    python examples/train_cifar.py --data ../shared/datasets --backend numpy
    python examples/train_cifar.py --smoke               # tiny random data: a few seconds
    python examples/train_cifar.py --help                # every flag

The same as ``minicnn train --dataset cifar10``: the presets live in minicnn/presets.py
(``PRESETS``), the commands in minicnn/commands.py, the flags in minicnn/cli.py.
"""

import sys
from pathlib import Path

try:
    import minicnn  # noqa: F401
except ImportError:  # a plain checkout, not pip-installed: use the repository next door
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicnn.cli import run_example

if __name__ == "__main__":
    sys.exit(run_example("cifar10"))
