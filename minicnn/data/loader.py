"""Mini-batches for training: shuffled once per epoch, sliced from arrays, on the backend.

``DataLoader`` keeps the whole dataset as uint8 on the current backend (on the GPU with CuPy:
CIFAR-10's 150 MB fit easily) and builds each batch with one array gather. Only the batch is
converted to float32, so memory stays at one uint8 copy of the dataset, and nothing is ever
built with Python lists.

Per batch, in this order::

    x_b = x[idx]                     uint8 gather of the batch's samples
    x_b = x_b / 255                  float32 in [0, 1]   (float input is only cast to float32)
    x_b = mirror(x_b, flip[idx])     optional: alternating_flip=True (see DataLoader)
    x_b = transform(x_b, rng)        augmentation (optional), see minicnn.data.transforms
    x_b = normalize(x_b)             optional: "symmetric" -> [-1, 1], or (mean, std)

Why per batch, and not the whole set normalised once into a float32 copy (as airbench keeps
a normalised fp16 copy): CIFAR-10's 50,000 images are 154 MB as uint8 and 614 MB as float32,
and a batch is copied anyway (the gather by the permutation, the crop); scaling and
normalising a batch of 1024 is 3 M elements through three element-wise kernels, microseconds
next to a training step. So the set is scaled and normalised once per use, on the device,
with no copy from the host: per batch only the crop offsets cross (8 bytes a sample), per
epoch the permutation (8 bytes a sample); tests/test_data_device_pipeline.py counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..backend import get_xp, to_device
from .normalize import Normalize

__all__ = ["DataLoader", "synthetic"]


class DataLoader:
    """Iterate over ``(x_batch, y_batch)`` pairs, one fresh permutation per epoch.

    Parameters
    ----------
    x : array (N, C, H, W)
        Images, usually the uint8 arrays of ``load_cifar10()``; NumPy or CuPy. Moved once to
        the backend current at construction.
    y : array (N,)
        Integer labels.
    batch_size : int
    shuffle : bool
        Draw a new permutation of 0..N-1 at the start of every epoch (every ``iter()``): each
        sample appears exactly once per epoch; there is no sampling with replacement. Without
        shuffling, batches are plain slices in order.
    drop_last : bool
        Skip the last batch when it is smaller than ``batch_size``.
    transform : callable ``(x_batch, rng) -> x_batch``, optional
        Augmentation on float32 batches in [0, 1], e.g.
        ``Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()])``.
    seed : int, optional
        Seeds the generator behind the permutations and the transforms: the same seed gives
        the same sequence of batches, epoch after epoch.
    normalize : None, "unit", "symmetric", (mean, std) or callable
        Applied after ``transform``. None or ``"unit"`` leaves [0, 1]; ``"symmetric"`` maps to
        [-1, 1]; ``(mean, std)`` standardises each channel (use ``channel_stats(x_train)`` and
        the same values for the test loader); a callable is applied as it is.
    alternating_flip : bool
        Jordan's "alternating flip" (airbench, arXiv:2404.00498), in place of
        ``RandomHorizontalFlip``: a random half of the dataset (exactly N // 2 samples, chosen
        once from ``seed``) is mirrored left-right in epoch 0; in every odd epoch exactly the
        other samples are mirrored, in every even one the first half again. So each image
        alternates between its two orientations epoch by epoch, and any two consecutive
        epochs show every image once each way. It lives in the loader, not in a transform,
        because it needs what only the loader knows: each sample's index in the dataset and
        the epoch (``epoch``, below). The mirroring is applied to the [0, 1] batch before
        ``transform``; the (N,) mask lives on the backend, so a batch's mask is a device
        gather (nothing crosses to the device per batch). Its generator is a child of
        ``seed``'s, so the permutations and transform draws stay those of the same loader
        without the option. Every rank of a data-parallel run draws the same mask.
    rank, world_size : int
        Data-parallel training (``minicnn.distributed``): this loader yields rank ``rank``'s
        share of every *global* batch of ``world_size * batch_size`` samples. Every rank
        builds its loader with the same ``seed``, so all draw the same permutation; global
        batch k is ``order[k*G : (k+1)*G]`` (G = world_size * batch_size), exactly the k-th
        batch of a single loader with batch size G and that seed, and rank r takes its r-th
        slice of b samples. Shards are always of equal size: a last partial global batch of
        R samples gives every rank ``R // world_size`` of them (the ``R % world_size`` left
        over, and a batch where that is 0, are skipped; with shuffling they are different
        samples every epoch). With world_size > 1 augmentation draws come from a generator
        of this rank, seeded each epoch from the shared one, so ranks augment independently
        while the permutation stream stays shared (and rank 0's checkpoint of it resumes
        every rank). Defaults (0, 1): the plain loader.

    Attributes
    ----------
    epoch : int
        The number of epochs (``iter()`` calls) started so far; epoch ``epoch`` is the next
        one. Only ``alternating_flip`` reads it; set it to resume a run mid-way.

    Yields
    ------
    x_batch : float32 array (B, C, H', W') of the current backend
    y_batch : int64 array (B,) of the current backend
    """

    def __init__(self, x: Any, y: Any, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, transform: Callable | None = None,
                 seed: int | None = None, normalize: Any = None, rank: int = 0,
                 world_size: int = 1, alternating_flip: bool = False):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"DataLoader: expected images x of shape (N, C, H, W), got shape "
                             f"{tuple(getattr(x, 'shape', ()))}")
        if getattr(y, "ndim", None) != 1 or len(y) != len(x):
            raise ValueError(f"DataLoader: expected labels y of shape ({len(x)},), got shape "
                             f"{tuple(getattr(y, 'shape', ()))}")
        if getattr(y, "dtype", np.dtype("f")).kind not in "iu":
            raise TypeError(f"DataLoader: labels must be integers, got dtype {y.dtype}")
        if int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"DataLoader: expected 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        self.x = to_device(x)  # stays uint8: converted per batch
        self.y = to_device(y, dtype=np.int64)
        self.xp = get_xp()
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.normalize = self._make_normalize(normalize)
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.alternating_flip = bool(alternating_flip)
        self._flip_first: Any = None  # (N,) bool on the backend: mirrored in even epochs
        if self.alternating_flip:
            n = len(self.x)
            flip_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
            first = np.zeros(n, dtype=bool)
            first[flip_rng.permutation(n)[:n // 2]] = True
            self._flip_first = self.xp.asarray(first)

    @staticmethod
    def _make_normalize(normalize: Any) -> Callable | None:
        if normalize is None or (isinstance(normalize, str) and normalize == "unit"):
            return None
        if isinstance(normalize, str):
            if normalize == "symmetric":
                return Normalize(0.5, 0.5)  # (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]
            raise ValueError(f"DataLoader: normalize must be None, 'unit', 'symmetric', "
                             f"(mean, std) or a callable, got {normalize!r}")
        if callable(normalize):
            return normalize
        mean, std = normalize
        return Normalize(mean, std)

    def _shards(self) -> list[tuple[int, int]]:
        """(start, size) in the epoch's order of this rank's batches.

        Global batch k covers ``order[k*G : k*G + G_k]``; this rank's part of it starts at
        ``k*G + rank * b_k`` with ``b_k = G_k // world_size`` (``batch_size`` for full ones).
        """
        n, b, w = len(self.x), self.batch_size, self.world_size
        g = b * w
        full, rest = divmod(n, g)
        shards = [(k * g + self.rank * b, b) for k in range(full)]
        if rest and not self.drop_last and rest // w > 0:
            last = rest // w
            shards.append((full * g + self.rank * last, last))
        return shards

    def __len__(self) -> int:
        """The number of batches per epoch (the same on every rank)."""
        return len(self._shards())

    @property
    def samples_per_epoch(self) -> int:
        """How many samples this rank's loader yields per epoch."""
        return sum(size for _, size in self._shards())

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        n = len(self.x)
        order = self.xp.asarray(self.rng.permutation(n)) if self.shuffle else None
        rng = self.rng
        flip = None
        if self.alternating_flip:
            flip = self._flip_first if self.epoch % 2 == 0 else ~self._flip_first
        self.epoch += 1
        if self.world_size > 1:
            # Augment with this rank's own stream, seeded from the shared one: every rank
            # draws the same seed (so the shared stream stays in step) and mixes in its rank.
            rng = np.random.default_rng([int(self.rng.integers(2**63)), self.rank])
        for start, size in self._shards():
            if order is None:
                idx: Any = slice(start, start + size)
            else:
                idx = order[start:start + size]
            x_b, y_b = self.x[idx], self.y[idx]
            yield self._prepare(x_b, rng, None if flip is None else flip[idx]), y_b

    def _prepare(self, x_b: Any, rng: np.random.Generator, flip: Any = None) -> Any:
        if x_b.dtype == np.uint8:
            x_b = x_b.astype(np.float32) * (1.0 / 255.0)
        else:
            x_b = x_b.astype(np.float32)  # always a copy: transforms never touch self.x
        if flip is not None:  # alternating flip: this batch's samples to mirror, (B,) bool
            x_b = self.xp.where(flip[:, None, None, None], x_b[..., ::-1], x_b)
        if self.transform is not None:
            x_b = self.transform(x_b, rng)
        if self.normalize is not None:
            x_b = self.normalize(x_b)
        return x_b

    def __repr__(self) -> str:
        return (f"DataLoader({len(self.x)} samples of {tuple(self.x.shape[1:])}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, transform={self.transform!r}"
                + (", alternating_flip=True" if self.alternating_flip else "")
                + (f", rank={self.rank}, world_size={self.world_size})"
                   if self.world_size > 1 else ")"))


def synthetic(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny learnable fake data for smoke tests: uint8 images (n, *shape) and int64 labels.

    Pixels are uniform in [0, 128) plus 12·label, so the mean brightness tells the class.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    x = rng.integers(0, 128, size=(n, *shape))
    return (x + 12 * y[:, None, None, None]).astype(np.uint8), y
