"""DataLoader, normalisation and augmentation: each checked for its defining property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.backend import to_numpy
from minicnn.data import (
    ColorJitter,
    Compose,
    Cutout,
    DataLoader,
    GaussianNoise,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    channel_stats,
    to_symmetric_range,
    to_unit_range,
)


def images(n=6, c=3, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def epoch(loader):
    return [(to_numpy(x), to_numpy(y)) for x, y in loader]


# -- DataLoader ----------------------------------------------------------------------------

@settings(max_examples=40)
@given(n=st.integers(1, 40), batch=st.integers(1, 12), shuffle=st.booleans(),
       drop_last=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_every_sample_once_per_epoch(n, batch, shuffle, drop_last, seed):
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 1, 2, 2)).copy()
    loader = DataLoader(x, np.arange(n), batch, shuffle=shuffle, drop_last=drop_last, seed=seed)
    for _ in range(2):  # two epochs, two permutations
        batches = epoch(loader)
        assert len(batches) == len(loader)
        seen = np.concatenate([y for _, y in batches]) if batches else np.zeros(0, int)
        for xb, yb in batches:  # images travel with their labels
            np.testing.assert_allclose(xb[:, 0, 0, 0] * 255, yb, atol=1e-4)
            assert len(yb) == batch or (not drop_last and xb is batches[-1][0])
        if drop_last:
            assert len(seen) == (n // batch) * batch and len(set(seen)) == len(seen)
        else:
            assert sorted(seen) == list(range(n))  # exactly once: a permutation, no repeats
        if not shuffle:
            assert list(seen) == list(range(len(seen)))


def test_same_seed_same_batches_and_epochs_differ():
    x, y = images(50, 1, 4, 4), np.arange(50)
    tf = Compose([RandomCrop(4, padding=1), RandomHorizontalFlip(), GaussianNoise(0.1)])
    a = DataLoader(x, y, 8, transform=tf, seed=7)
    b = DataLoader(x, y, 8, transform=tf, seed=7)
    a1, a2, b1, b2 = epoch(a), epoch(a), epoch(b), epoch(b)
    for (xa, ya), (xb, yb) in zip(a1 + a2, b1 + b2, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a1[0][1], a2[0][1])  # a fresh permutation each epoch
    c1 = epoch(DataLoader(x, y, 8, transform=tf, seed=8))
    assert not np.array_equal(c1[0][1], a1[0][1])


def test_dtypes_shapes_and_scaling(xp):
    x, y = images(10), np.arange(10) % 3
    batches = list(DataLoader(x, y, 4, shuffle=False))
    xb, yb = batches[0]
    assert type(xb) is type(xp.zeros(1)) and xb.dtype == np.float32 and yb.dtype == np.int64
    assert [tuple(b[0].shape) for b in batches] == [(4, 3, 8, 8), (4, 3, 8, 8), (2, 3, 8, 8)]
    np.testing.assert_allclose(to_numpy(xb), x[:4] / 255.0, rtol=1e-6)
    assert len(DataLoader(x, y, 4, drop_last=True)) == 2


def test_normalize_options():
    x, y = images(200, 3, 6, 6), np.zeros(200, int)
    mean, std = channel_stats(x)
    (xb, _), = DataLoader(x, y, 200, normalize=(mean, std))
    np.testing.assert_allclose(xb.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(xb.std(axis=(0, 2, 3)), 1, atol=1e-4)
    (xs, _), = DataLoader(x, y, 200, shuffle=False, normalize="symmetric")
    np.testing.assert_allclose(xs, to_symmetric_range(x), atol=1e-6)
    assert xs.min() >= -1 and xs.max() <= 1
    (xu, _), = DataLoader(x, y, 200, shuffle=False, normalize="unit")
    np.testing.assert_array_equal(xu, to_unit_range(x))
    with pytest.raises(ValueError, match="normalize"):
        DataLoader(x, y, 4, normalize="zscore")


def test_loader_never_modifies_the_dataset():
    x = images(8)
    keep = x.copy()
    for _ in DataLoader(x, np.zeros(8, int), 3, transform=Compose([
            RandomCrop(8, 2), RandomHorizontalFlip(), Cutout(4), ColorJitter(0.5, 0.5)])):
        pass
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("args, error, message", [
    ((np.zeros((4, 8, 8), np.uint8), np.zeros(4, int), 2), ValueError, r"\(N, C, H, W\)"),
    ((images(4), np.zeros(5, int), 2), ValueError, r"labels y of shape \(4,\)"),
    ((images(4), np.zeros(4), 2), TypeError, "integers"),
    ((images(4), np.zeros(4, int), 0), ValueError, "batch_size"),
])
def test_loader_rejects_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        DataLoader(*args)


# -- channel statistics --------------------------------------------------------------------

@settings(max_examples=20)
@given(n=st.integers(1, 30), c=st.integers(1, 4), chunk=st.integers(1, 5000),
       seed=st.integers(0, 2**31 - 1))
def test_channel_stats_match_float64_reference(n, c, chunk, seed):
    x = images(n, c, 5, 3, seed)
    mean, std = channel_stats(x, chunk_bytes=chunk)  # tiny chunks: many partial sums
    ref = x.astype(np.float64) / 255
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (c,)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)


def test_channel_stats_float_input_unscaled_and_errors():
    x = np.random.default_rng(0).normal(3.0, 2.0, (400, 2, 4, 4)).astype(np.float32)
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3), dtype=np.float64), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        channel_stats(x[0])


def test_normalize_transform(xp):
    x = xp.asarray(np.random.default_rng(1).random((3, 2, 4, 4), dtype=np.float32))
    y = Normalize([0.5, 0.25], [2.0, 0.5])(x)
    assert y.dtype == np.float32
    xn, yn = to_numpy(x), to_numpy(y)
    np.testing.assert_allclose(yn[:, 0], (xn[:, 0] - 0.5) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(yn[:, 1], (xn[:, 1] - 0.25) / 0.5, rtol=1e-6)
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize(0, 0)
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        Normalize([0, 0], [1, 1])(xp.zeros((1, 3, 2, 2), dtype=xp.float32))


# -- transforms ----------------------------------------------------------------------------

def batch(n=16, c=3, h=9, w=7, seed=0):
    # distinct positive values: a window, a flip or a cut is identified unambiguously
    x = np.random.default_rng(seed).permutation(n * c * h * w).reshape(n, c, h, w) + 1.0
    return (x / x.max()).astype(np.float32)


@pytest.mark.parametrize("flip, axis", [(RandomHorizontalFlip, 3), (RandomVerticalFlip, 2)])
def test_flip_twice_is_identity_and_flips_whole_images(xp, flip, axis):
    x = xp.asarray(batch())
    t = flip(p=0.5)
    once = t(x, np.random.default_rng(3))
    twice = t(once, np.random.default_rng(3))  # same coins: the same images flip back
    np.testing.assert_array_equal(to_numpy(twice), to_numpy(x))
    xn, on = to_numpy(x), to_numpy(once)
    flipped = [np.array_equal(on[i], np.flip(xn[i], axis - 1)) for i in range(len(xn))]
    kept = [np.array_equal(on[i], xn[i]) for i in range(len(xn))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < len(xn)
    np.testing.assert_array_equal(to_numpy(flip(p=1.0)(x)), np.flip(xn, axis))
    np.testing.assert_array_equal(to_numpy(flip(p=0.0)(x)), xn)


@settings(max_examples=25)
@given(h=st.integers(1, 9), w=st.integers(1, 9), pad=st.integers(0, 3), crop_h=st.integers(1, 9),
       crop_w=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_crop_windows_come_from_the_padded_image(h, w, pad, crop_h, crop_w, seed):
    crop_h, crop_w = min(crop_h, h + 2 * pad), min(crop_w, w + 2 * pad)
    x = batch(5, 2, h, w, seed)
    y = RandomCrop((crop_h, crop_w), padding=pad)(x, np.random.default_rng(seed))
    assert y.shape == (5, 2, crop_h, crop_w) and y.dtype == np.float32
    x_pad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(5):
        windows = [(dy, dx) for dy in range(h + 2 * pad - crop_h + 1)
                   for dx in range(w + 2 * pad - crop_w + 1)
                   if np.array_equal(y[i], x_pad[i, :, dy:dy + crop_h, dx:dx + crop_w])]
        assert windows, f"sample {i} is not a window of its padded image"


def test_crop_offsets_cover_every_position(xp):
    x = xp.asarray(np.broadcast_to(np.arange(1, 6, dtype=np.float32), (2000, 1, 5, 5)).copy())
    y = to_numpy(RandomCrop(5, padding=2)(x, np.random.default_rng(0)))
    # the first nonzero column index tells the horizontal offset: all 5 offsets occur
    first = y[:, 0, 2, 0]  # middle row, left edge: 0 (padding) or a value 1..3
    counts = np.bincount(first.astype(int), minlength=4)
    assert (counts[:4] > 200).all() and counts[0] > 2 * counts[1]  # offsets 0, 1 give a 0


def test_noise_has_the_requested_std(xp):
    x = xp.asarray(np.full((64, 3, 16, 16), 0.5, np.float32))
    y = GaussianNoise(0.2)(x, np.random.default_rng(0))
    assert y.dtype == np.float32 and y.shape == x.shape
    e = to_numpy(y) - 0.5
    assert abs(e.std() - 0.2) < 0.004 and abs(e.mean()) < 0.003
    np.testing.assert_array_equal(to_numpy(GaussianNoise(0.0)(x)), to_numpy(x))


@settings(max_examples=25)
@given(size=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_cutout_zeroes_one_clipped_square(size, seed):
    x = batch(8, 2, 9, 7, seed)
    y = Cutout(size)(x, np.random.default_rng(seed))
    for i in range(8):
        cut = y[i, 0] == 0
        np.testing.assert_array_equal(cut, y[i, 1] == 0)  # the same square in every channel
        np.testing.assert_array_equal(y[i][:, ~cut], x[i][:, ~cut])
        rows, cols = np.flatnonzero(cut.any(1)), np.flatnonzero(cut.any(0))
        assert cut.sum() == len(rows) * len(cols)  # a filled rectangle
        assert 1 <= len(rows) <= size and 1 <= len(cols) <= size  # center inside: never empty
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)


def test_resized_crop_identity_box_and_interpolation(xp):
    x = xp.asarray(batch(4, 3, 8, 8))
    y = RandomResizedCrop(8, scale=(1, 1), ratio=(1, 1))(x, np.random.default_rng(0))
    np.testing.assert_allclose(to_numpy(y), to_numpy(x), rtol=1e-6)  # the whole image at 1:1
    # a linear ramp stays a linear ramp under bilinear resizing (interior of the box)
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32), (2, 1, 16, 16)).copy()
    up = to_numpy(RandomResizedCrop(32, scale=(1, 1), ratio=(1, 1))(xp.asarray(ramp)))
    np.testing.assert_allclose(np.diff(up[0, 0, 5, 2:-2]), 0.5, rtol=1e-5)


@settings(max_examples=25)
@given(h=st.integers(2, 20), w=st.integers(2, 20), out=st.integers(1, 12),
       seed=st.integers(0, 2**31 - 1))
def test_resized_crop_boxes_and_values(h, w, out, seed):
    t = RandomResizedCrop(out, scale=(0.2, 1.0))
    rng = np.random.default_rng(seed)
    y0, x0, bh, bw = t.boxes(200, h, w, rng).T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + bh <= h).all() and (x0 + bw <= w).all()
    assert (bh >= 1).all() and (bw >= 1).all()
    x = batch(6, 2, h, w, seed)
    y = t(x, rng)
    assert y.shape == (6, 2, out, out) and y.dtype == np.float32
    # bilinear: every output is a convex combination of input pixels of the same image
    assert (y.min(axis=(1, 2, 3)) >= x.min(axis=(1, 2, 3)) - 1e-6).all()
    assert (y.max(axis=(1, 2, 3)) <= x.max(axis=(1, 2, 3)) + 1e-6).all()


def test_color_jitter_factors_and_range(xp):
    x = xp.asarray(np.full((500, 3, 2, 2), 0.4, np.float32))
    b = to_numpy(ColorJitter(brightness=0.5)(x, np.random.default_rng(0)))[:, 0, 0, 0] / 0.4
    assert 0.5 - 1e-6 <= b.min() < 0.6 and 1.4 < b.max() <= 1.5 + 1e-6
    img = xp.asarray(np.random.default_rng(1).uniform(0.3, 0.7, (50, 3, 6, 6)).astype(np.float32))
    y = to_numpy(ColorJitter(contrast=0.3)(img, np.random.default_rng(2)))
    luma = np.array([0.299, 0.587, 0.114], np.float32)[None, :, None, None]
    m = (to_numpy(img) * luma).sum(1).mean((1, 2))
    np.testing.assert_allclose((y * luma).sum(1).mean((1, 2)), m, rtol=1e-5)  # grey mean kept
    ratio = (y - m[:, None, None, None]) / (to_numpy(img) - m[:, None, None, None])
    assert np.allclose(ratio, ratio[:, :1, :1, :1], rtol=1e-3)  # one factor per image
    z = to_numpy(ColorJitter(2.0, 2.0)(img, np.random.default_rng(3)))
    assert z.min() >= 0 and z.max() <= 1


def test_transforms_keep_dtype_do_not_mutate_and_reproduce():
    x = batch()
    keep = x.copy()
    tf = Compose([RandomResizedCrop((6, 5)), RandomCrop(5, 1), RandomVerticalFlip(),
                  Cutout(2), ColorJitter(0.2, 0.2), GaussianNoise(0.1)])
    y1 = tf(x, np.random.default_rng(5))
    y2 = tf(x, np.random.default_rng(5))
    np.testing.assert_array_equal(y1, y2)
    assert y1.dtype == np.float32 and y1.shape == (16, 3, 5, 5)
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("t", [RandomCrop(4), RandomHorizontalFlip(), RandomResizedCrop(4),
                               GaussianNoise(0.1), Cutout(2), ColorJitter(0.1)])
def test_transforms_reject_bad_input(t):
    name = type(t).__name__
    with pytest.raises(TypeError, match=f"{name}.*floating-point"):
        t(np.zeros((2, 1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=rf"{name}.*\(N, C, H, W\)"):
        t(np.zeros((1, 8, 8), np.float32))
