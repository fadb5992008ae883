"""Segment MNIST digits with a U-Net: per-pixel cross-entropy, pixel accuracy and IoU.

Every pixel of an MNIST image gets a class: 1 (foreground) where the digit's ink, scaled to
[0, 1], is above 0.5, else 0 (background). ``models.unet`` maps an image (N, 1, H, W) to two
class scores per pixel (N, 2, H, W); ``CrossEntropyLoss`` takes them with the (N, H, W) masks
and averages the softmax cross-entropy over all pixels. After training, the whole MNIST test
set is segmented and two numbers reported:

- pixel accuracy: the share of the test pixels whose class is right;
- foreground IoU: |predicted ∩ true foreground| / |predicted ∪ true foreground|, counted over
  every pixel of the test set (``foreground_iou`` below). Background is ~87 % of the pixels,
  so "all background" already has 87 % pixel accuracy, but IoU 0: IoU is the honest number.

U-Net halves the image ``--depth`` times and doubles it back, so the size must be a multiple
of 2 ** depth: 28 is (depth 2: 28 -> 14 -> 7 and back); for deeper nets the images are
padded with zeros (depth 3: 32 x 32) and the padding's pixels are labelled ``IGNORE`` (the
loss's ``ignore_index``): no loss, no gradient, not in the metrics.

    python examples/segment_unet.py                     # 10,000 images, 5 epochs: ~2 min on a CPU
    python examples/segment_unet.py --epochs 5 --width 16 --depth 3
    python examples/segment_unet.py --noise 0.5         # noisy inputs, masks of the clean digits
    python examples/segment_unet.py --help              # every flag

Writes metrics.json (and segmentation.png: test images, true and predicted masks, when
matplotlib is installed) to ``--out`` (default runs/segment_unet). The training loop is
written out, as in examples/manual_loop.py: ``minicnn.training.fit`` counts one label per
image, not one per pixel.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

try:
    import minicnn  # noqa: F401
except ImportError:  # a plain checkout, not pip-installed: use the repository next door
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minicnn as mc
from minicnn.cli import positive

THRESHOLD = 0.5   # a pixel is foreground when its value in [0, 1] is above this
IGNORE = -100     # the label of padding pixels (CrossEntropyLoss's ignore_index)


# -- the metrics -------------------------------------------------------------------------------

def foreground_iou(predicted, masks, ignore_index=IGNORE):
    """Intersection over union of the predicted and the true foreground (class 1).

    ``predicted`` (N, H, W) classes (or booleans: True = foreground), ``masks`` (N, H, W) true
    classes, ``ignore_index`` in the masks where a pixel is unlabelled. Over the labelled
    pixels of the whole set (one IoU of all N images, not a mean of per-image IoUs):

        IoU = |P ∩ T| / |P ∪ T|,   P = {predicted foreground},  T = {true foreground}

    1 when the two agree exactly, 0 when they share no pixel. When neither has a foreground
    pixel (the union is empty), the prediction is exactly right: 1.0.
    """
    labelled = masks != ignore_index
    p = (predicted == 1) & labelled
    t = (masks == 1) & labelled
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def pixel_accuracy(predicted, masks, ignore_index=IGNORE):
    """The share of labelled pixels whose predicted class is the true one."""
    labelled = masks != ignore_index
    return int(((predicted == masks) & labelled).sum()) / max(int(labelled.sum()), 1)


# -- the data ----------------------------------------------------------------------------------

def segmentation_data(images, size, noise=0.0, rng=None):
    """MNIST's uint8 images (N, 1, 28, 28) -> (inputs (N, 1, size, size) float32 in [0, 1],
    masks (N, size, size) int64: 1 foreground, 0 background, ``IGNORE`` on the padding).

    The images are padded with zeros to ``size`` (centred); ``noise`` > 0 adds Gaussian noise
    of that standard deviation to the inputs only: the masks stay those of the clean digits.
    """
    x = images.astype(np.float32) / 255.0
    masks = (x[:, 0] > THRESHOLD).astype(np.int64)
    if noise > 0:
        x = x + noise * rng.standard_normal(x.shape, dtype=np.float32)
    extra = size - x.shape[-1]
    before, after = extra // 2, extra - extra // 2
    x = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)))
    masks = np.pad(masks, ((0, 0), (before, after), (before, after)), constant_values=IGNORE)
    return x, masks


def segment(model, x, batch_size=500):
    """The predicted class of every pixel, (N, H, W) int64 NumPy, in eval mode."""
    out = []
    with model.mode(training=False):   # BatchNorm uses its running statistics
        for i in range(0, len(x), batch_size):
            logits = model.forward(mc.backend.to_device(x[i:i + batch_size]))
            out.append(mc.backend.to_numpy(logits.argmax(axis=1)))
    return np.concatenate(out)


# -- the command line --------------------------------------------------------------------------

def non_negative(text):
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


non_negative.__name__ = "float"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data folder (default $MINICNN_DATA)")
    parser.add_argument("--epochs", type=positive(int), default=5)
    parser.add_argument("--train-size", type=positive(int), default=10000,
                        help="training images, drawn at random (seeded) from the 60,000")
    parser.add_argument("--width", type=positive(int), default=8,
                        help="channels of U-Net's first level (doubling per level)")
    parser.add_argument("--depth", type=positive(int), default=2, help="poolings in U-Net")
    parser.add_argument("--batch-size", type=positive(int), default=32)
    parser.add_argument("--lr", type=positive(float), default=3e-3, help="Adam's learning rate")
    parser.add_argument("--noise", type=non_negative, default=0.0,
                        help="std of Gaussian noise added to the inputs (not the masks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", choices=("auto", "numpy", "cupy"))
    parser.add_argument("--out", default="runs/segment_unet", help="folder for the results")
    parser.add_argument("--no-plots", action="store_true", help="no segmentation.png")
    # A mistake is one line, as in the minicnn command (argparse would add its usage block).
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    args = parser.parse_args(argv)
    if Path(args.out).is_file():
        parser.error(f"argument --out: {args.out!r} is a file; expected a folder")
    if 2 ** args.depth > 28:
        parser.error(f"argument --depth: at most 4 for 28 x 28 images, got {args.depth}")
    try:
        mc.set_backend(args.backend)
    except mc.backend.BackendError as exc:  # its message says how to install CuPy
        parser.error(f"argument --backend: {' '.join(str(exc).split())}")
    try:
        (x_train, _), (x_test, _) = mc.data.load_mnist(root=args.data)
    except mc.data.DatasetError as exc:  # names the file, where to put it, what to do
        parser.error(" ".join(str(exc).split()))
    if args.train_size > len(x_train):
        parser.error(f"argument --train-size: at most {len(x_train)} (the training set), got "
                     f"{args.train_size}")
    return args, x_train, x_test


# -- training ----------------------------------------------------------------------------------

def main(argv=None):
    args, x_train, x_test = parse_args(argv)
    mc.init.set_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    # 1. Data: a random subset for training, the whole test set for the metrics.
    step = 2 ** args.depth
    size = -(-28 // step) * step               # the multiple of 2 ** depth at or above 28
    subset = rng.choice(len(x_train), args.train_size, replace=False)
    x, masks = segmentation_data(x_train[subset], size, args.noise, rng)
    x_test, masks_test = segmentation_data(x_test, size, args.noise, rng)

    # 2. The model, the per-pixel loss and the optimizer.
    model = mc.models.unet(in_channels=1, num_classes=2, image_size=size, width=args.width,
                           depth=args.depth)
    loss_fn = mc.losses.CrossEntropyLoss(ignore_index=IGNORE)
    optimizer = mc.optim.Adam(model.parameters(), lr=args.lr)
    n_params = sum(int(p.data.size) for p in model.parameters())
    print(f"U-Net width {args.width}, depth {args.depth}: {n_params:,} parameters; "
          f"{len(x):,} training images of {size} x {size}, {len(x_test):,} test images "
          f"({mc.get_backend()})", flush=True)

    # 3. Training: per-pixel softmax cross-entropy, the same four lines as for classification.
    history, start = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        total, seen, tic = 0.0, 0, time.perf_counter()
        for i, batch in enumerate(np.array_split(rng.permutation(len(x)),
                                                 math.ceil(len(x) / args.batch_size))):
            xb, yb = mc.backend.to_device(x[batch]), mc.backend.to_device(masks[batch])
            logits = model.forward(xb)                 # (B, 2, H, W) class scores per pixel
            loss = loss_fn.forward(logits, yb)         # mean over the labelled pixels
            model.backward(loss_fn.backward())         # dL/dθ into every p.grad
            optimizer.step()
            total += float(loss) * len(batch)
            seen += len(batch)
            if not math.isfinite(total):
                print(f"epoch {epoch}, step {i + 1}: the loss is {total}; try a lower --lr",
                      file=sys.stderr)
                return 1
        history.append(total / seen)
        print(f"epoch {epoch}/{args.epochs}: loss {total / seen:.4f} "
              f"({time.perf_counter() - tic:.1f}s)", flush=True)
    train_seconds = time.perf_counter() - start

    # 4. The test set: every pixel's class, then the two metrics over all of them.
    tic = time.perf_counter()
    predicted = segment(model, x_test)
    metrics = {
        "pixel_accuracy": pixel_accuracy(predicted, masks_test),
        "foreground_iou": foreground_iou(predicted, masks_test),
        "foreground_share": float((masks_test == 1).sum() / (masks_test != IGNORE).sum()),
        "test_images": len(x_test), "train_images": len(x), "epochs": args.epochs,
        "width": args.width, "depth": args.depth, "image_size": size,
        "batch_size": args.batch_size, "lr": args.lr, "noise": args.noise, "seed": args.seed,
        "backend": mc.get_backend(), "parameters": n_params, "train_loss": history,
        "train_seconds": round(train_seconds, 1),
        "test_seconds": round(time.perf_counter() - tic, 1),
    }
    print(f"test: pixel accuracy {metrics['pixel_accuracy']:.2%}, foreground IoU "
          f"{metrics['foreground_iou']:.4f} on {len(x_test):,} images "
          f"({train_seconds:.0f}s of training)", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out / 'metrics.json'}")
    if not args.no_plots:
        if mc.plot.matplotlib_available():
            plot_examples(x_test, masks_test, predicted, out / "segmentation.png")
            print(f"wrote {out / 'segmentation.png'}")
        else:
            print("matplotlib is not installed: skipping segmentation.png")
    return 0


def plot_examples(x, masks, predicted, path, n=8):
    """Three rows of the first ``n`` test images: the input, the true mask, the prediction
    (with wrong pixels in red)."""
    plt = mc.plot.pyplot()
    n = min(n, len(x))
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False)
    for k in range(n):
        wrong = (predicted[k] != masks[k]) & (masks[k] != IGNORE)
        shown = np.stack([predicted[k] == 1] * 3, axis=-1).astype(np.float32)
        shown[wrong] = (1.0, 0.0, 0.0)
        for row, (image, cmap) in enumerate(((x[k, 0], "gray"), (masks[k] == 1, "gray"),
                                             (shown, None))):
            axes[row, k].imshow(image, cmap=cmap)
            axes[row, k].axis("off")
    for row, title in enumerate(("input", "true mask", "predicted")):
        axes[row, 0].set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
