"""The exact GELU's special functions on NumPy: ns per element, old vs new, interleaved.

``python benchmarks/special.py [--against HEAD] [--repeats 9] [--block 262144]`` times
``special.normal_cdf`` (Φ, the exact GELU's forward cost), ``special.erfc``, and
``activation.gelu`` / ``gelu_backward``, for float32 and float64 at 1e4 elements and at an
airbench94 activation (256x24x31x31 = 5.9 M), on x ~ N(0, 1) (activations after a
BatchNorm: two of erfc's three ranges per block) and x ~ N(0, 3²) (all three ranges). "old"
is ``minicnn/functional/special.py`` as of git revision ``--against`` (loaded from
``git show``), "new" the working tree's; the two run alternately on the same input
(``benchmarks.ab.interleaved``), medians reported. gelu_backward does not call special.py (it
reuses Φ): it is timed once, for scale. ``--block BYTES`` overrides ``special._BLOCK_BYTES``.
Run it as ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/special.py``.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.ab import interleaved  # noqa: E402
from minicnn.functional import activation, special  # noqa: E402

SIZES = {"1e4": (10_000,), "5.9M": (256, 24, 31, 31)}


def load_revision(revision: str) -> types.ModuleType:
    """special.py as of git ``revision``, as a module of the minicnn.functional package."""
    source = subprocess.run(["git", "show", f"{revision}:minicnn/functional/special.py"],
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    module = types.ModuleType("minicnn.functional._special_" + revision.replace("~", "_"))
    module.__package__ = "minicnn.functional"     # its relative imports (..backend)
    exec(compile(source, f"{revision}:special.py", "exec"), module.__dict__)  # noqa: S102
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="git revision of the old version")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--block", type=int, default=None,
                        help="bytes per block buffer (default: special._BLOCK_BYTES)")
    args = parser.parse_args()
    if args.block:
        special._BLOCK_BYTES = args.block
    old = load_revision(args.against)
    rng = np.random.default_rng(0)
    print("| dtype | elements | x | function | old ns/el | new ns/el | old / new |")
    print("|---|---|---|---|---|---|---|")
    for dtype in (np.float32, np.float64):
        for size_name, shape in SIZES.items():
            n = int(np.prod(shape))
            repeats = args.repeats if n > 100_000 else 20 * args.repeats
            for sigma in (1.0, 3.0):
                x = (sigma * rng.standard_normal(shape, dtype=np.float64)).astype(dtype)
                rows = {
                    "normal_cdf": (old.normal_cdf, special.normal_cdf),
                    "erfc": (old.erfc, special.erfc),
                    "gelu": (lambda v: v * old.normal_cdf(v), activation.gelu),
                }
                for fname, (f_old, f_new) in rows.items():
                    ms = interleaved({"old": functools.partial(f_old, x),
                                      "new": functools.partial(f_new, x)}, repeats=repeats)
                    ns_old, ns_new = (ms[k] * 1e6 / n for k in ("old", "new"))
                    print(f"| {np.dtype(dtype).name} | {size_name} | N(0,{sigma:g}²) | {fname} "
                          f"| {ns_old:.1f} | {ns_new:.1f} | {ns_old / ns_new:.1f}x |", flush=True)
            _, phi = activation.gelu(x)
            dout = np.ones_like(x)
            backward = functools.partial(activation.gelu_backward, x, phi, dout)
            ms = interleaved({"b": backward}, repeats=repeats)["b"]
            print(f"| {np.dtype(dtype).name} | {size_name} | N(0,3²) | gelu_backward "
                  f"| | {ms * 1e6 / n:.1f} | |", flush=True)


if __name__ == "__main__":
    main()
