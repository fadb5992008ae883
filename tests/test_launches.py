"""Kernel launches per Adam step on the GPU code path: budgets (issue 24), counted on the strict
CPU stand-in for CuPy (``pytest -m cupy --strict-device``; skipped without it).

On a GPU, minicnn's step time is set by how many kernels it launches (~30 µs of step time
each), so the launch count per training step is held to a budget, as
``python benchmarks/launches.py`` prints it: forward, backward (loss included) and optimizer
of one Adam step of ``benchmarks/models.py``'s specs, after a warm-up step.

``BUDGETS`` are the issue's targets; every model meets them. ``CEILINGS`` are the counts
measured when the test was last tightened (each within its budget): a count may only go
down, and a ceiling far above the count must be tightened, so a regression shows at once.

The count does not depend on the batch size: on CuPy ``Conv2d``'s "auto" algorithm is
im2col whatever the size (``functional.conv.conv2d_algorithm``); batch 8 keeps it quick.
"""

from __future__ import annotations

import functools

import pytest

from benchmarks.launches import count_step
from benchmarks.models import MODELS

BATCH = 8                                    # benchmarks/launches.py's default
# Launches per Adam step the issue asks for (issue 24, "What to build", item 3).
BUDGETS = {"2conv": 60, "vgg12": 250, "resnet": 300}
# Measured counts, ``python benchmarks/launches.py --models 2conv vgg12 resnet`` (batch 8):
# a count may only go down; tighten these as it comes down.
CEILINGS = {"2conv": 46, "vgg12": 218, "resnet": 267}

pytestmark = [pytest.mark.cupy, pytest.mark.strict_device]


@functools.cache
def _count(model: str) -> dict:
    return count_step(MODELS[model](), BATCH)


def _limit(model: str) -> int:
    return min(CEILINGS.get(model, BUDGETS[model]), BUDGETS[model])


def _report(model: str, r: dict, top: int = 15) -> str:
    places = "\n".join(f"{n:6d}  {place}" for place, n in list(r["top"].items())[:top])
    return (f"{model}: {r['total']} launches per Adam step (forward {r['forward']}, backward "
            f"{r['backward']}, optimizer {r['optimizer']}); limit {_limit(model)}, issue "
            f"budget {BUDGETS[model]}. The places that launch most:\n{places}")


@pytest.mark.parametrize("model", sorted(BUDGETS))
def test_launches_per_adam_step_within_limit(strict_cupy, model):
    """A model's launches per Adam step never exceed its ceiling."""
    r = _count(model)
    assert r["total"] == r["forward"] + r["backward"] + r["optimizer"]
    assert r["optimizer"] >= 1 and r["forward"] >= 1 and r["backward"] >= 1, r
    assert r["total"] <= _limit(model), _report(model, r)


def test_ceilings_within_budgets_and_tight(strict_cupy):
    """Every ceiling lies within its budget, and none sits far above the count (tighten it
    to the measured count)."""
    assert set(CEILINGS) == set(BUDGETS)
    for model, ceiling in CEILINGS.items():
        assert ceiling <= BUDGETS[model], f"{model}: ceiling {ceiling} above the budget"
        count = _count(model)["total"]
        assert count >= 0.95 * ceiling, \
            (f"{model}: {count} launches, ceiling {ceiling}: tighten CEILINGS[{model!r}] to "
             f"{count} in tests/test_launches.py")


def test_report_the_gap_to_the_budgets(strict_cupy, capsys):
    """Prints, per model, the launches per Adam step and how far they are from the budget."""
    lines = [f"{'model':8s} {'forward':>8s} {'backward':>9s} {'optimizer':>10s} {'total':>6s} "
             f"{'budget':>7s} {'gap':>6s}"]
    for model in sorted(BUDGETS):
        r = _count(model)
        lines.append(f"{model:8s} {r['forward']:8d} {r['backward']:9d} {r['optimizer']:10d} "
                     f"{r['total']:6d} {BUDGETS[model]:7d} {r['total'] - BUDGETS[model]:+6d}")
    with capsys.disabled():
        print(f"\nlaunches per Adam step (batch {BATCH}, strict stand-in):\n" +
              "\n".join(lines))
    assert len(lines) == len(BUDGETS) + 1


# The CIFAR-10 GPU preset's net (airbench94, batch 8), one step of
# ``benchmarks/precision_step.py`` (forward, label-smoothed loss, backward, Nesterov SGD) per
# precision, measured: a count may only go down. Its 22 GEMMs (the whitening's forward; each
# of six 3x3 convolutions' y, dW and dx; the head's three) are cuBLAS gemmEx calls of 16-bit
# inputs under bf16 and fp16: 27 more launches than fp32 (the weights' and the non-patch
# operands' conversions), none a float32 matmul.
PRESET_CEILINGS = {"fp32": 118, "bf16": 145, "fp16": 145}


@functools.cache
def _preset_launches(fmt: str) -> tuple[int, int, list[str]]:
    """(launches, syncs, what each launch was) of one preset step after two warm-up steps."""
    import minicnn as mc
    from benchmarks.precision_step import _preset_step
    from minicnn.functional.precision import autocast
    from tests import strict_device

    step, _ = _preset_step(mc, BATCH)
    with autocast(fmt):
        step()
        step()
        with strict_device.record() as rec:
            step()
    return rec.launches, rec.syncs, [e.what for e in rec.launch_events]


@pytest.mark.parametrize("fmt", sorted(PRESET_CEILINGS))
def test_gpu_preset_step_launches(strict_cupy, fmt):
    launches, syncs, what = _preset_launches(fmt)
    assert syncs == 0
    assert 0.95 * PRESET_CEILINGS[fmt] <= launches <= PRESET_CEILINGS[fmt], \
        (f"{fmt}: {launches} launches per step, ceiling {PRESET_CEILINGS[fmt]} (tighten it if "
         f"the count went down)")
    gemms = sum(w in ("operator matmul", "cupy.matmul") for w in what)
    if fmt == "fp32":
        assert gemms == 22 and "cublas.gemmEx" not in what
    else:
        assert gemms == 0 and what.count("cublas.gemmEx") == 22, what
        # every patch matrix gathered in 16 bits: 7 forward (the whitening's too), 6 backward
        assert what.count(f"RawKernel im2col_gather_{fmt}") == 13, what
        assert "RawKernel im2col_gather" not in what, what
