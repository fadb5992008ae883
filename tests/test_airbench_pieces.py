"""airbench94's data and normalisation pieces (issue 25): RandomCrop's reflect padding
(translate by up to 2 pixels), the loader's alternating flip (Jordan 2024), and BatchNorm with
a frozen gamma. The ``cupy`` tests run on the strict CPU stand-in (``--strict-device``)."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn import layers as L
from minicnn.data import DataLoader, RandomCrop
from minicnn.gradcheck import assert_gradients, check_gradients
from minicnn.optim import SGD


def to_np(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


# --------------------------------------------------------------------------- reflect crop

def crop_reference(x, size, pad, rng, mode):
    """Pad with np.pad, then cut with the same offsets RandomCrop draws, one image at a time."""
    n, _, h_in, w_in = x.shape
    h, w = size
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode=mode)
    dy = rng.integers(0, h_in + 2 * pad - h + 1, size=n)
    dx = rng.integers(0, w_in + 2 * pad - w + 1, size=n)
    return np.stack([x_pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@settings(max_examples=40)
@given(h=st.integers(2, 9), w=st.integers(2, 9), pad=st.integers(0, 8), crop_h=st.integers(1, 9),
       crop_w=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_reflect_crop_matches_numpy_pad_reflect(h, w, pad, crop_h, crop_w, seed):
    pad = min(pad, h - 1, w - 1)
    crop_h, crop_w = min(crop_h, h + 2 * pad), min(crop_w, w + 2 * pad)
    x = np.random.default_rng(seed).random((5, 2, h, w), dtype=np.float32)
    t = RandomCrop((crop_h, crop_w), padding=pad, padding_mode="reflect")
    got = t(x, np.random.default_rng(seed + 1))
    want = crop_reference(x, (crop_h, crop_w), pad, np.random.default_rng(seed + 1), "reflect")
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.flags.c_contiguous


def test_reflect_does_not_repeat_the_edge():
    x = np.arange(1, 4, dtype=np.float32).reshape(1, 1, 1, 3).repeat(3, axis=2)  # rows 1 2 3
    padded = RandomCrop._reflect_pad(x, 2)
    np.testing.assert_array_equal(padded[0, 0, 0], [3, 2, 1, 2, 3, 2, 1])


def test_constant_mode_is_the_default_and_unchanged():
    x = np.random.default_rng(0).random((6, 3, 8, 8), dtype=np.float32)
    default = RandomCrop(8, padding=2)(x, np.random.default_rng(4))
    constant = RandomCrop(8, padding=2, padding_mode="constant")(x, np.random.default_rng(4))
    np.testing.assert_array_equal(default, constant)
    np.testing.assert_array_equal(
        default, crop_reference(x, (8, 8), 2, np.random.default_rng(4), "constant"))
    assert repr(RandomCrop(8, padding=2)) == "RandomCrop(size=(8, 8), padding=2)"
    assert "reflect" in repr(RandomCrop(8, padding=2, padding_mode="reflect"))


def test_reflect_errors():
    with pytest.raises(ValueError, match="padding_mode"):
        RandomCrop(8, padding=2, padding_mode="edge")
    with pytest.raises(ValueError, match="smaller than the image"):
        RandomCrop(4, padding=4, padding_mode="reflect")(np.zeros((1, 1, 4, 4), np.float32))


@pytest.mark.cupy
def test_reflect_crop_on_the_device_no_sync_same_numbers(strict_cupy):
    cp = strict_cupy.cupy
    x = np.random.default_rng(2).random((32, 3, 16, 16), dtype=np.float32)
    t = RandomCrop(16, padding=2, padding_mode="reflect")
    on_host = t(x, np.random.default_rng(5))
    x_dev = cp.asarray(x)
    with strict_cupy.record() as rec:
        on_device = t(x_dev, np.random.default_rng(5))
    assert type(on_device) is cp.ndarray and on_device.dtype == cp.float32
    assert rec.syncs == 0, rec.report()
    assert rec.h2d_bytes <= 2 * 8 * 32 + 64, rec.report("h2d")  # just the two offsets
    np.testing.assert_array_equal(on_device.get(), on_host)


# --------------------------------------------------------------------------- alternating flip

def oriented(n=37, w=4):
    """uint8 images whose single row is 0 1 2 ... (unflipped); labels = sample ids."""
    x = np.broadcast_to(np.arange(w, dtype=np.uint8), (n, 1, 1, w)).copy()
    return x, np.arange(n, dtype=np.int64)


def flips_of_one_epoch(loader, w=4):
    """{sample id: mirrored?} for one epoch."""
    seen = {}
    for xb, yb in loader:
        xb, yb = to_np(xb), to_np(yb)
        row = np.rint(xb[:, 0, 0] * 255).astype(int)
        mirrored = (row == np.arange(w)[::-1]).all(axis=1)
        assert (mirrored | (row == np.arange(w)).all(axis=1)).all()
        for i, f in zip(yb.tolist(), mirrored.tolist(), strict=True):
            assert i not in seen
            seen[i] = f
    return seen


@pytest.mark.parametrize("shuffle", [True, False])
def test_alternating_flip_each_image_alternates(shuffle):
    x, y = oriented()
    loader = DataLoader(x, y, 8, shuffle=shuffle, seed=3, alternating_flip=True)
    epochs = [flips_of_one_epoch(loader) for _ in range(5)]
    assert loader.epoch == 5
    assert all(len(e) == len(x) for e in epochs)
    assert sum(epochs[0].values()) == len(x) // 2          # epoch 0: a random half
    for a, b in zip(epochs, epochs[1:], strict=False):     # two consecutive epochs: each
        assert all(a[i] != b[i] for i in range(len(x)))   # image once each way
    assert epochs[0] == epochs[2] == epochs[4]


def test_alternating_flip_is_seeded_and_leaves_the_other_draws_alone():
    x, y = oriented(n=200)
    first = flips_of_one_epoch(DataLoader(x, y, 16, seed=7, alternating_flip=True))
    again = flips_of_one_epoch(DataLoader(x, y, 16, seed=7, alternating_flip=True))
    other = flips_of_one_epoch(DataLoader(x, y, 16, seed=8, alternating_flip=True))
    assert first == again and first != other
    # The permutation and transform streams are those of the loader without the option.
    with_flip = DataLoader(x, y, 16, seed=7, alternating_flip=True,
                           transform=RandomCrop((1, 4), padding=1))
    without = DataLoader(x, y, 16, seed=7, transform=RandomCrop((1, 4), padding=1))
    for (_, ya), (_, yb) in zip(with_flip, without, strict=True):
        np.testing.assert_array_equal(ya, yb)
    assert "alternating_flip=True" in repr(with_flip)


def test_alternating_flip_resumes_from_the_epoch_attribute():
    x, y = oriented()
    loader = DataLoader(x, y, 8, seed=1, alternating_flip=True)
    e0, e1 = flips_of_one_epoch(loader), flips_of_one_epoch(loader)
    fresh = DataLoader(x, y, 8, seed=1, alternating_flip=True)
    fresh.epoch = 3
    assert flips_of_one_epoch(fresh) == e1 and flips_of_one_epoch(fresh) == e0


def test_loader_without_the_option_is_unchanged():
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 4, 4)).astype(np.uint8)
    y = np.arange(20)
    a = list(DataLoader(x, y, 6, seed=2, transform=RandomCrop(4, padding=1)))
    b = list(DataLoader(x, y, 6, seed=2, transform=RandomCrop(4, padding=1),
                        alternating_flip=False))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.cupy
def test_alternating_flip_on_the_device_sends_nothing_per_batch(strict_cupy):
    cp = strict_cupy.cupy
    x, y = oriented(n=64)
    host = flips_of_one_epoch(DataLoader(x, y, 16, seed=4, alternating_flip=True))
    loader = DataLoader(x, y, 16, seed=4, shuffle=False, alternating_flip=True)
    with strict_cupy.record() as rec:
        batches = [(xb, yb) for _ in range(2) for xb, yb in loader]
    assert rec.syncs == 0, rec.report()
    assert rec.h2d_bytes == 0, rec.report("h2d")
    assert all(type(xb) is cp.ndarray for xb, _ in batches)
    device = DataLoader(x, y, 16, seed=4, alternating_flip=True)
    assert flips_of_one_epoch(device) == host


# --------------------------------------------------------------------------- frozen gamma

@pytest.mark.parametrize("make, shape", [
    (lambda **k: L.BatchNorm2d(3, **k), (4, 3, 5, 5)),
    (lambda **k: L.BatchNorm1d(3, **k), (6, 3)),
    (lambda **k: L.BatchNorm1d(3, **k), (4, 3, 5)),
])
@pytest.mark.parametrize("training", [True, False])
def test_frozen_gamma_forward_and_beta_grads_match_the_plain_layer(make, shape, training):
    rng = np.random.default_rng(0)
    plain, frozen = make(), make(freeze_gamma=True)
    assert frozen.gamma.requires_grad is False and frozen.beta.requires_grad is True
    plain.beta.data = frozen.beta.data = rng.standard_normal(3)
    for bn in (plain, frozen):
        bn(np.random.default_rng(1).standard_normal(shape))  # the same running statistics
        bn.train(training)
    x = rng.standard_normal(shape) * 2 + 1
    g = rng.standard_normal(shape)
    y_plain, y_frozen = plain(x), frozen(x)
    np.testing.assert_array_equal(y_frozen, y_plain)
    np.testing.assert_array_equal(frozen.backward(g), plain.backward(g))
    np.testing.assert_array_equal(frozen.beta.grad, plain.beta.grad)
    assert frozen.gamma.grad is None
    result = check_gradients(frozen, x)
    assert not any("gamma" in k for k in result.errors)
    assert any("beta" in k for k in result.errors)
    assert_gradients(frozen, x)


def test_frozen_gamma_stays_one_under_the_optimizer_and_keeps_the_state_dict():
    rng = np.random.default_rng(0)
    bn = L.BatchNorm2d(4, eps=1e-12, momentum=0.4, freeze_gamma=True)
    opt = SGD(bn.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    beta0 = bn.beta.data.copy()
    for _ in range(3):
        x = rng.standard_normal((8, 4, 3, 3))
        bn(x)
        bn.backward(rng.standard_normal(x.shape))
        opt.step()
    np.testing.assert_array_equal(bn.gamma.data, np.ones(4))
    assert not np.array_equal(bn.beta.data, beta0)
    assert list(bn.state_dict()) == list(L.BatchNorm2d(4).state_dict())
    assert "freeze_gamma=True" in repr(bn) and "freeze_gamma" not in repr(L.BatchNorm2d(4))
    for clone in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert clone.gamma.requires_grad is False
    restored = L.BatchNorm2d(4, freeze_gamma=True).load_state_dict(bn.state_dict())
    assert restored.gamma.requires_grad is False
