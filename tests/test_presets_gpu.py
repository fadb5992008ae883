"""The CIFAR-10 GPU preset (airbench94's recipe, issue 25) and the warm-up before the clock.

The preset's pieces (``presets.optimizer("airbench")``, the ``WarmupLinearDecay`` schedule,
the "translate+altflip" augmentation, ``presets.warm_up``) are checked against airbench's
formulas; a tiny version of the preset trains on NumPy and, under ``--strict-device``, on
the strict CPU stand-in for CuPy with its host syncs counted.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import minicnn as mc
from minicnn import data, losses, models, optim, presets, training
from minicnn import layers as L

TINY = dict(widths=[4, 8, 8])   # the preset's net, narrow
BATCH = 8


def to_np(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def tiny_run(n=4 * BATCH, seed=0):
    """The cifar10/gpu preset's model, optimizer, schedule and training loader, tiny."""
    cfg = presets.resolve("cifar10", "gpu", {"model_kwargs": TINY})
    mc.init.set_seed(seed)
    model = models.build(cfg["model"], cfg["model_kwargs"])
    x, y = data.synthetic(n, (3, 32, 32), seed=seed)
    loader = data.DataLoader(x, y, BATCH, seed=seed, normalize="symmetric",
                             transform=presets.augmentation("cifar10", cfg["augment"]),
                             **presets.loader_options("cifar10", cfg))
    opt = presets.optimizer(cfg["optimizer"], model.parameters(), cfg["lr"],
                            cfg["weight_decay"])
    sched = presets.scheduler(cfg["schedule"], opt, cfg["lr"], 2, len(loader))
    loss = losses.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"])
    models.fit_whitening(model, next(iter(data.DataLoader(x, y, n, shuffle=False,
                                                          normalize="symmetric")))[0])
    return cfg, model, opt, sched, loss, loader


# -------------------------------------------------------------------- the preset's recipe

def test_gpu_preset_is_airbench94_and_cpu_presets_unchanged():
    cfg = presets.resolve("cifar10", "gpu", {})
    assert (cfg["model"], cfg["batch_size"], cfg["epochs"]) == ("airbench94", 1024, 10)
    assert cfg["lr"] == pytest.approx(11.5 / (1 + 1 / (1 - 0.85)))           # 1.5
    assert cfg["weight_decay"] == pytest.approx(0.0153 * 1024 / 11.5 / 1024)  # per mean loss
    assert cfg["label_smoothing"] == 0.2 and cfg["tta"] == "flip+shift" and cfg["warmup"]
    assert presets.loader_options("cifar10", cfg) == dict(alternating_flip=True, drop_last=True)
    cpu = presets.resolve("cifar10", "cpu", {})
    assert presets.loader_options("cifar10", cpu) == dict(alternating_flip=True,
                                                          drop_last=False)
    assert "warmup" not in presets.PRESETS["cifar10"]["cpu"]
    model = models.build(cfg["model"], cfg["model_kwargs"])
    assert model.num_parameters() > 1_900_000
    bns = [m for m in model.modules() if isinstance(m, L.BatchNorm2d)]
    assert len(bns) == 6 and all((m.eps, m.momentum, m.gamma.requires_grad)
                                 == (1e-12, 0.4, False) for m in bns)
    assert isinstance(model.layers[0], L.PatchWhitening)
    assert model.forward(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)


def test_augment_flag_keeps_the_presets_kind():
    # --augment: the preset's augmentation (alternating flip for the CIFAR-10 CPU preset, the
    # dataset's default where the preset says True); --no-augment: none
    assert presets.resolve("cifar10", "cpu", {"augment": True})["augment"] == "translate+altflip"
    assert presets.resolve("cifar10", "cpu", {"augment": False})["augment"] is False
    assert presets.resolve("mnist", "cpu", {"augment": True})["augment"] == "crop"
    assert presets.resolve("mnist", "gpu", {"augment": True})["augment"] is True
    words = [type(t).__name__ for t in presets.augmentation("cifar10", "crop+altflip").transforms]
    assert words == ["RandomCrop"]                  # the flips are the loader's


def test_augment_words():
    crop = presets.augmentation("cifar10", "translate+altflip").transforms
    assert len(crop) == 1 and crop[0].padding == 2 and crop[0].padding_mode == "reflect"
    assert [type(t).__name__ for t in presets.augmentation("cifar10", True).transforms] == \
        ["RandomCrop", "RandomHorizontalFlip"]          # the CPU presets' "crop+flip"
    assert presets.augmentation("cifar10", "crop+flip").transforms[0].padding == 4
    with pytest.raises(ValueError, match="unknown kind 'flop'"):
        presets.augmentation("cifar10", "crop+flop")


def test_airbench_optimizer_groups():
    _, model, opt, _, _, _ = tiny_run()
    assert isinstance(opt, optim.Lookahead) and opt.k == 5
    sgd = opt.optimizer
    assert (sgd.momentum, sgd.nesterov) == (0.85, True)
    rest, biases, head = sgd.param_groups
    lam = presets.PRESETS["cifar10"]["gpu"]["weight_decay"]
    assert all(p.name == "beta" for p in biases["params"]) and len(biases["params"]) == 6
    assert (biases["lr_scale"], biases["weight_decay"]) == (64.0, pytest.approx(lam / 64))
    assert [p.name for p in head["params"]] == ["W_head"]
    assert head["lr_scale"] == pytest.approx(1 / 81)
    assert head["weight_decay"] == pytest.approx(lam * 81)
    assert rest["lr_scale"] == 1.0 and rest["weight_decay"] is None   # the optimizer's λ


def test_head_scale_folded_into_the_weight_gives_airbench_steps():
    """Logits s·(x W) with W stepped (airbench) == x W' with W' = s W stepped at lr_scale s²
    and decay λ/s²: the same logits after every step of Nesterov SGD with weight decay."""
    rng = np.random.default_rng(0)
    s, lam, lr = 1 / 9, 0.05, 0.3
    x = rng.standard_normal((16, 5)).astype(np.float64)
    t = rng.standard_normal((16, 3))
    W = mc.Parameter(rng.standard_normal((5, 3)), "W")
    Wp = mc.Parameter(s * W.data.copy(), "W_head")
    Wc = mc.Parameter(s * W.data.copy(), "W")           # scale folded, plain lr: not the same
    sgd_a = optim.SGD([W], lr=lr, momentum=0.85, nesterov=True, weight_decay=lam)
    sgd_b = optim.SGD([dict(params=[Wp], lr_scale=s * s, weight_decay=lam / (s * s))],
                      lr=lr, momentum=0.85, nesterov=True, weight_decay=lam)
    sgd_c = optim.SGD([Wc], lr=lr, momentum=0.85, nesterov=True, weight_decay=lam)
    for _ in range(20):
        W.grad = s * x.T @ (s * x @ W.data - t)           # y = s·x W, L = ½|y - t|²
        Wp.grad = x.T @ (x @ Wp.data - t)                 # y = x W'
        Wc.grad = x.T @ (x @ Wc.data - t)
        for opt in (sgd_a, sgd_b, sgd_c):
            opt.step()
        np.testing.assert_allclose(x @ Wp.data, s * x @ W.data, rtol=1e-10, atol=1e-12)
    assert not np.allclose(x @ Wc.data, s * x @ W.data, rtol=1e-3)


def test_schedule_is_airbench_get_lr_and_lookahead_alpha():
    def airbench_lr(step, total):                     # legacy/airbench94.py's get_lr
        warmup = int(total * 0.23)
        if step < warmup:
            frac = step / warmup
            return 0.2 * (1 - frac) + 1.0 * frac
        frac = (step - warmup) / (total - warmup)
        return 1.0 * (1 - frac) + 0.07 * frac

    param = mc.Parameter(np.zeros(3, np.float32))
    opt = optim.Lookahead(optim.SGD([param], lr=1.5), k=5, alpha=1.0)
    total = 480
    sched = presets.WarmupLinearDecay(opt, total_steps=total)
    for step in range(total):
        assert opt.lr == pytest.approx(1.5 * airbench_lr(step, total)), step
        # the alpha the Lookahead uses at its (step+1)-th step: 1 - decay of airbench
        assert opt.alpha == pytest.approx(1 - 0.95 ** 5 * ((step + 1) / total) ** 3)
        sched.step()
    assert opt.lr == pytest.approx(1.5 * 0.07)
    restored = presets.WarmupLinearDecay(opt, total_steps=total)
    restored.load_state_dict(sched.state_dict())
    assert restored.last_epoch == total and opt.alpha == pytest.approx(1 - 0.95 ** 5)
    with pytest.raises(ValueError, match="total_steps"):
        presets.WarmupLinearDecay(opt, total_steps=0)


# ------------------------------------------------------------------ warm-up: no trace left

def _train(warm: bool, epochs: int = 2, strict=None):
    """Train the tiny preset (after a warm-up if ``warm``); its losses, state, optimizer
    state, loader generator state, warm-up seconds (and the stand-in's record of fit)."""
    cfg, model, opt, sched, loss, loader = tiny_run()
    seconds = presets.warm_up(model, loss, opt, sched, loader, tta=cfg["tta"]) if warm else 0
    if strict is None:
        history = training.fit(model, loss, opt, loader, epochs=epochs, scheduler=sched,
                               verbose=0)
        rec = None
    else:
        with strict.record() as rec:
            history = training.fit(model, loss, opt, loader, epochs=epochs, scheduler=sched,
                                   verbose=0)
    state = {k: to_np(v).copy() for k, v in model.state_dict().items()}
    return (history.history["loss"], state, opt.state_dict(), loader.rng.bit_generator.state,
            seconds, rec, len(loader), len(loader.x))


def _assert_same_run(a, b):
    assert a[0] == b[0]                                          # the losses, bit for bit
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        np.testing.assert_array_equal(a[1][key], b[1][key], err_msg=key)
    assert a[2].keys() == b[2].keys()
    for key in a[2]:
        np.testing.assert_array_equal(a[2][key], b[2][key], err_msg=key)
    assert a[3] == b[3]


def test_warm_up_leaves_the_run_bit_identical():
    without, with_warm_up = _train(False), _train(True)
    assert with_warm_up[4] > 0
    _assert_same_run(without, with_warm_up)


def test_warm_up_restores_every_piece_of_state():
    cfg, model, opt, sched, loss, loader = tiny_run()
    training.fit(model, loss, opt, loader, epochs=1, scheduler=sched, verbose=0)  # non-trivial
    model.layers[4].eval()                      # a mode to keep
    before = ({k: to_np(v).copy() for k, v in model.state_dict().items()}, opt.state_dict(),
              sched.state_dict(), opt.lr, opt.alpha, repr(model.rng_states()),
              [m.training for m in model.modules()], loader.rng.bit_generator.state,
              loader.epoch)
    presets.warm_up(model, loss, opt, sched, loader, tta="flip+shift")
    after = ({k: to_np(v).copy() for k, v in model.state_dict().items()}, opt.state_dict(),
             sched.state_dict(), opt.lr, opt.alpha, repr(model.rng_states()),
             [m.training for m in model.modules()], loader.rng.bit_generator.state,
             loader.epoch)
    for key in before[0]:
        np.testing.assert_array_equal(before[0][key], after[0][key], err_msg=key)
    for key in before[1]:
        np.testing.assert_array_equal(before[1][key], after[1][key], err_msg=key)
    assert before[2:] == after[2:]


# ------------------------------------------------------------- on the strict CuPy stand-in

@pytest.mark.cupy
def test_preset_steps_and_warm_up_on_the_stand_in(strict_cupy):
    """The tiny preset on the stand-in: the warm-up leaves the run as it was (the same
    numbers as without it), and an epoch of 4 steps reads back from the device only for
    fit's metric flushes (its steps and its validation), copying only the crop offsets and
    the epoch's permutation to the device."""
    without = _train(False, epochs=1)
    with_warm_up = _train(True, epochs=1, strict=strict_cupy)
    _assert_same_run(without, with_warm_up)
    rec, steps, n = with_warm_up[5:]
    budget = math.ceil(steps / 20) + 1        # fit's metric read-backs; none per step
    assert rec.syncs <= budget, rec.report("sync")
    in_steps = [e for e in rec.of("sync") if e.where.startswith(
        ("minicnn/layers/", "minicnn/functional/", "minicnn/kernels/", "minicnn/optim/",
         "minicnn/data/", "minicnn/losses.py", "minicnn/presets.py"))]
    assert not in_steps, rec.report("sync")
    # per step: the (2, B) int32 crop offsets; per epoch: the int64 permutation
    assert rec.h2d_bytes <= 8 * BATCH * steps + 8 * n + 1024, rec.report("h2d")
