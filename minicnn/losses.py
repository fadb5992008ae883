"""Loss functions: a scalar L that training minimises, and its gradient dL/d(prediction).

A loss is not a layer (it has two inputs and no parameters) but follows the same pattern:

    loss = loss_fn.forward(prediction, target)   # a 0-d array, mean over the batch
    dpred = loss_fn.backward()                    # dL/d(prediction), same shape as prediction

The loss comes back as a 0-d array of the prediction's backend and dtype, not a Python float:
converting would force the GPU to finish its work at every step. ``float(loss)`` when you
want to print it.

Derivation: docs/derivations/softmax_cross_entropy.md
Tests: tests/test_losses.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import get_array_module, to_numpy
from .functional.softmax import (
    log_softmax,
    masked_softmax_cross_entropy,
    masked_softmax_cross_entropy_backward,
    positions_as_rows,
    rows_as_positions,
    smoothed_one_hot,
    softmax_cross_entropy,
    softmax_cross_entropy_backward,
)

__all__ = ["Loss", "CrossEntropyLoss", "MSELoss"]


class Loss:
    """Base class: ``forward(prediction, target) -> loss``, ``backward() -> dprediction``."""

    def forward(self, prediction: Any, target: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, prediction: Any, target: Any) -> Any:
        return self.forward(prediction, target)

    def _need_forward(self, cached: Any) -> None:
        if cached is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _as_array(target: Any, xp: Any) -> Any:
    """The target as an array of the predictions' module ``xp`` (labels may come from NumPy)."""
    if xp is np:
        return to_numpy(target)
    return xp.asarray(target)


def _check_predictions(name: str, what: str, z: Any, expected: str,
                       ndim: int | None = None) -> Any:
    """Raise unless ``z`` is a floating-point array (of ``ndim`` dimensions); return its xp."""
    if not hasattr(z, "dtype") or not hasattr(z, "shape"):
        raise TypeError(f"{name}: expected {what} as an array of shape {expected}, got "
                        f"{type(z).__name__}")
    if z.dtype.kind != "f":
        raise TypeError(f"{name}: expected floating-point {what} of shape {expected}, "
                        f"got dtype {z.dtype}")
    if ndim is not None and z.ndim != ndim:
        raise ValueError(f"{name}: expected {what} of shape {expected}, got shape "
                         f"{tuple(z.shape)}")
    return get_array_module(z)


class CrossEntropyLoss(Loss):
    """Softmax followed by cross-entropy, fused, averaged over the batch (and the positions).

    With logits z (N, C), p = softmax(z) row by row, and a target distribution t per sample:

        L = -(1/N) Σ_n Σ_c t_nc log p_nc,      log p = log_softmax(z) (log-sum-exp trick)
        dL/dz = (p - t) / N

    (The fused gradient is why softmax is not a separate layer: softmax's Jacobian times the
    cross-entropy's gradient collapses to p - t.) For integer labels y, t is the one-hot
    vector, so L = -(1/N) Σ_n log p_{n, y_n}; with ``label_smoothing`` ε it is PyTorch's

        t = (1 - ε) onehot(y) + ε / C.

    Segmentation (PyTorch's rule too): logits (N, C, d1, ..., dk), e.g. (N, C, H, W), with one
    label per position, y (N, d1, ..., dk). Every position is a sample: softmax over C at
    each position, L the mean over all M = N·d1·…·dk positions, dL/dz = (p - t) / M. The
    positions are turned into M rows (``functional.softmax.positions_as_rows``, a view when
    the logits are stored channels-last) and the (N, C) arithmetic runs on them; p and dz
    come back in the logits' shape (stored channels-last).

    Parameters
    ----------
    label_smoothing : float
        ε in [0, 1]; 0 (the default) is plain cross-entropy. Applied at every position.
    ignore_index : int or None
        Positions (or samples) whose label is this value count for nothing: no loss, no
        gradient, not counted in the mean (L = -(1/K) Σ over the K others; NaN when K = 0,
        as in PyTorch). PyTorch's default is -100; here the default None keeps every label
        outside [0, C) an error (pass ``ignore_index=-100`` for PyTorch's behaviour). Plain
        array code on CuPy (no kernel), still without a host sync.

    Inputs
    ------
    logits : (N, C) or (N, C, d1, ..., dk) float array (NumPy or CuPy)
    y : integer labels in [0, C) of shape (N,) or (N, d1, ..., dk), or float class
        probabilities of the logits' shape (soft targets, smoothed too when ε > 0).

    Attributes
    ----------
    probs : array of the logits' shape
        softmax(z) over C of the last forward, e.g. for accuracy without a second softmax.
    target : array of the logits' shape
        t of the last forward (built on demand from integer labels).

    The arithmetic for integer labels is ``functional.softmax.softmax_cross_entropy``: plain
    array code on NumPy, three kernel launches a step (forward and backward) on CuPy.

    At initialisation, with logits ≈ 0, p = 1/C and L ≈ ln C (2.303 for 10 classes): a
    useful sanity check of a new model.

    Labels outside [0, C) are refused with a ``ValueError`` naming the label: at once when
    they are NumPy arrays (on either backend: the check runs on the host), and for labels
    already on the GPU without a per-step sync: the batch loss becomes NaN and
    ``check_labels()`` names the label (see there).
    """

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int | None = None):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], "
                             f"got {label_smoothing}")
        if ignore_index is not None and (isinstance(ignore_index, bool)
                                         or not isinstance(ignore_index, (int, np.integer))):
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an integer or None, got "
                            f"{ignore_index!r}")
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.probs: Any = None
        self._rows: Any = None          # p as (M, C) rows (probs is their view), for backward
        self._shape: tuple[int, ...] = ()   # the logits' shape
        self._labels: Any = None        # the last forward's integer labels (M,), or None
        self._target: Any = None        # its (M, C) float targets when given as such
        # Deferred check of device labels: an int64 (2,) device array [seen, first bad label]
        # that the CuPy kernels update, and whether device labels went in since the last
        # check_labels (host labels are checked at once). See check_labels.
        self._bad_labels: Any = None
        self._labels_pending = False

    def forward(self, logits: Any, y: Any) -> Any:
        expected = "(N, C) or (N, C, d1, ..., dk)"
        xp = _check_predictions("CrossEntropyLoss", "logits", logits, expected)
        if logits.ndim < 2:
            raise ValueError(f"CrossEntropyLoss: expected logits of shape {expected}, got "
                             f"shape {tuple(logits.shape)}")
        shape = tuple(logits.shape)
        N, C = shape[:2]
        if logits.size == 0:
            raise ValueError(f"CrossEntropyLoss: empty batch (logits of shape {shape})")
        if not hasattr(y, "shape"):
            y = np.asarray(y)  # a list of labels
        on_host = xp is not np and get_array_module(y) is np  # labels not yet on the device
        if on_host:
            y = np.asarray(y)
        if logits.ndim > 2:
            y = self._positions_to_rows(shape, y)
        z = positions_as_rows(logits)           # (M, C): logits itself when 2-D
        M = z.shape[0]
        if on_host and y.ndim == 1:  # checked here, on the host, where it costs no device sync
            self._check_labels(y, M, C)
        y = _as_array(y, xp)
        eps = self.label_smoothing
        self._shape = shape

        if y.ndim == 1:
            if xp is np:
                self._check_labels(y, M, C)
            elif not on_host:
                self._defer_label_check(y, M, C)
            if xp is not np and self._bad_labels is None:
                self._bad_labels = xp.zeros(2, dtype=xp.int64)
            if self.ignore_index is None:
                loss, p = softmax_cross_entropy(z, y, eps, self._bad_labels)
            else:
                loss, p = masked_softmax_cross_entropy(z, y, eps, self.ignore_index,
                                                       self._bad_labels)
            self._labels, self._target = y, None
            self._keep(p)
            return loss
        if y.ndim == 2:
            if y.shape != z.shape:
                raise ValueError(f"CrossEntropyLoss: class-probability targets must have the "
                                 f"logits' shape {tuple(logits.shape)}, got {tuple(y.shape)}")
            if y.dtype.kind != "f":
                raise TypeError(f"CrossEntropyLoss: (N, C) targets must be float class "
                                f"probabilities, got dtype {y.dtype}; for class indices pass "
                                f"integer labels of shape (N,)")
            target = y.astype(logits.dtype, copy=False)
            if eps > 0.0:
                target = (1.0 - eps) * target + eps / C
            log_p = log_softmax(z, axis=1)
            self._keep(xp.exp(log_p))
            self._labels, self._target = None, target
            return xp.asarray(-(target * log_p).sum(axis=1).mean(), dtype=logits.dtype)
        raise ValueError(f"CrossEntropyLoss: expected labels of shape ({N},) or class "
                         f"probabilities of shape ({N}, {C}), got shape {tuple(y.shape)}")

    def _keep(self, p_rows: Any) -> None:
        """Keep p as rows (for backward) and in the logits' shape (``probs``, a view)."""
        self._rows = p_rows
        self.probs = rows_as_positions(p_rows, self._shape)

    @staticmethod
    def _positions_to_rows(shape: tuple[int, ...], y: Any) -> Any:
        """Segmentation targets as rows: labels (N, d...) -> (M,), probabilities
        (N, C, d...) -> (M, C); anything else refused, naming both shapes."""
        N, C, *d = shape
        if tuple(y.shape) == (N, *d):
            if y.dtype.kind not in "iu":
                raise TypeError(f"CrossEntropyLoss: labels must be integers (class indices in "
                                f"[0, {C})), got dtype {y.dtype}; use y.astype('int64')")
            return y.reshape(-1)
        if tuple(y.shape) == shape:
            if y.dtype.kind != "f":
                raise TypeError(f"CrossEntropyLoss: targets of the logits' shape {shape} must "
                                f"be float class probabilities, got dtype {y.dtype}; for "
                                f"class indices pass integer labels of shape {(N, *d)}")
            return positions_as_rows(y)
        raise ValueError(f"CrossEntropyLoss: labels of shape {tuple(y.shape)} for logits of "
                         f"shape {shape}: expected integer labels of shape {(N, *d)} (one "
                         f"class per position) or class probabilities of shape {shape}")

    @property
    def target(self) -> Any:
        """t of the last forward, in the logits' shape: (1 - ε) onehot(y) + ε / C for labels
        y (and 0 at ignored positions)."""
        if self._labels is None:
            return None if self._target is None else rows_as_positions(self._target,
                                                                       self._shape)
        C = self._shape[1]
        if self.ignore_index is None:
            t = smoothed_one_hot(self._labels, C, self.label_smoothing, self._rows.dtype)
        else:
            xp = get_array_module(self._labels)
            keep = self._labels != self.ignore_index
            label = xp.where(keep, self._labels, 0)
            t = smoothed_one_hot(label, C, self.label_smoothing, self._rows.dtype)
            t = t * keep[:, None]
        return rows_as_positions(t, self._shape)

    def _check_labels(self, y: Any, N: int, C: int) -> None:
        """Refuse non-integer, misshapen or out-of-range labels at once (host labels only)."""
        self._check_label_meta(y, N, C)
        bad = (y < 0) | (y >= C)
        if self.ignore_index is not None:
            bad &= y != self.ignore_index
        if bad.any():  # a NumPy bool: no device involved
            raise ValueError(self._range_message(int(y[bad.argmax()]), C))

    @staticmethod
    def _check_label_meta(y: Any, N: int, C: int) -> None:
        if y.dtype.kind not in "iu":
            raise TypeError(f"CrossEntropyLoss: labels must be integers (class indices in "
                            f"[0, {C})), got dtype {y.dtype}; use y.astype('int64')")
        if y.shape[0] != N:
            raise ValueError(f"CrossEntropyLoss: {y.shape[0]} labels for {N} rows of logits; "
                             f"expected labels of shape ({N},)")

    @staticmethod
    def _range_message(label: int, C: int) -> str:
        hint = (" (PyTorch's ignore_index: pass CrossEntropyLoss(ignore_index=-100) to skip "
                "those positions)" if label == -100 else "")
        return (f"CrossEntropyLoss: labels must be in the range [0, {C}) for {C} classes, "
                f"got {label}{hint}")

    def _defer_label_check(self, y: Any, N: int, C: int) -> None:
        """Device labels: range-check them without a host sync.

        Reading ``bad.any()`` back every step would stall the GPU's queue. Instead the check
        stays on the device, in the loss's kernels (``functional.softmax``): a label outside
        [0, C) is read as the nearest class, so nothing is read or written out of range
        (CuPy would wrap an index silently), the batch loss becomes NaN, and the earliest
        batch's first bad label is kept in ``_bad_labels`` until ``check_labels()`` reads it
        (the training loop does when a loss comes back NaN). Here: dtype and shape only.
        """
        self._check_label_meta(y, N, C)
        self._labels_pending = True

    def check_labels(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range label given since the last call.

        On NumPy, and for labels that arrive as NumPy arrays, ``forward`` refuses a bad label
        at once (a host check is free). Labels already on the GPU are checked on the device
        instead (a per-step check would force a sync every step): the batch loss becomes NaN
        and this method, one device read, says which label it was. ``fit``/``evaluate`` call
        it when a loss comes back NaN; call it yourself after a hand-written loop.
        """
        if not self._labels_pending:
            return
        self._labels_pending = False
        seen, label = to_numpy(self._bad_labels)  # one read of two numbers
        if seen:
            self._bad_labels = None  # a fresh [0, 0] at the next forward
            raise ValueError(self._range_message(int(label), self._shape[1]))

    def backward(self) -> Any:
        """dL/dz = (softmax(z) - t) / M, in the logits' shape and dtype (M = N, or the number
        of positions N·d1·…·dk; with ``ignore_index``, the number of kept positions, and
        zero at the ignored ones)."""
        self._need_forward(self.probs)
        p = self._rows
        if self._labels is None:
            dz = (p - self._target) * (1.0 / p.shape[0])
        elif self.ignore_index is None:
            dz = softmax_cross_entropy_backward(p, self._labels, self.label_smoothing)
        else:
            dz = masked_softmax_cross_entropy_backward(p, self._labels, self.label_smoothing,
                                                       self.ignore_index)
        return rows_as_positions(dz, self._shape)

    def __repr__(self) -> str:
        extra = "" if self.ignore_index is None else f", ignore_index={self.ignore_index}"
        return f"CrossEntropyLoss(label_smoothing={self.label_smoothing:g}{extra})"


class MSELoss(Loss):
    """Mean squared error over all elements.

        L = (1/M) Σ_i (ŷ_i - y_i)²,      M = number of elements
        dL/dŷ = 2 (ŷ - y) / M

    Inputs: predictions ŷ and targets y of the same shape (any); y is cast to ŷ's dtype.
    """

    def __init__(self) -> None:
        self.diff: Any = None

    def forward(self, y_hat: Any, y: Any) -> Any:
        xp = _check_predictions("MSELoss", "predictions", y_hat, "(N, ...)")
        y = _as_array(y, xp)
        if y.shape != y_hat.shape:
            raise ValueError(f"MSELoss: predictions and targets must have the same shape, got "
                             f"{tuple(y_hat.shape)} and {tuple(y.shape)}")
        if y_hat.size == 0:
            raise ValueError("MSELoss: empty input")
        self.diff = y_hat - y.astype(y_hat.dtype, copy=False)
        return xp.asarray((self.diff * self.diff).mean(), dtype=y_hat.dtype)

    def backward(self) -> Any:
        """dL/dŷ = 2 (ŷ - y) / M, same shape and dtype as ŷ."""
        self._need_forward(self.diff)
        return self.diff * (2.0 / self.diff.size)
