"""Step 4 of the recipe: random search (Bergstra & Bengio, 2012) over a space of
distributions, and ``FitObjective``, a ready-made objective that trains with ``fit``."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import init as initializers
from ..backend import get_backend, to_numpy
from ..layers.base import Layer

__all__ = ["LogUniform", "Uniform", "IntUniform", "Choice", "sample_configs", "SearchResult",
           "random_search", "FitObjective"]


@dataclass(frozen=True)
class LogUniform:
    """log x ~ U(log low, log high): every decade gets the same share (learning rates,
    weight decay)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0.0 < self.low <= self.high:
            raise ValueError(f"LogUniform: need 0 < low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


@dataclass(frozen=True)
class Uniform:
    """x ~ U(low, high) (dropout rates, momentum)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Uniform: need low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class IntUniform:
    """An integer in low..high, both included, each equally likely (widths, depths)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not int(self.low) <= int(self.high):
            raise ValueError(f"IntUniform: need low <= high, got ({self.low}, {self.high})")

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(int(self.low), int(self.high) + 1))


@dataclass(frozen=True)
class Choice:
    """One of ``options``, each equally likely (batch sizes, activations, optimizers)."""

    options: Sequence[Any]

    def __post_init__(self) -> None:
        if len(self.options) == 0:
            raise ValueError("Choice: needs at least one option")
        object.__setattr__(self, "options", tuple(self.options))

    def sample(self, rng: np.random.Generator) -> Any:
        return self.options[int(rng.integers(len(self.options)))]


def sample_configs(space: Mapping[str, Any], n: int, seed: int | None = 0) -> list[dict]:
    """``n`` configurations drawn from ``space``, reproducibly.

    ``space`` maps a name to a distribution (``LogUniform``, ``Uniform``, ``IntUniform``,
    ``Choice``: anything with ``sample(rng)``) or to a fixed value, which every configuration
    gets as it is. The same ``seed`` gives the same list.
    """
    rng = np.random.default_rng(seed)
    return [{name: (d.sample(rng) if hasattr(d, "sample") else d) for name, d in space.items()}
            for _ in range(int(n))]


def _limit_blas_threads() -> None:
    """Run in each worker: one BLAS thread, so that the workers do not fight over the cores.

    The environment variables only matter to libraries loaded later; NumPy's BLAS is already
    loaded in a forked worker, which only threadpoolctl (when installed) can change.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1)


def _start_worker(backend: str) -> None:
    """Run first in each worker process: one BLAS thread, and the parent's backend (a
    spawned worker starts from a fresh interpreter, which would pick its own)."""
    from ..backend import set_backend

    _limit_blas_threads()
    set_backend(backend)


def _worker_context() -> Any:
    """How worker processes start: "spawn" once CuPy is imported in this process, the
    platform's default ("fork" on Linux) otherwise.

    A forked child inherits the parent's CUDA state but cannot use it (CUDA does not survive
    ``fork``): its first CuPy call fails or hangs. A spawned child starts a fresh
    interpreter, which costs about a second per worker but initialises CUDA on its own.
    """
    if "cupy" in sys.modules:
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context()


def _run_trial(objective: Callable, index: int, params: dict, budget: Any, seed: int,
               metric: str) -> dict[str, Any]:
    """One trial: the objective's numbers (or its error) plus the bookkeeping columns."""
    start = time.perf_counter()
    record: dict[str, Any] = {"trial": index, "seed": seed, **params}
    try:
        out = objective(dict(params), budget, seed)
        if isinstance(out, Mapping):
            if metric not in out:
                raise KeyError(f"the objective returned {sorted(out)}, without the metric "
                               f"{metric!r}")
            record.update({k: (float(v) if isinstance(v, (int, float, np.number)) else v)
                           for k, v in out.items()})
        else:
            record[metric] = float(out)
        record["error"] = None
    except Exception as e:  # one broken configuration should not end the search
        record[metric] = math.nan
        record["error"] = f"{type(e).__name__}: {e}"
    record["time"] = time.perf_counter() - start
    return record


class SearchResult:
    """The trials of ``random_search``, best first.

    Attributes
    ----------
    trials : list of dict
        One per trial: ``trial`` (its index in sampling order), ``seed``, the sampled
        hyperparameters, the metric and whatever else the objective returned, ``error``
        (None, or the exception's message) and ``time`` (seconds). Sorted by the metric,
        best first; failed or non-finite trials last.
    metric, mode : str
        What the trials are ranked by, and whether lower ("min") or higher ("max") is better.
    """

    def __init__(self, trials: list[dict[str, Any]], space: Mapping[str, Any], metric: str,
                 mode: str):
        self.space, self.metric, self.mode = dict(space), metric, mode
        sign = 1.0 if mode == "min" else -1.0

        def key(t: dict[str, Any]) -> tuple[int, float, int]:
            value = t.get(metric)
            bad = value is None or not math.isfinite(value)
            return (int(bad), 0.0 if bad else sign * value, t["trial"])

        self.trials = sorted(trials, key=key)

    @property
    def best(self) -> dict[str, Any]:
        return self.trials[0]

    @property
    def best_params(self) -> dict[str, Any]:
        """The best trial's hyperparameters only (the keys of ``space``)."""
        return {k: self.best[k] for k in self.space}

    def __len__(self) -> int:
        return len(self.trials)

    def __iter__(self):
        return iter(self.trials)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.trials[i]

    def table(self, digits: int = 4, time: bool = False) -> str:
        """The trials as a text table, best first (``time=True`` adds the seconds taken)."""
        keys = ["trial", *self.space]
        for t in self.trials:
            keys += [k for k in t if k not in keys and k not in ("seed", "error", "time")]
        if any(t.get("error") for t in self.trials):
            keys.append("error")
        if time:
            keys.append("time")

        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.{digits}g}"
            return "" if v is None else str(v)

        rows = [["rank", *keys]] + [[str(r), *(fmt(t.get(k)) for k in keys)]
                                    for r, t in enumerate(self.trials, start=1)]
        widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
        lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
                 for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        if not self.trials:
            return "SearchResult(no trials)"
        return (f"SearchResult({len(self)} trials, best {self.metric}="
                f"{self.best.get(self.metric)!r}: {self.best_params})")


def random_search(objective: Callable[[dict, Any, int], float | Mapping[str, Any]],
                  space: Mapping[str, Any], trials: int = 20, budget: Any = 1, *,
                  seed: int | None = 0, workers: int | None = None, metric: str = "score",
                  mode: str = "min") -> SearchResult:
    """Random search: sample ``trials`` configurations from ``space``, train each briefly.

    Example space::

        space = {"lr": LogUniform(1e-4, 1e-1), "weight_decay": LogUniform(1e-6, 1e-3),
                 "dropout": Uniform(0.0, 0.5), "batch_size": Choice([64, 128])}

    Parameters
    ----------
    objective : callable ``(params, budget, seed) -> float or dict``
        Trains one configuration and says how good it is: a float (the ``metric``, lower is
        better by default), or a dict of numbers that holds ``metric`` (e.g. ``{"val_loss":
        .., "val_acc": ..}`` with ``metric="val_acc", mode="max"``). It must seed its own
        randomness from ``seed`` (``mc.init.set_seed(seed)``, the loader's ``seed=``) so that
        trials are reproducible. With ``workers > 1`` it goes to other processes and must be
        picklable: a function defined at the top level of a module, or a ``FitObjective``.
    space : dict
        name -> distribution (``LogUniform``, ``Uniform``, ``IntUniform``, ``Choice``) or a
        fixed value.
    trials : int
    budget : any
        Passed unchanged to every trial: what one trial may spend, in the objective's unit
        (``FitObjective`` reads it as epochs). Keep it small: a search ranks configurations
        by a short run, then the best few get a full training.
    seed : int
        Fixes the configurations (drawn in the parent, in trial order) and each trial's
        ``seed`` (from ``np.random.SeedSequence(seed)``): the same seed gives the same table,
        whatever ``workers``.
    workers : int, optional
        Processes to run trials in; default ``min(trials, os.cpu_count())`` on NumPy, and 1
        on CuPy (trials on one GPU only compete for it). 1 runs them one after the other in
        this process. Each worker is limited to one BLAS thread when threadpoolctl is
        installed (otherwise set ``OMP_NUM_THREADS=1`` before starting Python, or NumPy's
        threads and the workers compete for the cores), and runs on this process's backend.
        Once CuPy is imported, workers are started with "spawn" instead of "fork" (CUDA
        does not survive a fork); the objective and everything it holds must then be
        importable by the worker (defined at the top level of a module).
    metric, mode : str
        The key to rank by, and "min" or "max".

    Returns
    -------
    SearchResult
        ``.trials`` best first, ``.best``, ``.best_params``, ``.table()``.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"random_search: mode must be 'min' or 'max', got {mode!r}")
    if int(trials) < 1:
        raise ValueError(f"random_search: trials must be >= 1, got {trials}")
    if not callable(objective):
        raise TypeError(f"random_search: objective must be callable (params, budget, seed), "
                        f"got {type(objective).__name__}")
    trials = int(trials)
    configs = sample_configs(space, trials, seed)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(trials)]
    if workers is None:
        workers = 1 if get_backend() == "cupy" else min(trials, os.cpu_count() or 1)
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"random_search: workers must be >= 1, got {workers}")
    jobs = [(objective, i, c, budget, s, metric)
            for i, (c, s) in enumerate(zip(configs, seeds, strict=True))]
    if workers == 1:
        records = [_run_trial(*job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context(),
                                 initializer=_start_worker, initargs=(get_backend(),)) as pool:
            futures = [pool.submit(_run_trial, *job) for job in jobs]
            records = [f.result() for f in futures]
    return SearchResult(records, space, metric, mode)


class FitObjective:
    """A ready-made objective for ``random_search``: build a model, ``fit`` it, validate.

    One trial (``objective(params, budget, seed)``):

    1. ``mc.init.set_seed(seed)``, then ``model = builder(**model_kwargs, **model_params)``;
    2. an optimizer from ``params["optimizer"]`` ("adam" by default, "adamw" or "sgd") with
       ``lr``, ``weight_decay`` and, for SGD, ``momentum`` (default 0.9);
    3. ``fit`` for ``budget`` epochs on a ``DataLoader(x_train, y_train, batch_size,
       seed=seed)``, quietly;
    4. returns ``{"val_loss", "val_acc", "loss", "acc"}`` (the last epoch), so use
       ``metric="val_loss"`` or ``metric="val_acc", mode="max"``. A run whose loss became
       NaN returns val_loss = inf.

    The keys ``lr``, ``weight_decay``, ``momentum``, ``optimizer``, ``batch_size`` and
    ``label_smoothing`` of ``params`` configure the training; all other keys go to the
    builder (e.g. ``dropout``, ``widths``).

    Parameters
    ----------
    builder : str or callable
        A name registered in ``minicnn.models`` ("vgg", "resnet", ...) or a function defined
        at the top level of a module (it must be picklable for ``workers > 1``). For
        reproducible trials, a custom builder must take all its randomness from
        ``mc.init``'s generator, e.g. ``Dropout(p, seed=int(mc.init.get_rng().integers(2**63)))``
        as the builders of ``minicnn.models`` do (an unseeded Dropout draws new masks on
        every run).
    x_train, y_train, x_val, y_val : arrays
        Images (N, C, H, W) (uint8 or float) and integer labels, NumPy: they are copied to
        every worker process.
    model_kwargs : dict, optional
        Fixed builder arguments.
    loader_kwargs : dict, optional
        Extra ``DataLoader`` arguments (``normalize``, ``transform``, ...), for both loaders.
    """

    TRAINING_KEYS = ("lr", "weight_decay", "momentum", "optimizer", "batch_size",
                     "label_smoothing")

    def __init__(self, builder: str | Callable[..., Layer], x_train: Any, y_train: Any,
                 x_val: Any, y_val: Any, model_kwargs: Mapping[str, Any] | None = None,
                 loader_kwargs: Mapping[str, Any] | None = None):
        self.builder = builder
        self.x_train, self.y_train = to_numpy(x_train), to_numpy(y_train)
        self.x_val, self.y_val = to_numpy(x_val), to_numpy(y_val)
        self.model_kwargs = dict(model_kwargs or {})
        self.loader_kwargs = dict(loader_kwargs or {})

    def _build(self, kwargs: dict[str, Any]) -> Layer:
        if isinstance(self.builder, str):
            from ..models import build

            return build(self.builder, kwargs)
        return self.builder(**kwargs)

    def __call__(self, params: Mapping[str, Any], budget: Any, seed: int) -> dict[str, float]:
        from .. import optim
        from ..data.loader import DataLoader
        from ..losses import CrossEntropyLoss
        from ..training import fit

        params = dict(params)
        initializers.set_seed(seed)
        model = self._build({**self.model_kwargs,
                             **{k: v for k, v in params.items() if k not in self.TRAINING_KEYS}})
        lr = float(params.get("lr", 1e-3))
        wd = float(params.get("weight_decay", 0.0))
        name = str(params.get("optimizer", "adam")).lower()
        if name == "adam":
            opt = optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
        elif name == "adamw":
            opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        elif name == "sgd":
            opt = optim.SGD(model.parameters(), lr=lr, weight_decay=wd,
                            momentum=float(params.get("momentum", 0.9)))
        else:
            raise ValueError(f"FitObjective: optimizer must be 'adam', 'adamw' or 'sgd', "
                             f"got {name!r}")
        batch_size = int(params.get("batch_size", 64))
        train = DataLoader(self.x_train, self.y_train, batch_size, seed=seed,
                           **self.loader_kwargs)
        val = DataLoader(self.x_val, self.y_val, max(batch_size, 256), shuffle=False,
                         **self.loader_kwargs)
        loss = CrossEntropyLoss(label_smoothing=float(params.get("label_smoothing", 0.0)))
        history = fit(model, loss, opt, train, val, epochs=int(budget), verbose=0)
        if history.diverged:  # the loss became NaN or inf: the worst score, not an error
            return {"val_loss": math.inf, "val_acc": 0.0, "loss": math.inf, "acc": 0.0}
        return {key: float(history[key][-1]) for key in ("val_loss", "val_acc", "loss", "acc")}

    def __repr__(self) -> str:
        name = self.builder if isinstance(self.builder, str) else self.builder.__name__
        return (f"FitObjective({name}, {len(self.x_train)} training / {len(self.x_val)} "
                f"validation samples)")
