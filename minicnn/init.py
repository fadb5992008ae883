"""Weight initialisers: Glorot (Xavier) and He (Kaiming), plus constants.

Why it matters (the lectures' rung 5 → 8): with n inputs per unit, the output variance of
y = Σ w_i x_i is n · Var(w) · Var(x). Keeping it constant through the layers needs

- Glorot: Var(w) = 2 / (fan_in + fan_out)  (tanh/sigmoid, forward and backward balanced);
- He:     Var(w) = 2 / fan_in             (ReLU halves the variance, so twice as much).

A uniform U(-a, a) has variance a²/3, hence a = sqrt(6 / (fan_in + fan_out)) for Glorot
uniform and a = sqrt(6 / fan_in) for He uniform. For a convolution, fan_in = C_in·KH·KW and
fan_out = C_out·KH·KW; for ``Linear`` (W of shape (in, out)), fan_in = in, fan_out = out.

Every initialiser has the signature ``f(shape, fan_in, fan_out, rng) -> numpy float32 array``;
layers take ``init=`` as one of the names below or such a callable. Draws come from a module
generator that ``set_seed`` resets, so a seeded model is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "zeros", "ones",
    "get", "set_seed", "get_rng", "INITIALIZERS",
]

Initializer = Callable[..., np.ndarray]
_rng = np.random.default_rng()


def set_seed(seed: int | None) -> None:
    """Reset the generator all initialisers draw from (None: fresh entropy)."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    """The generator the initialisers use (its ``bit_generator.state`` can be saved)."""
    return _rng


def glorot_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)) (Keras' default)."""
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return (rng or _rng).uniform(-a, a, size=shape).astype(np.float32)


def glorot_normal(shape: tuple[int, ...], fan_in: int, fan_out: int,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """N(0, σ²) with σ = sqrt(2 / (fan_in + fan_out))."""
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return ((rng or _rng).standard_normal(size=shape) * std).astype(np.float32)


def he_normal(shape: tuple[int, ...], fan_in: int, fan_out: int,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """N(0, σ²) with σ = sqrt(2 / fan_in) (Kaiming normal, fan-in mode, ReLU gain)."""
    std = math.sqrt(2.0 / fan_in)
    return ((rng or _rng).standard_normal(size=shape) * std).astype(np.float32)


def he_uniform(shape: tuple[int, ...], fan_in: int, fan_out: int,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / fan_in)."""
    a = math.sqrt(6.0 / fan_in)
    return (rng or _rng).uniform(-a, a, size=shape).astype(np.float32)


def zeros(shape: tuple[int, ...], fan_in: int = 0, fan_out: int = 0,
          rng: np.random.Generator | None = None) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def ones(shape: tuple[int, ...], fan_in: int = 0, fan_out: int = 0,
         rng: np.random.Generator | None = None) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


INITIALIZERS: dict[str, Initializer] = {
    "glorot_uniform": glorot_uniform, "xavier_uniform": glorot_uniform,
    "glorot_normal": glorot_normal, "xavier_normal": glorot_normal,
    "he_normal": he_normal, "kaiming_normal": he_normal,
    "he_uniform": he_uniform, "kaiming_uniform": he_uniform,
    "zeros": zeros, "ones": ones,
}


def get(init: str | Initializer | Any) -> Initializer:
    """An initialiser from its name (e.g. ``"he_normal"``) or the callable itself."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[str(init).lower()]
    except KeyError:
        raise ValueError(f"unknown initializer {init!r}; expected one of "
                         f"{sorted(INITIALIZERS)} or a callable f(shape, fan_in, fan_out, rng)"
                         ) from None
