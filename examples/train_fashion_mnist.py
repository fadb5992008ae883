"""Train a CNN on Fashion-MNIST and report the test accuracy.

With no arguments: the preset for the device, Fashion-MNIST downloaded if missing, a
VGG-style BatchNorm CNN with random crops and flips; outputs in runs/fashion_mnist/.

    python examples/train_fashion_mnist.py                       # the default run
    python examples/train_fashion_mnist.py --epochs 5 --lr 0.05  # any preset value, by flag
    python examples/train_fashion_mnist.py --data ../shared/datasets --backend numpy
    python examples/train_fashion_mnist.py --smoke               # tiny random data: a few seconds
    python examples/train_fashion_mnist.py --help                # every flag

The same as ``minicnn train --dataset fashion_mnist``: the presets live in minicnn/presets.py
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
    sys.exit(run_example("fashion_mnist"))
