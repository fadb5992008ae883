"""How ``fit`` runs: in one process, or data-parallel over several (the distributed seam).

``fit`` is the plain training loop. Everything that changes when several processes (*ranks*)
train one model goes through the strategy object it makes from its ``comm`` argument
(``strategy_for(comm)``), at three points::

    optimizer, callbacks, verbose = strategy.prepare(model, optimizer, callbacks, verbose)
                                                      once, before the first epoch
    losses, correct, sizes = strategy.reduce_metrics(losses, correct, sizes)
                                                      at every read-back of the batch metrics
                                                      (training and ``evaluate``)
    strategy.end_epoch(model)                         after an epoch's last step, before
                                                      validation and the epoch-end callbacks

``LocalStrategy`` (``comm=None``) changes nothing at any of them. ``DataParallelStrategy(comm)``
is synchronous data-parallel SGD (``minicnn.distributed``, docs/distributed.md):

- ``prepare`` broadcasts rank 0's weights, makes the optimizer average the gradients over
  the ranks before each step (``DistributedOptimizer``, in place), and keeps the other ranks
  quiet: verbose 0, and no callback with ``rank_zero_only = True`` (``ModelCheckpoint``), so
  only rank 0 prints and writes files;
- ``reduce_metrics`` turns each rank's per-step numbers into the sums over all ranks, so every
  rank sees the same losses and takes the same decisions (NaN guard, early stopping, the best
  checkpoint); validation on a sharded loader is summed the same way;
- ``end_epoch`` averages the per-rank BatchNorm running statistics (``average_buffers``), so
  every rank evaluates, and rank 0 saves, the same model.

Tests: tests/test_training.py, tests/test_distributed.py
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..distributed.data_parallel import DistributedOptimizer, average_buffers, broadcast_parameters
from ..layers.base import Layer

__all__ = ["LocalStrategy", "DataParallelStrategy", "strategy_for"]


class LocalStrategy:
    """One process: every hook hands its arguments back unchanged.

    The base class of the strategies: a subclass overrides the hooks it needs.
    """

    def prepare(self, model: Layer, optimizer: Any, callbacks: Sequence[Any],
                verbose: int) -> tuple[Any, Sequence[Any], int]:
        """Before the first epoch: the optimizer, callbacks and verbosity ``fit`` should use."""
        return optimizer, callbacks, verbose

    def reduce_metrics(self, losses: np.ndarray, correct: np.ndarray,
                       sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-step mean losses, correct counts and batch sizes (each (steps,)), as seen by
        every process."""
        return losses, correct, sizes

    def end_epoch(self, model: Layer) -> None:
        """After an epoch's last step, before validation and the epoch-end callbacks."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DataParallelStrategy(LocalStrategy):
    """Synchronous data-parallel training on ``comm`` (``minicnn.distributed``).

    Parameters
    ----------
    comm : Communicator
        ``minicnn.distributed.create_communicator(...)``; every rank runs ``fit`` with its
        own shard of the training data (``DataLoader(..., rank=, world_size=)``, the same
        seed everywhere).
    """

    def __init__(self, comm: Any):
        self.comm = comm

    def prepare(self, model: Layer, optimizer: Any, callbacks: Sequence[Any],
                verbose: int) -> tuple[Any, Sequence[Any], int]:
        """Rank 0's weights everywhere, a gradient-averaging optimizer, and only rank 0
        printing and running the ``rank_zero_only`` callbacks."""
        broadcast_parameters(model, self.comm)
        optimizer = DistributedOptimizer(optimizer, self.comm)
        if self.comm.rank != 0:
            verbose = 0
            callbacks = [c for c in callbacks if not getattr(c, "rank_zero_only", False)]
        return optimizer, callbacks, verbose

    def reduce_metrics(self, losses: np.ndarray, correct: np.ndarray,
                       sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per step s, over the ranks r: loss_s = Σ_r loss_rs n_rs / Σ_r n_rs, and the sums
        Σ_r correct_rs, Σ_r n_rs; one allreduce of 3 · steps numbers."""
        k = len(sizes)
        total = self.comm.allreduce_numbers(np.concatenate([losses * sizes, correct, sizes]))
        return total[:k] / total[2 * k:], total[k:2 * k], total[2 * k:]

    def end_epoch(self, model: Layer) -> None:
        """Average the BatchNorm running statistics over the ranks."""
        average_buffers(model, self.comm)

    def __repr__(self) -> str:
        return f"DataParallelStrategy({self.comm!r})"


def strategy_for(comm: Any) -> LocalStrategy:
    """``LocalStrategy()`` for ``comm=None``, else ``DataParallelStrategy(comm)``."""
    return LocalStrategy() if comm is None else DataParallelStrategy(comm)
