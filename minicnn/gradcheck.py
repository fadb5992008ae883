"""Numerical gradient checking: is a hand-written backward pass right?

For a layer y = f(x; θ) and a fixed random upstream gradient G (same shape as y), the scalar

    L(x, θ) = sum(f(x; θ) * G)

has dL/dx = layer.backward(G) and dL/dθ = θ.grad. Each entry is compared with the central
difference

    dL/dx_i ≈ (L(x + h e_i) - L(x - h e_i)) / (2h),

whose error is O(h²) (truncation) + O(ε/h) (rounding). In float64 with h = 1e-6 both are
around 1e-10, so a correct backward agrees to a relative error well below 1e-6, while a
wrong one (a missing term, a transposed matrix) is off by 1e-2 or more. The relative error
of a tensor is

    ||analytic - numeric|| / max(||analytic|| + ||numeric||, atol).

``check_gradients`` works on any layer or model: it checks a float64 deep copy, so the layer
given keeps its arrays, dtypes, buffers (BatchNorm's running statistics) and generators.
Random layers (Dropout) get the same random numbers at every forward: the copy's
``rng_states()`` are replayed before each one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import get_array_module
from .layers.base import Layer

__all__ = ["GradcheckResult", "check_gradients", "assert_gradients", "numerical_gradient",
           "relative_error"]


def relative_error(analytic: Any, numeric: Any, atol: float = 1e-10) -> float:
    """``||a - n|| / max(||a|| + ||n||, atol)`` (0 when both are exactly zero)."""
    xp = get_array_module(analytic)
    a = xp.asarray(analytic, dtype=xp.float64).ravel()
    n = xp.asarray(numeric, dtype=xp.float64).ravel()
    denom = max(float(xp.linalg.norm(a) + xp.linalg.norm(n)), atol)
    return float(xp.linalg.norm(a - n)) / denom


def numerical_gradient(f: Callable[[], float], arr: Any, h: float = 1e-6,
                       indices: Any = None) -> Any:
    """Central differences of the scalar ``f()`` with respect to ``arr``, perturbed in place.

    Parameters
    ----------
    f : callable
        Recomputes the scalar from the current contents of ``arr``.
    arr : array
        Perturbed entry by entry and restored exactly.
    indices : array of int, optional
        Flat indices to differentiate (default: all). Other entries of the result are NaN.

    Returns
    -------
    grad : array, same shape as ``arr``
    """
    xp = get_array_module(arr)
    if not arr.flags.c_contiguous:
        raise ValueError("numerical_gradient: arr must be C-contiguous (perturbed through a view)")
    flat = arr.reshape(-1)  # a view of arr
    grad = xp.full(arr.size, np.nan, dtype=arr.dtype)
    todo = range(arr.size) if indices is None else [int(i) for i in indices]
    for i in todo:
        old = flat[i].copy()
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        grad[i] = (f_plus - f_minus) / (2 * h)
    return grad.reshape(arr.shape)


@dataclass
class GradcheckResult:
    """Relative errors of one check: ``errors['x']`` for the input, then one per parameter."""

    errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values()) if self.errors else 0.0

    def __str__(self) -> str:
        rows = ", ".join(f"{k}: {v:.2e}" for k, v in self.errors.items())
        return f"GradcheckResult(max={self.max_error:.2e}; {rows})"


def check_gradients(layer: Layer, x: Any, *, seed: int = 0, h: float = 1e-6,
                    max_entries: int | None = None, check_input: bool = True,
                    dtype: Any = np.float64) -> GradcheckResult:
    """Compare ``layer``'s backward pass with central differences.

    Parameters
    ----------
    layer : Layer
        Any layer or model, in the mode (train/eval) to check.
    x : array
        An input batch; it is cast to ``dtype`` (float64 by default).
    seed : int
        Seeds the random upstream gradient G and the choice of entries.
    h : float
        The finite-difference step.
    max_entries : int, optional
        Check at most this many randomly chosen entries per tensor (default: all).
    check_input : bool
        Also check dL/dx (set False for a model's first layer when x is not differentiable).

    Returns
    -------
    GradcheckResult
        ``errors`` maps "x" and "<index>:<name>" per parameter to the relative error.
    """
    xp = get_array_module(x)
    rng = np.random.default_rng(seed)
    # The check runs on a float64 copy: the layer given (its arrays, their dtypes, its
    # running statistics, its generators) is never touched, so there is nothing to restore.
    work = copy.deepcopy(layer).astype(dtype)
    # Frozen parameters (requires_grad False, e.g. PatchWhitening's filters) get no gradient.
    params = [p for p in work.parameters() if p.requires_grad]
    for p in params:  # numerical_gradient perturbs entries through a flat view
        p.data = xp.ascontiguousarray(p.data)
    x64 = xp.array(x, dtype=dtype, copy=True, order="C")
    rng_states = work.rng_states()  # every forward draws the same Dropout masks

    work.set_rng_states(rng_states)
    y = work.forward(x64)
    G = xp.asarray(rng.standard_normal(y.shape), dtype=dtype)
    G_before = G.copy()
    dx = work.backward(G)
    if not bool(xp.all(G == G_before)):
        raise AssertionError(f"{type(layer).__name__}.backward modified its input dout")
    analytic = {"x": dx} if check_input else {}
    for i, p in enumerate(params):
        if p.grad is None:
            raise AssertionError(f"{type(layer).__name__}: backward left {p!r}.grad as None")
        analytic[f"{i}:{p.name}"] = p.grad.copy()

    def loss() -> float:
        work.set_rng_states(rng_states)
        return float((work.forward(x64) * G).sum())

    def pick(arr: Any) -> Any:
        if max_entries is None or arr.size <= max_entries:
            return None
        return rng.choice(arr.size, size=max_entries, replace=False)

    result = GradcheckResult()
    targets = ([("x", x64)] if check_input else []) + \
              [(f"{i}:{p.name}", p.data) for i, p in enumerate(params)]
    for key, arr in targets:
        idx = pick(arr)
        num = numerical_gradient(loss, arr, h=h, indices=idx)
        ana = analytic[key]
        if idx is not None:
            num, ana = num.reshape(-1)[idx], ana.reshape(-1)[idx]
        result.errors[key] = relative_error(ana, num)
    return result


def assert_gradients(layer: Layer, x: Any, tol: float = 1e-6, **kwargs: Any) -> GradcheckResult:
    """``check_gradients`` that raises AssertionError naming the worst tensor above ``tol``."""
    result = check_gradients(layer, x, **kwargs)
    bad = {k: v for k, v in result.errors.items() if not v < tol}
    if bad:
        raise AssertionError(f"gradient check failed for {layer!r} on input {tuple(x.shape)}: "
                             f"relative errors above {tol:g}: {bad}")
    return result
