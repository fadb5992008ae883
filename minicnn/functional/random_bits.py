"""Counter-based random bits: a pure function of (seed, element index), on any device.

A generator object that lives on the GPU (CuPy's) cannot be pickled, deep-copied or saved in
a checkpoint, and the gradient check cannot replay it. A counter-based generator has no
state at all: element i of the draw with key ``seed`` is

    bits[i] = mix(mix(i XOR k0) XOR k1),     k0, k1 = the low and high 32 bits of seed,

so a layer keeps only a host-side NumPy generator (saved and replayed like any other) and
asks it for one 64-bit seed per draw. The same (seed, shape) gives the same bits on NumPy
and on CuPy, with no host↔device traffic and no synchronisation: the whole draw is a few
element-wise uint32 operations on the device.

``mix`` is Chris Wellons' "lowbias32" integer hash (two xor-shift-multiply rounds, found by
his hash-prospector search; bias about 0.17, far below what a Bernoulli mask can show).
Two rounds keyed with independent halves of the seed keep draws with different seeds
uncorrelated even where their counters coincide.

Dropout on CuPy (``functional/dropout.py``) calls ``random_bits`` only for a dtype without
kernels (float16): for float32/float64 its kernel (``ew_dropout_forward`` in
``kernels/elementwise.cu``) hashes each element's index the same way, then masks and scales,
in one launch; ``random_bits`` is that kernel's twin's reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["random_bits", "random_seed"]

_U32 = 0xFFFFFFFF


def _mix(h: Any) -> Any:
    """lowbias32, in place on a uint32 array: h ^= h >> 16; h *= 0x7feb352d; ... ."""
    u32 = np.uint32  # typed constants: the arithmetic stays uint32 (wrapping mod 2**32)
    h ^= h >> u32(16)
    h *= u32(0x7FEB352D)
    h ^= h >> u32(15)
    h *= u32(0x846CA68B)
    h ^= h >> u32(16)
    return h


def random_bits(xp: Any, shape: tuple[int, ...], seed: int) -> Any:
    """uint32 random bits of ``shape`` on ``xp``'s device, a pure function of ``seed``.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``: where the bits are made.
    shape : tuple of int
        Fewer than 2**32 elements (the counter is uint32).
    seed : int
        0 <= seed < 2**64, e.g. from ``random_seed(rng)``.

    Returns
    -------
    bits : uint32 array of ``shape``, each entry uniform on [0, 2**32)
    """
    n = math.prod(shape)
    if n >= 2**32:
        raise ValueError(f"random_bits: at most 2**32 - 1 elements per draw, got shape {shape}")
    h = xp.arange(n, dtype=xp.uint32)
    h ^= np.uint32(seed & _U32)
    _mix(h)
    h ^= np.uint32((seed >> 32) & _U32)
    _mix(h)
    return h.reshape(shape)


def random_seed(rng: np.random.Generator) -> int:
    """One 64-bit seed drawn from the host generator ``rng`` (advancing its state)."""
    return int(rng.integers(0, 2**64, dtype=np.uint64))
