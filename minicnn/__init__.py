"""minicnn: a convolutional-network framework written from scratch on NumPy (and CuPy).

Every layer's forward and backward pass is written out by hand, with the formula in its
docstring. See ``minicnn.layers`` for the layers, ``minicnn.losses``, ``minicnn.optim``,
``minicnn.init``, ``minicnn.data`` and ``minicnn.gradcheck``.
"""

from . import backend, gradcheck, init, layers, losses, optim
from .backend import get_array_module, get_backend, set_backend, to_device, to_numpy
from .functional.precision import PRECISIONS, autocast, get_precision, set_precision
from .layers.base import Layer, Parameter

__version__ = "0.1.0"

__all__ = [
    "Layer", "Parameter", "backend", "gradcheck", "get_array_module", "get_backend", "init",
    "layers", "losses", "optim", "set_backend", "to_device", "to_numpy", "__version__",
    "autocast", "set_precision", "get_precision", "PRECISIONS",
]


def __getattr__(name: str):
    # data, models, training, plot, tuning, explain and interop are imported on first use:
    # they are heavier and `import minicnn` should stay instant.
    import importlib

    if name in ("data", "models", "training", "plot", "tuning", "functional", "explain",
                "interop"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minicnn' has no attribute {name!r}")
