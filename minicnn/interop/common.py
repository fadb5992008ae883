"""What export and import share: the error class and the one door to the ``onnx`` package.

``onnx`` is an optional dependency (``pip install 'minicnn[onnx]'``): it is imported inside
the functions that need it, through ``require_onnx``, so ``import minicnn.interop`` works
without it and only a call that reads or writes a file asks for it.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["OnnxError", "require_onnx", "EXPORT_MIN_OPSET", "IMPORT_MIN_OPSET", "node_label"]

# The lowest opset ``to_onnx`` writes: LayerNormalization joined the default domain in 17.
EXPORT_MIN_OPSET = 17
# The lowest opset ``from_onnx`` reads: 11 is where Conv, pooling and Resize took their
# current forms; the attribute-or-input changes after it (Squeeze's and ReduceMean's axes,
# Dropout's ratio) are read both ways.
IMPORT_MIN_OPSET = 11


class OnnxError(ValueError):
    """An ONNX file minicnn cannot read: not found, not ONNX, cut short, or a graph of
    operators or shapes that minicnn has no layers for.

    Attributes
    ----------
    path : str
        The file.
    reason : str
        What is wrong with it, naming the node (``node '/layer1/Conv' (Conv)``), the
        initializer or the operator, and what was expected.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


def require_onnx(what: str) -> ModuleType:
    """The ``onnx`` module, or an ImportError that says how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"{what} needs the onnx package: pip install 'minicnn[onnx]' "
                          f"(or pip install onnx)") from exc
    return onnx


def node_label(node: object, index: int) -> str:
    """``node '/conv1/Conv' (Conv)``, or ``node #3 (Conv)`` for a node without a name."""
    name = getattr(node, "name", "")
    op = getattr(node, "op_type", "?")
    return f"node {name!r} ({op})" if name else f"node #{index} ({op})"
