"""Optimizers, weight averaging and learning-rate schedules.

An optimizer changes the parameters using the gradients the backward pass left in ``p.grad``::

    opt = mc.optim.Adam(model.parameters(), lr=1e-3)
    sched = mc.optim.CosineAnnealingLR(opt, T_max=30)
    for epoch in range(30):
        for x, y in loader:
            loss_fn.forward(model.forward(x), y)
            model.backward(loss_fn.backward())
            opt.step()
        sched.step()                      # once per epoch: sets opt.lr

The update rules are PyTorch's, line for line, so results can be compared with it:

- ``SGD``    g = ∇θ + λθ;  b = μ b + (1 - τ) g  (b = g at the first step);
             g = g + μ b (Nesterov) or g = b;  θ = θ - γ g
- ``Adam``   g = ∇θ + λθ;  m = β1 m + (1 - β1) g;  v = β2 v + (1 - β2) g²;
             θ = θ - γ m̂ / (sqrt(v̂) + ε)  with m̂ = m / (1 - β1ᵗ), v̂ = v / (1 - β2ᵗ)
- ``AdamW``  θ = θ (1 - γλ) (decoupled weight decay), then the Adam step without λ
- ``SGD(decoupled_weight_decay=True)``  θ = θ - γλθ, then the SGD step without λ (airbench)
- ``Lookahead(opt, k, α)``  every k steps of opt: φ = φ + α (θ - φ); θ = φ

(γ learning rate, λ weight decay, μ momentum, τ dampening, t the step count.)

Parameter groups: ``params`` may be a list of dicts, ``[{"params": [...], "lr_scale": 64.0,
"weight_decay": 0.0}, ...]``, as in PyTorch, with one difference: a group's learning rate is a
*multiplier* ``lr_scale`` (default 1) of the one learning rate ``opt.lr`` (a plain attribute
that schedules set), not PyTorch's absolute per-group ``"lr"`` (which is refused with an
error). So ``opt.lr`` and every schedule scale all groups at once. A group's ``weight_decay``
(default: the optimizer's) replaces the optimizer's for its parameters; ``opt.param_groups``
lists the groups. Gradients are *assigned* by the layers'
backward passes, so ``zero_grad`` is optional. Parameters with ``requires_grad`` False
(frozen) or with ``grad`` None (not used in this backward pass) are skipped by ``step``.

Everything works on NumPy and CuPy arrays alike: the array module comes from the parameter
(``get_array_module(p.data)``). Parameters are updated in place (``p.data -= ...``), so they
keep their array object and dtype; the optimizer state (moments, momentum buffers) has the
parameter's dtype (float32 for a float32 model) and lives on the parameter's device.
``state_dict()`` holds only NumPy arrays and numbers, so it can be saved with ``np.savez`` and
read back with ``allow_pickle=False``.

The penalties ``L1``, ``L2`` and ``L1L2`` (added to the loss, set per layer) are re-exported
here from :mod:`minicnn.regularizers`.

The package, one concern per file (everything public is importable from ``minicnn.optim``)::

    optimizer.py    Optimizer: parameter bookkeeping, the step skeleton, state_dict
    sgd.py          SGD (momentum, Nesterov, weight decay, coupled or decoupled)
    adam.py         Adam, AdamW
    ema.py          EMA: an exponential moving average of the weights
    lookahead.py    Lookahead: slow weights pulled toward any optimizer's every k steps
    loss_scale.py   LossScaler: dynamic loss scaling for fp16 (PyTorch's GradScaler)
    flat.py         FlatLayout: on CuPy, the parameters and gradients as views of one flat
                    buffer per (device, dtype), so that one kernel launch
                    (minicnn/kernels/optimizer.cu) updates them all
    schedules.py    LRScheduler, StepLR, CosineAnnealingLR, LambdaLR, LinearLR, OneCycleLR,
                    ReduceLROnPlateau

The update rules are derived in docs/derivations/optimizers.md; tests: tests/test_optim.py.
"""

from __future__ import annotations

from ..regularizers import L1, L1L2, L2
from .adam import Adam, AdamW
from .ema import EMA
from .lookahead import Lookahead
from .loss_scale import LossScaler
from .optimizer import Optimizer
from .schedules import (
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)
from .sgd import SGD

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "EMA", "Lookahead", "LossScaler",
    "LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "LambdaLR", "LinearLR",
    "ReduceLROnPlateau",
    "L1", "L2", "L1L2",
]
