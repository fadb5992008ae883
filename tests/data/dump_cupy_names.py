"""Regenerate ``cupy_names.json``: the public names a real CuPy wheel has.

The strict CPU stand-in for CuPy (``tests/strict_device.py``) offers exactly these names, so
code that calls a NumPy function CuPy lacks fails in CI as it would on a GPU. The list is read
from an installed CuPy, never guessed; CuPy imports without a GPU, so any machine can run this::

    python -m venv /tmp/cupyvenv && /tmp/cupyvenv/bin/pip install numpy cupy-cuda12x
    /tmp/cupyvenv/bin/python tests/data/dump_cupy_names.py > tests/data/cupy_names.json

``ufunc_at`` lists the ufuncs whose ``.at`` CuPy implements (the others raise
NotImplementedError); it is probed by calling ``.at`` on a non-array: a supported ufunc gets
as far as looking up the array's scatter operation, an unsupported one refuses first.
"""

from __future__ import annotations

import json
import sys


def public(obj: object) -> list[str]:
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def main() -> None:
    import cupy
    import cupy.fft
    import cupy.lib.stride_tricks
    import cupy.linalg
    import cupy.random
    import cupyx.scipy.special

    ufuncs = sorted(n for n in public(cupy) if type(getattr(cupy, n)).__name__ == "ufunc")
    ufunc_at = []
    for name in ufuncs:
        try:
            getattr(cupy, name).at(None, 0, 1)
        except NotImplementedError:
            continue  # "`cupy_<name>.at` is not supported yet"
        except Exception:  # noqa: BLE001 - got past the support check: supported
            ufunc_at.append(name)
    names = {
        "cupy_version": cupy.__version__,
        "cupy": public(cupy),
        "ufuncs": ufuncs,
        "ufunc_methods": public(cupy.add),
        "ufunc_at": ufunc_at,
        "ndarray": public(cupy.ndarray),
        "random": public(cupy.random),
        "random.RandomState": public(cupy.random.RandomState),
        "random.Generator": public(cupy.random.Generator),
        "linalg": public(cupy.linalg),
        "fft": public(cupy.fft),
        "lib.stride_tricks": public(cupy.lib.stride_tricks),
        "cupyx.scipy.special": public(cupyx.scipy.special),
    }
    json.dump(names, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
