"""ONNX in and out: ``to_onnx(model, path, input_shape)`` and ``from_onnx(path)``.

``to_onnx`` writes a minicnn model as an ONNX inference graph that ONNX Runtime (or any
other runtime) runs; ``from_onnx`` builds a minicnn model from an ONNX graph of the same
operators, including the files PyTorch's exporter writes for plain CNNs, so that weights
trained elsewhere can be fine-tuned here (``minicnn.training.transfer``). The operator
table, what is not supported and why: docs/interop.md.

Both need the ``onnx`` package (``pip install 'minicnn[onnx]'``), imported on first use.

    export.py     to_onnx: the layer -> operator table (EXPORTERS), the container walk
    importer.py   from_onnx: reading and checking the file, the graph walk, the operators
    common.py     OnnxError, the onnx import, the supported opsets

Tests: tests/test_interop.py
"""

from .common import EXPORT_MIN_OPSET, IMPORT_MIN_OPSET, OnnxError
from .export import EXPORTERS, to_onnx, unsupported_layers
from .importer import IMPORTERS, from_onnx

__all__ = ["to_onnx", "from_onnx", "OnnxError", "EXPORTERS", "IMPORTERS",
           "unsupported_layers", "EXPORT_MIN_OPSET", "IMPORT_MIN_OPSET"]
