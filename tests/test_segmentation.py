"""U-Net trained for what it was made for: per-pixel classes (issue 26).

Synthetic images, each a bright square or disk on a noisy background, and its mask (1 inside
the shape, 0 outside). A small ``models.unet`` trained with the per-pixel
``CrossEntropyLoss`` ((N, C, H, W) logits, (N, H, W) labels) and Adam for a few dozen steps
must lower the loss clearly and segment the shapes (IoU of the foreground) — once with the
paper's up-convolutions, once with bilinear ``Upsample``; the pixels of a one-pixel frame are
unlabelled (``ignore_index``) and get no gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

import minicnn as mc
from minicnn.models.unet import unet

IGNORE = -100


def shapes(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 1, size, size) float32, masks (n, size, size) int64): a square or a disk
    of random centre and radius, brightness 1 on 0, plus noise of std 0.3."""
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 1, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    for k in range(n):
        r = rng.integers(2, size // 3)
        cy, cx = rng.integers(r, size - r, 2)
        if rng.random() < 0.5:
            inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
        else:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        masks[k] = inside
        images[k, 0] = inside + 0.3 * rng.standard_normal((size, size))
    return images, masks


def iou(logits: np.ndarray, masks: np.ndarray) -> float:
    """Intersection over union of the predicted and the true foreground (labelled pixels)."""
    predicted = logits.argmax(axis=1) == 1
    labelled = masks != IGNORE
    truth = masks == 1
    inter = (predicted & truth & labelled).sum()
    union = ((predicted | truth) & labelled).sum()
    return float(inter / union)


@pytest.mark.parametrize("up", ["transpose", "bilinear"])
def test_unet_learns_to_segment_shapes(up):
    mc.init.set_seed(0)
    rng = np.random.default_rng(0)
    size = 16
    x_train, m_train = shapes(64, size, rng)
    x_test, m_test = shapes(32, size, rng)
    for m in (m_train, m_test):   # a frame of unlabelled pixels
        m[:, 0, :] = m[:, -1, :] = m[:, :, 0] = m[:, :, -1] = IGNORE
    model = unet(in_channels=1, num_classes=2, image_size=size, width=4, depth=2, up=up)
    loss_fn = mc.losses.CrossEntropyLoss(ignore_index=IGNORE)
    optimizer = mc.optim.Adam(model.parameters(), lr=1e-2)

    def test_loss() -> tuple[float, float]:
        with model.mode(training=False):
            logits = model(x_test)
        return float(loss_fn(logits, m_test)), iou(logits, m_test)

    before, iou_before = test_loss()
    for step in range(40):
        batch = rng.choice(64, 16, replace=False)
        logits = model(x_train[batch])
        loss_fn(logits, m_train[batch])
        dz = loss_fn.backward()
        if step == 0:   # the frame gets no gradient, every other pixel some
            assert dz.shape == logits.shape
            frame = np.moveaxis(dz, 1, -1)[m_train[batch] == IGNORE]
            assert np.all(frame == 0)
            assert np.all(np.abs(np.moveaxis(dz, 1, -1)[m_train[batch] != IGNORE]).sum(-1) > 0)
        model.backward(dz)
        optimizer.step()
    after, iou_after = test_loss()
    # At the start the loss is about ln 2 = 0.69 and the foreground is guessed at chance.
    assert after < 0.5 * before, (before, after)
    assert iou_after > 0.7 and iou_after > iou_before + 0.3, (iou_before, iou_after)
