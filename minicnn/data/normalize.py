"""Pixel scaling and per-channel normalisation.

Three conventions, all producing float32:

- ``to_unit_range(x)``:      x / 255                       in [0, 1]  (the DataLoader's default)
- ``to_symmetric_range(x)``: x / 127.5 - 1                 in [-1, 1]
- ``Normalize(mean, std)``:  (x - mean_c) / std_c per channel c: "zero mean, unit deviation"
  with ``mean, std = channel_stats(x_train)`` computed on the training set only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import get_array_module, to_numpy

__all__ = ["channel_stats", "Normalize", "to_unit_range", "to_symmetric_range"]


def to_unit_range(x: Any) -> Any:
    """uint8 images -> float32 in [0, 1]: ``x / 255`` (on the array's own backend)."""
    return x.astype("float32") * (1.0 / 255.0)


def to_symmetric_range(x: Any) -> Any:
    """uint8 images -> float32 in [-1, 1]: ``x / 127.5 - 1`` (on the array's own backend)."""
    return x.astype("float32") * (2.0 / 255.0) - 1.0


def channel_stats(x: Any, scale: float | None = None,
                  chunk_bytes: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a dataset of images (N, C, H, W).

    For channel c, over all N * H * W values:

        mu_c    = mean(x[:, c]) * scale
        sigma_c = sqrt(mean(x[:, c]^2) - mean(x[:, c])^2) * scale     (population std)

    Parameters
    ----------
    x : array (N, C, H, W)
        uint8 or float images, NumPy or CuPy.
    scale : float, optional
        Multiplies the statistics. Defaults to 1/255 for uint8 input, so that the result
        describes ``x / 255``: the images as the DataLoader delivers them before normalising
        (MNIST: 0.1307, 0.3081). Defaults to 1 for float input.
    chunk_bytes : int
        Size of the float64 working copy: the sums are accumulated in float64 over chunks of
        samples, never over a float64 copy of the whole dataset.

    Returns
    -------
    mean, std : float32 NumPy arrays of shape (C,)
    """
    if x.ndim != 4:
        raise ValueError(f"channel_stats: expected images of shape (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError("channel_stats: empty dataset")
    xp = get_array_module(x)
    if scale is None:
        scale = 1.0 / 255.0 if x.dtype == np.uint8 else 1.0
    n, c = x.shape[0], x.shape[1]
    per_sample = int(np.prod(x.shape[1:])) * 8
    step = max(1, chunk_bytes // per_sample)
    total = xp.zeros(c, dtype=xp.float64)
    total_sq = xp.zeros(c, dtype=xp.float64)
    for i in range(0, n, step):  # a loop over chunks of thousands of samples, not over pixels
        block = x[i:i + step].astype(xp.float64)
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block * block).sum(axis=(0, 2, 3))
    count = float(n * x.shape[2] * x.shape[3])
    mean = total / count
    var = xp.maximum(total_sq / count - mean * mean, 0.0)  # clamp rounding below zero
    return (to_numpy(mean * scale).astype(np.float32),
            to_numpy(xp.sqrt(var) * scale).astype(np.float32))


class Normalize:
    """Per-channel standardisation, usable as a transform or inside ``Compose``.

        y[:, c] = (x[:, c] - mean[c]) / std[c]

    Parameters
    ----------
    mean, std : sequence of float, length C (or scalars, applied to every channel)
        Usually ``channel_stats(x_train)``; ``Normalize(0.5, 0.5)`` maps [0, 1] to [-1, 1].

    Input: float (N, C, H, W) on NumPy or CuPy; output has the same dtype, shape and module.
    """

    def __init__(self, mean: Any, std: Any):
        self.mean = np.atleast_1d(np.asarray(to_numpy(mean), dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(to_numpy(std), dtype=np.float64))
        if self.mean.ndim != 1 or self.std.ndim != 1:
            raise ValueError("Normalize: mean and std must be scalars or 1-d sequences")
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {self.std.tolist()}")
        # (module name, dtype) -> (mean, 1/std) as (C, 1, 1) arrays there: on the GPU they
        # are copied over once, not at every batch.
        self._constants: dict[tuple[str, str], tuple[Any, Any]] = {}

    def __call__(self, x: Any, rng: np.random.Generator | None = None) -> Any:
        xp = get_array_module(x)
        if x.ndim != 4 or self.mean.size not in (1, x.shape[1]):
            raise ValueError(f"Normalize: expected a batch (N, {self.mean.size}, H, W), got "
                             f"shape {tuple(x.shape)}")
        key = (xp.__name__, x.dtype.str)
        if key not in self._constants:
            # Broadcast (C,) over (N, C, H, W), as x's dtype so float32 stays float32.
            self._constants[key] = (
                xp.asarray(self.mean.reshape(-1, 1, 1), dtype=x.dtype),
                xp.asarray(1.0 / self.std.reshape(-1, 1, 1), dtype=x.dtype))
        mean, inv_std = self._constants[key]
        return (x - mean) * inv_std

    def __getstate__(self) -> dict:
        return {"mean": self.mean, "std": self.std}  # the device copies are a cache

    def __setstate__(self, state: dict) -> None:
        self.mean, self.std, self._constants = state["mean"], state["std"], {}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.round(4).tolist()}, std={self.std.round(4).tolist()})"
