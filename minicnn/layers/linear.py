"""The fully connected (dense) layer: y = x W + b.

Derivation: docs/derivations/linear.md
Tests: tests/test_linear.py
"""

from __future__ import annotations

from typing import Any

from .. import init as initializers
from ..functional.precision import matmul
from .base import Layer, Parameter, check_float_input, new_array

__all__ = ["Linear"]


class Linear(Layer):
    """Fully connected layer: every output is a weighted sum of all inputs.

    Forward:  y = x W + b
    Backward: dx = dout Wᵀ,   dW = xᵀ dout,   db = Σ_n dout
              (with leading dimensions (..., in) flattened into the batch for dW and db)

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and output vectors.
    bias : bool
        Whether to learn the offset ``b`` (default True).
    init : str or callable
        Initialiser of ``W`` (see ``minicnn.init``), called with fan_in = in_features and
        fan_out = out_features; default ``"he_normal"`` (for ReLU networks). ``b`` starts at 0.
    kernel_regularizer : optional
        A penalty on ``W`` such as ``minicnn.regularizers.L2(1e-4)``; backward adds its
        gradient to ``W.grad``.

    Attributes
    ----------
    W : Parameter, shape (in_features, out_features)
    b : Parameter, shape (out_features,), or None when ``bias=False``

    Shapes
    ------
    x: (N, in_features), or more generally (..., in_features);
    y: (N, out_features), or (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 init: Any = "he_normal", kernel_regularizer: Any = None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if int(value) != value or value < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {value!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        shape = (self.in_features, self.out_features)
        W0 = initializers.get(init)(shape, self.in_features, self.out_features)
        self.W = Parameter(new_array(W0), "W", regularizer=kernel_regularizer)
        b0 = initializers.zeros((self.out_features,))
        self.b = Parameter(new_array(b0), "b") if bias else None
        self.input_grad = True  # False: backward skips dx (see Conv2d.input_grad)

    def forward(self, x: Any) -> Any:
        check_float_input("Linear", x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear: expected input of shape (N, {self.in_features}) (in_features="
                f"{self.in_features} on the last axis), got shape {tuple(x.shape)}; "
                f"put a Flatten() before Linear for image batches")
        self.cache = x
        # x @ W over the last axis, the GEMM of the precision policy (float32 by default)
        W = self.W.data.astype(x.dtype, copy=False)
        y = matmul(x.reshape(-1, self.in_features), W)
        y = y.reshape(*x.shape[:-1], self.out_features)
        if self.b is not None:
            y += self.b.data.astype(x.dtype, copy=False)
        return y

    def backward(self, dout: Any) -> Any:
        x = self.cached()
        W = self.W.data.astype(dout.dtype, copy=False)
        # Treat any leading axes (..., in) as one batch axis for the parameter gradients.
        x2 = x.reshape(-1, self.in_features)
        dout2 = dout.reshape(-1, self.out_features)
        # dW = xᵀ dout, db = Σ_rows dout (the GEMMs of the precision policy); on CuPy written
        # straight into the optimizer's gradient buffer (``grad_out``; None elsewhere).
        self.W.set_grad(matmul(x2.T, dout2, out=self.W.grad_out(dout2)))
        if self.b is not None:
            self.b.set_grad(dout2.sum(axis=0, out=self.b.grad_out(dout2)))
        if not self.input_grad:  # see Conv2d.input_grad
            return None
        return matmul(dout2, W.T).reshape(x.shape)          # dx = dout Wᵀ

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.b is not None}")
