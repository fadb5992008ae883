"""The lectures' CNN-training ladder, every rung as one command, with a report.

From a 2-conv sigmoid net (rung 1) through ReLU, input normalisation, BatchNorm, He init,
SiLU, skip connections and a lower learning rate, to the generalisation tricks of rung 12
(noise, dropout, L2, flips, crop-and-resize, instance norm, more capacity), plus the
lectures' MNIST comparison. Writes ladder.md (tables beside the lecture's numbers, curves,
gradient norms), ladder.json and img/ to --out.

    python examples/ladder.py                          # every rung, the budget for the device
    python examples/ladder.py --rungs 1-5 --budget quick --data ../shared/datasets
    python examples/ladder.py --budget full --backend cupy     # the lecture's sizes, a GPU
    python examples/ladder.py --smoke                  # random data, seconds

The rungs and budgets live in minicnn/ladder.py; this is the same as ``minicnn ladder``.
"""

import sys
from pathlib import Path

try:
    import minicnn  # noqa: F401
except ImportError:  # a plain checkout, not pip-installed: use the repository next door
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicnn.cli import run_ladder_example

if __name__ == "__main__":
    sys.exit(run_ladder_example())
